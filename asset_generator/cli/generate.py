"""``generate image``: start a generation in a session of its own and save what it makes."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from asset_generator.cli import FiniteFloatRange, WholeNumber, global_options
from asset_generator.cli.app import App, CommandError, Stopped
from asset_generator.cli.genoptions import generation_options
from asset_generator.cli.postprocess import (
    complete_directories,
    postprocess_from,
    postprocess_options,
)
from asset_generator.settings import MAX_SECONDS
from asset_generator.swarm.params import OPTION_PARAMETERS

if TYPE_CHECKING:
    from asset_generator.generation import GenerationRun, Outcome
    from asset_generator.images import PostProcess

# Options whose values are SwarmUI parameters, by the id SwarmUI reads.
PARAMETER_OPTIONS = OPTION_PARAMETERS
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
INTERRUPT_BOUND_SECONDS = 3.0


class _Signalled(BaseException):
    """Raised in the main thread by our SIGINT/SIGTERM handler."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@click.group("generate")
def command() -> None:
    """Start generations on the server."""


@command.command("image")
@click.option("--prompt", "-p", required=True, help="What to generate.")
@generation_options()
@click.option("--seed", type=WholeNumber(-1, 2**63 - 1), help="Seed; -1 is random.")
@click.option("--images", "-n", type=WholeNumber(1, 10000), help="How many images.")
@click.option(
    "--output-dir",
    "-o",
    metavar="DIR",
    shell_complete=complete_directories,
    help="Where to save images [default: .].",
)
@click.option(
    "--filename-template",
    metavar="TEMPLATE",
    help="File name without extension, from {index} {seed} {prompt} {model} {date} {time} "
    "{id} [default: {prompt}-{seed}].",
)
@click.option(
    "--overwrite/--no-overwrite",
    default=None,
    help="Replace an existing file of the same name (default: save as NAME-1, NAME-2, ...).",
)
@click.option("--no-download", is_flag=True, help="Print the server's image paths instead.")
@click.option(
    "--no-save", is_flag=True, help="Ask the server to keep nothing; images arrive inline."
)
@click.option(
    "--no-progress/--progress",
    "no_progress",
    default=None,
    help="No live progress on stderr (--progress: show it despite the config).",
)
@click.option(
    "--deadline",
    type=FiniteFloatRange(min=0, min_open=True, max=MAX_SECONDS),
    metavar="SECONDS",
    help="Interrupt the generation on the server and exit 1 after this long.",
)
@postprocess_options
@global_options
@click.pass_obj
def image(
    app: App, prompt: str, loras: tuple[str, ...], params: tuple[str, ...], **options: Any
) -> int:
    """Generate images from a prompt and save them.

    Only the parameters you set (here or in the config's [generate] table) are sent,
    so the model's own defaults apply to the rest. Saved file paths are printed on
    stdout, one per line; progress goes to stderr. Ctrl-C interrupts the generation
    on the server before exiting (130; SIGTERM 143); a second Ctrl-C exits at once.
    """
    from asset_generator.downloads import check_template
    from asset_generator.swarm.params import build_request, parse_lora, parse_param

    postprocess = postprocess_from(app, options)
    config = {s: app.settings[f"generate.{s}"] for s in _config_names()}
    chosen = {name: options.get(name) for name in PARAMETER_OPTIONS}
    try:
        extra = [parse_param(item) for item in params]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from None
    try:
        [parse_lora(item) for item in loras]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--lora") from None
    template = options["filename_template"]
    if template is None:
        template = config["filename_template"]
    try:
        check_template(template)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--filename-template") from None
    if options["no_download"] and options["no_save"]:
        raise click.UsageError("--no-download with --no-save would keep no image at all")
    if postprocess is not None and options["no_download"]:
        # Often the config's [generate] keys: worth a word, not a refusal.
        app.output.warn("--no-download saves no file, so no image is post-processed")
    body = build_request(
        prompt=prompt,
        options={PARAMETER_OPTIONS[k]: v for k, v in chosen.items()},
        defaults={PARAMETER_OPTIONS[k]: config.get(k) for k in PARAMETER_OPTIONS if k in config},
        extra=extra,
        loras=loras,
        no_save=options["no_save"],
    )
    deadline = options["deadline"] or config["deadline"]
    output_dir = Path(options["output_dir"] or config["output_dir"]).expanduser()
    overwrite = options["overwrite"] if options["overwrite"] is not None else config["overwrite"]
    no_progress = options["no_progress"]
    show_progress = not (config["no_progress"] if no_progress is None else no_progress)
    return _run(
        app,
        body,
        prompt,
        output_dir=output_dir,
        template=template,
        overwrite=bool(overwrite),
        download=not options["no_download"],
        deadline=deadline,
        show_progress=show_progress,
        postprocess=postprocess,
    )


def _config_names() -> list[str]:
    from asset_generator.settings import SETTINGS

    return [s.name for s in SETTINGS if s.section == "generate"]


def _run(
    app: App,
    body: dict[str, Any],
    prompt: str,
    *,
    output_dir: Path,
    template: str,
    overwrite: bool,
    download: bool,
    deadline: float | None,
    show_progress: bool,
    postprocess: PostProcess | None = None,
) -> int:
    from asset_generator.cli.output import OutputBroken, stdout_closed
    from asset_generator.cli.progress import SilentView, make_view
    from asset_generator.downloads import DownloadError
    from asset_generator.generation import DeadlinePassed, GenerationRun, SaveOptions
    from asset_generator.registry import RegistryError
    from asset_generator.swarm.errors import SwarmError
    from asset_generator.swarm.params import expected_outputs

    def printed(saved: Any) -> None:
        if not app.output.is_json:
            app.output.data(str(saved.path) if saved.path else saved.server_path or "")

    run = GenerationRun(
        app.client(),
        app.registry,
        app.server_key,
        view=SilentView(),
        save=SaveOptions(output_dir, template, overwrite, download, postprocess),
        on_saved=printed,
        debug=app.output.debug,
    )
    if stdout_closed():
        # Started with `>&-`: the paths (or the JSON document) would have nowhere to go.
        raise OutputBroken("cannot write to standard output: it is closed")
    if download:
        # Before anything reaches the server: a bad output directory must not cost a run.
        from asset_generator.downloads import check_writable

        try:
            check_writable(output_dir)
        except DownloadError as exc:
            raise CommandError(str(exc), "file_error") from None
    previous = _install_signal_handlers(run)
    sent = False
    try:
        try:
            record = run.register(body, prompt)
            sent = True
            run.view = make_view(
                app.output, record.id, expected_outputs(body), enabled=show_progress
            )
            deadline_at = time.monotonic() + deadline if deadline else None
            try:
                outcome = run.follow(deadline_at)
            finally:
                run.view.close()
        except _Signalled as stop:
            _stop_on_signal(app, run, stop.signum)
        except DeadlinePassed:
            passed = f"deadline of {deadline:g} s passed"
            run.interrupt(INTERRUPT_BOUND_SECONDS)
            run.mark("cancelled", passed)
            name = run.record.id if run.record else "the generation"
            _fail_with(
                app, run.outcome(passed), f"{passed}; interrupted {name} on the server", "timeout"
            )
        except (DownloadError, RegistryError) as exc:
            _stop_after_failure(app, run, str(exc), "file_error", sent=sent)
        except OutputBroken as exc:
            _stop_after_broken_stdout(run, exc)
        except SwarmError as exc:
            if not sent:
                raise
            _stop_after_failure(
                app, run, exc.message, exc.code, sent=True, prefix="request failed: "
            )
        except BaseException as exc:
            # Anything else (server gone): the record must not stay "running", and a cache we
            # cannot write must not hide the original error.
            if run.record is not None and not run.record.is_final:
                with contextlib.suppress(RegistryError):
                    run.mark("failed", str(getattr(exc, "message", exc)) or type(exc).__name__)
            raise
    finally:
        _restore_signal_handlers(previous)
    return _report(app, outcome)


def _report(app: App, outcome: Outcome) -> int:
    if outcome.status == "succeeded":
        if app.output.is_json:
            app.output.json(_document(outcome))
        return 0
    if outcome.failed_in_postprocessing:
        # Each full-size file is named on its own line; the last line is the error itself.
        problems = outcome.postprocess_errors
        for problem in problems[:-1]:
            app.output.error(problem)
        _fail_with(app, outcome, problems[-1], "file_error")
    if outcome.images:
        app.output.info(f"{outcome.record.id}: kept {len(outcome.images)} image(s) that arrived")
    _fail_with(app, outcome, _failure_text(app, outcome), _failure_code(outcome))


def _failure_text(app: App, outcome: Outcome) -> str:
    text = outcome.error or outcome.status
    if outcome.status == "cancelled":
        # Never a network failure (cli-contract §3): say who can have stopped it.
        return (
            f"cancelled: {outcome.record.id} was cancelled on {app.client().server} by "
            f"`asset-generator cancel`, the web UI or another client "
            f"({_saved_count(outcome)} saved): {text}"
        )
    return f"request failed: {app.client().server} ({outcome.record.id} {outcome.status}): {text}"


def _saved_count(outcome: Outcome) -> str:
    expected = _expected(outcome.params)
    return f"{len(outcome.images)} of {expected}" if expected else str(len(outcome.images))


def _expected(body: dict[str, Any]) -> int:
    from asset_generator.swarm.params import expected_outputs

    return expected_outputs(body) if body else 0


def _failure_code(outcome: Outcome) -> str:
    return "cancelled" if outcome.status == "cancelled" else "server_error"


def _fail_with(app: App, outcome: Outcome, message: str, code: str) -> NoReturn:
    # The document is only printed under --format json (cli._json_failure).
    raise CommandError(message, code, details=_document(outcome))


def _document(outcome: Outcome) -> dict[str, Any]:
    return {
        "ok": outcome.status == "succeeded",
        "id": outcome.record.id,
        "status": outcome.status,
        "error": outcome.error,
        "images": [image.public() for image in outcome.images],
        "parameters": outcome.params,
        "timings": outcome.timings,
        # Images the server sent that are not results (mini-grid, intermediates).
        "skipped": outcome.skipped,
    }


def _stop_after_failure(
    app: App, run: GenerationRun, problem: str, code: str, *, sent: bool, prefix: str = ""
) -> None:
    """Something broke after registering: stop our session on the server, then exit 1.

    A full disk or unwritable cache, or a stream that broke (socket dropped, garbage, a
    timeout): closing a connection cancels nothing on SwarmUI (protocol §4.5), so without
    the interrupt the server would go on generating images nobody will save.
    """
    from asset_generator.registry import RegistryError

    if run.record is None:
        raise CommandError(problem, code)
    if sent and run.interrupt(INTERRUPT_BOUND_SECONDS):
        problem = f"{problem}; stopped {run.record.id} on the server"
    with contextlib.suppress(RegistryError):
        run.mark("failed", problem)
    _fail_with(app, run.outcome(problem), prefix + problem, code)


def _stop_after_broken_stdout(run: GenerationRun, problem: Exception) -> NoReturn:
    """stdout broke mid-run: stop our session on the server, record why, let main() say it.

    A reader that went away (`| head -1`) is the user ending the run, like a Ctrl-C; a full
    or closed stdout is a failure (cli-contract §3). Images already saved stay as they are.
    """
    from asset_generator.cli.output import OutputBroken
    from asset_generator.registry import RegistryError

    if run.record is not None and not run.record.is_final:
        run.interrupt(INTERRUPT_BOUND_SECONDS)
        gone = isinstance(problem, OutputBroken) and problem.reader_gone
        with contextlib.suppress(RegistryError):
            run.mark("cancelled" if gone else "failed", str(problem))
    raise problem


def _stop_on_signal(app: App, run: GenerationRun, signum: int) -> None:
    """First SIGINT/SIGTERM: interrupt our session (bounded), record it, exit 130/143."""
    code = SIGNAL_EXIT.get(signal.Signals(signum), 130)
    name = signal.Signals(signum).name
    if run.record is not None:
        app.output.error(f"interrupted: stopping {run.record.id} on the server")
        stopped = run.interrupt(INTERRUPT_BOUND_SECONDS)
        from asset_generator.registry import RegistryError

        # The exit status must still say "stopped by a signal" when the cache is unwritable.
        with contextlib.suppress(RegistryError):
            run.mark("cancelled", f"stopped by {name}")
        saved = f"{len(run.images)} of {run.steps.expected} saved"
        if stopped:
            app.output.info(f"{run.record.id}: {saved}; the server stopped the rest")
        else:
            app.output.error(
                f"{run.record.id}: {saved}; the server did not confirm the interrupt and may "
                f"still be running it: stop it with `asset-generator cancel {run.record.id}`"
            )
        details = _document(run.outcome(f"stopped by {name}")) if app.output.is_json else None
        raise Stopped(
            code, f"stopped by {name}; {run.record.id} interrupted on the server", details
        )
    app.output.error("interrupted")
    raise Stopped(code, f"stopped by {name} before anything was sent")


def _install_signal_handlers(run: GenerationRun | None = None) -> dict[int, Any]:
    """SIGINT/SIGTERM raise _Signalled; a second one exits at once (marking ``run`` first)."""

    def first(signum: int, frame: Any) -> None:
        # A second signal while we are cleaning up exits at once.
        for sig in SIGNAL_EXIT:
            signal.signal(sig, second)
        raise _Signalled(signum)

    def second(signum: int, frame: Any) -> None:
        import os

        record = run.record if run is not None else None
        line = "interrupted again: exiting without waiting"
        if run is not None and record is not None and not record.is_final:
            _mark_cancelled_quickly(run, f"stopped by a second {signal.Signals(signum).name}")
            line += (
                f"; the server may still be running {record.id}: stop it with "
                f"`asset-generator cancel {record.id}`"
            )
        with contextlib.suppress(OSError, AttributeError, ValueError):
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        os._exit(SIGNAL_EXIT.get(signal.Signals(signum), 130))

    previous = {}
    for sig in SIGNAL_EXIT:
        previous[sig] = signal.signal(sig, first)
    return previous


def _mark_cancelled_quickly(run: GenerationRun, reason: str) -> None:
    """Record the cancel, waiting a moment at most: the user asked to leave now.

    In a thread, because the signal may have landed while this very thread holds the
    registry lock; the record is then left to `status`, which asks the server.
    """
    import threading

    def mark() -> None:
        with contextlib.suppress(Exception):
            run.mark("cancelled", reason)

    worker = threading.Thread(target=mark, daemon=True)
    worker.start()
    worker.join(1.5)


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
