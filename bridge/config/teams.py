"""Settings of the Teams side (a bot on the Microsoft 365 Agents SDK)."""

from __future__ import annotations

from bridge.config.section import Section


class TeamsSettings(Section):
    enabled: bool = False
