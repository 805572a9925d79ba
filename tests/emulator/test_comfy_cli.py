"""``python -m asset_generator.emulator --kind comfyui``: the ComfyUI emulator from a shell."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from asset_generator.emulator.__main__ import build_parser


def test_comfy_options_parse_and_show_in_help() -> None:
    options = build_parser().parse_args(
        ["--kind", "comfyui", "--comfy-version", "0.3.50", "--checkpoint", "a.safetensors",
         "--checkpoint", "b.ckpt", "--preview-method", "latent2rgb", "--latency-seconds", "0.2",
         "--max-upload-size", "5", "--enable-cors-header"]
    )  # fmt: skip
    assert options.kind == "comfyui" and options.comfy_version == "0.3.50"
    assert options.checkpoint == ["a.safetensors", "b.ckpt"]
    assert options.enable_cors_header == "*"
    shown = subprocess.run(
        [sys.executable, "-m", "asset_generator.emulator", "--help"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    for flag in ("--kind", "--comfy-version", "--preview-method", "--latency-seconds",
                 "--checkpoint", "--base-dir", "--max-upload-size"):  # fmt: skip
        assert flag in shown


def test_swarm_only_options_are_refused_with_kind_comfyui() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asset_generator.emulator", "--kind", "comfyui", "--backends", "2"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--backends is an option of the SwarmUI emulator" in done.stderr


def test_serves_until_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "asset_generator.emulator", "--kind", "comfyui", "--port", "0",
         "--comfy-version", "0.3.50", "--base-dir", str(tmp_path)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        url = re.search(r"http://\S+", line)
        assert url, line
        stats = httpx.get(f"{url.group(0)}/system_stats", timeout=5).json()
        assert stats["system"]["comfyui_version"] == "0.3.50"
        assert (tmp_path / "input" / "example.png").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
