"""What flows along the links of an emulated graph: shapes and recipes, not tensors.

A real ComfyUI passes models, conditionings, latents and image tensors between nodes. The
emulator passes small frozen records that say what the thing would be (its size, and a digest
of everything that made it), and only turns a picture into pixels when SaveImage or
PreviewImage writes a file. The same inputs therefore always give the same bytes, and a
different seed, prompt or model gives different ones.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass
from typing import Any

# SD VAEs work on a latent 8× smaller than the image.
LATENT_FACTOR = 8


def digest(*parts: Any) -> int:
    """A stable 64-bit number from ``parts`` (their reprs), the same in every process."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def channel_byte(value: float) -> int:
    """The byte SaveImage writes for a float32 channel value (``255. * v``, clip, truncate)."""
    scaled = _f32(255.0 * _f32(value))
    return max(0, min(255, int(scaled)))


# -- pictures: one image of a batch -----------------------------------------------------------


@dataclass(frozen=True)
class Solid:
    """A flat colour, channels as float values 0..1 (SlowSolidImage, EmptyImage)."""

    rgb: tuple[float, float, float]

    def rows(self, width: int, height: int) -> list[bytes]:
        row = bytes(channel_byte(c) for c in self.rgb) * width
        return [row] * height


@dataclass(frozen=True)
class Noise:
    """Coloured noise in 8×8 blocks (one value per latent pixel), drawn from ``seed``."""

    seed: int

    def rows(self, width: int, height: int) -> list[bytes]:
        cells_x = -(-width // LATENT_FACTOR)
        cells_y = -(-height // LATENT_FACTOR)
        noise = random.Random(self.seed).randbytes(cells_x * cells_y * 3)
        rows: list[bytes] = []
        for cell_y in range(cells_y):
            start = cell_y * cells_x * 3
            row = b"".join(
                noise[start + 3 * x : start + 3 * x + 3] * LATENT_FACTOR for x in range(cells_x)
            )[: width * 3]
            rows.extend([row] * min(LATENT_FACTOR, height - cell_y * LATENT_FACTOR))
        return rows


@dataclass(frozen=True)
class Pixels:
    """Pixels read from a file (LoadImage): raw RGB rows of the source size."""

    width: int
    height: int
    data: bytes

    def rows(self, width: int, height: int) -> list[bytes]:
        stride = self.width * 3
        source = [self.data[y * stride : (y + 1) * stride] for y in range(self.height)]
        if (width, height) == (self.width, self.height):
            return source
        return _nearest(source, self.width, self.height, width, height)


@dataclass(frozen=True)
class Resized:
    """Another picture drawn at its own size, then scaled (nearest neighbour)."""

    source: Solid | Noise | Pixels | Resized
    width: int
    height: int

    def rows(self, width: int, height: int) -> list[bytes]:
        if isinstance(self.source, Solid):
            return self.source.rows(width, height)
        source = self.source.rows(self.width, self.height)
        return _nearest(source, self.width, self.height, width, height)


Picture = Solid | Noise | Pixels | Resized


def _nearest(
    source: list[bytes], src_width: int, src_height: int, width: int, height: int
) -> list[bytes]:
    columns = [min(src_width - 1, x * src_width // max(1, width)) * 3 for x in range(width)]
    rows = []
    cache: dict[int, bytes] = {}
    for y in range(height):
        src_y = min(src_height - 1, y * src_height // max(1, height))
        if src_y not in cache:
            line = source[src_y]
            cache[src_y] = b"".join(line[c : c + 3] for c in columns)
        rows.append(cache[src_y])
    return rows


def resized(picture: Picture, from_size: tuple[int, int]) -> Picture:
    """``picture`` (drawn at ``from_size``) as a picture that can be drawn at any size."""
    if isinstance(picture, Solid):
        return picture
    return Resized(picture, from_size[0], from_size[1])


# -- what links carry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    checkpoint: str
    patches: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        return "<comfy.model_patcher.ModelPatcher object>"


@dataclass(frozen=True)
class Clip:
    checkpoint: str
    patches: tuple[tuple[str, float], ...] = ()
    last_layer: int = -1

    def __str__(self) -> str:
        return "<comfy.sd.CLIP object>"


@dataclass(frozen=True)
class Vae:
    name: str

    def __str__(self) -> str:
        return "<comfy.sd.VAE object>"


@dataclass(frozen=True)
class UpscaleModel:
    name: str
    scale: int

    def __str__(self) -> str:
        return "<spandrel.ImageModelDescriptor object>"


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompt parts (text, the CLIP that encoded it, areas), as one digest each."""

    parts: tuple[int, ...]

    def __str__(self) -> str:
        return f"[[tensor(shape=[1, 77, 768]), {{'pooled_output': ...}}]] × {len(self.parts)}"


@dataclass(frozen=True)
class Latent:
    """A latent batch: size in latent pixels, one digest per batch item (0: all zeros)."""

    width: int
    height: int
    samples: tuple[int, ...]

    def __str__(self) -> str:
        shape = [len(self.samples), 4, self.height, self.width]
        return f"{{'samples': tensor(shape={shape})}}"


@dataclass(frozen=True)
class Image:
    """An image batch: every picture has the same size."""

    width: int
    height: int
    pictures: tuple[Picture, ...]

    def __str__(self) -> str:
        return f"tensor(shape={[len(self.pictures), self.height, self.width, 3]})"


@dataclass(frozen=True)
class Mask:
    width: int
    height: int
    batch: int

    def __str__(self) -> str:
        return f"tensor(shape={[self.batch, self.height, self.width]})"
