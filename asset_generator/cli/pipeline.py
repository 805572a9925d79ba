"""``pipeline``: a whole asset set from one YAML spec, on every backend at once, resumable."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App, CommandError, Stopped
from asset_generator.cli.genoptions import (
    RUN_OPTIONS,
    config_defaults,
    generation_options,
    parse_params,
    parse_sets,
    read_workflow_option,
)
from asset_generator.cli.output import is_terminal
from asset_generator.cli.postprocess import (
    complete_directories,
    complete_files,
    postprocess_from,
    postprocess_options,
)

if TYPE_CHECKING:
    from asset_generator.images import PostProcess
    from asset_generator.pipeline.manifest import Decision, Manifest
    from asset_generator.pipeline.plan import Plan, PlannedAsset
    from asset_generator.pipeline.run import AssetResult, PipelineRun
    from asset_generator.registry import PipelineRecord

DEFAULT_OUTPUT_DIR = "pipeline-output"
MAX_PARALLEL = 256
SUMMARY_KEYS = ("succeeded", "skipped", "failed", "cancelled", "not_started")


@click.command("pipeline")
@click.argument(
    "spec_argument", metavar="[SPEC.yaml]", required=False, shell_complete=complete_files
)
@click.option(
    "--file",
    "spec_file",
    metavar="SPEC.yaml",
    shell_complete=complete_files,
    help="The pipeline spec (YAML).",
)
@click.option(
    "--output-dir",
    "-o",
    metavar="DIR",
    shell_complete=complete_directories,
    help=f"Where the asset tree goes [default: ./{DEFAULT_OUTPUT_DIR}].",
)
@click.option(
    "--base-seed",
    type=click.IntRange(-1, 2**63 - 1),
    default=-1,
    show_default=True,
    help="Seed of each group's first asset before seed_offset; -1: the manifest's, else random.",
)
@click.option("--style-prefix", metavar="TEXT", help="Put before every prompt.")
@click.option("--style-suffix", metavar="TEXT", help="Put after every prompt.")
@generation_options(scope=" to every asset")
@click.option("--dry-run", is_flag=True, help="Print the plan; send nothing, write nothing.")
@click.option(
    "--continue-on-error", is_flag=True, help="Go on after a failed asset (exit 1 all the same)."
)
@click.option(
    "--parallel",
    type=click.IntRange(1, MAX_PARALLEL),
    metavar="N",
    help="Assets at once [default: the server's generation backends, else 1].",
)
@click.option("--force", is_flag=True, help="Regenerate assets the manifest says are done.")
@click.option(
    "--overwrite", is_flag=True, help="Replace files in the way that the manifest does not know."
)
@postprocess_options
@global_options
@click.pass_obj
def command(
    app: App,
    spec_argument: str | None,
    spec_file: str | None,
    loras: tuple[str, ...],
    params: tuple[str, ...],
    sets: tuple[str, ...],
    workflow: str | None,
    **options: Any,
) -> int:
    """Generate a whole asset set from one YAML spec (the Go tool's format).

    Each asset is a generation of its own, up to --parallel at once, so SwarmUI keeps
    every backend busy (on ComfyUI, the next assets wait in its queue). A manifest in
    the output directory makes reruns skip assets
    already done. Generation options given here apply to every asset and win over the
    spec's params: (a warning counts the assets they changed). Saved paths go to stdout,
    one per line. Exit 0 only when every asset succeeded or was skipped; 1 otherwise;
    130/143 on Ctrl-C/SIGTERM. See docs/pipeline.md.
    """
    from asset_generator.pipeline.manifest import Manifest
    from asset_generator.pipeline.plan import make_plan
    from asset_generator.pipeline.spec import SpecError, SpecFileError, load_spec

    if spec_argument and spec_file and spec_argument != spec_file:
        raise click.UsageError("give the spec once: SPEC.yaml or --file SPEC.yaml")
    given = spec_file or spec_argument
    if not given:
        raise click.UsageError("which spec? pass SPEC.yaml or --file SPEC.yaml")
    postprocess = postprocess_from(app, options)
    defaults, overrides = _run_params(app, params, loras, options, sets=sets, workflow=workflow)
    output_dir = Path(options["output_dir"] or DEFAULT_OUTPUT_DIR).expanduser()
    try:
        spec = load_spec(Path(given).expanduser())
    except SpecFileError as exc:
        raise CommandError(str(exc), "file_error") from None
    except SpecError as exc:
        raise CommandError(f"bad spec: {exc}", "bad_spec") from None
    manifest = Manifest.load(output_dir)
    manifest.set_postprocess(postprocess)
    base_seed, origin = _base_seed(options["base_seed"], manifest)
    try:
        plan = make_plan(
            spec,
            output_dir=output_dir,
            base_seed=base_seed,
            style_prefix=options["style_prefix"],
            style_suffix=options["style_suffix"],
            defaults=defaults,
            overrides=overrides,
        )
    except SpecError as exc:
        raise CommandError(f"bad spec: {exc}", "bad_spec") from None
    if manifest.problem:
        plan.warnings.append(f"warning: {manifest.problem}")
    for warning in plan.warnings:
        app.output.warn(warning)
    # What each asset needs, and why (each verdict may cost a file hash): the same for the
    # dry run, which shows it, and the run.
    decisions = {
        a.index: manifest.decide(a, force=options["force"], overwrite=options["overwrite"])
        for a in plan.assets
    }
    for line in _reasons(plan, manifest, decisions, dry_run=options["dry_run"]):
        app.output.info(line)
    if options["dry_run"]:
        return _dry_run(app, plan, origin, decisions)
    return _run(app, given, plan, manifest, origin, options, postprocess, decisions)


def _run_params(
    app: App,
    params: tuple[str, ...],
    loras: tuple[str, ...],
    options: dict[str, Any],
    *,
    sets: tuple[str, ...] = (),
    workflow: str | None = None,
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """The config's [generate] values (below the spec) and the command line's (above it:
    --param, then the explicit options, which win over it), as (name, value) pairs."""
    defaults = list(config_defaults(app, RUN_OPTIONS).items())
    overrides: list[tuple[str, Any]] = list(parse_params(params))
    overrides += [(name, options[name]) for name in RUN_OPTIONS if options.get(name) is not None]
    if loras:
        overrides.append(("loras", list(loras)))
    if workflow is not None:
        overrides.append(("workflow", read_workflow_option(workflow)))
    if sets:
        overrides.append(("set", list(parse_sets(sets))))
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


def _seed_note(plan: Plan, origin: str) -> str:
    if origin == "random":
        return f"base seed {plan.base_seed} (random; --base-seed {plan.base_seed} repeats it)"
    if origin == "manifest":
        return f"base seed {plan.base_seed} (from the manifest of the last run)"
    return f"base seed {plan.base_seed}"


def _reasons(
    plan: Plan, manifest: Manifest, decisions: dict[int, Decision], *, dry_run: bool
) -> list[str]:
    """Why assets are made again (or blocked): one line per reason, with a count and ids.

    The first run into a directory has nothing to explain; a rerun says what changed since
    (prompt, seed, parameters, post-processing), which files went missing or were altered,
    and which assets did not succeed last time. A dry run also says what it would skip.
    """
    from asset_generator.cli.output import one_line
    from asset_generator.pipeline.manifest import (
        BLOCKED,
        GENERATE,
        NEW,
        PARAMS,
        REASONS,
        SKIP,
    )

    if not manifest.entries:
        return []
    found: dict[tuple[str, str], list[str]] = {}
    changed: dict[str, None] = {}
    for asset in plan.assets:
        decision = decisions[asset.index]
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


# -- dry run -----------------------------------------------------------------------------------


def _dry_run(app: App, plan: Plan, origin: str, decisions: dict[int, Decision]) -> int:
    from asset_generator.cli.output import one_line, plural
    from asset_generator.pipeline.manifest import NEW, REASONS

    if app.output.is_json:
        app.output.json(
            {
                "ok": True,
                "dry_run": True,
                "base_seed": plan.base_seed,
                "assets": [
                    {
                        **a.public(),
                        "action": decisions[a.index].verdict,
                        "reasons": list(decisions[a.index].reasons),
                    }
                    for a in plan.assets
                ],
            }
        )
        return 0
    for asset in plan.assets:
        decision = decisions[asset.index]
        words = ", ".join(REASONS[r] for r in decision.reasons if r != NEW)
        action = decision.verdict + (f": {words}" if words else "")
        app.output.data(
            f"{one_line(asset.group)}  {one_line(asset.id)}  seed {asset.seed}  "
            f"{one_line(str(asset.path))}  [{action}]"
        )
        app.output.data(f"    {one_line(asset.prompt)}")
    groups = len({a.group for a in plan.assets})
    app.output.info(
        f"dry run: {plural(len(plan.assets), 'asset')} in {plural(groups, 'group')}, "
        f"{_seed_note(plan, origin)}; {plural(len(plan.warnings), 'warning')}; "
        "nothing was sent or written"
    )
    return 0


# -- the run -----------------------------------------------------------------------------------


def _run(
    app: App,
    spec_file: str,
    plan: Plan,
    manifest: Manifest,
    origin: str,
    options: dict[str, Any],
    postprocess: PostProcess | None,
    decisions: dict[int, Decision],
) -> int:
    from asset_generator.cli import signals
    from asset_generator.cli.output import plural
    from asset_generator.cli.signals import Signalled
    from asset_generator.downloads import DownloadError, prepare_directory
    from asset_generator.pipeline.manifest import GENERATE
    from asset_generator.pipeline.run import PipelineRun
    from asset_generator.registry import (
        CANCELLED,
        FAILED,
        PipelineRecord,
        RegistryError,
        new_pipeline_id,
        this_host,
    )

    output_dir = plan.output_dir
    try:
        prepare_directory(output_dir)
    except DownloadError as exc:
        raise CommandError(str(exc), "file_error") from None
    # A rerun with every asset done sends nothing at all: not even a question to the server.
    needed = [a for a in plan.assets if decisions[a.index].verdict == GENERATE]
    server = app.server() if needed else None
    # Every request translated before the first is sent: a spec the server cannot take
    # fails here, whole, not asset by asset.
    prepared = {a.index: server.prepare(a.request) for a in needed} if server else {}
    parallel, queue_ahead = options["parallel"] or 1, False
    if server is not None:
        default, ahead_from = server.parallelism()  # type: ignore[attr-defined]
        parallel = options["parallel"] or default
        queue_ahead = ahead_from and parallel >= default
    record = PipelineRecord(
        id=new_pipeline_id(),
        server=app.server_name,
        server_key=app.server_key,
        server_type=server.type if server is not None else app.known_type() or "swarmui",
        pid=os.getpid(),
        host=this_host(),
        spec=str(Path(spec_file).resolve()),
        output_dir=str(output_dir.resolve()),
        base_seed=plan.base_seed,
        total=len(plan.assets),
        created=time.time(),
    )
    with app.registry.transaction() as state:
        state.pipelines[record.id] = record
    manifest.pipeline_id, manifest.base_seed, manifest.spec = record.id, plan.base_seed, spec_file
    app.output.info(
        f"{record.id}: {plural(len(plan.assets), 'asset')} from {spec_file}, "
        f"{_seed_note(plan, origin)}, "
        f"{parallel} at once, into {output_dir}"
    )
    reporter = _make_reporter(app, len(plan.assets), len(needed))
    runner = PipelineRun(
        server,  # type: ignore[arg-type]
        app.registry,
        app.server_key,
        plan,
        record,
        manifest,
        prepared=prepared,
        parallel=parallel,
        force=options["force"],
        overwrite=options["overwrite"],
        continue_on_error=options["continue_on_error"],
        reporter=reporter,
        claimer=server.pool() if server is not None else None,  # type: ignore[attr-defined]
        queue_ahead=queue_ahead,
        debug=app.output.debug,
        decisions=decisions,
        postprocess=postprocess,
    )
    started = time.monotonic()
    previous = signals.install(lambda signum: _leave_at_once(app, runner, signum))
    try:
        try:
            results = runner.run()
        except Signalled as stop:
            reporter.close()
            app.output.error(f"interrupted: stopping the in-flight assets of {record.id}")
            runner.abandon(f"stopped by {stop.name}")
            results = [runner.results[a.index] for a in plan.assets]
            _finish_record(app, runner, CANCELLED, f"stopped by {stop.name}")
            document = _document(record, spec_file, output_dir, parallel, results, ok=False)
            raise Stopped(
                stop.exit_code,
                f"stopped by {stop.name}; {record.id}'s in-flight assets interrupted on the server",
                document if app.output.is_json else None,
            ) from None
        except (RegistryError, DownloadError) as exc:
            reporter.close()
            runner.abandon(str(exc))
            _finish_record(app, runner, FAILED, str(exc))
            raise CommandError(str(exc), "file_error") from None
        finally:
            reporter.close()
    finally:
        signals.restore(previous)
    return _conclude(app, runner, record, spec_file, parallel, results, started)


def _conclude(
    app: App,
    runner: PipelineRun,
    record: PipelineRecord,
    spec_file: str,
    parallel: int,
    results: list[AssetResult],
    started: float,
) -> int:
    from asset_generator.registry import CANCELLED, FAILED, SUCCEEDED

    summary = _summary(results)
    ok = summary["succeeded"] + summary["skipped"] == len(results)
    document = _document(record, spec_file, runner.plan.output_dir, parallel, results, ok=ok)
    counts = ", ".join(f"{summary[k]} {k.replace('_', ' ')}" for k in SUMMARY_KEYS if summary[k])
    elapsed = time.monotonic() - started
    if ok:
        _finish_record(app, runner, SUCCEEDED, None)
        app.output.info(f"{record.id}: {counts} in {elapsed:.1f} s")
        if app.output.is_json:
            app.output.json(document)
        return 0
    if runner.cancelled:
        _finish_record(app, runner, CANCELLED, "cancelled by request")
        raise CommandError(
            f"cancelled: {record.id} was cancelled (by `asset-generator cancel`, the web UI "
            f"or another client); {counts}",
            "cancelled",
            details=document,
        )
    if summary["cancelled"] and not summary["failed"]:
        # `cancel gen_…` of one asset: the rest went on, but the set is not whole because
        # someone cancelled, which the contract reports as `cancelled`, not as a failure.
        ids = ", ".join(r.asset.id for r in results if r.status == CANCELLED)
        _finish_record(app, runner, CANCELLED, f"assets cancelled: {ids}")
        raise CommandError(
            f"cancelled: {ids} of {record.id} (by `asset-generator cancel`, the web UI or "
            f"another client); {counts}",
            "cancelled",
            details=document,
        )
    _finish_record(app, runner, FAILED, runner.stop_reason or "some assets failed")
    first = next((r for r in results if r.status == "failed"), None)
    why = f"; first failure: {first.asset.id}: {first.error}" if first else ""
    raise CommandError(f"{record.id} incomplete: {counts}{why}", "partial", details=document)


def _finish_record(app: App, runner: PipelineRun, status: str, error: str | None) -> None:
    """Record how the pipeline ended, with every asset counted by how it ended."""
    from asset_generator.registry import CANCELLED, RegistryError

    record = runner.record
    record.counts = runner.final_counts()
    with contextlib.suppress(RegistryError), app.registry.transaction() as state:
        saved = state.pipelines.get(record.id)
        if saved is None:
            return
        saved.counts = dict(record.counts)
        # A cancel recorded by another process stands.
        if saved.status == CANCELLED and status != CANCELLED:
            return
        saved.finish(status, error if saved.status != CANCELLED else saved.error or error)


def _leave_at_once(app: App, runner: PipelineRun, signum: int) -> str:
    """A second signal: record the pipeline and its unfinished assets as the first signal
    would have (cancelled; a moment at most), and say what may still run on the server."""
    import signal

    from asset_generator.registry import CANCELLED

    reason = f"stopped by a second {signal.Signals(signum).name}"
    unconfirmed: list[str] = []

    def record() -> None:
        # In a thread: the signal may have landed while this very thread holds the registry
        # lock; what cannot be written then is left to `status`.
        with contextlib.suppress(Exception):
            unconfirmed.extend(runner.leave(reason))
            _finish_record(app, runner, CANCELLED, reason)

    worker = threading.Thread(target=record, daemon=True)
    worker.start()
    worker.join(1.5)
    words = f"{runner.record.id} recorded cancelled"
    if unconfirmed:
        words += (
            f"; the server may still be running {', '.join(unconfirmed)}: stop "
            f"{'it' if len(unconfirmed) == 1 else 'them'} with `asset-generator cancel "
            f"{unconfirmed[0]}`{' (one id at a time)' if len(unconfirmed) > 1 else ''}"
        )
    return words


def _summary(results: list[AssetResult]) -> dict[str, int]:
    summary = {"total": len(results), **dict.fromkeys(SUMMARY_KEYS, 0)}
    for result in results:
        summary[result.status] = summary.get(result.status, 0) + 1
    return summary


def _document(
    record: PipelineRecord,
    spec_file: str,
    output_dir: Path,
    parallel: int,
    results: list[AssetResult],
    *,
    ok: bool,
) -> dict[str, Any]:
    return {
        "ok": ok,
        "pipeline": {
            "id": record.id,
            "file": spec_file,
            "output_dir": str(output_dir),
            "base_seed": record.base_seed,
            "parallel": parallel,
        },
        "summary": _summary(results),
        "assets": [r.public() for r in results],
    }


# -- what a person sees ------------------------------------------------------------------------


class _PlainReporter:
    """Paths on stdout as saved; one stderr line per finished asset."""

    def __init__(self, app: App) -> None:
        self.app = app

    def started(self, asset: PlannedAsset, generation_id: str) -> None:
        pass

    def progress(self, asset: PlannedAsset, fraction: float) -> None:
        pass

    def saved(self, path: str) -> None:
        if not self.app.output.is_json:
            self.app.output.data(path)

    def finished(self, result: AssetResult, tally: PipelineRecord) -> None:
        if self.app.output.is_json:
            return
        self.app.output.info(_finished_line(result, tally))

    def close(self) -> None:
        pass


class PipelineEta:
    """Time left for the assets a run generates, from the work measured so far.

    One asset is one unit of work: a finished generation counts 1, a running one the
    fraction of its steps done. The rate is measured from steps only: each asset's work
    after the first step it reported, over the time since the first step of the run. So
    assets skipped or refused without a request (which finish in no time) never make the
    run look fast, session set-up and queueing before the first step never make it look
    slow, and the estimate moves with every step, not only when an asset finishes.
    """

    # Less measured work than this (a step of one asset) says nothing yet.
    MIN_WORK = 0.05

    def __init__(self, to_generate: int, clock: Any = time.monotonic) -> None:
        self.to_generate = to_generate
        self._clock = clock
        self._lock = threading.Lock()
        self._first_step: float | None = None
        self._running: dict[int, float] = {}
        # The fraction each asset had reached at its first reported step: a step that
        # arrives just after the run's first one was mostly done before it.
        self._baseline: dict[int, float] = {}
        self._finished = 0
        self._measured_finished = 0.0

    def started(self, index: int) -> None:
        with self._lock:
            self._running[index] = 0.0

    def progress(self, index: int, fraction: float) -> None:
        with self._lock:
            if index not in self._running:
                return
            fraction = max(self._running[index], min(max(fraction, 0.0), 1.0))
            self._running[index] = fraction
            if fraction > 0 and index not in self._baseline:
                self._baseline[index] = fraction
                if self._first_step is None:
                    self._first_step = self._clock()

    def finished(self, index: int) -> None:
        """An asset ended; only one that was generating counts as work done."""
        with self._lock:
            if self._running.pop(index, None) is None:
                return
            self._finished += 1
            baseline = self._baseline.pop(index, None)
            if baseline is not None:
                self._measured_finished += 1.0 - baseline

    def seconds_left(self) -> float | None:
        """The estimate, or None while too little was measured to tell."""
        with self._lock:
            if self._first_step is None:
                return None
            measured = self._measured_finished + sum(
                fraction - self._baseline[index]
                for index, fraction in self._running.items()
                if index in self._baseline
            )
            done = self._finished + sum(self._running.values())
            elapsed = self._clock() - self._first_step
        if measured < self.MIN_WORK or elapsed <= 0:
            return None
        return max(0.0, self.to_generate - done) * elapsed / measured


def _eta_column(eta: PipelineEta, overall: Any) -> Any:
    """A rich column: the pipeline's time left on the overall row, nothing on an asset's."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class EtaColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            if task.id != overall[0]:
                return Text("")
            left = eta.seconds_left()
            if left is None:
                return Text("eta -:--:--", style="progress.remaining")
            minutes, seconds = divmod(round(left), 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"eta {hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

    return EtaColumn()


class _RichReporter(_PlainReporter):
    """An overall bar (done/total, ETA) and one line per in-flight asset, on stderr."""

    def __init__(self, app: App, total: int, to_generate: int) -> None:
        super().__init__(app)
        from rich.progress import BarColumn, Progress, TextColumn

        self._lock = threading.Lock()
        self._tasks: dict[int, Any] = {}
        self._eta = PipelineEta(to_generate)
        overall: list[Any] = [None]
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            _eta_column(self._eta, overall),
            console=app.output.stderr_console(),
            transient=True,
        )
        # Its words count done, failed and cancelled apart; the bar fills as assets end.
        self._overall = overall[0] = self._progress.add_task(f"assets 0/{total} done", total=total)
        self._progress.start()
        self._stdout_terminal = is_terminal(sys.stdout)

    def started(self, asset: PlannedAsset, generation_id: str) -> None:
        from asset_generator.cli.output import one_line

        self._eta.started(asset.index)
        with self._lock:
            self._tasks[asset.index] = self._progress.add_task(
                f"  {one_line(asset.id)[:30]} ({generation_id})", total=100
            )

    def progress(self, asset: PlannedAsset, fraction: float) -> None:
        self._eta.progress(asset.index, fraction)
        with self._lock:
            task = self._tasks.get(asset.index)
        if task is not None:
            self._progress.update(task, completed=fraction * 100)

    def saved(self, path: str) -> None:
        if self.app.output.is_json:
            return
        if self._stdout_terminal:
            # Same screen as the bars: printed above the live area, never glued to a bar.
            self._progress.console.print(path, soft_wrap=True)
        else:
            self.app.output.data(path)

    def finished(self, result: AssetResult, tally: PipelineRecord) -> None:
        self._eta.finished(result.asset.index)
        with self._lock:
            task = self._tasks.pop(result.asset.index, None)
        if task is not None:
            self._progress.remove_task(task)
        counts = tally.tally()
        ended = tally.total - counts["in_flight"] - counts["not_started"]
        self._progress.update(
            self._overall, completed=ended, description=f"assets {_counted(tally)}"
        )
        if result.status not in ("succeeded", "skipped") and not self.app.output.quiet:
            self._progress.console.print(_finished_line(result, tally), soft_wrap=True)

    def close(self) -> None:
        self._progress.stop()


def _counted(tally: PipelineRecord) -> str:
    """``3/12 done`` and, apart, the failed and cancelled ones: never counted as done."""
    counts = tally.tally()
    words = [f"{tally.done}/{tally.total} done"]
    words += [f"{counts[name]} {name}" for name in ("failed", "cancelled") if counts[name]]
    return ", ".join(words)


def _finished_line(result: AssetResult, tally: PipelineRecord) -> str:
    from asset_generator.cli.output import one_line

    line = f"[{_counted(tally)}] {result.status} {result.asset.id}: {result.asset.path}"
    if result.generation_id:
        line += f" ({result.generation_id})"
    if result.error:
        line += f": {result.error}"
    return one_line(line)


def _make_reporter(app: App, total: int, to_generate: int) -> Any:
    if app.output.is_json or app.output.quiet or not app.output.interactive():
        return _PlainReporter(app)
    return _RichReporter(app, total, to_generate)
