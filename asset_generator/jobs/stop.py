"""Stopping our work from any process: mark the records cancelled first, then interrupt.

The order is the rule, and this is the one place it is written. A SwarmUI generation
interrupted while it waits ends without a word (protocol §5.2), and a ComfyUI prompt deleted
from the queue simply never runs: the generating process can tell "cancelled" from "failed"
only by the mark, which must be there when its stream ends. An interrupt that lands before the
server holds the request is lost; the generating process honours the mark once the server has
it (``generation.GenerationRun``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from asset_generator.jobs.generations import CANCEL_REQUESTED, Generations
from asset_generator.registry import CANCELLED, FAILED, GenerationRecord, Registry


@dataclass
class Stopped:
    """What a stop reached: records whose interrupt was delivered, and those the server lost."""

    stopped: list[GenerationRecord]
    gone: list[GenerationRecord]


def mark_cancelled(
    registry: Registry, record_ids: Iterable[str], reason: str = CANCEL_REQUESTED
) -> list[GenerationRecord]:
    """Mark records cancelled (those not already finished); return them as saved."""
    changed = []
    with registry.transaction() as state:
        for record_id in record_ids:
            record = state.generations.get(record_id)
            if record is not None and not record.is_final:
                record.finish(CANCELLED, reason)
                changed.append(record)
    return changed


def unmark(
    registry: Registry,
    marked: list[GenerationRecord],
    before: Iterable[GenerationRecord],
    *,
    gone: str | None,
) -> None:
    """Take back marks whose interrupt never landed: the previous state, or failed if ``gone``.

    ``gone``: why the server no longer has the work. A record that its own process has
    finished since the mark (a new ``finished`` time) is left as that process saw it.
    """
    previous = {record.id: record.status for record in before}
    with registry.transaction() as state:
        for mark in marked:
            record = state.generations.get(mark.id)
            if record is None or record.status != CANCELLED or record.finished != mark.finished:
                continue
            if gone is not None:
                record.finish(FAILED, gone)
            else:
                record.status, record.error, record.finished = previous[mark.id], None, None


def stop(
    generations: Generations,
    records: list[GenerationRecord],
    *,
    reason: str = CANCEL_REQUESTED,
    timeout: float | None = None,
    interrupt: Callable[[list[GenerationRecord]], list[bool]] | None = None,
) -> Stopped:
    """Mark ``records`` cancelled, then interrupt their work on the server.

    The marks are taken back if the interrupt cannot be sent (the error is raised), and turned
    into failures for work the server no longer has. ``interrupt``: how this process stops
    work it runs itself (a pipeline's or an MCP server's live runs) instead of asking the
    server about each record's handle; True where the server took it.
    """
    marked = mark_cancelled(generations.registry, [r.id for r in records], reason)
    if not marked:
        return Stopped([], [])
    try:
        if interrupt is not None:
            # Our own live runs: each ends by itself once stopped, and records how.
            interrupt(marked)
            return Stopped(marked, [])
        server = generations.server()
        delivered = server.cancel([r.handle for r in marked], timeout=timeout)
    except BaseException:
        unmark(generations.registry, marked, records, gone=None)
        raise
    gone = [r for r, ok in zip(marked, delivered, strict=True) if not ok]
    if gone:
        unmark(generations.registry, gone, records, gone=server.gone_text)
    return Stopped([r for r, ok in zip(marked, delivered, strict=True) if ok], gone)
