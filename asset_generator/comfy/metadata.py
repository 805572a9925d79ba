"""What ComfyUI writes into its images: the API graph it ran, in the ``prompt`` text chunk."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

SAMPLER_SEEDS = ("seed", "noise_seed")


def prompt_of_png(path: Path, limit: int = 16 * 1024 * 1024) -> dict[str, Any] | None:
    """The ``prompt`` tEXt chunk SaveImage writes (nodes.py SaveImage), parsed, if present."""
    try:
        with path.open("rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                header = handle.read(8)
                if len(header) < 8:
                    return None
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"IDAT", b"IEND") or length > limit:
                    return None
                data = handle.read(length)
                handle.read(4)
                if kind == b"tEXt":
                    key, _, value = data.partition(b"\x00")
                    if key == b"prompt":
                        parsed = json.loads(value.decode("latin-1"))
                        return parsed if isinstance(parsed, dict) else None
    # RecursionError: a hostile image whose metadata is deeply nested JSON ("[[[[...").
    except (OSError, ValueError, struct.error, RecursionError):
        return None


def seed_of_file(path: Path) -> tuple[int | None, dict[str, Any] | None]:
    """The sampler seed of the graph that made a saved image, when there is one sampler."""
    graph = prompt_of_png(path) if path.suffix.lower() == ".png" else None
    if graph is None:
        return None, None
    seeds = {
        value
        for node in graph.values()
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict)
        for name, value in node["inputs"].items()
        if name in SAMPLER_SEEDS and isinstance(value, int) and not isinstance(value, bool)
    }
    return (seeds.pop() if len(seeds) == 1 else None), {"prompt": graph}
