"""crop, downscale, strip-metadata, convert svg: real pixels in, real files out."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import zlib
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import Runner, assert_install_hint
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from asset_generator import images

WHITE = (255, 255, 255)
INK = (20, 40, 60)


def bordered(
    path: Path,
    size: tuple[int, int] = (40, 30),
    box: tuple[int, int, int, int] = (3, 5, 33, 28),
    background: tuple[int, ...] = WHITE,
    mode: str = "RGB",
) -> Path:
    """An image of ``background`` with a patterned block exactly filling ``box``."""
    image = Image.new(mode, size, background)
    left, top, right, bottom = box
    for x in range(left, right):
        for y in range(top, bottom):
            shade = (x * 7 + y * 3) % 120
            value = (shade, 40, 200 - shade) if mode == "RGB" else (shade, 40, 200 - shade, 255)
            image.putpixel((x, y), value)
    image.save(path)
    return path


def chunk_types(path: Path) -> list[str]:
    return [kind.decode() for kind, _ in images.png_chunks(path.read_bytes())]


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGBA").tobytes()


def alphas(image: Image.Image) -> set[int]:
    return {value for value, count in enumerate(image.getchannel("A").histogram()) if count}


# -- crop ------------------------------------------------------------------------------------


def test_crop_finds_the_exact_box_and_leaves_the_input_alone(cli: Runner, workdir: Path) -> None:
    source = bordered(workdir / "sprite.png")
    before = source.read_bytes()
    result = cli("crop", "sprite.png")
    assert result.code == 0, result.stderr
    assert result.stdout == "sprite-cropped.png\n"
    assert "cropped 40x30 to 30x23 (box 3,5,33,28)" in result.stderr
    assert source.read_bytes() == before
    with Image.open(source) as original, Image.open(workdir / "sprite-cropped.png") as cropped:
        assert cropped.size == (30, 23)
        assert cropped.tobytes() == original.crop((3, 5, 33, 28)).tobytes()


def test_crop_transparent_border_and_near_white_within_tolerance(
    cli: Runner, workdir: Path
) -> None:
    # Transparent black is background by its alpha, whatever its colour.
    bordered(workdir / "clear.png", background=(0, 0, 0, 0), mode="RGBA", box=(6, 2, 20, 25))
    # 241 ≥ 250 − 10: background; the 239 line one pixel in is not.
    near = Image.new("RGB", (20, 20), (241, 245, 250))
    near.paste((239, 250, 250), (4, 4, 16, 5))
    near.paste(INK, (4, 5, 16, 12))
    near.save(workdir / "near.png")
    result = cli("-f", "json", "crop", "clear.png", "near.png")
    assert result.code == 0, result.stderr
    files = result.json()["files"]
    assert [f["box"] for f in files] == [[6, 2, 20, 25], [4, 4, 16, 12]]
    assert files[0]["size_after"] == [14, 23]
    with Image.open(workdir / "clear-cropped.png") as cropped:
        assert cropped.mode == "RGBA"
    # Tolerance 0: 241 is no longer background, so nothing is trimmed.
    strict = cli("-f", "json", "crop", "near.png", "--tolerance", "0", "-o", "strict.png")
    assert strict.json()["files"][0]["size_after"] == [20, 20]


def test_preserve_aspect_grows_the_box_centred_and_inside(cli: Runner, workdir: Path) -> None:
    bordered(workdir / "wide.png", size=(100, 50), box=(40, 15, 60, 35))
    bordered(workdir / "edge.png", size=(100, 50), box=(0, 10, 10, 40))
    result = cli("-f", "json", "crop", "--preserve-aspect", "wide.png", "edge.png")
    assert result.code == 0, result.stderr
    boxes = [f["box"] for f in result.json()["files"]]
    # 20x20 grown to 40x20 around its centre; 10x30 grown to 60x30 and pushed inside at x=0.
    assert boxes == [[30, 15, 70, 35], [0, 10, 60, 40]]


def test_thresholds_are_validated_and_an_all_background_image_is_refused(
    cli: Runner, workdir: Path
) -> None:
    bordered(workdir / "grey.png", background=(252, 252, 252))
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(workdir / "blank.png")
    # threshold − tolerance below 0 is 0: every pixel is background (not a wrapped 251).
    result = cli("crop", "grey.png", "blank.png", "--threshold", "5", "--tolerance", "10")
    assert result.code == 1
    assert result.stderr.strip().splitlines() == [
        "grey.png: the whole image is background (alpha < 10 or R, G, B >= 0 everywhere); "
        "nothing to crop",
        "blank.png: the whole image is background (alpha < 10 or R, G, B >= 0 everywhere); "
        "nothing to crop",
    ]
    assert sorted(p.name for p in workdir.iterdir()) == ["blank.png", "grey.png"]
    # 0 is a threshold like any other (the Go tool reads 0 as "use the default").
    zero = cli("-f", "json", "crop", "grey.png", "--threshold", "0", "--tolerance", "0")
    assert zero.json()["error"]["code"] == "file_error"
    assert cli("-f", "json", "crop", "grey.png").json()["files"][0]["box"] == [3, 5, 33, 28]
    for flag, value in (("--threshold", "256"), ("--tolerance", "-1")):
        bad = cli("crop", "grey.png", flag, value)
        assert bad.code == 2
        assert "0<=x<=255" in bad.stderr


def test_crop_handles_16_bit_palette_and_grey_inputs(cli: Runner, workdir: Path) -> None:
    # 16-bit grey: 30000 is mid-grey (117 in 8 bits), content; clipping would call it white.
    deep = Image.new("I", (30, 20), 65535)
    deep.paste(30000, (5, 6, 25, 14))
    deep.convert("I;16").save(workdir / "deep.png")
    palette = Image.new("P", (30, 20), 0)
    palette.putpalette([255, 255, 255, 200, 0, 0] + [0] * 762)
    palette.paste(1, (2, 3, 12, 18))
    palette.save(workdir / "palette.png", transparency=0)
    grey = Image.new("LA", (30, 20), (0, 0))
    grey.paste((90, 255), (10, 1, 29, 2))
    grey.save(workdir / "la.png")
    result = cli("-f", "json", "crop", "deep.png", "palette.png", "la.png")
    assert result.code == 0, result.stderr
    assert [f["box"] for f in result.json()["files"]] == [
        [5, 6, 25, 14],
        [2, 3, 12, 18],
        [10, 1, 29, 2],
    ]
    with Image.open(workdir / "deep-cropped.png") as out:
        assert out.mode.startswith("I")
        assert out.getpixel((0, 0)) == 30000
    with Image.open(workdir / "palette-cropped.png") as out:
        assert out.mode == "P"


def test_no_border_is_written_unchanged_and_outputs_are_not_clobbered(
    cli: Runner, workdir: Path
) -> None:
    full = Image.new("RGB", (16, 16), INK)
    full.save(workdir / "full.jpg", quality=80)
    result = cli("crop", "full.jpg")
    assert result.code == 0, result.stderr
    assert "no border" in result.stderr
    assert (workdir / "full-cropped.jpg").read_bytes() == (workdir / "full.jpg").read_bytes()
    again = cli("crop", "full.jpg")
    assert again.code == 1
    assert again.stderr.strip().splitlines() == [
        "full-cropped.jpg already exists (use --overwrite to replace it)"
    ]
    assert cli("crop", "full.jpg", "--overwrite").code == 0


def test_in_place_is_atomic_and_keeps_the_mode(cli: Runner, workdir: Path) -> None:
    source = bordered(workdir / "keep.png")
    os.chmod(source, 0o640)
    result = cli("crop", "-i", "keep.png")
    assert result.code == 0, result.stderr
    assert result.stdout == "keep.png\n"
    assert stat.S_IMODE(source.stat().st_mode) == 0o640
    with Image.open(source) as image:
        assert image.size == (30, 23)
    assert sorted(p.name for p in workdir.iterdir()) == ["keep.png"]


def test_bad_inputs_fail_one_line_each_and_the_rest_is_done(cli: Runner, workdir: Path) -> None:
    bordered(workdir / "good.png")
    (workdir / "notes.png").write_text("not an image\n")
    whole = bordered(workdir / "whole.png").read_bytes()
    (workdir / "cut.png").write_bytes(whole[: len(whole) // 2])
    (workdir / "blocker").write_text("a file, not a directory")
    result = cli(
        "-f", "json", "crop", "notes.png", "missing.png", "cut.png", "good.png", "whole.png"
    )
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("notes.png: not an image")
    assert lines[1] == "missing.png: no such file"
    assert lines[2].startswith("cut.png: damaged or truncated image")
    document = result.json()
    assert document["ok"] is False
    assert document["error"]["code"] == "partial"
    assert [f["error"] is None for f in document["files"]] == [False, False, False, True, True]
    assert (workdir / "good-cropped.png").exists()
    unwritable = cli("-f", "json", "crop", "good.png", "-o", "blocker/out.png")
    assert unwritable.code == 1
    assert unwritable.stderr.startswith("cannot write blocker/out.png: ")
    assert len(unwritable.stderr.strip().splitlines()) == 1
    assert unwritable.json()["error"]["code"] == "file_error"
    assert not [p for p in workdir.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(cli: Runner, workdir: Path) -> None:
    locked = workdir / "locked"
    locked.mkdir()
    bordered(locked / "a.png")
    locked.chmod(0o555)
    try:
        result = cli("crop", "locked/a.png")
    finally:
        locked.chmod(0o755)
    assert result.code == 1
    assert result.stderr.startswith("cannot write locked/a-cropped.png: Permission denied")


def test_output_usage_errors(cli: Runner, workdir: Path) -> None:
    bordered(workdir / "a.png")
    bordered(workdir / "b.png")
    two = cli("-f", "json", "crop", "a.png", "b.png", "-o", "x.png")
    assert two.code == 2
    assert two.json()["error"]["code"] == "usage_error"
    assert cli("crop", "a.png", "-o", "x.png", "-i").code == 2
    assert not (workdir / "x.png").exists()


# -- downscale -------------------------------------------------------------------------------


def test_downscale_sizes_and_no_upscaling(cli: Runner, workdir: Path) -> None:
    bordered(workdir / "big.png", size=(200, 100), box=(10, 10, 190, 90))
    result = cli("-f", "json", "downscale", "big.png", "-w", "50")
    assert result.code == 0, result.stderr
    assert result.json()["files"][0]["size_after"] == [50, 25]
    with Image.open(workdir / "big_downscaled.png") as out:
        assert out.size == (50, 25)
    exact = cli("-f", "json", "downscale", "big.png", "-w", "60", "-l", "90", "-o", "e.png")
    assert exact.json()["files"][0]["size_after"] == [60, 90]
    tall = cli("-f", "json", "downscale", "big.png", "--height", "10", "-o", "h.png")
    assert tall.json()["files"][0]["size_after"] == [20, 10]
    half = cli("-f", "json", "downscale", "big.png", "-p", "25", "-o", "p.png")
    assert half.json()["files"][0]["size_after"] == [50, 25]
    up = cli("downscale", "big.png", "-w", "400", "-o", "up.png")
    assert up.code == 1
    assert up.stderr.strip() == (
        "big.png: 400x200 is larger than the image (200x100); downscale never enlarges"
    )
    assert not (workdir / "up.png").exists()
    assert cli("downscale", "big.png", "-l", "150", "-o", "up.png").code == 1
    assert cli("downscale", "big.png", "-p", "100").code == 2
    assert cli("downscale", "big.png").code == 2
    assert cli("downscale", "big.png", "-p", "50", "-w", "10").code == 2


def test_lanczos_is_not_nearest_and_alpha_is_kept(cli: Runner, workdir: Path) -> None:
    checker = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    for x in range(64):
        for y in range(64):
            if (x // 3 + y // 3) % 2:
                checker.putpixel((x, y), (250, 20, 20, 255))
    checker.save(workdir / "check.png")
    for name in ("lanczos", "nearest"):
        result = cli("downscale", "check.png", "-w", "20", "--filter", name, "-o", f"{name}.png")
        assert result.code == 0, result.stderr
    with Image.open(workdir / "lanczos.png") as smooth, Image.open(workdir / "nearest.png") as hard:
        assert smooth.mode == hard.mode == "RGBA"
        assert smooth.size == hard.size == (20, 20)
        assert smooth.tobytes() != hard.tobytes()
        expected = checker.resize((20, 20), Image.Resampling.LANCZOS)
        assert smooth.tobytes() == expected.tobytes()
        # Nearest only picks existing pixels; Lanczos blends alpha into partial values.
        assert alphas(hard) <= {0, 255}
        assert alphas(smooth) - {0, 255}


def test_downscale_jpeg_quality_and_in_place(cli: Runner, workdir: Path) -> None:
    photo = Image.new("RGB", (80, 80))
    photo.putdata(
        [((x * 3) % 256, (y * 5) % 256, (x * y) % 256) for y in range(80) for x in range(80)]
    )
    photo.save(workdir / "photo.jpg", quality=95)
    low = cli("downscale", "photo.jpg", "-p", "50", "--quality", "10", "-o", "low.jpg")
    high = cli("downscale", "photo.jpg", "-p", "50", "--quality", "95", "-o", "high.jpg")
    assert low.code == high.code == 0
    assert (workdir / "low.jpg").stat().st_size < (workdir / "high.jpg").stat().st_size
    os.chmod(workdir / "photo.jpg", 0o600)
    assert cli("downscale", "-i", "photo.jpg", "-w", "40").code == 0
    with Image.open(workdir / "photo.jpg") as out:
        assert (out.format, out.size) == ("JPEG", (40, 40))
    assert stat.S_IMODE((workdir / "photo.jpg").stat().st_mode) == 0o600


# -- strip-metadata --------------------------------------------------------------------------


def tagged_png(path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", json.dumps({"sui_image_params": {"prompt": "secret cat"}}))
    info.add_text("Comment", "long " * 200, zip=True)
    info.add_itxt("Author", "someone", lang="en")
    image = Image.new("RGB", (12, 9))
    image.putdata([(i * 2, 255 - i * 2, i) for i in range(108)])
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(path, pnginfo=info, exif=exif, icc_profile=icc)
    # Pillow writes no gAMA/cHRM/tIME itself; put them in by hand, before IDAT.
    chunks = images.png_chunks(path.read_bytes())
    extra = [
        (b"gAMA", struct.pack(">I", 45455)),
        (b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)),
        (b"tIME", struct.pack(">HBBBBB", 2026, 12, 1, 19, 0, 0)),
    ]
    path.write_bytes(images._png_bytes(chunks[:1] + extra + chunks[1:]))
    return path


def test_strip_png_removes_metadata_and_keeps_colour_and_pixels(cli: Runner, workdir: Path) -> None:
    source = tagged_png(workdir / "out.png")
    before = chunk_types(source)
    assert {"tEXt", "zTXt", "iTXt", "tIME", "eXIf", "iCCP", "gAMA", "cHRM"} <= set(before)
    idat_before = [b for k, b in images.png_chunks(source.read_bytes()) if k == b"IDAT"]
    pixels_before = pixels(source)
    os.chmod(source, 0o604)
    result = cli("strip-metadata", "out.png")
    assert result.code == 0, result.stderr
    assert result.stderr.strip() == (
        "out.png: removed tIME, tEXt parameters, zTXt Comment, iTXt Author, eXIf"
    )
    after = chunk_types(source)
    assert not {"tEXt", "zTXt", "iTXt", "tIME", "eXIf"} & set(after)
    assert [c for c in before if c not in {"tEXt", "zTXt", "iTXt", "tIME", "eXIf"}] == after
    assert [b for k, b in images.png_chunks(source.read_bytes()) if k == b"IDAT"] == idat_before
    assert pixels(source) == pixels_before
    assert b"secret cat" not in source.read_bytes()
    assert stat.S_IMODE(source.stat().st_mode) == 0o604
    again = cli("-f", "json", "strip-metadata", "out.png")
    assert again.json()["files"][0]["removed"] == []


def test_strip_jpeg_keeps_icc_and_scan_data(cli: Runner, workdir: Path) -> None:
    image = Image.new("RGB", (16, 16))
    image.putdata([(x * 16, y * 16, 128) for y in range(16) for x in range(16)])
    exif = Image.Exif()
    exif[0x0131] = "SwarmUI"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(workdir / "p.jpg", exif=exif, comment=b"prompt: a cat", icc_profile=icc)
    original = (workdir / "p.jpg").read_bytes()
    result = cli("-f", "json", "strip-metadata", "p.jpg", "-o", "clean.jpg")
    assert result.code == 0, result.stderr
    assert result.json()["files"][0]["removed"] == ["EXIF", "comment"]
    clean = (workdir / "clean.jpg").read_bytes()
    assert (workdir / "p.jpg").read_bytes() == original
    assert b"Exif\x00" not in clean and b"prompt: a cat" not in clean
    assert b"ICC_PROFILE\x00" in clean
    # The entropy-coded scan is copied byte for byte.
    assert original[original.rindex(b"\xff\xda") :] == clean[clean.rindex(b"\xff\xda") :]
    assert pixels(workdir / "clean.jpg") == pixels(workdir / "p.jpg")


def test_strip_bad_inputs(cli: Runner, workdir: Path) -> None:
    whole = tagged_png(workdir / "t.png").read_bytes()
    (workdir / "cut.png").write_bytes(whole[:-20])
    Image.new("RGB", (4, 4)).save(workdir / "x.gif")
    result = cli("strip-metadata", "cut.png", "x.gif", "t.png")
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("cut.png: truncated PNG")
    assert lines[1] == "x.gif: not a PNG, JPEG or WebP image (strip-metadata handles only those)"
    assert lines[2].startswith("t.png: removed tIME, tEXt parameters")
    assert (workdir / "cut.png").read_bytes() == whole[:-20]


def test_crop_keeps_text_metadata_unless_asked(cli: Runner, workdir: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", '{"seed": 5}')
    canvas = Image.new("RGB", (20, 20), WHITE)
    canvas.paste(INK, (4, 4, 10, 12))
    canvas.save(workdir / "b.png", pnginfo=info)
    assert cli("crop", "b.png").code == 0
    with Image.open(workdir / "b-cropped.png") as kept:
        assert (kept.size, kept.text) == ((6, 8), {"parameters": '{"seed": 5}'})
    assert cli("crop", "b.png", "--strip-metadata", "--overwrite").code == 0
    assert "tEXt" not in chunk_types(workdir / "b-cropped.png")


# -- convert svg -----------------------------------------------------------------------------


def test_convert_svg_is_xml_with_the_source_size(cli: Runner, workdir: Path) -> None:
    logo = Image.new("RGB", (48, 32), WHITE)
    logo.paste((200, 0, 0), (8, 8, 40, 24))
    logo.save(workdir / "logo.png")
    for method in ("color", "binary", "gotrace"):
        result = cli("convert", "svg", "logo.png", "--method", method, "-o", f"{method}.svg")
        assert result.code == 0, result.stderr
        root = ElementTree.parse(workdir / f"{method}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert (root.get("width"), root.get("height")) == ("48", "32")
        assert root.get("viewBox") == "0 0 48 32"
        # A red shape is traced in binary mode too (the Go tool's gotrace lost it).
        assert root.findall("{http://www.w3.org/2000/svg}path"), method
    default = cli("-f", "json", "convert", "svg", "logo.png")
    assert default.json() == {
        "ok": True,
        "input": "logo.png",
        "output": "logo.svg",
        "method": "color",
        "size": [48, 32],
    }


def test_convert_svg_refuses_primitive_and_missing_tracer(cli: Runner, workdir: Path) -> None:
    Image.new("RGB", (8, 8), INK).save(workdir / "a.png")
    primitive = cli("-f", "json", "convert", "svg", "a.png", "--method", "primitive")
    assert primitive.code == 2
    message = primitive.json()["error"]["message"]
    assert primitive.json()["error"]["code"] == "usage_error"
    assert "color, binary" in message
    go_knob = cli("convert", "svg", "a.png", "--shapes", "100")
    assert go_knob.code == 2
    assert "--shapes belongs to the Go tool's primitive method" in go_knob.stderr
    hidden = workdir / "hide"
    hidden.mkdir()
    (hidden / "vtracer.py").write_text("raise ImportError('hidden by the test')\n")
    result = cli("-f", "json", "convert", "svg", "a.png", env={"PYTHONPATH": str(hidden)})
    assert result.code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("convert svg needs the vtracer tracer (the svg extra): ")
    assert_install_hint(line, "svg")
    assert result.json()["error"]["code"] == "unavailable"
    assert not (workdir / "a.svg").exists()
    missing = cli("convert", "svg", "nope.png")
    assert (missing.code, missing.stderr.strip()) == (1, "nope.png: no such file")


# -- pure functions --------------------------------------------------------------------------


def test_content_box_rule_on_pixels() -> None:
    image = Image.new("RGBA", (10, 10), (255, 255, 255, 255))
    image.putpixel((2, 3), (0, 0, 0, 9))  # alpha below 10: background
    image.putpixel((7, 8), (239, 255, 255, 255))  # one channel below 240: content
    assert images.content_box(image, images.CropOptions()) == (7, 8, 8, 9)
    assert images.content_box(Image.new("L", (5, 5), 255), images.CropOptions()) is None


def test_atomic_write_never_replaces_without_permission(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    target = tmp_path / "d" / "t.bin"
    images.write_atomic(target, b"one", replace=False)
    with pytest.raises(images.ImageError, match="already exists"):
        images.write_atomic(target, b"two", replace=False)
    assert target.read_bytes() == b"one"
    images.write_atomic(target, b"two", replace=True, mode=0o600)
    assert (target.read_bytes(), stat.S_IMODE(target.stat().st_mode)) == (b"two", 0o600)
    assert [p.name for p in target.parent.iterdir()] == ["t.bin"]


def test_png_chunk_parser_rejects_bad_checksums() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[20] ^= 0xFF  # inside IHDR
    with pytest.raises(ValueError, match="bad checksum"):
        images.png_chunks(bytes(data))


@given(
    size=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    data=st.data(),
)
def test_grown_box_holds_the_content_stays_inside_and_takes_the_aspect(
    size: tuple[int, int], data: st.DataObject
) -> None:
    width, height = size
    left = data.draw(st.integers(0, width - 1))
    top = data.draw(st.integers(0, height - 1))
    right = data.draw(st.integers(left + 1, width))
    bottom = data.draw(st.integers(top + 1, height))
    grown = images.grow_to_aspect((left, top, right, bottom), size)
    g_left, g_top, g_right, g_bottom = grown
    assert 0 <= g_left <= left and 0 <= g_top <= top
    assert right <= g_right <= width and bottom <= g_bottom <= height
    g_width, g_height = g_right - g_left, g_bottom - g_top
    # Only one side grows, and to the source's ratio within a pixel of rounding (or the edge).
    assert g_width == right - left or g_height == bottom - top
    assert abs(g_width * height - g_height * width) <= max(width, height) or (
        g_width == width or g_height == height
    )


@given(
    size=st.tuples(st.integers(1, 5000), st.integers(1, 5000)),
    width=st.integers(1, 5000),
    percentage=st.floats(0.01, 99.99),
)
def test_target_size_never_enlarges(size: tuple[int, int], width: int, percentage: float) -> None:
    for options in (
        images.DownscaleOptions(width=width),
        images.DownscaleOptions(percentage=percentage),
    ):
        try:
            new = images.target_size(size, options)
        except images.ImageError:
            continue
        assert 1 <= new[0] <= size[0] and 1 <= new[1] <= size[1]


def test_quiet_svg_overwrite_and_config_validation(cli: Runner, workdir: Path) -> None:
    bordered(workdir / "a.png")
    quiet = cli("crop", "a.png", "-q")
    assert (quiet.code, quiet.stdout, quiet.stderr) == (0, "a-cropped.png\n", "")
    assert cli("convert", "svg", "a.png").code == 0
    again = cli("convert", "svg", "a.png")
    assert (again.code, again.stderr.strip()) == (
        1,
        "a.svg already exists (use --overwrite to replace it)",
    )
    assert cli("convert", "svg", "a.png", "--overwrite").code == 0
    bad = cli("config", "set", "generate.auto_crop_threshold", "300")
    assert bad.code == 2
    assert "generate.auto_crop_threshold" in bad.stderr
    assert cli("config", "set", "generate.downscale_percentage", "100").code == 2
    assert cli("config", "set", "generate.downscale_filter", "lanczos").code == 0


def test_strip_webp_drops_exif_and_xmp_and_keeps_icc(cli: Runner, workdir: Path) -> None:
    image = Image.new("RGBA", (10, 10), (10, 200, 30, 128))
    exif = Image.Exif()
    exif[0x0131] = "SwarmUI"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">prompt: a cat</x:xmpmeta>'
    image.save(workdir / "w.webp", lossless=True, exif=exif, icc_profile=icc, xmp=xmp)
    before = pixels(workdir / "w.webp")
    result = cli("-f", "json", "strip-metadata", "w.webp")
    assert result.code == 0, result.stderr
    assert sorted(result.json()["files"][0]["removed"]) == ["EXIF", "XMP"]
    data = (workdir / "w.webp").read_bytes()
    assert b"SwarmUI" not in data and b"prompt: a cat" not in data
    with Image.open(workdir / "w.webp") as clean:
        assert clean.info.get("icc_profile") == icc
        assert "exif" not in clean.info
    assert pixels(workdir / "w.webp") == before


def test_a_new_output_is_no_more_readable_than_its_input(cli: Runner, workdir: Path) -> None:
    source = bordered(workdir / "private.png")
    os.chmod(source, 0o600)
    assert cli("crop", "private.png").code == 0
    assert stat.S_IMODE((workdir / "private-cropped.png").stat().st_mode) == 0o600


def test_in_place_through_a_symlink_replaces_the_file_it_points_to(
    cli: Runner, workdir: Path
) -> None:
    real = tagged_png(workdir / "real.png")
    (workdir / "link.png").symlink_to("real.png")
    assert cli("strip-metadata", "link.png").code == 0
    assert (workdir / "link.png").is_symlink()
    assert "tEXt" not in chunk_types(real)
    stamp = real.stat().st_mtime_ns
    assert cli("strip-metadata", "real.png").stderr.strip() == "real.png: no metadata found"
    assert real.stat().st_mtime_ns == stamp


def camera_jpeg(path: Path) -> Path:
    """A portrait photo as a camera stores it: landscape pixels, Orientation 6, GPS, Make."""
    image = Image.new("RGB", (24, 16), WHITE)
    image.paste(INK, (2, 2, 12, 14))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "PhoneMaker"
    exif[0x0110] = "Phone 12"
    exif.get_ifd(0x8825)[2] = (52.0, 22.0, 8.0)  # GPSLatitude
    image.save(path, exif=exif, quality=95)
    return path


def exif_of(path: Path) -> dict[int, object]:
    with Image.open(path) as image:
        exif = image.getexif()
        return {**exif, **({"gps": dict(exif.get_ifd(0x8825))} if exif.get_ifd(0x8825) else {})}


def test_stripping_a_camera_photo_keeps_its_orientation_only(cli: Runner, workdir: Path) -> None:
    camera_jpeg(workdir / "photo.jpg")
    assert set(exif_of(workdir / "photo.jpg")) == {0x0112, 0x010F, 0x0110, 0x8825, "gps"}
    with Image.open(workdir / "photo.jpg") as image:
        upright = ImageOps.exif_transpose(image).convert("RGB").tobytes()

    result = cli("-f", "json", "strip-metadata", "photo.jpg", "-o", "clean.jpg")
    assert result.code == 0, result.stderr
    assert result.json()["files"][0]["removed"] == ["EXIF (Orientation kept)"]
    assert exif_of(workdir / "clean.jpg") == {0x0112: 6}
    clean = (workdir / "clean.jpg").read_bytes()
    assert b"PhoneMaker" not in clean and b"Phone 12" not in clean
    with Image.open(workdir / "clean.jpg") as image:
        assert ImageOps.exif_transpose(image).convert("RGB").tobytes() == upright
    # Nothing left to strip: the second run removes nothing and changes nothing.
    again = cli("-f", "json", "strip-metadata", "clean.jpg")
    assert again.json()["files"][0]["removed"] == []
    assert (workdir / "clean.jpg").read_bytes() == clean

    # crop and downscale re-encode: the same rule for their --strip-metadata.
    for args, output in (
        (["crop", "photo.jpg", "--strip-metadata"], "photo-cropped.jpg"),
        (["downscale", "photo.jpg", "-w", "12", "--strip-metadata"], "photo_downscaled.jpg"),
    ):
        done = cli(*args)
        assert done.code == 0, done.stderr
        assert exif_of(workdir / output) == {0x0112: 6}, args
    with Image.open(workdir / "photo-cropped.jpg") as cropped:
        assert cropped.size == (10, 12)
        assert ImageOps.exif_transpose(cropped).size == (12, 10)
    # Without --strip-metadata every tag stays, as before.
    assert cli("crop", "photo.jpg", "-o", "kept.jpg").code == 0
    assert set(exif_of(workdir / "kept.jpg")) == {0x0112, 0x010F, 0x0110, 0x8825, "gps"}


def test_orientation_survives_stripping_png_and_webp_too(cli: Runner, workdir: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    exif[0x0131] = "SwarmUI"
    image = Image.new("RGB", (10, 6), INK)
    image.save(workdir / "o.png", exif=exif)
    image.save(workdir / "o.webp", lossless=True, exif=exif)
    result = cli("-f", "json", "strip-metadata", "o.png", "o.webp")
    assert result.code == 0, result.stderr
    assert [f["removed"] for f in result.json()["files"]] == [
        ["eXIf (Orientation kept)"],
        ["EXIF (Orientation kept)"],
    ]
    for name in ("o.png", "o.webp"):
        assert exif_of(workdir / name) == {0x0112: 8}, name
        assert b"SwarmUI" not in (workdir / name).read_bytes()
    # An EXIF without an Orientation worth keeping goes whole, as before.
    plain = Image.Exif()
    plain[0x0112] = 1
    plain[0x0131] = "SwarmUI"
    image.save(workdir / "p.jpg", exif=plain)
    assert cli("-f", "json", "strip-metadata", "p.jpg").json()["files"][0]["removed"] == ["EXIF"]
    assert b"Exif\x00" not in (workdir / "p.jpg").read_bytes()


def test_downscale_sizes_a_camera_photo_as_it_is_seen(cli: Runner, workdir: Path) -> None:
    # Stored 24x16 with Orientation 6: every viewer shows it 16 wide and 24 tall.
    camera_jpeg(workdir / "photo.jpg")
    result = cli("-f", "json", "downscale", "photo.jpg", "-w", "8")
    assert result.code == 0, result.stderr
    with Image.open(workdir / "photo_downscaled.jpg") as out:
        assert ImageOps.exif_transpose(out).size == (8, 12)
        assert out.getexif()[0x0112] == 6
    # The no-upscaling rule measures the same sides: 20 is wider than the 16 one sees.
    wide = cli("downscale", "photo.jpg", "-w", "20", "-o", "wide.jpg")
    assert wide.code == 1
    assert "20x30 is larger than the image (16x24)" in wide.stderr
    assert not (workdir / "wide.jpg").exists()


def test_an_animated_image_is_refused_not_cut_to_its_first_frame(
    cli: Runner, workdir: Path
) -> None:
    frames = [Image.new("RGB", (30, 20), WHITE) for _ in range(3)]
    for step, frame in enumerate(frames):
        frame.paste(INK, (4 + step * 4, 4, 14 + step * 4, 14))
    frames[0].save(workdir / "walk.gif", save_all=True, append_images=frames[1:], loop=0)
    frames[0].save(workdir / "walk.webp", save_all=True, append_images=frames[1:], lossless=True)
    bordered(workdir / "still.png")
    for args in (["crop"], ["downscale", "-p", "50"]):
        result = cli("-f", "json", *args, "walk.gif", "walk.webp", "still.png", "--overwrite")
        assert result.code == 1, args
        errors = [f["error"] for f in result.json()["files"]]
        assert (
            errors[0] == "walk.gif: an animated image (3 frames); crop and downscale "
            "handle still images only"
        )
        assert errors[1].startswith("walk.webp: an animated image (3 frames)")
        assert errors[2] is None
    assert sorted(path.name for path in workdir.iterdir()) == [
        "still-cropped.png",
        "still.png",
        "still_downscaled.png",
        "walk.gif",
        "walk.webp",
    ]


def deep_png(path: Path, colour_type: int = 2, size: tuple[int, int] = (20, 12)) -> Path:
    """A PNG at 16 bits per channel (colour type 2 RGB, 6 RGBA), written by hand: Pillow
    cannot write one."""
    channels = {2: 3, 6: 4}[colour_type]
    width, height = size
    rows = []
    for y in range(height):
        border = y < 2 or y >= height - 2
        row = b"".join(
            struct.pack(
                f">{channels}H",
                *(
                    [65535] * channels
                    if border or x < 2
                    else [x * 3000, y * 5000, 9999, 65535][:channels]
                ),
            )
            for x in range(width)
        )
        rows.append(b"\x00" + row)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    chunks = [(b"IHDR", header), (b"IDAT", zlib.compress(b"".join(rows))), (b"IEND", b"")]
    path.write_bytes(images._png_bytes(chunks))
    return path


def test_16_bit_colour_written_as_8_bit_is_said_per_file(cli: Runner, workdir: Path) -> None:
    deep_png(workdir / "rgb16.png")
    deep_png(workdir / "rgba16.png", colour_type=6)
    bordered(workdir / "plain.png")
    result = cli("downscale", "rgb16.png", "rgba16.png", "plain.png", "-w", "10")
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {name}_downscaled.png: written with 8 bits per channel; {name}.png has 16 "
        "(Pillow reads 16-bit colour as 8-bit)"
        for name in ("rgb16", "rgba16")
    ]
    assert (workdir / "rgb16_downscaled.png").read_bytes()[24] == 8  # IHDR bit depth
    crop = cli("-f", "json", "crop", "rgb16.png")
    assert crop.code == 0, crop.stderr
    (document,) = crop.json()["files"]
    assert document["box"] == [2, 2, 20, 10]
    assert document["warnings"] == [
        "rgb16-cropped.png: written with 8 bits per channel; rgb16.png has 16 "
        "(Pillow reads 16-bit colour as 8-bit)"
    ]
    assert "rgb16-cropped.png: written with 8 bits" in crop.stderr
    # Nothing re-encoded, nothing lost, nothing said: strip-metadata copies the data as is.
    stripped = cli("-f", "json", "strip-metadata", "rgb16.png")
    assert stripped.json()["files"][0]["warnings"] == []
    assert (workdir / "rgb16.png").read_bytes()[24] == 16
