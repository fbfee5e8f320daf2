"""A small Kubernetes REST client: the calls the ``kubernetes-job`` executor makes.

In a cluster it uses the pod's service account (``KubeSettings.in_cluster()``): the API
server from ``KUBERNETES_SERVICE_HOST``/``_PORT``, the token and CA bundle from
``/var/run/secrets/kubernetes.io/serviceaccount``. Tests and development give an explicit
base URL and token file (``KubeSettings.explicit``); plain HTTP is accepted on loopback only.

The token file is read again when it changes (the kubelet rotates bound tokens) and goes
only into the ``Authorization`` header: never into a log, an error or a URL. Errors map to
``KubeError`` subclasses: 409 AlreadyExists, 404 NotFound, 401/403 (``KubeAuthError``),
429/5xx/connection failures (retried briefly with backoff, then ``KubeUnavailableError``),
any other refusal (``KubeRequestError``). An error's message is the API server's ``Status``
message, which may quote the request: callers redact secrets before showing it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import structlog

log = structlog.get_logger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LOOPBACK_NAMES = frozenset({"localhost"})

Sleep = Callable[[float], Awaitable[None]]


class KubeError(Exception):
    """A Kubernetes API call failed; ``retryable`` says whether trying again can help."""

    retryable = False

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubeConfigError(KubeError):
    """The settings cannot work (no service account, plain HTTP off loopback, ...)."""


class KubeAuthError(KubeError):
    """401 or 403: the token is wrong, expired, or lacks the RBAC permission."""


class KubeAlreadyExistsError(KubeError):
    """409 AlreadyExists: an object of that name exists (for a Job: already dispatched)."""


class KubeNotFoundError(KubeError):
    """404 NotFound."""


class KubeRequestError(KubeError):
    """Any other refusal (400 BadRequest, 422 Invalid, 409 Conflict, ...)."""


class KubeUnavailableError(KubeError):
    """429, 5xx or no connection, after the client's own retries."""

    retryable = True


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeSettings:
    """Where the API server is and how to authenticate to it."""

    base_url: str
    token_file: Path
    ca_file: Path | None = None
    """The CA bundle for the API server's certificate (None: the system's)."""
    namespace: str = "default"
    """The service account's own namespace (the default for runbooks that name none)."""
    request_timeout_s: float = 10.0
    max_attempts: int = 3
    """Attempts for a 429/5xx/connection failure (log streams are not retried here)."""
    max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise KubeConfigError(
                f"Kubernetes API URL must be http(s)://host[:port]: {parts.scheme}"
            )
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise KubeConfigError("plain HTTP to the Kubernetes API is allowed on loopback only")

    @classmethod
    def in_cluster(
        cls, *, environ: Mapping[str, str] | None = None, account_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> KubeSettings:
        """The pod's service account, as every in-cluster client finds it."""
        env = os.environ if environ is None else environ
        host = env.get("KUBERNETES_SERVICE_HOST", "")
        port = env.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port:
            raise KubeConfigError(
                "not in a Kubernetes pod: KUBERNETES_SERVICE_HOST/PORT are not set"
            )
        token_file = account_dir / "token"
        if not token_file.is_file():
            raise KubeConfigError(f"no service account token at {token_file}")
        namespace_file = account_dir / "namespace"
        namespace = (
            namespace_file.read_text(encoding="utf-8").strip()
            if namespace_file.is_file()
            else "default"
        )
        ca_file = account_dir / "ca.crt"
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(
            base_url=f"https://{hostport}",
            token_file=token_file,
            ca_file=ca_file if ca_file.is_file() else None,
            namespace=namespace or "default",
        )

    @classmethod
    def explicit(
        cls,
        *,
        base_url: str,
        token_file: Path,
        ca_file: Path | None = None,
        namespace: str = "default",
        request_timeout_s: float = 10.0,
    ) -> KubeSettings:
        """A given API server (development, tests): ``http://`` only on loopback."""
        return cls(
            base_url=base_url.rstrip("/"),
            token_file=token_file,
            ca_file=ca_file,
            namespace=namespace,
            request_timeout_s=request_timeout_s,
        )


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _segment(value: str) -> str:
    return quote(value, safe="")


def jobs_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/batch/v1/namespaces/{_segment(namespace)}/jobs"
    return base if name is None else f"{base}/{_segment(name)}"


def pods_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{_segment(namespace)}/pods"
    return base if name is None else f"{base}/{_segment(name)}"


class _Token:
    """The bearer token, read again when its file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._value = ""

    def header(self) -> str:
        try:
            stat = self._path.stat()
        except OSError as exc:
            raise KubeConfigError(f"cannot read the Kubernetes token file {self._path}") from exc
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._value = self._path.read_text(encoding="utf-8").strip()
            self._stamp = stamp
        return f"Bearer {self._value}"


class KubeClient:
    """Jobs, their pods and the pods' logs, through the Kubernetes REST API.

    It opens its own HTTP session on first use (with the CA bundle); ``close()`` ends it.
    """

    def __init__(
        self,
        settings: KubeSettings,
        *,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._base = settings.base_url.rstrip("/")
        self._token = _Token(settings.token_file)
        self._session: aiohttp.ClientSession | None = None
        self._sleep = sleep
        self._jitter = jitter
        self._closed = False

    @property
    def settings(self) -> KubeSettings:
        return self._settings

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise KubeConfigError("the Kubernetes client is closed")
        if self._session is None:
            ssl_context: ssl.SSLContext | bool = True
            if self._settings.ca_file is not None:
                ssl_context = ssl.create_default_context(cafile=str(self._settings.ca_file))
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_context, limit=32),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session; idempotent."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the calls ------------------------------------------------------------------------

    async def create_job(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """``POST .../jobs``; ``KubeAlreadyExistsError`` when the name is taken."""
        return await self._json("POST", jobs_path(namespace), body=manifest)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._json("GET", jobs_path(namespace, name))

    async def list_job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """The Job's pods (label ``job-name``), oldest first."""
        body = await self._json(
            "GET", pods_path(namespace), query={"labelSelector": f"job-name={job_name}"}
        )
        items = [item for item in body.get("items", []) if isinstance(item, dict)]
        return sorted(items, key=lambda pod: str(pod.get("metadata", {}).get("creationTimestamp")))

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._json("GET", pods_path(namespace, name))

    async def delete_job(self, namespace: str, name: str) -> bool:
        """Delete the Job and, in the background, its pods. False if it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            await self._json(
                "DELETE",
                jobs_path(namespace, name),
                body=body,
                query={"propagationPolicy": "Background"},
            )
        except KubeNotFoundError:
            return False
        return True

    async def stream_pod_log(
        self,
        namespace: str,
        pod: str,
        *,
        container: str | None = None,
        since_time: str | None = None,
    ) -> AsyncIterator[str]:
        """Follow a pod's log with timestamps: yields lines (``<RFC 3339 time> <text>``)
        until the container stops or the connection ends. Not retried: the caller resumes
        from the last time it saw."""
        query = {"follow": "true", "timestamps": "true"}
        if container is not None:
            query["container"] = container
        if since_time is not None:
            query["sinceTime"] = since_time
        url = self._base + pods_path(namespace, pod) + "/log"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._settings.request_timeout_s, sock_read=None
        )
        try:
            async with self._http().get(
                url, params=query, headers=self._headers(), timeout=timeout
            ) as response:
                if response.status >= 300:
                    raise _error(response.status, await _status_body(response), "GET", url)
                pending = b""
                async for chunk in response.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode("utf-8", errors="replace")
                if pending:
                    yield pending.decode("utf-8", errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeUnavailableError(
                f"log stream of pod {pod} ended: {type(exc).__name__}"
            ) from exc

    # -- plumbing -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token.header(), "Accept": "application/json"}

    def _backoff(self, attempt: int) -> float:
        base: float = min(self._settings.max_backoff_s, 0.1 * 2.0**attempt)
        return base * (0.5 + self._jitter())

    async def _json(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        url = self._base + path
        timeout = aiohttp.ClientTimeout(total=self._settings.request_timeout_s)
        attempts = max(1, self._settings.max_attempts)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                async with self._http().request(
                    method,
                    url,
                    json=body,
                    params=query,
                    headers=self._headers(),
                    timeout=timeout,
                ) as response:
                    status = response.status
                    payload = await _status_body(response)
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as exc:
                if last:
                    raise KubeUnavailableError(
                        f"Kubernetes API unreachable ({method} {path}): {type(exc).__name__}"
                    ) from exc
                delay = self._backoff(attempt)
                log.info("kube_request_retry", method=method, reason=type(exc).__name__)
                await self._sleep(delay)
                continue
            if 200 <= status < 300:
                return payload
            if (status == 429 or status >= 500) and not last:
                delay = _retry_after(retry_after, self._backoff(attempt), self._settings)
                log.info("kube_request_retry", method=method, status=status)
                await self._sleep(delay)
                continue
            raise _error(status, payload, method, path)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _retry_after(header: str | None, fallback: float, settings: KubeSettings) -> float:
    if header is None:
        return fallback
    try:
        return min(max(0.0, float(header)), settings.max_backoff_s * 2)
    except ValueError:
        return fallback


async def _status_body(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _error(status: int, body: Mapping[str, Any], method: str, where: str) -> KubeError:
    reason = str(body.get("reason", "")) or f"HTTP {status}"
    message = str(body.get("message", ""))[:500]
    path = urlsplit(where).path or where
    if status == 401:
        return KubeAuthError(
            "the Kubernetes API rejected the bridge's service account token (401 Unauthorized):"
            " the token file is missing, expired or for another cluster",
            status=status,
            reason=reason,
        )
    if status == 403:
        return KubeAuthError(
            f"the Kubernetes API forbids this to the bridge's service account (403 Forbidden,"
            f" {method} {path}): grant it RBAC on jobs and pods/log. {message}",
            status=status,
            reason=reason,
        )
    if status == 409 and reason == "AlreadyExists":
        return KubeAlreadyExistsError(message or "already exists", status=status, reason=reason)
    if status == 404:
        return KubeNotFoundError(message or f"{path} not found", status=status, reason=reason)
    if status == 429 or status >= 500:
        return KubeUnavailableError(
            f"Kubernetes API unavailable ({status} {reason}): {message}",
            status=status,
            reason=reason,
        )
    return KubeRequestError(f"{status} {reason}: {message}", status=status, reason=reason)
