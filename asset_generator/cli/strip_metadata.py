"""``strip-metadata``: remove the prompt, parameters and EXIF embedded in images (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App
from asset_generator.cli.postprocess import check_outputs, run_each

if TYPE_CHECKING:
    from asset_generator.images import Result


@click.command("strip-metadata")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("-o", "--output", metavar="OUT", help="Write here instead (one input only).")
@click.option("--overwrite", is_flag=True, help="With -o: replace an existing file.")
@global_options
@click.pass_obj
def command(app: App, files: tuple[str, ...], output: str | None, overwrite: bool) -> int:
    """Remove embedded metadata from PNG, JPEG and WebP images, in place.

    PNG tEXt/zTXt/iTXt/tIME/eXIf chunks (SwarmUI writes its parameters there), JPEG
    EXIF/XMP/IPTC/comments and WebP EXIF/XMP go; colour profiles (iCCP, sRGB, gAMA,
    cHRM, ICC) stay and the image data is copied byte for byte. Each file's removals
    go to stderr.

    Example: asset-generator strip-metadata out/*.png
    """
    from asset_generator.images import strip_file

    check_outputs(files, output, in_place=False)

    def work(source: Path) -> Result:
        if output is None:
            return strip_file(source, source, overwrite=True)
        return strip_file(source, Path(output), overwrite=overwrite)

    def describe(result: Result) -> str:
        if not result.removed:
            return f"{result.input}: no metadata found"
        return f"{result.input}: removed {', '.join(result.removed)}"

    return run_each(app, files, work, describe)
