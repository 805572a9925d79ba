"""``cancel``: stop the current generation, one by id, or everything of this server user."""

from __future__ import annotations

import time

import click

from asset_generator.cli import FiniteFloatRange, global_options
from asset_generator.cli.app import App, CommandError
from asset_generator.jobs import Generations
from asset_generator.registry import GenerationRecord
from asset_generator.settings import MAX_SECONDS, describe_server

NOTHING_ACTIVE = (
    "no active generation: only generations started by this client were checked; "
    "`asset-generator cancel --all` also stops work started elsewhere (web UI, other machines)"
)
POLL_SECONDS = 0.25


@click.command("cancel")
@click.argument("generation_id", metavar="[ID]", required=False)
@click.option(
    "--all",
    "cancel_all",
    is_flag=True,
    help="Interrupt every session of this server user: all queued and running work. "
    "On a server without accounts every client is the same user, so this stops "
    "everyone's generations, browser tabs included.",
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
    own and cancel interrupts that session; the server stops it at the next step.

    Exit 0 when the interrupt was delivered or there was nothing to cancel ("no active
    generation"), 1 on any error. See CANCEL_COMMAND.md for scripts and cron.
    """
    if cancel_all and generation_id:
        raise click.UsageError("give either an ID or --all, not both")
    ctx = click.get_current_context()
    given = ctx.get_parameter_source("wait_timeout") is click.core.ParameterSource.COMMANDLINE
    if given and not wait:
        raise click.UsageError("--wait-timeout only applies with --wait")
    generations = Generations(app.registry, app.server_key, app.client, app.output.debug)
    if cancel_all:
        return _cancel_all(app, generations, wait, wait_timeout)
    if generation_id:
        return _cancel_one(app, generations, generation_id, wait, wait_timeout)
    return _cancel_current(app, generations, wait, wait_timeout)


def _cancel_current(app: App, generations: Generations, wait: bool, wait_timeout: float) -> int:
    from asset_generator.pipeline.control import current_job

    target = current_job(app.registry, app.server_key, generations.active(), generations.current)
    if target is not None and target.id.startswith("pipe_"):
        return _cancel_pipeline(app, generations, target.id, wait, wait_timeout)
    if target is None:
        app.output.info(NOTHING_ACTIVE)
        _report(app, "generation", [], was_active=False)
        return 0
    return _interrupt(app, generations, target, wait, wait_timeout)


def _cancel_one(
    app: App, generations: Generations, generation_id: str, wait: bool, wait_timeout: float
) -> int:
    if generation_id.startswith("pipe_"):
        return _cancel_pipeline(app, generations, generation_id, wait, wait_timeout)
    record = generations.find(generation_id)
    if record is None:
        raise CommandError(
            f"no generation {generation_id} in this client's registry "
            "(`asset-generator status` lists them)",
            "not_found",
        )
    if record.server_key != app.server_key:
        other = (
            f"on {record.server}"
            if record.server != describe_server(app.api_url)
            else f"on {record.server} with other credentials"
        )
        raise CommandError(
            f"generation {generation_id} was started {other}; "
            "pass the same --api-url and --api-key to cancel it",
            "not_found",
        )
    active = generations.refresh([record]) if not record.is_final else []
    if not active:
        record = generations.find(generation_id) or record
        app.output.info(f"{record.id} already {record.status}; nothing to cancel")
        _report(app, "generation", [], was_active=False, extra={"generation": record.public()})
        return 0
    return _interrupt(app, generations, active[0], wait, wait_timeout)


def _interrupt(
    app: App, generations: Generations, target: GenerationRecord, wait: bool, wait_timeout: float
) -> int:
    was_status, was_progress = target.status, target.progress
    cancelled = generations.mark_cancelled([target.id])
    if not cancelled:
        # It ended meanwhile, and its session may already serve a new generation.
        record = generations.find(target.id) or target
        app.output.info(f"{record.id} already {record.status}; nothing to cancel")
        _report(app, "generation", [], was_active=False, extra={"generation": record.public()})
        return 0
    try:
        delivered = generations.interrupt(target)
    except BaseException:
        generations.unmark_cancelled(cancelled, [target], gone=False)
        raise
    if not delivered:
        generations.unmark_cancelled(cancelled, [target], gone=True)
        app.output.info(f"{target.id} is no longer known to the server; nothing to cancel")
        _report(app, "generation", [], was_active=False)
        return 0
    if wait:
        _wait_stopped(app, [target.session_id], wait_timeout)
    if not app.output.quiet and not app.output.is_json:
        app.output.data(
            f"cancelled {target.id} (was {was_status}, {was_progress:.0f}%): "
            f"{_short(target.prompt)}"
        )
    _report(app, "generation", cancelled, was_active=True)
    return 0


def _cancel_pipeline(
    app: App, generations: Generations, pipeline_id: str, wait: bool, wait_timeout: float
) -> int:
    """A whole pipeline: it starts nothing more, and its in-flight assets are interrupted."""
    from asset_generator.pipeline.control import cancel_pipeline, find_pipeline

    found = find_pipeline(app.registry, pipeline_id)
    waiting = (lambda ids: _wait_stopped(app, ids, wait_timeout)) if wait else None
    done = None
    if found is not None and found.server_key == app.server_key:
        done = cancel_pipeline(app.registry, generations, pipeline_id, waiting)
    if done is None:
        raise CommandError(
            f"no pipeline {pipeline_id} of this client on {describe_server(app.api_url)} "
            "(`asset-generator status` lists them)",
            "not_found",
        )
    for note in done.notes:
        app.output.info(note)
    if app.output.is_json:
        app.output.json(done.to_json())
    elif not app.output.quiet:
        for line in done.lines:
            app.output.data(line)
    return 0


def _cancel_all(app: App, generations: Generations, wait: bool, wait_timeout: float) -> int:
    ours = [r for r in app.registry.read().records_for(app.server_key) if not r.is_final]
    from asset_generator.pipeline.control import mark_pipelines_cancelled

    # Our pipelines start nothing more (their processes poll this mark).
    mark_pipelines_cancelled(app.registry, app.server_key)
    # Marked first, as in _interrupt: queued generations end without a word when interrupted.
    cancelled = generations.mark_cancelled(r.id for r in ours)
    try:
        app.with_session(lambda session: app.client().interrupt_all(session, other_sessions=True))
    except BaseException:
        generations.unmark_cancelled(cancelled, ours, gone=False)
        raise
    if wait:
        _wait_stopped(app, sorted({r.session_id for r in ours}), wait_timeout)
    if not app.output.quiet and not app.output.is_json:
        session = app.cached_session()
        user = session.user_id if session and session.user_id else "this user"
        reach = (
            " (a server without accounts: that is every client, browser tabs included)"
            if user == "local"
            else ""
        )
        app.output.data(
            f"interrupted all generations of {user} on {app.client().server}{reach}; "
            f"{len(cancelled)} of ours marked cancelled"
        )
    _report(app, "user", cancelled, was_active=bool(ours))
    return 0


def _wait_stopped(app: App, session_ids: list[str], timeout: float) -> None:
    """Poll the interrupted sessions until none shows waiting or live work."""
    from asset_generator.swarm.errors import InvalidSession

    deadline = time.monotonic() + timeout
    pending = list(session_ids)
    while pending:
        still = []
        for session_id in pending:
            try:
                if app.client().current_status(session_id).counters.busy:
                    still.append(session_id)
            except InvalidSession:
                continue
        pending = still
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise CommandError(f"generation still running after {timeout:g} s", "timeout")
        time.sleep(POLL_SECONDS)


def _report(
    app: App,
    scope: str,
    records: list[GenerationRecord],
    *,
    was_active: bool,
    extra: dict | None = None,
) -> None:
    if app.output.is_json:
        app.output.json(
            {
                "ok": True,
                "scope": scope,
                "cancelled": [r.public() for r in records],
                "was_active": was_active,
                **(extra or {}),
            }
        )


def _short(prompt: str, limit: int = 60) -> str:
    return prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"
