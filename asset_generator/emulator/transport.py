"""HTTP/1.1 (h11) and WebSocket (wsproto) on asyncio sockets, shared by both emulators.

``HttpTransport`` owns the listening socket, one h11 state machine per connection, keep-alive,
request bodies, the test hooks every answer passes through (latency, faults, the request
recorder) and the WebSocket handshake. What a request means is the subclass's business: it
implements ``handle`` and chooses the headers its real server sends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import h11

from asset_generator.emulator.config import Fault, FaultHook, FaultPoint, RecordedRequest
from asset_generator.emulator.httpmsg import Answer, HttpRequest
from asset_generator.emulator.recorder import Recorder
from asset_generator.emulator.websocket import WebSocketChannel, json_text

# Kestrel's limits (WebServer.cs): at most 200 header lines, 1 MiB of headers in total.
MAX_HEADER_COUNT = 200
MAX_HEADER_BYTES = 1024 * 1024
# Unread request bodies up to this size are skipped to keep the connection alive.
MAX_DRAIN_BYTES = 1024 * 1024
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_CHUNK = 65536
# Request bodies are read in bigger pieces (uploads of up to hundreds of MB).
BODY_CHUNK = 1024 * 1024


class PeerGone(Exception):
    """The client closed or broke the connection."""


class BodyTooLarge(Exception):
    """A request body grew past the limit the reader was given."""


@dataclass
class Exchange:
    """One request on one connection, with what is needed to read its body and answer it."""

    conn: h11.Connection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http_version: bytes
    request: HttpRequest

    async def read_body(self, limit: int) -> bytes:
        """The whole body; ``BodyTooLarge`` once more than ``limit`` bytes arrive."""
        return await read_body(self.conn, self.reader, self.writer, limit)

    async def drain(self) -> bool:
        """Skip an unread body; False when it is too big or the peer left."""
        return await drain(self.conn, self.reader, self.writer)

    async def discard_body(self) -> None:
        """Read and drop the rest of the body, however long (aiohttp's lingering read)."""
        while self.conn.their_state is h11.SEND_BODY:
            event = await next_event(self.conn, self.reader, self.writer, BODY_CHUNK)
            if not isinstance(event, h11.Data | h11.EndOfMessage):
                raise PeerGone("connection closed during the request body")

    @property
    def wants_websocket(self) -> bool:
        return is_websocket_upgrade(self.request, self.http_version)


@dataclass
class TransportSettings:
    """The knobs of the transport that both emulator configs carry."""

    host: str
    port: int
    latency_seconds: float
    faults: FaultHook | None


class HttpTransport:
    """The listening socket and one h11 state machine per connection."""

    # The Server header of the emulated product.
    server_header = "emulator"

    def __init__(self, settings: TransportSettings, recorder: Recorder) -> None:
        self.settings = settings
        self.recorder = recorder
        self._listener: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    # -- what subclasses provide --------------------------------------------------------------

    async def handle(self, exchange: Exchange) -> bool:
        """Answer one request; False when the connection must not be reused."""
        raise NotImplementedError

    def response_headers(self, answer: Answer) -> list[tuple[str, str]]:
        """Every header of ``answer`` in the order the real server writes them."""
        headers = [("Date", formatdate(usegmt=True)), ("Server", self.server_header)]
        headers += answer.headers
        if not answer.chunked:
            headers.append(("Content-Length", str(len(answer.body))))
        if answer.close:
            headers.append(("Connection", "close"))
        return headers

    def upgrade_headers(self, accept: str) -> list[tuple[str, str]]:
        """The headers of the ``101 Switching Protocols`` answer."""
        return [
            ("Date", formatdate(usegmt=True)),
            ("Server", self.server_header),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Accept", accept),
        ]

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; return the bound port."""
        self._listener = await asyncio.start_server(
            self._on_connection, self.settings.host, self.settings.port
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
        except (PeerGone, BodyTooLarge, ConnectionError, OSError):
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
            event = await next_event(conn, reader, writer)
            if not isinstance(event, h11.Request):
                return
            if len(event.headers) > MAX_HEADER_COUNT:
                await self.write(conn, writer, Answer(431, close=True), "GET")
                return
            request = HttpRequest(
                method=event.method.decode("ascii", "replace"),
                target=event.target.decode("utf-8", "replace"),
                headers=[
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
                ],
                peer=peer,
            )
            exchange = Exchange(conn, reader, writer, event.http_version, request)
            if not await self.handle(exchange):
                return
            if conn.their_state is h11.SEND_BODY and not await drain(conn, reader, writer):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    # -- answering ----------------------------------------------------------------------------

    def fault_at(
        self,
        transport: str,
        request: HttpRequest,
        record: RecordedRequest,
        *,
        status: int,
        body: bytes,
    ) -> Fault | None:
        """The fault the test's hook injects at this answer, if any."""
        if self.settings.faults is None:
            return None
        return self.settings.faults(
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

    async def send(
        self, exchange: Exchange, record: RecordedRequest, answer: Answer, *, compress: Any = None
    ) -> bool:
        """Send ``answer`` through the latency and fault hooks; False to hang up afterwards.

        ``compress`` (an answer → answer function) applies only to answers no fault replaced.
        """
        request, conn, writer = exchange.request, exchange.conn, exchange.writer
        if self.settings.latency_seconds > 0:
            await asyncio.sleep(self.settings.latency_seconds)
        truncate_to: int | None = None
        stall = 0.0
        replaced = False
        fault = self.fault_at("http", request, record, status=answer.status, body=answer.body)
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
            # Only a body can be cut off: one without is complete with its headers.
            truncate_to = fault.truncate_to if answer.body and request.method != "HEAD" else None
            stall = fault.stall_after_headers_seconds
            replaced = fault.status is not None or fault.body is not None
        if compress is not None and not replaced:
            answer = compress(answer)
        # Recorded before the bytes go out, so a client that has its answer sees it logged.
        self.recorder.finish(record, answer.status)
        await self.write(conn, writer, answer, request.method, truncate_to, stall)
        return not answer.close and truncate_to is None

    async def write(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        answer: Answer,
        method: str,
        truncate_to: int | None = None,
        stall_seconds: float = 0.0,
    ) -> None:
        headers = self.response_headers(answer)
        reason = reason_phrase(answer.status)
        data = conn.send(h11.Response(status_code=answer.status, headers=headers, reason=reason))
        body = answer.body if method != "HEAD" else b""
        # Only a body can be withheld: an empty one is complete with the headers, and the
        # client may already send its next request on this connection.
        if stall_seconds > 0 and body:
            writer.write(data)
            await writer.drain()
            data = b""
            await asyncio.sleep(stall_seconds)
        if truncate_to is not None:
            writer.write(data + conn.send(h11.Data(data=body[:truncate_to])))
            await writer.drain()
            writer.transport.abort()
            return
        # The headers go out first and a body is passed through uncopied: a large one
        # (the fault matrix sends 40 MiB) must not hold back the headers a client acts on.
        writer.write(data)
        if body:
            writer.writelines(conn.send_with_data_passthrough(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _protocol_error(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, exc: h11.RemoteProtocolError
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = exc.error_status_hint or 400
        with contextlib.suppress(Exception):
            await self.write(conn, writer, Answer(status, close=True), "GET")

    # -- WebSocket ----------------------------------------------------------------------------

    async def upgrade_fault(self, exchange: Exchange, record: RecordedRequest) -> Answer | None:
        """The answer a faulty proxy gives instead of the 101, if a fault says so.

        A status of 0 means "drop the connection without answering".
        """
        fault = self.fault_at("upgrade", exchange.request, record, status=101, body=b"")
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

    async def accept_websocket(
        self,
        exchange: Exchange,
        record: RecordedRequest,
        serve: Callable[[WebSocketChannel], Awaitable[None]],
        *,
        max_message_bytes: int,
        keepalive_seconds: float = 0.0,
        dumps: Callable[[dict[str, Any]], str] = json_text,
        answer_close: bool = True,
    ) -> None:
        """Send the 101, then run ``serve`` on the socket until it returns; hang up after."""
        request, conn, writer = exchange.request, exchange.conn, exchange.writer
        if self.settings.latency_seconds > 0:
            await asyncio.sleep(self.settings.latency_seconds)
        key = request.header("sec-websocket-key") or ""
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        response = h11.InformationalResponse(
            status_code=101, headers=self.upgrade_headers(accept), reason=b"Switching Protocols"
        )
        record.status = 101
        writer.write(conn.send(response))
        await writer.drain()
        trailing, _closed = conn.trailing_data

        def fault_point(
            message: dict[str, Any] | None, index: int, data: bytes | None
        ) -> FaultPoint:
            return FaultPoint(
                transport="ws",
                method=request.method,
                path=request.raw_path,
                route=record.route,
                headers=record.headers,
                request_body=record.body,
                message=message,
                index=index,
                data=data,
            )

        channel = WebSocketChannel(
            exchange.reader,
            writer,
            bytes(trailing),
            max_message_bytes=max_message_bytes,
            keepalive_seconds=keepalive_seconds,
            fault_point=fault_point,
            fault_hook=self.settings.faults,
            dumps=dumps,
            answer_close=answer_close,
        )
        channel.start()
        try:
            await serve(channel)
        finally:
            await channel.shutdown()


# -- h11 helpers ------------------------------------------------------------------------------


async def next_event(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    chunk: int = READ_CHUNK,
) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        data = await reader.read(chunk)
        conn.receive_data(data)


async def read_body(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int
) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await next_event(conn, reader, writer, BODY_CHUNK)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > limit:
                raise BodyTooLarge(size)
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise PeerGone("connection closed during the request body")


async def drain(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Skip the rest of a request body; False if it is too big or the peer went away."""
    size = 0
    while conn.their_state is h11.SEND_BODY:
        event = await next_event(conn, reader, writer)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_DRAIN_BYTES:
                return False
        elif not isinstance(event, h11.EndOfMessage):
            return False
    return True


def is_websocket_upgrade(request: HttpRequest, http_version: bytes) -> bool:
    """A WebSocket handshake: GET, HTTP/1.1, Upgrade: websocket, a key, version 13."""
    connection = {t.strip().lower() for t in (request.header("connection") or "").split(",")}
    return (
        request.method == "GET"
        and http_version == b"1.1"
        and "upgrade" in connection
        and (request.header("upgrade") or "").lower() == "websocket"
        and bool(request.header("sec-websocket-key"))
        and (request.header("sec-websocket-version") or "").strip() == "13"
    )


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def ranged(data: bytes, range_header: str | None, headers: list[tuple[str, str]]) -> Answer:
    """Serve ``data`` whole, or the one byte range asked for (206, or 416 past the end)."""
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


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
