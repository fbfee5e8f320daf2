"""The ``http`` executor: one HTTP request built from a template, never a second one.

The URL is rendered with every parameter value percent-quoted whole (``/``, ``?``,
``#`` and ``%`` included), so a value can never change the scheme, the host or the
path's structure; a value that would make a path segment ``.`` or ``..`` is refused.
Header values are rendered as text (secrets allowed; CR, LF and NUL refused); the
JSON body keeps each whole-leaf parameter as a JSON value of its own type. Redirects
are not followed: a redirect is reported in the outcome. The response body is passed
to the output as it comes, capped, decoded as UTF-8 (bad bytes replaced).

The executor owns one ``aiohttp`` session (no cookies kept between runs), created on
the first run and closed by ``close``. Cancelling ``run`` aborts the request and
closes its connection.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import quote, unquote

import aiohttp
import structlog
from yarl import URL

from bridge.runbooks.executors.base import MASK, ExecutorError, Invocation, Outcome, OutputSink
from bridge.runbooks.model import HttpSpec, RunState
from bridge.runbooks.templates import mask, render_json, render_masked, render_text

log = structlog.get_logger(__name__)

_READ_CHUNK: Final = 16 * 1024
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_FORBIDDEN_IN_HEADERS: Final = ("\r", "\n", "\x00")
_MAX_LOCATION_SHOWN: Final = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class _Request:
    method: str
    url: URL
    headers: Mapping[str, str]
    body: bytes | None


def quote_url_value(text: str) -> str:
    """A value for a URL: every character but letters, digits and ``_.-~`` quoted."""
    try:
        return quote(text, safe="", encoding="utf-8", errors="strict")
    except UnicodeEncodeError:
        raise ExecutorError("a parameter value is not valid text for a URL") from None


class HttpExecutor:
    """Runs ``HttpSpec`` runbooks as one HTTP request each."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        max_output_bytes: int = 64 * 1024,
    ) -> None:
        """Connect and read timeouts apply within the runbook's own timeout."""
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_output_bytes = max_output_bytes
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def plan(self, invocation: Invocation) -> str:
        spec = _http_spec(invocation)
        names = frozenset(ref.name for ref in spec.secrets) | frozenset(invocation.secrets)
        url = render_masked(spec.url, invocation.args, names, quote=quote_url_value)
        _check_url(url)
        lines = ["http (redirects not followed)", f"{spec.method.upper()} {url}"]
        for name, template in spec.headers.items():
            value = render_masked(template, invocation.args, names)
            _check_header(name, value)
            lines.append(f"{name}: {value}")
        if spec.body is not None:
            masked = dict.fromkeys(names, MASK)
            body = render_json(spec.body, invocation.args, masked)
            lines.append(f"body: {json.dumps(body, ensure_ascii=False)}")
        return mask("\n".join(lines), invocation.secrets)

    async def run(self, invocation: Invocation, output: OutputSink) -> Outcome:
        spec = _http_spec(invocation)
        request = _build(spec, invocation)
        total = invocation.runbook.timeout.total_seconds()
        timeout = aiohttp.ClientTimeout(
            total=total,
            sock_connect=min(self._connect_timeout_s, total),
            sock_read=min(self._read_timeout_s, total),
        )
        log.info("runbook_http_started", run_id=invocation.run_id, method=request.method)
        try:
            response = await self._session_for_run().request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                allow_redirects=False,
                timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _failed(f"request failed: {_describe(exc)}", invocation)
        try:
            truncated = await self._read_body(response, output)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _failed(
                f"HTTP {response.status}, reading the body failed: {_describe(exc)}", invocation
            )
        finally:
            response.close()
        log.info("runbook_http_finished", run_id=invocation.run_id, status=response.status)
        return _outcome(spec, response, invocation, truncated=truncated)

    def _session_for_run(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, raise_for_status=False
            )
        return self._session

    async def _read_body(self, response: aiohttp.ClientResponse, output: OutputSink) -> bool:
        """Pass the body on as it comes; True when it was cut at the cap."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        captured = 0
        while chunk := await response.content.read(_READ_CHUNK):
            room = self._max_output_bytes - captured
            if len(chunk) > room:
                _emit(output, decoder.decode(chunk[:room]))
                _emit(output, f"\n[output truncated at {self._max_output_bytes} bytes]\n")
                return True
            captured += len(chunk)
            _emit(output, decoder.decode(chunk))
        _emit(output, decoder.decode(b"", final=True))
        return False


def _http_spec(invocation: Invocation) -> HttpSpec:
    spec = invocation.spec
    if not isinstance(spec, HttpSpec):
        raise ExecutorError("not an http runbook")
    return spec


def _build(spec: HttpSpec, invocation: Invocation) -> _Request:
    url = _check_url(
        render_text(spec.url, invocation.args, invocation.secrets, quote=quote_url_value)
    )
    headers: dict[str, str] = {}
    for name, template in spec.headers.items():
        value = render_text(template, invocation.args, invocation.secrets)
        _check_header(name, value)
        headers[name] = value
    body: bytes | None = None
    if spec.body is not None:
        rendered: Any = render_json(spec.body, invocation.args, invocation.secrets)
        try:
            body = json.dumps(rendered, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate: as JSON it could pair with its neighbour and change.
            raise ExecutorError("the request body would hold text that is not Unicode") from None
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
    return _Request(method=spec.method.upper(), url=url, headers=headers, body=body)


def _check_url(text: str) -> URL:
    """The rendered URL, refused unless absolute http(s) with a host and no dot segment."""
    try:
        url = URL(text, encoded=True)
    except ValueError:
        raise ExecutorError("the runbook's URL is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ExecutorError("the runbook's URL must be an absolute http or https URL")
    for segment in url.raw_path.split("/"):
        if unquote(segment) in (".", ".."):
            raise ExecutorError("a path segment of the runbook's URL would be '.' or '..'")
    return url


def _check_header(name: str, value: str) -> None:
    if any(char in name or char in value for char in _FORBIDDEN_IN_HEADERS):
        raise ExecutorError(f"header {name!r} would hold a line break or a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ExecutorError(f"header {name!r} would hold text that is not Unicode") from None


def _outcome(
    spec: HttpSpec, response: aiohttp.ClientResponse, invocation: Invocation, *, truncated: bool
) -> Outcome:
    status = response.status
    summary = f"HTTP {status} {_reason(status)}".rstrip()
    if status in _REDIRECTS:
        summary += f", a redirect to {_location(response)!r} not followed"
    if truncated:
        summary += " (output truncated)"
    state = RunState.SUCCEEDED if status in spec.success_statuses else RunState.FAILED
    return Outcome(state=state, summary=_masked(summary, invocation))


def _location(response: aiohttp.ClientResponse) -> str:
    """Where a redirect points, without its query and fragment (they may carry what
    the request sent, secrets included)."""
    location = response.headers.get("Location", "")
    for separator in ("?", "#"):
        location = location.split(separator, 1)[0]
    return location[:_MAX_LOCATION_SHOWN]


def _failed(summary: str, invocation: Invocation) -> Outcome:
    log.info("runbook_http_failed", run_id=invocation.run_id)
    return Outcome(state=RunState.FAILED, summary=_masked(summary, invocation))


def _masked(text: str, invocation: Invocation) -> str:
    """``text`` without the secrets, as given or as quoted into the URL."""
    forms = dict(invocation.secrets)
    for name, value in invocation.secrets.items():
        forms[f"{name}:quoted"] = quote(value, safe="", errors="replace")
    return mask(text, forms)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _emit(output: OutputSink, text: str) -> None:
    if text:
        output(text)
