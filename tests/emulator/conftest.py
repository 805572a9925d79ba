"""Fixtures of the ComfyUI protocol tests: the server under test, emulator-only starts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from comfy_helpers import REAL_URL, Target

from asset_generator.emulator import ComfyEmulator


def comfy_params() -> list[Any]:
    return [
        pytest.param("emulator", id="emulator"),
        pytest.param(
            "real",
            id="real",
            marks=pytest.mark.skipif(
                not REAL_URL, reason="set ASSET_GENERATOR_TEST_COMFYUI_URL to a real ComfyUI"
            ),
        ),
    ]


@pytest.fixture(params=comfy_params())
def comfy(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Target]:
    """The server under test: a fresh emulator, or the real server named by the variable."""
    if request.param == "emulator":
        emulator = ComfyEmulator(base_dir=tmp_path / "comfy").start()
        target = Target(emulator.url, emulator, timeout=10.0, timing=1.0)
        try:
            yield target
        finally:
            target.cleanup()
            emulator.stop()
    else:
        target = Target(REAL_URL, None, timeout=300.0, timing=4.0, step=0.1)
        try:
            yield target
        finally:
            target.cleanup()


@pytest.fixture
def emulator_only(tmp_path: Any) -> Iterator[Callable[..., Target]]:
    """Start emulators with options (versions, previews, auth) for emulator-only tests."""
    started: list[tuple[ComfyEmulator, Target]] = []

    def start(**overrides: Any) -> Target:
        overrides.setdefault("base_dir", tmp_path / f"comfy{len(started)}")
        emulator = ComfyEmulator(**overrides).start()
        headers = {}
        if overrides.get("required_authorization"):
            headers["Authorization"] = overrides["required_authorization"]
        target = Target(emulator.url, emulator, timeout=10.0, timing=1.0, headers=headers)
        started.append((emulator, target))
        return target

    yield start
    for emulator, target in started:
        target.cleanup()
        emulator.stop()
