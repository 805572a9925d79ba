"""The public handle: an emulated SwarmUI server on a loopback port, run in a daemon thread."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from asset_generator.emulator.backends import STATUSES
from asset_generator.emulator.config import EmulatorConfig, RecordedRequest
from asset_generator.emulator.core import EmulatedServer
from asset_generator.emulator.lifecycle import ServedEmulator
from asset_generator.emulator.recorder import Recorder
from asset_generator.emulator.server import HttpServer


class Emulator(ServedEmulator):
    """A SwarmUI server emulator. ``with Emulator(backends=2) as emu: ... emu.url ...``."""

    product = "SwarmUI"

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else EmulatorConfig()
        self.config = dataclasses.replace(base, **overrides) if overrides else base
        self._server = EmulatedServer(self.config)
        super().__init__(Recorder(self.config.request_log), self.config.host)

    def _make_transport(self) -> HttpServer:
        return HttpServer(self._server, self._recorder)

    async def _shutdown(self) -> None:
        await self._server.shutdown()

    def calls(self, route: str) -> list[RecordedRequest]:
        """Requests to ``/API/<route>`` (case-insensitive route name)."""
        wanted = route.lower()
        return [record for record in self._recorder.snapshot() if record.route == wanted]

    def server_errors(self) -> list[str]:
        """The error lines SwarmUI would have logged (the WebSocket endings it logs, so far)."""
        with self._server.registry.lock:
            return list(self._server.errors)

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
        self._call_in_loop(lambda: self._server.pool.set_status(backend_id, status))
