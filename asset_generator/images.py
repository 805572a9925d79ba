"""Image operations on files: crop, downscale, strip metadata, vectorise.

Pure functions (no click, no rich) used by the commands, by ``generate image`` and by
``pipeline``. Every write is atomic (a temp file in the target's directory, fsync,
``os.replace``), so a failure never leaves a half-written image under its final name and an
input is only ever changed when it is also the output.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

# Alpha below this is transparent background (the Go tool's rule).
ALPHA_CUTOFF = 10
FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that say how and by whom an image was made; SwarmUI writes its parameters in tEXt.
PNG_METADATA_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf"}
# Chunks that make the image look the same on every screen: always kept.
PNG_COLOUR_CHUNKS = {b"iCCP", b"sRGB", b"gAMA", b"cHRM"}
# Chunks Pillow would not copy on a re-encode that we carry over from the source ourselves.
PNG_CARRIED_CHUNKS = PNG_METADATA_CHUNKS | PNG_COLOUR_CHUNKS | {b"pHYs"}
# EXIF Orientation (TIFF tag 274): how a camera photo must be turned to look right. It says
# nothing about who made the image, so stripping keeps it (values 2-8; 1 is "as stored").
ORIENTATION_TAG = 0x0112
EXIF_HEADER = b"Exif\x00\x00"
ORIENTATION_KEPT = " (Orientation kept)"
SVG_METHODS = ("color", "binary")
# The Go tool's method names: `gotrace` is a potrace-style one-colour trace, as `binary` is.
SVG_ALIASES = {"gotrace": "binary"}


class ImageError(Exception):
    """An image could not be read, processed or written; the message names the file."""


@dataclass(frozen=True)
class CropOptions:
    """The whitespace rule: alpha < 10, or each of R, G, B ≥ threshold − tolerance."""

    threshold: int = 250
    tolerance: int = 10
    preserve_aspect: bool = False


@dataclass(frozen=True)
class DownscaleOptions:
    """A target size: width and/or height in pixels, or a percentage (0 < p < 100)."""

    width: int | None = None
    height: int | None = None
    percentage: float | None = None
    filter: str = "lanczos"


@dataclass(frozen=True)
class PostProcess:
    """What to do to each saved image, in this order: crop, downscale, strip metadata."""

    crop: CropOptions | None = None
    downscale: DownscaleOptions | None = None
    strip_metadata: bool = False
    jpeg_quality: int = 90

    @property
    def active(self) -> bool:
        return bool(self.crop or self.downscale or self.strip_metadata)


@dataclass
class Result:
    """What one operation did to one file."""

    input: Path
    output: Path
    size_before: tuple[int, int] | None = None
    size_after: tuple[int, int] | None = None
    box: tuple[int, int, int, int] | None = None
    removed: list[str] = field(default_factory=list)
    # What the output lost that the user did not ask for (16-bit colour written as 8-bit).
    warnings: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "output": str(self.output),
            "box": list(self.box) if self.box else None,
            "size_before": list(self.size_before) if self.size_before else None,
            "size_after": list(self.size_after) if self.size_after else None,
            "removed": self.removed,
            "warnings": self.warnings,
        }


# -- the pixel rules ---------------------------------------------------------------------------


def _rgba8(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGBA, scaling 16-bit and 32-bit grey instead of clipping it."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # convert("L") clips 16-bit values at 255, which would make every mid-grey "white".
        grey = image.convert("I").point(lambda value: value * (1 / 257)).convert("L")
        return grey.convert("RGBA")
    if image.mode == "F":
        return image.point(lambda value: value * 255).convert("L").convert("RGBA")
    return image.convert("RGBA")


def content_box(image: Image.Image, options: CropOptions) -> tuple[int, int, int, int] | None:
    """The smallest box holding every non-background pixel; None when there is none."""
    rgba = _rgba8(image)
    red, green, blue, alpha = rgba.split()
    darkest = ImageChops.darker(ImageChops.darker(red, green), blue)
    # Below 0 every pixel is background (the caller then refuses the image).
    cut = max(0, min(255, options.threshold - options.tolerance))
    coloured = darkest.point([255 if value < cut else 0 for value in range(256)])
    opaque = alpha.point([255 if value >= ALPHA_CUTOFF else 0 for value in range(256)])
    return ImageChops.darker(coloured, opaque).getbbox()


def grow_to_aspect(
    box: tuple[int, int, int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``box`` grown, centred and kept inside ``size``, to the aspect ratio of ``size``."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    full_w, full_h = size
    if width * full_h < height * full_w:
        new_w, new_h = min(full_w, round(height * full_w / full_h)), height
    else:
        new_w, new_h = width, min(full_h, round(width * full_h / full_w))

    def place(start: int, old: int, new: int, limit: int) -> int:
        return max(0, min(limit - new, start - (new - old) // 2))

    left, top = place(left, width, new_w, full_w), place(top, height, new_h, full_h)
    return left, top, left + new_w, top + new_h


def target_size(size: tuple[int, int], options: DownscaleOptions) -> tuple[int, int]:
    """The downscaled size; ImageError when it would be larger than ``size`` (no upscaling)."""
    width, height = size
    if options.percentage is not None:
        factor = options.percentage / 100
        new = (max(1, round(width * factor)), max(1, round(height * factor)))
    elif options.width and options.height:
        new = (options.width, options.height)
    elif options.width:
        new = (options.width, max(1, round(height * options.width / width)))
    elif options.height:
        new = (max(1, round(width * options.height / height)), options.height)
    else:
        raise ValueError("a downscale needs a width, a height or a percentage")
    if new[0] > width or new[1] > height:
        raise ImageError(
            f"{new[0]}x{new[1]} is larger than the image ({width}x{height}); "
            "downscale never enlarges"
        )
    return new


def resize(image: Image.Image, size: tuple[int, int], filter_name: str) -> Image.Image:
    """``image`` resized with a real filter (palette and 16-bit images included)."""
    if image.size == size:
        return image
    resample = FILTERS[filter_name]
    if image.mode in ("1", "P") and resample != Image.Resampling.NEAREST:
        # Pillow resizes palette images with nearest whatever is asked; filter real colours.
        has_alpha = image.mode == "P" and (
            "transparency" in image.info or image.palette.mode == "RGBA"
        )
        image = image.convert("RGBA" if has_alpha else "RGB" if image.mode == "P" else "L")
    if image.mode.startswith("I;16"):
        return image.convert("I").resize(size, resample).convert(image.mode)
    return image.resize(size, resample)


# -- reading -----------------------------------------------------------------------------------


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno == errno.ENOENT:
        return "no such file"
    return exc.strerror or str(exc)


def read_bytes(path: Path) -> bytes:
    """The bytes of an input file; ImageError for a missing or unreadable one."""
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: {_describe(exc)}") from None


def open_image(path: Path, data: bytes) -> Image.Image:
    """Decode ``data`` fully (so a truncated file fails here, not half-way through a write)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageError(f"{path}: damaged or truncated image ({exc})") from None
    return image


# -- writing -----------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(target: Path, data: bytes, *, replace: bool, mode: int | None = None) -> None:
    """Write ``data`` to ``target`` whole or not at all.

    ``replace=False`` never replaces an existing file (a hard link claims the name, so a file
    that appeared meanwhile survives). ``mode`` defaults to that of a new file (0666 − umask).
    """
    directory = target.parent
    if mode is None:
        mode = 0o666 & ~_umask()
    try:
        handle, temp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=directory
        )
    except OSError as exc:
        reason = "no such directory" if exc.errno == errno.ENOENT else _describe(exc)
        raise ImageError(f"cannot write {target}: {reason}") from None
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fchmod(temp.fileno(), mode)
            os.fsync(temp.fileno())
        if replace:
            os.replace(temp_name, target)
        else:
            _claim(temp_name, target)
    except FileExistsError:
        raise ImageError(f"{target} already exists (use --overwrite to replace it)") from None
    except OSError as exc:
        raise ImageError(f"cannot write {target}: {_describe(exc)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)


def _claim(temp_name: str, target: Path) -> None:
    try:
        os.link(temp_name, target)
    except FileExistsError:
        raise
    except OSError as exc:
        # No hard links here (FAT, some network mounts): a checked rename is the best we have.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if target.exists():
            raise FileExistsError(target) from None
        os.replace(temp_name, target)


def _write_output(source: Path, output: Path, data: bytes, overwrite: bool) -> None:
    """Write a result: in place (``output`` is ``source``) keeps the mode and follows a symlink.

    A new file gets the source's read/write bits less the umask, as ``cp`` does, so a
    private input does not give a world-readable copy.
    """
    mode = stat.S_IMODE(source.stat().st_mode)
    # Only the input's own name replaces it: an output that merely links to the input
    # (a symlink named NAME-cropped.png) is an existing output, not permission to replace.
    if output == source:
        # A symlink is followed to its file; any other name stays as typed for messages.
        target = Path(os.path.realpath(output)) if output.is_symlink() else output
        write_atomic(target, data, replace=True, mode=mode)
    else:
        write_atomic(output, data, replace=overwrite, mode=mode & 0o666 & ~_umask())


# -- encoding ----------------------------------------------------------------------------------


def format_for(path: Path, fallback: str | None) -> str:
    """The Pillow format that ``path``'s extension names, else ``fallback``."""
    registered = Image.registered_extensions()
    found = registered.get(path.suffix.lower()) or fallback
    if not found:
        raise ImageError(f"{path}: cannot tell the image format from the extension")
    return found


def encode(
    image: Image.Image,
    fmt: str,
    *,
    source: bytes | None,
    quality: int,
    keep_metadata: bool,
) -> bytes:
    """``image`` as ``fmt`` bytes, with the source's colour data (and metadata if kept)."""
    info = image.info
    options: dict[str, Any] = {}
    # Without metadata, a camera photo still needs its Orientation to look the same.
    orientation = None if keep_metadata else orientation_exif(info.get("exif"))
    if fmt == "JPEG":
        if image.mode not in ("RGB", "L", "CMYK"):
            image = _flatten(image)
        options["quality"] = quality
        if info.get("icc_profile"):
            options["icc_profile"] = info["icc_profile"]
        if keep_metadata:
            for key in ("exif", "comment", "xmp"):
                if info.get(key):
                    options[key] = info[key]
        elif orientation:
            options["exif"] = orientation
    elif fmt == "WEBP":
        options["quality"] = quality
        if info.get("icc_profile"):
            options["icc_profile"] = info["icc_profile"]
        if keep_metadata:
            for key in ("exif", "xmp"):
                if info.get(key):
                    options[key] = info[key]
        elif orientation:
            options["exif"] = orientation
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise ImageError(f"cannot encode a {image.mode} image as {fmt}: {exc}") from None
    data = buffer.getvalue()
    if fmt == "PNG" and source is not None and source.startswith(PNG_SIGNATURE):
        wanted = PNG_COLOUR_CHUNKS | {b"pHYs"}
        if keep_metadata:
            wanted |= PNG_METADATA_CHUNKS
        extra = [(b"eXIf", orientation[len(EXIF_HEADER) :])] if orientation else []
        data = _carry_png_chunks(data, source, wanted, extra)
    return data


def _flatten(image: Image.Image) -> Image.Image:
    """A transparent image on white, for formats without alpha (a sprite's edge stays clean)."""
    rgba = _rgba8(image)
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    canvas.info = dict(image.info)
    return canvas


# -- PNG and JPEG at the container level -------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, data) chunks of a PNG; ValueError for one that is damaged or truncated."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    chunks, offset = [], len(PNG_SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise ValueError("truncated PNG (no IEND chunk)")
        length, kind = struct.unpack_from(">I4s", data, offset)
        end = offset + 12 + length
        if end > len(data):
            raise ValueError(f"truncated PNG (in a {kind.decode('latin-1')} chunk)")
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"damaged PNG (bad checksum in a {kind.decode('latin-1')} chunk)")
        chunks.append((kind, body))
        offset = end
        if kind == b"IEND":
            return chunks


def _png_bytes(chunks: list[tuple[bytes, bytes]]) -> bytes:
    parts = [PNG_SIGNATURE]
    for kind, body in chunks:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        parts.append(struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", crc))
    return b"".join(parts)


def _carry_png_chunks(
    encoded: bytes,
    source: bytes,
    wanted: set[bytes],
    extra: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """``encoded`` with the source's ``wanted`` chunks (and ``extra`` ones) in place of any
    Pillow wrote itself."""
    new = [c for c in png_chunks(encoded) if c[0] not in PNG_CARRIED_CHUNKS]
    carried = [c for c in png_chunks(source) if c[0] in wanted] + (extra or [])
    # Right after IHDR: colour chunks must precede PLTE and IDAT, and text may go anywhere.
    return _png_bytes(new[:1] + carried + new[1:])


def _chunk_label(kind: bytes, body: bytes) -> str:
    name = kind.decode("latin-1")
    if kind in (b"tEXt", b"zTXt", b"iTXt"):
        keyword = body.split(b"\x00", 1)[0].decode("latin-1", errors="replace")
        return f"{name} {keyword}"
    return name


def strip_png(data: bytes) -> tuple[bytes, list[str]]:
    """A PNG without its metadata chunks, every other chunk byte for byte; what went.

    An eXIf chunk with an Orientation is replaced by one holding only that.
    """
    kept, removed = [], []
    for kind, body in png_chunks(data):
        if kind not in PNG_METADATA_CHUNKS:
            kept.append((kind, body))
            continue
        orientation = orientation_exif(body) if kind == b"eXIf" else None
        if orientation is None:
            removed.append(_chunk_label(kind, body))
            continue
        tiff = orientation[len(EXIF_HEADER) :]
        if tiff != body:
            removed.append(_chunk_label(kind, body) + ORIENTATION_KEPT)
        kept.append((kind, tiff))
    return _png_bytes(kept), removed


# Markers without a length field: SOI, EOI, TEM and the restart markers.
_STANDALONE = {0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)}


def strip_jpeg(data: bytes) -> tuple[bytes, list[str]]:
    """A JPEG without EXIF, XMP, IPTC and comment segments; the scan data is copied as is."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG file")
    out, removed, offset = [b"\xff\xd8"], [], 2
    while True:
        if offset + 4 > len(data) or data[offset] != 0xFF:
            raise ValueError("truncated or damaged JPEG")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _STANDALONE:
            out.append(data[offset : offset + 2])
            offset += 2
            continue
        (length,) = struct.unpack_from(">H", data, offset + 2)
        end = offset + 2 + length
        if length < 2 or end > len(data):
            raise ValueError("truncated JPEG")
        segment = data[offset:end]
        label = _jpeg_metadata(marker, segment[4:])
        orientation = orientation_exif(segment[4:]) if label == "EXIF" else None
        if orientation is not None:
            if orientation != segment[4:]:
                removed.append(label + ORIENTATION_KEPT)
            out.append(b"\xff\xe1" + struct.pack(">H", len(orientation) + 2) + orientation)
        elif label:
            removed.append(label)
        else:
            out.append(segment)
        offset = end
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out.append(data[offset:])
            return b"".join(out), removed


def _jpeg_metadata(marker: int, body: bytes) -> str | None:
    """A label for a metadata segment, None for one the image needs (JFIF, ICC, Adobe)."""
    if marker == 0xFE:
        return "comment"
    if marker == 0xE1:
        if body.startswith(b"Exif\x00"):
            return "EXIF"
        if body.startswith((b"http://ns.adobe.com/xap/1.0/", b"http://ns.adobe.com/xmp")):
            return "XMP"
        return "APP1"
    if marker == 0xED:
        return "IPTC"
    if marker == 0xE2 and not body.startswith(b"ICC_PROFILE\x00"):
        return "APP2" if not body.startswith(b"MPF\x00") else "MPF"
    return None


# VP8X feature flags that announce an EXIF or XMP chunk (WebP container spec).
_WEBP_EXIF_FLAG = 0x08
_WEBP_XMP_FLAG = 0x04


def is_webp(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def strip_webp(data: bytes) -> tuple[bytes, list[str]]:
    """A WebP without its EXIF and XMP chunks (ICCP and the image data kept as they are)."""
    if not is_webp(data):
        raise ValueError("not a WebP file")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if riff_size + 8 > len(data):
        raise ValueError("truncated WebP")
    kept, removed, offset = [], [], 12
    while offset < riff_size + 8:
        if offset + 8 > len(data):
            raise ValueError("truncated WebP")
        kind = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        end = offset + 8 + size + (size & 1)
        if offset + 8 + size > len(data):
            raise ValueError(f"truncated WebP (in a {kind.decode('latin-1')!r} chunk)")
        body = data[offset + 8 : offset + 8 + size]
        orientation = orientation_exif(body) if kind == b"EXIF" else None
        if orientation is not None:
            tiff = orientation[len(EXIF_HEADER) :]
            if tiff != body:
                removed.append("EXIF" + ORIENTATION_KEPT)
            padding = b"\x00" if len(tiff) & 1 else b""
            kept.append(bytearray(kind + struct.pack("<I", len(tiff)) + tiff + padding))
        elif kind in (b"EXIF", b"XMP "):
            removed.append(kind.decode("latin-1").strip())
        else:
            kept.append(bytearray(data[offset:end]))
        offset = end
    has_exif = any(chunk[:4] == b"EXIF" for chunk in kept)
    for chunk in kept:
        if chunk[:4] == b"VP8X":
            chunk[8] &= ~(_WEBP_XMP_FLAG | (0 if has_exif else _WEBP_EXIF_FLAG)) & 0xFF
    body = b"WEBP" + b"".join(kept)
    return b"RIFF" + struct.pack("<I", len(body)) + body, removed


def orientation_exif(exif: bytes | None) -> bytes | None:
    """A minimal EXIF (``Exif\\0\\0`` + TIFF) holding only ``exif``'s Orientation; None when
    it has none worth keeping (absent, 1, unreadable)."""
    if not exif:
        return None
    parsed = Image.Exif()
    try:
        parsed.load(exif if exif.startswith(EXIF_HEADER) else EXIF_HEADER + exif)
        orientation = parsed.get(ORIENTATION_TAG)
    except (SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error, OSError):
        return None
    if not isinstance(orientation, int) or not 2 <= orientation <= 8:
        return None
    minimal = Image.Exif()
    minimal[ORIENTATION_TAG] = orientation
    return minimal.tobytes()


def strip_bytes(path: Path, data: bytes) -> tuple[bytes, list[str]]:
    """``data`` without metadata, by container format; ImageError for other formats."""
    try:
        if data.startswith(PNG_SIGNATURE):
            return strip_png(data)
        if data.startswith(b"\xff\xd8"):
            return strip_jpeg(data)
        if is_webp(data):
            return strip_webp(data)
    except ValueError as exc:
        raise ImageError(f"{path}: {exc}") from None
    raise ImageError(f"{path}: not a PNG, JPEG or WebP image (strip-metadata handles only those)")


# -- operations on files -----------------------------------------------------------------------


def crop_file(
    source: Path,
    output: Path,
    options: CropOptions,
    *,
    quality: int = 90,
    strip_metadata: bool = False,
    overwrite: bool = False,
) -> Result:
    """Trim ``source``'s background border into ``output``."""
    return process_file(
        source,
        output,
        PostProcess(crop=options, strip_metadata=strip_metadata, jpeg_quality=quality),
        overwrite=overwrite,
    )


def downscale_file(
    source: Path,
    output: Path,
    options: DownscaleOptions,
    *,
    quality: int = 90,
    strip_metadata: bool = False,
    overwrite: bool = False,
) -> Result:
    """Shrink ``source`` into ``output`` (never enlarging it)."""
    return process_file(
        source,
        output,
        PostProcess(downscale=options, strip_metadata=strip_metadata, jpeg_quality=quality),
        overwrite=overwrite,
    )


def strip_file(source: Path, output: Path, *, overwrite: bool = True) -> Result:
    """Remove ``source``'s metadata into ``output`` without re-encoding its pixels."""
    original = read_bytes(source)
    data, removed = strip_bytes(source, original)
    if removed or source != output:
        # Nothing to remove in place: leave the file (and its mtime) alone.
        _write_output(source, output, data, overwrite)
    size = _header_size(original)
    return Result(source, output, size_before=size, size_after=size, removed=removed)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """The image's size from its header alone (no decoding); None if Pillow cannot tell."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError):
        return None


def process_file(
    source: Path, output: Path, steps: PostProcess, *, overwrite: bool = False
) -> Result:
    """Crop, downscale and strip ``source`` into ``output``, decoding and encoding once.

    An image that no step changes is written byte for byte, so a JPEG loses nothing.
    """
    data = read_bytes(source)
    image = open_image(source, data)
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and (steps.crop or steps.downscale):
        # Pillow hands over the first frame only: writing it would lose the animation.
        raise ImageError(
            f"{source}: an animated image ({frames} frames); crop and downscale handle "
            "still images only"
        )
    fmt = format_for(output, image.format)
    result = Result(source, output, size_before=image.size, size_after=image.size)
    changed = fmt != image.format
    if steps.crop is not None:
        box = content_box(image, steps.crop)
        if box is None:
            # Cropping to nothing is no image; a blank generation is worth an error.
            cut = max(0, steps.crop.threshold - steps.crop.tolerance)
            raise ImageError(
                f"{source}: the whole image is background (alpha < {ALPHA_CUTOFF} or R, G, B "
                f">= {cut} everywhere); nothing to crop"
            )
        if steps.crop.preserve_aspect:
            box = grow_to_aspect(box, image.size)
        result.box = box
        if box != (0, 0, *image.size):
            image, changed = image.crop(box), True
    if steps.downscale is not None:
        # A camera photo stored a quarter turn from upright (EXIF Orientation 5-8) is seen
        # with its sides swapped: width and height mean what every viewer shows.
        turned = image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8)
        shown = (image.height, image.width) if turned else image.size
        try:
            size = target_size(shown, steps.downscale)
        except ImageError as exc:
            raise ImageError(f"{source}: {exc}") from None
        if turned:
            size = (size[1], size[0])
        if size != image.size:
            image, changed = resize(image, size, steps.downscale.filter), True
    result.size_after = image.size
    if changed and _deep_colour_png(data):
        # Pillow has no 16-bit colour mode: it reads RGB/RGBA/grey+alpha at 16 bits as 8.
        # (16-bit grey is mode I;16 and keeps its depth.)
        result.warnings.append(
            f"{output}: written with 8 bits per channel; {source} has 16 "
            "(Pillow reads 16-bit colour as 8-bit)"
        )
    if changed:
        try:
            payload = encode(
                image,
                fmt,
                source=data,
                quality=steps.jpeg_quality,
                keep_metadata=not steps.strip_metadata,
            )
        except (ImageError, ValueError) as exc:
            raise ImageError(f"{source}: {exc}") from None
        if steps.strip_metadata:
            result.removed = _metadata_labels(data)
    elif steps.strip_metadata:
        payload, result.removed = strip_bytes(source, data)
    else:
        payload = data
    _write_output(source, output, payload, overwrite)
    return result


# PNG colour types with more than one channel that Pillow reads at 8 bits when stored at 16.
_DEEP_COLOUR_TYPES = (2, 4, 6)  # RGB, grey + alpha, RGBA


def _deep_colour_png(data: bytes) -> bool:
    """A PNG whose IHDR says 16 bits per channel of colour or grey+alpha."""
    # Signature (8), IHDR length and type (8), width and height (8), then depth, colour type.
    if not data.startswith(PNG_SIGNATURE) or len(data) < 26:
        return False
    return data[24] == 16 and data[25] in _DEEP_COLOUR_TYPES


def _metadata_labels(data: bytes) -> list[str]:
    """What a strip of ``data`` would remove (for a re-encode that dropped it anyway)."""
    with contextlib.suppress(ValueError):
        if data.startswith(PNG_SIGNATURE):
            return strip_png(data)[1]
        if data.startswith(b"\xff\xd8"):
            return strip_jpeg(data)[1]
        if is_webp(data):
            return strip_webp(data)[1]
    return []


def postprocess_in_place(path: Path, steps: PostProcess) -> Result:
    """Apply ``steps`` to a saved image, replacing it atomically; the original survives errors."""
    return process_file(path, path, steps, overwrite=True)


# -- vectorising -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceOptions:
    """vtracer's main knobs; None leaves the library's own default."""

    method: str = "color"
    threshold: int = 128
    hierarchical: str | None = None
    mode: str | None = None
    filter_speckle: int | None = None
    color_precision: int | None = None
    layer_difference: int | None = None
    corner_threshold: int | None = None
    length_threshold: float | None = None
    splice_threshold: int | None = None
    path_precision: int | None = None


class TracerMissing(Exception):
    """The optional tracer (vtracer) is not installed."""


def load_tracer() -> Callable[..., str]:
    """vtracer's converter; TracerMissing when the ``svg`` extra is not installed."""
    try:
        import vtracer
    except ImportError:
        raise TracerMissing from None
    return vtracer.convert_raw_image_to_svg


def vectorise_file(
    source: Path, output: Path, options: TraceOptions, *, overwrite: bool = False
) -> Result:
    """Trace ``source`` into an SVG at ``output``, sized and with a viewBox like the source."""
    convert = load_tracer()
    image = open_image(source, read_bytes(source))
    image = ImageOps.exif_transpose(image) if image.format == "JPEG" else image
    rgba = _rgba8(image)
    colormode = "color"
    if options.method == "binary":
        # vtracer's own binary mode keeps only near-black pixels, so a red logo would vanish
        # (as the Go tool's gotrace made any opaque image one rectangle); threshold luminance.
        grey = _flatten(rgba).convert("L")
        ink = grey.point([0 if value < options.threshold else 255 for value in range(256)])
        rgba, colormode = ink.convert("RGBA"), "binary"
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    knobs = {
        k: v for k, v in vars(options).items() if k not in ("method", "threshold") and v is not None
    }
    try:
        svg = convert(buffer.getvalue(), img_format="png", colormode=colormode, **knobs)
    except Exception as exc:  # a Rust panic or bad argument surfaces as a plain Exception
        raise ImageError(f"{source}: the tracer failed: {exc}") from None
    svg = _with_view_box(svg, *image.size)
    _write_output(source, output, svg.encode("utf-8"), overwrite)
    return Result(source, output, size_before=image.size, size_after=image.size)


def _with_view_box(svg: str, width: int, height: int) -> str:
    """The SVG with a viewBox (vtracer writes only width and height), so it scales."""
    start = svg.find("<svg")
    end = svg.find(">", start)
    if start < 0 or end < 0:
        raise ImageError("the tracer returned something that is not SVG")
    tag = svg[start:end]
    if "viewBox" not in tag:
        tag += f' viewBox="0 0 {width} {height}"'
    return svg[:start] + tag + svg[end:]
