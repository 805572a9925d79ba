"""What both emulator handles share: a server on a loopback port, run in a daemon thread.

A subclass builds its transport in ``_make_transport`` and cleans up its own simulated work in
``_shutdown``; start, stop, the URL, the request log and the context manager live here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from asset_generator.emulator.config import RecordedRequest
from asset_generator.emulator.recorder import Recorder
from asset_generator.emulator.transport import HttpTransport

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0


class ServedEmulator:
    """Start/stop in a daemon thread, ``url``, the recorded requests, ``with ... as emu``."""

    product = "emulator"

    def __init__(self, recorder: Recorder, host: str) -> None:
        self._recorder = recorder
        self._host = host
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0
        self.url = ""

    # -- what subclasses provide --------------------------------------------------------------

    def _make_transport(self) -> HttpTransport:
        raise NotImplementedError

    async def _started(self) -> None:
        """Called on the server's loop once it listens (background tasks start here)."""

    async def _shutdown(self) -> None:
        """Called on the server's loop after the transport stopped: cancel simulated work."""

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving in a daemon thread; return once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("this emulator was already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main(ready, failure)),
            name=f"{self.product}-emulator",
            daemon=True,
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError(f"the {self.product} emulator did not start in time")
        if failure:
            self._thread.join(STOP_TIMEOUT_SECONDS)
            raise failure[0]
        return self

    async def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        http = self._make_transport()
        try:
            self.port = await http.start()
        except OSError as exc:
            failure.append(exc)
            ready.set()
            return
        host = self._host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        self.url = f"http://{host}:{self.port}"
        try:
            await self._started()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            await http.stop()
            await self._shutdown()
            return
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            await http.stop()
            await self._shutdown()

    def stop(self) -> None:
        """Stop serving, cut connections, cancel simulated work, and join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(STOP_TIMEOUT_SECONDS)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call_in_loop(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the server's loop (directly before start) and return its result."""
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            return function()
        done = threading.Event()
        outcome: list[Any] = []

        def apply() -> None:
            try:
                outcome.append((True, function()))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                done.set()

        loop.call_soon_threadsafe(apply)
        if not done.wait(STOP_TIMEOUT_SECONDS):
            raise TimeoutError(f"the {self.product} emulator did not answer in time")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    # -- what the server received -------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every HTTP request and every WebSocket message received so far (a copy)."""
        return self._recorder.snapshot()

    def reset_log(self) -> None:
        """Forget the requests recorded so far."""
        self._recorder.clear()

    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``predicate`` until it is true; False if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())
