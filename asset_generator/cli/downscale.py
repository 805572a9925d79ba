"""``downscale``: shrink images with a real filter, never enlarging them (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App
from asset_generator.cli.postprocess import (
    FILTER,
    PERCENT,
    SIDE,
    check_outputs,
    complete_files,
    file_output_options,
    output_for,
    run_each,
    size_text,
)

if TYPE_CHECKING:
    from asset_generator.images import Result


@click.command("downscale")
@click.argument("files", nargs=-1, required=True, metavar="FILE...", shell_complete=complete_files)
@click.option(
    "-w", "--width", type=SIDE, metavar="W", help="Target width (alone: aspect ratio kept)."
)
@click.option(
    "-l", "--height", type=SIDE, metavar="H", help="Target height (alone: aspect ratio kept)."
)
@click.option(
    "-p", "--percentage", type=PERCENT, metavar="PERCENT", help="Scale both sides (0 < p < 100)."
)
@click.option(
    "--filter",
    "filter_name",
    type=FILTER,
    default="lanczos",
    show_default=True,
    help="Resampling filter; lanczos is a true Lanczos.",
)
@file_output_options("-o", "--output-file", "output")
@global_options
@click.pass_obj
def command(
    app: App,
    files: tuple[str, ...],
    width: int | None,
    height: int | None,
    percentage: float | None,
    filter_name: str,
    quality: int,
    strip_metadata: bool,
    output: str | None,
    in_place: bool,
    overwrite: bool,
) -> int:
    """Shrink images to a width, a height, both, or a percentage.

    One side keeps the aspect ratio; both are exact. A target larger than an image is
    refused for that image (no upscaling). Writes NAME_downscaled.EXT beside each input
    unless -o or -i.

    Example: asset-generator downscale tile.png -w 256 --filter lanczos
    """
    from asset_generator.images import DownscaleOptions, downscale_file

    if percentage is not None and (width or height):
        raise click.UsageError("-p/--percentage cannot be combined with -w/--width or -l/--height")
    if percentage is None and not (width or height):
        raise click.UsageError("give -w/--width, -l/--height or -p/--percentage")
    check_outputs(files, output, in_place)
    options = DownscaleOptions(width, height, percentage, filter_name.lower())

    def work(source: Path) -> Result:
        target = output_for(source, output, in_place, "_downscaled")
        return downscale_file(
            source,
            target,
            options,
            quality=quality,
            strip_metadata=strip_metadata,
            overwrite=overwrite,
        )

    def describe(result: Result) -> str:
        return (
            f"{result.input}: {size_text(result.size_before)} to "
            f"{size_text(result.size_after)} ({options.filter})"
        )

    return run_each(app, files, work, describe)
