"""The state of one emulated ComfyUI server and its WebSocket fan-out (``PromptServer``).

``sockets`` maps a client id to its WebSocket exactly as ``server.py`` does, bugs included:
a second socket with the same ``clientId`` replaces the first, and when the first one closes
its clean-up removes the second one's entry, which then hears nothing at all (protocol §4.5).
Messages are addressed as the real server addresses them: to one ``sid``, or to every socket
when the prompt has no ``client_id`` (``sid`` None).
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
from typing import Any

from asset_generator.emulator.comfy.catalog import Catalog
from asset_generator.emulator.comfy.config import ComfyConfig
from asset_generator.emulator.comfy.execution import (
    Interrupt,
    PromptExecutor,
    PromptQueue,
    prompt_worker,
)
from asset_generator.emulator.comfy.files import Folders
from asset_generator.emulator.comfy.nodes import Preview, encode_preview
from asset_generator.emulator.comfy.validation import Validator
from asset_generator.emulator.websocket import WebSocketChannel

# protocol.py BinaryEventTypes.
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4


class ComfyServer:
    """Queue, history, executor, sockets: everything behind the routes."""

    def __init__(self, config: ComfyConfig) -> None:
        self.config = config
        self.folders = Folders(config.base_dir)
        self.catalog = Catalog(config, self.folders.input_images)
        self.validator = Validator(self.catalog, self.folders)
        self.sockets: dict[str, WebSocketChannel] = {}
        # Every open socket, also those a newer one with the same clientId replaced.
        self.channels: dict[WebSocketChannel, str] = {}
        self.sockets_metadata: dict[str, dict[str, Any]] = {}
        # The client of the prompt being (or last) executed, as PromptServer.client_id.
        self.client_id: Any = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.number = 0
        self.port = config.port  # the bound port, once listening
        self.interrupt = Interrupt()
        self.prompt_queue = PromptQueue(self)
        self.executor = PromptExecutor(
            self, self.catalog, self.folders, config, self.interrupt, self._send_preview
        )
        self._stopping = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.started = time.time()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(
            prompt_worker(self.prompt_queue, self.executor, self, self._stopping)
        )

    async def shutdown(self) -> None:
        self._stopping.set()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self.folders.remove()

    # -- status -------------------------------------------------------------------------------

    def get_queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.prompt_queue.get_tasks_remaining()}}

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.get_queue_info()})

    # -- sending ------------------------------------------------------------------------------

    def send_sync(self, event: Any, data: Any, sid: Any = None) -> None:
        """Address a JSON message (or binary frame data) like ``PromptServer.send``."""
        if isinstance(data, bytes | bytearray):
            message = struct.pack(">I", event) + bytes(data)
            for channel in self._targets(sid):
                channel.send_bytes(message)
            return
        for channel in self._targets(sid):
            channel.send({"type": event, "data": data})

    def _targets(self, sid: Any) -> list[WebSocketChannel]:
        if sid is None:
            return list(self.sockets.values())
        try:
            channel = self.sockets.get(sid)
        except TypeError:  # an unhashable client_id matches no socket
            return []
        return [channel] if channel is not None else []

    def supports_preview_metadata(self, sid: Any) -> bool:
        try:
            metadata = self.sockets_metadata.get(sid)
        except TypeError:
            return False
        if metadata is None:
            return False
        return metadata.get("feature_flags", {}).get("supports_preview_metadata", False) is True

    def _send_preview(
        self, prompt_id: str, node_id: str, preview: Preview, legacy: bool = False
    ) -> None:
        """A preview frame: format 4 from the progress registry for sockets that negotiated
        it, format 1 from the progress hook for the others (main.py, progress.py)."""
        supports = self.supports_preview_metadata(self.client_id)
        if legacy == supports:
            return
        type_number, mime, image = encode_preview(preview)
        if legacy:
            self.send_sync(PREVIEW_IMAGE, struct.pack(">I", type_number) + image, self.client_id)
            return
        metadata = {
            "node_id": node_id,
            "prompt_id": prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
            "image_type": mime,
        }
        encoded = json.dumps(metadata).encode("utf-8")
        frame = struct.pack(">I", len(encoded)) + encoded + image
        self.send_sync(PREVIEW_IMAGE_WITH_METADATA, frame, self.client_id)

    def server_features(self) -> dict[str, Any]:
        """``comfy_api.feature_flags.get_server_features``."""
        return {
            "supports_preview_metadata": True,
            "max_upload_size": self.config.max_upload_bytes,
        }

    # -- the WebSocket endpoint ---------------------------------------------------------------

    async def serve_socket(
        self, channel: WebSocketChannel, client_id: str, on_message: Any = None
    ) -> None:
        """``GET /ws``: register, greet, answer feature flags, unregister on close."""
        sid = client_id
        if sid:
            self.sockets.pop(sid, None)  # the newer socket replaces the older one
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = channel
        self.sockets_metadata[sid] = {"feature_flags": {}}
        self.channels[channel] = sid
        try:
            self.send_sync("status", {"status": self.get_queue_info(), "sid": sid}, sid)
            if self.client_id == sid and self.last_node_id is not None:
                self.send_sync("executing", {"node": self.last_node_id}, sid)
            first_message = True
            while True:
                frame = await channel.receive_frame()
                if frame is None:
                    break
                if not isinstance(frame, str):
                    continue  # binary frames are ignored
                if on_message is not None:
                    on_message(frame)
                try:
                    data = json.loads(frame)
                    if first_message and data.get("type") == "feature_flags":
                        self.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                        self.send_sync("feature_flags", self.server_features(), sid)
                    first_message = False
                except Exception:  # invalid JSON or not an object: logged, not fatal
                    pass
        finally:
            self.channels.pop(channel, None)
            # The real server pops by id, even when a newer socket now holds that id.
            self.sockets.pop(sid, None)
            self.sockets_metadata.pop(sid, None)

    def drop_sockets(self, client_id: str | None = None) -> int:
        """Cut WebSockets without a Close frame: all, or those that connected as ``client_id``."""
        channels = [c for c, sid in self.channels.items() if client_id in (None, sid)]
        for channel in channels:
            channel.abort()
        return len(channels)
