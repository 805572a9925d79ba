"""Typed ComfyUI calls: the only code that knows its routes and JSON shapes (comfyui-protocol.md).

ComfyUI's mutating routes answer 200 with an empty body whether or not they did anything
(protocol §5), an unknown GET is a bare 404 and an unknown POST a bare 405 (§1), and a body it
cannot parse is a plain-text 500 (§1): every answer is checked for its real shape here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from asset_generator import transport as base
from asset_generator.server.errors import (
    APIError,
    AuthFailed,
    BadResponse,
    NotFound,
    ServerError,
    WrongServer,
)
from asset_generator.transport import Answer, WebSocket

# How a long list of allowed values (a combo of every checkpoint, say) is shortened in messages.
MAX_CHOICES_SHOWN = 8
# How messages and -v show a path that holds one of our prompt ids (a handle, kept private).
HIDDEN_ID = "<prompt id>"


@dataclass(frozen=True)
class QueueItem:
    """One entry of ``GET /queue``: ``[number, prompt_id, prompt, extra_data, outputs]``."""

    number: float
    prompt_id: str
    client_id: str | None


@dataclass(frozen=True)
class Queue:
    running: tuple[QueueItem, ...]
    pending: tuple[QueueItem, ...]

    def state_of(self, prompt_id: str) -> str | None:
        """ "running", "pending", or None when the prompt is in neither list."""
        if any(item.prompt_id == prompt_id for item in self.running):
            return "running"
        if any(item.prompt_id == prompt_id for item in self.pending):
            return "pending"
        return None


@dataclass(frozen=True)
class OutputImage:
    """An image an output node wrote (``executed`` / history ``outputs``)."""

    filename: str
    subfolder: str
    type: str

    @property
    def shown(self) -> str:
        return f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename


@dataclass(frozen=True)
class HistoryEntry:
    """``GET /history/{id}`` of a finished prompt (protocol §6.2)."""

    status: str
    last_message: str | None
    last_data: dict[str, Any]
    outputs: dict[str, list[OutputImage]]


class WorkflowRejected(APIError):
    """``POST /prompt`` answered 400: the workflow failed validation (protocol §3.2)."""

    code = "server_error"


class NotQueued(ServerError):
    """``POST /prompt`` was answered, but not with 200: the prompt is not in the queue.

    Carries the error that says why, with its code and phrase.
    """

    def __init__(self, cause: ServerError) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.code = cause.code
        self.phrase = cause.phrase


class ComfyClient(base.Client):
    """Calls to one ComfyUI server over a Transport."""

    # -- plumbing -------------------------------------------------------------------------------

    def _get(
        self,
        path: str,
        params: dict[str, str] | None = None,
        *,
        shown: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        answer = self.transport.request("GET", path, params=params, shown=shown, timeout=timeout)
        self._refuse(answer)
        return self.transport.json_value(answer)

    def _post(self, path: str, body: Any, *, timeout: float | None = None) -> Answer:
        """A mutating POST: 200 with an empty body is its only success (protocol §1)."""
        answer = self.transport.request("POST", path, body=body, timeout=timeout)
        self._refuse(answer)
        if answer.status != 200:
            self._unexpected(answer)
        return answer

    def _refuse(self, answer: Answer) -> None:
        """A proxy's or ComfyUI-Login's refusal; ComfyUI itself checks no credentials (§9)."""
        if answer.status == 403 and answer.empty:
            # ComfyUI's own answer to an Origin header that is not its address (§9, pitfall
            # 27). We send none; a proxy in front that passes a browser's on may.
            raise AuthFailed(
                f"{self.server} refused {answer.path} with an empty 403, ComfyUI's answer to "
                "an Origin header that is not its own address: a proxy in front may be adding "
                "one (drop it there, or start ComfyUI with --enable-cors-header); a token "
                f"proxy answers so too: {self.transport.access.fix}"
            )
        if answer.status in (401, 403):
            raise self.transport.refusal(answer.status, answer.challenge)
        if 300 <= answer.status < 400:
            # ComfyUI never redirects a route; SwarmUI sends every GET that is not its own to
            # /Error/404 (swarmui-protocol §1.2), and a login proxy to its page.
            raise WrongServer(
                f"{self.server} answered {answer.path} with a redirect (HTTP {answer.status}), "
                "which ComfyUI never sends: is --api-url a ComfyUI address? (SwarmUI or a "
                "proxy's login page answers so)"
            )
        if answer.status == 413:
            raise BadResponse(
                f"{self.server} refused {answer.path}: the request is larger than the server "
                "accepts (HTTP 413; ComfyUI's --max-upload-size)"
            )

    def _unexpected(self, answer: Answer) -> None:
        if answer.status in (404, 405):
            raise NotFound(
                f"{self.server} has no {answer.path} (HTTP {answer.status}); is this a ComfyUI "
                "server?"
            )
        text = base.describe_body(answer.raw, answer.content_type)
        raise BadResponse(
            f"{self.server} answered {answer.path} with {text}, HTTP {answer.status}; is a "
            "proxy in the way, or is this not a ComfyUI server?"
        )

    # -- identity and status --------------------------------------------------------------------

    def system_stats(self) -> dict[str, Any]:
        """``GET /system_stats``: versions and devices; BadResponse if it is not ComfyUI's."""
        answer = self.transport.request("GET", "/system_stats")
        self._refuse(answer)
        if answer.status != 200:
            self._unexpected(answer)
        document = self.transport.json_value(answer)
        system = document.get("system") if isinstance(document, dict) else None
        if not isinstance(system, dict) or "comfyui_version" not in system:
            raise BadResponse(
                f"{self.server} answered /system_stats without a comfyui_version; is this a "
                "ComfyUI server?"
            )
        return document

    def queue(self, *, timeout: float | None = None) -> Queue:
        document = self._get("/queue", timeout=timeout)
        if not isinstance(document, dict):
            raise BadResponse(f"{self.server} answered /queue with JSON that is not an object")
        return Queue(_items(document.get("queue_running")), _items(document.get("queue_pending")))

    def history(self, prompt_id: str) -> HistoryEntry | None:
        """A finished prompt's entry; None for unknown, deleted, pending or running (§6.2)."""
        document = self._get(f"/history/{prompt_id}", shown=f"/history/{HIDDEN_ID}")
        if not isinstance(document, dict):
            raise BadResponse(f"{self.server} answered /history with JSON that is not an object")
        entry = document.get(prompt_id)
        if not isinstance(entry, dict):
            return None
        status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
        messages = status.get("messages") if isinstance(status.get("messages"), list) else []
        last = messages[-1] if messages else None
        last_type = (
            last[0] if isinstance(last, list) and last and isinstance(last[0], str) else None
        )
        last_data = last[1] if isinstance(last, list) and len(last) > 1 else {}
        outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
        return HistoryEntry(
            status=str(status.get("status_str") or ""),
            last_message=last_type,
            last_data=last_data if isinstance(last_data, dict) else {},
            outputs={str(k): images_of(v) for k, v in outputs.items()},
        )

    # -- work -----------------------------------------------------------------------------------

    def submit(self, graph: dict[str, Any], *, client_id: str, prompt_id: str) -> dict[str, Any]:
        """``POST /prompt``; the node errors of a partly valid prompt (200) are returned.

        Raises WorkflowRejected (HTTP 400) with every failing node named, and NotQueued for
        any other answer but 200: the server (or a proxy in front) refused the prompt, so it
        is not queued. Any other error (a timeout, a lost or broken answer) leaves open
        whether it was.
        """
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        answer = self.transport.request("POST", "/prompt", body=body)
        try:
            return self._submitted(answer, graph)
        except WorkflowRejected:
            raise
        except ServerError as exc:
            if answer.status == 200:
                raise
            raise NotQueued(exc) from None

    def _submitted(self, answer: Answer, graph: dict[str, Any]) -> dict[str, Any]:
        self._refuse(answer)
        if answer.status == 400:
            document = self._json_or_none(answer)
            raise WorkflowRejected(
                f"{self.server} refused the workflow: {rejection_text(document, graph)}",
                status=400,
                text=rejection_text(document, graph),
            )
        if answer.status != 200:
            self._unexpected(answer)
        document = self.transport.json_object(answer)
        errors = document.get("node_errors")
        return errors if isinstance(errors, dict) else {}

    def delete(self, prompt_ids: list[str], *, timeout: float | None = None) -> None:
        """``POST /queue {"delete": […]}``: removes pending prompts only (§5.2)."""
        if prompt_ids:
            self._post("/queue", {"delete": list(prompt_ids)}, timeout=timeout)

    def clear(self, *, timeout: float | None = None) -> None:
        """``POST /queue {"clear": true}``: every pending prompt, anyone's (§5.2)."""
        self._post("/queue", {"clear": True}, timeout=timeout)

    def interrupt(self, prompt_id: str | None, *, timeout: float | None = None) -> None:
        """``POST /interrupt``: targeted with a prompt id (≥ 0.3.57), global with None (§5.1)."""
        if prompt_id == "":
            # ComfyUI reads {"prompt_id": ""} as a global interrupt (§11.5): it would stop
            # whatever runs, anyone's.
            raise ValueError("an empty prompt id would interrupt every client's prompt")
        body = {} if prompt_id is None else {"prompt_id": prompt_id}
        self._post("/interrupt", body, timeout=timeout)

    def cancel_job(self, prompt_id: str, *, timeout: float | None = None) -> bool | None:
        """``POST /api/jobs/{id}/cancel`` (newer servers, §6.6): None where it does not exist."""
        answer = self.transport.request(
            "POST",
            f"/api/jobs/{prompt_id}/cancel",
            body={},
            timeout=timeout,
            shown=f"/api/jobs/{HIDDEN_ID}/cancel",
        )
        self._refuse(answer)
        if answer.status in (404, 405) and not answer.raw.lstrip().startswith(b"{"):
            return None
        if answer.status != 200:
            if answer.status == 404:
                return False
            self._unexpected(answer)
        document = self.transport.json_value(answer)
        return bool(document.get("cancelled")) if isinstance(document, dict) else None

    # -- outputs and models -----------------------------------------------------------------------

    @contextmanager
    def view(self, image: OutputImage) -> Iterator[Iterator[bytes]]:
        """``GET /view``: the exact filename, subfolder and type (§7.2)."""
        params = {"filename": image.filename, "subfolder": image.subfolder, "type": image.type}
        with self.transport.stream_get("/view", params=params, shown=image.shown) as chunks:
            yield chunks

    def model_folders(self) -> list[str]:
        document = self._get("/models")
        if not isinstance(document, list):
            raise BadResponse(f"{self.server} answered /models with JSON that is not a list")
        return [str(name) for name in document]

    def models(self, folder: str) -> list[str]:
        """``GET /models/{folder}``; NotFound for a folder the server does not have."""
        answer = self.transport.request("GET", f"/models/{folder}")
        self._refuse(answer)
        if answer.status == 404:
            raise NotFound(f"{self.server} has no model folder {folder!r}")
        document = self.transport.json_value(answer)
        if not isinstance(document, list):
            raise BadResponse(f"{self.server} answered /models/{folder} with something odd")
        return [str(name) for name in document]

    def object_info(self, class_type: str | None = None) -> dict[str, Any]:
        document = self._get(f"/object_info/{class_type}" if class_type else "/object_info")
        if not isinstance(document, dict):
            raise BadResponse(f"{self.server} answered /object_info with something odd")
        return document

    @contextmanager
    def websocket(self, client_id: str) -> Iterator[WebSocket]:
        """``/ws?clientId=`` (opened before ``POST /prompt``: events can come first, §4.3)."""
        with self.transport.websocket("/ws", params={"clientId": client_id}) as socket:
            yield socket

    @staticmethod
    def _json_or_none(answer: Answer) -> Any:
        import json

        try:
            return json.loads(answer.raw.decode("utf-8"))
        except (ValueError, RecursionError):
            return None


def _items(value: Any) -> tuple[QueueItem, ...]:
    items = []
    for raw in value if isinstance(value, list) else []:
        if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[1], str):
            continue
        number = raw[0] if isinstance(raw[0], int | float) else 0
        extra = raw[3] if len(raw) > 3 and isinstance(raw[3], dict) else {}
        client = extra.get("client_id")
        items.append(QueueItem(float(number), raw[1], client if isinstance(client, str) else None))
    # The pending list is the raw heap, not sorted (protocol §3.3).
    return tuple(sorted(items, key=lambda item: item.number))


def images_of(output: Any) -> list[OutputImage]:
    """The images of one node's output (``{"images": [{filename, subfolder, type}]}``)."""
    images = output.get("images") if isinstance(output, dict) else None
    found = []
    for item in images if isinstance(images, list) else []:
        if isinstance(item, dict) and isinstance(item.get("filename"), str):
            found.append(
                OutputImage(
                    item["filename"],
                    str(item.get("subfolder") or ""),
                    str(item.get("type") or "output"),
                )
            )
    return found


def rejection_text(document: Any, graph: dict[str, Any]) -> str:
    """A 400 from ``POST /prompt`` as one line: each failing node, its class, input, reason."""
    if not isinstance(document, dict):
        return "HTTP 400 without ComfyUI's error document"
    error = document.get("error") if isinstance(document.get("error"), dict) else {}
    node_errors = (
        document.get("node_errors") if isinstance(document.get("node_errors"), dict) else {}
    )
    parts = []
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        class_type = entry.get("class_type") or graph.get(node_id, {}).get("class_type") or "?"
        reasons = []
        for reason in entry.get("errors") or []:
            if isinstance(reason, dict):
                reasons.append(_reason_text(reason))
        parts.append(f"node {node_id} ({class_type}): {'; '.join(reasons) or 'invalid'}")
    if parts:
        return ", ".join(parts)
    message = error.get("message") or error.get("type") or "invalid prompt"
    details = error.get("details")
    return f"{message}" + (f" ({details})" if details else "")


def _reason_text(reason: dict[str, Any]) -> str:
    extra = reason.get("extra_info") if isinstance(reason.get("extra_info"), dict) else {}
    name = extra.get("input_name")
    message = str(reason.get("message") or reason.get("type") or "invalid")
    config = extra.get("input_config")
    if reason.get("type") == "value_not_in_list":
        choices = (
            config[0]
            if isinstance(config, list) and config and isinstance(config[0], list)
            else None
        )
        got = extra.get("received_value")
        if choices is not None:
            shown = ", ".join(str(c) for c in choices[:MAX_CHOICES_SHOWN])
            more = (
                f" and {len(choices) - MAX_CHOICES_SHOWN} more"
                if len(choices) > MAX_CHOICES_SHOWN
                else ""
            )
            allowed = f"allowed: {shown}{more}" if choices else "the server has none"
            return f"{name}: {got!r} is not one of its values ({allowed})"
        details = str(reason.get("details") or "")
        # Over 20 values the server sends no list, only "… not in (list of length 42)".
        length = re.search(r"\(list of length (\d+)\)", details)
        if length and "received_value" in extra:
            return f"{name}: {got!r} is not one of its {length.group(1)} values"
        return f"{name}: {details or message}"
    details = reason.get("details")
    text = (
        message if not details or details in message or details == name else f"{message}: {details}"
    )
    return f"{name}: {text}" if name and not text.startswith(str(name)) else text
