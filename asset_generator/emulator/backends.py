"""Emulated T2I backends and the global FIFO backend queue.

Mirrors the parts of ``src/Backends/BackendHandler.cs`` a client can observe: one global queue
(not per session), ``No backends available!`` after about a second when nothing can ever serve
the request, model loads that raise ``loading_models``, and the ``backend_status`` roll-up.
Everything here runs on the emulator's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from asset_generator.emulator.state import InterruptToken

STATUSES = ("disabled", "errored", "waiting", "loading", "idle", "running")
# What a ComfyUI backend contributes to supported_features (ComfyUIBackendExtension.cs).
COMFY_FEATURES = [
    "comfyui",
    "refiners",
    "controlnet",
    "endstepsearly",
    "seamless",
    "video",
    "variation_seed",
    "freeu",
    "yolov8",
    "folderslash",
]
# The queue first tries auto-scaling for about a second before giving up (BackendHandler.cs).
NO_BACKEND_GRACE_SECONDS = 1.0
NO_BACKENDS = "No backends available!"
STATUS_MESSAGES = {
    "empty": (
        "error",
        "No backends present. You must configure backends in the Backends section of the "
        "Server tab before you can continue.",
    ),
    "all_disabled": (
        "error",
        "All backends are disabled. You must enable backends in the Backends section of the "
        "Server tab before you can continue.",
    ),
    "errored": (
        "error",
        "Some backends have errored on the server. Check the server logs for details.",
    ),
    "some_loading": ("warn", "Some backends are ready, but others are still loading..."),
    "running": ("", ""),
    "loading": ("soft", "Backends are still loading on the server..."),
    "disabled": (
        "warn",
        "Some backends are disabled. Please enable or configure them to continue.",
    ),
    "idle": (
        "warn",
        "All backends are idle. Cannot generate until at least one backend is running.",
    ),
    "unknown": (
        "error",
        "Something is wrong with your backends. Please check the Backends section of the "
        "Server tab, or the server logs.",
    ),
}


class NoBackendsError(Exception):
    """The queue gave up on the request; the text is SwarmUI's error message."""


def load_failed_text(model: str) -> str:
    """``LoadHighestPressureNow`` once every free backend failed to load ``model``.

    SwarmUI names the model by its file path and adds each backend's exception text; the
    emulator has no files and only one way to fail a load (the triggering request cancelled),
    whose .NET text is "The operation was canceled.".
    """
    return (
        f"All available backends failed to load the model '{MODEL_ROOT}/{model}'.\n\n"
        "Possible reason: The operation was canceled."
    )


# Stands in for the server's model folder in the texts that show a model's file path.
MODEL_ROOT = "Models/Stable-Diffusion"


@dataclass
class Backend:
    """One emulated ComfyUI self-start backend that runs a single task at a time."""

    backend_id: int
    status: str = "running"
    current_model: str | None = None
    busy: bool = False
    last_release: float | None = None
    max_usages: int = 1
    # Measurement for tests and benchmarks: when the current task took it, and the total.
    busy_since: float | None = None
    busy_seconds: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.status != "disabled"

    def to_net(self, full: bool) -> dict[str, Any]:
        """``BackendAPI.BackendToNet`` (src/WebAPI/BackendAPI.cs)."""
        since = 0 if self.last_release is None else int(time.monotonic() - self.last_release)
        data: dict[str, Any] = {
            "type": "comfyui_selfstart",
            "status": self.status,
            "id": self.backend_id,
            "settings": {"StartScript": "dlbackend/comfy/ComfyUI/main.py", "ExtraArgs": ""},
            "modcount": 0,
            "features": list(COMFY_FEATURES) if self.status == "running" else [],
            "enabled": self.enabled,
            "title": "",
            "max_usages": self.max_usages,
            "seconds_since_used": since,
            "time_since_used": "Never" if self.last_release is None else _ago(since),
            "can_load_models": True,
        }
        if full:
            data["current_model"] = self.current_model
        return data


def _ago(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} seconds ago"
    if seconds < 3600:
        return f"{seconds // 60} minutes ago"
    return f"{seconds // 3600} hours ago"


@dataclass
class _Waiter:
    future: asyncio.Future[Backend]
    model: str | None
    target: int | None = None
    # Puts a loading_models claim on the waiter's session; returns the release.
    claim_load: Callable[[], Callable[[], None]] | None = None
    session_key: object = None
    # Sends the request's status message (SwarmUI's notifyWillLoad).
    notify: Callable[[], None] | None = None


@dataclass
class BackendPool:
    """The backends and the global queue of tasks waiting for one."""

    backends: list[Backend]
    model_load_seconds: float
    default_model: str | None
    spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
    _waiters: list[_Waiter] = field(default_factory=list)
    # ModelRequestPressure.BadBackends: backends whose load of that model failed, kept while
    # any request still waits for the model (BackendHandler.cs ~1409).
    _bad: dict[str, set[int]] = field(default_factory=dict)
    # Most backends busy at the same moment, and when the first task took one (benchmarks).
    peak_busy: int = 0
    first_busy: float | None = None

    @classmethod
    def create(
        cls,
        count: int,
        model_load_seconds: float,
        default_model: str | None,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        loaded_model: str | None = None,
    ) -> BackendPool:
        # With no load time the default model counts as already loaded; with one, backends
        # start empty (or with ``loaded_model``) so the first use of a model triggers a load.
        model = default_model if model_load_seconds <= 0 else loaded_model
        return cls([Backend(i, current_model=model) for i in range(count)], model_load_seconds,
                   default_model, spawn)  # fmt: skip

    # -- status -----------------------------------------------------------------------------

    def running(self) -> list[Backend]:
        return [b for b in self.backends if b.status == "running"]

    def _can_ever_serve(self) -> bool:
        return any(b.status in ("running", "loading", "waiting") for b in self.backends)

    def rollup(self) -> dict[str, Any]:
        """``BackendHandler.CurrentBackendStatus``: first matching rule of the §6.1 table."""
        statuses = [b.status for b in self.backends]
        loading = any(s in ("loading", "waiting") for s in statuses)
        running = "running" in statuses
        if not statuses:
            key = "empty"
        elif all(s == "disabled" for s in statuses):
            key = "all_disabled"
        elif "errored" in statuses:
            key = "errored"
        elif running and loading:
            key = "some_loading"
        elif running:
            key = "running"
        elif loading:
            key = "loading"
        elif "disabled" in statuses:
            key = "disabled"
        elif "idle" in statuses:
            key = "idle"
        else:
            key = "unknown"
        css_class, message = STATUS_MESSAGES[key]
        any_loading = loading if key in ("errored", "some_loading", "loading") else False
        return {"status": key, "class": css_class, "message": message, "any_loading": any_loading}

    def features(self) -> list[str]:
        """Union of features of enabled, non-idle backends."""
        if any(b.status not in ("disabled", "idle") for b in self.backends):
            return list(COMFY_FEATURES)
        return []

    def max_simultaneous(self, role_limit: int = 32) -> int:
        """``User.CalcMaxT2ISimultaneous``."""
        usages = sum(b.max_usages for b in self.running())
        return max(1, min(role_limit, usages * 2))

    def set_status(self, backend_id: int | None, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown backend status {status!r}; one of {', '.join(STATUSES)}")
        for backend in self.backends:
            if backend_id is None or backend.backend_id == backend_id:
                backend.status = status
        self._dispatch()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    # -- queue ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            free = [
                b
                for b in self.backends
                if b.status == "running"
                and not b.busy
                and (waiter.target is None or b.backend_id == waiter.target)
            ]
            if not free:
                continue
            pick = next((b for b in free if b.current_model == waiter.model), None)
            if pick is None and waiter.model is not None:
                bad = self._bad.get(waiter.model, set())
                loaders = [b for b in free if b.backend_id not in bad]
                if not loaders:
                    # Every free backend already failed this model: the request fails
                    # (LoadHighestPressureNow, BackendHandler.cs ~1316).
                    waiter.future.set_exception(NoBackendsError(load_failed_text(waiter.model)))
                    self._waiters.remove(waiter)
                    continue
                free = loaders
            pick = pick or free[0]
            pick.busy = True
            pick.busy_since = time.monotonic()
            self.first_busy = self.first_busy or pick.busy_since
            self.peak_busy = max(self.peak_busy, sum(1 for b in self.backends if b.busy))
            waiter.future.set_result(pick)
            self._waiters.remove(waiter)
        self._end_pressures()

    def _end_pressures(self) -> None:
        # A model's pressure (and its bad backends) ends with its last waiting request.
        wanted = {w.model for w in self._waiters}
        for model in [m for m in self._bad if m not in wanted]:
            del self._bad[model]

    def release(self, backend: Backend) -> None:
        backend.busy = False
        backend.last_release = time.monotonic()
        if backend.busy_since is not None:
            backend.busy_seconds += backend.last_release - backend.busy_since
            backend.busy_since = None
        self._dispatch()

    async def acquire(
        self,
        model: str | None,
        token: InterruptToken,
        *,
        claim_load: Callable[[], Callable[[], None]] | None = None,
        session_key: object = None,
        notify: Callable[[], None] | None = None,
        target: int | None = None,
        front: bool = False,
    ) -> Backend | None:
        """Wait in the queue for a backend with ``model`` loaded (loading it if needed).

        Returns None when ``token`` is cancelled first (the task then vanishes silently);
        raises NoBackendsError when no backend could ever serve the request, or when every
        backend failed to load its model.
        """
        waiter = _Waiter(
            asyncio.get_running_loop().create_future(), model, target, claim_load, session_key,
            notify,
        )  # fmt: skip
        if front:
            self._waiters.insert(0, waiter)
        else:
            self._waiters.append(waiter)
        self._dispatch()
        interrupted = asyncio.ensure_future(token.wait())
        try:
            while not waiter.future.done():
                grace = NO_BACKEND_GRACE_SECONDS if not self._can_ever_serve() else None
                await asyncio.wait(
                    {waiter.future, interrupted}, timeout=grace, return_when="FIRST_COMPLETED"
                )
                if waiter.future.done():
                    break
                if token.cancelled:
                    return None
                if grace is not None and not self._can_ever_serve():
                    raise NoBackendsError(NO_BACKENDS)
            backend = waiter.future.result()
            if token.cancelled:
                self.release(backend)
                return None
            wanted = model or backend.current_model or self.default_model
            if backend.current_model == wanted:
                return backend
            if self.model_load_seconds <= 0:
                backend.current_model = wanted
                return backend
            return await self._load_for(waiter, backend, wanted, interrupted)
        finally:
            interrupted.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._end_pressures()
            if not waiter.future.done():
                waiter.future.cancel()

    async def _load_for(
        self,
        trigger: _Waiter,
        backend: Backend,
        model: str | None,
        interrupted: asyncio.Future[Any],
    ) -> Backend | None:
        """Load ``model`` on ``backend`` for the request that triggered it.

        As ``LoadHighestPressureNow``: every session waiting for the model gets a
        ``loading_models`` claim, held until the load ends. The load waits on the triggering
        request's token, so cancelling that request ends the load as failed: the claims are
        released and the backend is marked bad for the model, which fails the other waiters
        when no other backend is free to try (BackendHandler.cs ~1362-1424).
        """
        releases = []
        sessions: set[int] = set()
        for waiter in [trigger, *(w for w in self._waiters if w.model == model)]:
            key = id(waiter.session_key) if waiter.session_key is not None else id(waiter)
            if waiter.claim_load is not None and key not in sessions:
                sessions.add(key)
                releases.append(waiter.claim_load())
        for waiter in [trigger, *(w for w in self._waiters if w.model == model)]:
            if waiter.notify is not None:
                waiter.notify()
        load = self.spawn(asyncio.sleep(self.model_load_seconds))
        try:
            await asyncio.wait({load, interrupted}, return_when="FIRST_COMPLETED")
        finally:
            for release in releases:
                release()
        if load.done() and not load.cancelled():
            backend.current_model = model
            return backend
        load.cancel()
        if model is not None:
            self._bad.setdefault(model, set()).add(backend.backend_id)
        self.release(backend)
        return None
