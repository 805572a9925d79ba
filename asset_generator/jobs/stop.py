"""Stopping our work from any process: mark the records cancelled first, then interrupt.

The order is the rule, and this is the one place it is written. A SwarmUI generation
interrupted while it waits ends without a word (protocol §5.2), and a ComfyUI prompt deleted
from the queue simply never runs: the generating process can tell "cancelled" from "failed"
only by the mark, which must be there when its stream ends. An interrupt that lands before the
server holds the request is lost; the generating process honours the mark once the server has
it (``generation.GenerationRun``).

A mark says its interrupt is unconfirmed (``GenerationRecord.cancel_unconfirmed``) until the
server takes it, the generating process sees its work end, or the server shows the work gone
once that process is dead (``Generations.refresh``). Until then the record is not final: a
lost interrupt (a second Ctrl-C, a dropped connection) is sent again by the next ``cancel``.
"""

from __future__ import annotations

import time
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
    """Mark records cancelled, their interrupt unconfirmed; return them as saved.

    A record already ended whose interrupt was never confirmed keeps its status and is marked
    again: its interrupt is about to be sent once more. Finished records are left alone.
    """
    changed = []
    now = time.time()
    with registry.transaction() as state:
        for record_id in record_ids:
            record = state.generations.get(record_id)
            if record is None or record.is_final:
                continue
            if record.ended:
                record.cancel_unconfirmed = now
            else:
                record.finish(CANCELLED, reason, unconfirmed=True)
            changed.append(record)
    return changed


def confirm(registry: Registry, marked: Iterable[GenerationRecord]) -> None:
    """The server took the interrupts of ``marked``: their work no longer runs there.

    A record marked again since (another cancel on its way) is left to that cancel.
    """
    marked = list(marked)
    with registry.transaction() as state:
        for mark in marked:
            record = state.generations.get(mark.id)
            if record is not None and record.cancel_unconfirmed == mark.cancel_unconfirmed:
                record.confirm()
    for mark in marked:
        mark.confirm()


def unmark(
    registry: Registry,
    marked: list[GenerationRecord],
    before: Iterable[GenerationRecord],
    *,
    gone: str | None,
) -> None:
    """Take back marks whose interrupt never landed: the previous state, or failed if ``gone``.

    ``gone``: why the server no longer has the work (a record cancelled before keeps its
    status, now confirmed). A record that its own process has finished since the mark (a new
    ``finished`` time) or that was confirmed meanwhile is left as it is.
    """
    previous = {record.id: record for record in before}
    with registry.transaction() as state:
        for mark in marked:
            record = state.generations.get(mark.id)
            if record is None or (record.status, record.finished, record.cancel_unconfirmed) != (
                mark.status,
                mark.finished,
                mark.cancel_unconfirmed,
            ):
                continue
            was = previous[mark.id]
            if gone is not None:
                if was.ended:
                    record.confirm()
                else:
                    record.finish(FAILED, gone)
            else:
                record.status, record.error = was.status, was.error
                record.finished, record.cancel_unconfirmed = was.finished, was.cancel_unconfirmed


def stop(
    generations: Generations,
    records: list[GenerationRecord],
    *,
    reason: str = CANCEL_REQUESTED,
    timeout: float | None = None,
    interrupt: Callable[[list[GenerationRecord]], list[bool]] | None = None,
) -> Stopped:
    """Mark ``records`` cancelled, then interrupt their work on the server.

    The marks are taken back if the interrupt cannot be sent (the error is raised), turned
    into failures for work the server no longer has, and confirmed where the server took the
    interrupt. ``interrupt``: how this process stops work it runs itself (a pipeline's or an
    MCP server's live runs) instead of asking the server about each record's handle; True
    where the server took it (each run then records how it ended, which confirms it).
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
    taken = [r for r, ok in zip(marked, delivered, strict=True) if ok]
    gone = [r for r, ok in zip(marked, delivered, strict=True) if not ok]
    if taken:
        confirm(generations.registry, taken)
    if gone:
        unmark(generations.registry, gone, records, gone=server.gone_text)
    return Stopped(taken, gone)
