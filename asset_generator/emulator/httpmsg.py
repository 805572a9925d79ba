"""Transport-neutral HTTP request and answer, plus the JSON answer helpers SwarmUI uses."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def aspnet_path(raw_path: str) -> str:
    """``HttpRequest.Path``: percent-decoded except ``%2F``, which ASP.NET keeps escaped."""
    pieces = re.split(r"(%2[Ff])", raw_path)
    return "".join(p if p.lower() == "%2f" else unquote(p) for p in pieces)


@dataclass
class HttpRequest:
    """What the routes may look at: method, path, headers, peer address."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    peer: str
    read_body: Callable[[int], Awaitable[bytes]] | None = None

    @property
    def raw_path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def path(self) -> str:
        return aspnet_path(self.raw_path)

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive name)."""
        lowered = name.lower()
        for key, value in self.headers:
            if key == lowered:
                return value
        return None

    def header_map(self) -> dict[str, str]:
        """Headers as a dict with lower-cased names; repeated headers joined by ``, ``."""
        joined: dict[str, str] = {}
        for key, value in self.headers:
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        return joined

    def cookie(self, name: str) -> str | None:
        for header_value in (v for k, v in self.headers if k == "cookie"):
            for part in header_value.split(";"):
                key, sep, value = part.strip().partition("=")
                if sep and key == name:
                    return value
        return None

    @property
    def is_loopback(self) -> bool:
        return self.peer in LOOPBACK


@dataclass
class Answer:
    """One HTTP answer. ``close`` hangs up afterwards (e.g. when the body was not read);
    ``chunked`` sends no Content-Length (compressed answers)."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False
    chunked: bool = False


def json_answer(status: int, document: dict[str, Any]) -> Answer:
    """``Utilities.YieldJsonOutput``: compact UTF-8 JSON, no-store, explicit length."""
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return Answer(
        status,
        body,
        [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
    )


def api_error(error_id: str, message: str) -> dict[str, str]:
    """The dispatcher's own error helper writes ``error_id`` then ``error`` (API.cs)."""
    return {"error_id": error_id, "error": message}


def error_obj(message: str, error_id: str) -> dict[str, str]:
    """``Utilities.ErrorObj`` writes ``error`` then ``error_id``."""
    return {"error": message, "error_id": error_id}


def redirect(location: str) -> Answer:
    return Answer(302, b"", [("Location", location)])
