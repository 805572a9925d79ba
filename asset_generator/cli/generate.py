"""``generate image``: start a generation (its work recorded first) and save what it makes."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from asset_generator.cli import FiniteFloatRange, WholeNumber, global_options
from asset_generator.cli.app import App, CommandError, Stopped
from asset_generator.cli.genoptions import generation_options, request_from
from asset_generator.cli.postprocess import (
    complete_directories,
    postprocess_from,
    postprocess_options,
)
from asset_generator.cli.signals import INTERRUPT_BOUND_SECONDS, SIGNAL_EXIT, Signalled
from asset_generator.registry import CANCELLED, FAILED, SUCCEEDED
from asset_generator.server.types import OPTIONS
from asset_generator.settings import MAX_SECONDS
from asset_generator.text import plural

if TYPE_CHECKING:
    from asset_generator.generation import GenerationRun, Outcome
    from asset_generator.images import PostProcess
    from asset_generator.server.types import Request

__all__ = ["SIGNAL_EXIT", "command"]


@click.group("generate")
def command() -> None:
    """Start generations on the server."""


@command.command("image")
@click.option("--prompt", "-p", help="What to generate (required, but for a ComfyUI --workflow).")
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
    app: App,
    prompt: str | None,
    loras: tuple[str, ...],
    params: tuple[str, ...],
    sets: tuple[str, ...],
    workflow: str | None,
    **options: Any,
) -> int:
    """Generate images from a prompt and save them.

    Only the parameters you set (here or in the config's [generate] table) are sent,
    so the model's own defaults apply to the rest. On ComfyUI the built-in
    text-to-image graph runs (it needs --model; unset options take its defaults: 512x512,
    20 steps, cfg 7, euler, normal), or your own --workflow, whose nodes the options set
    by meaning. Saved file paths are printed on stdout, one per line; progress goes to
    stderr. Ctrl-C interrupts the generation on the server before exiting (130; SIGTERM
    143); a second Ctrl-C exits at once.
    """
    from asset_generator.downloads import check_template

    if not prompt and workflow is None:
        raise click.UsageError("Missing option '--prompt' / '-p'.")

    postprocess = postprocess_from(app, options)
    template = options["filename_template"] or app.settings["generate.filename_template"]
    try:
        check_template(template)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--filename-template") from None
    if options["no_download"] and options["no_save"]:
        raise click.UsageError("--no-download with --no-save would keep no image at all")
    if postprocess is not None and options["no_download"]:
        # Often the config's [generate] keys: worth a word, not a refusal.
        app.output.warn("--no-download saves no file, so no image is post-processed")
    request = request_from(
        app,
        prompt,
        options,
        names=OPTIONS,
        loras=loras,
        params=params,
        sets=sets,
        workflow=workflow,
        no_save=options["no_save"],
    )

    def setting(name: str) -> Any:
        given = options[name]
        return given if given is not None else app.settings[f"generate.{name}"]

    no_progress = setting("no_progress")
    return _run(
        app,
        request,
        output_dir=Path(options["output_dir"] or app.settings["generate.output_dir"]).expanduser(),
        template=template,
        overwrite=bool(setting("overwrite")),
        download=not options["no_download"],
        deadline=options["deadline"] or app.settings["generate.deadline"],
        show_progress=not no_progress,
        postprocess=postprocess,
    )


def _run(
    app: App,
    request: Request,
    *,
    output_dir: Path,
    template: str,
    overwrite: bool,
    download: bool,
    deadline: float | None,
    show_progress: bool,
    postprocess: PostProcess | None = None,
) -> int:
    from asset_generator.cli import signals
    from asset_generator.cli.output import OutputBroken, stdout_closed
    from asset_generator.cli.progress import SilentView, make_view
    from asset_generator.downloads import DownloadError
    from asset_generator.generation import DeadlinePassed, GenerationRun
    from asset_generator.registry import RegistryError
    from asset_generator.saving import SaveOptions
    from asset_generator.server.errors import ServerError
    from asset_generator.workflows import WorkflowFileError

    def printed(saved: Any) -> None:
        if not app.output.is_json:
            app.output.data(saved.shown() if saved.path or saved.server_path else "")

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
    if app.known_type() in (None, "swarmui"):
        # Before the first request (on first use, identifying the server is one): a name
        # SwarmUI cannot take is refused with nothing sent, as on any SwarmUI server.
        from asset_generator.swarm.params import refuse_unsendable_loras

        refuse_unsendable_loras(request)
    run: GenerationRun | None = None
    sent = False
    # From here on a signal stops what we started, even the first question to the server.
    previous = signals.install(lambda signum: _leave_at_once(run, signum))
    try:
        try:
            server = app.server()
            try:
                prepared = server.prepare(request)
            except WorkflowFileError as exc:
                raise CommandError(str(exc), "file_error") from None
            for note in prepared.notes:
                app.output.info(note)
            run = GenerationRun(
                server,
                app.registry,
                app.server_key,
                view=SilentView(),
                save=SaveOptions(output_dir, template, overwrite, download, postprocess),
                on_saved=printed,
                debug=app.output.debug,
                notice=app.output.warn,
            )
            record = run.register(prepared)
            sent = True
            view = make_view(app.output, record.id, prepared.expected, enabled=show_progress)
            run.view = view
            deadline_at = time.monotonic() + deadline if deadline else None
            try:
                outcome = run.follow(deadline_at)
                ended = outcome.status
            except BaseException as exc:
                # Stopped after its last image (while the server closes, say): done all the same.
                ended = SUCCEEDED if run.complete else _ending_words(exc)
                raise
            finally:
                # The last frame stays on the screen: it must say how the run ended.
                view.ended(ended)
                view.close()
        except Signalled as stop:
            _stop_on_signal(app, run, stop)
        except DeadlinePassed:
            assert run is not None
            passed = f"deadline of {deadline:g} s passed"
            run.stop(CANCELLED, passed, INTERRUPT_BOUND_SECONDS)
            name = run.record.id if run.record else "the generation"
            _fail_with(
                app, run.outcome(passed), f"{passed}; interrupted {name} on the server", "timeout"
            )
        except (DownloadError, RegistryError) as exc:
            if run is None:
                raise
            _stop_after_failure(app, run, str(exc), "file_error", sent=sent)
        except OutputBroken as exc:
            if run is None:
                raise
            _stop_after_broken_stdout(run, exc)
        except ServerError as exc:
            if not sent or run is None:
                raise
            if app.wrong_type_remembered(exc) and run.reached_nothing:
                # Another kind of server listens at the address now (a cached SwarmUI session
                # let us register before the first request): cli.run asks the server's type
                # again and runs the command once more (cli-contract §7).
                run.withdraw()
                raise
            _stop_after_failure(
                app, run, exc.message, exc.code, sent=True, prefix=f"{exc.phrase}: "
            )
        except BaseException as exc:
            # Anything else (server gone): the record must not stay "running", and a cache we
            # cannot write must not hide the original error.
            if run is not None and run.record is not None and not run.record.ended:
                with contextlib.suppress(RegistryError):
                    run.mark(FAILED, str(getattr(exc, "message", exc)) or type(exc).__name__)
            raise
    finally:
        signals.restore(previous)
    return _report(app, outcome)


def _report(app: App, outcome: Outcome) -> int:
    if outcome.status == SUCCEEDED:
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
        kept = plural(len(outcome.images), "image")
        app.output.info(f"{outcome.record.id}: kept {kept} that arrived")
    _fail_with(app, outcome, _failure_text(app, outcome), _failure_code(outcome))


def _failure_text(app: App, outcome: Outcome) -> str:
    text = outcome.error or outcome.status
    if outcome.status == CANCELLED:
        # Never a network failure (cli-contract §3): say who stopped it — our `cancel` when
        # the registry holds our mark, else the web UI or another client (§7).
        who = (
            "`asset-generator cancel`"
            if outcome.cancelled_by_us
            else "the web UI or another client"
        )
        return (
            f"cancelled: {outcome.record.id} was cancelled on {app.server_name} by {who} "
            f"({_saved_count(outcome)} saved): {text}"
        )
    return f"request failed: {app.server_name} ({outcome.record.id} {outcome.status}): {text}"


def _saved_count(outcome: Outcome) -> str:
    expected = outcome.expected
    return f"{len(outcome.images)} of {expected}" if expected else str(len(outcome.images))


def _failure_code(outcome: Outcome) -> str:
    return "cancelled" if outcome.status == CANCELLED else "server_error"


def _fail_with(app: App, outcome: Outcome, message: str, code: str) -> NoReturn:
    # The document is only printed under --format json (cli._json_failure).
    raise CommandError(message, code, details=_document(outcome))


def _document(outcome: Outcome) -> dict[str, Any]:
    return {
        "ok": outcome.status == SUCCEEDED,
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
    """Something broke after registering: stop our work on the server, then exit 1.

    A full disk or unwritable cache, or a stream that broke (socket dropped, garbage, a
    timeout): closing a connection cancels nothing on either server, so without the
    interrupt the server would go on generating images nobody will save.
    """
    if run.record is None:
        raise CommandError(problem, code)
    if sent:
        problem = run.stop_after_failure(problem, INTERRUPT_BOUND_SECONDS)
    _fail_with(app, run.outcome(problem), prefix + problem, code)


def _stop_after_broken_stdout(run: GenerationRun, problem: Exception) -> NoReturn:
    """stdout broke mid-run: stop our work on the server, record why, let main() say it.

    A reader that went away (`| head -1`) is the user ending the run, like a Ctrl-C; a full
    or closed stdout is a failure (cli-contract §3). Images already saved stay as they are.
    """
    from asset_generator.cli.output import OutputBroken

    if run.record is not None and not run.record.ended:
        # Every image saved (only printing the last path failed): the record says
        # succeeded (GenerationRun.stop).
        gone = isinstance(problem, OutputBroken) and problem.reader_gone
        run.stop(CANCELLED if gone else FAILED, str(problem), INTERRUPT_BOUND_SECONDS)
    raise problem


def _stop_on_signal(app: App, run: GenerationRun | None, stop: Signalled) -> None:
    """First SIGINT/SIGTERM: stop our work (bounded), record it, exit 130/143."""
    if run is not None and run.record is not None:
        app.output.error(f"interrupted: stopping {run.record.id} on the server")
        stopped = run.stop(CANCELLED, f"stopped by {stop.name}", INTERRUPT_BOUND_SECONDS)
        saved = f"{len(run.images)} of {run.expected} saved"
        if run.complete:
            app.output.info(f"{run.record.id}: {saved}")
        elif stopped:
            app.output.info(f"{run.record.id}: {saved}; the server stopped the rest")
        else:
            app.output.error(
                f"{run.record.id}: {saved}; the server did not confirm the interrupt and may "
                f"still be running it: stop it with `asset-generator cancel {run.record.id}`"
            )
        details = _document(run.outcome(f"stopped by {stop.name}")) if app.output.is_json else None
        raise Stopped(
            stop.exit_code,
            f"stopped by {stop.name}; {run.record.id} interrupted on the server",
            details,
        )
    app.output.error("interrupted")
    raise Stopped(stop.exit_code, f"stopped by {stop.name} before anything was sent")


def _ending_words(exc: BaseException) -> str:
    """How a run that raised ``exc`` ended, as the progress header says it."""
    from asset_generator.cli.signals import Signalled
    from asset_generator.generation import DeadlinePassed

    if isinstance(exc, Signalled):
        return "stopped"
    if isinstance(exc, DeadlinePassed):
        return "deadline passed"
    return "failed"


def _leave_at_once(run: GenerationRun | None, signum: int) -> str | None:
    """A second signal: record the cancel (a moment at most), and say what may still run."""
    import signal
    import threading

    record = run.record if run is not None else None
    if run is None or record is None or run.stop_confirmed:
        return None
    reason = f"stopped by a second {signal.Signals(signum).name}"

    def mark() -> None:
        # In a thread: the signal may have landed while this very thread holds the registry
        # lock; the record is then left to `status`, which asks the server. The interrupt is
        # not confirmed, so the record stays active: `cancel ID` sends it again.
        with contextlib.suppress(Exception):
            run.mark(CANCELLED, reason, unconfirmed=True)

    worker = threading.Thread(target=mark, daemon=True)
    worker.start()
    worker.join(1.5)
    return (
        f"the server may still be running {record.id}: stop it with "
        f"`asset-generator cancel {record.id}`"
    )
