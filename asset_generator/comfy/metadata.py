"""What ComfyUI writes into its images: the API graph it ran, in the ``prompt`` text chunk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from asset_generator.downloads import png_text

SAMPLER_SEEDS = ("seed", "noise_seed")


def prompt_of_png(path: Path) -> dict[str, Any] | None:
    """The ``prompt`` tEXt chunk SaveImage writes (nodes.py SaveImage), parsed, if present.

    ComfyUI writes Python's JSON, which may hold NaN (an ``is_changed`` result): Python reads it.
    """
    text = png_text(path, b"prompt")
    if text is None:
        return None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


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
