"""The public handle: an emulated ComfyUI server on a loopback port, run in a daemon thread.

with ComfyEmulator(step_seconds=0.01) as emu:
    httpx.post(f"{emu.url}/prompt", json={"prompt": graph, "client_id": "c1"})
    emu.calls("/prompt")  # what the server received
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from asset_generator.emulator.comfy.config import ComfyConfig
from asset_generator.emulator.comfy.hub import ComfyServer
from asset_generator.emulator.comfy.routes import route_table
from asset_generator.emulator.comfy.web import ComfyHttp
from asset_generator.emulator.config import RecordedRequest
from asset_generator.emulator.lifecycle import ServedEmulator
from asset_generator.emulator.recorder import Recorder


class ComfyEmulator(ServedEmulator):
    """A ComfyUI server emulator. ``with ComfyEmulator(comfy_version="0.3.50") as emu: ...``."""

    product = "ComfyUI"

    def __init__(self, config: ComfyConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else ComfyConfig()
        self.config = dataclasses.replace(base, **overrides) if overrides else base
        self._server: ComfyServer | None = None
        super().__init__(Recorder(self.config.request_log), self.config.host)

    def _make_transport(self) -> ComfyHttp:
        self._server = ComfyServer(self.config)
        return ComfyHttp(self._server, self._recorder, route_table(self.config.version))

    async def _started(self) -> None:
        assert self._server is not None
        self._server.port = self.port  # what /system_stats reports in argv
        self._server.start()

    async def _shutdown(self) -> None:
        if self._server is not None:
            await self._server.shutdown()

    @property
    def server(self) -> ComfyServer:
        if self._server is None:
            raise RuntimeError("the ComfyUI emulator is not started")
        return self._server

    # -- what the server received -------------------------------------------------------------

    def calls(self, route: str) -> list[RecordedRequest]:
        """HTTP requests to ``route`` as the server registers it (``/prompt``, bare or /api)."""
        wanted = route if route.startswith("/") else "/" + route
        return [r for r in self._recorder.snapshot() if r.route == wanted and r.transport == "http"]

    def websocket_connects(self) -> list[RecordedRequest]:
        """Every accepted or refused ``/ws`` handshake."""
        return [r for r in self._recorder.snapshot() if r.transport == "ws" and r.method == "GET"]

    def websocket_messages(self, client_id: str | None = None) -> list[RecordedRequest]:
        """Text frames clients sent on ``/ws`` (all, or of one ``clientId``)."""
        return [
            r
            for r in self._recorder.snapshot()
            if r.method == "WS" and (client_id is None or r.session_id == client_id)
        ]

    # -- hooks --------------------------------------------------------------------------------

    def drop_websockets(self, client_id: str | None = None) -> int:
        """Cut every WebSocket (or those that connected as ``client_id``) without a Close
        frame, as a network failure would; return how many. Prompts keep running."""
        return self._call_in_loop(lambda: self.server.drop_sockets(client_id))

    def history(self) -> dict[str, Any]:
        """A copy of the history, keyed by prompt id."""
        return self._call_in_loop(lambda: self.server.prompt_queue.get_history())

    def queue(self) -> tuple[list[Any], list[Any]]:
        """(running, pending) queue items."""
        return self._call_in_loop(lambda: self.server.prompt_queue.get_current_queue())

    @property
    def output_dir(self) -> Path:
        return Path(self.server.folders.output)

    @property
    def input_dir(self) -> Path:
        return Path(self.server.folders.input)

    @property
    def temp_dir(self) -> Path:
        return Path(self.server.folders.temp)

    def saved_outputs(self) -> list[str]:
        """Files under the output folder, as ``subfolder/filename`` paths, sorted."""
        found = []
        for root, _dirs, files in os.walk(self.output_dir):
            for name in files:
                found.append(os.path.relpath(os.path.join(root, name), self.output_dir))
        return sorted(p.replace(os.sep, "/") for p in found)
