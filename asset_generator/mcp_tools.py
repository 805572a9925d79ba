"""The MCP tools: thin wrappers over the functions the CLI commands call (cli-contract §5 `mcp`).

Generations run through the same ``GenerationRun`` as ``generate image`` and stop through the
same cancel core as ``cancel`` (``jobs.py``), in the same registry, so what an agent starts a
person sees in ``status`` and stops with ``cancel``, and the other way round. The protocol
client's calls block, so every tool runs them in a worker thread; a generation's thread
outlives its tool call when the agent does not wait for it.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import re
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.lowlevel
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from asset_generator import __version__, jobs
from asset_generator.registry import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED
from asset_generator.report import RECENT_FINISHED
from asset_generator.server.types import LOADING
from asset_generator.text import one_line

if TYPE_CHECKING:
    from asset_generator.cli.app import App
    from asset_generator.generation import GenerationRun, Outcome
    from asset_generator.registry import GenerationRecord
    from asset_generator.saving import SavedImage
    from asset_generator.steps import StepProgress

OWNER = "mcp"
# A client cancel or a shutdown interrupts the generation's session within this bound.
INTERRUPT_BOUND_SECONDS = 3.0
# How often a waiting tool call relays the generation's progress to the client.
RELAY_SECONDS = 0.1
PREVIEW_PIXELS = 256
# The generate_image parameters that are generation options, by their config names.
PARAMETERS = (
    "negative_prompt",
    "model",
    "width",
    "height",
    "steps",
    "cfg_scale",
    "seed",
    "images",
)


class ToolFailure(Exception):
    """A tool call that cannot be done; ``code`` is a JSON code of cli-contract §3."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


# -- results ------------------------------------------------------------------------------------


class _Open(BaseModel):
    # Records and documents are the CLI's own JSON; only their main keys are declared here.
    model_config = ConfigDict(extra="allow")


class ImageResult(BaseModel):
    path: str | None = Field(description="Where the image was saved (absolute).")
    seed: int | None = Field(description="The seed the server used.")
    width: int | None = None
    height: int | None = None


class GenerateResult(BaseModel):
    generation_id: str = Field(description="The id that generation_status and cancel take.")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    progress: float = Field(0.0, description="0-100.")
    images: list[ImageResult] = Field(default_factory=list)
    error: str | None = None


class StatusResult(BaseModel):
    ok: bool = True
    # With generation_id: that generation in generate_image's shape, to follow it the same way.
    generation_id: str | None = None
    status: str | None = Field(None, description="queued, running, succeeded, failed, cancelled.")
    progress: float | None = Field(None, description="0-100.")
    images: list[ImageResult] | None = None
    error: str | None = None
    generation: dict[str, Any] | None = Field(
        None, description="The record asked for (with generation_id)."
    )
    generations: list[dict[str, Any]] = Field(
        description="Records of this client on this server: active first, then recent ones."
    )


class CancelResult(BaseModel):
    ok: bool = True
    scope: str = Field(description='"generation" or "user" (all: true).')
    was_active: bool = Field(description="False when there was nothing left to stop.")
    cancelled: list[dict[str, Any]] = Field(description="The records marked cancelled.")
    generation: dict[str, Any] | None = Field(
        None, description="The asked-for generation's state when it had already ended."
    )


class ModelsResult(_Open):
    models: list[dict[str, Any]] = Field(description="The server's model objects.")
    folders: list[str] = Field(default_factory=list)


class ServerStatusResult(_Open):
    server: str
    reachable: bool
    generations: list[dict[str, Any]] = Field(default_factory=list)


# -- generations this process runs ----------------------------------------------------------------


@dataclass
class Job:
    """A generation run by this MCP server in a worker thread, with what it has shown so far."""

    run: GenerationRun
    state: str = QUEUED
    progress: float = 0.0
    message: str = "queued"
    outcome: Outcome | None = None
    failure: ToolFailure | None = None
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    # Every change, for the waiting call to relay: a short run would otherwise end between
    # two looks at the latest one, and its client would see no progress at all.
    updates: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=1000))

    def note(self, progress: float | None = None) -> None:
        """Record a change (progress never goes back: MCP wants it to increase)."""
        if progress is not None:
            self.progress = max(self.progress, progress)
        self.updates.append((round(self.progress, 1), self.message))

    @property
    def id(self) -> str:
        assert self.run.record is not None
        return self.run.record.id


class JobView:
    """A ``generation.View`` that keeps the latest progress for the tool call to relay."""

    def __init__(self) -> None:
        # Set once the run is registered: the Job needs the run, the run needs its view.
        self.job: Job | None = None

    def state(self, state: str, detail: str) -> None:
        if self.job is None:
            return
        self.job.state = RUNNING if state == RUNNING else QUEUED
        self.job.message = detail if state in (RUNNING, LOADING, QUEUED) else state
        self.job.note()

    def progress(self, steps: StepProgress) -> None:
        if self.job is not None:
            self.job.state = RUNNING
            expected = steps.expected
            self.job.message = f"running, image {min(steps.done + 1, expected)} of {expected}"
            self.job.note(steps.percent)

    def image(self, saved: SavedImage, done: int, expected: int) -> None:
        if self.job is not None:
            self.job.message = f"image {done} of {expected} saved"
            self.job.note(min(done / expected, 1.0) * 100)

    def close(self) -> None:
        pass


class Tools:
    """The five tools over one App (settings, registry, client), and the jobs still running."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def server_name(self) -> str:
        """The server as messages and documents name it (credentials never shown)."""
        return self.app.server_name

    def generations(self) -> jobs.Generations:
        return self.app.generations()

    # -- generate_image -----------------------------------------------------------------------

    def start(
        self, prompt: str, options: dict[str, Any], loras: list[str], output_dir: str | None
    ) -> Job:
        """Register a generation (a session of its own) and follow it in a worker thread."""
        from asset_generator.downloads import DownloadError, check_template, prepare_directory
        from asset_generator.generation import GenerationRun
        from asset_generator.saving import SaveOptions
        from asset_generator.server.types import Lora, Request

        settings = self.app.settings
        template = settings["generate.filename_template"]
        try:
            check_template(template)
        except ValueError as exc:
            raise ToolFailure("usage_error", f"generate.filename_template: {exc}") from None
        directory = Path(output_dir or settings["generate.output_dir"]).expanduser().resolve()
        request = Request(
            prompt=prompt,
            **{name: options.get(name) for name in PARAMETERS},
            loras=tuple(Lora.parse(item) for item in loras),
            defaults={
                name: settings[f"generate.{name}"]
                for name in PARAMETERS
                if settings[f"generate.{name}"] is not None
            },
        )
        try:
            # Before anything reaches the server: a bad output directory must not cost a run.
            prepare_directory(directory)
        except DownloadError as exc:
            raise ToolFailure("file_error", str(exc)) from None
        server = self.app.server()
        prepared = server.prepare(request)
        view = JobView()
        run = GenerationRun(
            server,
            self.app.registry,
            self.app.server_key,
            view=view,
            save=SaveOptions(directory, template, bool(settings["generate.overwrite"])),
            debug=self.app.output.debug,
            owner=OWNER,
        )
        run.register(prepared)
        job = view.job = Job(run)
        with self._lock:
            self.jobs[job.id] = job
        job.thread = threading.Thread(
            target=self._follow, args=(job,), name=f"generation {job.id}", daemon=True
        )
        job.thread.start()
        return job

    def _follow(self, job: Job) -> None:
        """The worker thread: follow to the end; on a failure stop our server work first."""
        from asset_generator.downloads import DownloadError
        from asset_generator.registry import RegistryError
        from asset_generator.server.errors import ServerError

        run = job.run
        try:
            job.outcome = run.follow(None)
        except (DownloadError, RegistryError) as exc:
            job.failure = self._stop_after_failure(run, str(exc), "file_error")
        except ServerError as exc:
            job.failure = self._stop_after_failure(
                run,
                exc.message,
                exc.code,
                prefix=f"{exc.phrase}: ",
                details=server_details(exc, self.server_name()),
            )
        except BaseException as exc:
            # A bug: its traceback goes to stderr (never stdout, the protocol's), and the
            # record must not stay "running".
            traceback.print_exc(file=sys.stderr)
            job.failure = self._stop_after_failure(
                run, f"asset-generator failed: {type(exc).__name__}", "server_error"
            )
        finally:
            job.state = run.record.status if run.record else FAILED
            job.done.set()

    def _stop_after_failure(
        self,
        run: GenerationRun,
        problem: str,
        code: str,
        prefix: str = "",
        details: dict[str, Any] | None = None,
    ) -> ToolFailure:
        """Closing a connection stops nothing on either server: record, interrupt, record."""
        import contextlib

        from asset_generator.registry import RegistryError

        if run.stop(FAILED, problem, INTERRUPT_BOUND_SECONDS) and run.stopped_on_server:
            problem = f"{problem}; stopped {run.record.id if run.record else ''} on the server"
            with contextlib.suppress(RegistryError):
                run.mark(FAILED, problem)
        shown = {**generation_result(run.outcome(problem)), **(details or {})}
        return ToolFailure(code, prefix + problem, shown)

    def stop(self, job: Job, reason: str) -> None:
        """Stop ``job`` (marked cancelled, then interrupted, bounded) and let its thread end."""
        if job.done.is_set():
            return
        record = job.run.record
        if record is None:
            return
        from asset_generator.jobs.stop import stop
        from asset_generator.registry import RegistryError

        def interrupt(marked: list[GenerationRecord]) -> list[bool]:
            return [job.run.interrupt(INTERRUPT_BOUND_SECONDS)]

        try:
            stop(self.generations(), [record], reason=reason, interrupt=interrupt)
        except RegistryError as exc:
            self.app.output.warn(f"asset-generator mcp: {exc}")
            job.run.interrupt(INTERRUPT_BOUND_SECONDS)
        # Let its thread record how it ended (a second at most: the caller is waiting).
        job.done.wait(1.0)

    def stop_all(self, reason: str, *, settle: bool = True) -> None:
        """Interrupt every generation this process still runs, in parallel (shutdown).

        ``settle``: also let their threads end (not needed when the process exits at once).
        """
        with self._lock:
            running = [job for job in self.jobs.values() if not job.done.is_set()]
        threads = [
            threading.Thread(target=self.stop, args=(job, reason), daemon=True) for job in running
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(INTERRUPT_BOUND_SECONDS * 3)
        # Their threads record how they ended before the App closes the HTTP client under them.
        until = time.monotonic() + (INTERRUPT_BOUND_SECONDS if settle else 0.0)
        for job in running:
            job.done.wait(max(0.0, until - time.monotonic()))

    def snapshot(self, job: Job) -> dict[str, Any]:
        """Where a job stands now, as a generate_image result."""
        if job.done.is_set():
            if job.failure is not None:
                raise job.failure
            assert job.outcome is not None
            return generation_result(job.outcome)
        record = job.run.record
        saved = self.generations().find(job.id) or record
        return {
            "generation_id": job.id,
            "status": job.state if saved is None or not saved.is_final else saved.status,
            "progress": round(job.progress, 1),
            "images": [image_result(i) for i in job.run.images],
            "error": None,
        }

    # -- generation_status --------------------------------------------------------------------

    def status(self, generation_id: str | None) -> dict[str, Any]:
        """The records of this client on this server, with dead processes checked."""

        generations = self.generations()
        if generation_id:
            record = generations.find(generation_id)
            if record is None or record.server_key != self.app.server_key:
                raise ToolFailure(
                    "not_found",
                    f"no generation {generation_id} in this client's registry for this server "
                    "(generation_status without an id lists them)",
                )
            if not record.is_final:
                generations.refresh([record])
            latest = generations.find(generation_id) or record
            found = self._live(latest)
            # An agent following a `wait: false` generation reads it as generate_image puts it.
            return {
                "ok": True,
                "generation_id": found["id"],
                "status": found["status"],
                "progress": found["progress"],
                "images": self._images_of(latest),
                "error": found["error"],
                "generation": found,
                "generations": [found],
            }
        records = self.app.registry.read().records_for(self.app.server_key)
        generations.refresh([r for r in records if not r.is_final])
        active = [self._live(r) for r in records if not r.is_final]
        finished = [r.public() for r in records if r.is_final][:RECENT_FINISHED]
        return {"ok": True, "generations": active + finished}

    def _images_of(self, record: GenerationRecord) -> list[dict[str, Any]]:
        """The record's images as ``{path, seed, width, height}`` (others' seeds from the file)."""
        job = self.jobs.get(record.id)
        if job is not None and job.run.images:
            return [image_result(i) for i in job.run.images]
        return [file_result(Path(path), record.server_type) for path in record.images if path]

    def _live(self, record: GenerationRecord) -> dict[str, Any]:
        """A record with this process's fresher progress when it runs the generation."""
        shown = record.public()
        job = self.jobs.get(record.id)
        if job is not None and not record.is_final and not job.done.is_set():
            shown["status"] = job.state
            shown["progress"] = round(max(job.progress, record.progress), 1)
        return shown

    # -- cancel_generation ----------------------------------------------------------------------

    def cancel(self, generation_id: str | None, cancel_all: bool) -> dict[str, Any]:
        """The ``cancel`` command's core: current, by id, or every session of this user."""
        if cancel_all and generation_id:
            raise ToolFailure("usage_error", "give either generation_id or all, not both")
        generations = self.generations()
        if cancel_all:
            result = jobs.cancel_all(generations)
        elif generation_id:
            result = jobs.cancel_one(generations, generation_id, server=self.server_name())
        else:
            result = jobs.cancel_current(generations, server=self.server_name())
        document = result.to_json()
        if result.notes:
            document["message"] = result.notes[0]
        return document

    # -- list_models, server_status ---------------------------------------------------------------

    def models(self, subtype: str | None, path: str, depth: int) -> dict[str, Any]:
        from asset_generator.report import list_models, models_document

        server = self.app.server()
        listing = list_models(server, self.app.registry, self.app.server_key, subtype, path, depth)
        return models_document(server, listing, path, depth)

    def server_status(self) -> dict[str, Any]:
        from asset_generator.report import gather

        return gather(self.app.server(), self.generations()).to_json()


def image_result(saved: SavedImage) -> dict[str, Any]:
    width, height = image_size(saved.path)
    return {
        "path": str(saved.path) if saved.path else None,
        "seed": saved.seed,
        "width": width,
        "height": height,
    }


def file_result(path: Path, server_type: str) -> dict[str, Any]:
    """An image another process saved: its seed is in the server's metadata, when still there."""
    from asset_generator.server import SERVER_TYPES, load

    width, height = image_size(path)
    kind = SERVER_TYPES.get(server_type)
    reader: Any = load(kind.seed_reader) if kind is not None else None
    seed = reader(path)[0] if reader is not None else None
    return {"path": str(path), "seed": seed, "width": width, "height": height}


def image_size(path: Path | None) -> tuple[int | None, int | None]:
    """The saved file's pixel size (what a caller gets, whatever was asked for)."""
    if path is None:
        return None, None
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.size
    except (ImportError, OSError):
        return None, None


def generation_result(outcome: Outcome) -> dict[str, Any]:
    return {
        "generation_id": outcome.record.id,
        "status": outcome.status,
        "progress": round(outcome.record.progress, 1),
        "images": [image_result(i) for i in outcome.images],
        "error": outcome.error,
    }


def preview(path: str | None) -> ImageContent | None:
    """A small PNG of the first image, for clients that show images inline."""
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
            buffer = io.BytesIO()
            image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB").save(
                buffer, "PNG"
            )
    except (ImportError, OSError):
        return None
    data = base64.b64encode(buffer.getvalue()).decode()
    return ImageContent(type="image", data=data, mime_type="image/png")


# -- errors as tool results ---------------------------------------------------------------------


def failure_of(exc: BaseException, server: str | None = None) -> ToolFailure:
    """Map what the CLI layers raise to a §3 code and the CLI's own phrases.

    ``server``: named, with whether it answered, next to a protocol error (as the CLI does).
    """
    from asset_generator.downloads import DownloadError
    from asset_generator.registry import RegistryError
    from asset_generator.settings import SettingsError

    if isinstance(exc, ToolFailure):
        return exc
    if isinstance(exc, jobs.CancelError):
        return ToolFailure(exc.code, exc.message)
    if isinstance(exc, RegistryError | DownloadError):
        return ToolFailure("file_error", str(exc))
    if isinstance(exc, SettingsError):
        return ToolFailure("usage_error", str(exc))
    if "asset_generator.server.errors" in sys.modules:
        from asset_generator.server.errors import RequestError, ServerError

        if isinstance(exc, RequestError):
            return ToolFailure("usage_error", exc.message)
        if isinstance(exc, ServerError):
            details = server_details(exc, server) if server else None
            return ToolFailure(exc.code, f"{exc.phrase}: {exc.message}", details)
    traceback.print_exception(exc, file=sys.stderr)
    return ToolFailure("server_error", f"asset-generator failed: {type(exc).__name__}")


def server_details(exc: Exception, server: str) -> dict[str, Any]:
    """``server`` and ``reachable``, the keys ``--format json`` puts next to a protocol error."""
    # A server that answered but refused us or said something odd is reachable.
    return {"server": server, "reachable": getattr(exc, "reachable", True)}


def error_result(failure: ToolFailure) -> CallToolResult:
    document = {
        **failure.details,
        "error": {"code": failure.code, "message": one_line(failure.message)},
    }
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(document, ensure_ascii=False))],
        structured_content=document,
        is_error=True,
    )


def ok_result(document: dict[str, Any], *extra: Any) -> CallToolResult:
    text = TextContent(type="text", text=json.dumps(document, ensure_ascii=False))
    return CallToolResult(content=[text, *extra], structured_content=document)


async def in_thread(call: Callable[[], dict[str, Any]], server: str | None) -> CallToolResult:
    """Run a blocking tool body in a worker thread; its failure becomes an isError result."""
    try:
        return ok_result(await anyio.to_thread.run_sync(call))
    except Exception as exc:
        return error_result(failure_of(exc, server))


# -- the server -----------------------------------------------------------------------------------

ALL_REACH = (
    "Interrupt every session of the server user: on a server without accounts that is "
    "every client (browser tabs, other machines), not only ours."
)


def build_server(tools: Tools) -> MCPServer:
    """An MCPServer with the five tools over ``tools``."""
    server = MCPServer(
        name="asset-generator",
        version=__version__,
        instructions=(
            "Generate images on a SwarmUI server. generate_image saves files and returns "
            "their paths; long runs can be started with wait: false and followed with "
            "generation_status; cancel_generation really stops the work on the server."
        ),
        log_level="WARNING",
        middleware=[_usage_errors],
    )

    def tool(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        # The docstring, dedented, is what an agent reads to decide how to call the tool.
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            server.add_tool(fn, description=inspect.cleandoc(fn.__doc__ or ""), **options)
            return fn

        return register

    @tool(
        title="Generate an image",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, open_world_hint=True
        ),
    )
    async def generate_image(
        ctx: Context,
        prompt: Annotated[str, Field(description="What to generate.", min_length=1)],
        negative_prompt: Annotated[str | None, Field(description="What to avoid.")] = None,
        model: Annotated[
            str | None, Field(description="Model name exactly as list_models shows it.")
        ] = None,
        width: Annotated[int | None, Field(ge=64, le=16384)] = None,
        height: Annotated[int | None, Field(ge=64, le=16384)] = None,
        steps: Annotated[int | None, Field(ge=0, le=500)] = None,
        cfg_scale: Annotated[float | None, Field(ge=0, le=100)] = None,
        seed: Annotated[int | None, Field(ge=-1, description="-1 is random.")] = None,
        images: Annotated[int | None, Field(ge=1, le=10000, description="How many.")] = None,
        loras: Annotated[
            list[str] | None, Field(description='LoRAs as "NAME" or "NAME:WEIGHT".')
        ] = None,
        output_dir: Annotated[
            str | None, Field(description="Directory for the files (default: the config's).")
        ] = None,
        wait: Annotated[
            bool,
            Field(description="false: return the id at once; the generation goes on."),
        ] = True,
        timeout_s: Annotated[
            float | None,
            Field(
                ge=0,
                description="Return the id with status queued/running after this many "
                "seconds (0: at once); the generation goes on (follow it with "
                "generation_status).",
            ),
        ] = None,
    ) -> Annotated[CallToolResult, GenerateResult]:
        """Generate images from a prompt on the SwarmUI server and save them as files.

        Returns the generation id, its status and the saved images (absolute paths, seed,
        size), with a small preview. Only the parameters given are sent; the model's own
        defaults apply to the rest. Sends progress notifications when asked for. Cancelling
        this call interrupts the generation on the server. With wait: false (or when
        timeout_s passes) it returns the id with status queued/running and the generation
        goes on: follow it with generation_status, stop it with cancel_generation.
        """
        chosen = {
            "negative_prompt": negative_prompt,
            "model": model,
            "width": width,
            "height": height,
            "steps": steps,
            "cfg_scale": cfg_scale,
            "seed": seed,
            "images": images,
        }
        try:
            # Shielded: a cancel arriving meanwhile must find the job it has to stop.
            with anyio.CancelScope(shield=True):
                job = await anyio.to_thread.run_sync(
                    lambda: tools.start(prompt, chosen, list(loras or []), output_dir)
                )
        except Exception as exc:
            return error_result(failure_of(exc, tools.server_name()))
        return await _follow_job(ctx, tools, job, timeout_s if wait else 0)

    @tool(
        title="Generation status",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def generation_status(
        generation_id: Annotated[
            str | None, Field(description="A gen_ id; without it, all of this client's.")
        ] = None,
    ) -> Annotated[CallToolResult, StatusResult]:
        """State and progress of generations started by this client (CLI or MCP) on this server.

        With generation_id: that record (unknown id: error not_found). Without: the active
        ones, then the latest finished. Records whose process died are checked on the server.
        """
        return await in_thread(lambda: tools.status(generation_id), tools.server_name())

    @tool(
        title="Cancel a generation",
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=True,
            idempotent_hint=True,
            open_world_hint=True,
        ),
    )
    async def cancel_generation(
        generation_id: Annotated[
            str | None,
            Field(description="The gen_ id to stop; without it, the current generation."),
        ] = None,
        feature: Annotated[str | None, Field(description="Same as generation_id.")] = None,
        all: Annotated[bool, Field(description=ALL_REACH)] = False,
    ) -> Annotated[CallToolResult, CancelResult]:
        """Stop a generation on the server by interrupting its session.

        Without arguments: the generation of this client the server is running, else the
        newest still queued (was_active false when there is none). With generation_id: that
        one; an already finished one is returned with its state and was_active false
        (idempotent); an unknown id is error not_found. Other generations keep going.
        all: true interrupts every session of the server user this client logs in as, ours
        or not; on a server without accounts (the usual local SwarmUI) that is every client,
        browser tabs and other machines included.
        """
        target = generation_id or feature
        return await in_thread(lambda: tools.cancel(target, all), tools.server_name())

    @tool(
        title="List models",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def list_models(
        subtype: Annotated[
            str, Field(description="Stable-Diffusion, LoRA, VAE, Embedding, ControlNet, ...")
        ] = "Stable-Diffusion",
        path: Annotated[str, Field(description="A folder of the model tree.")] = "",
        depth: Annotated[int, Field(ge=1, le=20, description="Folder levels below path.")] = 20,
    ) -> Annotated[CallToolResult, ModelsResult]:
        """Models the server offers; pass a name as generate_image's model (or loras) as is."""
        return await in_thread(lambda: tools.models(subtype, path, depth), tools.server_name())

    @tool(
        title="Server status",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def server_status() -> Annotated[CallToolResult, ServerStatusResult]:
        """The server: reachable, version, user, backends, and this client's generations."""
        return await in_thread(tools.server_status, tools.server_name())

    return server


async def _usage_errors(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
    """Give the SDK's own tool errors (bad arguments, unknown tool) the error document too.

    Our tools always return structured errors; one without is the SDK refusing the call
    before it reached a tool, which is the caller's mistake: ``usage_error``.
    """
    result = await call_next(ctx)
    # Here the result is already in its wire form (a dict with camelCase keys).
    if (
        getattr(ctx, "method", None) == "tools/call"
        and isinstance(result, dict)
        and result.get("isError")
        and result.get("structuredContent") is None
    ):
        texts = [c.get("text", "") for c in result.get("content", []) if isinstance(c, dict)]
        message = " ".join(t for t in texts if t) or "the tool call was refused"
        # Pydantic's text ends each error with a link; the field and the problem are enough.
        message = re.sub(r"\s*For further information visit \S+", "", message)
        failed = error_result(ToolFailure("usage_error", message))
        result = {
            **result,
            "content": [c.model_dump(by_alias=True, exclude_none=True) for c in failed.content],
            "structuredContent": failed.structured_content,
        }
    return result


def _snapshot_result(tools: Tools, job: Job) -> CallToolResult:
    try:
        document = tools.snapshot(job)
    except Exception as exc:
        return error_result(failure_of(exc, tools.server_name()))
    return _generation_result(document, tools.server_name())


def _generation_result(document: dict[str, Any], server: str) -> CallToolResult:
    generation_id, status = document["generation_id"], document["status"]
    text = document.get("error") or status
    if status == CANCELLED:
        # The generate command's wording (cli-contract §3): who can have stopped it.
        message = (
            f"cancelled: {generation_id} was stopped on the server by a cancel "
            f"(cancel_generation, `asset-generator cancel`, the web UI or another client): {text}"
        )
        return error_result(ToolFailure("cancelled", message, document))
    if status == FAILED:
        message = f"request failed: {server} ({generation_id} failed): {text}"
        return error_result(ToolFailure("server_error", message, document))
    extra = []
    if document["status"] == SUCCEEDED and document["images"]:
        shown = preview(document["images"][0]["path"])
        if shown is not None:
            extra.append(shown)
    return ok_result(document, *extra)


async def _follow_job(
    ctx: Context, tools: Tools, job: Job, timeout_s: float | None
) -> CallToolResult:
    """Relay progress until the job ends or ``timeout_s`` passes; a cancel stops the job.

    ``timeout_s`` 0: do not wait (``wait: false``); only a cancel already sent is honoured.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    sent: float | None = None

    async def relay() -> None:
        # Each change the run saw, in order; MCP wants every notification to go further.
        nonlocal sent
        while job.updates:
            value, message = job.updates.popleft()
            if sent is None or value > sent:
                sent = value
                await ctx.report_progress(value, 100, message)

    try:
        await anyio.lowlevel.checkpoint()
        if timeout_s != 0:
            # At once, so a client sees the call is alive before the first step arrives.
            sent = round(job.progress, 1)
            await ctx.report_progress(sent, 100, job.message)
        while timeout_s != 0 and not job.done.is_set():
            await relay()
            if deadline is not None and time.monotonic() >= deadline:
                break
            await anyio.sleep(RELAY_SECONDS)
        if timeout_s != 0:
            # What a short run did between the last look and its end.
            await relay()
            if job.done.is_set() and job.state == SUCCEEDED and sent is not None and sent < 100:
                await ctx.report_progress(100, 100, "done")
    except anyio.get_cancelled_exc_class():
        # The client sent notifications/cancelled (or we are shutting down): closing the
        # socket would stop nothing on SwarmUI, so interrupt the session, then re-raise.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(tools.stop, job, "cancelled by the MCP client")
        raise
    return _snapshot_result(tools, job)
