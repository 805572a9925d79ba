"""Configuration of the ComfyUI emulator (stdlib only, cheap to import)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from asset_generator.emulator.config import FaultHook

DEFAULT_CHECKPOINTS = [
    "sd15/v1-5-pruned-emaonly.safetensors",
    "random-sd15.safetensors",
]
DEFAULT_LORAS = [
    "sub/fake_lora.safetensors",
    "random-lora.safetensors",
]
DEFAULT_COMFY_VERSION = "0.3.64"

# Versions at which the emulator changes behaviour (docs/emulator.md says where each comes from).
# Targeted interrupts: POST /interrupt {"prompt_id": P} only stops P (protocol §5.1).
TARGETED_INTERRUPT_VERSION = (0, 3, 57)
# GET /api/jobs and /api/jobs/{id}, extra_data.create_time, secrets kept out of GET /queue:
# seen in a ComfyUI copy that reports 0.15.0 (the routes came with Comfy-Org/ComfyUI#11054,
# opened 2025-12-02; the first release that has them is not known, 0.15.0 is one that does).
JOBS_READ_VERSION = (0, 15, 0)
# POST /api/jobs/{id}/cancel and /api/jobs/cancel (Comfy-Org/ComfyUI#14493, opened 2026-06-16):
# seen in a copy that reports 0.28.1; 0.15.0 does not have them.
JOBS_CANCEL_VERSION = (0, 28, 1)


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.3.64"`` → ``(0, 3, 64)``; anything after the leading numbers is ignored."""
    numbers = re.findall(r"\d+", text.split("+", 1)[0].split("-", 1)[0])
    return tuple(int(n) for n in numbers[:3]) or (0,)


@dataclass
class ComfyConfig:
    """Everything that shapes one emulated ComfyUI server."""

    host: str = "127.0.0.1"
    port: int = 0
    # What GET /system_stats reports as system.comfyui_version; older and newer versions
    # switch the behaviours above.
    comfy_version: str = DEFAULT_COMFY_VERSION
    # Time per sampling step of KSampler / KSamplerAdvanced (SlowSolidImage takes its own).
    step_seconds: float = 0.01
    # Model files the loaders offer (GET /models/{folder} and the combo lists).
    checkpoints: list[str] = field(default_factory=lambda: list(DEFAULT_CHECKPOINTS))
    loras: list[str] = field(default_factory=lambda: list(DEFAULT_LORAS))
    vaes: list[str] = field(default_factory=list)
    upscale_models: list[str] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    # None: the lists captured from the real server (object_info.json).
    samplers: list[str] | None = None
    schedulers: list[str] | None = None
    # --preview-method: "none" (ComfyUI's default: KSampler sends no binary previews) or
    # "auto" / "latent2rgb" / "taesd" (a JPEG preview per step).
    preview_method: str = "none"
    # Where outputs, uploads and temp files go; None: a private temporary directory that is
    # removed on stop.
    base_dir: str | Path | None = None
    # --max-upload-size in MB: every request body above it gets 413.
    max_upload_mb: float = 100
    # Answer 401 unless the Authorization header equals this (a token proxy, ComfyUI-Login).
    required_authorization: str | None = None
    # Delay before every HTTP answer and the WebSocket handshake.
    latency_seconds: float = 0.0
    # Append each request as a JSON line here.
    request_log: str | Path | None = None
    # Called before every HTTP answer and every outgoing WebSocket message.
    faults: FaultHook | None = None
    # --enable-cors-header: None keeps ComfyUI's default origin check (403 for a foreign
    # Origin on a loopback Host); a value answers every request with CORS headers instead.
    cors_origin: str | None = None

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(self.comfy_version)

    @property
    def max_upload_bytes(self) -> int:
        return round(self.max_upload_mb * 1024 * 1024)
