"""Chat commands shared by both platforms: parsing, permissions, dispatch, replies."""
