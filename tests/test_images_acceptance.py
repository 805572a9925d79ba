"""Black-box checks of the image commands against cli-contract §5, found in acceptance review.

Each test here failed before its fix: an input replaced without -i, file names that Tab did
not complete, strip-metadata refusing -i, a second post-processing failure left unnamed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Runner
from conftest import run_prefixed as run
from PIL import Image

from asset_generator.emulator import Emulator

WHITE = (255, 255, 255)
# Runs the program and reports, even on SystemExit (completion), the modules it imported.
IMPORT_PROBE = """
import sys
from asset_generator.cli import main
try:
    main()
finally:
    print("LOADED", ",".join(sorted(sys.modules)), file=sys.stderr)
"""
IMAGE_LIBRARIES = {"PIL", "vtracer"}


def imported(*args: str, env: dict[str, str] | None = None) -> tuple[str, set[str]]:
    """stdout of a run, and the modules it imported."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    line = [x for x in done.stderr.splitlines() if x.startswith("LOADED ")][-1]
    return done.stdout, set(line.removeprefix("LOADED ").split(","))


def bordered(path: Path) -> Path:
    """A 40x30 white image with a dark block at (3, 5)-(33, 28)."""
    image = Image.new("RGB", (40, 30), WHITE)
    image.paste((20, 40, 60), (3, 5, 33, 28))
    image.save(path)
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("crop", "a.png", "-o", "a.png"),
        ("crop", "a.png", "-o", "./a.png", "--overwrite"),
        ("crop", "a.png", "-o", "hard.png", "--overwrite"),
        ("downscale", "a.png", "-w", "10", "--output-file", "a.png", "--overwrite"),
        ("convert", "svg", "a.png", "-o", "a.png", "--overwrite"),
        ("convert", "svg", "a.svg", "--overwrite"),
    ],
)
def test_o_naming_the_input_never_replaces_it(
    cli: Runner, workdir: Path, args: tuple[str, ...]
) -> None:
    source = bordered(workdir / "a.png")
    (workdir / "hard.png").hardlink_to(source)
    if "a.svg" in args:
        source = workdir / "a.svg"
        source.write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    before = source.read_bytes()
    result = cli("-f", "json", *args)
    assert result.code == 2
    assert result.json()["error"]["code"] == "usage_error"
    assert "use -i" in result.stderr or "give another with -o" in result.stderr
    assert source.read_bytes() == before


def test_an_output_that_links_to_the_input_is_an_existing_output(
    cli: Runner, workdir: Path
) -> None:
    source = bordered(workdir / "a.png")
    before = source.read_bytes()
    (workdir / "a-cropped.png").symlink_to("a.png")
    refused = cli("crop", "a.png")
    assert refused.code == 1
    assert refused.stderr.strip() == "a-cropped.png already exists (use --overwrite to replace it)"
    assert source.read_bytes() == before
    # --overwrite replaces the output name, never the file it happened to point to.
    replaced = cli("crop", "a.png", "--overwrite")
    assert replaced.code == 0, replaced.stderr
    assert source.read_bytes() == before
    assert not (workdir / "a-cropped.png").is_symlink()
    with Image.open(workdir / "a-cropped.png") as image:
        assert image.size == (30, 23)


@pytest.mark.parametrize(
    "words",
    [
        "asset-generator crop spr",
        "asset-generator crop a.png -o spr",
        "asset-generator downscale -w 8 spr",
        "asset-generator downscale a.png --output-file spr",
        "asset-generator strip-metadata spr",
        "asset-generator convert svg spr",
        "asset-generator convert svg a.png -o spr",
    ],
)
def test_file_arguments_complete_file_names(cli: Runner, words: str) -> None:
    env = {
        "_ASSET_GENERATOR_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    result = cli(env=env)
    assert result.code == 0, result.stderr
    # click's bash script turns a "file" item into the shell's own file-name completion.
    assert result.stdout.splitlines() == ["file,spr"]


def test_strip_metadata_takes_i_and_an_o_naming_the_input(cli: Runner, workdir: Path) -> None:
    from PIL import PngImagePlugin

    def tagged(name: str) -> Path:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "a secret prompt")
        path = workdir / name
        Image.new("RGB", (4, 4), (1, 2, 3)).save(path, pnginfo=info)
        return path

    first, second = tagged("a.png"), tagged("b.png")
    result = cli("strip-metadata", "-i", "a.png")
    assert result.code == 0, result.stderr
    assert result.stdout == "a.png\n"
    assert result.stderr == "a.png: removed tEXt parameters\n"
    with Image.open(first) as image:
        assert image.text == {}
    # -o naming the file itself is the default in-place strip, not an "already exists".
    same = cli("strip-metadata", "b.png", "-o", "./b.png")
    assert same.code == 0, same.stderr
    with Image.open(second) as image:
        assert image.text == {}
    assert cli("strip-metadata", "-i", "a.png", "-o", "c.png").code == 2
    assert not (workdir / "c.png").exists()


def test_every_image_that_post_processing_failed_is_named(
    cli: Runner, emulator: Emulator, workdir: Path
) -> None:
    result = cli(
        "generate", "image", "--prompt", "two", "--images", "2", "--downscale-width", "1000"
    )
    assert result.code == 1
    saved = result.stdout.split()
    assert len(saved) == 2
    failures = [x for x in result.stderr.splitlines() if x.startswith("post-processing failed:")]
    assert len(failures) == 2
    for path, line in zip(sorted(saved), sorted(failures), strict=True):
        assert path in line
        assert line.endswith("the full-size file is kept")
        with Image.open(workdir / path) as image:
            assert image.size == (64, 64)
    assert result.stderr.splitlines()[-1] in failures


def test_no_download_says_that_nothing_is_post_processed(
    cli: Runner, emulator: Emulator, workdir: Path
) -> None:
    result = cli("generate", "image", "--prompt", "x", "--no-download", "--auto-crop")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("View/")
    assert "--no-download saves no file, so no image is post-processed" in result.stderr
    assert list(workdir.iterdir()) == []
    plain = cli("generate", "image", "--prompt", "x", "--no-download")
    assert "post-processed" not in plain.stderr


def test_help_and_file_completion_of_every_image_command_skip_pillow() -> None:
    for args in (["downscale", "--help"], ["strip-metadata", "--help"], ["convert", "--help"]):
        assert not imported(*args)[1] & IMAGE_LIBRARIES, args
    env = {
        "_ASSET_GENERATOR_COMPLETE": "bash_complete",
        "COMP_WORDS": "asset-generator downscale -w 8 spr",
        "COMP_CWORD": "4",
    }
    stdout, modules = imported(env=env)
    assert stdout.splitlines() == ["file,spr"]
    assert not modules & IMAGE_LIBRARIES


def test_json_input_is_the_name_as_typed(cli: Runner, workdir: Path) -> None:
    bordered(workdir / "a.png")
    (workdir / "sub").mkdir()
    bordered(workdir / "sub" / "b.png")
    result = cli("-f", "json", "crop", "./a.png", "sub//b.png", "./missing.png")
    assert result.code == 1
    document = result.json()
    assert document["error"]["code"] == "partial"
    assert [f["input"] for f in document["files"]] == ["./a.png", "sub//b.png", "./missing.png"]
    assert [f["output"] for f in document["files"]] == ["a-cropped.png", "sub/b-cropped.png", None]
    assert set(document["files"][0]) >= {
        "input",
        "output",
        "box",
        "size_before",
        "size_after",
        "error",
    }


def test_convert_svg_method_completes_its_names(cli: Runner) -> None:
    env = {
        "_ASSET_GENERATOR_COMPLETE": "bash_complete",
        "COMP_WORDS": "asset-generator convert svg a.png --method ",
        "COMP_CWORD": "5",
    }
    assert cli(env=env).stdout.splitlines() == ["plain,color", "plain,binary"]


def test_unwritable_directory_and_unreadable_input_fail_one_line_each(
    cli: Runner,
    workdir: Path,
    obeying_permissions: list[str],
) -> None:
    locked = workdir / "locked"
    locked.mkdir()
    bordered(locked / "a.png")
    bordered(workdir / "b.png")
    secret = bordered(workdir / "secret.png")
    secret.chmod(0)
    locked.chmod(0o500)
    try:
        batch = run(cli, obeying_permissions, "crop", "locked/a.png", "secret.png", "b.png")
        in_place = run(cli, obeying_permissions, "crop", "-i", "locked/a.png")
    finally:
        locked.chmod(0o700)
        secret.chmod(0o600)
    assert batch.code == 1
    assert batch.stdout == "b-cropped.png\n"
    assert batch.stderr.splitlines() == [
        "cannot write locked/a-cropped.png: Permission denied",
        "secret.png: Permission denied",
        "b.png: cropped 40x30 to 30x23 (box 3,5,33,28)",
    ]
    # The name as typed, not the resolved absolute path.
    assert in_place.code == 1
    assert in_place.stderr == "cannot write locked/a.png: Permission denied\n"
    assert sorted(p.name for p in locked.iterdir()) == ["a.png"]


def test_strip_metadata_json_gives_the_size_it_kept(cli: Runner, workdir: Path) -> None:
    Image.new("RGB", (7, 5), (1, 2, 3)).save(workdir / "a.png")
    document = cli("-f", "json", "strip-metadata", "a.png").json()
    [entry] = document["files"]
    assert entry["size_before"] == entry["size_after"] == [7, 5]
    assert entry["box"] is None
    assert entry["removed"] == []
