"""HTTP/1.1 (h11) and WebSocket (wsproto) transport on asyncio sockets.

Applies what Kestrel and ``src/Core/WebServer.cs`` do before any route runs: the optional
shared-secret ``Authorization`` gate on every path, keep-alive connections, the ``/View`` and
``/Output`` file routes, redirects for pages, and the WebSocket upgrade of ``/API/...``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import re
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import h11

from asset_generator.emulator.api import ApiDispatcher
from asset_generator.emulator.config import Fault, FaultPoint, RecordedRequest
from asset_generator.emulator.core import EmulatedServer
from asset_generator.emulator.httpmsg import Answer, HttpRequest, error_obj, json_answer, redirect
from asset_generator.emulator.recorder import Recorder
from asset_generator.emulator.websocket import WebSocketChannel

# Kestrel limits set in WebServer.cs: at most 200 header lines, 1 MiB of headers in total.
MAX_HEADER_COUNT = 200
MAX_HEADER_BYTES = 1024 * 1024
# Unread request bodies up to this size are skipped to keep the connection alive.
MAX_DRAIN_BYTES = 1024 * 1024
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_CHUNK = 65536
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


class _PeerGone(Exception):
    """The client closed or broke the connection."""


class HttpServer:
    """The listening socket and one h11 state machine per connection."""

    def __init__(self, server: EmulatedServer, recorder: Recorder) -> None:
        self.server = server
        self.config = server.config
        self.recorder = recorder
        self.dispatcher = ApiDispatcher(server, recorder)
        self._listener: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        """Listen; return the bound port."""
        self._listener = await asyncio.start_server(
            self._on_connection, self.config.host, self.config.port
        )
        return int(self._listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._listener is not None:
            self._listener.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._listener.wait_closed()

    # -- connection loop ----------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else ""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            await self._serve(conn, reader, writer, peer)
        except (_PeerGone, ConnectionError, OSError):
            pass
        except h11.RemoteProtocolError as exc:
            await self._protocol_error(conn, writer, exc)
        except asyncio.CancelledError:
            # Only ``stop`` cancels connections. Ending normally keeps asyncio's stream callback
            # from logging the cancellation as an error.
            pass
        finally:
            self._connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        while True:
            event = await _next_event(conn, reader, writer)
            if not isinstance(event, h11.Request):
                return
            if len(event.headers) > MAX_HEADER_COUNT:
                await self._write(conn, writer, Answer(431, close=True), "GET")
                return
            request = HttpRequest(
                method=event.method.decode("ascii", "replace"),
                target=event.target.decode("utf-8", "replace"),
                headers=[
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
                ],
                peer=peer,
            )
            if not await self._handle(conn, reader, writer, request, event.http_version):
                return
            if conn.their_state is h11.SEND_BODY and not await _drain(conn, reader, writer):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _handle(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: HttpRequest,
        http_version: bytes,
    ) -> bool:
        """Answer one request; False when the connection must not be reused."""
        upgrade = _is_websocket_upgrade(request, http_version)
        record = self.recorder.add(self.dispatcher.new_record(request, "ws" if upgrade else "http"))
        lowered = request.path.lower()
        is_api = lowered.startswith("/api/") or lowered == "/api"
        if request.method in ("GET", "HEAD") and not await _drain(conn, reader, writer):
            return False
        required = self.config.required_authorization
        if required and request.header("authorization") != required:
            # WebServer.cs middleware: plain text, before any routing, on every path.
            answer = Answer(401, b"Unauthorized")
        elif is_api and upgrade:
            refused = await self._upgrade_fault(request, record)
            if refused is None:
                await self._upgrade(conn, reader, writer, request, record)
                return False
            if refused.status == 0:  # dropped without an answer
                self.recorder.finish(record, None)
                writer.transport.abort()
                return False
            answer = refused
        elif is_api:
            request.read_body = lambda limit: _read_body(conn, reader, writer, limit)
            answer = await self.dispatcher.handle_http(request, record)
        else:
            answer = self._page(request)
        return await self._send(conn, writer, request, record, answer)

    async def _upgrade_fault(self, request: HttpRequest, record: RecordedRequest) -> Answer | None:
        """The answer a faulty proxy gives instead of the 101, if a fault says so."""
        fault = self._fault_at("upgrade", request, record, status=101, body=b"")
        if fault is None:
            return None
        pause = fault.delay_seconds + fault.stall_after_headers_seconds
        if pause > 0:
            await asyncio.sleep(pause)
        if fault.reset or fault.truncate_to is not None:
            return Answer(0, close=True)
        if fault.status is None and fault.body is None:
            return None
        return Answer(
            fault.status if fault.status is not None else 502,
            fault.body or b"",
            fault.headers or [],
            close=True,
        )

    def _fault_at(
        self,
        transport: str,
        request: HttpRequest,
        record: RecordedRequest,
        *,
        status: int,
        body: bytes,
    ) -> Fault | None:
        """The fault the test's hook injects at this answer, if any."""
        if self.config.faults is None:
            return None
        return self.config.faults(
            FaultPoint(
                transport=transport,
                method=request.method,
                path=request.raw_path,
                route=record.route,
                headers=record.headers,
                request_body=record.body if transport == "http" else None,
                status=status,
                body=body,
            )
        )

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: HttpRequest,
        record: RecordedRequest,
        answer: Answer,
    ) -> bool:
        if self.config.latency_seconds > 0:
            await asyncio.sleep(self.config.latency_seconds)
        truncate_to: int | None = None
        stall = 0.0
        replaced = False
        fault = self._fault_at("http", request, record, status=answer.status, body=answer.body)
        if fault is not None:
            if fault.delay_seconds > 0:
                await asyncio.sleep(fault.delay_seconds)
            if fault.reset:
                self.recorder.finish(record, None)
                writer.transport.abort()
                return False
            if fault.status is not None or fault.body is not None or fault.headers is not None:
                answer = Answer(
                    fault.status if fault.status is not None else answer.status,
                    fault.body if fault.body is not None else answer.body,
                    fault.headers if fault.headers is not None else answer.headers,
                    answer.close,
                )
            truncate_to = fault.truncate_to
            stall = fault.stall_after_headers_seconds
            replaced = fault.status is not None or fault.body is not None
        if self.config.compression and not replaced:
            answer = _compressed(answer, request.header("accept-encoding"))
        # Recorded before the bytes go out, so a client that has its answer sees it logged.
        self.recorder.finish(record, answer.status)
        await self._write(conn, writer, answer, request.method, truncate_to, stall)
        return not answer.close and truncate_to is None

    async def _write(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        answer: Answer,
        method: str,
        truncate_to: int | None = None,
        stall_seconds: float = 0.0,
    ) -> None:
        headers = [("Date", formatdate(usegmt=True)), ("Server", "Kestrel"), *answer.headers]
        if not answer.chunked:
            headers.append(("Content-Length", str(len(answer.body))))
        if answer.close:
            headers.append(("Connection", "close"))
        reason = _reason(answer.status)
        data = conn.send(h11.Response(status_code=answer.status, headers=headers, reason=reason))
        body = answer.body if method != "HEAD" else b""
        if stall_seconds > 0:
            writer.write(data)
            await writer.drain()
            data = b""
            await asyncio.sleep(stall_seconds)
        if truncate_to is not None:
            writer.write(data + conn.send(h11.Data(data=body[:truncate_to])))
            await writer.drain()
            writer.transport.abort()
            return
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()

    async def _protocol_error(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, exc: h11.RemoteProtocolError
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = exc.error_status_hint or 400
        with contextlib.suppress(Exception):
            await self._write(conn, writer, Answer(status, close=True), "GET")

    # -- WebSocket ----------------------------------------------------------------------------

    async def _upgrade(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: HttpRequest,
        record: RecordedRequest,
    ) -> None:
        """Accept the upgrade unconditionally (API.cs), then serve the socket."""
        if self.config.latency_seconds > 0:
            await asyncio.sleep(self.config.latency_seconds)
        key = request.header("sec-websocket-key") or ""
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        response = h11.InformationalResponse(
            status_code=101,
            headers=[
                ("Date", formatdate(usegmt=True)),
                ("Server", "Kestrel"),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Accept", accept),
            ],
            reason=b"Switching Protocols",
        )
        record.status = 101
        writer.write(conn.send(response))
        await writer.drain()
        trailing, _closed = conn.trailing_data

        def fault_point(message: dict[str, Any], index: int) -> FaultPoint:
            return FaultPoint(
                transport="ws",
                method=request.method,
                path=request.raw_path,
                route=record.route,
                headers=record.headers,
                request_body=record.body,
                message=message,
                index=index,
            )

        channel = WebSocketChannel(
            reader,
            writer,
            bytes(trailing),
            max_message_bytes=self.config.max_receive_bytes,
            keepalive_seconds=self.config.ws_keepalive_seconds,
            fault_point=fault_point,
            fault_hook=self.config.faults,
        )
        channel.start()
        try:
            await self.dispatcher.handle_ws(request, channel, record)
        finally:
            await channel.shutdown()

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
        return _ranged(data, request.header("range"), headers)


async def _next_event(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        data = await reader.read(READ_CHUNK)
        conn.receive_data(data)


async def _read_body(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int
) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(conn, reader, writer)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > limit:
                raise _PeerGone("body larger than announced")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise _PeerGone("connection closed during the request body")


async def _drain(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Skip the rest of a request body; False if it is too big or the peer went away."""
    size = 0
    while conn.their_state is h11.SEND_BODY:
        event = await _next_event(conn, reader, writer)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_DRAIN_BYTES:
                return False
        elif not isinstance(event, h11.EndOfMessage):
            return False
    return True


def _is_websocket_upgrade(request: HttpRequest, http_version: bytes) -> bool:
    """ASP.NET ``IsWebSocketRequest``: GET, HTTP/1.1, Upgrade: websocket, key, version 13."""
    connection = {t.strip().lower() for t in (request.header("connection") or "").split(",")}
    return (
        request.method == "GET"
        and http_version == b"1.1"
        and "upgrade" in connection
        and (request.header("upgrade") or "").lower() == "websocket"
        and bool(request.header("sec-websocket-key"))
        and (request.header("sec-websocket-version") or "").strip() == "13"
    )


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


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _ranged(data: bytes, range_header: str | None, headers: list[tuple[str, str]]) -> Answer:
    """Serve ``data`` whole, or one byte range (``enableRangeProcessing: true``)."""
    match = _RANGE.match((range_header or "").strip())
    if not match or (not match.group(1) and not match.group(2)):
        return Answer(200, data, headers)
    total = len(data)
    if match.group(1):
        start = int(match.group(1))
        end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
    else:
        start, end = max(0, total - int(match.group(2))), total - 1
    if start >= total or start > end:
        return Answer(416, b"", [*headers, ("Content-Range", f"bytes */{total}")])
    part = data[start : end + 1]
    return Answer(206, part, [*headers, ("Content-Range", f"bytes {start}-{end}/{total}")])


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


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
