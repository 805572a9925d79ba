"""``/API/<route>`` dispatch in SwarmUI's exact order (``API.HandleAsyncRequest``, API.cs).

HTTP: method → content type → Content-Length → JSON object → session → route → WS-ness →
permission → route arguments → handler. WebSocket: the upgrade is accepted first, then the same
checks run on the first text message and every failure is one JSON message plus Close 1000.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

from asset_generator.emulator.config import RecordedRequest
from asset_generator.emulator.core import EmulatedServer
from asset_generator.emulator.httpmsg import (
    Answer,
    HttpRequest,
    api_error,
    error_obj,
    json_answer,
    redirect,
)
from asset_generator.emulator.params import UnreadableParamError, coerce_arg, token_text
from asset_generator.emulator.recorder import Recorder
from asset_generator.emulator.routes import (
    DISCONNECTED,
    SESSIONLESS,
    UNEMULATED_NAMES,
    CallContext,
    Route,
    log_api_error,
    routes_for,
)
from asset_generator.emulator.websocket import WebSocketChannel

INVALID_SESSION = error_obj(
    "Invalid session ID. You may need to refresh the page.", "invalid_session_id"
)
INTERNAL_ERROR = api_error("internal_error", "An internal error occurred")


def route_name(path: str) -> str:
    """The lower-cased text after ``/api/`` (no trailing-slash normalisation)."""
    lowered = path.lower()
    index = lowered.find("/api/")
    return lowered[index + len("/api/") :] if index >= 0 else lowered


def has_json_content_type(value: str | None) -> bool:
    """ASP.NET ``HasJsonContentType``: ``application/json`` or any ``*/*+json``."""
    if not value:
        return False
    media = value.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return bool(kind) and (media == "application/json" or subtype.endswith("+json"))


class _Refusal(Exception):
    """A transport-level refusal: the HTTP answer and the WebSocket message for it."""

    def __init__(self, status: int, http_body: dict[str, Any], ws_body: dict[str, Any]) -> None:
        super().__init__(http_body.get("error"))
        self.status = status
        self.http_body = http_body
        self.ws_body = ws_body


class ApiDispatcher:
    """Routes ``/API/...`` requests of one emulator."""

    def __init__(self, server: EmulatedServer, recorder: Recorder) -> None:
        self.server = server
        self.recorder = recorder
        self.routes = routes_for(server.config.serve_interrupt_generation)

    # -- HTTP -------------------------------------------------------------------------------

    async def handle_http(self, request: HttpRequest, record: RecordedRequest) -> Answer:
        """Answer one plain HTTP request to ``/API/...``."""
        if request.method != "POST":
            return redirect("/Error/NoGetAPI")
        if not has_json_content_type(request.header("content-type")):
            return _unread(json_answer(400, api_error("basic_api", "Wrong content type")))
        length = _content_length(request)
        if length is None or length <= 0 or length >= self.server.config.max_receive_bytes:
            return _unread(json_answer(400, api_error("basic_api", "bad content length")))
        assert request.read_body is not None
        raw = await request.read_body(length)
        document = _parse_object(raw.decode("utf-8", "replace"))
        if document is None:
            return json_answer(400, INTERNAL_ERROR)
        record.body = document
        try:
            route, session = self._locate(request, document, record, websocket=False)
            context = CallContext(self.server, request, session, _without_session(document))
            output = await self._call(route, context, document)
        except _Refusal as refusal:
            return json_answer(refusal.status, refusal.http_body)
        except UnreadableParamError:
            return json_answer(400, INTERNAL_ERROR)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            return json_answer(400, INTERNAL_ERROR)
        if output is None:
            return json_answer(400, api_error("no_result", "API call did not return any output"))
        return json_answer(200, output)

    # -- WebSocket --------------------------------------------------------------------------

    async def handle_ws(
        self, request: HttpRequest, channel: WebSocketChannel, record: RecordedRequest
    ) -> None:
        """Serve one upgraded ``/API/...`` WebSocket until it is closed."""
        try:
            text = await channel.receive(self.server.config.ws_first_message_timeout)
        except TimeoutError:
            # ReceiveJson's one-minute limit throws; the catch-all answers internal_error.
            self.recorder.finish(record, 101)
            channel.send(INTERNAL_ERROR)
            await channel.close()
            return
        if text is None:
            self.recorder.finish(record, 101)
            await channel.shutdown()
            if channel.vanished:
                # ReceiveJson met the end of the connection (API.cs's catch names it).
                log_api_error(self.server, request, None, DISCONNECTED)
            return
        document = _parse_object(text)
        record.body = document
        if document is None:
            self.recorder.finish(record, 101)
            channel.send(INTERNAL_ERROR)
            await channel.close()
            return
        session = None
        try:
            try:
                route, session = self._locate(request, document, record, websocket=True)
            finally:
                self.recorder.finish(record, 101)
            context = CallContext(
                self.server,
                request,
                session,
                _without_session(document),
                ws=channel,
                record_message=lambda message: self._record_extra(request, message),
            )
            output = await self._call(route, context, document)
        except _Refusal as refusal:
            output = refusal.ws_body
        except Exception:
            traceback.print_exc(file=sys.stderr)
            output = INTERNAL_ERROR
        if output is not None:
            channel.send(output)
        await channel.close()
        if channel.vanished and not channel.failure_logged:
            # CloseAsync waits for the peer's Close and meets the end of the connection
            # instead: ConnectionClosedPrematurely reaches API.cs's catch.
            log_api_error(self.server, request, session, DISCONNECTED)

    def _record_extra(self, request: HttpRequest, text: str) -> dict[str, Any] | None:
        document = _parse_object(text)
        record = self.new_record(request, "ws")
        record.body = document
        record.session_id = _session_id_of(request, document or {})
        self.recorder.add(record)
        self.recorder.finish(record, 101)
        return document

    def new_record(self, request: HttpRequest, transport: str) -> RecordedRequest:
        path = request.raw_path
        lowered = request.path.lower()
        is_api = lowered.startswith("/api/") or lowered == "/api"
        return RecordedRequest(
            method=request.method,
            path=path,
            route=route_name(request.path) if is_api else None,
            headers=request.header_map(),
            body=None,
            transport=transport,
            status=None,
            session_id=None,
            time=time.monotonic(),
        )

    # -- shared steps -----------------------------------------------------------------------

    def _locate(
        self,
        request: HttpRequest,
        document: dict[str, Any],
        record: RecordedRequest,
        websocket: bool,
    ) -> tuple[Route, Any]:
        """Session (before the route!), route, WS-ness and permission checks of API.cs."""
        name = route_name(request.path)
        session = None
        if name not in SESSIONLESS:
            session_id = _session_id_of(request, document)
            if session_id is None:
                missing = api_error("basic_api", "missing session id")
                raise _Refusal(400, missing, missing)
            record.session_id = session_id
            session = self.server.registry.find_session(session_id)
            if session is None:
                raise _Refusal(401, INVALID_SESSION, INVALID_SESSION)
        route = self.routes.get(name)
        if route is None:
            if name in UNEMULATED_NAMES:
                text = f"The SwarmUI emulator does not implement {UNEMULATED_NAMES[name]}."
                raise _Refusal(200, {"error": text}, {"error": text})
            raise _Refusal(
                400,
                api_error("bad_route", "Unknown API route"),
                error_obj("Unknown API route.", "bad_route"),
            )
        if route.websocket and not websocket:
            body = api_error("bad_request_method", "API route needs websocket, request is HTTP")
            raise _Refusal(400, body, body)
        if not route.websocket and websocket:
            body = api_error("bad_request_method", "API route needs HTTP, request is websocket")
            raise _Refusal(400, body, body)
        if (
            session is not None
            and route.permission is not None
            and not self.server.has_permission(session.user, route.permission)
        ):
            raise _Refusal(
                400,
                api_error("bad_permissions", "You lack permissions for this route."),
                error_obj("You lack permissions for this route.", "bad_permissions"),
            )
        return route, session

    async def _call(
        self, route: Route, context: CallContext, document: dict[str, Any]
    ) -> dict[str, Any] | None:
        args: dict[str, Any] = {}
        for arg in route.args:
            error, value = coerce_arg(arg, document)
            if error is not None:
                # Route-argument problems are handler output: HTTP 200 (APICallReflectBuilder).
                return {"error": error}
            args[arg.name] = value
        return await route.handler(context, args)


def _content_length(request: HttpRequest) -> int | None:
    value = request.header("content-length")
    if value is None or request.header("transfer-encoding") is not None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _unread(answer: Answer) -> Answer:
    # The body was never read, so this connection cannot carry another request.
    answer.close = True
    return answer


def _parse_object(text: str) -> dict[str, Any] | None:
    """``JObject.Parse``: a single JSON object, or None for anything else."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _session_id_of(request: HttpRequest, document: dict[str, Any]) -> str | None:
    """``session_id`` from the body (stringified), else the first ``X-Session-ID`` header."""
    if "session_id" in document:
        return token_text(document["session_id"])
    return request.header("x-session-id")


def _without_session(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key != "session_id"}
