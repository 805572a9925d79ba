"""Cheap stand-ins for every node class the emulator declares.

Each class behaves like its ComfyUI namesake where a client can see it: what it returns (as
``values``), how many progress steps it reports and how long they take, where it checks the
interrupt flag, the files SaveImage and PreviewImage write, the errors a real one raises
(with the same exception types and messages), ``IS_CHANGED`` (which decides caching) and
``VALIDATE_INPUTS``. Declarations (input names, types, ranges) come from ``object_info.json``,
not from here.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from asset_generator.emulator.comfy.config import ComfyConfig
from asset_generator.emulator.comfy.files import Folders
from asset_generator.emulator.comfy.values import (
    LATENT_FACTOR,
    Clip,
    Conditioning,
    Image,
    Latent,
    Mask,
    Model,
    Noise,
    Picture,
    Pixels,
    Solid,
    UpscaleModel,
    Vae,
    digest,
    resized,
)
from asset_generator.emulator.png import encode_png

# comfy.utils.ProgressBar previews are contained in this many pixels (MAX_PREVIEW_RESOLUTION).
MAX_PREVIEW_RESOLUTION = 512
# Images at least this big are encoded off the event loop.
LARGE_IMAGE_PIXELS = 256 * 256


class InterruptProcessingError(Exception):
    """``comfy.model_management.InterruptProcessingException``."""


@dataclass(frozen=True)
class Preview:
    """A preview passed with a progress update: ``("JPEG", image, 512)`` in ComfyUI."""

    picture: Picture
    width: int
    height: int
    image_format: str = "JPEG"
    max_size: int = MAX_PREVIEW_RESOLUTION


@dataclass
class NodeContext:
    """What a running node may use: its ids, the folders, the progress hook."""

    unique_id: str
    prompt_id: str
    config: ComfyConfig
    folders: Folders
    # The progress hook (main.py hijack_progress): checks the interrupt flag, then reports.
    progress: Callable[[int, int, Preview | None], None]
    # comfy.model_management.throw_exception_if_processing_interrupted.
    check_interrupt: Callable[[], None]


NodeFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class NodeClass:
    """How one class runs, and its optional IS_CHANGED and VALIDATE_INPUTS."""

    run: NodeFunction
    is_changed: Callable[..., Any] | None = None
    validate: Callable[..., Any] | None = None
    # Both are called with the Folders first, then the node's inputs by name.
    # The argument names of VALIDATE_INPUTS: these inputs skip the range and list checks.
    validate_args: tuple[str, ...] = field(default_factory=tuple)


# -- loaders ----------------------------------------------------------------------------------


def _require_file(folder: str, name: str, offered: list[str]) -> None:
    # folder_paths.get_full_path_or_raise.
    if name not in offered:
        raise FileNotFoundError(f"Model in folder '{folder}' with filename '{name}' not found.")


async def checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> tuple[Any, ...]:
    _require_file("checkpoints", ckpt_name, ctx.config.checkpoints)
    return (Model(ckpt_name), Clip(ckpt_name), Vae(ckpt_name))


async def vae_loader(ctx: NodeContext, vae_name: str) -> tuple[Any, ...]:
    if vae_name != "pixel_space":
        _require_file("vae", vae_name, ctx.config.vaes)
    return (Vae(vae_name),)


async def lora_loader(
    ctx: NodeContext,
    model: Model,
    clip: Clip | None,
    lora_name: str,
    strength_model: float,
    strength_clip: float,
) -> tuple[Any, ...]:
    if strength_model == 0 and strength_clip == 0:
        return (model, clip)  # nodes.py: both strengths 0 pass the inputs through untouched
    _require_file("loras", lora_name, ctx.config.loras)
    new_model = replace(model, patches=(*model.patches, (lora_name, strength_model)))
    new_clip = clip
    if clip is not None:
        new_clip = replace(clip, patches=(*clip.patches, (lora_name, strength_clip)))
    return (new_model, new_clip)


async def lora_loader_model_only(
    ctx: NodeContext, model: Model, lora_name: str, strength_model: float
) -> tuple[Any, ...]:
    return ((await lora_loader(ctx, model, None, lora_name, strength_model, 0))[0],)


async def upscale_model_loader(ctx: NodeContext, model_name: str) -> tuple[Any, ...]:
    _require_file("upscale_models", model_name, ctx.config.upscale_models)
    found = re.search(r"(\d+)[xX]|[xX](\d+)", model_name)
    scale = int(next(g for g in found.groups() if g)) if found else 4
    return (UpscaleModel(model_name, max(1, scale)),)


# -- conditioning -----------------------------------------------------------------------------


async def clip_text_encode(ctx: NodeContext, clip: Clip | None, text: str) -> tuple[Any, ...]:
    if clip is None:
        raise RuntimeError(
            "ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node "
            "your checkpoint does not contain a valid clip or text encoder model."
        )
    return (Conditioning((digest("text", clip, text),)),)


async def clip_set_last_layer(
    ctx: NodeContext, clip: Clip, stop_at_clip_layer: int
) -> tuple[Any, ...]:
    return (replace(clip, last_layer=stop_at_clip_layer),)


async def conditioning_combine(
    ctx: NodeContext, conditioning_1: Conditioning, conditioning_2: Conditioning
) -> tuple[Any, ...]:
    return (Conditioning(conditioning_1.parts + conditioning_2.parts),)


async def conditioning_set_area(
    ctx: NodeContext,
    conditioning: Conditioning,
    width: int,
    height: int,
    x: int,
    y: int,
    strength: float,
) -> tuple[Any, ...]:
    area = (width, height, x, y, strength)
    return (Conditioning(tuple(digest(p, area) for p in conditioning.parts)),)


# -- latents and sampling ---------------------------------------------------------------------


async def empty_latent_image(
    ctx: NodeContext, width: int, height: int, batch_size: int
) -> tuple[Any, ...]:
    return (Latent(width // 8, height // 8, (0,) * batch_size),)


def _preview_of(ctx: NodeContext, samples: tuple[int, ...], width: int, height: int) -> Any:
    # latent_preview.py: no previewer unless --preview-method; latent2rgb draws the latent
    # at its own size.
    if ctx.config.preview_method == "none":
        return None
    return Preview(Noise(digest("preview", samples)), max(1, width), max(1, height))


async def _sample(
    ctx: NodeContext, steps_total: int, latent: Latent, recipe: tuple[Any, ...]
) -> Latent:
    """Take ``steps_total`` steps of ``--step-seconds`` each; the hook checks the interrupt."""
    samples = tuple(digest("sample", recipe, i, s) for i, s in enumerate(latent.samples))
    for step in range(steps_total):
        await asyncio.sleep(ctx.config.step_seconds)
        preview = _preview_of(ctx, (step, *samples), latent.width, latent.height)
        ctx.progress(step + 1, steps_total, preview)
    return Latent(latent.width, latent.height, samples)


async def ksampler(
    ctx: NodeContext,
    model: Model,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent_image: Latent,
    denoise: float = 1.0,
) -> tuple[Any, ...]:
    # With denoise < 1 the sampler still takes `steps` steps (of a longer schedule); with
    # denoise 0 there is nothing to do.
    total = steps if denoise > 0 else 0
    recipe = (model, seed, steps, cfg, sampler_name, scheduler, positive, negative, denoise)
    if total == 0:
        return (latent_image,)
    return (await _sample(ctx, total, latent_image, recipe),)


async def ksampler_advanced(
    ctx: NodeContext,
    model: Model,
    add_noise: str,
    noise_seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent_image: Latent,
    start_at_step: int,
    end_at_step: int,
    return_with_leftover_noise: str,
) -> tuple[Any, ...]:
    total = max(0, min(end_at_step, steps) - start_at_step)
    recipe = (
        model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
        start_at_step, end_at_step, return_with_leftover_noise,
    )  # fmt: skip
    if total == 0:
        return (latent_image,)
    return (await _sample(ctx, total, latent_image, recipe),)


async def latent_upscale(
    ctx: NodeContext, samples: Latent, upscale_method: str, width: int, height: int, crop: str
) -> tuple[Any, ...]:
    if width == 0 and height == 0:
        return (samples,)
    if width == 0:
        height = max(64, height)
        width = max(64, round(samples.width * height / samples.height))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(samples.height * width / samples.width))
    else:
        width, height = max(64, width), max(64, height)
    recipe = ("upscale", upscale_method, crop, width // 8, height // 8)
    return (Latent(width // 8, height // 8, tuple(digest(s, recipe) for s in samples.samples)),)


async def latent_upscale_by(
    ctx: NodeContext, samples: Latent, upscale_method: str, scale_by: float
) -> tuple[Any, ...]:
    width, height = round(samples.width * scale_by), round(samples.height * scale_by)
    recipe = ("upscale", upscale_method, width, height)
    return (Latent(width, height, tuple(digest(s, recipe) for s in samples.samples)),)


# -- VAE --------------------------------------------------------------------------------------


async def vae_decode(ctx: NodeContext, samples: Latent, vae: Vae) -> tuple[Any, ...]:
    width, height = samples.width * LATENT_FACTOR, samples.height * LATENT_FACTOR
    pictures: list[Picture] = []
    for sample in samples.samples:
        # An untouched (all-zero) latent decodes to a flat grey-brown.
        pictures.append(Solid((0.45, 0.42, 0.38)) if sample == 0 else Noise(digest(sample, vae)))
    return (Image(width, height, tuple(pictures)),)


async def vae_encode(ctx: NodeContext, pixels: Image, vae: Vae) -> tuple[Any, ...]:
    samples = tuple(digest("encode", p, pixels.width, pixels.height, vae) for p in pixels.pictures)
    return (Latent(pixels.width // 8, pixels.height // 8, samples),)


# -- images -----------------------------------------------------------------------------------


async def empty_image(
    ctx: NodeContext, width: int, height: int, batch_size: int = 1, color: int = 0
) -> tuple[Any, ...]:
    rgb = (((color >> 16) & 0xFF) / 0xFF, ((color >> 8) & 0xFF) / 0xFF, (color & 0xFF) / 0xFF)
    return (Image(width, height, (Solid(rgb),) * batch_size),)


def _scaled(image: Image, width: int, height: int) -> Image:
    pictures = tuple(resized(p, (image.width, image.height)) for p in image.pictures)
    return Image(width, height, pictures)


async def image_scale(
    ctx: NodeContext, image: Image, upscale_method: str, width: int, height: int, crop: str
) -> tuple[Any, ...]:
    if width == 0 and height == 0:
        return (image,)
    if width == 0:
        width = max(1, round(image.width * height / image.height))
    elif height == 0:
        height = max(1, round(image.height * width / image.width))
    return (_scaled(image, width, height),)


async def image_scale_by(
    ctx: NodeContext, image: Image, upscale_method: str, scale_by: float
) -> tuple[Any, ...]:
    return (_scaled(image, round(image.width * scale_by), round(image.height * scale_by)),)


async def image_upscale_with_model(
    ctx: NodeContext, upscale_model: UpscaleModel, image: Image
) -> tuple[Any, ...]:
    # One tile: comfy.utils.tiled_scale reports its tiles through a ProgressBar.
    ctx.progress(1, 1, None)
    scale = upscale_model.scale
    return (_scaled(image, image.width * scale, image.height * scale),)


async def slow_solid_image(
    ctx: NodeContext,
    steps: int,
    step_seconds: float,
    width: int,
    height: int,
    red: float,
    green: float,
    blue: float,
    fail_at_step: int = 0,
    preview: bool = False,
) -> tuple[Any, ...]:
    """``comfyui-peer/slow_node.py``: check, sleep, maybe fail, report; a solid colour."""
    for i in range(steps):
        ctx.check_interrupt()
        await asyncio.sleep(step_seconds)
        if fail_at_step and i + 1 == fail_at_step:
            raise RuntimeError(f"SlowSolidImage: requested failure at step {i + 1}")
        shown = None
        if preview:
            # PIL.Image.new(..., (int(red * 255), ...)): plain float arithmetic here.
            colour = (int(red * 255) / 255, int(green * 255) / 255, int(blue * 255) / 255)
            shown = Preview(Solid(colour), width, height)
        ctx.progress(i + 1, steps, shown)
    return (Image(width, height, (Solid((red, green, blue)),)),)


def slow_solid_image_is_changed(folders: Folders, **inputs: Any) -> float:
    return float("nan")  # NaN != NaN: never served from the cache


async def load_image(ctx: NodeContext, image: str) -> tuple[Any, ...]:
    path = ctx.folders.get_annotated_filepath(image)
    pixels = await asyncio.to_thread(_read_pixels, path)
    mask = Mask(pixels.width, pixels.height, 1) if pixels.has_alpha else Mask(64, 64, 1)
    return (Image(pixels.width, pixels.height, (pixels.picture,)), mask)


@dataclass(frozen=True)
class _Read:
    picture: Pixels
    width: int
    height: int
    has_alpha: bool


def _read_pixels(path: str) -> _Read:
    from PIL import Image as PILImage
    from PIL import ImageOps

    with PILImage.open(path) as opened:
        frame = ImageOps.exif_transpose(opened) or opened
        has_alpha = "A" in frame.getbands()
        rgb = frame.convert("RGB")
        width, height = rgb.size
        return _Read(Pixels(width, height, rgb.tobytes()), width, height, has_alpha)


def load_image_is_changed(folders: Folders, image: str, **links: Any) -> str:
    path = folders.get_annotated_filepath(image)
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).digest().hex()


def load_image_validate(folders: Folders, image: str) -> Any:
    if not folders.exists_annotated_filepath(image):
        return f"Invalid image file: {image}"
    return True


# -- output nodes -----------------------------------------------------------------------------


def _png_bytes(
    picture: Picture, width: int, height: int, text: list[tuple[str, str]], level: int
) -> bytes:
    return encode_png(width, height, picture.rows(width, height), text, compress_level=level)


async def _save_images(
    ctx: NodeContext,
    images: Image,
    filename_prefix: str,
    prompt: Any,
    extra_pnginfo: Any,
    *,
    output_dir: str,
    kind: str,
    compress_level: int,
) -> dict[str, Any]:
    full_output_folder, filename, counter, subfolder, filename_prefix = ctx.folders.save_image_path(
        filename_prefix, output_dir, images.width, images.height
    )
    text: list[tuple[str, str]] = []
    if prompt is not None:
        text.append(("prompt", json.dumps(prompt)))
    if extra_pnginfo is not None:
        text.extend((key, json.dumps(extra_pnginfo[key])) for key in extra_pnginfo)
    results = []
    for batch_number, picture in enumerate(images.pictures):
        stem = filename.replace("%batch_num%", str(batch_number))
        file = f"{stem}_{counter:05}_.png"
        args = (picture, images.width, images.height, text, compress_level)
        if images.width * images.height >= LARGE_IMAGE_PIXELS:
            data = await asyncio.to_thread(_png_bytes, *args)
        else:
            data = _png_bytes(*args)
        with open(os.path.join(full_output_folder, file), "wb") as handle:
            handle.write(data)
        results.append({"filename": file, "subfolder": subfolder, "type": kind})
        counter += 1
    return {"ui": {"images": results}}


async def save_image(
    ctx: NodeContext,
    images: Image,
    filename_prefix: str = "ComfyUI",
    prompt: Any = None,
    extra_pnginfo: Any = None,
) -> dict[str, Any]:
    return await _save_images(
        ctx,
        images,
        filename_prefix,
        prompt,
        extra_pnginfo,
        output_dir=ctx.folders.output,
        kind="output",
        compress_level=4,
    )


async def preview_image(
    ctx: NodeContext, images: Image, prompt: Any = None, extra_pnginfo: Any = None
) -> dict[str, Any]:
    # PreviewImage(SaveImage): temp folder, "_temp_" + five random letters, compress level 1.
    suffix = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return await _save_images(
        ctx,
        images,
        "ComfyUI" + suffix,
        prompt,
        extra_pnginfo,
        output_dir=ctx.folders.temp,
        kind="temp",
        compress_level=1,
    )


NODE_CLASSES: dict[str, NodeClass] = {
    "CheckpointLoaderSimple": NodeClass(checkpoint_loader),
    "CLIPTextEncode": NodeClass(clip_text_encode),
    "CLIPSetLastLayer": NodeClass(clip_set_last_layer),
    "EmptyLatentImage": NodeClass(empty_latent_image),
    "KSampler": NodeClass(ksampler),
    "KSamplerAdvanced": NodeClass(ksampler_advanced),
    "VAEDecode": NodeClass(vae_decode),
    "VAEEncode": NodeClass(vae_encode),
    "VAELoader": NodeClass(vae_loader),
    "SaveImage": NodeClass(save_image),
    "PreviewImage": NodeClass(preview_image),
    "LoadImage": NodeClass(
        load_image,
        is_changed=load_image_is_changed,
        validate=load_image_validate,
        validate_args=("image",),
    ),
    "LoraLoader": NodeClass(lora_loader),
    "LoraLoaderModelOnly": NodeClass(lora_loader_model_only),
    "LatentUpscale": NodeClass(latent_upscale),
    "LatentUpscaleBy": NodeClass(latent_upscale_by),
    "ImageScale": NodeClass(image_scale),
    "ImageScaleBy": NodeClass(image_scale_by),
    "UpscaleModelLoader": NodeClass(upscale_model_loader),
    "ImageUpscaleWithModel": NodeClass(image_upscale_with_model),
    "ConditioningCombine": NodeClass(conditioning_combine),
    "ConditioningSetArea": NodeClass(conditioning_set_area),
    "EmptyImage": NodeClass(empty_image),
    "SlowSolidImage": NodeClass(slow_solid_image, is_changed=slow_solid_image_is_changed),
}


def encode_preview(preview: Preview) -> tuple[int, str, bytes]:
    """JPEG (or PNG) bytes of a progress preview: (image type number, MIME type, bytes)."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    rows = preview.picture.rows(preview.width, preview.height)
    image = PILImage.frombytes("RGB", (preview.width, preview.height), b"".join(rows))
    if preview.max_size is not None:
        image = ImageOps.contain(
            image, (preview.max_size, preview.max_size), PILImage.Resampling.BILINEAR
        )
    buffer = io.BytesIO()
    image.save(buffer, format=preview.image_format, quality=95, compress_level=1)
    if preview.image_format == "PNG":
        return 2, "image/png", buffer.getvalue()
    return 1, "image/jpeg", buffer.getvalue()
