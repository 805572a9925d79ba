"""Our generations on one server: which are active, which is current, how to stop one.

Records of processes that died are not assumed finished: their session is asked
(cli-contract §4). Interrupting one generation means interrupting its session, since SwarmUI
has no per-job cancel (swarmui-protocol.md §5.4).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from asset_generator.registry import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    GenerationRecord,
    PipelineRecord,
    Registry,
)

if TYPE_CHECKING:
    from asset_generator.pipeline.control import PipelineCancel
    from asset_generator.swarm.client import SwarmClient

T = TypeVar("T")

ORPHANED = "the generating process ended without recording a result"
SESSION_GONE = "the server no longer knows this generation's session"
CANCEL_REQUESTED = "cancelled by request"
NOTHING_ACTIVE = (
    "no active generation: only generations started by this client were checked; "
    "`asset-generator cancel --all` also stops work started elsewhere (web UI, other machines)"
)
POLL_SECONDS = 0.25


class Generations:
    """The registry's view of one server + credential, with the server asked when needed."""

    def __init__(
        self,
        registry: Registry,
        key: str,
        client: Callable[[], SwarmClient],
        debug: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.registry = registry
        self.key = key
        self._client = client
        self._debug = debug

    def client(self) -> SwarmClient:
        """The client for this server, created on first use."""
        return self._client()

    def find(self, generation_id: str) -> GenerationRecord | None:
        return self.registry.read().generations.get(generation_id)

    def active(self) -> list[GenerationRecord]:
        """Unfinished records, newest first, with dead processes checked against the server.

        Makes no request at all when every unfinished record belongs to a live local process.
        """
        records = [r for r in self.registry.read().records_for(self.key) if not r.is_final]
        return self.refresh(records)

    def refresh(self, records: list[GenerationRecord]) -> list[GenerationRecord]:
        """Ask the server about records whose process is gone; return those still active."""
        from asset_generator.swarm.errors import InvalidSession

        updates: dict[str, tuple[str, str | None]] = {}
        for record in records:
            alive = record.process_alive()
            if alive:
                continue
            try:
                counters = self._client().current_status(record.session_id).counters
            except InvalidSession:
                updates[record.id] = (FAILED, SESSION_GONE)
                continue
            if counters.busy:
                updates[record.id] = (RUNNING if counters.live else QUEUED, None)
            elif alive is False:
                updates[record.id] = (FAILED, ORPHANED)
        if updates:
            self._apply(updates)
        active = []
        for record in records:
            status, error = updates.get(record.id, (record.status, record.error))
            record.status, record.error = status, error
            if not record.is_final:
                active.append(record)
        return active

    def _apply(self, updates: dict[str, tuple[str, str | None]]) -> None:
        with self.registry.transaction() as state:
            for record_id, (status, error) in updates.items():
                record = state.generations.get(record_id)
                if record is None or record.is_final:
                    continue
                if status in (FAILED, CANCELLED):
                    record.finish(status, error)
                else:
                    record.status = status

    @staticmethod
    def current(active: Iterable[GenerationRecord]) -> GenerationRecord | None:
        """The generation the server is running, else the newest still queued."""
        ordered = sorted(active, key=lambda r: r.created, reverse=True)
        running = [r for r in ordered if r.status == RUNNING]
        return (running or ordered or [None])[0]

    def interrupt(self, record: GenerationRecord) -> bool:
        """Interrupt the record's session; False when the server no longer knows it.

        Tries ``InterruptGeneration`` first, for servers that have it; real SwarmUI answers
        ``bad_route``, which is remembered so later cancels go straight to
        ``InterruptAll {other_sessions: false}`` on that session (cli-contract §5).
        """
        from asset_generator.swarm.errors import InvalidSession, NotFound, UnknownRoute

        client = self._client()
        known = self.registry.read().server(self.key).interrupt_generation
        try:
            if known is not False:
                try:
                    client.interrupt_generation(record.session_id)
                except UnknownRoute:
                    self._debug("the server has no InterruptGeneration route; using InterruptAll")
                    self._remember_route(False)
                except NotFound as exc:
                    # A 404 page, not SwarmUI's JSON (a server or proxy without the route):
                    # InterruptAll, the protocol's own cancel, decides; nothing is remembered.
                    self._debug(
                        f"InterruptGeneration answered oddly ({exc.message}); using InterruptAll"
                    )
                else:
                    if known is None:
                        self._remember_route(True)
                    return True
            client.interrupt_all(record.session_id, other_sessions=False)
        except InvalidSession:
            self._apply({record.id: (FAILED, SESSION_GONE)})
            return False
        return True

    def _remember_route(self, supported: bool) -> None:
        with self.registry.transaction() as state:
            state.server(self.key).interrupt_generation = supported

    def mark_cancelled(self, record_ids: Iterable[str]) -> list[GenerationRecord]:
        """Mark records cancelled (those not already finished); return them as saved.

        Call it *before* interrupting: a generation interrupted while it waits for a backend
        ends without any message (protocol §5.2), so its own process can tell "cancelled"
        from "failed" only by this mark, which must be there when its socket ends.
        """
        changed = []
        with self.registry.transaction() as state:
            for record_id in record_ids:
                record = state.generations.get(record_id)
                if record is not None and not record.is_final:
                    record.finish(CANCELLED, CANCEL_REQUESTED)
                    changed.append(record)
        return changed

    def unmark_cancelled(
        self, marked: list[GenerationRecord], before: Iterable[GenerationRecord], *, gone: bool
    ) -> None:
        """Take back marks whose interrupt never landed: the previous state, or failed if gone.

        ``gone``: the server no longer knows the session. A record that its own process has
        finished since the mark (a new ``finished`` time) is left as that process saw it.
        """
        previous = {record.id: record.status for record in before}
        with self.registry.transaction() as state:
            for mark in marked:
                record = state.generations.get(mark.id)
                if record is None or record.status != CANCELLED or record.finished != mark.finished:
                    continue
                if gone:
                    record.finish(FAILED, SESSION_GONE)
                else:
                    record.status, record.error, record.finished = previous[mark.id], None, None


# -- cancelling (cli-contract §5 `cancel`; the CLI command and the MCP tool both call these) ----


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
    from asset_generator.pipeline.control import current_job

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
    from asset_generator.registry import active_under_other_credentials

    elsewhere = active_under_other_credentials(generations.registry.read(), server, generations.key)
    if not elsewhere:
        return
    count = len(elsewhere)
    ids = ", ".join(r.id for r in elsewhere[:3]) + (", …" if count > 3 else "")
    these = "it was" if count == 1 else "they were"
    raise CancelError(
        f"nothing cancelled: {count} generation{'s' if count > 1 else ''} of this client on "
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
    """Mark ``target`` cancelled, then interrupt its session (marks taken back if that fails)."""
    was_status, was_progress = target.status, target.progress
    cancelled = generations.mark_cancelled([target.id])
    if not cancelled:
        # It ended meanwhile, and its session may already serve a new generation.
        return _already_finished(generations, target)
    try:
        delivered = generations.interrupt(target)
    except BaseException:
        generations.unmark_cancelled(cancelled, [target], gone=False)
        raise
    if not delivered:
        generations.unmark_cancelled(cancelled, [target], gone=True)
        return CancelResult(
            "generation",
            [],
            was_active=False,
            notes=[f"{target.id} is no longer known to the server; nothing to cancel"],
        )
    if wait_timeout is not None:
        wait_stopped(generations, [target.session_id], wait_timeout)
    line = f"cancelled {target.id} (was {was_status}, {was_progress:.0f}%): {_short(target.prompt)}"
    return CancelResult("generation", cancelled, was_active=True, lines=[line])


def cancel_all(
    generations: Generations,
    with_session: Callable[[Callable[[str], T]], T],
    *,
    wait_timeout: float | None = None,
) -> CancelResult:
    """``InterruptAll {other_sessions: true}``: every session of this server user.

    On a server without accounts every client is the same user, browser tabs included.
    ``with_session`` runs a call on a control session (``App.with_session``).
    """
    from asset_generator.pipeline.control import mark_pipelines_cancelled

    registry = generations.registry
    # Our pipelines start nothing more (their processes poll this mark).
    mark_pipelines_cancelled(registry, generations.key)
    ours = [r for r in registry.read().records_for(generations.key) if not r.is_final]
    # Marked first, as in interrupt_generation: queued generations end without a word.
    cancelled = generations.mark_cancelled(r.id for r in ours)
    try:
        with_session(
            lambda session: generations.client().interrupt_all(session, other_sessions=True)
        )
    except BaseException:
        generations.unmark_cancelled(cancelled, ours, gone=False)
        raise
    # A generation of ours registered while the interrupt was on its way may have been hit
    # by it: queued work ends without a word (protocol §5.2), so without this mark its own
    # process would have to call the silent ending a failure.
    answered = time.time()
    late = [
        r
        for r in registry.read().records_for(generations.key)
        if not r.is_final and r.created <= answered
    ]
    cancelled += generations.mark_cancelled(r.id for r in late)
    ours += late
    if wait_timeout is not None:
        wait_stopped(generations, sorted({r.session_id for r in ours}), wait_timeout)
    sessions = registry.read().server(generations.key).sessions
    session = sessions[-1] if sessions else None
    user = session.user_id if session and session.user_id else "this user"
    reach = (
        " (a server without accounts: that is every client, browser tabs included)"
        if user == "local"
        else ""
    )
    line = (
        f"interrupted all generations of {user} on {generations.client().server}{reach}; "
        f"{len(cancelled)} of ours marked cancelled"
    )
    return CancelResult("user", cancelled, was_active=bool(ours), lines=[line])


def _cancel_pipeline(
    generations: Generations, pipeline_id: str, server: str | None, wait_timeout: float | None
) -> PipelineCancel:
    """A whole pipeline: it starts nothing more, and its in-flight assets are interrupted."""
    from asset_generator.pipeline.control import cancel_pipeline, find_pipeline

    found = find_pipeline(generations.registry, pipeline_id)
    waiting = None
    if wait_timeout is not None:
        timeout = wait_timeout

        def waiting(session_ids: list[str]) -> None:
            wait_stopped(generations, session_ids, timeout)

    done = None
    if found is not None and found.server_key == generations.key:
        done = cancel_pipeline(generations.registry, generations, pipeline_id, waiting)
    if done is None:
        where = f" on {server}" if server else ""
        raise CancelError(
            f"no pipeline {pipeline_id} of this client{where} "
            "(`asset-generator status` lists them)",
            "not_found",
        )
    return done


def wait_stopped(generations: Generations, session_ids: list[str], timeout: float) -> None:
    """Poll the interrupted sessions until none shows waiting or live work.

    Raises CancelError (``timeout``) when ``timeout`` seconds pass first.
    """
    from asset_generator.swarm.errors import InvalidSession

    deadline = time.monotonic() + timeout
    pending = list(session_ids)
    while pending:
        still = []
        for session_id in pending:
            try:
                if generations.client().current_status(session_id).counters.busy:
                    still.append(session_id)
            except InvalidSession:
                continue
        pending = still
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise CancelError(f"generation still running after {timeout:g} s", "timeout")
        time.sleep(POLL_SECONDS)


def _short(prompt: str, limit: int = 60) -> str:
    return prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"
