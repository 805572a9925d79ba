"""HTTP and WebSocket transport: the only module that imports httpx.

It knows how to talk to *a* server (JSON requests, streamed GETs, WebSockets), not what the
routes mean; each adapter (``swarm/``, ``comfy/``) names its routes and credentials.
Credentials are attached per request rather than kept in a cookie jar, and redirects are never
followed, so neither a cookie nor the ``Authorization`` header can be carried to another host.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import time
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from asset_generator import __version__
from asset_generator.server.errors import (
    AuthFailed,
    BadResponse,
    ConnectionFailed,
    NotFound,
    RequestTimeout,
    ServerError,
)
from asset_generator.settings import describe_server


def _without_httpx_cli() -> None:
    """Keep ``import httpx`` from importing httpx's own command-line tool.

    httpx/__init__ imports ``httpx._main`` (the ``httpx`` console command), which imports
    click, rich.progress, rich.syntax and pygments whenever they are installed, as they are
    alongside us: about 45 ms of every networked command's start-up, for code we never run.
    A stand-in module answers that import; the real tool is a separate program anyway.
    """
    if "httpx._main" in sys.modules:
        return
    stand_in = types.ModuleType("httpx._main")

    def main() -> None:
        raise SystemExit("the httpx command-line tool is not available inside asset-generator")

    stand_in.main = main  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = stand_in


_without_httpx_cli()


import httpx  # noqa: E402

CONNECT_TIMEOUT = 5.0
# The largest real JSON answer is a SwarmUI ListModels page with previews or ComfyUI's whole
# /object_info (half a MiB); 32 MiB is far above both and keeps a hostile or broken server
# from filling memory.
MAX_JSON_BYTES = 32 * 1024 * 1024
# httpx-ws reads the socket in chunks of this size and reassembles whole messages, so image
# messages with multi-MB data: URLs (SwarmUI's donotsave) arrive intact.
WS_READ_CHUNK_BYTES = 1024 * 1024
CONNECT_RETRIES = 2

ExchangeLogger = Callable[[str, str, int | None, float], None]


@dataclass(frozen=True)
class Access:
    """How we identify ourselves to one server: headers for every request, and what to say
    when they are refused. Never printed."""

    headers: Mapping[str, str]
    # A sentence for a bare 401 (a proxy's or a server-wide gate's), naming the option to fix.
    refused: str
    # The server kind as hints name it: "is SwarmUI running at …?".
    product: str
    # Add "(HTTP 401)" / "(HTTP 403)" to the sentence (the adapter's own messages do).
    show_status: bool = False
    # The sentence for a 401 that asks for a user name and password (WWW-Authenticate: Basic,
    # a proxy's basic auth) when our credentials are not those; None: ``refused`` stands.
    basic_challenge: str | None = None
    # What to check, as the end of a longer sentence ("check --api-key").
    fix: str = "check the credentials"


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, read whole."""

    status: int
    raw: bytes
    content_type: str
    path: str
    # The WWW-Authenticate header of a 401 (what a proxy asks for), else "".
    challenge: str = ""

    @property
    def empty(self) -> bool:
        return not self.raw.strip()


class Transport:
    """A connection pool to one server with the client's credentials and timeouts."""

    def __init__(
        self,
        base_url: str,
        access: Access,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        log: ExchangeLogger | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.server = describe_server(self.base_url)
        self.access = access
        self.timeout = timeout
        self._log = log
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
            transport=transport or self._default_transport(),
            follow_redirects=False,
            headers={"User-Agent": f"asset-generator/{__version__}"},
            trust_env=False,
        )

    def _default_transport(self) -> httpx.BaseTransport:
        if urlsplit(self.base_url).scheme == "https":
            return httpx.HTTPTransport(retries=CONNECT_RETRIES)
        # A plain-http server never needs TLS (redirects are not followed, so no request can
        # reach another URL), and httpx's default context loads the whole CA bundle: ~40 ms
        # of every command. This context still verifies; it just trusts no one.
        import ssl

        return httpx.HTTPTransport(
            retries=CONNECT_RETRIES, verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plain requests -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
        shown: str | None = None,
    ) -> Answer:
        """One request (``body`` sent as JSON when given); the answer read whole, capped.

        Raises ConnectionFailed, RequestTimeout or BadResponse (an answer too large). Any HTTP
        status is returned: what it means is the caller's protocol. ``shown``: how messages
        and ``-v`` name the path when it holds something private (a job's id), else ``path``.
        """
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = dict(self.access.headers)
        if content is not None:
            headers["Content-Type"] = "application/json"
        shown_as = shown or path
        shown = shown_as if not params else f"{shown_as}?{urlencode(params)}"
        started = time.monotonic()
        status: int | None = None
        try:
            with self._client.stream(
                method,
                path,
                content=content,
                params=params,
                headers=headers,
                timeout=self._timeout(timeout),
            ) as response:
                status = response.status_code
                raw = self._read_capped(response, MAX_JSON_BYTES, shown_as)
                content_type = response.headers.get("content-type", "")
                challenge = response.headers.get("www-authenticate", "")
        except httpx.HTTPError as exc:
            raise self._translate(exc, shown_as) from None
        finally:
            self._note(method, shown, status, started)
        return Answer(status, raw, content_type, shown_as, challenge)

    def post_json(
        self, path: str, body: dict[str, Any], *, timeout: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST ``body`` to ``path``; return the HTTP status and the JSON object it answered.

        Raises ConnectionFailed, RequestTimeout, AuthFailed (a bare 401) or BadResponse.
        """
        answer = self.request("POST", path, body=body, timeout=timeout)
        return answer.status, self.json_object(answer)

    def json_object(self, answer: Answer) -> dict[str, Any]:
        """The answer's JSON object; AuthFailed for a bare 401, BadResponse for anything else."""
        document = self.json_value(answer)
        if not isinstance(document, dict):
            raise BadResponse(
                f"{self.server} answered {answer.path} with JSON that is not an object"
            )
        return document

    def json_value(self, answer: Answer) -> Any:
        """The answer's JSON, whatever its shape; the same errors as ``json_object``."""
        status, raw, path = answer.status, answer.raw, answer.path
        if status == 401 and not raw.lstrip().startswith(b"{"):
            # A server-wide gate or a proxy answers a bare text 401.
            raise self.refusal(status, answer.challenge)
        if 300 <= status < 400:
            raise BadResponse(
                f"{self.server} answered {path} with a redirect (HTTP {status}); "
                f"is --api-url the {self.access.product} address?"
            )
        try:
            return json.loads(raw.decode("utf-8"))
        # ValueError covers JSONDecodeError and numbers too long to convert; RecursionError a
        # hostile, deeply nested document.
        except (ValueError, RecursionError):
            # NotFound for a 404 page: a route this server does not have (it is still a
            # bad_response to the user).
            failure = NotFound if status in (404, 405) else BadResponse
            raise failure(
                f"{self.server} answered {path} with {describe_body(raw, answer.content_type)}, "
                f"HTTP {status}; is a proxy in the way, or is this not a "
                f"{self.access.product} server?"
            ) from None

    # -- downloads ----------------------------------------------------------------------------

    @contextmanager
    def stream_get(
        self, path: str, *, params: Mapping[str, str] | None = None, shown: str | None = None
    ) -> Iterator[Iterator[bytes]]:
        """GET ``path`` (already percent-encoded), yielding its body in chunks.

        ``shown``: how messages name what is fetched (the server's own name for an image).
        """
        started = time.monotonic()
        status: int | None = None
        shown = shown or path
        try:
            with self._client.stream(
                "GET", path, params=params, headers=dict(self.access.headers)
            ) as response:
                status = response.status_code
                if status != 200:
                    detail = self._error_detail(response)
                    if status == 401:
                        raise self.refusal(status, response.headers.get("www-authenticate", ""))
                    failure = NotFound if status == 404 else BadResponse
                    raise failure(
                        f"{self.server} could not serve {shown_path(shown)} (HTTP {status}{detail})"
                    )
                yield self._iter_body(response, path)
        except httpx.HTTPError as exc:
            raise self._translate(exc, path) from None
        finally:
            self._note("GET", path, status, started)

    def _iter_body(self, response: httpx.Response, path: str) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(chunk_size=64 * 1024)
        except httpx.HTTPError as exc:
            raise self._translate(exc, path) from None

    def _error_detail(self, response: httpx.Response) -> str:
        try:
            raw = self._read_capped(response, 64 * 1024, "")
            error = json.loads(raw).get("error")
        except (ServerError, ValueError, RecursionError, AttributeError, httpx.HTTPError):
            return ""
        return f": {error}" if isinstance(error, str) else ""

    # -- WebSocket ----------------------------------------------------------------------------

    @contextmanager
    def websocket(
        self, path: str, *, params: Mapping[str, str] | None = None
    ) -> Iterator[WebSocket]:
        """Open ``path`` as a WebSocket (with our credentials, and no ``Origin`` header).

        Raises WebSocketRefused when the upgrade is answered with plain HTTP (a proxy without
        WebSocket support), so the caller can fall back to plain HTTP.
        """
        from httpx_ws import WebSocketUpgradeError, connect_ws

        target = path if not params else f"{path}?{urlencode(params)}"
        started = time.monotonic()
        try:
            with connect_ws(
                target,
                self._client,
                headers=dict(self.access.headers),
                max_message_size_bytes=WS_READ_CHUNK_BYTES,
                keepalive_ping_interval_seconds=None,
            ) as session:
                self._note("WS", path, 101, started)
                _wake_reader_on_close(session)
                yield WebSocket(session, self.server)
        except WebSocketUpgradeError as exc:
            status = exc.response.status_code
            self._note("WS", path, status, started)
            if status == 401:
                challenge = exc.response.headers.get("www-authenticate", "")
                raise self.refusal(status, challenge) from None
            raise WebSocketRefused(
                f"{self.server} refused the WebSocket upgrade (HTTP {status})"
            ) from None
        except httpx.HTTPError as exc:
            raise self._translate(exc, path) from None

    def refusal(self, status: int, challenge: str = "") -> AuthFailed:
        """Our credentials refused (HTTP 401 or 403): the sentence that names what to fix."""
        text = self.access.refused
        basic = challenge.strip().lower().startswith("basic")
        if status == 401 and basic and self.access.basic_challenge:
            text = self.access.basic_challenge
        return AuthFailed(f"{text} (HTTP {status})" if self.access.show_status else text)

    # -- helpers ------------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> httpx.Timeout:
        value = self.timeout if timeout is None else timeout
        connect = min(CONNECT_TIMEOUT, value)
        if math.isinf(value):
            # An HTTP generation answers only at the very end (protocol §4.4): no read limit.
            return httpx.Timeout(None, connect=connect)
        return httpx.Timeout(value, connect=connect)

    def _read_capped(self, response: httpx.Response, limit: int, path: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadResponse(
                f"{self.server} answered {path} with {int(declared)} bytes, more than the "
                f"{limit // (1024 * 1024)} MiB any real answer needs"
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise BadResponse(
                    f"{self.server} answered {path} with more than the "
                    f"{limit // (1024 * 1024)} MiB any real answer needs"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_hint(self) -> str:
        """What to check when the server cannot be reached: the same words on every route."""
        return (
            f"is {self.access.product} running at {self.server}? (set the address with --api-url)"
        )

    def _translate(self, exc: httpx.HTTPError, path: str) -> ServerError:
        if isinstance(exc, httpx.TimeoutException):
            if isinstance(exc, httpx.ConnectTimeout):
                return RequestTimeout(f"{self.server} timed out (connecting); {self._check_hint()}")
            return RequestTimeout(
                f"{self.server} timed out (waiting for {path}); --timeout sets how long to wait"
            )
        if isinstance(exc, httpx.ConnectError):
            return ConnectionFailed(self._cannot_connect(exc))
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return ConnectionFailed(
                f"{self.server} closed the connection during {path} ({_short_reason(exc)})"
            )
        if isinstance(exc, httpx.DecodingError):
            return BadResponse(f"{self.server} sent a body that cannot be decoded for {path}")
        return ConnectionFailed(f"{self.server}: {_short_reason(exc)} during {path}")

    def _cannot_connect(self, exc: httpx.ConnectError) -> str:
        text = str(exc)
        if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text.lower():
            # An https:// URL for a server that speaks plain HTTP (the default of both servers).
            plain = "http://" + self.server.split("://", 1)[-1]
            return (
                f"cannot connect to {self.server}: the server does not speak TLS (https); "
                f"if it is plain http, use --api-url {plain}"
            )
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return (
                f"cannot connect to {self.server}: its TLS certificate is not trusted "
                f"({_certificate_reason(text)}); check --api-url or the server's certificate"
            )
        return f"cannot connect to {self.server} ({_short_reason(exc)}); {self._check_hint()}"

    def _note(self, method: str, path: str, status: int | None, started: float) -> None:
        if self._log is not None:
            self._log(method, path, status, (time.monotonic() - started) * 1000)


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


def describe_body(raw: bytes, content_type: str = "") -> str:
    """What a body that is not protocol JSON looks like, for the one-line error message."""
    head = raw[:4096]
    if not raw.strip():
        return "an empty body"
    if b"<html" in head.lower() or b"<!doctype html" in head.lower():
        title = _TITLE.search(head)
        text = title.group(1).decode("utf-8", "replace").strip() if title else ""
        return f"an HTML page ({_excerpt(text)})" if text else "an HTML page"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes that are not text"
    if text.lstrip().startswith(("{", "[")) or "json" in content_type.lower():
        return "broken JSON (cut off or malformed)"
    return f"plain text ({_excerpt(text)})"


def shown_path(path: str, limit: int = 120) -> str:
    """A server path short enough for a one-line message."""
    return path if len(path) <= limit else path[: limit - 1] + "…"


def _excerpt(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _certificate_reason(text: str) -> str:
    match = re.search(r"certificate verify failed: ([^(]*)", text)
    return match.group(1).strip() if match else "verification failed"


def _short_reason(exc: BaseException) -> str:
    # Never an exception class name: users cannot act on `WebSocketNetworkError`.
    text = str(exc) or "connection lost"
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host"
    if "temporary failure in name resolution" in lowered:
        return "unknown host"
    if "reset" in lowered:
        return "connection reset"
    if "without sending complete message body" in lowered:
        # httpx adds the byte counts ("received 7 bytes, expected 610"): noise to a user.
        return "the answer was cut off"
    if "disconnected without sending a response" in lowered:
        return "no answer"
    text = text.splitlines()[0] if text else text
    return text[:200]


def _tolerate_unsolicited_pongs(session: Any, heard: Callable[[], None]) -> None:
    """Ignore Pong frames that answer no ping of ours.

    SwarmUI's web server (Kestrel, KeepAliveInterval) sends unsolicited, empty Pong frames
    every few seconds, which RFC 6455 §5.5.3 allows. httpx-ws looks every Pong up among its
    own pings and dies on the unknown one inside its reader thread, after which the socket
    never yields another message: any generation longer than the keep-alive interval would
    hang. We send no pings, so a tolerant lookup loses nothing.
    """
    manager = getattr(session, "_ping_manager", None)
    pings = getattr(manager, "_pings", None)
    if manager is None or not isinstance(pings, dict):
        return

    def ack(ping_id: bytes | bytearray) -> None:
        heard()
        event = pings.pop(bytes(ping_id), None)
        if event is not None:
            event.set()

    manager.ack = ack


def _wake_reader_on_close(session: Any) -> None:
    """Shut the socket down before httpx-ws closes it, so closing never waits on the server.

    httpx-ws sends our Close frame, then only closes the file descriptor, which leaves its
    reader thread blocked in recv() until the *server* hangs up; the interpreter joins that
    thread at exit. SwarmUI hangs up 2 s after ``socket_intention: close`` (protocol §4.5),
    so every `generate` would wait that out after leaving. shutdown() wakes the reader (and
    sends our FIN after the Close frame) at once.
    """
    import socket

    stream = getattr(session, "stream", None)
    close = getattr(stream, "close", None)
    raw = stream.get_extra_info("socket") if hasattr(stream, "get_extra_info") else None
    if close is None or not isinstance(raw, socket.socket):
        return

    def shut_then_close() -> None:
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)
        close()

    stream.close = shut_then_close


class Client:
    """Calls to one server over a Transport: each adapter's client adds its own routes."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @property
    def server(self) -> str:
        return self.transport.server

    def close(self) -> None:
        self.transport.close()


class WebSocketRefused(ServerError):
    """The WebSocket upgrade was answered with plain HTTP."""

    code = "connection_failed"


class WebSocket:
    """A thin, typed view of an open WebSocket: JSON objects in and out."""

    def __init__(self, session: Any, server: str) -> None:
        self._session = session
        self._server = server
        # When the server last showed life without a message (a keep-alive Pong).
        self.last_heard = 0.0
        _tolerate_unsolicited_pongs(session, self._heard)

    def _heard(self) -> None:
        self.last_heard = time.monotonic()

    def send(self, document: dict[str, Any]) -> None:
        from httpx_ws import HTTPXWSException

        try:
            self._session.send_text(json.dumps(document, separators=(",", ":")))
        except (HTTPXWSException, httpx.HTTPError, OSError) as exc:
            raise ConnectionFailed(
                f"{self._server} closed the WebSocket ({_short_reason(exc)})"
            ) from None

    def receive(
        self, timeout: float | None = None, *, skip_binary: bool = False
    ) -> dict[str, Any] | None:
        """Next JSON message, or None once the server has closed the socket.

        Raises RequestTimeout when nothing arrives within ``timeout`` seconds.
        ``skip_binary``: binary frames (ComfyUI's previews) are passed over, not an error.
        """
        import queue

        import wsproto.events
        from httpx_ws import HTTPXWSException, WebSocketDisconnect

        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                event = self._session.receive(timeout=left)
                if isinstance(event, wsproto.events.TextMessage):
                    text = event.data
                    break
                if not skip_binary:
                    raise BadResponse(f"{self._server} sent a binary WebSocket message")
        except WebSocketDisconnect:
            return None
        except queue.Empty:
            raise RequestTimeout(
                f"{self._server} sent nothing on the WebSocket for {timeout:g} s"
            ) from None
        except (HTTPXWSException, httpx.HTTPError, OSError) as exc:
            raise ConnectionFailed(
                f"{self._server} dropped the WebSocket mid-generation ({_short_reason(exc)})"
            ) from None
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            raise BadResponse(f"{self._server} sent a WebSocket message that is not JSON") from None
        if not isinstance(document, dict):
            raise BadResponse(f"{self._server} sent a WebSocket message that is not an object")
        return document
