"""``cancel``: stop the current generation, one by id, or everything of this server user."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from asset_generator import jobs
from asset_generator.cli import FiniteFloatRange, global_options
from asset_generator.cli.app import App, CommandError
from asset_generator.settings import MAX_SECONDS

if TYPE_CHECKING:
    from asset_generator.jobs.pipelines import PipelineCancel


def _complete_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Tab completion of ID from the registry; imported only when the shell asks."""
    from asset_generator.cli.completion import complete_job_id

    return complete_job_id(ctx, param, incomplete)


@click.command("cancel")
@click.argument("generation_id", metavar="[ID]", required=False, shell_complete=_complete_id)
@click.option(
    "--all",
    "cancel_all",
    is_flag=True,
    help="Stop everything the server lets a client stop. SwarmUI: every session of this "
    "server user, all queued and running work; on a server without accounts every client "
    "is the same user, browser tabs included. ComfyUI: the whole queue, anyone's prompts "
    "(ComfyUI has no users).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="After interrupting, wait until the server shows the work stopped.",
)
@click.option(
    "--wait-timeout",
    type=FiniteFloatRange(min=0, min_open=True, max=MAX_SECONDS),
    default=60.0,
    show_default=True,
    metavar="S",
    help="With --wait: give up (exit 1) after this many seconds (needs --wait).",
)
@global_options
@click.pass_obj
def command(
    app: App, generation_id: str | None, cancel_all: bool, wait: bool, wait_timeout: float
) -> int:
    """Cancel the current generation, generation ID, or (--all) everything.

    With no argument, cancels the current generation started by this client: the one
    the server is running, else the newest still queued. Other generations of ours keep
    going. SwarmUI has no per-job cancel, so each generation runs in a session of its
    own and cancel interrupts that session; on ComfyUI our pending prompts are deleted
    from the queue and our running one is interrupted by its id. The server stops it at
    the next step. A generation cancelled earlier whose interrupt the server never
    confirmed (a second Ctrl-C, a dropped connection) gets it again.

    Exit 0 when the interrupt was delivered or there was nothing to cancel ("no active
    generation"), 1 on any error. See CANCEL_COMMAND.md for scripts and cron.
    """
    if cancel_all and generation_id:
        raise click.UsageError("give either an ID or --all, not both")
    ctx = click.get_current_context()
    given = ctx.get_parameter_source("wait_timeout") is click.core.ParameterSource.COMMANDLINE
    if given and not wait:
        raise click.UsageError("--wait-timeout only applies with --wait")
    generations = app.generations()
    timeout = wait_timeout if wait else None
    try:
        if cancel_all:
            result = jobs.cancel_all(generations, wait_timeout=timeout)
        elif generation_id:
            result = jobs.cancel_one(
                generations, generation_id, server=app.server_name, wait_timeout=timeout
            )
        else:
            result = jobs.cancel_current(generations, server=app.server_name, wait_timeout=timeout)
    except jobs.CancelError as exc:
        raise CommandError(exc.message, exc.code) from None
    _report(app, result)
    return 0


def _report(app: App, result: jobs.CancelResult | PipelineCancel) -> None:
    for note in result.notes:
        app.output.info(note)
    if app.output.is_json:
        app.output.json(result.to_json())
    elif not app.output.quiet:
        for line in result.lines:
            app.output.data(line)
