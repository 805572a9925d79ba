"""The generation options that `generate image` and `pipeline` share, declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from asset_generator.cli import FiniteFloatRange, WholeNumber
from asset_generator.cli.completion import complete_lora, complete_model

if TYPE_CHECKING:
    from asset_generator.cli.app import App
    from asset_generator.server.types import Lora, Request, SetInput, Workflow


def generation_options(*, scope: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--negative-prompt`` … ``--set``: generation options, sent only when set.

    ``scope``: words added to the repeatable options' help (" to every asset" for pipeline).
    """
    options = (
        click.option("--negative-prompt", metavar="TEXT", help="What to avoid."),
        click.option(
            "--model",
            "-m",
            metavar="NAME",
            help="Model name as `models list` shows it.",
            shell_complete=complete_model,
        ),
        click.option("--width", type=WholeNumber(64, 16384), help="Width in pixels."),
        click.option("--height", type=WholeNumber(64, 16384), help="Height in pixels."),
        click.option("--steps", type=WholeNumber(0, 500), help="Sampling steps."),
        click.option("--cfg-scale", type=FiniteFloatRange(0, 100), help="CFG scale."),
        click.option("--sampler", metavar="NAME", help="Sampler, e.g. euler, dpmpp_2m."),
        click.option("--scheduler", metavar="NAME", help="Scheduler, e.g. normal, karras."),
        click.option(
            "--lora",
            "loras",
            multiple=True,
            metavar="NAME[:WEIGHT]",
            help=f"Apply a LoRA{scope} (repeatable); weight defaults to 1.",
            shell_complete=complete_lora,
        ),
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="KEY=VALUE",
            help=f"Any other SwarmUI parameter{scope} (repeatable); numbers and true/false "
            "are typed.",
        ),
        click.option(
            "--workflow",
            metavar="FILE",
            # A directory is an unreadable workflow (exit 1, file_error), as read_workflow says.
            type=click.Path(),
            help=f"ComfyUI: run this workflow{scope} (API format, or the web UI's saved "
            "format); the options above set its nodes by meaning.",
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="NODE.INPUT=VALUE",
            help=f"ComfyUI: set one input of a workflow node{scope} (NODE: id, title or "
            "class; repeatable; applied last, so it wins).",
        ),
    )

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def parse_loras(items: tuple[str, ...]) -> tuple[Lora, ...]:
    from asset_generator.server.types import Lora

    return tuple(Lora.parse(item) for item in items)


def parse_params(items: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    """``--param KEY=VALUE`` items, typed; a usage error names the bad one."""
    from asset_generator.server.types import parse_assignment

    try:
        return tuple(parse_assignment(item) for item in items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from None


def parse_sets(items: tuple[str, ...]) -> tuple[SetInput, ...]:
    """``--set NODE.INPUT=VALUE`` items; a usage error names the bad one."""
    from asset_generator.workflows import parse_set

    try:
        return tuple(parse_set(item) for item in items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None


def read_workflow_option(app: App, path: str | None, *, offline: bool = False) -> Workflow | None:
    """``--workflow FILE`` read and parsed; exit 1 (``file_error``) naming the file if it
    cannot be (exit 2 on SwarmUI, which takes no workflow, unless ``offline``: a dry run
    asks the server nothing)."""
    if path is None:
        return None
    from pathlib import Path

    from asset_generator.cli.app import CommandError
    from asset_generator.workflows import WorkflowFileError, read_workflow

    try:
        return read_workflow(Path(path).expanduser())
    except WorkflowFileError as exc:
        if not offline:
            app.refuse_workflow_file()
        raise CommandError(str(exc), "file_error") from None


def request_from(
    app: App,
    prompt: str | None,
    options: dict[str, Any],
    *,
    names: tuple[str, ...],
    loras: tuple[str, ...] = (),
    params: tuple[str, ...] = (),
    sets: tuple[str, ...] = (),
    workflow: str | None = None,
    no_save: bool = False,
) -> Request:
    """A Request from the command line's ``names`` options, the config's under them."""
    from asset_generator.generate_settings import config_defaults
    from asset_generator.server.types import Request

    return Request(
        prompt=prompt,
        **{name: options.get(name) for name in names},
        loras=parse_loras(loras),
        params=parse_params(params),
        workflow=read_workflow_option(app, workflow),
        sets=parse_sets(sets),
        no_save=no_save,
        defaults=config_defaults(app.settings, names),
    )
