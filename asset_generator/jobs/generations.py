"""Our generations on one server: which are active, which is current, what the server says.

Records of processes that died are not assumed finished: the server is asked about their
handles (cli-contract §4). The server's adapter is created only when a question needs it,
so a command with nothing to ask makes no request and imports no protocol code.
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
from asset_generator.server import jobstate

if TYPE_CHECKING:
    from asset_generator.server.types import Server

ORPHANED = "the generating process ended without recording a result"
CANCEL_REQUESTED = "cancelled by request"


class Generations:
    """The registry's view of one server + credential, with the server asked when needed."""

    def __init__(
        self,
        registry: Registry,
        key: str,
        server: Callable[[], Server],
        debug: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.registry = registry
        self.key = key
        self._server = server
        self.debug = debug

    def server(self) -> Server:
        """The server's adapter, created on first use."""
        return self._server()

    def find(self, generation_id: str) -> GenerationRecord | None:
        return self.registry.read().generations.get(generation_id)

    def active(self) -> list[GenerationRecord]:
        """Unfinished records, newest first, with dead processes checked against the server.

        Makes no request at all when every unfinished record belongs to a live local process.
        """
        records = [r for r in self.registry.read().records_for(self.key) if not r.is_final]
        return self.refresh(records)

    def refresh(self, records: list[GenerationRecord]) -> list[GenerationRecord]:
        """Ask the server about records whose process is gone; return those still active.

        A record whose cancel was never confirmed (``cancel_unconfirmed``) keeps its status:
        it is confirmed when the server shows its work gone, else it stays active.
        """
        asked = [r for r in records if not r.process_alive()]
        updates: dict[str, tuple[str, str | None]] = {}
        confirmed: set[str] = set()
        if asked:
            server = self.server()
            ours = [r for r in asked if r.server_type == server.type]
            for record in asked:
                if record.server_type != server.type and record.process_alive() is False:
                    if record.ended:
                        confirmed.add(record.id)
                        continue
                    updates[record.id] = (
                        FAILED,
                        f"{server.name} is now a {server.label} server; this generation's work "
                        "there cannot be looked up",
                    )
            states = server.job_states([r.handle for r in ours]) if ours else []
            for record, state in zip(ours, states, strict=True):
                dead = record.process_alive() is False
                if record.ended:
                    if state == jobstate.GONE or (state == jobstate.IDLE and dead):
                        confirmed.add(record.id)
                elif state == jobstate.GONE:
                    updates[record.id] = (FAILED, server.gone_text)
                elif state in jobstate.ACTIVE_STATES:
                    updates[record.id] = (RUNNING if state == jobstate.RUNNING else QUEUED, None)
                elif dead:
                    updates[record.id] = (FAILED, ORPHANED)
        if updates or confirmed:
            self._apply(updates, confirmed)
        active = []
        for record in records:
            status, error = updates.get(record.id, (record.status, record.error))
            record.status, record.error = status, error
            if record.id in confirmed:
                record.confirm()
            if not record.is_final:
                active.append(record)
        return active

    def _apply(self, updates: dict[str, tuple[str, str | None]], confirmed: set[str]) -> None:
        with self.registry.transaction() as state:
            for record_id in confirmed:
                record = state.generations.get(record_id)
                if record is not None:
                    record.confirm()
            for record_id, (status, error) in updates.items():
                record = state.generations.get(record_id)
                if record is None or record.ended:
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
