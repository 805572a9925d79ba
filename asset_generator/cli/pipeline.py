"""``pipeline``: a whole asset set from one YAML spec, on every backend at once, resumable."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App, CommandError, Stopped
from asset_generator.cli.genoptions import (
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
from asset_generator.pipeline.launch import DEFAULT_OUTPUT_DIR, Unseen

if TYPE_CHECKING:
    from asset_generator.images import PostProcess
    from asset_generator.pipeline.launch import Loaded, Options
    from asset_generator.pipeline.plan import PlannedAsset
    from asset_generator.pipeline.run import AssetResult, PipelineRun
    from asset_generator.registry import PipelineRecord

MAX_PARALLEL = 256


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
    from asset_generator.pipeline import launch
    from asset_generator.pipeline.spec import SpecError, SpecFileError

    if spec_argument and spec_file and spec_argument != spec_file:
        raise click.UsageError("give the spec once: SPEC.yaml or --file SPEC.yaml")
    given = spec_file or spec_argument
    if not given:
        raise click.UsageError("which spec? pass SPEC.yaml or --file SPEC.yaml")
    postprocess = postprocess_from(app, options)
    defaults, overrides = _run_params(app, params, loras, options, sets=sets, workflow=workflow)
    settings = launch.Options(
        output_dir=Path(options["output_dir"] or DEFAULT_OUTPUT_DIR).expanduser(),
        base_seed=options["base_seed"],
        style_prefix=options["style_prefix"],
        style_suffix=options["style_suffix"],
        parallel=options["parallel"],
        force=options["force"],
        overwrite=options["overwrite"],
        continue_on_error=options["continue_on_error"],
    )
    try:
        loaded = launch.load(
            Path(given).expanduser(), settings, defaults, overrides, postprocess, label=given
        )
    except SpecFileError as exc:
        raise CommandError(str(exc), "file_error") from None
    except SpecError as exc:
        raise CommandError(f"bad spec: {exc}", "bad_spec") from None
    for warning in loaded.plan.warnings:
        app.output.warn(warning)
    for line in loaded.reasons(dry_run=options["dry_run"]):
        app.output.info(line)
    if options["dry_run"]:
        return _dry_run(app, loaded)
    return _run(app, loaded, settings, postprocess)


def _run_params(
    app: App,
    params: tuple[str, ...],
    loras: tuple[str, ...],
    options: dict[str, Any],
    *,
    sets: tuple[str, ...] = (),
    workflow: str | None = None,
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """``launch.run_params`` of the command line: --param, then the explicit options (which
    win over it), the config's [generate] values below the spec."""
    from asset_generator.pipeline.launch import run_params

    return run_params(
        app.settings,
        parse_params(params),
        options,
        loras=loras,
        workflow=read_workflow_option(app, workflow, offline=options["dry_run"]),
        sets=parse_sets(sets),
    )


# -- dry run -----------------------------------------------------------------------------------


def _dry_run(app: App, loaded: Loaded) -> int:
    from asset_generator.cli.output import one_line, plural
    from asset_generator.pipeline.manifest import NEW, REASONS

    plan = loaded.plan
    if app.output.is_json:
        app.output.json(loaded.dry_run_document())
        return 0
    for asset in plan.assets:
        decision = loaded.decisions[asset.index]
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
        f"{loaded.seed_note}; {plural(len(plan.warnings), 'warning')}; "
        "nothing was sent or written"
    )
    return 0


# -- the run -----------------------------------------------------------------------------------


def _run(app: App, loaded: Loaded, settings: Options, postprocess: PostProcess | None) -> int:
    from asset_generator.cli import signals
    from asset_generator.cli.signals import Signalled
    from asset_generator.downloads import DownloadError
    from asset_generator.pipeline import launch
    from asset_generator.registry import CANCELLED, FAILED, RegistryError

    try:
        run = launch.launch(app, loaded, settings, postprocess=postprocess, debug=app.output.debug)
    except DownloadError as exc:
        raise CommandError(str(exc), "file_error") from None
    except launch.SpecError as exc:
        raise CommandError(f"bad spec: {exc}", "bad_spec") from None
    app.output.info(run.describe())
    reporter = run.runner.reporter = _make_reporter(app, len(loaded.plan.assets), run.to_generate)
    previous = signals.install(lambda signum: _leave_at_once(app, run.runner, signum))
    try:
        try:
            results = run.runner.run()
        except Signalled as stop:
            reporter.close()
            app.output.error(f"interrupted: stopping the in-flight assets of {run.record.id}")
            document = run.abandon(CANCELLED, f"stopped by {stop.name}")
            raise Stopped(
                stop.exit_code,
                f"stopped by {stop.name}; {run.record.id}'s in-flight assets interrupted on "
                "the server",
                document if app.output.is_json else None,
            ) from None
        except (RegistryError, DownloadError) as exc:
            reporter.close()
            run.abandon(FAILED, str(exc))
            raise CommandError(str(exc), "file_error") from None
        finally:
            reporter.close()
    finally:
        signals.restore(previous)
    ended = run.conclude(results)
    if not ended.ok:
        raise CommandError(ended.message, ended.code, details=ended.document)
    app.output.info(ended.message)
    if app.output.is_json:
        app.output.json(ended.document)
    return 0


def _leave_at_once(app: App, runner: PipelineRun, signum: int) -> str:
    """A second signal: record the pipeline and its unfinished assets as the first signal
    would have (cancelled; a moment at most), and say what may still run on the server."""
    import signal

    from asset_generator.pipeline.launch import finish_record
    from asset_generator.registry import CANCELLED

    reason = f"stopped by a second {signal.Signals(signum).name}"
    unconfirmed: list[str] = []

    def record() -> None:
        # In a thread: the signal may have landed while this very thread holds the registry
        # lock; what cannot be written then is left to `status`.
        with contextlib.suppress(Exception):
            unconfirmed.extend(runner.leave(reason))
            finish_record(app.registry, runner, CANCELLED, reason)

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


# -- what a person sees ------------------------------------------------------------------------


class _PlainReporter(Unseen):
    """Paths on stdout as saved; one stderr line per finished asset."""

    def __init__(self, app: App) -> None:
        self.app = app

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
        self._progress.update(
            self._overall, completed=tally.ended, description=f"assets {_counted(tally)}"
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
