"""The relay: intake of inbound events, and (per room, in order) delivery to the other side."""
