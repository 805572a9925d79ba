"""One generation or one pipeline for an MCP tool call, in a process of its own.

``asset-generator mcp`` starts ``python -P -m asset_generator.agent.worker`` for each
generate_image and run_pipeline call, sends it the job (settings and arguments, one JSON
document) on stdin, and reads what happens as JSON lines on its stdout. The worker runs in a
session of its own, so work whose id the agent was handed back (``wait: false``, or a
``timeout_s`` that passed) goes on when the MCP server ends: a client that starts one server
process per call, or that quits, does not stop it. The worker ends when the work does: done,
failed, cancelled (cancel_generation, `asset-generator cancel`, the web UI) or stopped by
SIGTERM/SIGINT, which interrupt its work on the server first, as Ctrl-C does `generate`'s.

Events, one JSON object a line: ``started`` (the record exists: ``id``, ``total``, ``notes``),
``progress`` (``value`` of ``total``, ``message``), ``image`` (a saved image), ``asset`` (a
pipeline asset ended), and last ``end`` (``document``, ``error`` or null).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asset_generator.agent.failures import ToolFailure, failure_of, in_tool_words, server_details
from asset_generator.registry import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED

if TYPE_CHECKING:
    from asset_generator.cli.app import App
    from asset_generator.generation import GenerationRun, Outcome
    from asset_generator.pipeline.run import AssetResult, Reporter
    from asset_generator.registry import PipelineRecord
    from asset_generator.saving import SavedImage
    from asset_generator.steps import StepProgress

OWNER = "mcp"
GENERATION, PIPELINE = "generation", "pipeline"
# A cancel or a failure interrupts our work on the server within this bound.
INTERRUPT_BOUND_SECONDS = 3.0


class Events:
    """The JSON lines to the MCP server; once it is gone, the work goes on unreported."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream = stream
        self.gone = False
        self._lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, ensure_ascii=False) + "\n"
        with self._lock:
            if self.gone:
                return
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                self.gone = True

    def end(self, document: dict[str, Any] | None, failure: ToolFailure | None) -> None:
        error = None
        if failure is not None:
            from asset_generator.text import one_line

            error = {"code": failure.code, "message": one_line(failure.message)}
            document = {**(document or {}), **failure.details}
        self.send("end", document=document, error=error)


class _Tolerant(io.TextIOBase):
    """stderr that outlives its reader: the MCP server (and its client) may be gone."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def isatty(self) -> bool:
        return False


def main() -> None:
    """Read the job from stdin, run it, report on stdout (only events ever go there)."""
    from asset_generator.cli import signals
    from asset_generator.cli.app import App
    from asset_generator.cli.signals import Signalled

    events = Events(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    # Anything else printed goes to the log, never into the events.
    os.dup2(2, 1)
    sys.stderr = _Tolerant(sys.stderr)
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.read())
    app = App()
    app.flags.update(job.get("flags") or {})
    signals.install()
    code = 1
    try:
        if job["kind"] == PIPELINE:
            code = run_pipeline(app, job["arguments"], events)
        else:
            code = run_generation(app, job["arguments"], events)
    except Signalled as stop:
        # Before anything was registered (a stop after that is the run's own business).
        events.end(None, ToolFailure("interrupted", f"stopped by {stop.name} before it began"))
        code = stop.exit_code
    finally:
        app.close()
    sys.exit(code)


# -- one generation ------------------------------------------------------------------------------


class _GenerationView:
    """A ``generation.View`` that reports each change as an event (progress only grows)."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.value = 0.0

    def _send(self, message: str, value: float | None = None) -> None:
        if value is not None:
            self.value = max(self.value, round(value, 1))
        self.events.send("progress", value=self.value, total=100, message=message)

    def state(self, state: str, detail: str) -> None:
        from asset_generator.server.types import LOADING

        shown = RUNNING if state == RUNNING else QUEUED
        self.events.send("state", state=shown)
        self._send(detail if state in (RUNNING, LOADING, QUEUED) else state)

    def progress(self, steps: StepProgress) -> None:
        expected = steps.expected
        self.events.send("state", state=RUNNING)
        self._send(f"running, image {min(steps.done + 1, expected)} of {expected}", steps.percent)

    def image(self, saved: SavedImage, done: int, expected: int) -> None:
        from asset_generator.agent.results import image_result

        self.events.send("image", image=image_result(saved))
        self._send(f"image {done} of {expected} saved", min(done / expected, 1.0) * 100)

    def close(self) -> None:
        pass


def run_generation(app: App, arguments: dict[str, Any], events: Events) -> int:
    """generate_image's work: checked, registered (then ``started``), followed to the end."""
    from asset_generator.cli.signals import Signalled
    from asset_generator.downloads import DownloadError
    from asset_generator.registry import RegistryError
    from asset_generator.server.errors import ServerError

    run: GenerationRun | None = None
    try:
        try:
            for last in (False, True):
                try:
                    run = _prepared_run(app, arguments, events)
                    assert run.prepared is not None
                    record = run.register(run.prepared)
                    break
                except Exception as exc:
                    # Nothing is recorded or sent yet, so a server type remembered for the
                    # URL that no longer fits is asked again, once, as `generate` does.
                    if last or not app.wrong_type_remembered(exc):
                        raise
                    app.forget_type()
        except Exception as exc:
            events.end(None, _failure_before_start(exc, app, arguments))
            return 1
        events.send(
            "started",
            id=record.id,
            total=100,
            expected=run.prepared.expected,
            notes=[in_tool_words(note) for note in run.prepared.notes],
        )
        outcome = run.follow(None)
    except Signalled as stop:
        if run is None or run.record is None:
            raise
        reason = f"stopped by {stop.name}"
        run.stop(CANCELLED, reason, INTERRUPT_BOUND_SECONDS)
        events.end(*_ended(app, run.outcome(reason)))
        return stop.exit_code
    except (DownloadError, RegistryError) as exc:
        failure = _stop_after_failure(run, str(exc), "file_error")
    except ServerError as exc:
        failure = _stop_after_failure(
            run,
            exc.message,
            exc.code,
            prefix=f"{exc.phrase}: ",
            details=server_details(exc, app.server_name),
        )
    except BaseException as exc:
        # A bug: its traceback goes to the log, and the record must not stay "running".
        traceback.print_exc(file=sys.stderr)
        failure = _stop_after_failure(
            run, f"asset-generator failed: {type(exc).__name__}", "server_error"
        )
    else:
        events.end(*_ended(app, outcome))
        return 0 if outcome.status == SUCCEEDED else 1
    events.end(None, failure)
    return 1


def _prepared_run(app: App, arguments: dict[str, Any], events: Events) -> GenerationRun:
    """Everything that can be refused before the server sees the request; not yet recorded."""
    from asset_generator.agent.requests import generation_request
    from asset_generator.downloads import check_template, check_writable
    from asset_generator.generate_settings import postprocess_of
    from asset_generator.generation import GenerationRun
    from asset_generator.saving import SaveOptions

    settings = app.settings
    template = settings["generate.filename_template"]
    try:
        check_template(template)
    except ValueError as exc:
        raise ToolFailure("usage_error", f"generate.filename_template: {exc}") from None
    try:
        request = generation_request(app, arguments)
    except ToolFailure as exc:
        if exc.code == "file_error" and arguments.get("workflow") is not None:
            app.refuse_workflow_file()
        raise
    # The config's post-processing, as `generate image` applies it (no flags here).
    postprocess = postprocess_of(settings)
    directory = Path(arguments.get("output_dir") or settings["generate.output_dir"])
    directory = directory.expanduser().resolve()
    # Before anything reaches the server: a bad output directory must not cost a run.
    check_writable(directory)
    if app.known_type() in (None, "swarmui"):
        from asset_generator.swarm.params import refuse_unsendable_loras

        refuse_unsendable_loras(request)
    server = app.server()
    run = GenerationRun(
        server,
        app.registry,
        app.server_key,
        view=_GenerationView(events),
        save=SaveOptions(
            directory, template, bool(settings["generate.overwrite"]), postprocess=postprocess
        ),
        debug=app.output.debug,
        notice=app.output.warn,
        owner=OWNER,
    )
    run.prepared = server.prepare(request)
    return run


def _failure_before_start(exc: Exception, app: App, arguments: dict[str, Any]) -> ToolFailure:
    from asset_generator.pipeline.spec import SpecError
    from asset_generator.workflows import WorkflowFileError

    if isinstance(exc, SpecError):
        # launch found the spec's params unusable on this server (pipeline.launch._prepare).
        return ToolFailure("bad_spec", in_tool_words(f"bad spec: {exc}"))
    if isinstance(exc, WorkflowFileError):
        # A workflow given in the call is the caller's argument, not a file of theirs.
        given = arguments.get("workflow")
        inline = isinstance(given, dict) or str(given).lstrip().startswith("{")
        return ToolFailure("usage_error" if inline else "file_error", str(exc))
    return failure_of(exc, app.server_name)


def _stop_after_failure(
    run: GenerationRun | None,
    problem: str,
    code: str,
    prefix: str = "",
    details: dict[str, Any] | None = None,
) -> ToolFailure:
    """Stop the run as `generate image` does (``GenerationRun.stop_after_failure``)."""
    from asset_generator.agent.results import generation_result

    assert run is not None
    problem = run.stop_after_failure(problem, INTERRUPT_BOUND_SECONDS)
    shown = {**generation_result(run.outcome(problem)), **(details or {})}
    return ToolFailure(code, prefix + problem, shown)


def _ended(app: App, outcome: Outcome) -> tuple[dict[str, Any], ToolFailure | None]:
    """The end of a generation: its document, and the failure it is when it did not succeed."""
    from asset_generator.agent.results import generation_result

    document = generation_result(outcome)
    generation_id, status = document["generation_id"], document["status"]
    text = document.get("error") or status
    if status == CANCELLED:
        # The generate command's wording (cli-contract §3, §7): who stopped it.
        who = (
            "a cancel of ours (cancel_generation or `asset-generator cancel`)"
            if outcome.cancelled_by_us
            else "the web UI or another client"
        )
        message = f"cancelled: {generation_id} was stopped on the server by {who}: {text}"
        return document, ToolFailure("cancelled", message)
    if status == FAILED:
        message = f"request failed: {app.server_name} ({generation_id} failed): {text}"
        return document, ToolFailure("server_error", message)
    return document, None


# -- one pipeline --------------------------------------------------------------------------------


def _pipeline_reporter(events: Events) -> Reporter:
    """A pipeline ``Reporter`` whose progress is the assets that ended, of the total.

    Made here, not at import: pipeline.launch would double what starting the MCP server
    imports (it imports this module for GENERATION and PIPELINE).
    """
    from asset_generator.pipeline.launch import Unseen

    class AssetsEnded(Unseen):
        def finished(self, result: AssetResult, tally: PipelineRecord) -> None:
            counts = tally.tally()
            events.send("asset", asset=result.public(), done=tally.done)
            words = [f"{tally.done} done"]
            words += [f"{counts[name]} {name}" for name in ("failed", "cancelled") if counts[name]]
            message = f"{tally.ended} of {tally.total} assets ended ({', '.join(words)})"
            events.send("progress", value=tally.ended, total=tally.total, message=message)

    return AssetsEnded()


def run_pipeline(app: App, arguments: dict[str, Any], events: Events) -> int:
    """run_pipeline's work: the spec planned, launched (then ``started``), run to the end."""
    from asset_generator.cli.signals import Signalled
    from asset_generator.downloads import DownloadError
    from asset_generator.pipeline import launch
    from asset_generator.registry import RegistryError

    try:
        for last in (False, True):
            loaded, options, postprocess = _plan(app, arguments)
            if arguments.get("dry_run"):
                said = [*loaded.plan.warnings, *loaded.reasons(dry_run=True)]
                warnings = [in_tool_words(line) for line in said]
                events.end({**loaded.dry_run_document(), "warnings": warnings}, None)
                return 0
            try:
                run = launch.launch(
                    app, loaded, options, postprocess=postprocess, debug=app.output.debug
                )
                break
            except Exception as exc:
                # launch asks the server before it records the pipeline: nothing recorded
                # or sent yet, so a remembered type that no longer fits is asked again, once.
                if last or not app.wrong_type_remembered(exc):
                    raise
                app.forget_type()
    except Exception as exc:
        events.end(None, _failure_before_start(exc, app, arguments))
        return 1
    run.runner.reporter = _pipeline_reporter(events)
    events.send(
        "started",
        id=run.record.id,
        total=len(loaded.plan.assets),
        notes=[
            in_tool_words(note)
            for note in (run.describe(), *loaded.plan.warnings, *loaded.reasons(dry_run=False))
        ],
        output_dir=str(loaded.plan.output_dir.resolve()),
    )
    try:
        results = run.runner.run()
    except Signalled as stop:
        reason = f"stopped by {stop.name}"
        document = run.abandon(CANCELLED, reason)
        message = f"cancelled: {run.record.id} {reason}; its in-flight assets were interrupted"
        events.end(document, ToolFailure("cancelled", message))
        return stop.exit_code
    except (RegistryError, DownloadError) as exc:
        document = run.abandon(FAILED, str(exc))
        events.end(document, ToolFailure("file_error", str(exc)))
        return 1
    ended = run.conclude(results)
    failure = None if ended.ok else ToolFailure(ended.code or "partial", ended.message)
    events.end(ended.document, failure)
    return 0 if ended.ok else 1


def _plan(app: App, arguments: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The spec loaded and planned, its run options, and the config's post-processing (in
    the manifest too, as `pipeline` puts it: a run by either is a rerun for the other)."""
    from asset_generator.agent.requests import pipeline_params
    from asset_generator.generate_settings import postprocess_of
    from asset_generator.pipeline import launch
    from asset_generator.pipeline.spec import SpecError, SpecFileError

    options = launch.Options(
        # Absolute: an agent reads the paths, and the MCP server's directory is not its own.
        output_dir=Path(arguments.get("output_dir") or launch.DEFAULT_OUTPUT_DIR)
        .expanduser()
        .resolve(),
        base_seed=arguments.get("base_seed", -1),
        style_prefix=arguments.get("style_prefix"),
        style_suffix=arguments.get("style_suffix"),
        parallel=arguments.get("parallel"),
        force=bool(arguments.get("force")),
        overwrite=bool(arguments.get("overwrite")),
        continue_on_error=bool(arguments.get("continue_on_error")),
    )
    spec = arguments["spec"]
    source: Path | str
    if isinstance(spec, dict):
        source = json.dumps(spec, indent=1, ensure_ascii=False)
    elif _spec_text(spec):
        source = spec
    else:
        source = Path(spec).expanduser()
    try:
        defaults, overrides = pipeline_params(app, arguments)
    except ToolFailure as exc:
        # (A dry run asks the server nothing.)
        unreadable = exc.code == "file_error" and arguments.get("workflow") is not None
        if unreadable and not arguments.get("dry_run"):
            app.refuse_workflow_file()
        raise
    postprocess = postprocess_of(app.settings)
    try:
        loaded = launch.load(source, options, defaults, overrides, postprocess)
    except SpecFileError as exc:
        raise ToolFailure("file_error", str(exc)) from None
    except SpecError as exc:
        raise ToolFailure("bad_spec", in_tool_words(f"bad spec: {exc}")) from None
    return loaded, options, postprocess


def _spec_text(spec: str) -> bool:
    """``spec`` is the spec itself, not a file's path: YAML on several lines, a JSON object,
    or one line of flow YAML (``assets: [...]``) that names no file."""
    if "\n" in spec or spec.lstrip().startswith("{"):
        return True
    return re.match(r"\s*assets\s*:", spec) is not None and not Path(spec).expanduser().exists()


if __name__ == "__main__":
    main()
