"""Post-processing options shared by ``generate image`` (and ``pipeline``), and the loop the
offline image commands share: every input tried, one stderr line per failure, exit 1 if any.

Nothing here imports Pillow: a ``generate`` without post-processing must not pay for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from asset_generator.cli.app import App

if TYPE_CHECKING:
    from asset_generator.images import PostProcess, Result

EMPTY_RESULT: dict[str, Any] = {
    "input": None,
    "output": None,
    "box": None,
    "size_before": None,
    "size_after": None,
    "removed": [],
    "warnings": [],
    "error": None,
}
FILTER_NAMES = ("lanczos", "bicubic", "bilinear", "nearest")
CHANNEL = click.IntRange(0, 255)
QUALITY = click.IntRange(1, 100)
SIDE = click.IntRange(1, 65535)
PERCENT = click.FloatRange(0, 100, min_open=True, max_open=True)
FILTER = click.Choice(FILTER_NAMES, case_sensitive=False)

# The post-processing flags of `generate image`, by the Go tool's names.
POSTPROCESS_OPTIONS = (
    click.option(
        "--auto-crop/--no-auto-crop",
        default=None,
        help="Trim near-white or transparent borders off each saved image.",
    ),
    click.option(
        "--auto-crop-threshold",
        type=CHANNEL,
        metavar="0-255",
        help="Auto-crop: R, G, B at least this minus the tolerance is background [default 250].",
    ),
    click.option(
        "--auto-crop-tolerance",
        type=CHANNEL,
        metavar="0-255",
        help="Auto-crop: tolerance, 0-255 [default 10].",
    ),
    click.option(
        "--auto-crop-preserve-aspect/--no-auto-crop-preserve-aspect",
        default=None,
        help="Auto-crop: grow the box back, centred, to the image's aspect ratio.",
    ),
    click.option(
        "--downscale-width", type=SIDE, metavar="PX", help="Downscale each image to this width."
    ),
    click.option(
        "--downscale-height", type=SIDE, metavar="PX", help="Downscale each image to this height."
    ),
    click.option(
        "--downscale-percentage",
        type=PERCENT,
        metavar="P",
        help="Downscale both sides to this percentage (0 < p < 100).",
    ),
    click.option(
        "--downscale-filter", type=FILTER, help="lanczos, bicubic, bilinear, nearest [lanczos]."
    ),
    click.option(
        "--strip-metadata/--keep-metadata",
        default=None,
        help="Remove the prompt and parameters embedded in each saved image "
        "(after the seed is read); colour profiles stay.",
    ),
    click.option(
        "--jpeg-quality",
        type=QUALITY,
        metavar="1-100",
        help="Quality of JPEG outputs [default 90].",
    ),
)


def postprocess_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the post-processing flags; read them back with ``postprocess_from``."""
    for option in reversed(POSTPROCESS_OPTIONS):
        command = option(command)
    return command


def postprocess_from(app: App, options: dict[str, Any]) -> PostProcess | None:
    """The steps the flags (else the config's ``[generate]`` keys) ask for; None for none.

    Removes the post-processing keys from ``options``.
    """
    from asset_generator.generate_settings import POSTPROCESS_NAMES, postprocess_of

    flags = {name: options.pop(name, None) for name in POSTPROCESS_NAMES}
    if flags["downscale_percentage"] is not None and (
        flags["downscale_width"] or flags["downscale_height"]
    ):
        raise click.UsageError(
            "--downscale-percentage cannot be combined with --downscale-width/--downscale-height"
        )
    return postprocess_of(app.settings, flags)


# -- the offline commands' shared shape -------------------------------------------------------


def file_output_options(*output_decls: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--quality``, ``--strip-metadata``, the output option, ``-i`` and ``--overwrite``.

    The options ``crop`` and ``downscale`` share; ``output_decls`` name the output option
    (``-o/--output`` for crop, ``-o/--output-file`` for downscale, as the Go tool spells them).
    """
    options = (
        click.option(
            "--quality",
            type=QUALITY,
            metavar="1-100",
            default=90,
            show_default=True,
            help="Quality of JPEG outputs.",
        ),
        click.option(
            "--strip-metadata", is_flag=True, help="Drop text/EXIF metadata (default: kept)."
        ),
        click.option(
            *output_decls,
            metavar="OUT",
            shell_complete=complete_files,
            help="Output file (one input only).",
        ),
        click.option("-i", "--in-place", is_flag=True, help="Replace each input (atomically)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output file."),
    )

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def complete_files(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Tab completion of file names: the shell lists them, as for any file argument."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="file")]


def complete_directories(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Tab completion of directory names (``-o/--output-dir``): the shell lists them."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="dir")]


def check_outputs(
    inputs: tuple[str, ...], output: str | None, in_place: bool, *, guard_input: bool = True
) -> None:
    """``-o`` names one file, so it takes one input; ``-o`` and ``-i`` exclude each other.

    With ``guard_input``, ``-o`` may not name the input itself: only ``-i`` replaces it.
    """
    if output is not None and in_place:
        raise click.UsageError("-o and -i exclude each other: write a new file or replace")
    if output is not None and len(inputs) > 1:
        raise click.UsageError(f"-o names one output file, but {len(inputs)} inputs were given")
    if guard_input and output is not None and same_file(inputs[0], output):
        raise click.UsageError(
            f"-o names the input {inputs[0]} itself; use -i to replace the input"
        )


def same_file(first: str | Path, second: str | Path) -> bool:
    """True when both names reach one existing file."""
    # samefile also catches ./a.png, a hard link or a symlink to the input.
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def output_for(source: Path, output: str | None, in_place: bool, suffix: str) -> Path:
    """``-o``, the input itself (``-i``), else ``NAME<suffix>.EXT`` beside the input."""
    if output is not None:
        return Path(output)
    if in_place:
        return source
    return source.with_name(f"{source.stem}{suffix}{source.suffix}")


def run_each(
    app: App,
    inputs: tuple[str, ...],
    work: Callable[[Path], Result],
    describe: Callable[[Result], str],
) -> int:
    """Run ``work`` on every input: paths on stdout, a line per file on stderr, exit 0/1."""
    from asset_generator.images import ImageError

    documents: list[dict[str, Any]] = []
    failed = 0
    for raw in inputs:
        source = Path(raw)
        try:
            result = work(source)
        except ImageError as exc:
            failed += 1
            app.output.error(str(exc))
            documents.append({**EMPTY_RESULT, "input": raw, "error": str(exc)})
            continue
        # The input as typed, as on failure (Path would turn ./a.png into a.png).
        documents.append({**result.public(), "input": raw, "error": None})
        if not app.output.is_json:
            app.output.data(str(result.output))
            app.output.info(describe(result))
        for warning in result.warnings:
            app.output.warn(f"warning: {warning}")
    if not failed:
        if app.output.is_json:
            app.output.json({"ok": True, "files": documents})
        return 0
    if app.output.is_json:
        code = "partial" if failed < len(inputs) else "file_error"
        from asset_generator.cli.output import plural

        message = f"{failed} of {plural(len(inputs), 'file')} failed"
        app.output.json(
            {"ok": False, "error": {"code": code, "message": message}, "files": documents}
        )
    return 1


def size_text(size: tuple[int, int] | None) -> str:
    return f"{size[0]}x{size[1]}" if size else "?"
