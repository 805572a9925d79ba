"""Helpers for the emulator tests: raw httpx calls, WebSocket transcripts, PNG checks."""

from __future__ import annotations

import json
import queue
import socket
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_ws import WebSocketDisconnect, connect_ws


def new_session(client: httpx.Client, **headers: str) -> str:
    answer = client.post("/API/GetNewSession", json={}, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["session_id"]


def call(client: httpx.Client, route: str, session_id: str | None, **body: Any) -> httpx.Response:
    """POST ``body`` (plus ``session_id`` when given) to ``/API/<route>``."""
    if session_id is not None:
        body = {"session_id": session_id, **body}
    return client.post(f"/API/{route}", json=body)


@dataclass
class Transcript:
    """Everything a WebSocket route sent, and how it ended."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    def kinds(self) -> list[str]:
        """One label per message: its first key (``status``, ``gen_progress``, ``image``...)."""
        return [next(iter(m)) for m in self.messages]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if kind in m]

    def statuses(self) -> list[tuple[int, int, int, int]]:
        return [
            (
                s["status"]["waiting_gens"],
                s["status"]["loading_models"],
                s["status"]["waiting_backends"],
                s["status"]["live_gens"],
            )
            for s in self.of("status")
        ]


def ws_transcript(
    client: httpx.Client,
    route: str,
    first: dict[str, Any] | str,
    *,
    extra: list[tuple[str, dict[str, Any]]] | None = None,
    timeout: float = 10.0,
) -> Transcript:
    """Open ``/API/<route>``, send ``first``, read until Close.

    ``extra`` holds ``(after_kind, message)`` pairs: ``message`` is sent right after the first
    received message whose first key is ``after_kind``.
    """
    pending = list(extra or [])
    transcript = Transcript()
    with connect_ws(f"/API/{route}", client, max_message_size_bytes=8 * 1024 * 1024) as ws:
        ws.send_text(first if isinstance(first, str) else json.dumps(first))
        while True:
            try:
                message = json.loads(ws.receive_text(timeout=timeout))
            except WebSocketDisconnect as closed:
                transcript.close_code = closed.code
                break
            except queue.Empty as exc:
                raise AssertionError(f"no message for {timeout} s: {transcript}") from exc
            transcript.messages.append(message)
            kind = next(iter(message))
            if pending and pending[0][0] == kind:
                ws.send_text(json.dumps(pending.pop(0)[1]))
    return transcript


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, payload) chunks, checking the signature and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        payload = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, kind
        chunks.append((kind, payload))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def png_text(data: bytes) -> dict[str, str]:
    found = {}
    for kind, payload in png_chunks(data):
        if kind == b"tEXt":
            key, _, value = payload.partition(b"\x00")
            found[key.decode("latin-1")] = value.decode("latin-1")
    return found


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and raw RGB rows (filter bytes included) of an emulator PNG."""
    chunks = png_chunks(data)
    width, height = struct.unpack(">II", chunks[0][1][:8])
    raw = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    return width, height, raw


def raw_http(port: int, payload: bytes, *, read_until_close: bool = True) -> bytes:
    """Send raw bytes to the emulator and return what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        if not read_until_close:
            return sock.recv(65536)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
