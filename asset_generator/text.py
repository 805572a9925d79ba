"""Text from servers and prompts made safe to print: one line, no escapes, no secrets."""

from __future__ import annotations

import re

_LINE_BREAKS = re.compile(r"\s*[\r\n\v\f\x85\u2028\u2029]+\s*")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

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


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 image``, ``2 images`` (``many`` for a noun that does not just take an s)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def one_line(text: str) -> str:
    """``text`` as one printable line: server error texts may span lines or carry escapes.

    Scripts match the first line of stderr, and a hostile server must not be able to move
    the cursor or recolour the user's terminal.
    """
    return redact(_CONTROLS.sub("", _LINE_BREAKS.sub(" ", text.strip())))
