"""Server emulators for tests and offline tries: SwarmUI (``swarmui-protocol.md``) and
ComfyUI (``comfyui-protocol.md``, ``ComfyEmulator``).

    with Emulator(backends=2, step_seconds=0.01) as emu:
        httpx.post(f"{emu.url}/API/GetNewSession", json={})
        emu.calls("GetNewSession")  # what the server received

Or from a shell: ``python -m asset_generator.emulator --port 7801``.

``docs/emulator.md`` lists the options that rehearse awkward outcomes (model loads, backend
errors, silent endings, mini-grids, restarts) and what the emulator cannot do faithfully.

``EmulatorConfig`` and ``RecordedRequest`` are plain dataclasses; ``Emulator`` (which pulls in
h11 and wsproto) is imported on first use so that importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asset_generator.emulator.comfy.config import ComfyConfig
from asset_generator.emulator.config import EmulatorConfig, Fault, FaultPoint, RecordedRequest

if TYPE_CHECKING:
    from asset_generator.emulator.comfy.emulator import ComfyEmulator
    from asset_generator.emulator.emulator import Emulator

__all__ = [
    "ComfyConfig",
    "ComfyEmulator",
    "Emulator",
    "EmulatorConfig",
    "Fault",
    "FaultPoint",
    "RecordedRequest",
]


def __getattr__(name: str) -> Any:
    if name == "Emulator":
        from asset_generator.emulator.emulator import Emulator

        return Emulator
    if name == "ComfyEmulator":
        from asset_generator.emulator.comfy.emulator import ComfyEmulator

        return ComfyEmulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
