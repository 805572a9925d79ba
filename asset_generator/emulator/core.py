"""The emulated server's state and services, shared by the transport and the routes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from asset_generator.emulator.backends import BackendPool
from asset_generator.emulator.config import EmulatorConfig
from asset_generator.emulator.httpmsg import HttpRequest
from asset_generator.emulator.models import ModelCatalog
from asset_generator.emulator.outputs import MinuteCounter, OutputStore
from asset_generator.emulator.state import LOCAL_USER_ID, Registry, Session, User


class EmulatedServer:
    """Users, sessions, backends, models and outputs of one emulator instance."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        # Utilities.LoopPreventionID: a new GUID per process start, the cheap restart detector.
        self.server_id = str(uuid.uuid4())
        self.started = time.monotonic()
        sessions_file = Path(config.sessions_file) if config.sessions_file is not None else None
        self.registry = Registry(config.accounts, sessions_file)
        self.catalog = ModelCatalog(list(config.models), list(config.loras))
        output_dir = Path(config.output_dir) if config.output_dir is not None else None
        self.store = OutputStore(output_dir)
        self.minute_counter = MinuteCounter()
        self._tasks: set[asyncio.Task[Any]] = set()
        loaded = config.loaded_model
        if loaded is not None:
            found = self.catalog.find("Stable-Diffusion", loaded)
            loaded = found.name if found is not None else loaded
        self.pool = BackendPool.create(
            config.backends,
            config.model_load_seconds,
            self.catalog.default_model,
            self.spawn,
            loaded_model=loaded,
        )
        self._task_errors = list(config.task_errors)
        self._silent_failures = config.silent_task_failures
        # What SwarmUI would write with Logs.Error (only the lines the emulator models).
        self.errors: list[str] = []

    def log_error(self, text: str) -> None:
        with self.registry.lock:
            self.errors.append(text)

    def take_task_fault(self) -> str | None:
        """The injected fault for the task going live now: an error text, "" (a silent end)."""
        with self.registry.lock:
            if self._task_errors:
                return self._task_errors.pop(0)
            if self._silent_failures > 0:
                self._silent_failures -= 1
                return ""
            return None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start a background task that ``shutdown`` will cancel and await."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        """Cancel every background task (generations, model loads) and wait for them."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def has_permission(self, user: User, perm: str) -> bool:
        return user.has_permission(perm, self.config.deny_permissions)

    def status(self, session: Session) -> dict[str, Any]:
        """``BasicAPIFeatures.GetCurrentStatusRaw``: this session's counters plus the roll-up."""
        with self.registry.lock:
            counters = session.counters()
        return {
            "status": counters,
            "backend_status": self.pool.rollup(),
            "supported_features": self.pool.features(),
        }

    def global_status(self) -> dict[str, Any]:
        """``GetGlobalStatus``: the counters summed over every in-memory session."""
        totals = {"waiting_gens": 0, "loading_models": 0, "waiting_backends": 0, "live_gens": 0}
        with self.registry.lock:
            for session in self.registry.sessions.values():
                for key, value in session.counters().items():
                    totals[key] += value
        return {
            "status": totals,
            "backend_status": self.pool.rollup(),
            "supported_features": self.pool.features(),
        }

    def user_for(self, request: HttpRequest) -> User | None:
        """``WebServer.GetUserFor``: who the caller is for GetNewSession and ``/View``.

        Accounts off: ``local`` (or the undocumented ``X-SWARM-USER_ID`` header). Accounts on:
        the ``swarm_token`` cookie, or ``local`` for a loopback peer without
        ``X-Forwarded-For`` when the localhost bypass is on (``WebUtil.GetValidLogin``).
        """
        if not self.config.accounts:
            chosen = request.header("x-swarm-user_id") or LOCAL_USER_ID
            return self.registry.get_user(chosen)
        if (
            self.config.localhost_bypass
            and request.is_loopback
            and request.header("x-forwarded-for") is None
        ):
            return self.registry.get_user(LOCAL_USER_ID)
        return self.registry.user_for_token(request.cookie("swarm_token"))
