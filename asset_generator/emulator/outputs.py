"""Saved outputs: SwarmUI's output path builder, and the store behind ``GET /View/...``."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

# Utilities.FilePathForbidden and RestrictedControlChars (src/Utils/Utilities.cs).
_FORBIDDEN = set('<>:"\\|?*~&@;#$^')
_RESTRICTED = set(
    "\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062"
    "\u2063\u2064\u2066\u2067\u2068\u2069\u206a\u206b\u206c\u206e\u206f\ufeff\ufff9\ufffa\ufffb"
)
_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}
# Settings.OutPathBuilder.MaxLenPerPart (src/Core/Settings.cs).
MAX_LEN_PER_PART = 40


def strict_filename_clean(name: str) -> str:
    """``Utilities.StrictFilenameClean``: drop forbidden characters and ``.``, keep ``/``."""
    name = name.replace("\\", "/")
    name = "".join(c for c in name if ord(c) >= 32 and c not in _FORBIDDEN).replace(".", "")
    name = "".join(c for c in name if c not in _RESTRICTED)
    while "//" in name:
        name = name.replace("//", "/")
    name = name.lstrip("/").strip()
    parts = [part.strip() for part in name.split("/") if part.strip()]
    return "/".join(f"{p}_" if p.lower() in _RESERVED else p for p in parts)


def _path_part(value: str) -> str:
    # User.BuildImageOutputPath: truncate to 40 chars first, then clean (slashes removed).
    value = value[:MAX_LEN_PER_PART]
    return strict_filename_clean(value.replace("\\", "/").replace("/", ""))


def simplify_model(name: str | None) -> str:
    """``OutpathFillHelper.SimplifyModel``: model name without its extension."""
    if not name:
        return "unknown"
    name = name.replace("\\", "/").strip()
    if name.endswith((".safetensors", ".ckpt", ".gguf", ".sft", ".engine")):
        name = name.rsplit(".", 1)[0]
    return name


class MinuteCounter:
    """``T2IParamInput.UIDIncrementer``: a per-minute request counter for file names."""

    def __init__(self) -> None:
        self._minute = -1
        self._value = 0
        self._lock = threading.Lock()

    def next(self, when: datetime) -> int:
        with self._lock:
            if when.minute != self._minute or self._value > 998:
                self._value = 0
                self._minute = when.minute
            self._value += 1
            return self._value


def output_path(when: datetime, counter: int, prompt: str, model: str | None) -> str:
    """The default OutPathBuilder format.

    ``raw/[year]-[month]-[day]/[hour][minute][request_time_inc]-[prompt]-[model]``
    """
    path = (
        f"raw/{when:%Y-%m-%d}/{when:%H%M}{counter:03d}-{_path_part(prompt)}"
        f"-{_path_part(simplify_model(model))}"
    )
    return strict_filename_clean(path)


class OutputStore:
    """Saved images, kept in memory (and written under ``output_dir`` when one is given)."""

    def __init__(self, output_dir: Path | None) -> None:
        self._files: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        self._dir = output_dir

    def save(self, user_id: str, path_no_ext: str, extension: str, data: bytes) -> str:
        """Store ``data``; return the path relative to the user folder, made unique with ``-n``."""
        with self._lock:
            candidate, number = path_no_ext, 0
            while (user_id, f"{candidate}.{extension}") in self._files:
                number += 1
                candidate = f"{path_no_ext}-{number}"
            relative = f"{candidate}.{extension}"
            self._files[(user_id, relative)] = data
        if self._dir is not None:
            target = self._dir / user_id / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return relative

    def load(self, user_id: str, relative: str) -> bytes | None:
        """The bytes saved at ``relative`` for that user (memory first, then ``output_dir``)."""
        with self._lock:
            data = self._files.get((user_id, relative))
        if data is not None or self._dir is None:
            return data
        root = (self._dir / user_id).resolve()
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return None
        return target.read_bytes()

    def paths(self) -> list[str]:
        """Every saved output as the ``View/<user>/<path>`` string the server announced."""
        with self._lock:
            return [f"View/{user}/{relative}" for user, relative in self._files]
