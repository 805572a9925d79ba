"""Pipelines seen from other processes: which is running, how far, and how to stop one.

A pipeline is stopped by marking its ``pipe_`` record cancelled, then stopping its in-flight
``gen_`` records (``stop``: marked, then interrupted on the server). The pipeline process
polls its record and starts nothing more; an asset it registers after the mark sees the mark
and never sends its request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asset_generator.jobs.generations import CANCEL_REQUESTED, Generations
from asset_generator.jobs.stop import stop
from asset_generator.registry import (
    CANCELLED,
    FAILED,
    GenerationRecord,
    PipelineRecord,
    Registry,
)
from asset_generator.text import plural

ORPHANED = "the pipeline process ended without recording a result"


@dataclass
class PipelineCancel:
    """What cancelling a pipeline did, shaped like jobs' cancel results (notes, lines, JSON)."""

    pipeline: PipelineRecord
    cancelled: list[GenerationRecord]
    was_active: bool

    @property
    def notes(self) -> list[str]:
        """Messages for stderr."""
        if self.was_active:
            return []
        return [f"{self.pipeline.id} already {self.pipeline.status}; nothing to cancel"]

    @property
    def lines(self) -> list[str]:
        """The summary a terminal shows on stdout."""
        if not self.was_active:
            return []
        pipe = self.pipeline
        return [
            f"cancelled {pipe.id} ({pipe.done} of {plural(pipe.total, 'asset')} done, "
            f"{len(self.cancelled)} in flight interrupted): {pipe.spec}"
        ]

    def to_json(self) -> dict[str, Any]:
        """cancel's document (scope "generation": the in-flight assets) plus the pipeline."""
        return {
            "ok": True,
            "scope": "generation",
            "cancelled": [r.public() for r in self.cancelled],
            "was_active": self.was_active,
            "pipeline": self.pipeline.public(),
        }


def find_pipeline(registry: Registry, pipeline_id: str) -> PipelineRecord | None:
    return registry.read().pipelines.get(pipeline_id)


def active_pipelines(registry: Registry, key: str) -> list[PipelineRecord]:
    """This server's unfinished pipelines, newest first; a dead process's are marked failed."""
    state = registry.read()
    records = [p for p in state.pipelines.values() if p.server_key == key and not p.is_final]
    dead = [p.id for p in records if p.process_alive() is False]
    if dead:
        with registry.transaction() as state:
            for pipeline_id in dead:
                saved = state.pipelines.get(pipeline_id)
                if saved is not None and not saved.is_final:
                    saved.finish(FAILED, ORPHANED)
    alive = [p for p in records if p.id not in dead]
    return sorted(alive, key=lambda p: p.created, reverse=True)


def in_flight(registry: Registry, pipeline_id: str) -> list[GenerationRecord]:
    """The pipeline's assets still queued or running, oldest first."""
    records = [
        r
        for r in registry.read().generations.values()
        if r.pipeline_id == pipeline_id and not r.is_final
    ]
    return sorted(records, key=lambda r: r.created)


def cancel_pipeline(generations: Generations, pipeline_id: str) -> PipelineCancel | None:
    """Mark the pipeline cancelled, then stop its in-flight assets.

    None when there is no such pipeline (the caller checks it is one of this server and
    credentials). A pipeline already finished is left as it is (``was_active`` False):
    cancel stays idempotent.
    """
    registry = generations.registry
    with registry.transaction() as state:
        pipeline = state.pipelines.get(pipeline_id)
        if pipeline is None:
            return None
        if pipeline.is_final:
            return PipelineCancel(pipeline, [], was_active=False)
        pipeline.finish(CANCELLED, CANCEL_REQUESTED)
    flying = in_flight(registry, pipeline_id)
    stopped = stop(generations, flying).stopped if flying else []
    return PipelineCancel(pipeline, stopped, was_active=True)


def current_job(
    registry: Registry,
    key: str,
    active: list[GenerationRecord],
    pick: Callable[[list[GenerationRecord]], GenerationRecord | None],
) -> PipelineRecord | GenerationRecord | None:
    """What ``cancel`` without an argument stops: the newest active job of ours.

    A running pipeline counts as one job (its assets are not jobs of their own); otherwise
    ``pick`` chooses among the lone generations (the live one, else the newest queued).
    """
    pipelines = active_pipelines(registry, key)
    running = {p.id for p in pipelines}
    lone = [r for r in active if r.pipeline_id is None or r.pipeline_id not in running]
    newest_lone = max((r.created for r in lone), default=None)
    if pipelines and (newest_lone is None or pipelines[0].created >= newest_lone):
        return pipelines[0]
    return pick(lone)


def mark_pipelines_cancelled(registry: Registry, key: str) -> list[PipelineRecord]:
    """``cancel --all``: every unfinished pipeline of ours starts nothing more."""
    marked = []
    with registry.transaction() as state:
        for pipeline in state.pipelines.values():
            if pipeline.server_key == key and not pipeline.is_final:
                pipeline.finish(CANCELLED, CANCEL_REQUESTED)
                marked.append(pipeline)
    return marked


def pipeline_rows(registry: Registry, key: str, recent: int = 3) -> list[dict[str, Any]]:
    """For ``status``: running pipelines with their in-flight assets, then the latest ended."""
    active = active_pipelines(registry, key)
    state = registry.read()
    ended = sorted(
        (p for p in state.pipelines.values() if p.server_key == key and p.is_final),
        key=lambda p: p.finished or p.created,
        reverse=True,
    )[:recent]
    rows = []
    for pipeline in active + ended:
        flying = [] if pipeline.is_final else in_flight(registry, pipeline.id)
        rows.append(
            {
                **pipeline.public(),
                "in_flight": [
                    {"id": r.id, "status": r.status, "progress": round(r.progress, 1),
                     "prompt": r.prompt}
                    for r in flying
                ],
            }
        )  # fmt: skip
    return rows
