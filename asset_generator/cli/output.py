"""Two streams: data on stdout, messages, progress and errors on stderr (cli-contract §3)."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, TextIO

import click

_LINE_BREAKS = re.compile(r"\s*[\r\n\v\f\x85\u2028\u2029]+\s*")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


# Lines piped elsewhere are not wrapped at any terminal width.
UNWRAPPED_WIDTH = 4096

# Credentials of this run: never shown, even if a server or library echoes them back.
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Redact ``value`` (and, for ``Bearer xyz``-style headers, ``xyz``) from messages."""
    if not value:
        return
    _SECRETS.add(value)
    last = value.split()[-1]
    if len(last) >= 8:
        _SECRETS.add(last)


def redact(text: str) -> str:
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def one_line(text: str) -> str:
    """``text`` as one printable line: server error texts may span lines or carry escapes.

    Scripts match the first line of stderr, and a hostile server must not be able to move
    the cursor or recolour the user's terminal.
    """
    return redact(_CONTROLS.sub("", _LINE_BREAKS.sub(" ", text.strip())))


class Output:
    """Where everything the program says goes, honouring ``-q``, ``-v`` and ``--format``."""

    def __init__(self, *, quiet: bool = False, verbose: bool = False, fmt: str = "table") -> None:
        self.quiet = quiet
        self.verbose = verbose and not quiet
        self.format = fmt

    @property
    def is_json(self) -> bool:
        return self.format == "json"

    # -- stdout: data -------------------------------------------------------------------------

    def data(self, text: str) -> None:
        click.echo(text)

    def rich(self, renderable: Any, console: Any = None) -> None:
        """Print rich output to stdout: terminal-wide on a terminal, unwrapped into a pipe.

        A pipe gets whole lines (``| grep`` sees full model names) and no trailing padding.
        """
        console = console or self.stdout_console()
        if not console.is_terminal:
            console.width = UNWRAPPED_WIDTH
        with console.capture() as captured:
            console.print(renderable)
        self.data("\n".join(line.rstrip() for line in captured.get().splitlines()))

    def json(self, document: Any) -> None:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))

    # -- stderr: messages ---------------------------------------------------------------------

    def info(self, message: str) -> None:
        """A message for a person; hidden by ``-q``."""
        if not self.quiet:
            click.echo(redact(message), err=True)

    def warn(self, message: str) -> None:
        if not self.quiet:
            click.echo(one_line(message), err=True)

    def error(self, message: str) -> None:
        """Always shown: ``-q`` means errors only. Always exactly one line."""
        click.echo(one_line(message), err=True)

    def exchange(self, method: str, path: str, status: int | None, millis: float) -> None:
        """One HTTP exchange under ``-v``: method, route, status, time. Never headers or bodies."""
        if self.verbose:
            shown = status if status is not None else "failed"
            click.echo(f"> {method} {path} {shown} ({millis:.0f} ms)", err=True)

    def debug(self, message: str) -> None:
        if self.verbose:
            click.echo(redact(message), err=True)

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
            no_color=bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty(),
            soft_wrap=False,
            **({"color_system": None} if os.environ.get("NO_COLOR") else {}),
        )
