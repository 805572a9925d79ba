"""App: resolved settings, output, registry and the server's adapter, shared by every command.

Everything is built lazily: global options may still arrive after the leaf command's name,
and ``cancel`` with nothing to do must not import httpx or touch the network.
"""

from __future__ import annotations

import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from asset_generator import settings
from asset_generator.cli.output import Output, register_secret
from asset_generator.registry import Registry, server_key

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import Callable

    from asset_generator.jobs import Generations
    from asset_generator.server.types import Server


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
        self._server: Server | None = None
        # The server type came from the registry's memory (`--server-type auto`): if the
        # server answers like another kind, it is asked again (cli.run does that, once).
        self.type_remembered = False
        # The remembered type was forgotten (forget_type): the next adapter asks the server,
        # whatever our older records there were made on.
        self._ask_type = False

    # -- settings and output ------------------------------------------------------------------

    @cached_property
    def settings(self) -> settings.Resolved:
        from pathlib import Path

        keys = ("api_url", "api_key", "auth_header", "server_type", "format", "timeout")
        values = {key: self.flags.get(key) for key in keys}
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

    @property
    def server_name(self) -> str:
        """The server as shown to the user (no credentials)."""
        return settings.describe_server(self.api_url)

    @cached_property
    def server_key(self) -> str:
        credential = f"{self.settings['api_key'] or ''}\0{self.settings['auth_header'] or ''}"
        return server_key(self.api_url, credential)

    @cached_property
    def registry(self) -> Registry:
        return Registry(settings.state_dir(), warn=self.output.warn)

    def generations(self) -> Generations:
        """Our records on the configured server; its adapter is made only when one needs it."""
        from asset_generator.jobs import Generations

        return Generations(self.registry, self.server_key, self.server, self.output.debug)

    # -- the server -----------------------------------------------------------------------------

    def known_type(self) -> str | None:
        """The server type without asking the server: the setting, else the registry's memory
        of the address, else the type our own records there were made on."""
        wanted = self.settings["server_type"]
        if wanted != "auto":
            return wanted
        return self._remembered_type()

    def _remembered_type(self) -> str | None:
        from asset_generator.server import SERVER_TYPES

        state = self.registry.read()
        remembered = state.kinds.get(self.server_name)
        if remembered in SERVER_TYPES:
            return remembered
        ours = state.records_for(self.server_key)
        if ours and ours[0].server_type in SERVER_TYPES:
            # Written before the type was remembered per address (schema-1 records, say).
            return ours[0].server_type
        return None

    def server(self) -> Server:
        """The adapter for the configured server, made (and, if need be, identified) once."""
        if self._server is None:
            self._server = self._connect()
        return self._server

    def _connect(self) -> Server:
        wanted = self.settings["server_type"]
        if wanted != "auto":
            return self._adapter(wanted)
        if self._ask_type or self.flags.get("_asked_again"):
            return self._identify()
        remembered = self._remembered_type()
        if remembered is not None:
            self.type_remembered = True
            return self._adapter(remembered)
        return self._identify()

    def _identify(self) -> Server:
        """Ask the server what it is (cli-contract §7) and remember the answer for its URL.

        SwarmUI's GetNewSession is asked first: it is the very request a SwarmUI command needs
        next (its session is kept), and ComfyUI answers it with a bare 405. Any other failure
        (down, refused, unauthorised) is the command's own and is raised as it is.
        """
        from asset_generator.server import PROBE_ORDER, SERVER_TYPES
        from asset_generator.server.errors import AuthFailed, BadResponse, ServerError

        refused: ServerError | None = None
        # Until one answers, a server that cannot be reached may be either.
        unknown = " or ".join(SERVER_TYPES[name].label for name in PROBE_ORDER)
        for name in PROBE_ORDER:
            adapter = self._adapter(name, product=unknown)
            # Held here so that close() closes it whatever the probe raises.
            self._server = adapter
            try:
                found = adapter.probe()
            except ServerError as exc:
                if refused is not None:
                    raise refused from None
                if not isinstance(getattr(exc, "cause", exc), AuthFailed):
                    raise
                # A bare 401 (a proxy or gate): SwarmUI's cookie was not what it wanted, and
                # ComfyUI's Bearer token may be. Its own error stands if no kind answers.
                refused, found = exc, False
            if found:
                self.remember_type(name)
                self._ask_type = False
                self.output.debug(f"{self.server_name} is {SERVER_TYPES[name].label}")
                return adapter
            adapter.close()
            self._server = None
        if refused is not None:
            raise refused
        raise BadResponse(
            f"{self.server_name} answered neither as SwarmUI nor as ComfyUI; is --api-url the "
            "address of one of them? (--server-type skips the question)"
        )

    def _adapter(self, name: str, *, product: str | None = None) -> Server:
        """The adapter for server type ``name``; ``product``: how its hints name the server
        ("is SwarmUI running at …?"), its own label unless given."""
        import importlib

        from asset_generator.registry import ServerLedger
        from asset_generator.server import SERVER_TYPES

        module_name, _, class_name = SERVER_TYPES[name].adapter.partition(":")
        adapter_class = getattr(importlib.import_module(module_name), class_name)
        return adapter_class(
            self.api_url,
            ServerLedger(self.registry, self.server_key),
            api_key=self.settings["api_key"],
            auth_header=self.settings["auth_header"],
            timeout=self.settings["timeout"],
            log=self.output.exchange,
            debug=self.output.debug,
            product=product or SERVER_TYPES[name].label,
        )

    def refuse_workflow_file(self) -> None:
        """A workflow file that cannot be read, where SwarmUI listens: refused as the option
        SwarmUI has no use for (usage error, cli-contract §7), as a readable one is; anywhere
        else the caller's ``file_error`` stands."""
        from pathlib import Path

        from asset_generator.server.errors import ServerError
        from asset_generator.server.types import Request, Workflow

        try:
            server = self.server()
        except ServerError:
            return
        if server.type == "swarmui":
            server.prepare(Request(prompt=None, workflow=Workflow(Path(), {}, "")))

    def wrong_type_remembered(self, exc: BaseException) -> bool:
        """``exc`` looks like another kind of server than the one remembered for the URL
        (the command is then run once more, asking afresh; cli.run does that)."""
        if not self.type_remembered or self.flags.get("_asked_again"):
            return False
        if "asset_generator.server.errors" not in sys.modules:
            return False
        from asset_generator.server.errors import NotFound, WrongServer

        cause = getattr(exc, "cause", exc)
        return isinstance(cause, (NotFound, WrongServer))

    def reuse(self) -> None:
        """A long-lived App (the MCP server's) starts another use: an adapter an earlier use
        identified counts as remembered, so a server swapped since is asked again, once."""
        if self._server is not None and self.settings["server_type"] == "auto":
            self.type_remembered = True

    def remember_type(self, name: str) -> None:
        with self.registry.transaction() as state:
            state.kinds[self.server_name] = name

    def forget_type(self) -> None:
        """The remembered type no longer fits: forget it, and the adapter made for it, so the
        next use (the next command, or the MCP server's next call) asks the server again.

        The MCP server keeps one App for its lifetime, so the adapter goes too; and asking
        again sets ``type_remembered`` anew, so a failure after that is not asked about twice.
        """
        with self.registry.transaction() as state:
            state.kinds.pop(self.server_name, None)
        self.close()
        self.type_remembered = False
        self._ask_type = True

    def asking_again(self, work: Callable[[], T]) -> T:
        """``work``, run once more when it failed because the server type remembered for the
        URL no longer fits (cli-contract §7: another server listens there now). Only for work
        that records and sends nothing before such a failure (the MCP tools, and a worker's
        start); a command is run once more whole instead (``cli.run``)."""
        try:
            return work()
        except Exception as exc:
            if not self.wrong_type_remembered(exc):
                raise
        self.forget_type()
        return work()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
