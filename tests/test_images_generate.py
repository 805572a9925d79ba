"""`generate image` with post-processing against the emulator: crop, downscale, strip, in order."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import quote

import httpx
from conftest import Runner, read_registry
from PIL import Image

from asset_generator import images
from asset_generator.emulator import Emulator

# Seed 91's gradient runs from (42, 88, 82) to (205, 234, 225), red the darkest channel
# throughout: with the cut at 100 only the top-left triangle is content, so a crop is seen.
SEED = "91"


def server_image(emu: Emulator, server_path: str) -> Image.Image:
    data = httpx.get(f"{emu.url}/{quote(server_path, safe='/')}").content
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def oracle_box(image: Image.Image, cut: int) -> tuple[int, int, int, int]:
    """The content box by brute force, pixel by pixel (RGB images only)."""
    xs, ys = [], []
    for y in range(image.height):
        for x in range(image.width):
            if min(image.getpixel((x, y))[:3]) < cut:
                xs.append(x)
                ys.append(y)
    return min(xs), min(ys), max(xs) + 1, max(ys) + 1


def test_generate_crops_downscales_and_strips_after_reading_the_seed(
    cli: Runner, emulator: Emulator, workdir: Path, state_dir: Path
) -> None:
    result = cli(
        "-f",
        "json",
        "generate",
        "image",
        "--prompt",
        "a fox",
        "--seed",
        SEED,
        "--width",
        "512",
        "--height",
        "512",
        "--auto-crop",
        "--auto-crop-threshold",
        "100",
        "--auto-crop-tolerance",
        "0",
        "--downscale-percentage",
        "50",
        "--strip-metadata",
    )
    assert result.code == 0, result.stderr
    document = result.json()
    [shown] = document["images"]
    # Read from the image before anything stripped it.
    assert shown["seed"] == int(SEED)
    assert shown["metadata"]["sui_image_params"]["prompt"] == "a fox"
    original = server_image(emulator, shown["server_path"])
    assert original.size == (64, 64)
    box = oracle_box(original, 100)
    width, height = box[2] - box[0], box[3] - box[1]
    assert (width, height) < original.size, "the emulator's image no longer shows a crop"
    assert shown["postprocess"]["box"] == list(box)
    expected_size = [round(width / 2), round(height / 2)]
    assert shown["postprocess"]["size_after"] == expected_size
    assert shown["postprocess"]["removed"] == ["tEXt parameters"]
    saved = workdir / shown["path"]
    with Image.open(saved) as image:
        assert list(image.size) == expected_size
        expected = original.crop(box).resize(tuple(expected_size), Image.Resampling.LANCZOS)
        assert image.convert("RGB").tobytes() == expected.convert("RGB").tobytes()
    chunks = {kind for kind, _ in images.png_chunks(saved.read_bytes())}
    assert not chunks & images.PNG_METADATA_CHUNKS
    [record] = read_registry(state_dir)["generations"].values()
    assert record["status"] == "succeeded"
    assert [p for p in workdir.iterdir() if p.name.startswith(".")] == []


def test_config_turns_post_processing_on(
    cli: Runner, emulator: Emulator, workdir: Path, config_dir: Path
) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.toml").write_text(
        "[generate]\nstrip_metadata = true\ndownscale_width = 16\n"
    )
    result = cli("generate", "image", "--prompt", "x", "--width", "512", "--height", "256")
    assert result.code == 0, result.stderr
    saved = workdir / result.stdout.strip()
    with Image.open(saved) as image:
        assert image.size == (16, 8)
        assert image.text == {}
    # A flag wins over the config: --keep-metadata keeps the parameters.
    kept = cli("generate", "image", "--prompt", "y", "--keep-metadata", "--downscale-width", "8")
    assert kept.code == 0, kept.stderr
    with Image.open(workdir / kept.stdout.strip()) as image:
        assert image.width == 8
        assert "parameters" in image.text


def test_a_post_processing_failure_keeps_the_full_size_file(
    cli: Runner, emulator: Emulator, workdir: Path, state_dir: Path
) -> None:
    result = cli(
        "-f",
        "json",
        "generate",
        "image",
        "--prompt",
        "too small",
        "--width",
        "512",
        "--height",
        "512",
        "--downscale-width",
        "1000",
    )
    assert result.code == 1
    # Progress lines first (stderr is not a terminal); the error is the one last line.
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("post-processing failed: ")
    assert line.endswith(
        ": 1000x1000 is larger than the image (64x64); downscale never enlarges; "
        "the full-size file is kept"
    )
    document = result.json()
    assert document["ok"] is False
    assert document["error"]["code"] == "file_error"
    [shown] = document["images"]
    assert shown["path"] in line
    with Image.open(workdir / shown["path"]) as image:
        assert image.size == (64, 64)
        assert "parameters" in image.text
    [record] = read_registry(state_dir)["generations"].values()
    assert record["status"] == "failed"


def test_percentage_and_width_together_is_a_usage_error(cli: Runner, emulator: Emulator) -> None:
    result = cli(
        "generate",
        "image",
        "--prompt",
        "x",
        "--downscale-percentage",
        "50",
        "--downscale-width",
        "10",
    )
    assert result.code == 2
    assert not emulator.calls("GenerateText2ImageWS")
