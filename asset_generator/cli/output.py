"""Two streams: data on stdout, messages, progress and errors on stderr (cli-contract §3)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import click

from asset_generator.text import one_line, plural, redact, register_secret

__all__ = ["Output", "OutputBroken", "one_line", "plural", "redact", "register_secret"]

# Lines piped elsewhere are not wrapped at any terminal width.
UNWRAPPED_WIDTH = 4096


class OutputBroken(Exception):
    """stdout cannot take our data: full or closed, or (``reader_gone``) its reader left."""

    def __init__(self, message: str, *, reader_gone: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.reader_gone = reader_gone


def same_terminal(a: TextIO | None, b: TextIO | None) -> bool:
    """True when ``a`` and ``b`` are both the very same terminal (``generate`` on a tty)."""
    try:
        if a is None or b is None or not (a.isatty() and b.isatty()):
            return False
        first, second = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (AttributeError, ValueError, OSError):
        return False
    return (first.st_rdev, first.st_ino) == (second.st_rdev, second.st_ino)


class ClosedStdout(io.TextIOBase):
    """``sys.stdout`` when the shell closed fd 1 (`>&-`): every write fails, as it should.

    Python leaves ``sys.stdout`` None then, and click drops whatever it is asked to print
    (``--help``, ``--version``) without a word.
    """

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    def isatty(self) -> bool:
        return False


def stdout_closed() -> bool:
    """True when the program was started with stdout closed."""
    return sys.stdout is None or isinstance(sys.stdout, ClosedStdout)


def _stdout_problem(exc: OSError) -> OutputBroken:
    if isinstance(exc, BrokenPipeError):
        return OutputBroken("the reader of standard output went away", reader_gone=True)
    return OutputBroken(f"cannot write to standard output: {describe_stdout_error(exc)}")


def describe_stdout_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno == errno.EBADF:
        return "it is closed"
    return exc.strerror or str(exc)


class Output:
    """Where everything the program says goes, honouring ``-q``, ``-v`` and ``--format``."""

    def __init__(self, *, quiet: bool = False, verbose: bool = False, fmt: str = "table") -> None:
        self.quiet = quiet
        self.verbose = verbose and not quiet
        self.format = fmt
        # The rich console of a live display (progress bars, status --watch) while one runs:
        # lines for the same terminal are printed through it, above the live area, so a
        # redraw never erases or glues onto them.
        self._live: Any = None

    @contextlib.contextmanager
    def live(self, console: Any) -> Iterator[None]:
        """While the block runs, lines for ``console``'s terminal go above its live area."""
        previous, self._live = self._live, console
        try:
            yield
        finally:
            self._live = previous

    def _live_for(self, stream: TextIO | None) -> Any:
        live = self._live
        if live is None or stream is None:
            return None
        return live if stream is live.file or same_terminal(stream, live.file) else None

    def _echo(self, text: str, *, err: bool) -> None:
        """One line to stdout or stderr, above a live display on the same terminal."""
        stream = sys.stderr if err else sys.stdout
        live = self._live_for(stream)
        try:
            if live is not None:
                from asset_generator.cli.signals import deferred

                # A Ctrl-C waits until the line and the redraw under it are whole.
                with deferred():
                    live.print(text, soft_wrap=True, markup=False, highlight=False, emoji=False)
            elif stream is None:
                if not err:
                    # Started with `>&-`: click would drop the data without a word.
                    raise OutputBroken("cannot write to standard output: it is closed")
            else:
                click.echo(text, file=stream)
        except OSError as exc:
            if not err:
                raise _stdout_problem(exc) from None
            # stderr itself is full or gone: there is nowhere left to say anything.

    @property
    def is_json(self) -> bool:
        return self.format == "json"

    # -- stdout: data -------------------------------------------------------------------------

    def data(self, text: str) -> None:
        """A line of data on stdout; OutputBroken when stdout cannot take it."""
        self._echo(text, err=False)

    def rich(self, renderable: Any, console: Any = None) -> None:
        """Print rich output to stdout: terminal-wide on a terminal, unwrapped into a pipe.

        A pipe gets whole lines (``| grep`` sees full model names) and no trailing padding.
        """
        console = console or self.stdout_console()
        if not console.is_terminal:
            console.width = UNWRAPPED_WIDTH
        try:
            with console.capture() as captured:
                console.print(renderable)
        except OSError as exc:
            # Even a capture ends by flushing the console's own file, which is stdout.
            raise _stdout_problem(exc) from None
        self.data("\n".join(line.rstrip() for line in captured.get().splitlines()))

    def json(self, document: Any) -> None:
        self._echo(json.dumps(document, indent=2, ensure_ascii=False), err=False)

    # -- stderr: messages ---------------------------------------------------------------------

    def info(self, message: str) -> None:
        """A message for a person; hidden by ``-q``."""
        if not self.quiet:
            self._echo(redact(message), err=True)

    def warn(self, message: str) -> None:
        if not self.quiet:
            self._echo(one_line(message), err=True)

    def error(self, message: str) -> None:
        """Always shown: ``-q`` means errors only. Always exactly one line."""
        self._echo(one_line(message), err=True)

    def exchange(self, method: str, path: str, status: int | None, millis: float) -> None:
        """One HTTP exchange under ``-v``: method, route, status, time. Never headers or bodies."""
        if self.verbose:
            shown = status if status is not None else "failed"
            self._echo(f"> {method} {path} {shown} ({millis:.0f} ms)", err=True)

    def debug(self, message: str) -> None:
        if self.verbose:
            self._echo(redact(message), err=True)

    # -- terminal capabilities ----------------------------------------------------------------

    @staticmethod
    def interactive(stream: TextIO | None = None) -> bool:
        """True when ``stream`` (stderr by default) is a terminal and colour is allowed."""
        stream = stream or sys.stderr
        if os.environ.get("NO_COLOR"):
            return False
        try:
            return stream.isatty()
        except (AttributeError, ValueError):
            return False

    def stderr_console(self) -> Any:
        """A rich console on stderr with markup, emoji and highlighting off."""
        from rich.console import Console

        return Console(
            file=sys.stderr,
            markup=False,
            emoji=False,
            highlight=False,
            no_color=bool(os.environ.get("NO_COLOR")),
            # NO_COLOR: no styling at all (bold included), only what a redraw needs.
            **({"color_system": None} if os.environ.get("NO_COLOR") else {}),
        )

    def stdout_console(self) -> Any:
        from rich.console import Console

        return Console(
            file=sys.stdout,
            markup=False,
            emoji=False,
            highlight=False,
            no_color=bool(os.environ.get("NO_COLOR")) or not is_terminal(sys.stdout),
            soft_wrap=False,
            **({"color_system": None} if os.environ.get("NO_COLOR") else {}),
        )


def is_terminal(stream: TextIO | None) -> bool:
    """True when ``stream`` is a terminal (a closed or odd stream is not)."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False
