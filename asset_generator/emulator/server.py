"""SwarmUI's HTTP side on the shared transport (``transport.py``).

Applies what Kestrel and ``src/Core/WebServer.cs`` do before any route runs: the optional
shared-secret ``Authorization`` gate on every path, the ``/View`` and ``/Output`` file routes,
redirects for pages, response compression, and the WebSocket upgrade of ``/API/...``.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from urllib.parse import unquote

from asset_generator.emulator.api import ApiDispatcher
from asset_generator.emulator.core import EmulatedServer
from asset_generator.emulator.httpmsg import Answer, HttpRequest, error_obj, json_answer, redirect
from asset_generator.emulator.recorder import Recorder
from asset_generator.emulator.transport import Exchange, HttpTransport, TransportSettings, ranged

# Network.OutputCacheSeconds default (src/Core/Settings.cs).
OUTPUT_CACHE_SECONDS = 30
_CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "json": "application/json",
    "txt": "text/plain",
}
# ResponseCompressionDefaults.MimeTypes that the emulator can produce.
COMPRESSIBLE = ("application/json", "text/plain", "text/html")
_FORBIDDEN_PATH_CHARS = set('<>:"\\|?*~&@;#$^')


class HttpServer(HttpTransport):
    """SwarmUI's routing on the shared transport: the auth gate, ``/API/...``, pages, files."""

    server_header = "Kestrel"

    def __init__(self, server: EmulatedServer, recorder: Recorder) -> None:
        config = server.config
        super().__init__(
            TransportSettings(config.host, config.port, config.latency_seconds, config.faults),
            recorder,
        )
        self.server = server
        self.config = config
        self.dispatcher = ApiDispatcher(server, recorder)

    async def handle(self, exchange: Exchange) -> bool:
        """Answer one request; False when the connection must not be reused."""
        request = exchange.request
        upgrade = exchange.wants_websocket
        record = self.recorder.add(self.dispatcher.new_record(request, "ws" if upgrade else "http"))
        lowered = request.path.lower()
        is_api = lowered.startswith("/api/") or lowered == "/api"
        if request.method in ("GET", "HEAD") and not await exchange.drain():
            return False
        required = self.config.required_authorization
        if required and request.header("authorization") != required:
            # WebServer.cs middleware: plain text, before any routing, on every path.
            answer = Answer(401, b"Unauthorized")
        elif is_api and upgrade:
            refused = await self.upgrade_fault(exchange, record)
            if refused is None:
                await self.accept_websocket(
                    exchange,
                    record,
                    lambda channel: self.dispatcher.handle_ws(request, channel, record),
                    max_message_bytes=self.config.max_receive_bytes,
                    keepalive_seconds=self.config.ws_keepalive_seconds,
                    # .NET's ManagedWebSocket leaves the answer to the route's CloseAsync.
                    answer_close=False,
                )
                return False
            if refused.status == 0:  # dropped without an answer
                self.recorder.finish(record, None)
                exchange.writer.transport.abort()
                return False
            answer = refused
        elif is_api:
            request.read_body = exchange.read_body
            answer = await self.dispatcher.handle_http(request, record)
        else:
            answer = self._page(request)
        return await self.send(exchange, record, answer, compress=self._compress(request))

    def _compress(self, request: HttpRequest) -> Callable[[Answer], Answer] | None:
        if not self.config.compression:
            return None
        accept_encoding = request.header("accept-encoding")
        return lambda answer: _compressed(answer, accept_encoding)

    # -- pages and files ----------------------------------------------------------------------

    def _page(self, request: HttpRequest) -> Answer:
        lowered = request.path.lower()
        if lowered.startswith(("/view/", "/output/")):
            if request.method != "GET":
                return Answer(405, headers=[("Allow", "GET")])
            return self._view_output(request)
        if lowered.startswith("/viewspecial/"):
            return json_answer(404, error_obj("404, file not found.", "file_not_found"))
        if request.path == "/":
            return redirect("Text2Image")
        if lowered.startswith("/error/") or lowered == "/text2image":
            title = "SwarmUI emulator" if lowered == "/text2image" else request.path
            page = f"<!DOCTYPE html><html><body><h1>{title}</h1></body></html>".encode()
            status = 404 if lowered == "/error/404" else 200
            return Answer(status, page, [("Content-Type", "text/html; charset=utf-8")])
        # Unknown pages end in a redirect to the error page (WebServer.cs 404 middleware).
        return redirect("/Error/404")

    def _view_output(self, request: HttpRequest) -> Answer:
        """``WebServer.ViewOutput``: cookie identity (not session), user folder, 404 JSON."""
        path = request.path
        if path.startswith("/View/"):
            rest, exact = path[len("/View/") :], True
        elif path.startswith("/Output/"):
            rest, exact = path[len("/Output/") :], False
        else:
            return json_answer(
                400, error_obj("view output path prefix does not make sense", "bad_path")
            )
        rest = unquote(rest).replace("\\", "/")
        user = self.server.user_for(request)
        if user is None:
            return json_answer(400, error_obj("invalid or unauthorized", "invalid_user"))
        owner = user.user_id
        if exact:
            owner, _, rest = rest.partition("/")
            if owner != user.user_id and not self.server.has_permission(
                user, "view_others_outputs"
            ):
                return json_answer(
                    400,
                    error_obj(
                        "unauthorized - you may not view other users' outputs", "unauthorized"
                    ),
                )
        data = self.server.store.load(owner, _check_file_path(rest))
        if data is None:
            return json_answer(404, error_obj("404, file not found.", "file_not_found"))
        extension = rest.rsplit(".", 1)[-1].lower() if "." in rest else ""
        content_type = _CONTENT_TYPES.get(extension, "application/octet-stream")
        max_age = 2 if content_type.startswith(("application/", "text/")) else OUTPUT_CACHE_SECONDS
        headers = [
            ("Content-Type", content_type),
            ("Cache-Control", f"private, max-age={max_age}"),
            ("Accept-Ranges", "bytes"),
        ]
        return ranged(data, request.header("range"), headers)


def _check_file_path(path: str) -> str:
    """``WebServer.CheckFilePath``: no forbidden characters, no ``..``, relative."""
    path = path.replace("\\", "/").replace("%20", " ")
    path = "".join(c for c in path if ord(c) >= 32 and c not in _FORBIDDEN_PATH_CHARS)
    while ".." in path:
        path = path.replace("..", "")
    path = path.strip()
    while "//" in path:
        path = path.replace("//", "/")
    return path.strip("/")


def _accepts_gzip(accept_encoding: str | None) -> bool:
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip().lower()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def _compressed(answer: Answer, accept_encoding: str | None) -> Answer:
    """ASP.NET response compression (WebServer.cs ``UseResponseCompression``, default options).

    JSON answers are gzipped for clients that accept gzip, and then carry no Content-Length
    (chunked). The real server prefers Brotli when offered; the stdlib has no Brotli, so the
    emulator always uses gzip.
    """
    content_type = dict((k.lower(), v) for k, v in answer.headers).get("content-type", "")
    if not content_type.startswith(COMPRESSIBLE) or not _accepts_gzip(accept_encoding):
        return answer
    body = gzip.compress(answer.body, compresslevel=1, mtime=0)
    headers = [*answer.headers, ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
    return Answer(answer.status, body, headers, answer.close, chunked=True)
