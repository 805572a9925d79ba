"""``models list``: what the server can load, and the names cached for shell completion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from asset_generator.cli import WholeNumber, global_options
from asset_generator.cli.app import App
from asset_generator.cli.output import one_line as printable
from asset_generator.registry import remember_model_names

if TYPE_CHECKING:
    from asset_generator.swarm.client import ModelListing

# SwarmUI's model sub-types and the pseudo-type Wildcards (swarmui-protocol.md §7). The server
# matches them case-sensitively and answers anything else "Invalid sub-type.", so another
# spelling is corrected here and an unknown one is a usage error naming these.
SUBTYPES = (
    "Stable-Diffusion",
    "VAE",
    "LoRA",
    "Embedding",
    "ControlNet",
    "Clip",
    "ClipVision",
    "Wildcards",
)
MAX_DEPTH = 20


class Subtype(click.Choice):
    """A model type in any case; the error lists the types as SwarmUI spells them."""

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        return f"{value!r} is not a model type; the types are: {', '.join(SUBTYPES)}."


@click.group("models")
def command() -> None:
    """List the models the server offers."""


@command.command("list")
@click.option(
    "--subtype",
    type=Subtype(SUBTYPES, case_sensitive=False),
    default="Stable-Diffusion",
    show_default=True,
    metavar="TYPE",
    help=f"Model type: {', '.join(SUBTYPES)}.",
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
def list_command(app: App, subtype: str, folder: str, depth: int) -> int:
    """List models: name, title, architecture, resolution, loaded.

    Names are shown exactly as the server knows them (with the file extension); pass
    them to `generate image --model` or `--lora` as they are. The names are also
    cached locally, so shell completion of --model works without the network.
    """
    subtype, listing = fetch_listing(app, subtype, folder, depth)
    if app.output.is_json:
        app.output.json(_document(app, listing, subtype, folder, depth))
    elif not app.output.quiet:
        _print_table(app, listing, subtype, folder)
    return 0


def fetch_listing(app: App, subtype: str, folder: str, depth: int) -> tuple[str, ModelListing]:
    """``ListModels`` on the control session; the names are cached for completion."""
    subtype = next((s for s in SUBTYPES if s.lower() == subtype.lower()), subtype)
    listing = app.with_session(
        lambda session: app.client().models(session, subtype=subtype, path=folder, depth=depth)
    )
    complete = folder.strip("/\\") == "" and depth == MAX_DEPTH
    with app.registry.transaction() as state:
        remember_model_names(
            state, app.server_key, subtype, [m.name for m in listing.models], complete=complete
        )
    return subtype, listing


def document(app: App, subtype: str, folder: str, depth: int) -> dict[str, Any]:
    """The ``models list --format json`` document (also the MCP ``list_models`` result)."""
    subtype, listing = fetch_listing(app, subtype, folder, depth)
    return _document(app, listing, subtype, folder, depth)


def _document(
    app: App, listing: ModelListing, subtype: str, folder: str, depth: int
) -> dict[str, Any]:
    return {
        "ok": True,
        "server": app.client().server,
        "subtype": subtype,
        "path": folder,
        "depth": depth,
        "folders": list(listing.folders),
        "models": [m.raw for m in listing.models],
    }


def _print_table(app: App, listing: ModelListing, subtype: str, folder: str) -> None:
    if not listing.models:
        where = f" in folder {printable(folder)!r}" if folder else ""
        app.output.info(f"no {subtype} models{where} on {app.client().server}")
        return
    from rich.table import Table

    console = app.output.stdout_console()
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
