"""What SwarmUI writes into its images: the ``parameters`` text chunk with the real seed."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_SEED_TEXT = re.compile(r"-?[0-9]{1,20}")


def png_text_metadata(path: Path, limit: int = 4 * 1024 * 1024) -> dict[str, Any] | None:
    """SwarmUI's ``parameters`` tEXt/iTXt chunk of a PNG, parsed as JSON, if present."""
    try:
        with path.open("rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                header = handle.read(8)
                if len(header) < 8:
                    return None
                length, kind = struct.unpack(">I4s", header)
                if kind == b"IDAT" or kind == b"IEND" or length > limit:
                    return None
                data = handle.read(length)
                handle.read(4)
                if kind in (b"tEXt", b"iTXt"):
                    key, _, value = data.partition(b"\x00")
                    if key == b"parameters":
                        if kind == b"iTXt":
                            # compression flag, method, language tag, translated keyword
                            value = value[2:].split(b"\x00", 2)[-1]
                        parsed = json.loads(value.decode("utf-8", errors="replace"))
                        return parsed if isinstance(parsed, dict) else None
    # RecursionError: a hostile image whose metadata is deeply nested JSON ("[[[[...").
    except (OSError, ValueError, struct.error, RecursionError):
        return None


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
