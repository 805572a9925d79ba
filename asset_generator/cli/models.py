"""``models list``: what the server can load, and the names cached for shell completion."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from asset_generator.cli import WholeNumber, global_options
from asset_generator.cli.app import App
from asset_generator.cli.output import one_line as printable
from asset_generator.report import list_models, models_document
from asset_generator.server.types import MAX_MODEL_DEPTH as MAX_DEPTH
from asset_generator.server.types import MODEL_KINDS as SUBTYPES

if TYPE_CHECKING:
    from asset_generator.server.types import ModelListing


@click.group("models")
def command() -> None:
    """List the models the server offers."""


@command.command("list")
@click.option(
    "--subtype",
    metavar="TYPE",
    help=f"Model type: {', '.join(SUBTYPES)}; on ComfyUI these map to its folders "
    "(checkpoints, loras, vae, embeddings, controlnet), and a folder name works as is "
    "[default: Stable-Diffusion, ComfyUI's checkpoints].",
)
@click.option(
    "--path",
    "folder",
    default="",
    metavar="FOLDER",
    help="List only this folder of the model tree (default: the root).",
)
@click.option(
    "--depth",
    type=WholeNumber(1, MAX_DEPTH),
    default=MAX_DEPTH,
    show_default=True,
    help="How many folder levels below --path to include.",
)
@global_options
@click.pass_obj
def list_command(app: App, subtype: str | None, folder: str, depth: int) -> int:
    """List models: name, title, architecture, resolution, loaded.

    Names are shown exactly as the server knows them (with the file extension); pass
    them to `generate image --model` or `--lora` as they are. With -q only the names
    are printed, one a line. The names are also cached locally, so shell completion
    of --model works without the network.
    """
    if subtype is not None and app.known_type() in (None, "swarmui"):
        # SwarmUI matches sub-types case-sensitively and answers anything else "Invalid
        # sub-type.": another spelling is corrected, an unknown one refused before any request.
        spelled = next((s for s in SUBTYPES if s.lower() == subtype.lower()), None)
        if spelled is None and app.known_type() == "swarmui":
            raise click.BadParameter(
                f"{subtype!r} is not a model type; the types are: {', '.join(SUBTYPES)}.",
                param_hint="'--subtype'",
            )
        subtype = spelled or subtype
    server = app.server()
    listing = list_models(server, app.registry, app.server_key, subtype, folder, depth)
    if app.output.is_json:
        app.output.json(models_document(server, listing, folder, depth))
    elif app.output.quiet:
        # -q drops messages and decorations, not the data: the names, one a line, as
        # `--model` takes them (for scripts: `for m in $(... models list -q)`).
        for model in listing.models:
            app.output.data(printable(model.name))
    else:
        _print_table(app, listing, folder)
    return 0


def _print_table(app: App, listing: ModelListing, folder: str) -> None:
    if not listing.models:
        where = f" in folder {printable(folder)!r}" if folder else ""
        app.output.info(f"no {listing.kind} models{where} on {app.server_name}")
        return
    from rich.table import Table

    console = app.output.stdout_console()
    if not listing.described:
        names = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, pad_edge=False)
        names.add_column("NAME", no_wrap=True, overflow="ignore")
        for model in listing.models:
            names.add_row(printable(model.name))
        app.output.rich(names, console)
        return
    name, title, architecture = (
        _fit(listing, console.width) if console.is_terminal else (None, None, None)
    )
    table = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, pad_edge=False)
    # Names are what users copy into --model: never folded, even past the terminal's edge.
    longest = max(len(printable(m.name or "")) for m in listing.models)
    table.add_column("NAME", no_wrap=True, overflow="ignore", min_width=max(name or 0, longest))
    table.add_column("TITLE", no_wrap=True, overflow="ellipsis", width=title)
    table.add_column("ARCHITECTURE", no_wrap=True, overflow="ellipsis", width=architecture)
    table.add_column("RESOLUTION", no_wrap=True)
    table.add_column("LOADED", no_wrap=True)
    for model in listing.models:
        cells = (model.name, model.title, model.architecture, _resolution(model.resolution))
        table.add_row(*(printable(cell or "") for cell in cells), "yes" if model.loaded else "")
    app.output.rich(table, console)


def _resolution(value: str | None) -> str:
    """``WxH``, or nothing for a model that has none (LoRAs come back as ``0x0``)."""
    if not value or all(part.strip("0") == "" for part in value.lower().split("x")):
        return ""
    return value


# RESOLUTION and LOADED columns plus the gaps between the five columns.
FIXED_WIDTH = 10 + 6 + 4 * 2
NARROWEST = 10


def _fit(listing: ModelListing, width: int) -> tuple[int, int, int]:
    """NAME, TITLE, ARCHITECTURE widths for a terminal.

    Names are what users copy: titles and architectures give way first (cut with "…"),
    and only then do names fold onto a second line.
    """
    name = max([4, *(len(m.name) for m in listing.models)])
    title = max([5, *(len(m.title or "") for m in listing.models)])
    architecture = max([12, *(len(m.architecture or "") for m in listing.models)])
    room = width - FIXED_WIDTH
    while name + title + architecture > room and max(title, architecture) > NARROWEST:
        if title >= architecture:
            title -= 1
        else:
            architecture -= 1
    return max(min(name, room - title - architecture), NARROWEST), title, architecture
