"""Black-box checks of the image commands against cli-contract §5, found in acceptance review.

Each test here failed before its fix.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Runner
from PIL import Image

from asset_generator.emulator import Emulator


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
