"""Pipelines seen from other processes: which is running, how far, and how to stop one.

A pipeline is stopped by marking its ``pipe_`` record and its in-flight ``gen_`` records
cancelled in one transaction, then interrupting those generations' sessions. The pipeline
process polls its record and starts nothing more; an asset it registers after the mark sees
the mark and never sends its request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from asset_generator.registry import (
    CANCELLED,
    FAILED,
    GenerationRecord,
    PipelineRecord,
    Registry,
)

if TYPE_CHECKING:
    from asset_generator.jobs import Generations

ORPHANED = "the pipeline process ended without recording a result"
CANCEL_REQUESTED = "cancelled by request"


@dataclass
class PipelineCancel:
    """What cancelling a pipeline did."""

    pipeline: PipelineRecord
    cancelled: list[GenerationRecord]
    was_active: bool


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


def newest_job_pipeline(
    registry: Registry, key: str, active: list[GenerationRecord]
) -> PipelineRecord | None:
    """The pipeline, if the newest active job of ours is one (not a lone generation).

    ``active``: our active generation records; a pipeline's own assets do not count as jobs.
    """
    pipelines = active_pipelines(registry, key)
    if not pipelines:
        return None
    lone = [r for r in active if r.pipeline_id is None]
    newest_lone = max((r.created for r in lone), default=None)
    if newest_lone is not None and newest_lone > pipelines[0].created:
        return None
    return pipelines[0]


def lone_generations(active: list[GenerationRecord]) -> list[GenerationRecord]:
    """Active generations that are not an asset of a pipeline."""
    return [r for r in active if r.pipeline_id is None]


def cancel_pipeline(
    registry: Registry, generations: Generations, pipeline_id: str
) -> PipelineCancel | None:
    """Mark the pipeline and its in-flight assets cancelled, then interrupt their sessions.

    None when there is no such pipeline. A pipeline already finished is left as it is
    (``was_active`` False): cancel stays idempotent.
    """
    marked: list[GenerationRecord] = []
    with registry.transaction() as state:
        pipeline = state.pipelines.get(pipeline_id)
        if pipeline is None:
            return None
        if pipeline.is_final:
            return PipelineCancel(pipeline, [], was_active=False)
        pipeline.finish(CANCELLED, CANCEL_REQUESTED)
        for record in state.generations.values():
            if record.pipeline_id == pipeline_id and not record.is_final:
                record.finish(CANCELLED, CANCEL_REQUESTED)
                marked.append(record)
    for record in marked:
        generations.interrupt(record)
    return PipelineCancel(pipeline, marked, was_active=True)
