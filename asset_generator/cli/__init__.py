"""The root command, the global options, and main(): the one place errors become exit codes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from asset_generator import __version__
from asset_generator.cli.app import ERROR_CODES, App, CommandError, Stopped, Terminated
from asset_generator.settings import MAX_SECONDS

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def extra_hint(extra: str) -> str:
    """How to add an optional extra to the Python that runs this program.

    The package is not on PyPI, so ``pip install 'asset-generator[mcp]'`` cannot work: an
    editable install (the README's) names its clone and interpreter exactly, anything else
    gets the commands to run in the clone.
    """
    import shlex
    from pathlib import Path

    import asset_generator

    clone = Path(asset_generator.__file__).resolve().parents[1]
    if (clone / "pyproject.toml").is_file():
        target = shlex.quote(f"{clone}[{extra}]")
        return f"{shlex.quote(sys.executable)} -m pip install -e {target}"
    return (
        f"in a clone of asset-generator, pip install -e '.[{extra}]' into the Python that "
        f"runs it, or pipx install --force '.[{extra}]'"
    )


class FiniteFloatRange(click.FloatRange):
    """A float range that also refuses nan and inf, which compare false with any bound."""

    # click calls it a "float range": `'abc' is not a valid float range.` reads as a riddle.
    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class WholeNumber(click.IntRange):
    """An integer range whose errors say "integer": `'abc' is not a valid integer.`"""

    name = "integer"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Record a global option given on the command line, wherever it stood."""
    app = ctx.find_object(App)
    if app is not None:
        # Every leaf command declares the global options, so this is the innermost context.
        app.context = ctx
    source = ctx.get_parameter_source(param.name or "")
    if source is not click.core.ParameterSource.COMMANDLINE or param.name is None:
        return value
    if app is not None:
        app.flags[param.name] = value
    return value


def _complete_file(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Tab completion of a file name (``--config``): the shell lists them."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="file")]


def _global(*decls: str, **attrs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(*decls, expose_value=False, callback=_remember, **attrs)


GLOBAL_OPTIONS = (
    _global(
        "--api-url",
        metavar="URL",
        help="SwarmUI or ComfyUI server [env ASSET_GENERATOR_API_URL].",
    ),
    _global(
        "--server-type",
        type=click.Choice(["auto", "swarmui", "comfyui"], case_sensitive=False),
        help="Which server --api-url is; auto asks it once and remembers "
        "[env ASSET_GENERATOR_SERVER_TYPE; default auto].",
    ),
    _global(
        "--api-key",
        metavar="TOKEN",
        help="Login token: SwarmUI's swarm_token cookie, or Authorization: Bearer for "
        "ComfyUI; never printed [env ASSET_GENERATOR_API_KEY].",
    ),
    _global(
        "--auth-header",
        metavar="VALUE",
        help="Raw Authorization header for a server or proxy that requires one "
        "[env ASSET_GENERATOR_AUTH_HEADER].",
    ),
    _global(
        "--config",
        metavar="PATH",
        shell_complete=_complete_file,
        help="Config file [env ASSET_GENERATOR_CONFIG; default <config dir>/config.toml].",
    ),
    _global(
        "--profile",
        metavar="NAME",
        help="Use the [profiles.NAME] table of the config file [env ASSET_GENERATOR_PROFILE].",
    ),
    _global(
        "-f",
        "--format",
        type=click.Choice(["table", "json"], case_sensitive=False),
        help="Output format [env ASSET_GENERATOR_FORMAT; default table].",
    ),
    _global(
        "--timeout",
        type=FiniteFloatRange(min=0, min_open=True, max=MAX_SECONDS),
        metavar="SECONDS",
        help="Seconds to wait for each request [env ASSET_GENERATOR_TIMEOUT; default 30].",
    ),
    _global(
        "-q",
        "--quiet",
        is_flag=True,
        default=None,
        help="Print errors only. Results a script consumes still go to stdout: "
        "generate's file paths, config get's value, --format json documents.",
    ),
    _global(
        "-v",
        "--verbose",
        is_flag=True,
        default=None,
        help="Show each HTTP exchange on stderr (secrets redacted).",
    ),
)


def global_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Accept the global options on a leaf command too: ``cancel -q`` = ``-q cancel``."""
    for option in reversed(GLOBAL_OPTIONS):
        command = option(command)
    return command


# Each command's module and the first sentence of its help. Commands are imported only when
# run, so `cancel -q` does not pay for `generate`'s imports and `--help` and Tab completion
# import none of them (issue 6); tests/test_cli_lazy.py keeps these texts equal to the real ones.
COMMANDS: dict[str, tuple[str, str]] = {
    "cancel": (
        "asset_generator.cli.cancel",
        "Cancel the current generation, generation ID, or (--all) everything.",
    ),
    "completion": (
        "asset_generator.cli.completion",
        "Print the shell completion script for bash, zsh or fish.",
    ),
    "config": (
        "asset_generator.cli.config",
        "Show and change settings in the config file (TOML).",
    ),
    "convert": ("asset_generator.cli.convert", "Convert images to other formats (SVG)."),
    "crop": (
        "asset_generator.cli.crop",
        "Trim near-white or transparent borders off images.",
    ),
    "downscale": (
        "asset_generator.cli.downscale",
        "Shrink images to a width, a height, both, or a percentage.",
    ),
    "generate": ("asset_generator.cli.generate", "Start generations on the server."),
    "mcp": (
        "asset_generator.cli.mcp",
        "Serve the image tools to AI agents over MCP (stdio).",
    ),
    "models": ("asset_generator.cli.models", "List the models the server offers."),
    "pipeline": (
        "asset_generator.cli.pipeline",
        "Generate a whole asset set from one YAML spec (the Go tool's format).",
    ),
    "status": (
        "asset_generator.cli.status",
        "Show the server, its backends and this client's generations.",
    ),
    "strip-metadata": (
        "asset_generator.cli.strip_metadata",
        "Remove embedded metadata from PNG, JPEG and WebP images, in place.",
    ),
    "workflow": ("asset_generator.cli.workflow", "Look at ComfyUI workflows before running them."),
}


class LazyGroup(click.Group):
    """A group whose subcommands live in COMMANDS and are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            name, command, rest = super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:
            # click suggests from the commands already imported, which here is none of them.
            raise click.exceptions.NoSuchCommand(
                exc.command_name, possibilities=self.list_commands(ctx), ctx=ctx
            ) from None
        if command is not None and not ctx.resilient_parsing:  # not while Tab-completing
            _refuse_h_as_height(ctx, name, command, rest)
        return name, command, rest

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            import importlib

            module = importlib.import_module(COMMANDS[cmd_name][0])
            self.add_command(module.command, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMANDS, truncated exactly as click truncates short help."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        # A stand-in command carrying the summary, so click's own truncation applies.
        rows = [
            (name, click.Command(name, help=self._short_help(ctx, name)).get_short_help_str(limit))
            for name in names
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        """Complete command names from COMMANDS without importing the commands."""
        from click.shell_completion import CompletionItem

        items = [
            CompletionItem(name, help=self._short_help(ctx, name))
            for name in self.list_commands(ctx)
            if name.startswith(incomplete)
        ]
        # Options of the group itself (--api-url, ...), as click would offer them.
        return items + click.Command.shell_complete(self, ctx, incomplete)

    def _short_help(self, ctx: click.Context, name: str) -> str:
        return COMMANDS[name][1]


def _h_with_number(arg: str) -> bool:
    return arg.startswith("-h") and arg[2:].isdigit()


def _refuse_h_as_height(
    ctx: click.Context, name: str | None, command: click.Command, args: list[str]
) -> None:
    """``downscale a.png -w 100 -h 100``: a usage error naming the height option, not help.

    ``-h`` is help everywhere, and click would print the help and exit 0 with nothing done,
    which a script cannot tell from success. So in a command with a height option, ``-h``
    followed by a value (a number, or anything when other arguments are given too) is the
    height meant; a lone ``-h`` (or ``--help``) is still the help.
    """
    info_name = name
    while isinstance(command, click.Group):
        for index, arg in enumerate(args):
            sub = None if arg.startswith("-") else command.get_command(ctx, arg)
            if sub is not None:
                ctx = click.Context(command, info_name=info_name, parent=ctx)
                command, info_name, args = sub, arg, args[index + 1 :]
                break
        else:
            return
    height = next((p for p in command.params if "--height" in getattr(p, "opts", ())), None)
    # `-h100`, as `-l100` is accepted: click would read it as -h -1 -0 -0.
    index = next((i for i, arg in enumerate(args) if arg == "-h" or _h_with_number(arg)), None)
    if height is None or index is None:
        return
    if "--" in args and args.index("--") < index:
        return
    if args[index] != "-h":
        value = args[index][2:]
    else:
        value = args[index + 1] if index + 1 < len(args) else None
        if value is None or value.startswith("-"):
            return
        others = len(args) > 2
        if not (value.isdigit() or others):
            return
    names = "/".join(height.opts)
    example = f"{height.opts[0]} {value}"
    raise click.UsageError(
        f"-h is the help option, not the height: use {names} (e.g. {example}); "
        "give -h alone for the help",
        ctx=click.Context(command, info_name=info_name, parent=ctx),
    )


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@global_options
@click.version_option(__version__, "--version", prog_name="asset-generator")
def cli() -> None:
    """Drive a self-hosted SwarmUI or ComfyUI server from the terminal, scripts and cron.

    Start generations and whole asset sets (pipeline), see what is running, and
    cancel the current generation or everything queued, with exit codes scripts
    can trust: 0 success, 1 error, 2 usage error, 130/143 interrupted. Post-process
    images offline (crop, downscale, strip-metadata, convert svg), and serve the
    same generate / status / cancel to AI agents (mcp).

    Global options work before or after the command: `asset-generator -q cancel`
    and `asset-generator cancel -q` are the same.
    """


def _fail(
    app: App, message: str, code: str, details: dict[str, Any] | None = None, exit_code: int = 1
) -> int:
    """One line on stderr, and the JSON failure document when JSON was asked for."""
    from asset_generator.cli.output import one_line

    message = one_line(message)
    app.output.error(message)
    _json_failure(app, code, message, details)
    return exit_code


def _json_failure(app: App, code: str, message: str, details: dict[str, Any] | None = None) -> None:
    """The one JSON document of a run that failed after printing its own message."""
    from asset_generator.cli.output import one_line

    try:
        wanted = app.output.is_json
    except Exception:  # the settings themselves are broken: no document can be promised
        return
    if wanted:
        if code not in ERROR_CODES:
            # A code outside the contract is a bug (tests/test_messages.py looks for them);
            # a script must still get a code it knows.
            code = "server_error"
        extra = {k: v for k, v in (details or {}).items() if k not in ("ok", "error")}
        app.output.json(
            {"ok": False, "error": {"code": code, "message": one_line(message)}, **extra}
        )


def run(argv: Sequence[str] | None = None) -> int:
    """Run the program and return its exit code (cli-contract §3)."""
    from asset_generator.cli.output import OutputBroken

    app = App()
    try:
        try:
            return _dispatch(app, argv)
        except _AskAgain:
            # The server type remembered for this address no longer fits (another server
            # listens there now): forget it and run the command once more, asking afresh.
            app.close()
            app = App()
            app.flags["_asked_again"] = True
            return _dispatch(app, argv)
        except OSError as exc:
            # click's own output (--help, usage errors) also writes to stdout.
            broken = _stdout_broken(exc)
            if broken is None:
                raise
            raise broken from None
    except OutputBroken as exc:
        return _broken_stdout(exc)
    finally:
        app.close()


class _AskAgain(Exception):
    """The remembered server type was wrong; the command is run again once."""


def _stdout_broken(exc: OSError) -> Exception | None:
    """The OutputBroken that ``exc`` is, if it came from stdout; None for anything else."""
    import errno

    from asset_generator.cli.output import OutputBroken, describe_stdout_error, stdout_closed

    if isinstance(exc, BrokenPipeError):
        return OutputBroken("the reader of standard output went away", reader_gone=True)
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as flush:
        exc = flush
    else:
        # Files the program writes itself fail as typed errors (DownloadError, RegistryError);
        # a raw "disk full" reaching this far was click writing to stdout.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and not (
            exc.errno == errno.EBADF and stdout_closed()
        ):
            return None
    return OutputBroken(f"cannot write to standard output: {describe_stdout_error(exc)}")


def _broken_stdout(exc: Exception) -> int:
    """stdout is full or closed (one stderr line, exit 1), or its reader left (quiet, exit 1).

    No JSON document: there is no stdout left to carry it.
    """
    from asset_generator.cli.output import one_line

    _silence_stdout()
    if not getattr(exc, "reader_gone", False):
        with contextlib.suppress(OSError, AttributeError, ValueError):
            click.echo(one_line(str(exc)), err=True)
    return 1


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so nothing (interpreter shutdown included) writes there again.

    What is still buffered would otherwise fail once more at exit, with Python's own
    "Exception ignored" traceback on stderr.
    """
    import os

    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def _dispatch(app: App, argv: Sequence[str] | None) -> int:
    from asset_generator.registry import RegistryError
    from asset_generator.settings import SettingsError

    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="asset-generator",
            standalone_mode=False,
            obj=app,
        )
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        _format_after_the_error(app, argv)
        code = "file_error" if isinstance(exc, click.FileError) else "usage_error"
        _json_failure(app, code, exc.format_message())
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        _json_failure(app, "interrupted", "stopped by SIGINT")
        return 130
    except Terminated:
        click.echo("terminated", err=True)
        _json_failure(app, "interrupted", "stopped by SIGTERM")
        return 143
    except Stopped as exc:
        _json_failure(app, "interrupted", exc.message, exc.details)
        return exc.exit_code
    except CommandError as exc:
        if exc.exit_code == 2:
            return _usage_failure(app, exc.message)
        return _fail(app, exc.message, exc.code, exc.details, exc.exit_code)
    except SettingsError as exc:
        if exc.exit_code == 2:
            return _usage_failure(app, str(exc))
        # Exit 1: the config file itself cannot be read or written.
        return _fail(app, str(exc), "file_error", exit_code=exc.exit_code)
    except RegistryError as exc:
        return _fail(app, str(exc), "file_error")
    except Exception as exc:
        if app.wrong_type_remembered(exc):
            app.forget_type()
            raise _AskAgain from None
        handled = _protocol_failure(app, exc)
        if handled is None:
            raise
        return handled


def _format_after_the_error(app: App, argv: Sequence[str] | None) -> None:
    """Honour a ``-f json`` that click never reached because an earlier option was bad.

    click stops at the first bad value, so ``status --timeout 0 -f json`` would otherwise
    print no JSON document at all, which a script parsing stdout cannot tell from a crash.
    """
    if "output" in app.__dict__:
        return
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        args = args[: args.index("--")]
    wanted = None
    for index, arg in enumerate(args):
        if arg in ("-f", "--format") and index + 1 < len(args):
            wanted = args[index + 1]
        elif arg.startswith("--format="):
            wanted = arg.split("=", 1)[1]
        elif arg.startswith("-f") and not arg.startswith("--") and len(arg) > 2:
            wanted = arg[2:]
    if wanted is not None and wanted.lower() in ("table", "json"):
        app.flags["format"] = wanted.lower()


def _usage_failure(app: App, message: str) -> int:
    """A usage error found after parsing, in click's own style, so every one reads the same."""
    click.UsageError(message, ctx=app.context).show()
    _json_failure(app, "usage_error", message)
    return 2


def _protocol_failure(app: App, exc: Exception) -> int | None:
    """Map server errors to the contract's phrases; None for anything else (a real bug)."""
    if "asset_generator.server.errors" not in sys.modules:
        return None
    from asset_generator.server.errors import RequestError, ServerError

    if isinstance(exc, RequestError):
        return _usage_failure(app, exc.message)
    if not isinstance(exc, ServerError):
        return None
    details = {
        "server": app.server_name,
        # A server that answered but could not be used (refused us, said something odd) is
        # reachable; the exit code is 1 all the same.
        "reachable": exc.reachable,
    }
    return _fail(app, f"{exc.phrase}: {exc.message}", exc.code, details)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def _hold_closed_streams() -> None:
    """Put /dev/null on fds 0-2 if the shell closed them (`>&-`).

    Otherwise the next file or socket opened would get fd 1, and a stray write meant for
    stdout could land in the session cache or on the server connection. ``sys.stdout``
    becomes a ClosedStdout, so every write still fails as it must.
    """
    import os

    from asset_generator.cli.output import ClosedStdout

    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                held = os.open(os.devnull, os.O_RDWR)
                if held != fd:
                    os.dup2(held, fd)
                    os.close(held)
    if sys.stdout is None:
        sys.stdout = ClosedStdout()


def main() -> None:
    """Console-script entry point."""
    import signal

    _hold_closed_streams()
    # SIGTERM unwinds like Ctrl-C (cleanup runs, one message, exit 143); generate installs
    # its own handlers on top, to interrupt its server-side work first.
    signal.signal(signal.SIGTERM, _terminate)
    code = run()
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as exc:
        broken = _stdout_broken(exc)
        code = _broken_stdout(broken) if broken is not None else 1
    # The interpreter's last garbage collection walks every object the imports made (httpx,
    # rich, Pillow): 50-150 ms between the last line printed and the exit, paid by every
    # script that loops over us. Frozen objects are left out of it; modules are still torn
    # down and atexit handlers still run.
    import gc

    gc.freeze()
    sys.exit(code)
