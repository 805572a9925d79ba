"""App: resolved settings, output, session cache and client factory, shared by every command.

Everything is built lazily: global options may still arrive after the leaf command's name,
and ``cancel`` with nothing to do must not import httpx or touch the network.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from asset_generator import settings
from asset_generator.cli.output import Output, register_secret
from asset_generator.registry import CachedSession, Registry, server_key

if TYPE_CHECKING:
    from asset_generator.swarm.client import SwarmClient

T = TypeVar("T")


# cli-contract §3: the only codes a JSON failure may carry. README.md and CANCEL_COMMAND.md list
# each of them (tests/test_messages.py checks both, and that the source uses no other).
ERROR_CODES = (
    "connection_failed",
    "timeout",
    "auth_failed",
    "session_failed",
    "server_error",
    "bad_response",
    "not_found",
    "cancelled",
    "interrupted",
    "usage_error",
    "file_error",
    "bad_spec",
    "partial",
    "unavailable",
)


class CommandError(Exception):
    """An expected failure of a command: one line on stderr, exit 1 (or ``exit_code``).

    ``code`` is one of ERROR_CODES; left out, it is ``usage_error`` for exit 2, else
    ``server_error``.
    """

    def __init__(
        self,
        message: str,
        code: str | None = None,
        exit_code: int = 1,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or ("usage_error" if exit_code == 2 else "server_error")
        self.exit_code = exit_code
        # Extra keys for the JSON failure document (e.g. the images that did arrive).
        self.details = details


class Stopped(Exception):
    """The user stopped us with a signal, after our own server-side work was cancelled.

    ``details``: extra keys for the JSON document (what the generation had done).
    """

    def __init__(
        self, exit_code: int, message: str = "interrupted", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code
        self.message = message
        self.details = details


class Terminated(BaseException):
    """SIGTERM outside generate (which handles it itself): unwind like Ctrl-C, exit 143."""


class App:
    """Per-invocation state; the root group puts it in ``ctx.obj``."""

    def __init__(self) -> None:
        # Global options as given on the command line, before or after the command name.
        self.flags: dict[str, Any] = {}
        # The innermost command's context, for usage errors raised after parsing.
        self.context: Any = None
        self._client: SwarmClient | None = None

    # -- settings and output ------------------------------------------------------------------

    @cached_property
    def settings(self) -> settings.Resolved:
        from pathlib import Path

        values = {key: self.flags.get(key) for key in ("api_url", "api_key", "auth_header")}
        values["format"] = self.flags.get("format")
        values["timeout"] = self.flags.get("timeout")
        config = self.flags.get("config")
        resolved = settings.resolve(
            values,
            config_path=Path(config).expanduser() if config else None,
            profile=self.flags.get("profile"),
        )
        register_secret(resolved["api_key"])
        register_secret(resolved["auth_header"])
        # Not self.output: building it may need these very settings (the format).
        for warning in resolved.warnings:
            Output(quiet=bool(self.flags.get("quiet"))).warn(warning)
        return resolved

    @cached_property
    def output(self) -> Output:
        fmt = self.flags.get("format")
        if fmt is None:
            # The format is needed even to report a broken config file, so fall back quietly.
            try:
                fmt = self.settings["format"]
            except settings.SettingsError:
                fmt = "table"
        return Output(
            quiet=bool(self.flags.get("quiet")),
            verbose=bool(self.flags.get("verbose")),
            fmt=fmt,
        )

    @property
    def api_url(self) -> str:
        return self.settings["api_url"]

    @cached_property
    def server_key(self) -> str:
        credential = f"{self.settings['api_key'] or ''}\0{self.settings['auth_header'] or ''}"
        return server_key(self.api_url, credential)

    @cached_property
    def registry(self) -> Registry:
        return Registry(settings.state_dir(), warn=self.output.warn)

    # -- the server -----------------------------------------------------------------------------

    def client(self) -> SwarmClient:
        """The client for the configured server, created on first use."""
        if self._client is None:
            from asset_generator.swarm.client import SwarmClient
            from asset_generator.swarm.http import Credentials, Transport

            transport = Transport(
                self.api_url,
                Credentials(self.settings["api_key"], self.settings["auth_header"]),
                timeout=self.settings["timeout"],
                log=self.output.exchange,
            )
            self._client = SwarmClient(transport)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def new_session(self) -> CachedSession:
        """Create a server session and remember it for reuse."""
        session = CachedSession.from_info(self.client().new_session())
        with self.registry.transaction() as state:
            state.server(self.server_key).sessions.append(session)
        return session

    def forget_session(self, session_id: str) -> None:
        with self.registry.transaction() as state:
            server = state.server(self.server_key)
            server.sessions = [s for s in server.sessions if s.id != session_id]

    def cached_session(self) -> CachedSession | None:
        sessions = self.registry.read().server(self.server_key).sessions
        return sessions[-1] if sessions else None

    def control_session(self, fresh_within: float | None = None) -> CachedSession:
        """A session for status, cancel and models: a cached one, else a new one.

        ``fresh_within``: the newest cached session only if it was made that many seconds
        ago or less, else a new one. Its version and server id describe the server process
        that made it, and a session outlives a restart (protocol §9.23).
        """
        if fresh_within is None:
            return self.cached_session() or self.new_session()
        import time

        sessions = self.registry.read().server(self.server_key).sessions
        newest = max(sessions, key=lambda s: s.created, default=None)
        if newest is not None and time.time() - newest.created <= fresh_within:
            return newest
        return self.new_session()

    def with_session(self, call: Callable[[str], T], *, fresh_within: float | None = None) -> T:
        """Run ``call(session_id)`` on the control session (see ``control_session``).

        On 401 ``invalid_session_id`` (server restarted without persistence, or the session was
        purged) get a new session and retry once, as protocol §3.3 prescribes.
        """
        from asset_generator.swarm.errors import InvalidSession

        session = self.control_session(fresh_within)
        try:
            return call(session.id)
        except InvalidSession:
            self.output.debug("the cached session is no longer valid; getting a new one")
            self.forget_session(session.id)
            return call(self.new_session().id)
