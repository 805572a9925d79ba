"""Cancelling our work (cli-contract §5 `cancel`): the CLI command and the MCP tool call these.

On every server the same rules: the current job is the one of ours the server is running,
else the newest queued (a pipeline counts as one job); a finished one is reported, not
touched; nothing of ours active means no request at all. How a cancel reaches the server is
the adapter's (a SwarmUI session interrupt, ComfyUI's queue delete and targeted interrupt).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asset_generator.jobs.generations import CANCEL_REQUESTED, ORPHANED, Generations
from asset_generator.jobs.pipelines import (
    PipelineCancel,
    cancel_pipeline,
    current_job,
    find_pipeline,
    mark_pipelines_cancelled,
)
from asset_generator.jobs.stop import confirm, mark_cancelled, stop, unmark
from asset_generator.registry import (
    GenerationRecord,
    PipelineRecord,
    active_under_other_credentials,
)
from asset_generator.server import jobstate
from asset_generator.text import plural

if TYPE_CHECKING:
    from asset_generator.server.types import Handle

__all__ = [
    "CANCEL_REQUESTED",
    "NOTHING_ACTIVE",
    "ORPHANED",
    "CancelError",
    "CancelResult",
    "Generations",
    "PipelineCancel",
    "cancel_all",
    "cancel_current",
    "cancel_one",
    "wait_stopped",
]

NOTHING_ACTIVE = (
    "no active generation: only generations started by this client were checked; "
    "`asset-generator cancel --all` also stops work started elsewhere (web UI, other machines)"
)
POLL_SECONDS = 0.25


class CancelError(Exception):
    """A cancel that cannot be done as asked; ``code`` is a JSON code of cli-contract §3."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class CancelResult:
    """What a cancel did: its scope, the records it marked, and what to tell a person.

    ``notes`` are messages for stderr (``no active generation``, ``already succeeded``);
    ``lines`` are the summary a terminal shows on stdout.
    """

    scope: str
    cancelled: list[GenerationRecord]
    was_active: bool
    generation: GenerationRecord | None = None
    notes: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "ok": True,
            "scope": self.scope,
            "cancelled": [r.public() for r in self.cancelled],
            "was_active": self.was_active,
        }
        if self.generation is not None:
            document["generation"] = self.generation.public()
        return document


def cancel_current(
    generations: Generations, *, server: str | None = None, wait_timeout: float | None = None
) -> CancelResult | PipelineCancel:
    """Cancel the generation of ours the server is running, else the newest still queued.

    ``server``: how the configured server is described; with it, a registry holding work of
    ours on that server under other credentials raises CancelError (``auth_failed``) instead
    of reporting "nothing to cancel". ``wait_timeout``: after interrupting, wait up to this
    long for the work to stop.
    """
    target = current_job(
        generations.registry, generations.key, generations.active(), generations.current
    )
    if isinstance(target, PipelineRecord):
        # The newest job of ours is a pipeline: the whole pipeline stops (cli-contract §5).
        return _cancel_pipeline(generations, target.id, server, wait_timeout)
    if target is None:
        if server is not None:
            _refuse_if_other_credentials(generations, server)
        return CancelResult("generation", [], was_active=False, notes=[NOTHING_ACTIVE])
    return interrupt_generation(generations, target, wait_timeout=wait_timeout)


def _refuse_if_other_credentials(generations: Generations, server: str) -> None:
    """Nothing of ours under these credentials, but ours under others: say so (issue 10.9)."""
    elsewhere = active_under_other_credentials(generations.registry.read(), server, generations.key)
    if not elsewhere:
        return
    count = len(elsewhere)
    ids = ", ".join(r.id for r in elsewhere[:3]) + (", …" if count > 3 else "")
    these = "it was" if count == 1 else "they were"
    raise CancelError(
        f"nothing cancelled: {plural(count, 'generation')} of this client on "
        f"{server} ({ids}) {'runs' if count == 1 else 'run'} under other credentials; pass the "
        f"--api-key (or --auth-header) {these} started with to reach "
        f"{'it' if count == 1 else 'them'}",
        "auth_failed",
    )


def cancel_one(
    generations: Generations,
    generation_id: str,
    *,
    server: str,
    wait_timeout: float | None = None,
) -> CancelResult | PipelineCancel:
    """Cancel generation (or ``pipe_`` pipeline) ``generation_id``; a finished one is reported.

    ``server``: how the configured server is described, to explain a record of another one.
    Raises CancelError (``not_found``) for an id this client does not know on this server.
    """
    if generation_id.startswith("pipe_"):
        return _cancel_pipeline(generations, generation_id, server, wait_timeout)
    record = generations.find(generation_id)
    if record is None:
        raise CancelError(
            f"no generation {generation_id} in this client's registry "
            "(`asset-generator status` lists them)",
            "not_found",
        )
    if record.server_key != generations.key:
        other = (
            f"on {record.server}"
            if record.server != server
            else f"on {record.server} with other credentials"
        )
        raise CancelError(
            f"generation {generation_id} was started {other}; "
            "pass the same --api-url and --api-key to cancel it",
            "not_found",
        )
    active = generations.refresh([record]) if not record.is_final else []
    if not active:
        return _already_finished(generations, record)
    return interrupt_generation(generations, active[0], wait_timeout=wait_timeout)


def _already_finished(generations: Generations, record: GenerationRecord) -> CancelResult:
    record = generations.find(record.id) or record
    return CancelResult(
        "generation",
        [],
        was_active=False,
        generation=record,
        notes=[f"{record.id} already {record.status}; nothing to cancel"],
    )


def interrupt_generation(
    generations: Generations, target: GenerationRecord, *, wait_timeout: float | None = None
) -> CancelResult:
    """Stop ``target`` (marked first, then interrupted on the server).

    A target already cancelled whose interrupt was never confirmed gets it again.
    """
    was_status, was_progress, again = target.status, target.progress, target.ended
    result = stop(generations, [target])
    if result.gone:
        return CancelResult(
            "generation",
            [],
            was_active=False,
            notes=[f"{target.id} is no longer known to the server; nothing to cancel"],
        )
    if not result.stopped:
        # It ended meanwhile, and its server-side slot may already serve a new generation.
        return _already_finished(generations, target)
    if wait_timeout is not None:
        wait_stopped(generations, result.stopped, wait_timeout)
    line = f"cancelled {target.id} (was {was_status}, {was_progress:.0f}%): {_short(target.prompt)}"
    if again:
        line = (
            f"cancelled {target.id} again (the server had not confirmed the earlier cancel; "
            f"it has now): {_short(target.prompt)}"
        )
    return CancelResult("generation", result.stopped, was_active=True, lines=[line])


def cancel_all(generations: Generations, *, wait_timeout: float | None = None) -> CancelResult:
    """Everything the server lets one client stop: SwarmUI's user, ComfyUI's whole queue.

    Our records are marked first, as in ``stop``: queued work ends without a word.
    """
    registry = generations.registry
    # Our pipelines start nothing more (their processes poll this mark).
    mark_pipelines_cancelled(registry, generations.key)
    ours = [r for r in registry.read().records_for(generations.key) if not r.is_final]
    cancelled = mark_cancelled(registry, [r.id for r in ours])
    server = generations.server()
    try:
        reach = server.cancel_all([r.handle for r in ours])
    except BaseException:
        unmark(registry, cancelled, ours, gone=None)
        raise
    # The server took it: everything of ours it stopped is confirmed stopped.
    confirm(registry, cancelled)
    # A generation of ours registered while the interrupt was on its way may have been hit
    # by it: queued work ends without a word, so without this mark its own process would
    # have to call the silent ending a failure (which also confirms the mark).
    answered = time.time()
    late = [
        r
        for r in registry.read().records_for(generations.key)
        if not r.is_final and r.created <= answered
    ]
    cancelled += mark_cancelled(registry, [r.id for r in late])
    ours += late
    if wait_timeout is not None:
        wait_stopped(generations, ours, wait_timeout, reach.others)
    line = f"{reach.text}; {len(cancelled)} of ours marked cancelled"
    # Active: work of ours, or (where the server shows it) anyone's that --all stopped.
    was_active = bool(ours) or bool(reach.stopped)
    return CancelResult(reach.scope, cancelled, was_active=was_active, lines=[line])


def _cancel_pipeline(
    generations: Generations, pipeline_id: str, server: str | None, wait_timeout: float | None
) -> PipelineCancel:
    """A whole pipeline: it starts nothing more, and its in-flight assets are interrupted."""
    found = find_pipeline(generations.registry, pipeline_id)
    done = None
    if found is not None and found.server_key == generations.key:
        done = cancel_pipeline(generations, pipeline_id)
    if done is None:
        where = f" on {server}" if server else ""
        raise CancelError(
            f"no pipeline {pipeline_id} of this client{where} "
            "(`asset-generator status` lists them)",
            "not_found",
        )
    if wait_timeout is not None and done.cancelled:
        wait_stopped(generations, done.cancelled, wait_timeout)
    return done


def wait_stopped(
    generations: Generations,
    records: list[GenerationRecord],
    timeout: float,
    others: Sequence[Handle] = (),
) -> None:
    """Poll the server until none of ``records`` (nor of ``others``: other clients' work
    that ``--all`` stopped) shows waiting or live work.

    Raises CancelError (``timeout``) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    pending = [r.handle for r in records] + list(others)
    server = generations.server()
    while pending:
        states = server.job_states(pending)
        pending = [h for h, s in zip(pending, states, strict=True) if s in jobstate.ACTIVE_STATES]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise CancelError(f"generation still running after {timeout:g} s", "timeout")
        time.sleep(POLL_SECONDS)


def _short(prompt: str, limit: int = 60) -> str:
    return prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"
