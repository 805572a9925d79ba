"""ComfyUI's HTTP side (aiohttp's behaviour) on the shared transport.

What aiohttp and ``server.py`` do around the handlers: every route also under ``/api``, a
static catch-all that answers unknown GETs with an empty 404 and unknown POST/PUT/DELETE with
405 (``Allow`` listing what the path does take), the origin check (or CORS headers), the body
size limit (413), unhandled exceptions as aiohttp's plain-text 500, ``/ws`` without an upgrade
as 400. The optional ``Authorization`` gate stands for a token proxy in front.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
import time
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import h11

from asset_generator.emulator.comfy.config import ComfyConfig
from asset_generator.emulator.comfy.hub import ComfyServer
from asset_generator.emulator.config import RecordedRequest
from asset_generator.emulator.httpmsg import Answer
from asset_generator.emulator.recorder import Recorder
from asset_generator.emulator.transport import (
    BodyTooLarge,
    Exchange,
    HttpTransport,
    TransportSettings,
)

SERVER_HEADER = "Python/3.11 aiohttp/3.14.5"
JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
INTERNAL_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"


class HTTPError(Exception):
    """Raised by a handler (or the body reader) to answer with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


def json_response(data: Any, status: int = 200) -> Answer:
    """``web.json_response``: ``json.dumps`` with its default separators."""
    return Answer(status, json.dumps(data).encode(), [("Content-Type", JSON_TYPE)])


def text_response(status: int, text: str, close: bool = False) -> Answer:
    return Answer(status, text.encode(), [("Content-Type", TEXT_TYPE)], close=close)


def empty(status: int = 200) -> Answer:
    """``web.Response(status=...)``: no body, no Content-Type."""
    return Answer(status)


@dataclass
class FilePart:
    """A multipart field with a filename (aiohttp's ``FileField``)."""

    name: str
    filename: str
    file: bytes
    content_type: str


class WebRequest:
    """What a handler sees: the request, its route parameters, and a lazily read body."""

    def __init__(
        self,
        exchange: Exchange,
        record: RecordedRequest,
        match_info: dict[str, str],
        max_body: int,
    ) -> None:
        self.exchange = exchange
        self.record = record
        self.match_info = match_info
        self.max_body = max_body
        self.method = exchange.request.method
        raw_query = exchange.request.target.partition("?")[2]
        self.query: dict[str, str] = {}
        for key, value in urllib.parse.parse_qsl(raw_query, keep_blank_values=True):
            self.query.setdefault(key, value)
        self._body: bytes | None = None

    def header(self, name: str) -> str | None:
        return self.exchange.request.header(name)

    async def read(self) -> bytes:
        if self._body is not None:
            return self._body
        # aiohttp refuses the body once it passes client_max_size, then reads and drops the
        # rest before answering, so the client sees the 413 and the connection stays usable.
        too_large = text_response(413, f"Maximum request body size {self.max_body} exceeded.")
        length = self.header("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            await self.exchange.discard_body()
            raise HTTPError(too_large)
        try:
            self._body = await self.exchange.read_body(self.max_body)
        except BodyTooLarge:
            await self.exchange.discard_body()
            raise HTTPError(too_large) from None
        return self._body

    async def text(self) -> str:
        charset = "utf-8"
        content_type = self.header("content-type") or ""
        found = re.search(r"charset=([^;\s]+)", content_type, re.IGNORECASE)
        if found:
            charset = found.group(1).strip('"')
        return (await self.read()).decode(charset)

    async def json(self) -> Any:
        document = json.loads(await self.text())
        self.record.body = document
        return document

    async def post(self) -> dict[str, Any]:
        """``request.post()``: multipart or urlencoded fields; nothing for other bodies."""
        content_type = self.header("content-type") or ""
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "application/x-www-form-urlencoded":
            text = (await self.read()).decode("utf-8")
            fields = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
            self.record.body = fields
            return fields
        if media != "multipart/form-data":
            return {}
        found = re.search(r'boundary="?([^";]+)"?', content_type)
        if not found:
            raise ValueError("multipart body without a boundary")
        fields = parse_multipart(await self.read(), found.group(1).encode("latin-1"))
        self.record.body = {
            key: (f"<file {value.filename!r}, {len(value.file)} bytes>")
            if isinstance(value, FilePart)
            else value
            for key, value in fields.items()
        }
        return fields


def parse_multipart(body: bytes, boundary: bytes) -> dict[str, Any]:
    """The fields of a ``multipart/form-data`` body (the first one of each name)."""
    fields: dict[str, Any] = {}
    delimiter = b"--" + boundary
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        part = part.removeprefix(b"\r\n")
        head, _, content = part.partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        params = dict(re.findall(r';\s*([\w*]+)="?([^";]*)"?', disposition))
        name = params.get("name")
        if name is None or name in fields:
            continue
        filename = params.get("filename")
        if filename:
            content_type = headers.get("content-type", "application/octet-stream")
            fields[name] = FilePart(name, filename, content, content_type)
        else:
            fields[name] = content.decode("utf-8", "replace")
    return fields


Handler = Callable[[ComfyServer, WebRequest], Awaitable[Answer]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as served (with the /api prefix where it has one)
    name: str  # as registered in server.py (what the request log calls the route)
    handler: Handler | None  # None: the WebSocket endpoint
    pattern: re.Pattern[str]


def compile_path(path: str) -> re.Pattern[str]:
    """aiohttp's ``{name}`` segments match ``[^{}/]+``."""
    parts = re.split(r"(\{\w+\})", path)
    regex = "".join(
        f"(?P<{p[1:-1]}>[^{{}}/]+)" if p.startswith("{") else re.escape(p) for p in parts
    )
    return re.compile(f"^{regex}$")


class Router:
    """aiohttp's ``UrlDispatcher`` with the static catch-all last (``web.static('/', ...)``)."""

    def __init__(self, routes: list[tuple[str, str, Handler | None]]) -> None:
        # add_routes(): every route prefixed with /api first, then the bare ones.
        table = [(m, "/api" + p, p, h) for m, p, h in routes] + [(m, p, p, h) for m, p, h in routes]
        self.routes = [Route(m, p, name, h, compile_path(p)) for m, p, name, h in table]

    def resolve(self, method: str, path: str) -> tuple[Route | None, dict[str, str], set[str]]:
        """(route, match_info, allowed) — no route: fall to the static catch-all."""
        allowed: set[str] = set()
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            methods = {route.method, "HEAD"} if route.method == "GET" else {route.method}
            if method in methods:
                return route, found.groupdict(), allowed
            allowed |= methods
        return None, {}, allowed | {"GET", "HEAD"}


def _is_loopback(host: str | None) -> bool:
    """``server.py`` ``is_loopback``: an address, or a name that resolves only to loopback."""
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    loopback = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            for _f, _t, _p, _c, sockaddr in socket.getaddrinfo(
                host, None, family, socket.SOCK_STREAM
            ):
                if not ipaddress.ip_address(sockaddr[0]).is_loopback:
                    return loopback
                loopback = True
        except socket.gaierror:
            pass
    return loopback


def foreign_origin(host: str | None, origin: str | None) -> bool:
    """The default origin check: a loopback Host with a different Origin is refused."""
    if host is None or origin is None:
        return False
    host_domain = host.lower()
    parsed = urllib.parse.urlparse(origin)
    origin_domain: str | None = parsed.netloc.lower()
    host_parsed = urllib.parse.urlsplit("//" + host_domain)
    loopback = _is_loopback(host_parsed.hostname)
    try:
        origin_port = parsed.port
        host_port = host_parsed.port
    except ValueError:
        return False
    compared_host: str | None = host_domain
    if origin_port is None:
        compared_host = host_parsed.hostname
    if host_port is None:
        origin_domain = parsed.hostname
    return bool(loopback and compared_host and origin_domain and compared_host != origin_domain)


class ComfyHttp(HttpTransport):
    """Routes requests to the handlers of ``routes.py`` the way aiohttp would."""

    server_header = SERVER_HEADER

    def __init__(
        self, server: ComfyServer, recorder: Recorder, routes: list[tuple[str, str, Any]]
    ) -> None:
        config: ComfyConfig = server.config
        super().__init__(
            TransportSettings(config.host, config.port, config.latency_seconds, config.faults),
            recorder,
        )
        self.server = server
        self.config = config
        self.router = Router(routes)

    def response_headers(self, answer: Answer) -> list[tuple[str, str]]:
        headers = list(answer.headers)
        if self.config.cors_origin is not None:
            headers += [
                ("Access-Control-Allow-Origin", self.config.cors_origin),
                ("Access-Control-Allow-Methods", "POST, GET, DELETE, PUT, OPTIONS"),
                ("Access-Control-Allow-Headers", "Content-Type, Authorization"),
                ("Access-Control-Allow-Credentials", "true"),
            ]
        if not answer.chunked:
            headers.append(("Content-Length", str(len(answer.body))))
        headers += [("Date", formatdate(usegmt=True)), ("Server", self.server_header)]
        if answer.close:
            headers.append(("Connection", "close"))
        return headers

    def upgrade_headers(self, accept: str) -> list[tuple[str, str]]:
        return [
            ("Upgrade", "websocket"),
            ("Connection", "upgrade"),
            ("Sec-WebSocket-Accept", accept),
            ("Date", formatdate(usegmt=True)),
            ("Server", self.server_header),
        ]

    async def handle(self, exchange: Exchange) -> bool:
        request = exchange.request
        path = urllib.parse.unquote(request.raw_path)
        route, match_info, allowed = self.router.resolve(request.method, path)
        is_socket = route is not None and route.handler is None and exchange.wants_websocket
        record = self.recorder.add(
            RecordedRequest(
                method=request.method,
                path=request.target,
                route=route.name if route is not None else None,
                headers=request.header_map(),
                body=None,
                transport="ws" if is_socket else "http",
                status=None,
                session_id=None,
                time=time.monotonic(),
            )
        )
        required = self.config.required_authorization
        if required and request.header("authorization") != required:
            answer = text_response(401, "401: Unauthorized")
        elif self.config.cors_origin is None and foreign_origin(
            request.header("host"), request.header("origin")
        ):
            answer = empty(403)
        elif request.method == "OPTIONS":
            answer = empty(200)  # both middlewares answer a pre-flight before routing
        elif route is None:
            if request.method in ("GET", "HEAD"):
                answer = self._static(path)
            else:
                methods = ",".join(sorted(allowed))
                answer = text_response(405, "405: Method Not Allowed")
                answer.headers.append(("Allow", methods))
        elif route.handler is None:
            if exchange.wants_websocket:
                return await self._websocket(exchange, record)
            upgrade = request.header("upgrade")
            answer = text_response(
                400, f'No WebSocket UPGRADE hdr: {upgrade}\n Can "Upgrade" only to "WebSocket".'
            )
        else:
            answer = await self._call(route, exchange, record, match_info)
        keep = await self.send(exchange, record, answer)
        if keep and exchange.conn.their_state is h11.SEND_BODY:
            # aiohttp reads and drops a body the handler left unread (its lingering read).
            await exchange.discard_body()
        return keep

    def _static(self, path: str) -> Answer:
        # web.static('/', web_root): a file that is not there is an empty 404 without a length.
        return Answer(404, b"", [("Content-Type", "application/octet-stream")], chunked=True)

    async def _call(
        self, route: Route, exchange: Exchange, record: RecordedRequest, match_info: dict[str, str]
    ) -> Answer:
        assert route.handler is not None
        request = WebRequest(exchange, record, match_info, self.config.max_upload_bytes)
        try:
            return await route.handler(self.server, request)
        except HTTPError as refusal:
            return refusal.answer
        except Exception:
            # aiohttp logs the traceback and answers its generic 500, closing the connection.
            traceback.print_exc(file=sys.stderr)
            return text_response(500, INTERNAL_ERROR, close=True)

    async def _websocket(self, exchange: Exchange, record: RecordedRequest) -> bool:
        refused = await self.upgrade_fault(exchange, record)
        if refused is not None:
            if refused.status == 0:
                self.recorder.finish(record, None)
                exchange.writer.transport.abort()
                return False
            return await self.send(exchange, record, refused)
        self.recorder.finish(record, 101)
        client_id = WebRequest(exchange, record, {}, 0).query.get("clientId", "")

        def on_message(text: str) -> None:
            try:
                document: Any = json.loads(text)
            except ValueError:
                document = text
            message = RecordedRequest(
                method="WS",
                path=exchange.request.target,
                route="/ws",
                headers={},
                body=document,
                transport="ws",
                status=None,
                session_id=client_id or None,
                time=time.monotonic(),
            )
            self.recorder.add(message)

        await self.accept_websocket(
            exchange,
            record,
            lambda channel: self.server.serve_socket(channel, client_id, on_message),
            max_message_bytes=4 * 1024 * 1024,  # aiohttp's default max_msg_size
            dumps=json.dumps,
        )
        return False
