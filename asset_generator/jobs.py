"""Our generations on one server: which are active, which is current, how to stop one.

Records of processes that died are not assumed finished: their session is asked
(cli-contract §4). Interrupting one generation means interrupting its session, since SwarmUI
has no per-job cancel (swarmui-protocol.md §5.4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from asset_generator.registry import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    GenerationRecord,
    Registry,
)

if TYPE_CHECKING:
    from asset_generator.swarm.client import SwarmClient

ORPHANED = "the generating process ended without recording a result"
SESSION_GONE = "the server no longer knows this generation's session"
CANCEL_REQUESTED = "cancelled by request"


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
        from asset_generator.swarm.errors import InvalidSession, UnknownRoute

        client = self._client()
        known = self.registry.read().server(self.key).interrupt_generation
        try:
            if known is not False:
                try:
                    client.interrupt_generation(record.session_id)
                except UnknownRoute:
                    self._debug("the server has no InterruptGeneration route; using InterruptAll")
                    self._remember_route(False)
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
