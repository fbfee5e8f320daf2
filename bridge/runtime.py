"""What the composition root hands to adapter factories and command-line extensions."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from bridge.config import Settings
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.ports import Clock, StateStore, TimelineStore


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterContext:
    """Everything an adapter may use; adapters add their routes to ``web_app``."""

    settings: Settings
    clock: Clock
    ids: UlidFactory
    metrics: BridgeMetrics
    store: TimelineStore
    state: StateStore
    web_app: web.Application


class CliCommand(Protocol):
    """A subcommand of ``incident-bridge`` contributed by an adapter (e.g. ``gen-registration``)."""

    name: str
    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return a process exit code (``bridge.exitcodes``)."""
