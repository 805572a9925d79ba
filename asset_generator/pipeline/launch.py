"""A whole pipeline run, from the spec to its outcome: `pipeline` and the MCP tool alike.

``load`` reads the spec and makes the plan (what a dry run prints); ``launch`` records the
``pipe_`` run and builds the runner over the one generation path; the caller runs it under
its own signal handling, then ``conclude`` (or ``abandon`` after a stop) settles the record
and says how it ended. Neither click nor rich is known here: each caller renders the result.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from asset_generator.pipeline.plan import Plan, PlannedAsset, make_plan
from asset_generator.pipeline.spec import Spec, SpecError, load_spec, parse_spec
from asset_generator.server.types import RUN_OPTIONS

if TYPE_CHECKING:
    from asset_generator.images import PostProcess
    from asset_generator.pipeline.manifest import Decision, Manifest
    from asset_generator.pipeline.run import AssetResult, PipelineRun, Reporter
    from asset_generator.registry import PipelineRecord, Registry
    from asset_generator.server.types import Server, SetInput, Workflow
    from asset_generator.settings import Resolved

DEFAULT_OUTPUT_DIR = "pipeline-output"
SUMMARY_KEYS = ("succeeded", "skipped", "failed", "cancelled", "not_started")
# How an inline spec (the MCP tool's) is named in messages and records.
INLINE_SPEC = "(inline spec)"


class Host(Protocol):
    """What a pipeline needs from its caller (the CLI's App is one)."""

    registry: Registry
    server_key: str
    server_name: str

    def server(self) -> Server: ...

    def known_type(self) -> str | None: ...


@dataclass
class Options:
    """How to run a spec: `pipeline`'s options beyond the generation parameters."""

    output_dir: Path = Path(DEFAULT_OUTPUT_DIR)
    base_seed: int = -1
    style_prefix: str | None = None
    style_suffix: str | None = None
    parallel: int | None = None
    force: bool = False
    overwrite: bool = False
    continue_on_error: bool = False


@dataclass
class Loaded:
    """A spec with its plan, ready for a dry run or a run."""

    spec: Spec
    plan: Plan
    manifest: Manifest
    # Where the base seed came from: "given", "manifest" (resume) or "random".
    origin: str
    # The spec as messages and the manifest name it (a path, or INLINE_SPEC).
    label: str
    # What each asset needs (make, skip, blocked), and why, by asset index.
    decisions: dict[int, Decision]

    @property
    def seed_note(self) -> str:
        seed = self.plan.base_seed
        if self.origin == "random":
            return f"base seed {seed} (random; --base-seed {seed} repeats it)"
        if self.origin == "manifest":
            return f"base seed {seed} (from the manifest of the last run)"
        return f"base seed {seed}"

    def dry_run_document(self) -> dict[str, Any]:
        """`pipeline --dry-run --format json`'s document."""
        return {
            "ok": True,
            "dry_run": True,
            "base_seed": self.plan.base_seed,
            "assets": [
                {
                    **a.public(),
                    "action": self.decisions[a.index].verdict,
                    "reasons": list(self.decisions[a.index].reasons),
                }
                for a in self.plan.assets
            ],
        }

    def reasons(self, *, dry_run: bool) -> list[str]:
        """Why assets are made again (or blocked): one line per reason, with a count and ids.

        The first run into a directory has nothing to explain; a rerun says what changed
        since (prompt, seed, parameters, post-processing), which files went missing or were
        altered, and which assets did not succeed last time. A dry run also says what it
        would skip.
        """
        from asset_generator.pipeline.manifest import (
            BLOCKED,
            GENERATE,
            NEW,
            PARAMS,
            REASONS,
            SKIP,
        )
        from asset_generator.text import one_line

        if not self.manifest.entries:
            return []
        found: dict[tuple[str, str], list[str]] = {}
        changed: dict[str, None] = {}
        for asset in self.plan.assets:
            decision = self.decisions[asset.index]
            changed.update(dict.fromkeys(decision.changed))
            for reason in decision.reasons or ((SKIP,) if decision.verdict == SKIP else ()):
                found.setdefault((decision.verdict, reason), []).append(asset.id)
        verbs = {
            GENERATE: "would regenerate" if dry_run else "regenerating",
            BLOCKED: "would fail" if dry_run else "failing",
            SKIP: "would skip" if dry_run else None,
        }
        words = {
            **REASONS,
            PARAMS: f"{REASONS[PARAMS]} ({', '.join(changed)})",
            SKIP: "done with the same prompt, seed and parameters",
        }
        lines = []
        for verdict, verb in verbs.items():
            for reason, text in words.items():
                ids = found.get((verdict, reason))
                if not ids or verb is None:
                    continue
                if verdict == BLOCKED:
                    text += "; --overwrite replaces it"
                said = ("would make" if dry_run else "making") if reason == NEW else verb
                shown = ", ".join(ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")
                noun = "asset" if len(ids) == 1 else "assets"
                lines.append(one_line(f"{said} {len(ids)} {noun}: {text}: {shown}"))
        return lines


def load(
    source: Path | str,
    options: Options,
    defaults: list[tuple[str, Any]],
    overrides: list[tuple[str, Any]],
    postprocess: PostProcess | None = None,
    *,
    label: str | None = None,
) -> Loaded:
    """Read the spec (a path, or the spec's own text), plan it, and decide against the
    manifest what each asset needs (each verdict may cost a file hash).

    ``defaults`` (the config's [generate] values) go below the spec's ``params:``,
    ``overrides`` (the caller's options) above them (``plan.make_plan``). ``label``: how
    messages name the spec (default: the path as given). Raises SpecFileError (unreadable
    file) and SpecError (unusable spec), before anything is sent or written.
    """
    from asset_generator.pipeline.manifest import Manifest

    if isinstance(source, Path):
        spec = load_spec(source)
        label = label or str(source)
    else:
        spec, label = parse_spec(source, INLINE_SPEC), INLINE_SPEC
    manifest = Manifest.load(options.output_dir)
    manifest.set_postprocess(postprocess)
    base_seed, origin = _base_seed(options.base_seed, manifest)
    plan = make_plan(
        spec,
        output_dir=options.output_dir,
        base_seed=base_seed,
        style_prefix=options.style_prefix,
        style_suffix=options.style_suffix,
        defaults=defaults,
        overrides=overrides,
    )
    if manifest.problem:
        plan.warnings.append(f"warning: {manifest.problem}")
    decisions = {
        a.index: manifest.decide(a, force=options.force, overwrite=options.overwrite)
        for a in plan.assets
    }
    return Loaded(spec, plan, manifest, origin, label, decisions)


def command_line(
    params: Iterable[tuple[str, Any]],
    options: dict[str, Any],
    *,
    loras: Iterable[str] = (),
    workflow: Workflow | None = None,
    sets: Iterable[SetInput] = (),
) -> list[tuple[str, Any]]:
    """The caller's generation options for every asset, as (name, value) pairs above the
    spec's ``params:``: free parameters, then the explicit options (which win over them),
    LoRAs, the workflow and its ``set`` values."""

    pairs: list[tuple[str, Any]] = list(params)
    pairs += [(name, options[name]) for name in RUN_OPTIONS if options.get(name) is not None]
    loras = list(loras)
    if loras:
        pairs.append(("loras", loras))
    if workflow is not None:
        pairs.append(("workflow", workflow))
    sets = list(sets)
    if sets:
        pairs.append(("set", sets))
    return pairs


def run_params(
    settings: Resolved,
    params: Iterable[tuple[str, Any]],
    options: dict[str, Any],
    *,
    loras: Iterable[str] = (),
    workflow: Workflow | None = None,
    sets: Iterable[SetInput] = (),
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """``load``'s ``defaults`` and ``overrides``: the config's [generate] values (below the
    spec's ``params:``) and the caller's options (``command_line``, above them)."""
    from asset_generator.generate_settings import config_defaults

    defaults = list(config_defaults(settings, RUN_OPTIONS).items())
    overrides = command_line(params, options, loras=loras, workflow=workflow, sets=sets)
    return defaults, overrides


def _base_seed(given: int, manifest: Manifest) -> tuple[int, str]:
    """The base seed and where it came from: given, the manifest (resume), or random."""
    if given >= 0:
        return given, "given"
    if manifest.base_seed is not None:
        return manifest.base_seed, "manifest"
    import secrets

    # Well inside int64, so base + offsets + indices never overflow a SwarmUI seed.
    return secrets.randbelow(2**31), "random"


@dataclass
class Launch:
    """A recorded pipeline run and its runner; the caller calls ``runner.run()``."""

    host: Host
    loaded: Loaded
    record: PipelineRecord
    runner: PipelineRun
    parallel: int
    started: float = field(default_factory=time.monotonic)

    @property
    def plan(self) -> Plan:
        return self.loaded.plan

    @property
    def to_generate(self) -> int:
        """How many assets this run sends (the rest are skipped or blocked)."""
        from asset_generator.pipeline.manifest import GENERATE

        return sum(1 for d in self.loaded.decisions.values() if d.verdict == GENERATE)

    def describe(self) -> str:
        """The line that says what runs: id, size, seed, parallelism, where."""
        from asset_generator.text import plural

        return (
            f"{self.record.id}: {plural(len(self.plan.assets), 'asset')} from "
            f"{self.loaded.label}, {self.loaded.seed_note}, {self.parallel} at once, into "
            f"{self.plan.output_dir}"
        )

    def results(self) -> list[AssetResult]:
        """Every asset's result so far, in plan order."""
        return [self.runner.results[a.index] for a in self.plan.assets]

    def document(self, results: list[AssetResult], *, ok: bool) -> dict[str, Any]:
        """`pipeline --format json`'s document."""
        return {
            "ok": ok,
            "pipeline": {
                "id": self.record.id,
                "file": self.loaded.label,
                "output_dir": str(self.plan.output_dir),
                "base_seed": self.record.base_seed,
                "parallel": self.parallel,
            },
            "summary": summary(results),
            "assets": [r.public() for r in results],
        }

    def abandon(self, status: str, reason: str) -> dict[str, Any]:
        """After a signal or a file error: stop what is in flight, record ``status``.

        Returns the document of what the run did up to then.
        """
        self.runner.abandon(reason)
        results = self.results()
        finish_record(self.host.registry, self.runner, status, reason)
        return self.document(results, ok=False)

    def conclude(self, results: list[AssetResult]) -> Conclusion:
        """Settle the record after ``runner.run()`` returned, and say how the run ended."""
        from asset_generator.registry import CANCELLED, FAILED, SUCCEEDED

        registry, record, runner = self.host.registry, self.record, self.runner
        counted = summary(results)
        ok = counted["succeeded"] + counted["skipped"] == len(results)
        document = self.document(results, ok=ok)
        counts = ", ".join(
            f"{counted[k]} {k.replace('_', ' ')}" for k in SUMMARY_KEYS if counted[k]
        )
        if ok:
            finish_record(registry, runner, SUCCEEDED, None)
            elapsed = time.monotonic() - self.started
            return Conclusion(
                SUCCEEDED, None, f"{record.id}: {counts} in {elapsed:.1f} s", document
            )
        if runner.cancelled:
            finish_record(registry, runner, CANCELLED, "cancelled by request")
            return Conclusion(
                CANCELLED,
                "cancelled",
                # Only a cancel of ours marks the pipeline's record (cli-contract §7: say who).
                f"cancelled: {record.id} was cancelled by `asset-generator cancel`; {counts}",
                document,
            )
        if counted["cancelled"] and not counted["failed"]:
            # `cancel gen_…` of one asset: the rest went on, but the set is not whole because
            # someone cancelled, which the contract reports as `cancelled`, not as a failure.
            cancelled = [r for r in results if r.status == CANCELLED]
            ids = ", ".join(r.asset.id for r in cancelled)
            ours = [r.cancelled_by_us for r in cancelled]
            who = "`asset-generator cancel`" if all(ours) else "the web UI or another client"
            if any(ours) and not all(ours):
                who = f"`asset-generator cancel` and {who}"
            finish_record(registry, runner, CANCELLED, f"assets cancelled: {ids}")
            message = f"cancelled: {ids} of {record.id} by {who}; {counts}"
            return Conclusion(CANCELLED, "cancelled", message, document)
        finish_record(registry, runner, FAILED, runner.stop_reason or "some assets failed")
        first = next((r for r in results if r.status == "failed"), None)
        why = f"; first failure: {first.asset.id}: {first.error}" if first else ""
        return Conclusion(FAILED, "partial", f"{record.id} incomplete: {counts}{why}", document)


@dataclass
class Conclusion:
    """How a pipeline ended: ``code`` None when every asset succeeded or was skipped."""

    status: str
    code: str | None
    message: str
    document: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.code is None


class Unseen:
    """A reporter that shows nothing (the caller may put its own in ``runner.reporter``);
    reporters that show something override what they show."""

    def started(self, asset: Any, generation_id: str) -> None:
        pass

    def progress(self, asset: Any, fraction: float) -> None:
        pass

    def saved(self, path: str) -> None:
        pass

    def finished(self, result: Any, tally: Any) -> None:
        pass


def launch(
    host: Host,
    loaded: Loaded,
    options: Options,
    reporter: Reporter | None = None,
    *,
    postprocess: PostProcess | None = None,
    debug: Any = lambda message: None,
) -> Launch:
    """Record the run (``pipe_``) and build its runner; nothing is sent yet.

    Every asset's request is translated first, so a spec the server cannot take fails here,
    whole (RequestError), not asset by asset. Raises DownloadError for an unusable output
    directory.
    """
    from asset_generator.downloads import prepare_directory
    from asset_generator.pipeline.manifest import GENERATE
    from asset_generator.pipeline.run import PipelineRun
    from asset_generator.registry import PipelineRecord, new_pipeline_id, this_host
    from asset_generator.server import DEFAULT_TYPE, SERVER_TYPES

    plan, manifest, decisions = loaded.plan, loaded.manifest, loaded.decisions
    # A rerun with every asset done sends nothing at all: not even a question to the server.
    needed = [a for a in plan.assets if decisions[a.index].verdict == GENERATE]
    server = host.server() if needed else None
    prepared = {a.index: _prepare(server, a, loaded.label) for a in needed} if server else {}
    # After the requests are known to be usable: a refused option leaves no directory behind.
    prepare_directory(plan.output_dir)
    server_type = server.type if server is not None else host.known_type() or DEFAULT_TYPE
    # Nothing to send: the run reports the --parallel it would have used where the type alone
    # says it (ComfyUI's 2), without asking the server.
    parallel, queue_ahead = options.parallel or SERVER_TYPES[server_type].parallel or 1, False
    if server is not None:
        default, ahead_from = server.parallelism()
        parallel = options.parallel or default
        queue_ahead = ahead_from and parallel >= default
    record = PipelineRecord(
        id=new_pipeline_id(),
        server=host.server_name,
        server_key=host.server_key,
        server_type=server_type,
        pid=os.getpid(),
        host=this_host(),
        spec=loaded.label if loaded.label == INLINE_SPEC else str(Path(loaded.label).resolve()),
        output_dir=str(plan.output_dir.resolve()),
        base_seed=plan.base_seed,
        total=len(plan.assets),
        created=time.time(),
    )
    with host.registry.transaction() as state:
        state.pipelines[record.id] = record
    manifest.pipeline_id, manifest.base_seed, manifest.spec = (
        record.id,
        plan.base_seed,
        loaded.label,
    )
    runner = PipelineRun(
        server,  # type: ignore[arg-type]
        host.registry,
        host.server_key,
        plan,
        record,
        manifest,
        prepared=prepared,
        parallel=parallel,
        force=options.force,
        overwrite=options.overwrite,
        continue_on_error=options.continue_on_error,
        reporter=reporter or Unseen(),
        claimer=server.pool() if server is not None else None,
        queue_ahead=queue_ahead,
        debug=debug,
        decisions=decisions,
        postprocess=postprocess,
    )
    return Launch(host, loaded, record, runner, parallel)


def _prepare(server: Server, asset: PlannedAsset, label: str) -> Any:
    """One asset's request translated; a refusal caused by the spec's params alone (an unknown
    node in its ``set:``, a workflow with no place for the prompt) is SpecError (``bad_spec``),
    one caused by the command line stays a usage error."""
    from asset_generator.server.errors import RequestError

    try:
        return server.prepare(asset.request)
    except RequestError as exc:
        if not asset.spec_at_fault(exc.option):
            raise
        raise SpecError(f"{label} {asset.where}, asset {asset.id}: {exc.message}") from None


def finish_record(registry: Registry, runner: PipelineRun, status: str, error: str | None) -> None:
    """Settle the ``pipe_`` record, every asset counted by how it ended; a cancel recorded by
    another process stands."""
    from asset_generator.registry import CANCELLED, RegistryError

    record = runner.record
    record.counts = runner.final_counts()
    with contextlib.suppress(RegistryError), registry.transaction() as state:
        saved = state.pipelines.get(record.id)
        if saved is None:
            return
        saved.counts = dict(record.counts)
        # A cancel recorded by another process stands.
        if saved.status == CANCELLED and status != CANCELLED:
            return
        saved.finish(status, error if saved.status != CANCELLED else saved.error or error)


def summary(results: list[AssetResult]) -> dict[str, int]:
    counted = {"total": len(results), **dict.fromkeys(SUMMARY_KEYS, 0)}
    for result in results:
        counted[result.status] = counted.get(result.status, 0) + 1
    return counted


__all__ = [
    "DEFAULT_OUTPUT_DIR",
    "INLINE_SPEC",
    "Conclusion",
    "Launch",
    "Loaded",
    "Options",
    "SpecError",
    "launch",
    "load",
    "run_params",
]
