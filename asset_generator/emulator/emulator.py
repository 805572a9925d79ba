"""The public handle: an emulated SwarmUI server on a loopback port, run in a daemon thread."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from asset_generator.emulator.backends import STATUSES
from asset_generator.emulator.config import EmulatorConfig, RecordedRequest
from asset_generator.emulator.core import EmulatedServer
from asset_generator.emulator.recorder import Recorder
from asset_generator.emulator.server import HttpServer

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0


class Emulator:
    """A SwarmUI server emulator. ``with Emulator(backends=2) as emu: ... emu.url ...``."""

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else EmulatorConfig()
        self.config = dataclasses.replace(base, **overrides) if overrides else base
        self._server = EmulatedServer(self.config)
        self._recorder = Recorder(self.config.request_log)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0
        self.url = ""

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Emulator:
        """Start serving in a daemon thread; return once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("this emulator was already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main(ready, failure)),
            name="swarmui-emulator",
            daemon=True,
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError("the SwarmUI emulator did not start in time")
        if failure:
            self._thread.join(STOP_TIMEOUT_SECONDS)
            raise failure[0]
        return self

    async def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        http = HttpServer(self._server, self._recorder)
        try:
            self.port = await http.start()
        except OSError as exc:
            failure.append(exc)
            ready.set()
            return
        host = self.config.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        self.url = f"http://{host}:{self.port}"
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            await http.stop()
            await self._server.shutdown()

    def stop(self) -> None:
        """Stop serving, cut connections, cancel simulated work, and join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(STOP_TIMEOUT_SECONDS)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what the server received -------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every HTTP request and every WebSocket message received so far (a copy)."""
        return self._recorder.snapshot()

    def calls(self, route: str) -> list[RecordedRequest]:
        """Requests to ``/API/<route>`` (case-insensitive route name)."""
        wanted = route.lower()
        return [record for record in self._recorder.snapshot() if record.route == wanted]

    def server_errors(self) -> list[str]:
        """The error lines SwarmUI would have logged (the WebSocket endings it logs, so far)."""
        with self._server.registry.lock:
            return list(self._server.errors)

    def reset_log(self) -> None:
        """Forget the requests recorded so far."""
        self._recorder.clear()

    # -- users and sessions -------------------------------------------------------------------

    def add_user(self, name: str, permissions: set[str] | None = None) -> str:
        """Create an accounts-mode user (USER role plus ``permissions``); return its token."""
        return self._server.registry.add_user(name, permissions)

    def invalidate_sessions(self) -> None:
        """Forget every session id (the next use answers 401), as a ``--no_persist`` restart."""
        self._server.registry.forget_sessions()

    def session_status(self, session_id: str) -> dict[str, int]:
        """The four ``GetCurrentStatus`` counters of a session this emulator created."""
        registry = self._server.registry
        with registry.lock:
            session = registry.known.get(session_id)
            if session is None:
                raise KeyError(f"no session {session_id!r} was created by this emulator")
            return session.counters()

    def active_sessions(self) -> list[str]:
        """Sessions with unfinished generations (``waiting_gens > 0``)."""
        registry = self._server.registry
        with registry.lock:
            return [sid for sid, s in registry.known.items() if s.waiting_gens > 0]

    def interrupted_sessions(self) -> list[str]:
        """Sessions an interrupt landed on, in the order it first happened."""
        with self._server.registry.lock:
            return list(self._server.registry.interrupted)

    def saved_outputs(self) -> list[str]:
        """Paths of every image saved so far (``View/<user>/raw/...``), in saving order."""
        return self._server.store.paths()

    @property
    def sessions_created(self) -> int:
        """How many times ``GetNewSession`` succeeded."""
        with self._server.registry.lock:
            return self._server.registry.sessions_created

    def backend_usage(self) -> dict[str, float]:
        """Most backends busy at once, busy seconds summed, and the span they were used in."""
        pool = self._server.pool
        now = time.monotonic()
        busy = sum(b.busy_seconds + (now - b.busy_since if b.busy_since else 0.0)
                   for b in pool.backends)  # fmt: skip
        releases = [b.last_release for b in pool.backends if b.last_release is not None]
        span = max(releases) - pool.first_busy if releases and pool.first_busy else 0.0
        # span: from the first task taking a backend to the last one giving it back.
        return {"peak_busy": pool.peak_busy, "busy_seconds": busy, "span_seconds": span}

    def set_backend_status(self, status: str, backend_id: int | None = None) -> None:
        """Put one backend (or all) into a state: running, loading, waiting, idle, ...

        Generations wait while backends are loading and fail with ``No backends available!``
        when none is running or loading.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown backend status {status!r}; one of {', '.join(STATUSES)}")
        if self._loop is None:
            self._server.pool.set_status(backend_id, status)
            return
        done = threading.Event()

        def apply() -> None:
            try:
                self._server.pool.set_status(backend_id, status)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(apply)
        done.wait(STOP_TIMEOUT_SECONDS)

    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``predicate`` until it is true; False if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())
