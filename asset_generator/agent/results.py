"""What a tool returns about images: paths, seeds, sizes, and small previews, never files."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asset_generator.generation import Outcome
    from asset_generator.saving import SavedImage

# The longest side of an inline preview, by default and at most.
PREVIEW_PIXELS = 256
MAX_PREVIEW_PIXELS = 512
# A preview's PNG is re-made smaller until it fits (a noisy 512 px PNG can pass 500 KB).
MAX_PREVIEW_BYTES = 200_000


def image_result(saved: SavedImage) -> dict[str, Any]:
    """An image this process saved: ``{path, seed, width, height}``."""
    width, height = image_size(saved.path)
    return {
        "path": str(saved.path) if saved.path else None,
        "seed": saved.seed,
        "width": width,
        "height": height,
    }


def file_result(path: Path, server_type: str) -> dict[str, Any]:
    """An image another process saved: its seed is in the server's metadata, when still there."""
    from asset_generator.server import SERVER_TYPES, load

    width, height = image_size(path)
    kind = SERVER_TYPES.get(server_type)
    reader: Any = load(kind.seed_reader) if kind is not None else None
    seed = None
    if reader is not None and path.is_file():
        seed = reader(path)[0]
    return {"path": str(path), "seed": seed, "width": width, "height": height}


def image_size(path: Path | None) -> tuple[int | None, int | None]:
    """The saved file's pixel size (what a caller gets, whatever was asked for)."""
    if path is None:
        return None, None
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.size
    except (ImportError, OSError, ValueError):
        return None, None
    except Image.DecompressionBombError:
        # Above Pillow's pixel limit (16384 x 16384 is): the size from the PNG header.
        return _png_size(path)


def _png_size(path: Path) -> tuple[int | None, int | None]:
    """Width and height from a PNG's IHDR chunk, without decoding; None for another file."""
    try:
        with open(path, "rb") as file:
            head = file.read(24)
    except OSError:
        return None, None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None, None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def generation_result(outcome: Outcome) -> dict[str, Any]:
    """generate_image's document for a generation that ended."""
    return {
        "generation_id": outcome.record.id,
        "status": outcome.status,
        "progress": round(outcome.record.progress, 1),
        "images": [image_result(i) for i in outcome.images],
        "error": outcome.error,
    }


def thumbnail(path: str | Path | None, pixels: int = PREVIEW_PIXELS) -> str | None:
    """A PNG of the image no larger than ``pixels`` on its longest side, base64; None if the
    file cannot be read. Bounded in bytes too: a preview never carries a full-size file."""
    if not path:
        return None
    pixels = max(16, min(pixels, MAX_PREVIEW_PIXELS))
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.load()
            mode = "RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"
            source = image.convert(mode)
    except (ImportError, OSError, ValueError):
        return None
    except Image.DecompressionBombError:
        # Too large to decode safely for a preview; its path and size are in the result.
        return None
    while True:
        shown = source.copy()
        shown.thumbnail((pixels, pixels))
        buffer = io.BytesIO()
        shown.save(buffer, "PNG", optimize=True)
        if buffer.tell() <= MAX_PREVIEW_BYTES or pixels <= 32:
            return base64.b64encode(buffer.getvalue()).decode()
        pixels //= 2
