"""Where shared files live: pre-authenticated download URLs, and the SharePoint view.

A file attachment's ``content.downloadUrl`` works without a token (it carries a
``tempauth`` query value, as SharePoint's do); its ``contentUrl`` needs a user's
sign-in, which a bot does not have, so it answers 401.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from devtools.teams_emulator.directory import Directory
from devtools.teams_emulator.records import CallLog, Operation
from devtools.teams_emulator.respond import Reply


class FileHost:
    def __init__(self, *, directory: Directory, calls: CallLog) -> None:
        self._directory = directory
        self._calls = calls

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_files/{unique_id}", self.download),
            web.get("/_sharepoint/{tail:.*}", self.sharepoint),
        ]

    def _record(self, request: web.Request, reply: Reply) -> web.Response:
        seq = self._calls.begin(
            method=request.method,
            path=request.path,
            query=request.query_string,
            operation=Operation.FILE_DOWNLOAD,
            headers=request.headers,
        )
        self._calls.finish(seq, reply.status, reply.payload)
        return reply.to_response()

    async def download(self, request: web.Request) -> web.Response:
        blob = self._directory.blob(request.match_info["unique_id"])
        offered = request.query.get("tempauth", "")
        if blob is None or blob.download_secret is None:
            return self._record(request, Reply(404, {"error": {"code": "itemNotFound"}}))
        if not hmac.compare_digest(offered.encode(), blob.download_secret.encode()):
            return self._record(request, Reply(401, {"error": {"code": "unauthenticated"}}))
        return self._record(request, Reply(200, raw=blob.data, content_type=blob.content_type))

    async def sharepoint(self, request: web.Request) -> web.Response:
        return self._record(
            request, Reply(401, {"error": {"code": "unauthenticated", "message": "Sign in first."}})
        )
