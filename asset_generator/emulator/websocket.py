"""One server-side WebSocket over an asyncio stream, framed by wsproto.

Outgoing JSON goes through a single FIFO so messages from concurrent generation tasks keep
their order; a peer that vanished turns sends into no-ops (SwarmUI only logs the failure and
keeps generating, ``API.cs``).

How the peer ended decides what SwarmUI logs, so it is kept: a Close frame from the peer
(``close_received``), or a connection that ended without one (``vanished``), which makes
.NET's ManagedWebSocket throw ConnectionClosedPrematurely on the next receive and abort the
socket. ManagedWebSocket never answers the peer's Close by itself (the route's CloseAsync
does, when it ends): ``answer_close=False``. aiohttp (ComfyUI) answers it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

from asset_generator.emulator.config import Fault, FaultPoint

# API.WebsocketTimeout: each send may take at most 2 minutes.
SEND_TIMEOUT_SECONDS = 120.0
# How long to wait for the peer's Close after ours (SwarmUI allows a minute; tests need less).
CLOSE_WAIT_SECONDS = 5.0
READ_CHUNK = 65536


_Outgoing = dict[str, Any] | bytes | None


def json_text(document: dict[str, Any]) -> str:
    """Compact JSON, non-ASCII kept, as ``Utilities.SendJson`` writes it."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


class WebSocketChannel:
    """A server WebSocket: receive whole messages, queue JSON to send, close politely."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        trailing: bytes,
        *,
        max_message_bytes: int,
        keepalive_seconds: float,
        fault_point: Callable[[dict[str, Any] | None, int, bytes | None], FaultPoint] | None = None,
        fault_hook: Callable[[FaultPoint], Fault | None] | None = None,
        dumps: Callable[[dict[str, Any]], str] = json_text,
        answer_close: bool = True,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._ws = Connection(ConnectionType.SERVER)
        self._pending_bytes = trailing
        self._max_message = max_message_bytes
        self._keepalive = keepalive_seconds
        self._fault_point = fault_point
        self._fault_hook = fault_hook
        self._dumps = dumps
        self._incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._outgoing: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._peer_closed = asyncio.Event()
        self._answer_close = answer_close
        # The peer sent a Close frame; or its connection ended without one.
        self.close_received = False
        self.vanished = False
        # The route already logged the failure this socket met (API.cs logs once).
        self.failure_logged = False
        self._dead = False
        self._sent = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def alive(self) -> bool:
        """False once the peer closed or vanished (sends are then dropped)."""
        return not self._dead and not self._peer_closed.is_set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._read_loop()))
        self._tasks.append(loop.create_task(self._write_loop()))
        if self._keepalive > 0:
            self._tasks.append(loop.create_task(self._keepalive_loop()))

    # -- receiving ----------------------------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> str | None:
        """The next complete message as text; None once the peer closed. Raises TimeoutError."""
        message = await self.receive_frame(timeout)
        if isinstance(message, bytes):
            return message.decode("utf-8", "replace")
        return message

    async def receive_frame(self, timeout: float | None = None) -> str | bytes | None:
        """The next complete message (str for text, bytes for binary); None once closed."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands as
        # the awaited thing completes, and a task that ignores its cancel hangs stop().
        async with asyncio.timeout(timeout):
            return await self._incoming.get()

    async def _read_loop(self) -> None:
        parts: list[Any] = []
        size = 0
        try:
            data = self._pending_bytes
            while True:
                if data:
                    self._ws.receive_data(data)
                for event in self._ws.events():
                    if isinstance(event, TextMessage | BytesMessage):
                        chunk = event.data
                        parts.append(chunk)
                        size += len(chunk)
                        if size > self._max_message:
                            # An oversize message is refused with 1009 (message too big).
                            await self._write_event(CloseConnection(code=1009))
                            return
                        if event.message_finished:
                            if isinstance(event, TextMessage):
                                self._incoming.put_nowait("".join(parts))
                            else:
                                self._incoming.put_nowait(b"".join(parts))
                            parts, size = [], 0
                    elif isinstance(event, Ping):
                        await self._write_event(event.response())
                    elif isinstance(event, CloseConnection):
                        remote = self._ws.state is ConnectionState.REMOTE_CLOSING
                        self.close_received = remote or self._ws.state is ConnectionState.CLOSED
                        if remote and self._answer_close:
                            await self._write_event(event.response())
                        elif not remote and self._ws.state is not ConnectionState.CLOSED:
                            # Ours after a framing error.
                            await self._write_event(CloseConnection(code=event.code))
                        return
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    self.vanished = True
                    return
        except (ConnectionError, OSError):
            self.vanished = True
            return
        except LocalProtocolError:
            return
        finally:
            self._peer_closed.set()
            self._incoming.put_nowait(None)

    # -- sending ------------------------------------------------------------------------------

    def send(self, document: dict[str, Any]) -> None:
        """Queue one JSON message; never blocks, never fails."""
        self._outgoing.put_nowait(document)

    def send_bytes(self, data: bytes) -> None:
        """Queue one binary message; never blocks, never fails."""
        self._outgoing.put_nowait(bytes(data))

    async def flush(self) -> None:
        """Wait until everything queued so far was written (or dropped)."""
        await self._outgoing.join()

    async def _write_loop(self) -> None:
        while True:
            document = await self._outgoing.get()
            try:
                if document is not None and self.alive:
                    await self._send_one(document)
            finally:
                self._outgoing.task_done()

    async def _send_one(self, item: dict[str, Any] | bytes) -> None:
        if self.close_received:
            # Sent into a connection the peer has left: Kestrel drops it without an error.
            return
        binary = isinstance(item, bytes)
        fault = None
        if self._fault_hook is not None and self._fault_point is not None:
            point = (
                self._fault_point(None, self._sent, item)
                if isinstance(item, bytes)
                else self._fault_point(item, self._sent, None)
            )
            fault = self._fault_hook(point)
        self._sent += 1
        event: TextMessage | BytesMessage = (
            BytesMessage(data=item) if isinstance(item, bytes) else TextMessage(self._dumps(item))
        )
        if fault is not None:
            if fault.delay_seconds > 0:
                await asyncio.sleep(fault.delay_seconds)
            if fault.reset:
                self.abort()
                return
            if fault.replace_message is not None:
                replaced = fault.replace_message
                text = replaced if isinstance(replaced, str) else self._dumps(replaced)
                event = TextMessage(data=text)
            elif binary and fault.replace_data is not None:
                event = BytesMessage(data=fault.replace_data)
        await self._write_event(event)

    async def _write_event(self, event: Any) -> None:
        async with self._write_lock:
            if self._dead:
                return
            try:
                data = self._ws.send(event)
                self._writer.write(data)
                async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                    await self._writer.drain()
            except (LocalProtocolError, ConnectionError, OSError, TimeoutError):
                self._dead = True

    async def _keepalive_loop(self) -> None:
        # Kestrel's KeepAliveInterval sends unsolicited Pong frames (WebServer.cs).
        while self.alive:
            await asyncio.sleep(self._keepalive)
            if self._ws.state is ConnectionState.OPEN:
                await self._write_event(Pong(payload=b""))

    # -- closing ------------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop the TCP connection without a Close frame (a crash, or a fault)."""
        self._dead = True
        with contextlib.suppress(Exception):
            self._writer.transport.abort()

    async def close(self, code: int = 1000) -> None:
        """Send everything queued, then Close ``code``, wait for the peer's Close, hang up.

        After the peer's own unanswered Close, ours answers it and nothing is awaited
        (CloseAsync in the CloseReceived state).
        """
        await self.flush()
        if self._ws.state is ConnectionState.REMOTE_CLOSING and not self._dead:
            await self._write_event(CloseConnection(code=code))
        elif self._ws.state is ConnectionState.OPEN and not self._dead:
            await self._write_event(CloseConnection(code=code))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_SECONDS):
                    await self._peer_closed.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop the helper tasks and close the transport."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            self._writer.close()
