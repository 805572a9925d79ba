"""``strip-metadata``: remove the prompt, parameters and EXIF embedded in images (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App
from asset_generator.cli.postprocess import check_outputs, complete_files, run_each, same_file

if TYPE_CHECKING:
    from asset_generator.images import Result


@click.command("strip-metadata")
@click.argument("files", nargs=-1, required=True, metavar="FILE...", shell_complete=complete_files)
@click.option(
    "-o",
    "--output",
    metavar="OUT",
    shell_complete=complete_files,
    help="Write here instead (one input only).",
)
# In place is already the default; -i is accepted so crop's and downscale's habit works here.
@click.option("-i", "--in-place", is_flag=True, help="Replace each input (the default).")
@click.option("--overwrite", is_flag=True, help="With -o: replace an existing file.")
@global_options
@click.pass_obj
def command(
    app: App, files: tuple[str, ...], output: str | None, in_place: bool, overwrite: bool
) -> int:
    """Remove embedded metadata from PNG, JPEG and WebP images, in place.

    PNG tEXt/zTXt/iTXt/tIME/eXIf chunks (SwarmUI writes its parameters there), JPEG
    EXIF/XMP/IPTC/comments and WebP EXIF/XMP go, except an EXIF Orientation, so a
    camera photo still displays upright; colour profiles (iCCP, sRGB, gAMA, cHRM, ICC)
    stay and the image data is copied byte for byte. Each file's removals go to stderr.

    Example: asset-generator strip-metadata out/*.png
    """
    from asset_generator.images import strip_file

    # -o naming the input is what no -o does anyway: replace it atomically.
    check_outputs(files, output, in_place, guard_input=False)

    def work(source: Path) -> Result:
        if output is None or same_file(source, output):
            return strip_file(source, source, overwrite=True)
        return strip_file(source, Path(output), overwrite=overwrite)

    def describe(result: Result) -> str:
        if not result.removed:
            return f"{result.input}: no metadata found"
        return f"{result.input}: removed {', '.join(result.removed)}"

    return run_each(app, files, work, describe)
