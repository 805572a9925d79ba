"""The MCP tools: thin wrappers over the functions the CLI commands call (cli-contract §5 `mcp`).

Generations and pipelines run in worker processes (``agent.worker``) through the same
``GenerationRun`` and pipeline runner as ``generate image`` and ``pipeline``; status, cancel,
models and server status run here, through the same cancel core and report documents as the
commands. All share the CLI's registry, so what an agent starts a person sees in ``status``
and stops with ``cancel``, and the other way round.

Results: a success carries its document as structured content (matching the tool's output
schema) and as JSON text; an error is ``isError: true`` with the document, ``{"error":
{"code", "message"}, ...}``, as JSON text only. The MCP specification asks structured content
to match the output schema, and its own error example has none; the TypeScript SDK checks
structured content even on errors, so an error document there would be refused.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import anyio.lowlevel
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from asset_generator import __version__, jobs
from asset_generator.agent.arguments import ArgumentError, check, published
from asset_generator.agent.failures import ToolFailure, failure_of, in_tool_words
from asset_generator.agent.results import (
    MAX_PREVIEW_PIXELS,
    PREVIEW_PIXELS,
    file_result,
    thumbnail,
)
from asset_generator.agent.workers import GENERATION, PIPELINE, WorkerJob, spawn, wait_all
from asset_generator.registry import RUNNING, SUCCEEDED
from asset_generator.report import RECENT_FINISHED
from asset_generator.text import one_line

if TYPE_CHECKING:
    from asset_generator.cli.app import App
    from asset_generator.registry import GenerationRecord, PipelineRecord

T = TypeVar("T")

# How often a waiting call relays its work's progress to the client.
RELAY_SECONDS = 0.1
MAX_PREVIEWS = 8
# SwarmUI's seeds are int64 (-1: random); ComfyUI's samplers take up to 2**64 - 1, and the
# client keeps to the range both take, as `generate --seed` does.
MAX_SEED = 2**63 - 1
WAITING_CANCELLED = "cancelled by the MCP client"
# Ended workers remembered for their fresher images and progress (the registry has the rest).
KEEP_ENDED_JOBS = 50


# -- result schemas -------------------------------------------------------------------------------


class _Open(BaseModel):
    # Records and documents are the CLI's own JSON; only their main keys are declared here.
    model_config = ConfigDict(extra="allow")


class ImageResult(BaseModel):
    path: str | None = Field(description="Where the image was saved (absolute).")
    seed: int | None = Field(description="The seed the server used.")
    width: int | None = None
    height: int | None = None


class GenerateResult(BaseModel):
    generation_id: str = Field(description="The id generation_status, get_images and cancel take.")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    progress: float = Field(0.0, description="0-100.")
    images: list[ImageResult] = Field(default_factory=list)
    error: str | None = None
    notes: list[str] = Field(
        default_factory=list, description="Worth knowing (a seed the client drew, say)."
    )


class PipelineResult(BaseModel):
    pipeline_id: str | None = Field(
        None, description="The pipe_ id generation_status, get_images and cancel take."
    )
    status: str = Field(description="running, succeeded, failed or cancelled; planned (dry run).")
    done: int = Field(
        0, description="Assets done: made or skipped (failed and cancelled ones are not)."
    )
    total: int = Field(0, description="Assets in the spec.")
    output_dir: str | None = None
    summary: dict[str, int] | None = Field(
        None, description="total, succeeded, skipped, failed, cancelled, not_started (at the end)."
    )
    assets: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Finished assets: id, name, group, prompt, seed, path, status, error.",
    )
    base_seed: int | None = None
    dry_run: bool = False
    error: str | None = None
    notes: list[str] = Field(default_factory=list)


class StatusResult(BaseModel):
    ok: bool = True
    # With an id: that job at the top, in generate_image's (or run_pipeline's) shape.
    generation_id: str | None = None
    pipeline_id: str | None = None
    status: str | None = Field(None, description="queued, running, succeeded, failed, cancelled.")
    progress: float | None = Field(None, description="0-100.")
    done: int | None = Field(None, description="A pipeline's assets finished.")
    total: int | None = Field(None, description="A pipeline's assets in all.")
    images: list[ImageResult] | None = None
    error: str | None = None
    generation: dict[str, Any] | None = Field(None, description="The gen_ record asked for.")
    pipeline: dict[str, Any] | None = Field(None, description="The pipe_ record asked for.")
    generations: list[dict[str, Any]] = Field(
        description="Generation records of this client on this server: active first, then "
        "recent ones (with a pipe_ id: that pipeline's assets in flight)."
    )
    pipelines: list[dict[str, Any]] = Field(
        default_factory=list, description="Pipelines: running ones, then recent ones."
    )


class CancelResult(BaseModel):
    ok: bool = True
    scope: str = Field(description='"generation", "user" or "server" (all: true).')
    was_active: bool = Field(description="False when there was nothing left to stop.")
    cancelled: list[dict[str, Any]] = Field(description="The records marked cancelled.")
    generation: dict[str, Any] | None = Field(
        None, description="The asked-for generation's state when it had already ended."
    )
    pipeline: dict[str, Any] | None = Field(None, description="The pipeline, for a pipe_ id.")
    message: str | None = Field(None, description="What the cancel did, as `cancel` says it.")


class SavedImage(ImageResult):
    exists: bool = Field(description="The file is still there.")
    asset: str | None = Field(None, description="A pipeline's asset id.")


class ImagesResult(BaseModel):
    id: str = Field(description="The gen_ or pipe_ id asked for.")
    status: str
    images: list[SavedImage]
    previews: int = Field(description="How many images are shown inline, in this order.")


class ModelsResult(_Open):
    models: list[dict[str, Any]] = Field(description="The server's model objects.")
    folders: list[str] = Field(default_factory=list)


class ServerStatusResult(_Open):
    server: Any = Field(description="The server: url, type, reachable, response_ms, version, ...")
    reachable: bool | None = None
    generations: list[dict[str, Any]] = Field(default_factory=list)


# -- the tools' work ------------------------------------------------------------------------------


class Tools:
    """The tools over one App (settings, registry, server), and the workers it started."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.jobs: list[WorkerJob] = []
        self._lock = threading.Lock()

    def server_name(self) -> str:
        """The server as messages and documents name it (credentials never shown)."""
        return self.app.server_name

    def generations(self) -> jobs.Generations:
        return self.app.generations()

    def asking_again(self, work: Callable[[], T]) -> T:
        """``work``, run once more when it failed because the server type remembered for the
        URL no longer fits (cli-contract §7: another server listens there now), as the CLI
        runs a command once more; the App's adapter is made afresh for it."""
        self.app.reuse()
        return self.app.asking_again(work)

    def job(self, job_id: str) -> WorkerJob | None:
        """This server's worker for ``job_id``, if it started one."""
        with self._lock:
            return next((job for job in self.jobs if job.id == job_id), None)

    # -- generate_image, run_pipeline ------------------------------------------------------------

    def start(self, kind: str, arguments: dict[str, Any]) -> WorkerJob:
        """A worker for the call; it checks, records and runs the work on its own."""
        # The worker resolves what the settings name the same way: flags first, then the
        # environment and config file it shares with us.
        flags = {k: v for k, v in self.app.flags.items() if not k.startswith("_")}
        job = spawn(kind, flags, arguments)
        with self._lock:
            # Ended work is looked up in the registry; only the latest is kept here.
            ended = [j for j in self.jobs if j.done.is_set()]
            for old in ended[:-KEEP_ENDED_JOBS]:
                self.jobs.remove(old)
            self.jobs.append(job)
        return job

    def stop(self, job: WorkerJob, reason: str) -> None:
        """Stop ``job``'s work (marked cancelled, then interrupted, bounded)."""
        job.stop(self.generations(), reason, self.server_name())

    def stop_all(self, reason: str, *, handed_back: bool = False) -> None:
        """Stop, in parallel, the work of every call still waiting (shutdown).

        Work whose id a call already returned runs on in its own process, unless
        ``handed_back`` (tests end everything they started).
        """
        with self._lock:
            running = [
                job
                for job in self.jobs
                if not job.done.is_set() and (job.waiting > 0 or handed_back)
            ]
        threads = [
            threading.Thread(target=self.stop, args=(job, reason), daemon=True) for job in running
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        wait_all(running, 3)

    def snapshot(self, job: WorkerJob) -> tuple[dict[str, Any], ToolFailure | None]:
        """Where a job stands now, as its tool's result, and the failure it ended in."""
        if job.done.is_set() and job.end is not None:
            document = job.end.get("document") or {}
            error = job.end.get("error")
            if job.kind == PIPELINE and ("pipeline" in document or document.get("dry_run")):
                document = self._pipeline_end(job, document)
            elif job.kind == GENERATION and "generation_id" in document:
                document = {**document, "notes": job.notes}
            if error:
                # Before the work was recorded the document holds no more than the error's
                # context (the server, whether it answered).
                return document, ToolFailure(error["code"], error["message"])
            return document, None
        return self._running(job), None

    def _running(self, job: WorkerJob) -> dict[str, Any]:
        if job.kind == GENERATION:
            return {
                "generation_id": job.id,
                "status": job.state,
                "progress": job.progress,
                "images": list(job.images),
                "error": None,
                "notes": job.notes,
            }
        return {
            "pipeline_id": job.id,
            "status": RUNNING if job.id else "queued",
            "done": job.done_count,
            "total": int(job.total),
            "output_dir": job.output_dir,
            "summary": None,
            "assets": list(job.assets),
            "error": None,
            "notes": job.notes,
        }

    def _pipeline_end(self, job: WorkerJob, document: dict[str, Any]) -> dict[str, Any]:
        """`pipeline --format json`'s document (or a dry run's) in run_pipeline's shape."""
        if document.get("dry_run"):
            return {
                "pipeline_id": None,
                "status": "planned",
                "total": len(document.get("assets", [])),
                "assets": document.get("assets", []),
                "base_seed": document.get("base_seed"),
                "dry_run": True,
                "notes": document.get("warnings", []),
                "error": None,
            }
        pipeline = document.get("pipeline") or {}
        summary = document.get("summary") or {}
        record = self.app.registry.read().pipelines.get(pipeline.get("id") or "")
        return {
            "pipeline_id": pipeline.get("id") or job.id,
            "status": record.status if record is not None else job.state,
            "done": summary.get("succeeded", 0) + summary.get("skipped", 0),
            "total": summary.get("total", int(job.total)),
            "output_dir": pipeline.get("output_dir") or job.output_dir,
            "summary": summary or None,
            "assets": document.get("assets", []),
            "base_seed": pipeline.get("base_seed"),
            "error": record.error if record is not None else None,
            "notes": job.notes,
        }

    # -- generation_status ------------------------------------------------------------------------

    def status(self, job_id: str | None) -> dict[str, Any]:
        """This client's generations and pipelines on this server, with their live state."""
        from asset_generator.jobs.pipelines import pipeline_rows

        if job_id and job_id.startswith("pipe_"):
            return self._pipeline_status(job_id)
        generations = self.generations()
        if job_id:
            record = self._own_record(job_id)
            if not record.is_final:
                generations.refresh([record])
            latest = generations.find(job_id) or record
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
                "pipelines": [],
            }
        records = self.app.registry.read().records_for(self.app.server_key)
        generations.refresh([r for r in records if not r.is_final])
        records = self.app.registry.read().records_for(self.app.server_key)
        active = [self._live(r) for r in records if not r.is_final]
        finished = [r.public() for r in records if r.is_final][:RECENT_FINISHED]
        return {
            "ok": True,
            "generations": active + finished,
            "pipelines": pipeline_rows(self.app.registry, self.app.server_key),
        }

    def _own_record(self, generation_id: str) -> GenerationRecord:
        record = self.generations().find(generation_id)
        if record is None or record.server_key != self.app.server_key:
            raise ToolFailure(
                "not_found",
                f"no generation {generation_id} of this client on {self.server_name()} "
                "(generation_status without an id lists them)",
            )
        return record

    def _own_pipeline(self, pipeline_id: str) -> PipelineRecord:
        from asset_generator.jobs.pipelines import active_pipelines

        # A pipeline whose process died is marked failed first (as `status` does).
        active_pipelines(self.app.registry, self.app.server_key)
        record = self.app.registry.read().pipelines.get(pipeline_id)
        if record is None or record.server_key != self.app.server_key:
            raise ToolFailure(
                "not_found",
                f"no pipeline {pipeline_id} of this client on {self.server_name()} "
                "(generation_status without an id lists them)",
            )
        return record

    def _pipeline_status(self, pipeline_id: str) -> dict[str, Any]:
        from asset_generator.jobs.pipelines import in_flight

        record = self._own_pipeline(pipeline_id)
        flying = [] if record.is_final else in_flight(self.app.registry, pipeline_id)
        shown = record.public()
        return {
            "ok": True,
            "pipeline_id": record.id,
            "status": record.status,
            # The assets that ended (done, failed or cancelled), of the total.
            "progress": _ended_percent(record),
            "done": record.done,
            "total": record.total,
            "error": record.error,
            "pipeline": shown,
            "generations": [self._live(r) for r in flying],
            "pipelines": [shown],
        }

    def _images_of(self, record: GenerationRecord) -> list[dict[str, Any]]:
        """The record's images as ``{path, seed, width, height}`` (seeds from the files)."""
        job = self.job(record.id)
        if job is not None and job.images:
            return list(job.images)
        return [file_result(Path(path), record.server_type) for path in record.images if path]

    def _live(self, record: GenerationRecord) -> dict[str, Any]:
        """A record with this server's fresher progress when one of its workers runs it."""
        shown = record.public()
        job = self.job(record.id)
        if job is not None and not record.is_final and not job.done.is_set():
            shown["status"] = job.state
            shown["progress"] = round(max(job.progress, record.progress), 1)
        return shown

    # -- cancel_generation --------------------------------------------------------------------

    def cancel(self, job_id: str | None, cancel_all: bool) -> dict[str, Any]:
        """The ``cancel`` command's core: current, by id (gen_ or pipe_), or everything."""
        if cancel_all and job_id:
            raise ToolFailure("usage_error", "give either generation_id or all, not both")
        generations = self.generations()
        if cancel_all:
            result: Any = jobs.cancel_all(generations)
        elif job_id:
            result = jobs.cancel_one(generations, job_id, server=self.server_name())
        else:
            result = jobs.cancel_current(generations, server=self.server_name())
        document = result.to_json()
        # What `cancel` tells a person: why nothing was stopped, else what was (on ComfyUI,
        # with all, how many running and pending prompts, and how many of them ours).
        said = result.notes or result.lines
        if said:
            document["message"] = in_tool_words(said[0])
        return document

    # -- get_images -------------------------------------------------------------------------------

    def images(self, job_id: str, previews: int, pixels: int) -> tuple[dict[str, Any], list[str]]:
        """A job's saved images (paths, seeds, sizes) and up to ``previews`` small PNGs."""
        if job_id.startswith("pipe_"):
            pipeline = self._own_pipeline(job_id)
            status, shown = pipeline.status, self._pipeline_images(pipeline)
        else:
            record = self._own_record(job_id)
            status, shown = (
                record.status,
                [
                    {**file_result(Path(path), record.server_type), "asset": None}
                    for path in record.images
                    if path
                ],
            )
        for image in shown:
            image["exists"] = bool(image["path"]) and Path(image["path"]).is_file()
        pictures = []
        for image in shown:
            if len(pictures) >= previews:
                break
            if image["exists"]:
                data = thumbnail(image["path"], pixels)
                if data is not None:
                    pictures.append(data)
        document = {"id": job_id, "status": status, "images": shown, "previews": len(pictures)}
        return document, pictures

    def _pipeline_images(self, pipeline: PipelineRecord) -> list[dict[str, Any]]:
        """A pipeline's files as its output directory's manifest lists them, in spec order."""
        from asset_generator.pipeline.manifest import Manifest

        output_dir = Path(pipeline.output_dir)
        manifest = Manifest.load(output_dir)
        shown = []
        for key, entry in manifest.entries.items():
            if entry.status not in (SUCCEEDED, "skipped"):
                continue
            path = output_dir / key
            found = file_result(path, pipeline.server_type)
            shown.append({**found, "seed": found["seed"] or entry.seed, "asset": entry.id})
        return shown

    # -- list_models, server_status ---------------------------------------------------------------

    def models(self, subtype: str | None, path: str, depth: int) -> dict[str, Any]:
        from asset_generator.report import list_models, models_document

        server = self.app.server()
        listing = list_models(server, self.app.registry, self.app.server_key, subtype, path, depth)
        return models_document(server, listing, path, depth)

    def server_status(self) -> dict[str, Any]:
        from asset_generator.report import gather

        return gather(self.app.server(), self.generations()).to_json()


def _ended_percent(record: PipelineRecord) -> float:
    return round(100.0 * record.ended / record.total, 1) if record.total else 100.0


# -- results --------------------------------------------------------------------------------------


def error_result(failure: ToolFailure) -> CallToolResult:
    """An error: ``isError`` with the error document as JSON text, no structured content.

    Structured content must match the tool's output schema (a success's shape), and the
    TypeScript SDK checks it even on errors; the text carries the same document.
    """
    document = {
        **failure.details,
        "error": {"code": failure.code, "message": one_line(failure.message)},
    }
    text = TextContent(type="text", text=json.dumps(document, ensure_ascii=False))
    return CallToolResult(content=[text], is_error=True)


def ok_result(document: dict[str, Any], *extra: Any) -> CallToolResult:
    text = TextContent(type="text", text=json.dumps(document, ensure_ascii=False))
    return CallToolResult(content=[text, *extra], structured_content=document)


def picture(data: str) -> ImageContent:
    return ImageContent(type="image", data=data, mime_type="image/png")


async def in_thread(call: Callable[[], dict[str, Any]], server: str | None) -> CallToolResult:
    """Run a blocking tool body in a worker thread; its failure becomes an isError result."""
    try:
        return ok_result(await anyio.to_thread.run_sync(call))
    except Exception as exc:
        return error_result(failure_of(exc, server))


# -- the server -----------------------------------------------------------------------------------

ALL_REACH = (
    "Stop everything the server lets one client stop, not only this client's work: on "
    "SwarmUI every session of the server user (without accounts: every client, browser tabs "
    "and other machines); on ComfyUI the whole queue, anyone's."
)
LONG_CALLS = (
    "Long runs: many clients give up on a call after about 60 s. Pass timeout_s (say 50) "
    "to get the id back, with status queued or running, before that; or wait: false to get "
    "it at once. Then call generation_status with the id every few seconds until the status "
    "is succeeded, failed or cancelled. The work runs in a process of its own: once this "
    "call has returned, it goes on even when the client or this MCP server stops (stop it "
    "with cancel_generation). Cancelling this call while it waits, or this server ending "
    "while it waits, interrupts the work on the server."
)
SERVER_OPTIONS = (
    "SwarmUI: any other parameter goes in params. ComfyUI: workflow runs your own workflow "
    "(a path, or the workflow itself, in the API or the web UI's format) and set sets its "
    "node inputs; without a workflow a built-in text-to-image graph runs, which needs model."
)

ScalarMap = dict[str, str | int | float | bool]
# Arguments generate_image and run_pipeline share (module level: the SDK evaluates them).
Seed = Annotated[
    int | None,
    Field(
        ge=-1,
        le=MAX_SEED,
        description="-1 or left out: random. The first image's seed; image i gets seed + i.",
    ),
]
NegativePrompt = Annotated[str | None, Field(description="What to avoid.")]
ModelName = Annotated[str | None, Field(description="Model name exactly as list_models shows it.")]
Side = Annotated[int | None, Field(ge=64, le=16384)]
Steps = Annotated[int | None, Field(ge=0, le=500)]
CfgScale = Annotated[float | None, Field(ge=0, le=100)]
Sampler = Annotated[str | None, Field(description="e.g. euler, dpmpp_2m.")]
Scheduler = Annotated[str | None, Field(description="e.g. normal, karras.")]
Loras = Annotated[
    list[str] | None,
    Field(description='LoRAs as "NAME" or "NAME:WEIGHT" (list_models subtype LoRA).'),
]
Params = Annotated[
    ScalarMap | None,
    Field(description='SwarmUI: any other parameter by its id, {"clipstopatlayer": 2}.'),
]
Workflow = Annotated[
    str | dict[str, Any] | None,
    Field(
        description="ComfyUI: the workflow to run: a path (relative to the MCP server's "
        "directory), or the workflow itself, in the API format or the web UI's saved format."
    ),
]
Sets = Annotated[
    ScalarMap | None,
    Field(
        description='ComfyUI: workflow inputs to set last, {"NODE.INPUT": value}; NODE is '
        "a node id, title or class."
    ),
]
Wait = Annotated[bool, Field(description="false: return the id as soon as the work is recorded.")]
Timeout = Annotated[
    float | None,
    Field(
        ge=0,
        description="Return the id with the status so far after this many seconds (0: at "
        "once); the work goes on.",
    ),
]


def build_server(tools: Tools) -> MCPServer:
    """An MCPServer with the tools over ``tools``, their arguments checked strictly."""
    schemas: dict[str, dict[str, Any]] = {}
    server = MCPServer(
        name="asset-generator",
        version=__version__,
        instructions=(
            "Generate images on a SwarmUI or ComfyUI server. generate_image and run_pipeline "
            "save files and return their paths; long runs return an id at once (wait: false) "
            "or after timeout_s, to follow with generation_status and collect with "
            "get_images; cancel_generation really stops the work on the server."
        ),
        log_level="WARNING",
        middleware=[_checked(schemas)],
    )

    def tool(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        # The docstring, dedented, is what an agent reads to decide how to call the tool.
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            description = inspect.cleandoc(fn.__doc__ or "").format(
                long_calls=LONG_CALLS, server_options=SERVER_OPTIONS
            )
            server.add_tool(fn, description=description, **options)
            registered = server._tool_manager.get_tool(fn.__name__)
            assert registered is not None
            # What the arguments are checked against is what tools/list publishes.
            registered.parameters = schemas[fn.__name__] = published(registered.parameters)
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
        prompt: Annotated[
            str | None,
            Field(
                description="What to generate (required, but for a ComfyUI workflow).",
                min_length=1,
            ),
        ] = None,
        negative_prompt: NegativePrompt = None,
        model: ModelName = None,
        width: Side = None,
        height: Side = None,
        steps: Steps = None,
        cfg_scale: CfgScale = None,
        seed: Seed = None,
        sampler: Sampler = None,
        scheduler: Scheduler = None,
        images: Annotated[int | None, Field(ge=1, le=10000, description="How many.")] = None,
        loras: Loras = None,
        params: Params = None,
        workflow: Workflow = None,
        set: Sets = None,
        output_dir: Annotated[
            str | None,
            Field(description="Directory for the files (default: the config's, else '.')."),
        ] = None,
        wait: Wait = True,
        timeout_s: Timeout = None,
    ) -> Annotated[CallToolResult, GenerateResult]:
        """Generate images on the image server (SwarmUI or ComfyUI) and save them as files.

        Returns the generation id, its status and the saved images (absolute paths, seed,
        size), with a small preview. Only the options given are sent; the model's (or the
        workflow's) own values apply to the rest. Sends progress notifications when asked.
        {server_options}

        {long_calls} Get the files of a finished generation again with get_images.
        """
        arguments = _given(locals(), generate_image)
        return await _run_call(ctx, tools, GENERATION, arguments, wait, timeout_s)

    @tool(
        title="Run a pipeline spec",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, open_world_hint=True
        ),
    )
    async def run_pipeline(
        ctx: Context,
        spec: Annotated[
            str | dict[str, Any],
            Field(
                description="The pipeline spec: a YAML file's path, or the spec itself (an "
                "object with assets: [...], or its YAML text), as `asset-generator pipeline` "
                "reads it (docs/pipeline.md)."
            ),
        ],
        output_dir: Annotated[
            str | None, Field(description="Where the asset tree goes (default pipeline-output).")
        ] = None,
        base_seed: Annotated[
            int | None,
            Field(ge=-1, le=MAX_SEED, description="-1: the manifest's, else random."),
        ] = None,
        style_prefix: Annotated[str | None, Field(description="Put before every prompt.")] = None,
        style_suffix: Annotated[str | None, Field(description="Put after every prompt.")] = None,
        negative_prompt: NegativePrompt = None,
        model: ModelName = None,
        width: Side = None,
        height: Side = None,
        steps: Steps = None,
        cfg_scale: CfgScale = None,
        sampler: Sampler = None,
        scheduler: Scheduler = None,
        loras: Loras = None,
        params: Params = None,
        workflow: Workflow = None,
        set: Sets = None,
        parallel: Annotated[
            int | None,
            Field(ge=1, le=256, description="Assets at once (default: the server's backends)."),
        ] = None,
        continue_on_error: Annotated[
            bool, Field(description="Go on after a failed asset.")
        ] = False,
        force: Annotated[bool, Field(description="Regenerate assets already done.")] = False,
        overwrite: Annotated[
            bool, Field(description="Replace files the manifest does not know.")
        ] = False,
        dry_run: Annotated[
            bool, Field(description="Return the plan (prompts, seeds, paths); send nothing.")
        ] = False,
        wait: Wait = True,
        timeout_s: Timeout = None,
    ) -> Annotated[CallToolResult, PipelineResult]:
        """Generate a whole asset set from a pipeline spec, as `asset-generator pipeline` does.

        Each asset is a generation of its own, several at once; a manifest in the output
        directory makes a rerun skip assets already done. The options given apply to every
        asset, as the command's own options do (they win over the spec's params:). Progress
        is the assets that ended, of the total. The run is a pipe_ record:
        generation_status and get_images take its id, cancel_generation stops the whole run,
        and `asset-generator status` / `cancel` see it too.
        {server_options}

        {long_calls}
        """
        arguments = _given(locals(), run_pipeline)
        return await _run_call(ctx, tools, PIPELINE, arguments, wait, timeout_s)

    @tool(
        title="Generation status",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def generation_status(
        generation_id: Annotated[
            str | None,
            Field(
                min_length=1, description="A gen_ or pipe_ id; without it, all of this client's."
            ),
        ] = None,
    ) -> Annotated[CallToolResult, StatusResult]:
        """State and progress of the work this client (CLI or MCP) started on this server.

        With a gen_ id: that generation at the top, in generate_image's shape (status,
        progress, images). With a pipe_ id: that pipeline (status, done of total) and its
        assets in flight. Without: active generations and pipelines, then the latest
        finished ones. Unknown id: error not_found. Cheap: poll it every few seconds.
        """
        return await in_thread(
            lambda: tools.asking_again(lambda: tools.status(generation_id)), tools.server_name()
        )

    @tool(
        title="Cancel a generation or pipeline",
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=True,
            # cli-contract §5: idempotent, by id (a finished one is returned as it is);
            # without an id a retry stops whatever runs next, which the description says.
            idempotent_hint=True,
            open_world_hint=True,
        ),
    )
    async def cancel_generation(
        generation_id: Annotated[
            str | None,
            Field(
                min_length=1,
                description="The gen_ or pipe_ id to stop; without it, the current one.",
            ),
        ] = None,
        feature: Annotated[
            str | None, Field(min_length=1, description="Same as generation_id.")
        ] = None,
        all: Annotated[bool, Field(description=ALL_REACH)] = False,
    ) -> Annotated[CallToolResult, CancelResult]:
        """Stop a generation or a whole pipeline on the server.

        Without arguments: this client's work that the server is running, else the newest
        still queued (was_active false when there is none), so calling it again stops the
        next one: retry with the id. With an id: that one (a pipe_ id stops the whole
        pipeline); an already finished one is returned with its state and was_active false
        (idempotent); an unknown id is error not_found. Other work keeps
        going. all: true stops more than this client's work: on SwarmUI every session of
        the server user this client logs in as (on a server without accounts, the usual
        local one, that is every client, browser tabs and other machines included); on
        ComfyUI the whole queue, anyone's prompts.
        """
        if generation_id and feature and generation_id != feature:
            failure = ToolFailure(
                "usage_error",
                f"generation_id {generation_id!r} and feature {feature!r} differ; give one of them",
            )
            return error_result(failure)
        target = generation_id or feature
        return await in_thread(
            lambda: tools.asking_again(lambda: tools.cancel(target, all)), tools.server_name()
        )

    @tool(
        title="Get a generation's images",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    async def get_images(
        generation_id: Annotated[str, Field(min_length=1, description="A gen_ or pipe_ id.")],
        previews: Annotated[
            int,
            Field(ge=0, le=MAX_PREVIEWS, description="How many images to show inline."),
        ] = 1,
        preview_pixels: Annotated[
            int,
            Field(
                ge=32,
                le=MAX_PREVIEW_PIXELS,
                description="Longest side of each inline preview, in pixels.",
            ),
        ] = PREVIEW_PIXELS,
    ) -> Annotated[CallToolResult, ImagesResult]:
        """The images a generation or pipeline saved: absolute paths, seeds, sizes, whether
        each file is still there, and small inline previews of the first ones.

        Never the full-size files: read them from the paths. Works for finished work and for
        work still running (what was saved so far). Unknown id: error not_found.
        """
        try:
            document, pictures = await anyio.to_thread.run_sync(
                lambda: tools.images(generation_id, previews, preview_pixels)
            )
        except Exception as exc:
            return error_result(failure_of(exc, tools.server_name()))
        return ok_result(document, *(picture(data) for data in pictures))

    @tool(
        title="List models",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def list_models(
        subtype: Annotated[
            str,
            Field(
                description="Stable-Diffusion, LoRA, VAE, Embedding, ControlNet, ... (on "
                "ComfyUI these map to its folders; a folder name works too)."
            ),
        ] = "Stable-Diffusion",
        path: Annotated[str, Field(description="A folder of the model tree.")] = "",
        depth: Annotated[int, Field(ge=1, le=20, description="Folder levels below path.")] = 20,
    ) -> Annotated[CallToolResult, ModelsResult]:
        """Models the server offers; pass a name as generate_image's model (or loras) as is."""
        return await in_thread(
            lambda: tools.asking_again(lambda: tools.models(subtype, path, depth)),
            tools.server_name(),
        )

    @tool(
        title="Server status",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def server_status() -> Annotated[CallToolResult, ServerStatusResult]:
        """The server: reachable, type, version, backends or devices, and this client's work."""
        return await in_thread(lambda: tools.asking_again(tools.server_status), tools.server_name())

    return server


def _given(values: dict[str, Any], tool: Callable[..., Any]) -> dict[str, Any]:
    """A tool's arguments that were given (not None), for its worker: the work's own, not
    how the call waits for it."""
    names = set(inspect.signature(tool).parameters) - {"ctx", "wait", "timeout_s"}
    return {k: v for k, v in values.items() if k in names and v is not None}


def _checked(schemas: dict[str, dict[str, Any]]) -> Callable[..., Awaitable[Any]]:
    """Middleware: each tools/call held to its tool's published schema before the SDK sees it.

    Bad arguments, and an unknown tool, are a usage_error result naming what is wrong; the
    SDK's own refusals (if any get past) get the same error document.
    """
    from dataclasses import replace

    async def middleware(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if getattr(ctx, "method", None) != "tools/call" or not isinstance(ctx.params, Mapping):
            return await call_next(ctx)
        name = ctx.params.get("name")
        if name not in schemas:
            known = ", ".join(schemas)
            return _wire(error_result(ToolFailure("usage_error", f"no tool {name!r}; {known}")))
        try:
            arguments = check(name, schemas[name], ctx.params.get("arguments") or {})
        except ArgumentError as exc:
            return _wire(error_result(ToolFailure("usage_error", f"{name}: {exc.message}")))
        result = await call_next(replace(ctx, params={**ctx.params, "arguments": arguments}))
        return _as_error_document(result)

    return middleware


def _wire(result: CallToolResult) -> dict[str, Any]:
    return result.model_dump(by_alias=True, exclude_none=True, mode="json")


def _as_error_document(result: Any) -> Any:
    """An SDK-made error (plain text) becomes our error document; no error keeps structured
    content (it would have to match the success schema).

    Arguments are checked before the SDK sees them, so an SDK refusal of arguments is rare
    (``usage_error``); anything else it reports is a fault of ours (``server_error``).
    """
    if not (isinstance(result, dict) and result.get("isError")):
        return result
    texts = [c.get("text", "") for c in result.get("content", []) if isinstance(c, dict)]
    try:
        document = json.loads(texts[0]) if len(texts) == 1 else None
    except ValueError:
        document = None
    if isinstance(document, dict) and "error" in document:
        return {k: v for k, v in result.items() if k != "structuredContent"}
    message = " ".join(t for t in texts if t) or "the tool call was refused"
    # Pydantic's text ends each error with a link; the field and the problem are enough.
    message = re.sub(r"\s*For further information visit \S+", "", message)
    if re.search(r"validation errors? for \w+Arguments", message):
        failure = ToolFailure("usage_error", message)
    else:
        failure = ToolFailure("server_error", f"asset-generator failed: {message}")
    return {**result, **_wire(error_result(failure))}


async def _run_call(
    ctx: Context,
    tools: Tools,
    kind: str,
    arguments: dict[str, Any],
    wait: bool,
    timeout_s: float | None,
) -> CallToolResult:
    """Start the work in a worker and wait for it as asked; a cancel stops the work.

    The call returns once the work is recorded (wait: false or timeout_s 0), when timeout_s
    passes, or when the work ends. Progress notifications relay each change, in order.
    """
    begun = time.monotonic()
    waits = wait and timeout_s != 0
    deadline = None if (timeout_s is None or not wait) else begun + timeout_s
    try:
        # Shielded: a cancel arriving meanwhile must find the job it has to stop.
        with anyio.CancelScope(shield=True):
            job = await anyio.to_thread.run_sync(lambda: tools.start(kind, arguments))
    except Exception as exc:
        return error_result(failure_of(exc, tools.server_name()))
    job.waiting += 1
    sent: float | None = None

    async def relay() -> None:
        # Each change the work saw, in order; MCP wants every notification to go further.
        nonlocal sent
        while job.updates:
            value, total, message = job.updates.popleft()
            if sent is None or value > sent:
                sent = value
                await ctx.report_progress(value, total, message)

    try:
        await anyio.lowlevel.checkpoint()
        if waits:
            # At once, so a client sees the call is alive before the first step arrives.
            sent = 0.0
            total = 100.0 if kind == GENERATION else None
            await ctx.report_progress(0, total, "starting")
        while not job.started.is_set():
            await anyio.sleep(0.02)
        while waits and not job.done.is_set():
            await relay()
            if deadline is not None and time.monotonic() >= deadline:
                break
            await anyio.sleep(RELAY_SECONDS)
        if waits:
            # What a short run did between the last look and its end.
            await relay()
    except anyio.get_cancelled_exc_class():
        # The client sent notifications/cancelled (or we are shutting down): closing a
        # connection stops nothing on the server, so interrupt the work, then re-raise.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(tools.stop, job, WAITING_CANCELLED)
        raise
    finally:
        job.waiting -= 1
    # Off the event loop: the registry read and the preview's decoding block (get_images too).
    document, failure, preview = await anyio.to_thread.run_sync(_ended, tools, job)
    if failure is not None:
        failure.details = document
        return error_result(failure)
    return ok_result(document, *([picture(preview)] if preview is not None else []))


def _ended(tools: Tools, job: WorkerJob) -> tuple[dict[str, Any], ToolFailure | None, str | None]:
    """A call's result: the job's document, its failure, and a preview of a finished
    generation's first image."""
    document, failure = tools.snapshot(job)
    if failure is not None or not job.done.is_set():
        return document, failure, None
    if job.kind != GENERATION or document.get("status") != SUCCEEDED:
        return document, None, None
    first = next((i["path"] for i in document.get("images", []) if i.get("path")), None)
    return document, None, thumbnail(first) if first else None


__all__ = [
    "Tools",
    "build_server",
    "error_result",
    "ok_result",
]
