"""The `status` and `models list` documents, for the CLI and the MCP tools alike.

Each gathers from the server's adapter and our registry; neither knows click or rich (the
commands render them), so an agent's `server_status` is exactly `status --format json`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from asset_generator.jobs import Generations
from asset_generator.jobs.pipelines import pipeline_rows
from asset_generator.registry import GenerationRecord, Registry, remember_model_names
from asset_generator.server.types import Facts, ModelListing, Server

# Finished generations shown below the active ones, newest first.
RECENT_FINISHED = 5


@dataclass
class Report:
    """Everything `status` shows, gathered in one pass."""

    facts: Facts
    generations: list[GenerationRecord]
    # Finished generations of ours left out by the limit (`--all` shows them).
    older_not_shown: int = 0
    # Our pipelines (jobs.pipelines.pipeline_rows): running ones with their in-flight assets.
    pipelines: tuple[dict[str, Any], ...] = ()

    @property
    def response_ms(self) -> float:
        return self.facts.response_ms

    def to_json(self) -> dict[str, Any]:
        now = time.time()
        return {
            "ok": True,
            **self.facts.document,
            "generations": [
                {**r.public(), "age_seconds": max(int(now - r.created), 0)}
                for r in self.generations
            ],
            "older_not_shown": self.older_not_shown,
            "pipelines": list(self.pipelines),
        }


def gather(
    server: Server,
    generations: Generations,
    *,
    finished_limit: int | None = RECENT_FINISHED,
) -> Report:
    """Ask the server for its facts and our registry for our work; raises ServerError.

    ``finished_limit``: how many finished generations to include; None for all of them.
    """
    facts = server.facts()
    ours, older = our_generations(generations, finished_limit)
    return Report(
        facts=facts,
        generations=ours,
        older_not_shown=older,
        pipelines=tuple(pipeline_rows(generations.registry, generations.key)),
    )


def our_generations(
    generations: Generations, limit: int | None
) -> tuple[list[GenerationRecord], int]:
    """Our active records (dead processes checked on the server), the latest finished, and
    how many older finished ones were left out."""
    records = generations.registry.read().records_for(generations.key)
    generations.refresh([r for r in records if not r.is_final])
    active = [r for r in records if not r.is_final]
    finished = [r for r in records if r.is_final]
    shown = finished if limit is None else finished[:limit]
    return active + shown, len(finished) - len(shown)


def list_models(
    server: Server, registry: Registry, key: str, kind: str | None, folder: str, depth: int
) -> ModelListing:
    """The server's models of ``kind``; the names are cached for shell completion."""
    listing = server.models(kind, folder, depth)
    with registry.transaction() as state:
        remember_model_names(
            state, key, listing.kind, [m.name for m in listing.models], complete=listing.complete
        )
    return listing


def models_document(
    server: Server, listing: ModelListing, folder: str, depth: int
) -> dict[str, Any]:
    """The `models list --format json` document (also the MCP `list_models` result)."""
    return {
        "ok": True,
        "server": server.name,
        "type": server.type,
        "subtype": listing.kind,
        "path": folder,
        "depth": depth,
        "folders": list(listing.folders),
        "models": [dict(m.raw) for m in listing.models],
    }
