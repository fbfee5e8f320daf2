"""What the daemon's ``/readyz`` said over a test, sampled a few times a second.

``ReadinessWatch`` polls in the background while it is entered and keeps every sample
(monotonic time, ready or not, the per-check report), so a test can tell when
readiness turned false after a dependency went away, and when it came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

import aiohttp

from tests.support.waiting import eventually

SAMPLE_EVERY_S: Final = 0.2
ANSWER_WITHIN_S: Final = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadinessSample:
    at: float
    """``time.monotonic()`` when the answer came."""
    ready: bool
    checks: Mapping[str, str]
    """Dependency -> "ok" or what is wrong; empty when the daemon did not answer."""
    advisory: Mapping[str, str] = field(default_factory=dict)
    """The same for what is reported without gating readiness (e.g. the homeserver)."""


class ReadinessWatch:
    """See the module documentation."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._url = f"{base_url}/readyz"
        self._samples: list[ReadinessSample] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def samples(self) -> tuple[ReadinessSample, ...]:
        return tuple(self._samples)

    def first(self, *, ready: bool, after: float) -> ReadinessSample | None:
        """The first sample taken after ``after`` that says ``ready``."""
        return next((s for s in self._samples if s.at >= after and s.ready is ready), None)

    async def wait_for_advisory(
        self, name: str, *, ok: bool, after: float, within: float
    ) -> ReadinessSample:
        """The first sample after ``after`` whose advisory ``name`` is (not) "ok"."""

        async def seen() -> ReadinessSample | None:
            if self._task is not None and self._task.done():
                self._task.result()
            return next(
                (
                    s
                    for s in self._samples
                    if s.at >= after and name in s.advisory and (s.advisory[name] == "ok") is ok
                ),
                None,
            )

        state = f"{name} {'ok' if ok else 'not ok'}"
        return await eventually(seen, within=within, interval=SAMPLE_EVERY_S, what=state)

    async def wait_for(self, *, ready: bool, after: float, within: float) -> ReadinessSample:
        """The first sample after ``after`` that says ``ready``, once there is one."""
        state = "ready" if ready else "not ready"

        async def seen() -> ReadinessSample | None:
            if self._task is not None and self._task.done():
                self._task.result()  # the watch itself failed: say why
            return self.first(ready=ready, after=after)

        return await eventually(seen, within=within, interval=SAMPLE_EVERY_S, what=state)

    async def _sample(self) -> ReadinessSample:
        timeout = aiohttp.ClientTimeout(total=ANSWER_WITHIN_S)
        try:
            async with self._session.get(self._url, timeout=timeout) as response:
                body = await response.json(content_type=None)
                checks = body.get("checks", {}) if isinstance(body, dict) else {}
                advisory = body.get("advisory", {}) if isinstance(body, dict) else {}
                return ReadinessSample(
                    at=time.monotonic(),
                    ready=response.status == 200,
                    checks={str(k): str(v) for k, v in checks.items()},
                    advisory={str(k): str(v) for k, v in advisory.items()},
                )
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return ReadinessSample(at=time.monotonic(), ready=False, checks={})

    async def _run(self) -> None:
        while True:
            self._samples.append(await self._sample())
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def __aenter__(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="readiness-watch")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
