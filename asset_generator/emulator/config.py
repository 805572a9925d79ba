"""Configuration and record types of the SwarmUI emulator (stdlib only, cheap to import)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODELS = [
    "OfficialStableDiffusion/sd_xl_base_1.0.safetensors",
    "flux/flux1-dev.safetensors",
    "sd15/v1-5-pruned-emaonly.safetensors",
]
DEFAULT_LORAS = [
    "style/pixel-art.safetensors",
    "detail-tweaker.safetensors",
]


@dataclass
class FaultPoint:
    """What the server is about to answer; handed to ``EmulatorConfig.faults``.

    ``transport`` is ``"http"`` for an HTTP answer (``status``/``body`` are the answer about
    to be sent), ``"upgrade"`` for a WebSocket handshake about to be accepted (``status`` 101;
    a fault with a status or body answers that instead, as a proxy without WebSocket support
    does), or ``"ws"`` for one outgoing WebSocket message (``message`` is the JSON object,
    ``index`` counts messages already sent on that socket).
    """

    transport: str
    method: str
    path: str
    route: str | None
    headers: dict[str, str]
    request_body: Any
    status: int | None = None
    body: bytes | None = None
    message: dict[str, Any] | None = None
    index: int = 0
    # WS: the bytes of an outgoing binary message (ComfyUI previews); ``message`` is then None.
    data: bytes | None = None


@dataclass
class Fault:
    """A misbehaviour to inject at one FaultPoint. Every field is optional."""

    delay_seconds: float = 0.0
    # HTTP: replace the whole answer (status, headers and raw body bytes).
    status: int | None = None
    headers: list[tuple[str, str]] | None = None
    body: bytes | None = None
    # HTTP: announce the full Content-Length but send only this many body bytes, then close.
    truncate_to: int | None = None
    # HTTP: send the status line and headers, then nothing for this many seconds.
    stall_after_headers_seconds: float = 0.0
    # HTTP and WS: drop the TCP connection at this point without answering (no Close frame).
    reset: bool = False
    # WS: send this text instead of the message (a dict is sent as JSON).
    replace_message: dict[str, Any] | str | None = None
    # WS: send these bytes instead of a binary message.
    replace_data: bytes | None = None


FaultHook = Callable[[FaultPoint], Fault | None]


@dataclass
class EmulatorConfig:
    """Everything that shapes one emulated SwarmUI server."""

    host: str = "127.0.0.1"
    port: int = 0
    # Each T2I backend runs one task at a time; 0 → "No backends available!" after ~1 s.
    backends: int = 1
    step_seconds: float = 0.05
    default_steps: int = 20
    model_load_seconds: float = 0.0
    # The model every backend has loaded at start when model_load_seconds > 0 (else none, so
    # the first request of any model loads it); a request for another model triggers a load.
    loaded_model: str | None = None
    # The user setting MaxImagesInMiniGrid (Settings.cs; 1 = no grid): a request that made
    # 2..N real images also gets a grid of them, batch_index "-1" (T2IAPI.cs ~436).
    max_images_in_mini_grid: int = 1
    # The next tasks to run on a backend fail with these error texts, in order, one each
    # (a ComfyUI failure, say); the request's other running tasks then report
    # "Generation session interrupted." as SwarmUI's setError makes them (T2IAPI.cs ~263).
    task_errors: list[str] = field(default_factory=list)
    # The next N tasks to run on a backend end with no image and no error, as SwarmUI does
    # on a backend timeout to ComfyUI, a task exception it only logs, or an extension that
    # refuses every image (protocol §9.22).
    silent_task_failures: int = 0
    accounts: bool = False
    localhost_bypass: bool = False
    serve_interrupt_generation: bool = False
    required_authorization: str | None = None
    deny_permissions: set[str] = field(default_factory=set)
    latency_seconds: float = 0.0
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    loras: list[str] = field(default_factory=lambda: list(DEFAULT_LORAS))
    output_dir: str | Path | None = None
    request_log: str | Path | None = None
    # Keep session ids here so they survive an emulator restart, as SwarmUI's Users.ldb does.
    sessions_file: str | Path | None = None
    version: str = "0.9.8.2.GIT-emulator"
    # Real SwarmUI waits 2 s after socket_intention:close for more requests (T2IAPI.cs).
    ws_close_grace_seconds: float = 2.0
    # Real SwarmUI waits up to 1 minute for the first WebSocket message (API.cs).
    ws_first_message_timeout: float = 60.0
    # Unsolicited Pong frames, as Kestrel's KeepAliveInterval (WebServer.cs); 0 disables.
    ws_keepalive_seconds: float = 30.0
    # Network.MaxNetworkRequestMegabytes (200 MiB by default, Settings.cs).
    max_receive_bytes: int = 200 * 1024 * 1024
    # Pad every output PNG to about this size (benchmarks, multi-MB data: URLs); 0 = tiny.
    image_megabytes: float = 0.0
    # ComfyUI preview frames (gen_progress with "preview") after each step, unless the request
    # sets nopreviews.
    previews: bool = True
    # ASP.NET response compression: gzip JSON answers for clients sending Accept-Encoding.
    compression: bool = True
    # Real ComfyUI backends fail without a model ("No model input given..."); the emulator
    # uses the backend's current model instead unless this is set.
    require_model: bool = False
    # Called before every HTTP answer and every outgoing WebSocket message.
    faults: FaultHook | None = None


@dataclass
class RecordedRequest:
    """One request the emulator received (an HTTP request or one WebSocket text message)."""

    method: str
    path: str
    route: str | None
    headers: dict[str, str]
    body: Any  # the parsed JSON body (SwarmUI: an object, or None)
    transport: str
    status: int | None
    session_id: str | None
    time: float

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping (one line of ``request_log``)."""
        return {
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "headers": self.headers,
            "body": self.body,
            "transport": self.transport,
            "status": self.status,
            "session_id": self.session_id,
            "time": self.time,
        }
