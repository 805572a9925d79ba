"""Tiny PNG writer: real, valid files whose pixels derive from the seed."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SD models work on a latent 8× smaller than the image; drawing at that size keeps files tiny
# while keeping the requested aspect ratio.
LATENT_FACTOR = 8
MIN_SIDE = 8
MAX_SIDE = 256


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def preview_size(width: int, height: int) -> tuple[int, int]:
    """Pixel size of the emulated output for a requested ``width`` × ``height``."""

    def side(value: int) -> int:
        return max(MIN_SIDE, min(MAX_SIDE, value // LATENT_FACTOR))

    return side(width), side(height)


def encode_png(
    width: int,
    height: int,
    rows: Iterable[bytes],
    text: Iterable[tuple[str, str]] = (),
    *,
    compress_level: int = 6,
    padding: bytes = b"",
) -> bytes:
    """A valid 8-bit RGB PNG of ``rows`` (``width`` × 3 bytes each, top to bottom).

    ``text`` pairs become ``tEXt`` chunks before the image data (Latin-1, as both servers'
    metadata JSON is ASCII-escaped). ``padding`` goes in a private ancillary chunk after the
    image data, which decoders skip.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    for key, value in text:
        chunks.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1")))
    compressor = zlib.compressobj(compress_level)
    parts = [compressor.compress(b"\x00" + row) for row in rows]  # filter type None per row
    parts.append(compressor.flush())
    chunks.append(_chunk(b"IDAT", b"".join(parts)))
    if padding:
        # "emPd": ancillary (e), private (m), reserved bit clear (P), safe to copy (d).
        chunks.append(_chunk(b"emPd", padding))
    chunks.append(_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


def gradient_png(
    seed: int,
    width: int,
    height: int,
    text: dict[str, str] | None = None,
    padding_bytes: int = 0,
) -> bytes:
    """An RGB gradient PNG whose two corner colours come from ``seed``.

    ``text`` entries become ``tEXt`` chunks placed before the image data, which is where
    SwarmUI puts its ``parameters`` metadata. ``padding_bytes`` of incompressible data go in a
    private ancillary chunk after the image data, so files can be made as big as real outputs
    without costing pixels (decoders skip unknown ancillary chunks).
    """
    rng = random.Random(seed)
    start = [rng.randrange(256) for _ in range(3)]
    end = [rng.randrange(256) for _ in range(3)]
    rows = []
    span = max(1, width + height - 2)
    for y in range(height):
        row = bytearray()
        for x in range(width):
            t = (x + y) / span
            row.extend(int(a + (b - a) * t) for a, b in zip(start, end, strict=True))
        rows.append(bytes(row))
    padding = rng.randbytes(padding_bytes) if padding_bytes > 0 else b""
    return encode_png(width, height, rows, (text or {}).items(), padding=padding)
