"""Typed SwarmUI calls: the only code that knows route names and JSON shapes.

Every answer is checked for an ``error`` key whatever its HTTP status, because SwarmUI
reports handler failures as HTTP 200 (swarmui-protocol.md §1.5).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from asset_generator.swarm.errors import (
    APIError,
    AuthFailed,
    BadResponse,
    InvalidSession,
    NotFound,
    PermissionDenied,
    SessionFailed,
    SwarmError,
    UnknownRoute,
    UnrecognisedRoute,
)
from asset_generator.swarm.http import Client, WebSocket, shown_path

INTERRUPTED_TEXT = "Generation session interrupted."


@dataclass(frozen=True)
class SessionInfo:
    """What ``GetNewSession`` tells us (protocol §3.1)."""

    session_id: str
    user_id: str | None
    version: str | None
    server_id: str | None
    permissions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Counters:
    """A session's four generation counters (protocol §6.1)."""

    waiting_gens: int = 0
    loading_models: int = 0
    waiting_backends: int = 0
    live_gens: int = 0

    @property
    def busy(self) -> bool:
        """The session still has a request: its own claim (T2IAPI.cs:257) is ``waiting_gens``.

        ``loading_models`` is not ours: a model load claims every session waiting for the
        model and keeps the claim until the load ends, even on an interrupted session
        (BackendHandler.cs ~1362; protocol §5.2).
        """
        return self.waiting_gens > 0

    @property
    def live(self) -> bool:
        return self.live_gens > 0

    @classmethod
    def from_json(cls, data: Any) -> Counters:
        if not isinstance(data, dict):
            return cls()
        return cls(*(_int(data.get(name)) for name in cls.__dataclass_fields__))


@dataclass(frozen=True)
class CurrentStatus:
    """``GetCurrentStatus`` for one session, or a WebSocket ``status`` message."""

    counters: Counters
    backend_status: dict[str, Any] = field(default_factory=dict)
    supported_features: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CurrentStatus:
        backend = data.get("backend_status")
        features = data.get("supported_features")
        return cls(
            Counters.from_json(data.get("status")),
            backend if isinstance(backend, dict) else {},
            tuple(str(f) for f in features) if isinstance(features, list) else (),
        )


@dataclass(frozen=True)
class Backend:
    """One entry of ``ListBackends`` (protocol §6.3); settings are left out on purpose."""

    id: str
    type: str
    title: str
    status: str
    enabled: bool
    current_model: str | None = None
    time_since_used: str | None = None

    @classmethod
    def from_json(cls, key: str, data: Any) -> Backend:
        data = data if isinstance(data, dict) else {}
        return cls(
            id=str(data.get("id", key)),
            type=str(data.get("type") or ""),
            title=str(data.get("title") or ""),
            status=str(data.get("status") or "unknown"),
            enabled=data.get("enabled") is not False,
            current_model=_str_or_none(data.get("current_model")),
            time_since_used=_str_or_none(data.get("time_since_used")),
        )


@dataclass(frozen=True)
class Model:
    """One model object of ``ListModels`` (protocol §7.1); ``raw`` is the server's object."""

    name: str
    title: str | None
    architecture: str | None
    resolution: str | None
    loaded: bool
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Model:
        return cls(
            name=str(data.get("name") or ""),
            title=_str_or_none(data.get("title")),
            architecture=_str_or_none(data.get("architecture")),
            resolution=_str_or_none(data.get("resolution")),
            loaded=data.get("loaded") is True,
            raw=data,
        )


@dataclass(frozen=True)
class ModelListing:
    """A ``ListModels`` answer: sub-folders and model files."""

    folders: tuple[str, ...]
    models: tuple[Model, ...]


# -- generation events (protocol §4.5) ----------------------------------------------------------


@dataclass(frozen=True)
class StatusEvent:
    status: CurrentStatus


@dataclass(frozen=True)
class ProgressEvent:
    batch_index: int
    request_id: str
    overall: float
    current: float


@dataclass(frozen=True)
class ImageEvent:
    image: str
    batch_index: int
    request_id: str
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class ErrorEvent:
    text: str
    error_id: str | None

    @property
    def interrupted(self) -> bool:
        return self.text.strip() == INTERRUPTED_TEXT


@dataclass(frozen=True)
class DiscardEvent:
    indices: tuple[int, ...]


GenerationEvent = StatusEvent | ProgressEvent | ImageEvent | ErrorEvent | DiscardEvent


def parse_event(message: dict[str, Any]) -> GenerationEvent | None:
    """Classify one WebSocket message by its keys; unknown kinds (extensions) are None."""
    # A null "error" (a serializer that writes every field) is no error, as in check_answer.
    if message.get("error") is not None:
        return ErrorEvent(error_text(message.get("error")), _str_or_none(message.get("error_id")))
    if "image" in message and isinstance(message["image"], str):
        return ImageEvent(
            message["image"],
            _int(message.get("batch_index")),
            str(message.get("request_id", "")),
            _metadata(message.get("metadata")),
        )
    if "gen_progress" in message and isinstance(message["gen_progress"], dict):
        progress = message["gen_progress"]
        return ProgressEvent(
            _int(progress.get("batch_index")),
            str(progress.get("request_id", "")),
            _float(progress.get("overall_percent")),
            _float(progress.get("current_percent")),
        )
    if "status" in message and isinstance(message["status"], dict):
        return StatusEvent(CurrentStatus.from_json(message))
    if "discard_indices" in message and isinstance(message["discard_indices"], list):
        return DiscardEvent(tuple(_int(i) for i in message["discard_indices"]))
    return None


def error_text(value: Any) -> str:
    """The server's ``error`` value as text; it is a string on every real server."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _metadata(raw: Any) -> dict[str, Any] | None:
    # The metadata is a JSON *string*, and the docs say it is "not guaranteed" to be JSON.
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw:
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _int(value: Any) -> int:
    # batch_index is usually a string but preview frames may carry an int (protocol §4.5).
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class SwarmClient(Client):
    """Calls to one SwarmUI server over a Transport."""

    # -- plumbing -----------------------------------------------------------------------------

    def call(
        self,
        route: str,
        session_id: str | None,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """POST a route and return its JSON, raising a typed error for any ``error`` answer."""
        payload = dict(body or {})
        if session_id is not None:
            payload["session_id"] = session_id
        status, document = self.transport.post_json(route, payload, timeout=timeout)
        check_answer(document, status, route, self.server)
        if status != 200:
            raise BadResponse(f"{self.server} answered {route} with HTTP {status}")
        return document

    # -- sessions -----------------------------------------------------------------------------

    def _credentials_refused(self, text: str) -> str:
        if self.transport.credentials.api_key:
            return (
                f"{self.server} did not accept our credentials ({text}); "
                "set --api-key to a valid swarm_token"
            )
        # An Authorization header (for a proxy) is not a SwarmUI login.
        sent = (
            "no login token was"
            if self.transport.credentials.auth_header
            else "no credentials were"
        )
        return (
            f"{self.server} requires a login ({text}) and {sent} sent; "
            "pass a swarm_token with --api-key or ASSET_GENERATOR_API_KEY"
        )

    def new_session(self) -> SessionInfo:
        """``GetNewSession``; any failure is wrapped in SessionFailed."""
        try:
            document = self.call("GetNewSession", None, {})
        except APIError as exc:
            if exc.text.strip().rstrip(".").lower() == "invalid or unauthorized":
                cause: SwarmError = AuthFailed(self._credentials_refused(exc.text.strip()))
                raise SessionFailed(cause) from None
            raise SessionFailed(exc) from None
        except SwarmError as exc:
            raise SessionFailed(exc) from None
        session_id = document.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise SessionFailed(
                BadResponse(f"{self.server} answered GetNewSession without a session id")
            )
        permissions = document.get("permissions")
        return SessionInfo(
            session_id=session_id,
            user_id=_str_or_none(document.get("user_id")),
            version=_str_or_none(document.get("version")),
            server_id=_str_or_none(document.get("server_id")),
            permissions=tuple(permissions) if isinstance(permissions, list) else (),
        )

    # -- status and control -------------------------------------------------------------------

    def current_status(self, session_id: str) -> CurrentStatus:
        return CurrentStatus.from_json(self.call("GetCurrentStatus", session_id))

    def interrupt_all(
        self, session_id: str, *, other_sessions: bool, timeout: float | None = None
    ) -> None:
        """``InterruptAll``: this session, or every session of the same user (protocol §5.1).

        It always answers success, whether or not anything was running.
        """
        body = {"other_sessions": other_sessions}
        self.call("InterruptAll", session_id, body, timeout=timeout)

    def interrupt_generation(self, session_id: str) -> None:
        """``InterruptGeneration``, which real SwarmUI lacks (raises UnknownRoute there).

        Only ``{"success": true}`` is believed. Any other JSON answer (an ``error`` with HTTP
        200, an odd shape) raises UnrecognisedRoute, an UnknownRoute, so callers fall back to
        ``InterruptAll`` and remember it. An unknown session still raises InvalidSession, and
        a non-JSON page (a proxy's 502) BadResponse: that is trouble on the way, not the
        route's answer, and must not be remembered.
        """
        route = "InterruptGeneration"
        try:
            document = self.call(route, session_id)
        except (InvalidSession, UnknownRoute):
            raise
        except APIError as exc:
            raise UnrecognisedRoute(exc.message, exc.error_id, exc.status, exc.text) from None
        if document.get("success") is not True:
            raise UnrecognisedRoute(
                f"{route} on {self.server} answered without success: "
                f"{json.dumps(document, default=str)[:200]}"
            )

    def list_backends(self, session_id: str) -> dict[str, Any]:
        return self.call("ListBackends", session_id, {"nonreal": False, "full_data": True})

    def list_models(
        self, session_id: str, *, subtype: str, path: str = "", depth: int = 20
    ) -> dict[str, Any]:
        body = {"path": path, "depth": depth, "subtype": subtype, "dataImages": False}
        return self.call("ListModels", session_id, body)

    def backends(self, session_id: str) -> list[Backend]:
        """``ListBackends`` as typed entries, ordered by id (power users; else PermissionDenied)."""
        document = self.list_backends(session_id)
        entries = [Backend.from_json(key, value) for key, value in document.items()]
        return sorted(entries, key=lambda b: (len(b.id), b.id))

    def models(
        self, session_id: str, *, subtype: str, path: str = "", depth: int = 20
    ) -> ModelListing:
        """``ListModels`` as a typed listing; model names keep their extension (protocol §7)."""
        document = self.list_models(session_id, subtype=subtype, path=path, depth=depth)
        folders = document.get("folders")
        files = document.get("files")
        if not isinstance(files, list):
            raise BadResponse(f"{self.server} answered ListModels without a file list")
        return ModelListing(
            tuple(str(f) for f in folders) if isinstance(folders, list) else (),
            tuple(Model.from_json(f) for f in files if isinstance(f, dict)),
        )

    # -- generation ---------------------------------------------------------------------------

    @contextmanager
    def generation_socket(self, session_id: str, params: dict[str, Any]) -> Iterator[WebSocket]:
        """Open ``GenerateText2ImageWS`` and send the request; yields the open socket."""
        with self.transport.websocket("GenerateText2ImageWS") as socket:
            socket.send({**params, "session_id": session_id})
            yield socket

    @contextmanager
    def open_image(self, server_path: str) -> Iterator[Iterator[bytes]]:
        """Stream an output by the path the server gave (``View/...``), correctly encoded.

        A path that climbs with ``..`` or carries control characters is refused before any
        request: no real server sends one, and it must not steer the request elsewhere.
        """
        segments = server_path.replace("\\", "/").split("/")
        if ".." in segments or any(ord(c) < 32 or ord(c) == 127 for c in server_path):
            raise BadResponse(
                f"{self.server} sent an unsafe image path ({shown_path(server_path)!r}); "
                "refusing to fetch it"
            )
        with ExitStack() as stack:
            try:
                chunks = stack.enter_context(self.transport.stream_get(server_path))
            except NotFound:
                # SwarmUI's /View decodes the (already decoded) path once more
                # (Uri.UnescapeDataString in WebServer.cs), so a file whose name holds a `%`
                # (prompts end up in names) is found only when encoded twice. Servers that
                # decode once are served by the first try.
                if "%" not in server_path:
                    raise
                chunks = stack.enter_context(
                    self.transport.stream_get(server_path, quoted_twice=True)
                )
            yield chunks

    def generate_http(
        self, session_id: str, params: dict[str, Any], *, timeout: float | None
    ) -> list[str]:
        """``GenerateText2Image``: one answer at the very end (protocol §4.4)."""
        document = self.call("GenerateText2Image", session_id, params, timeout=timeout)
        images = document.get("images")
        if not isinstance(images, list):
            raise BadResponse(f"{self.server} answered GenerateText2Image without an image list")
        return [str(image) for image in images]


def check_answer(document: dict[str, Any], status: int, route: str, server: str) -> None:
    """Raise the typed error a JSON answer carries, if any (HTTP 200 included)."""
    error = document.get("error")
    if error is None:
        return
    error_id = _str_or_none(document.get("error_id"))
    text = error_text(error)
    message = f"{route} on {server}: {text}"
    if error_id == "invalid_session_id":
        raise InvalidSession(message, error_id, status, text)
    if error_id == "bad_route":
        raise UnknownRoute(message, error_id, status, text)
    if error_id == "bad_permissions":
        raise PermissionDenied(message, error_id, status, text)
    raise APIError(message, error_id, status, text)
