"""A TCP relay in front of an emulator that can lose chosen HTTP requests on the way.

An interrupt that never reaches the server (a proxy restarting, a dropped connection) cannot
be made with the emulator's faults, which act on answers after the handler ran. The relay
forwards bytes both ways; a request whose first line names a route in ``lose`` (the last path
segment, alone or after its method: ``"InterruptAll"``, ``"POST queue"``) is not forwarded:
after ``hold`` seconds the connection is dropped, as a dying proxy would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


class Relay:
    """``url`` leads to ``upstream`` (host, port), minus the requests it is told to lose."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.lose: set[str] = set()
        self.hold = 0.0
        self.lost: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if from_client and self._loses(chunk):
                    deadline = time.monotonic() + self.hold
                    while time.monotonic() < deadline and not self._closed.is_set():
                        time.sleep(0.02)
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _loses(self, chunk: bytes) -> bool:
        # HTTP/1.1 requests go one at a time on a connection, each starting with its line.
        line = chunk.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return False
        # The last path segment ("InterruptAll", "interrupt", "cancel"), or "METHOD segment".
        route = parts[1].split("?", 1)[0].rsplit("/", 1)[-1].lower()
        wanted = {name.lower() for name in self.lose}
        if route in wanted or f"{parts[0].lower()} {route}" in wanted:
            self.lost.append(f"{parts[0]} {route}")
            return True
        return False


@contextlib.contextmanager
def relay_to(url: str) -> Iterator[Relay]:
    """A relay to the server at ``url`` (``http://host:port``) for the block."""
    host, _, port = url.removeprefix("http://").partition(":")
    relay = Relay((host, int(port)))
    try:
        yield relay
    finally:
        relay.close()
