"""Saving generated images: file names from a template, never outside the output directory.

A server-supplied path only ever contributes a sanitised file *name* (and its extension);
the directory is always ``--output-dir``. Bytes are streamed to a hidden temp file beside the
target and renamed at the end, so an interrupted download never leaves a file under its final
name.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import os
import re
import string
import struct
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

TEMPLATE_FIELDS = ("index", "seed", "prompt", "model", "date", "time", "id")
KNOWN_EXTENSIONS = {"png", "jpg", "jpeg", "webp", "gif", "mp4", "webm", "mov"}
MAX_NAME_BYTES = 180
PROMPT_CHARS = 40
# Characters SwarmUI itself strips from output names, plus path separators and controls.
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]+')


class DownloadError(Exception):
    """An image could not be saved; the message says where and why."""


def check_template(template: str) -> None:
    """Raise ValueError for a template that names a field we do not have."""
    if not template.strip():
        raise ValueError("the file name template is empty")
    known = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            raise ValueError(f"unknown field {{{name}}} in the file name template (use {known})")
        if spec or conversion:
            shown = (
                "{"
                + name
                + ("!" + conversion if conversion else "")
                + (":" + spec if spec else "")
                + "}"
            )
            raise ValueError(
                f"{shown} in the file name template: fields take no format, write {{{name}}}"
            )


def sanitize_component(text: str, limit: int = MAX_NAME_BYTES) -> str:
    """Make ``text`` safe as one file-name component on any common filesystem."""
    text = unicodedata.normalize("NFC", text)
    text = _UNSAFE.sub("_", text)
    text = re.sub(r"\s+", " ", text).strip(" .")
    text = text.lstrip(".-")
    encoded = text.encode("utf-8")[:limit]
    text = encoded.decode("utf-8", errors="ignore").strip(" .")
    return text or "image"


def extension_of(server_path: str, default: str = "png") -> str:
    """The extension of a server path or data URL, if it is one we recognise."""
    if server_path.startswith("data:"):
        mime = server_path[5:].split(";", 1)[0].split(",", 1)[0]
        ext = mime.rsplit("/", 1)[-1].lower()
    else:
        ext = PurePosixPath(server_path.split("?", 1)[0]).suffix.lstrip(".").lower()
    ext = "jpg" if ext == "jpeg" else ext
    return ext if ext in KNOWN_EXTENSIONS else default


@dataclass(frozen=True)
class NameFields:
    """What a file name template can use."""

    index: int
    seed: int | None
    prompt: str
    model: str | None
    generation_id: str
    when: float

    def render(self, template: str) -> str:
        model = PurePosixPath((self.model or "default").replace("\\", "/")).name
        for suffix in (".safetensors", ".ckpt", ".gguf", ".sft"):
            model = model.removesuffix(suffix)
        values = {
            "index": str(self.index),
            "seed": str(self.seed) if self.seed is not None else "unknown-seed",
            "prompt": sanitize_component(self.prompt, PROMPT_CHARS) if self.prompt else "image",
            "model": sanitize_component(model, 60),
            "date": time.strftime("%Y-%m-%d", time.localtime(self.when)),
            "time": time.strftime("%H%M%S", time.localtime(self.when)),
            "id": self.generation_id,
        }
        return template.format_map(values)


def target_name(template: str, fields: NameFields, server_path: str) -> str:
    """The sanitised file name (one component, with extension) for an image."""
    stem = sanitize_component(fields.render(template), MAX_NAME_BYTES - 8)
    return f"{stem}.{extension_of(server_path)}"


def inside(directory: Path, name: str) -> Path:
    """``directory / name``, refusing anything that would resolve outside ``directory``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise DownloadError(f"refusing unsafe file name {name!r}")
    root = directory.resolve()
    if (root / name).resolve().parent != root:
        raise DownloadError(f"refusing to write {name!r} outside {directory}")
    # Shown to the user as they named the directory, not as an absolute path.
    return directory / name


def decode_data_url(url: str) -> bytes:
    """The bytes of a ``data:<mime>;base64,...`` URL."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:") or ";base64" not in header:
        raise DownloadError("the server sent an inline image that is not a base64 data: URL")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise DownloadError("the server sent an inline image with invalid base64") from None


def save_stream(
    directory: Path,
    name: str | Callable[[Path], str],
    chunks: Iterable[bytes],
    *,
    overwrite: bool,
) -> Path:
    """Write ``chunks`` to a file in ``directory`` atomically and return its final path.

    ``name`` may be a function of the finished temp file, for names that depend on the image's
    own metadata. Without ``overwrite`` an existing file is kept and a ``-1``, ``-2`` ...
    suffix is added.
    """
    handle, temp_name = _temp_beside(directory)
    final: Path | None = None
    try:
        with os.fdopen(handle, "wb") as temp:
            for chunk in chunks:
                temp.write(chunk)
            temp.flush()
            os.fsync(temp.fileno())
        os.chmod(temp_name, 0o644 & ~_umask())
        final = inside(directory, name(Path(temp_name)) if callable(name) else name)
        return _publish(temp_name, final, overwrite)
    except OSError as exc:
        raise DownloadError(_describe(exc, directory, final)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)


def _temp_beside(directory: Path) -> tuple[int, str]:
    try:
        return tempfile.mkstemp(prefix=".asset-generator-", suffix=".part", dir=directory)
    except OSError as exc:
        raise DownloadError(_describe(exc, directory, None)) from None


def _publish(temp_name: str, final: Path, overwrite: bool) -> Path:
    if overwrite:
        os.replace(temp_name, final)
        return final
    stem, suffix = final.stem, final.suffix
    for attempt in range(10000):
        candidate = final if attempt == 0 else final.with_name(f"{stem}-{attempt}{suffix}")
        try:
            _claim(temp_name, candidate)
        except FileExistsError:
            continue
        return candidate
    raise DownloadError(f"too many files named like {final} already exist")


# Filesystems without hard links (FAT, exFAT, some SMB mounts) answer link() with these.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def _claim(temp_name: str, candidate: Path) -> None:
    """Give the finished temp file the name ``candidate``, never replacing an existing file.

    link() fails if the name exists, so a file that appeared meanwhile is never lost. Where
    hard links do not exist, an O_EXCL placeholder reserves the name first and the rename
    then replaces only that placeholder.
    """
    try:
        os.link(temp_name, candidate)
        return
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    placeholder = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(placeholder)
    try:
        os.replace(temp_name, candidate)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(candidate)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _describe(exc: OSError, directory: Path, final: Path | None) -> str:
    where = final if final is not None else f"an image in {directory}"
    return f"cannot save {where}: {_reason(exc)}"


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno == errno.EFBIG:
        return "the file is larger than this process may write (ulimit -f)"
    return exc.strerror or str(exc)


def prepare_directory(directory: Path) -> None:
    """Create the output directory if needed; DownloadError when it cannot be used."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if directory.exists() and not directory.is_dir():
            raise DownloadError(
                f"cannot save images in {directory}: it is not a directory"
            ) from None
        raise DownloadError(
            f"cannot create the output directory {directory}: {_reason(exc)}"
        ) from None


def check_writable(directory: Path) -> None:
    """DownloadError unless an image could be saved in ``directory``; leaves nothing behind.

    A probe file is really created (root ignores mode bits, a read-only mount does not), in
    ``directory`` or, when it does not exist yet, in its nearest existing parent: the
    directory itself is created only when the first image arrives, so a run that never got
    to the server leaves no empty directory.
    """
    existing = directory
    try:
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        is_dir = existing.is_dir()
    except OSError as exc:
        raise DownloadError(f"cannot save an image in {directory}: {_reason(exc)}") from None
    if not is_dir:
        if existing == directory:
            raise DownloadError(f"cannot save images in {directory}: it is not a directory")
        raise DownloadError(f"cannot save images in {directory}: {existing} is not a directory")
    try:
        handle, probe = tempfile.mkstemp(prefix=".asset-generator-", suffix=".probe", dir=existing)
    except OSError as exc:
        raise DownloadError(f"cannot save an image in {directory}: {_reason(exc)}") from None
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def png_text(path: Path, keyword: bytes, limit: int = 16 * 1024 * 1024) -> str | None:
    """The text of a PNG's ``tEXt``/``iTXt`` chunk named ``keyword`` (before the pixels).

    Servers write how an image was made there (SwarmUI ``parameters``, ComfyUI ``prompt``).
    None when the file is not a PNG, has no such chunk, or cannot be read.
    """
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
                if kind not in (b"tEXt", b"iTXt"):
                    continue
                key, _, value = data.partition(b"\x00")
                if key != keyword:
                    continue
                if kind == b"iTXt":
                    # compression flag, method, language tag, translated keyword
                    value = value[2:].split(b"\x00", 2)[-1]
                    return value.decode("utf-8", errors="replace")
                return value.decode("latin-1")
    except (OSError, struct.error):
        return None
