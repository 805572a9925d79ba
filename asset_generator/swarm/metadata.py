"""What SwarmUI writes into its images: the ``parameters`` text chunk with the real seed."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asset_generator.downloads import png_text

_SEED_TEXT = re.compile(r"-?[0-9]{1,20}")


def png_text_metadata(path: Path, limit: int = 4 * 1024 * 1024) -> dict[str, Any] | None:
    """SwarmUI's ``parameters`` tEXt/iTXt chunk of a PNG, parsed as JSON, if present."""
    text = png_text(path, b"parameters", limit)
    if text is None:
        return None
    try:
        # Written as UTF-8 whichever chunk carries it.
        parsed = json.loads(text.encode("latin-1", errors="ignore").decode("utf-8", "replace"))
    # RecursionError: a hostile image whose metadata is deeply nested JSON ("[[[[...").
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def seed_from_metadata(metadata: Mapping[str, Any] | None) -> int | None:
    """The real seed recorded in SwarmUI image metadata (``sui_image_params.seed``)."""
    params = (metadata or {}).get("sui_image_params")
    if isinstance(params, Mapping):
        seed = params.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
        # ASCII digits only: "²".isdigit() is true, yet int("²") fails.
        if isinstance(seed, str) and _SEED_TEXT.fullmatch(seed.strip()):
            return int(seed)
    return None


def seed_of_file(path: Path) -> tuple[int | None, dict[str, Any] | None]:
    """The seed recorded in a saved image, and the metadata it came from."""
    metadata = png_text_metadata(path) if path.suffix.lower() == ".png" else None
    return seed_from_metadata(metadata), metadata
