"""``workflow show``: which node of a ComfyUI workflow each option would set, before running it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App, CommandError
from asset_generator.cli.output import one_line as printable


@click.group("workflow")
def command() -> None:
    """Look at ComfyUI workflows before running them."""


@command.command("show")
@click.argument("file", metavar="FILE", type=click.Path())
@global_options
@click.pass_obj
def show(app: App, file: str) -> int:
    """Show which node each generate option would set in a ComfyUI workflow.

    FILE is a workflow in ComfyUI's API format ("Export (API)") or as the web UI saves
    it; the saved format is converted with the server's node catalogue (/object_info),
    so only that needs --api-url. An option with no place, or with two, is refused by
    `generate image --workflow FILE`: this shows why, and which NODE.INPUT to use with
    --set instead. --format json prints the places and the API graph that would be sent.
    """
    from asset_generator.comfy import ui_format
    from asset_generator.comfy.workflow import (
        WorkflowShapeError,
        check_api_format,
        describe_places,
        find_places,
    )
    from asset_generator.workflows import WorkflowFileError, read_workflow

    try:
        workflow = read_workflow(Path(file).expanduser())
    except WorkflowFileError as exc:
        raise CommandError(str(exc), "file_error") from None
    where = f"the workflow {workflow.path}"
    converted = ui_format.is_ui_format(workflow.document)
    try:
        document = _converted(app, workflow.document, where) if converted else workflow.document
        graph = check_api_format(document, where)
    except (WorkflowShapeError, WorkflowFileError) as exc:
        raise CommandError(str(exc), "file_error") from None
    places = describe_places(graph, find_places(graph))
    if app.output.is_json:
        app.output.json(
            {
                "ok": True,
                "file": str(workflow.path),
                "format": "ui" if converted else "api",
                "options": places,
                "graph": graph,
            }
        )
        return 0
    if app.output.quiet:
        return 0
    _print(app, workflow.path, converted, graph, places)
    return 0


def _converted(app: App, document: dict[str, Any], where: str) -> dict[str, Any]:
    """A UI-format document in the API format, with the ComfyUI server's node catalogue."""
    from asset_generator.comfy.server import ComfyServer

    server = app.server()
    if not isinstance(server, ComfyServer):
        raise CommandError(
            f"{where} is in the web UI's saved format: converting it needs a ComfyUI server's "
            f"node catalogue, and {app.server_name} is {server.label} (point --api-url at "
            "ComfyUI, or export the API format: Workflow → Export (API))",
            "usage_error",
            exit_code=2,
        )
    return server.convert(document, where)


ORDER = (
    "--prompt",
    "--negative-prompt",
    "--model",
    "--width",
    "--height",
    "--steps",
    "--cfg-scale",
    "--seed",
    "--sampler",
    "--scheduler",
)


def _print(
    app: App, path: Path, converted: bool, graph: dict[str, Any], places: dict[str, Any]
) -> None:
    kind = "the web UI's saved format, converted" if converted else "API format"
    app.output.data(f"{printable(str(path))}: {len(graph)} nodes ({kind})")
    width = max(len(flag) for flag in places)
    column = max(
        (
            len(f"{p['nodes'][0]['id']}.{p['nodes'][0]['input']}")
            for p in places.values()
            if p["usable"]
        ),
        default=0,
    )
    for flag in ORDER:
        place = places[flag]
        nodes = place["nodes"]
        if place["usable"]:
            node = nodes[0]
            title = node.get("title")
            named = f' "{title}"' if title and title != node["class_type"] else ""
            target = f"{node['id']}.{node['input']}".ljust(column)
            where = f"{target}  {node['class_type']}{named}"
        elif nodes:
            targets = ", ".join(f"{n['id']}.{n['input']}" for n in nodes)
            where = f"refused: {len(nodes)} places ({targets}); choose one with --set"
        else:
            where = f"refused: {place['why']}; set what you mean with --set NODE.INPUT=VALUE"
        app.output.data(f"  {flag.ljust(width)}  {printable(where)}")
