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
    """Everything `status` shows, gathered in one pass.

    ``facts`` is None when the server did not answer (``problem`` says why): the records are
    then as this client last saved them, their live state unknown.
    """

    facts: Facts | None
    generations: list[GenerationRecord]
    # Finished generations of ours left out by the limit (`--all` shows them).
    older_not_shown: int = 0
    # Our pipelines (jobs.pipelines.pipeline_rows): running ones with their in-flight assets.
    pipelines: tuple[dict[str, Any], ...] = ()
    # Without facts: the server as shown to the user, and why it could not be asked.
    server: str = ""
    problem: str | None = None

    @property
    def response_ms(self) -> float:
        return self.facts.response_ms if self.facts is not None else 0.0

    @property
    def ours(self) -> bool:
        """Anything of ours to show (generations, older ones, pipelines)."""
        return bool(self.generations or self.older_not_shown or self.pipelines)

    def to_json(self) -> dict[str, Any]:
        """The `status` document; without facts, the keys a failure document adds."""
        now = time.time()
        ours = {
            "generations": [
                {**r.public(), "age_seconds": max(int(now - r.created), 0)}
                for r in self.generations
            ],
            "older_not_shown": self.older_not_shown,
            "pipelines": list(self.pipelines),
        }
        if self.facts is None:
            return {"live_state": "unknown", **ours}
        return {"ok": True, **self.facts.document, **ours}


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


def gather_local(
    generations: Generations,
    server: str,
    problem: str,
    *,
    finished_limit: int | None = RECENT_FINISHED,
) -> Report:
    """Our work as the registry holds it, for a server that did not answer (no request)."""
    ours, older = our_generations(generations, finished_limit, ask=False)
    return Report(
        facts=None,
        generations=ours,
        older_not_shown=older,
        pipelines=tuple(pipeline_rows(generations.registry, generations.key)),
        server=server,
        problem=problem,
    )


def our_generations(
    generations: Generations, limit: int | None, *, ask: bool = True
) -> tuple[list[GenerationRecord], int]:
    """Our active records (dead processes checked on the server unless not ``ask``), the
    latest finished, and how many older finished ones were left out."""
    records = generations.registry.read().records_for(generations.key)
    if ask:
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
