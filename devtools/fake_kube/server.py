"""``FakeKube``: the fake API server's HTTP face, its request record and its faults."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from devtools.fake_kube.cluster import Cluster, FakeJob, FakePod
from devtools.fake_kube.objects import (
    already_exists,
    label_selector_matches,
    not_found,
    now_ns,
    parse_time,
    status,
)
from devtools.fake_kube.programs import Program
from devtools.fake_kube.validation import RejectedError, check_job

LOOPBACK: Final = "127.0.0.1"
SHUTDOWN_TIMEOUT_S: Final = 5.0
MAX_BODY_BYTES: Final = 3 * 1024 * 1024
"""The API server's limit on a request body (larger: 413)."""
SERVICE_ACCOUNT: Final = "system:serviceaccount:incident-bridge:incident-bridge"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    """One request the fake answered (a log stream is recorded when it ends)."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    authorized: bool
    body: Any = None


@dataclass(slots=True, kw_only=True)
class Fault:
    status: int
    remaining: int
    method: str | None = None
    path_contains: str | None = None
    retry_after: float | None = None
    delay_s: float = 0.0
    """With ``status`` 0: the request is carried out, then answered after this delay."""
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a matching request arrives."""

    def matches(self, request: web.Request) -> bool:
        return (self.method is None or request.method == self.method) and (
            self.path_contains is None or self.path_contains in request.path
        )


def _json(body: Any, code: int = 200) -> web.Response:
    return web.json_response(body, status=code)


def _status(code: int, reason: str, message: str) -> web.Response:
    return _json(status(code, reason, message), code)


class FakeKube:
    """A Kubernetes API server on loopback; see the package documentation."""

    def __init__(
        self,
        *,
        token: str | None = None,
        program: Program | None = None,
        start_delay_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.token = token or secrets.token_urlsafe(32)
        self.cluster = Cluster(program=program, start_delay_s=start_delay_s)
        self.requests: list[RecordedRequest] = []
        self.forbidden_namespaces: set[str] = set()
        self._faults: list[Fault] = []
        self._stream_epoch = 0
        self._closing = asyncio.Event()
        self._port = port
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind 127.0.0.1 (``port``, or a free one) and serve."""
        if self._runner is not None:
            raise RuntimeError("the fake API server is already started")
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        app.add_routes(
            [
                web.post("/apis/batch/v1/namespaces/{ns}/jobs", self._create_job),
                web.get("/apis/batch/v1/namespaces/{ns}/jobs", self._list_jobs),
                web.get("/apis/batch/v1/namespaces/{ns}/jobs/{name}", self._get_job),
                web.get("/apis/batch/v1/namespaces/{ns}/jobs/{name}/status", self._get_job),
                web.delete("/apis/batch/v1/namespaces/{ns}/jobs/{name}", self._delete_job),
                web.get("/api/v1/namespaces/{ns}/pods", self._list_pods),
                web.get("/api/v1/namespaces/{ns}/pods/{name}", self._get_pod),
                web.get("/api/v1/namespaces/{ns}/pods/{name}/log", self._pod_log),
            ]
        )
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, LOOPBACK, self._port)
            await site.start()
            self._base_url = f"http://{LOOPBACK}:{runner.addresses[0][1]}"
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every Job and Pod, end log streams and held answers, close the server
        (idempotent)."""
        self._closing.set()
        await self.cluster.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the fake API server is not started")
        return self._base_url

    def write_token_file(self, path: Path) -> Path:
        """The bearer token into ``path`` (mode 0600), as a service account's token file."""
        path.write_text(self.token + "\n", encoding="utf-8")
        path.chmod(0o600)
        return path

    # -- test controls --------------------------------------------------------------------

    def fail_next(
        self,
        code: int,
        *,
        count: int = 1,
        method: str | None = None,
        path_contains: str | None = None,
        retry_after: float | None = None,
    ) -> Fault:
        """Answer the next ``count`` matching requests with ``code`` (a Status body);
        ``fault.reached`` is set when one arrives."""
        fault = Fault(
            status=code,
            remaining=count,
            method=method,
            path_contains=path_contains,
            retry_after=retry_after,
        )
        self._faults.append(fault)
        return fault

    def slow_next(
        self,
        delay_s: float,
        *,
        count: int = 1,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> Fault:
        """Carry out the next ``count`` matching requests, then answer each only after
        ``delay_s`` (a response lost in flight); ``fault.reached`` is set on arrival."""
        fault = Fault(
            status=0, remaining=count, method=method, path_contains=path_contains, delay_s=delay_s
        )
        self._faults.append(fault)
        return fault

    def cut_log_streams(self) -> None:
        """End every open ``follow`` log stream now (as an API server restart would)."""
        self._stream_epoch += 1
        for pod in self.cluster.pods.values():
            pod.notify()

    def job(self, namespace: str, name: str) -> FakeJob | None:
        return self.cluster.jobs.get((namespace, name))

    def running_pods(self) -> list[FakePod]:
        return self.cluster.running_pods()

    def requests_to(self, method: str, path_contains: str = "") -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and path_contains in r.path]

    # -- middleware: auth, faults, record -------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _status(
                    413,
                    "RequestEntityTooLarge",
                    f"Request entity too large: limit is {MAX_BODY_BYTES}",
                )
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", errors="replace")
        authorized = self._authorized(request)
        response: web.StreamResponse
        if not authorized:
            response = _status(401, "Unauthorized", "Unauthorized")
        elif (forbidden := self._forbidden(request)) is not None:
            response = forbidden
        elif (fault := self._fault(request)) is not None and fault.status:
            response = _status(
                fault.status,
                "TooManyRequests" if fault.status == 429 else "InternalError",
                "injected by the test",
            )
            if fault.retry_after is not None:
                response.headers["Retry-After"] = str(fault.retry_after)
        else:
            try:
                response = await handler(request)
                if fault is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), fault.delay_s)
            except web.HTTPNotFound:
                response = _status(
                    404, "NotFound", "the server could not find the requested resource"
                )
            except web.HTTPMethodNotAllowed:
                response = _status(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                status=response.status,
                authorized=authorized,
                body=body,
            )
        )
        return response

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), self.token.encode()
        )

    def _forbidden(self, request: web.Request) -> web.Response | None:
        match = re.match(r"^/apis?/(?:batch/)?v1/namespaces/([^/]+)/(jobs|pods)", request.path)
        if match is None or match.group(1) not in self.forbidden_namespaces:
            return None
        namespace, resource = match.groups()
        group = "batch" if resource == "jobs" else ""
        verb = {"POST": "create", "DELETE": "delete"}.get(request.method, "get")
        in_group = f' in API group "{group}"'
        return _status(
            403,
            "Forbidden",
            f'{resource}{"." + group if group else ""} is forbidden: User "{SERVICE_ACCOUNT}"'
            f' cannot {verb} resource "{resource}"{in_group} in the namespace "{namespace}"',
        )

    def _fault(self, request: web.Request) -> Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.matches(request):
                fault.remaining -= 1
                fault.reached.set()
                return fault
        return None

    # -- jobs -----------------------------------------------------------------------------

    async def _create_job(self, request: web.Request) -> web.Response:
        namespace = request.match_info["ns"]
        try:
            manifest = json.loads(await request.read())
        except ValueError:
            return _status(400, "BadRequest", "the body of the request was not valid JSON")
        if not isinstance(manifest, dict):
            return _status(400, "BadRequest", "the body must be a Job object")
        try:
            check_job(namespace, manifest)
        except RejectedError as rejected:
            return _json(rejected.body, rejected.code)
        metadata = manifest["metadata"]
        if not metadata.get("name"):
            suffix = "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
            metadata["name"] = f"{metadata['generateName']}{suffix}"
        name = metadata["name"]
        if (namespace, name) in self.cluster.jobs:
            return _json(already_exists("jobs", "batch", name), 409)
        job = self.cluster.create_job(namespace, copy.deepcopy(manifest))
        return _json(job.to_json(), 201)

    async def _list_jobs(self, request: web.Request) -> web.Response:
        namespace = request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        items = [
            job.to_json()
            for (ns, _), job in sorted(self.cluster.jobs.items())
            if ns == namespace and label_selector_matches(selector, job.labels)
        ]
        return _json(
            {
                "kind": "JobList",
                "apiVersion": "batch/v1",
                "metadata": {"resourceVersion": str(self.cluster.next_version())},
                "items": items,
            }
        )

    async def _get_job(self, request: web.Request) -> web.Response:
        job = self.job(request.match_info["ns"], request.match_info["name"])
        if job is None:
            return _json(not_found("jobs", "batch", request.match_info["name"]), 404)
        return _json(job.to_json())

    async def _delete_job(self, request: web.Request) -> web.Response:
        name = request.match_info["ns"], request.match_info["name"]
        job = self.job(*name)
        if job is None:
            return _json(not_found("jobs", "batch", name[1]), 404)
        policy = request.query.get("propagationPolicy")
        if policy is None and request.can_read_body:
            try:
                options = json.loads(await request.read() or b"{}")
            except ValueError:
                return _status(400, "BadRequest", "the body of the request was not valid JSON")
            if isinstance(options, dict):
                policy = options.get("propagationPolicy")
        policy = policy or "Orphan"
        if policy not in ("Orphan", "Background", "Foreground"):
            return _status(400, "BadRequest", f"unsupported propagationPolicy {policy!r}")
        body = job.to_json()
        self.cluster.delete_job(job, policy)
        if policy == "Foreground":
            return _json(body)
        return _json(status(200, "", "", name=job.name, group="batch", kind="jobs", uid=job.uid))

    # -- pods -----------------------------------------------------------------------------

    async def _list_pods(self, request: web.Request) -> web.Response:
        namespace = request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        items = [
            pod.to_json()
            for (ns, _), pod in sorted(self.cluster.pods.items())
            if ns == namespace and label_selector_matches(selector, pod.labels)
        ]
        return _json(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.cluster.next_version())},
                "items": items,
            }
        )

    def _pod(self, request: web.Request) -> FakePod | None:
        return self.cluster.pods.get((request.match_info["ns"], request.match_info["name"]))

    async def _get_pod(self, request: web.Request) -> web.Response:
        pod = self._pod(request)
        if pod is None:
            return _json(not_found("pods", "", request.match_info["name"]), 404)
        return _json(pod.to_json())

    async def _pod_log(self, request: web.Request) -> web.StreamResponse:
        pod = self._pod(request)
        if pod is None:
            return _json(not_found("pods", "", request.match_info["name"]), 404)
        names = pod.container_names
        container = request.query.get("container")
        if container is None and len(names) > 1:
            return _status(
                400,
                "BadRequest",
                f"a container name must be specified for pod {pod.name},"
                f" choose one of: [{' '.join(names)}]",
            )
        container = container or (names[0] if names else "")
        if container not in names:
            return _status(
                400, "BadRequest", f"container {container} is not valid for pod {pod.name}"
            )
        if pod.phase == "Pending":
            return _status(
                400,
                "BadRequest",
                f'container "{container}" in pod "{pod.name}" is waiting to start:'
                " ContainerCreating",
            )
        since_ns = 0
        if "sinceTime" in request.query:
            parsed = parse_time(request.query["sinceTime"])
            if parsed is None:
                return _status(400, "BadRequest", "sinceTime: invalid RFC 3339 time")
            since_ns = parsed
        elif "sinceSeconds" in request.query:
            since_ns = now_ns() - int(request.query["sinceSeconds"]) * 1_000_000_000
        timestamps = request.query.get("timestamps") == "true"
        main = container == names[0]

        def pending_lines(start: int) -> tuple[str, int]:
            lines = pod.logs[start:] if main else []
            text = "".join(
                Cluster.log_line_json(line, timestamps=timestamps)
                for line in lines
                if line.at_ns >= since_ns
            )
            return text, start + len(lines)

        if request.query.get("follow") != "true":
            text, _ = pending_lines(0)
            return web.Response(text=text, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        sent = 0
        epoch = self._stream_epoch
        try:
            while True:
                event = pod.changed
                text, sent = pending_lines(sent)
                if text:
                    await response.write(text.encode())
                if pod.terminated or epoch != self._stream_epoch:
                    break
                await event.wait()
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away: nothing more to send
        return response
