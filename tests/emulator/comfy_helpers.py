"""One ComfyUI server under test (the emulator, or a real one) and raw HTTP/WS helpers.

The same test functions run against the project's emulator and, when
``ASSET_GENERATOR_TEST_COMFYUI_URL`` names a real ComfyUI (``comfyui-peer.md``), against that
server: the ``comfy`` fixture (``tests/conftest.py``) is parametrised over both and skips the
real one when the variable is unset. Tests that need an emulator-only hook use the
``emulator_only`` fixture or call ``comfy.require_emulator()``.

A real server is shared: every prompt a test submits is remembered, and when the test ends
the pending ones are deleted and the running one is interrupted by its id. Nothing here sends
a global interrupt or clears the queue of a real server.
"""

from __future__ import annotations

import contextlib
import json
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, connect_ws
from wsproto.events import BytesMessage, TextMessage

from asset_generator.emulator import ComfyEmulator


def slow_graph(
    steps: int = 2,
    step_seconds: float = 0.02,
    *,
    prefix: str | None = None,
    size: int = 16,
    rgb: tuple[float, float, float] = (1.0, 0.0, 0.0),
    **extra: Any,
) -> dict[str, Any]:
    """The cheap workflow both servers run: SlowSolidImage -> SaveImage."""
    inputs = {
        "steps": steps,
        "step_seconds": step_seconds,
        "width": size,
        "height": size,
        "red": rgb[0],
        "green": rgb[1],
        "blue": rgb[2],
        **extra,
    }
    return {
        "1": {"class_type": "SlowSolidImage", "inputs": inputs},
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": prefix or unique("t")},
        },
    }


def sd_graph(**changes: Any) -> dict[str, Any]:
    """The built-in text-to-image graph (protocol §10) with a LoRA, at 64×64."""
    graph: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "random-sd15.safetensors"}},
        "10": {"class_type": "LoraLoader",
               "inputs": {"lora_name": "random-lora.safetensors", "strength_model": 0.8,
                          "strength_clip": 0.8, "model": ["4", 0], "clip": ["4", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["10", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler",
              "inputs": {"seed": 42, "steps": 2, "cfg": 7.0, "sampler_name": "euler",
                         "scheduler": "normal", "denoise": 1.0, "model": ["10", 0],
                         "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage",
              "inputs": {"filename_prefix": unique("sd"), "images": ["8", 0]}},
    }  # fmt: skip
    for path, value in changes.items():
        node, name = path.split(".")
        graph[node]["inputs"][name] = value
    return graph


def unique(stem: str) -> str:
    """A file prefix no other run (or engineer) on a shared server uses."""
    return f"ag_{stem}_{uuid.uuid4().hex[:10]}"


@dataclass
class Frame:
    """One WebSocket message: JSON (``type``/``data``) or binary (``binary``)."""

    type: str
    data: Any = None
    binary: bytes | None = None
    at: float = 0.0

    @property
    def prompt_id(self) -> Any:
        return self.data.get("prompt_id") if isinstance(self.data, dict) else None


class Socket:
    """A client WebSocket whose messages a reader thread collects as they arrive."""

    def __init__(self, target: Target, client_id: str | None, feature_flags: bool = False):
        self.target = target
        self.client_id = client_id
        query = f"?clientId={client_id}" if client_id is not None else ""
        self._context = connect_ws(
            f"{target.url}/ws{query}", target.http, max_message_size_bytes=16 * 1024 * 1024
        )
        self.ws = self._context.__enter__()
        self.frames: list[Frame] = []
        self.closed = False
        self._stop = threading.Event()
        self._condition = threading.Condition()
        if feature_flags:
            self.ws.send_text(
                json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        greeting = self.wait_for(lambda f: f.type == "status")
        self.sid = greeting.data["sid"]

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                event = self.ws.receive(timeout=0.02)
            except queue.Empty:
                continue
            except (WebSocketDisconnect, Exception):
                break
            frame = None
            if isinstance(event, TextMessage):
                document = json.loads(event.data)
                frame = Frame(document["type"], document["data"], at=time.monotonic())
            elif isinstance(event, BytesMessage):
                data = bytes(event.data)
                (kind,) = struct.unpack(">I", data[:4])
                frame = Frame(f"binary:{kind}", binary=data, at=time.monotonic())
            if frame is not None:
                with self._condition:
                    self.frames.append(frame)
                    self._condition.notify_all()
        with self._condition:
            self.closed = True
            self._condition.notify_all()

    def wait_for(self, predicate: Callable[[Frame], bool], timeout: float | None = None) -> Frame:
        """The first collected message matching ``predicate``, waiting for it if needed."""
        deadline = time.monotonic() + (timeout or self.target.timeout)
        with self._condition:
            while True:
                for frame in self.frames:
                    if predicate(frame):
                        return frame
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    kinds = [(f.type, f.prompt_id) for f in self.frames]
                    raise AssertionError(f"no such message; got {kinds}")
                self._condition.wait(left)

    def wait_end(self, prompt_id: str, timeout: float | None = None) -> Frame:
        """The final ``executing`` with ``node: null`` of ``prompt_id``."""
        return self.wait_for(
            lambda f: (
                f.type == "executing" and f.data.get("node") is None and f.prompt_id == prompt_id
            ),
            timeout,
        )

    def wait_closed(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.target.timeout)
        with self._condition:
            while not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the socket is still open")
                self._condition.wait(left)

    def of(self, prompt_id: str) -> list[Frame]:
        with self._condition:
            return [f for f in self.frames if f.prompt_id == prompt_id]

    def snapshot(self) -> list[Frame]:
        with self._condition:
            return list(self.frames)

    def settle(self, seconds: float = 0.2) -> None:
        """Give messages already sent time to arrive (for "nothing else came" checks)."""
        time.sleep(seconds * self.target.timing)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self._context.__exit__(None, None, None)
        self._thread.join(5)


@dataclass
class Target:
    """The server under test and what a test needs to drive it."""

    url: str
    emulator: ComfyEmulator | None
    # Waits: generous on a shared real server, whose queue may hold others' prompts.
    timeout: float
    # Multiplier for sleeps that let a real server act (interrupt latency, GC pauses).
    timing: float
    # SlowSolidImage step_seconds for runs a test must catch while they run.
    step: float = 0.02
    headers: dict[str, str] = field(default_factory=dict)
    submitted: list[str] = field(default_factory=list)
    sockets: list[Socket] = field(default_factory=list)
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=30)

    @property
    def is_emulator(self) -> bool:
        return self.emulator is not None

    def require_emulator(self) -> ComfyEmulator:
        if self.emulator is None:
            pytest.skip("needs an emulator-only hook (or would disturb a shared server)")
        return self.emulator

    def socket(self, client_id: str | None = "auto", feature_flags: bool = False) -> Socket:
        if client_id == "auto":
            client_id = f"ag-test-{uuid.uuid4().hex[:12]}"
        sock = Socket(self, client_id, feature_flags)
        self.sockets.append(sock)
        return sock

    def post_prompt(self, graph: dict[str, Any], **body: Any) -> httpx.Response:
        """POST /prompt with our own uuid4 prompt id (unless the body names one)."""
        body.setdefault("prompt_id", str(uuid.uuid4()))
        if isinstance(body["prompt_id"], str):
            self.submitted.append(body["prompt_id"])
        answer = self.http.post("/prompt", json={"prompt": graph, **body})
        if answer.status_code == 200:
            self.submitted.append(answer.json()["prompt_id"])
        return answer

    def submit(self, graph: dict[str, Any], **body: Any) -> str:
        answer = self.post_prompt(graph, **body)
        assert answer.status_code == 200, answer.text
        return answer.json()["prompt_id"]

    def history(self, prompt_id: str) -> dict[str, Any]:
        return self.http.get(f"/history/{prompt_id}").json()

    def wait_history(self, prompt_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            found = self.history(prompt_id)
            if found:
                return found[prompt_id]
            time.sleep(0.02)
        raise AssertionError(f"{prompt_id} never reached the history")

    def queue_ids(self) -> tuple[list[str], list[str]]:
        queue = self.http.get("/queue").json()
        return (
            [item[1] for item in queue["queue_running"]],
            [item[1] for item in queue["queue_pending"]],
        )

    def wait_running(self, prompt_id: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if prompt_id in self.queue_ids()[0]:
                return
            time.sleep(0.01)
        raise AssertionError(f"{prompt_id} never started")

    def view(self, image: dict[str, str]) -> httpx.Response:
        return self.http.get("/view", params=image)

    def cleanup(self) -> None:
        """Delete our pending prompts, interrupt our running one (by id), wait for it."""
        for sock in self.sockets:
            sock.close()
        if not self.submitted:
            self.http.close()
            return
        ours = set(self.submitted)
        try:
            self.http.post("/queue", json={"delete": sorted(ours)})
            running, _ = self.queue_ids()
            for prompt_id in running:
                if prompt_id in ours:
                    self.http.post("/interrupt", json={"prompt_id": prompt_id})
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                running, pending = self.queue_ids()
                if not ours & set(running + pending):
                    break
                self.http.post("/queue", json={"delete": sorted(ours)})
                for prompt_id in set(running) & ours:
                    self.http.post("/interrupt", json={"prompt_id": prompt_id})
                time.sleep(0.05)
        finally:
            self.http.close()


def png_size_and_pixel(data: bytes) -> tuple[tuple[int, int], tuple[int, ...]]:
    """Size and top-left pixel of a PNG (decoded with Pillow, as any client would)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size, tuple(image.convert("RGB").getpixel((0, 0)))


def png_text_chunks(data: bytes) -> dict[str, str]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return dict(image.text)
