"""``convert svg``: vectorise an image with vtracer (the optional ``svg`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from asset_generator.cli import extra_hint, global_options
from asset_generator.cli.app import App, CommandError
from asset_generator.cli.postprocess import CHANNEL, complete_files, same_file, size_text

# The Go tool's methods; `primitive` approximates an image with random shapes, which no
# tracer does, so it is refused rather than quietly replaced by something else.
GO_METHODS = {"gotrace": "binary", "primitive": None}
GO_KNOBS = ("go_shapes", "go_alpha", "go_repeat")


@click.group("convert")
def command() -> None:
    """Convert images to other formats (SVG)."""


def _method(ctx: click.Context, param: click.Parameter, value: str) -> str:
    name = value.lower()
    if name in ("color", "binary"):
        return name
    if GO_METHODS.get(name):
        return GO_METHODS[name]
    if name == "primitive":
        raise click.BadParameter(
            "'primitive' (the Go tool's random-shape approximation) is not available; "
            "methods: color, binary (gotrace is accepted as binary)"
        )
    raise click.BadParameter(f"{value!r} is not a method; methods: color, binary")


@command.command("svg")
@click.argument("file", metavar="FILE", shell_complete=complete_files)
@click.option(
    "-o",
    "--output",
    metavar="OUT",
    shell_complete=complete_files,
    help="Output file [default: FILE with .svg].",
)
@click.option(
    "-m",
    "--method",
    default="color",
    show_default=True,
    callback=_method,
    shell_complete=lambda ctx, param, incomplete: [
        name for name in ("color", "binary") if name.startswith(incomplete)
    ],
    metavar="color|binary",
    help="color keeps the colours; binary traces one colour, like potrace "
    "(the Go tool's gotrace is accepted as binary).",
)
@click.option(
    "--threshold",
    type=CHANNEL,
    default=128,
    show_default=True,
    help="binary: pixels darker than this (luminance 0-255) are traced.",
)
@click.option(
    "--hierarchical",
    type=click.Choice(["stacked", "cutout"]),
    help="color: shapes stacked on each other or cut out of each other [stacked].",
)
@click.option(
    "--mode",
    type=click.Choice(["spline", "polygon", "none"]),
    help="Curve fitting [spline].",
)
@click.option("--filter-speckle", type=click.IntRange(0, 128), help="Drop patches below N px [4].")
@click.option("--color-precision", type=click.IntRange(1, 8), help="Significant colour bits [6].")
@click.option(
    "--layer-difference", type=click.IntRange(0, 255), help="Colour step between layers [16]."
)
@click.option(
    "--corner-threshold", type=click.IntRange(0, 180), help="Minimum corner angle, degrees [60]."
)
@click.option(
    "--length-threshold",
    type=click.FloatRange(3.5, 10),
    help="Minimum segment length [4.0].",
)
@click.option(
    "--splice-threshold", type=click.IntRange(0, 180), help="Spline splice angle, degrees [45]."
)
@click.option(
    "--path-precision", type=click.IntRange(0, 16), help="Decimal places in path data [8]."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
# The Go tool's primitive-only knobs: known, so a Go user's command line gets the real reason.
@click.option("--shapes", "go_shapes", hidden=True)
@click.option("--alpha", "go_alpha", hidden=True)
@click.option("--repeat", "go_repeat", hidden=True)
@global_options
@click.pass_obj
def svg(app: App, file: str, output: str | None, overwrite: bool, **knobs: Any) -> int:
    """Vectorise an image into SVG with vtracer.

    The SVG has the image's width and height and a viewBox, so it scales. Needs the
    tracer, the svg extra: in the clone, pip install -e '.[svg]' (or pipx install
    --force '.[svg]').

    Example: asset-generator convert svg logo.png --method binary -o logo.svg
    """
    from asset_generator.images import ImageError, TraceOptions, TracerMissing, vectorise_file

    given = [f"--{name[3:]}" for name in GO_KNOBS if knobs.pop(name) is not None]
    if given:
        raise click.UsageError(
            f"{given[0]} belongs to the Go tool's primitive method, which is not available; "
            "methods: color, binary"
        )

    source = Path(file)
    target = Path(output) if output else source.with_suffix(".svg")
    if same_file(source, target):
        # Even with --overwrite: an SVG in place of the picture it came from loses the picture.
        raise click.UsageError(f"the output {target} is the input itself; give another with -o")
    try:
        result = vectorise_file(source, target, TraceOptions(**knobs), overwrite=overwrite)
    except TracerMissing:
        raise CommandError(
            f"convert svg needs the vtracer tracer (the svg extra): {extra_hint('svg')}",
            "unavailable",
        ) from None
    except ImageError as exc:
        raise CommandError(str(exc), "file_error") from None
    if app.output.is_json:
        app.output.json(
            {
                "ok": True,
                "input": str(result.input),
                "output": str(result.output),
                "method": knobs["method"],
                "size": list(result.size_after or ()),
            }
        )
    else:
        app.output.data(str(result.output))
        app.output.info(
            f"{result.input}: traced {size_text(result.size_after)} ({knobs['method']})"
        )
    return 0
