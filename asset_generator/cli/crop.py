"""``crop``: trim near-white or transparent borders off images (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App
from asset_generator.cli.postprocess import (
    CHANNEL,
    check_outputs,
    complete_files,
    file_output_options,
    output_for,
    run_each,
    size_text,
)

if TYPE_CHECKING:
    from asset_generator.images import Result


@click.command("crop")
@click.argument("files", nargs=-1, required=True, metavar="FILE...", shell_complete=complete_files)
@click.option(
    "--threshold",
    type=CHANNEL,
    metavar="0-255",
    default=250,
    show_default=True,
    help="A pixel whose R, G and B are all at least threshold − tolerance is background.",
)
@click.option(
    "--tolerance",
    type=CHANNEL,
    metavar="0-255",
    default=10,
    show_default=True,
    help="How far below the threshold still counts as background.",
)
@click.option(
    "--preserve-aspect", is_flag=True, help="Grow the box back, centred, to the image's aspect."
)
@file_output_options("-o", "--output")
@global_options
@click.pass_obj
def command(
    app: App,
    files: tuple[str, ...],
    threshold: int,
    tolerance: int,
    preserve_aspect: bool,
    quality: int,
    strip_metadata: bool,
    output: str | None,
    in_place: bool,
    overwrite: bool,
) -> int:
    """Trim near-white or transparent borders off images.

    A pixel is background when its alpha is below 10 or each of R, G, B is at least
    threshold − tolerance. Writes NAME-cropped.EXT beside each input unless -o or -i;
    an input is never changed without -i. An image without a border is written unchanged.

    Example: asset-generator crop sprite.png --tolerance 20 --preserve-aspect
    """
    from asset_generator.images import CropOptions, crop_file

    check_outputs(files, output, in_place)
    options = CropOptions(threshold, tolerance, preserve_aspect)

    def work(source: Path) -> Result:
        target = output_for(source, output, in_place, "-cropped")
        return crop_file(
            source,
            target,
            options,
            quality=quality,
            strip_metadata=strip_metadata,
            overwrite=overwrite,
        )

    def describe(result: Result) -> str:
        if result.size_before == result.size_after:
            return f"{result.input}: no border to trim, written unchanged"
        box = ",".join(str(v) for v in result.box)
        return (
            f"{result.input}: cropped {size_text(result.size_before)} to "
            f"{size_text(result.size_after)} (box {box})"
        )

    return run_each(app, files, work, describe)
