"""The bridge's exception tree.

Every error says whether retrying can help (``retryable``). Start-up failures
carry the process exit code they map to (see ``bridge.exitcodes``).
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge import exitcodes


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    retryable: bool = False
    exit_code: int = exitcodes.SOFTWARE


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One invalid setting: where it is and what is wrong with it."""

    key_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.key_path}: {self.message}"


class ConfigError(BridgeError):
    """The settings are missing, unreadable or invalid."""

    exit_code = exitcodes.CONFIG

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class DependencyUnavailableError(BridgeError):
    """A server the bridge needs (MongoDB, a homeserver) did not answer."""

    retryable = True
    exit_code = exitcodes.UNAVAILABLE

    def __init__(self, dependency: str, detail: str) -> None:
        self.dependency = dependency
        self.detail = detail
        super().__init__(f"cannot reach {dependency}: {detail}")


class StoreError(BridgeError):
    """The timeline store failed; the platform must not be acknowledged."""

    retryable = True


class OverloadedError(StoreError):
    """Too much is being stored already: refused at once, before any work (answer 503
    with ``retry_after`` so the platform sends it again later)."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryError(BridgeError):
    """Sending to a platform failed."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryableDeliveryError(DeliveryError):
    """A rate limit, a server error or a lost connection: try again later."""

    retryable = True


class PermanentDeliveryError(DeliveryError):
    """The platform refused for good (forbidden, not found, too large)."""

    retryable = False


class MediaTooLargeError(PermanentDeliveryError):
    """A file is larger than a platform (or the bridge) accepts; ``size`` when known."""

    def __init__(self, *, size: int | None, limit: int) -> None:
        shown = f"{size} bytes" if size is not None else "more"
        super().__init__(f"media too large: {shown}, the limit is {limit} bytes")
        self.size = size
        self.limit = limit
