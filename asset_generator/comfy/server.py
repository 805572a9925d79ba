"""ComfyUI behind the seam: prompt ids as handles, the WebSocket as events, targeted cancels.

ComfyUI has one queue for every client and no users (comfyui-protocol.md §5, §9). So a
generation's handle is the prompt ids it chose itself (uuid4, written to the registry *before*
``POST /prompt``) and its WebSocket client id; a cancel deletes our pending prompts and
interrupts our running one by its id, and never touches another client's. Every cancel answers
200 with an empty body, hit or miss (§5), so what happened is read back from ``/queue``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from asset_generator import transport as base
from asset_generator.comfy import workflow as graphs
from asset_generator.comfy.client import (
    ComfyClient,
    HistoryEntry,
    NotQueued,
    OutputImage,
    Queue,
    WorkflowRejected,
    images_of,
)
from asset_generator.comfy.metadata import seed_of_file
from asset_generator.server import SERVER_TYPES, jobstate, types
from asset_generator.server.errors import (
    AuthFailed,
    BadResponse,
    ConnectionFailed,
    NotFound,
    RequestError,
    RequestTimeout,
    ServerError,
)
from asset_generator.server.types import (
    MAX_MODEL_DEPTH,
    Accepted,
    Ended,
    Event,
    Facts,
    FactTable,
    Handle,
    ImageReady,
    Ledger,
    Model,
    ModelListing,
    NotAResult,
    Notice,
    Prepared,
    Progress,
    Reach,
    Request,
    Tick,
    Waiting,
)
from asset_generator.settings import describe_server
from asset_generator.workflows import WorkflowFileError

POLL_SECONDS = 0.25
# With the WebSocket quiet this long while prompts of ours are unfinished, /queue and
# /history are read: a socket that ComfyUI silenced (a reused client id, §4.5), events lost in
# a reconnect, or a prompt of ours deleted by another process all show there.
RECONCILE_SECONDS = 5.0
# How often a stop of our own run looks whether its prompts have left the queue.
LEAVE_POLL_SECONDS = 0.05
# How often a queue change (a `status` broadcast) may make us read /queue.
QUEUE_LOOK_SECONDS = 1.0
# Reconnecting a dropped WebSocket: a few tries, then /queue and /history alone.
RECONNECT_TRIES = 3
# The targeted interrupt (POST /interrupt {"prompt_id"}) exists from this version on (§5.1).
TARGETED_INTERRUPT = (0, 3, 57)
# The newest ComfyUI this client was checked against (the peer of comfyui-peer.md).
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".sft")
# SwarmUI's model sub-types (what users of asset-generator already type) → ComfyUI's folders.
KINDS = {
    "stable-diffusion": "checkpoints",
    "lora": "loras",
    "vae": "vae",
    "embedding": "embeddings",
    "controlnet": "controlnet",
    "clip": "text_encoders",
    "clipvision": "clip_vision",
}
MAX_DEPTH = MAX_MODEL_DEPTH
# A drawn seed stays inside what every sampler and SwarmUI's int64 take.
DRAWN_SEED_BELOW = 2**32
OBJECT_INFO_FILE = "object_info.json"


def version_tuple(text: str | None) -> tuple[int, ...]:
    """``"0.3.64"`` → (0, 3, 64); an unreadable version counts as new."""
    parts = []
    for piece in (text or "").split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) if parts else (1 << 16,)


def prompt_ids(handle: Handle) -> list[str]:
    ids = handle.get("prompt_ids")
    return [str(i) for i in ids] if isinstance(ids, list) else []


@dataclass
class Payload:
    """What a prepared request sends: one API graph per prompt, and each prompt's seed."""

    graphs: list[graphs.Graph]
    seeds: list[int | None]
    # Images each prompt makes (its latent batch size).
    batch: int


class PromptClaimer:
    """Fresh ids for every generation: one per prompt it queues, and a client id nobody else
    uses (a reused one silences the other socket, §4.5). Uuid4 strings: newer servers refuse
    any other prompt id (§3)."""

    def claim(self, ledger: Ledger, record: Callable[[Handle], Any], prepared: Prepared) -> Handle:
        handle = {
            "client_id": uuid.uuid4().hex,
            "prompt_ids": [str(uuid.uuid4()) for _ in prepared.payload.graphs],
        }
        with ledger.change() as view:
            view.add(record(handle))
        return handle

    def release(self, handle: Handle, *, cancelled: bool) -> None:
        """Nothing to give back: ids are never reused."""


class ComfyServer:
    """A ComfyUI server, through its HTTP and WebSocket API (types.Server)."""

    type = "comfyui"
    label = "ComfyUI"
    gone_text = "none of its prompts is queued or running on the server any more"
    one_queue = True
    silent_causes = (
        "a server restart (its history is kept in memory only) or a prompt removed from the "
        "queue by another client"
    )
    default_kind = "checkpoints"
    max_depth = MAX_DEPTH

    def __init__(
        self,
        api_url: str,
        ledger: Ledger,
        *,
        api_key: str | None = None,
        auth_header: str | None = None,
        timeout: float = 30.0,
        log: Callable[[str, str, int | None, float], None] | None = None,
        debug: Callable[[str], None] = lambda message: None,
        transport: Any = None,
        cache_dir: Path | None = None,
        product: str = "ComfyUI",
    ) -> None:
        self.ledger = ledger
        self.debug = debug
        headers: dict[str, str] = {}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if auth_header:
            # Given as is, it wins over --api-key's Bearer token (cli-contract §7).
            headers["Authorization"] = auth_header
        if auth_header:
            refused = "refused the Authorization header; check --auth-header"
            fix = "check --auth-header"
        elif api_key:
            refused = "refused the token sent as Authorization: Bearer; check --api-key"
            fix = "check --api-key"
        else:
            refused = (
                "requires credentials (a proxy or ComfyUI-Login in front of it) and none were "
                "sent; pass --api-key (sent as a Bearer token) or --auth-header"
            )
            fix = "pass --api-key or --auth-header"
        shown = describe_server(api_url.rstrip("/"))
        basic = None
        if not (auth_header or "").lower().startswith("basic "):
            basic = (
                f"{shown} asks for a user name and password (a proxy's basic auth): pass "
                '--auth-header "Basic <base64 of user:password>"'
            )
        access = base.Access(
            headers,
            f"{shown} {refused}",
            product,
            show_status=True,
            basic_challenge=basic,
            fix=fix,
        )
        transport_ = base.Transport(
            api_url,
            access,
            timeout=timeout,
            log=log,
            transport=transport,
        )
        self.client = ComfyClient(transport_)
        self.name = self.client.server
        self._cache_dir = cache_dir
        self._version: str | None = None
        # Kept for this adapter's life, one command (the pipeline prepares every asset before
        # the first is queued): GET /models/{folder} once per folder, None for a folder the
        # server lacks, and the catalogue parsed once. Not on disk: a model added between two
        # commands is found by the next one. The MCP server's own adapter lives longer but
        # never prepares; its generations and pipelines run in workers with their own.
        self._model_names: dict[str, list[str] | None] = {}
        self._catalogue: dict[str, Any] | None = None

    def close(self) -> None:
        self.client.close()

    # -- identification ---------------------------------------------------------------------

    def probe(self) -> bool:
        """Is ComfyUI here? ``GET /system_stats`` names its version (protocol §2).

        False when the answer is not ComfyUI's (a page, a 404, JSON without the version);
        a server that cannot be reached or refuses us raises, as the command would.
        """
        try:
            self._remember(self.client.system_stats())
        except (ConnectionFailed, RequestTimeout, AuthFailed):
            raise
        except ServerError:
            return False
        return True

    def _remember(self, stats: dict[str, Any]) -> dict[str, Any]:
        version = stats["system"].get("comfyui_version")
        self._version = str(version) if version is not None else None
        if self._version is not None and self.ledger.read().cache.get("version") != self._version:
            # Kept for later runs: a cancel then needs no /system_stats (see _known_version).
            self._remember_cache("version", self._version)
        return stats

    def version(self) -> tuple[int, ...]:
        if self._version is None:
            self._remember(self.client.system_stats())
        return version_tuple(self._version)

    def _known_version(self) -> tuple[int, ...]:
        """The version seen in this process, else the one remembered for this server (its
        first use or last `status` saw it), else asked."""
        if self._version is None:
            remembered = self._remembered_version()
            if remembered is not None:
                return remembered
        return self.version()

    def _remembered_version(self) -> tuple[int, ...] | None:
        remembered = self.ledger.read().cache.get("version")
        return version_tuple(remembered) if isinstance(remembered, str) else None

    # -- generation -----------------------------------------------------------------------------

    def prepare(self, request: Request) -> Prepared:
        """The prompts to queue: the user's workflow (or the built-in one) with the options
        placed by meaning, ``--lora`` loaders inserted, ``--set`` applied, and one prompt per
        image asked for, the i-th with seed ``seed + i``."""
        if request.params:
            raise RequestError(
                f"--param is a SwarmUI option; {self.name} is ComfyUI: set a workflow input "
                "with --set NODE.INPUT=VALUE",
                "--param",
            )
        if request.no_save:
            raise RequestError(
                f"--no-save is a SwarmUI option; {self.name} is ComfyUI, whose SaveImage "
                "nodes always write the file",
                "--no-save",
            )
        if request.workflow is not None:
            graph = self._workflow_graph(request)
            explicit = dict(request.given())
            defaults = {k: v for k, v in request.defaults.items() if k not in explicit}
        else:
            model = request.option("model")
            if not model:
                raise RequestError(
                    "--model: the built-in graph needs a checkpoint: pass --model NAME (or set "
                    "generate.model); `asset-generator models list` shows the names",
                    "--model",
                )
            graph = graphs.builtin_graph(model, request.prompt or "")
            explicit = {
                **graphs.BUILTIN_DEFAULTS,
                **{k: v for k, v in request.defaults.items() if v is not None},
                **request.given(),
            }
            defaults = {}
        explicit["prompt"] = request.prompt
        values = {
            name: explicit.get(name)
            for name in ("prompt", "negative_prompt", "model", "width", "height")
        }
        values.update(
            {name: explicit.get(name) for name in graphs.SAMPLER_INPUTS if name != "seed"}
        )
        places = graphs.place_options(graph, self._checkpoint_named(values))
        # The config's [generate] values go where they have one place; a workflow without
        # one (two samplers, say) keeps its own values rather than refusing every run. The
        # seed and -n are placed below, by the same rule.
        fitting = {
            name: value
            for name, value in defaults.items()
            if name in places.options and len(places.options[name].nodes) == 1 and name != "seed"
        }
        graphs.place_options(graph, self._checkpoint_named(fitting))
        loras = [
            types.Lora(self._resolve("loras", lora.name), lora.weight) for lora in request.loras
        ]
        graphs.insert_loras(graph, loras, places)
        graphs.apply_sets(graph, request.sets, self._declared_inputs)
        places = graphs.find_places(graph)
        # -n varies the one seed: the config's image count, like its seed, only applies where
        # the workflow has one.
        configured = request.workflow is None or len(places.options["seed"].nodes) == 1
        images = request.images or (request.defaults.get("images") if configured else None) or 1
        base_seed, notes = self._seed(
            request, graphs.seed_set(graph, places, request.sets), graph, places, images
        )
        if base_seed is None:
            prompts = [graph for _ in range(images)]
            seeds: list[int | None] = [None] * images
        else:
            prompts = [graphs.with_seed(graph, places, base_seed + i) for i in range(images)]
            seeds = [base_seed + i for i in range(images)]
        steps = None
        if len(places.options["steps"].nodes) == 1:
            value = graph[places.options["steps"].nodes[0]]["inputs"].get("steps")
            steps = value if isinstance(value, int) and not isinstance(value, bool) else None
        prompt_text = (
            request.prompt
            or self._prompt_in(graph, places)
            or (request.workflow.path.stem if request.workflow else "")
        )
        model = values.get("model") or self._model_in(graph, places)
        parameters = {
            "workflow": str(request.workflow.path) if request.workflow else "built-in",
            "seed": base_seed,
            "images": images,
            **{k: v for k, v in request.given().items() if k not in ("seed", "images")},
            **({"loras": [str(lora) for lora in loras]} if loras else {}),
            **(
                {"set": {f"{s.node}.{s.input}": s.value for s in request.sets}}
                if request.sets
                else {}
            ),
            "graph": prompts[0],
        }
        return Prepared(
            request=request,
            expected=images * places.batch,
            steps=steps,
            model=model if isinstance(model, str) else None,
            prompt=str(prompt_text),
            parameters=parameters,
            payload=Payload(prompts, seeds, places.batch),
            notes=tuple(notes),
        )

    def _seed(
        self,
        request: Request,
        set_seed: int | None,
        graph: graphs.Graph,
        places: graphs.Places,
        images: int,
    ) -> tuple[int | None, list[str]]:
        """The first prompt's seed and what to say about it.

        ComfyUI has no random seed: an unset (built-in graph) or -1 seed is drawn here and
        reported, so ``--seed S+i -n 1`` remakes image i. A workflow's own seed stands when
        none is given; a ``--set`` of the sampler's seed wins over ``--seed``.
        """
        has_place = len(places.options["seed"].nodes) == 1
        given = request.seed if set_seed is None else set_seed
        if given is None and (request.workflow is None or has_place):
            given = request.defaults.get("seed")
        # -n varies the one seed; a workflow without any queues N copies of itself (a node
        # that never hits the cache, like the slow test node, makes N images), while two
        # seeds are refused: which one varies is the user's to say.
        seedless = not places.options["seed"].nodes
        if given is None and request.workflow is not None:
            if images > 1 and not seedless:
                places.node_of("seed", "--images")
            return (graphs.seed_in(graph, places) if has_place else None), []
        if given is None or given == types.RANDOM_SEED:
            if not has_place:
                if given is not None or not seedless:
                    places.node_of("seed", None if given is not None else "--images")
                return None, []
            drawn = secrets.randbelow(DRAWN_SEED_BELOW)
            return drawn, [f"seed {drawn} (drawn by the client; --seed {drawn} repeats it)"]
        places.node_of("seed")
        if given + images - 1 > graphs.MAX_SEED:
            raise RequestError(f"--seed: {given} + {images - 1} is past ComfyUI's largest seed")
        return given, []

    @staticmethod
    def _prompt_in(graph: graphs.Graph, places: graphs.Places) -> str | None:
        nodes = places.options["prompt"].nodes
        value = graph[nodes[0]]["inputs"].get("text") if len(nodes) == 1 else None
        return value if isinstance(value, str) else None

    @staticmethod
    def _model_in(graph: graphs.Graph, places: graphs.Places) -> str | None:
        if len(places.checkpoint) != 1:
            return None
        value = graph[places.checkpoint[0]]["inputs"].get("ckpt_name")
        return value if isinstance(value, str) else None

    def _checkpoint_named(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with its model named as the server lists it (as ``--model`` is)."""
        if values.get("model"):
            values["model"] = self._resolve("checkpoints", str(values["model"]))
        return values

    def _resolve(self, folder: str, name: str) -> str:
        """A model name as `models list` shows it; the extension may be left out when that
        leaves one match (cli-contract §7)."""
        if PurePosixPath(name).suffix.lower() in MODEL_EXTENSIONS:
            return name
        if folder not in self._model_names:
            try:
                self._model_names[folder] = self.client.models(folder)
            except NotFound:
                self._model_names[folder] = None
        known = self._model_names[folder]
        if known is None:
            return name
        if name in known:
            return name
        matches = [k for k in known if PurePosixPath(k).with_suffix("").as_posix() == name]
        return matches[0] if len(matches) == 1 else name

    def _workflow_graph(self, request: Request) -> graphs.Graph:
        """The user's workflow in the API format (a UI-format file converted, §7)."""
        from asset_generator.comfy import ui_format

        assert request.workflow is not None
        document = request.workflow.document
        where = f"the workflow {request.workflow.path}"
        if ui_format.is_ui_format(document):
            document = self.convert(document, where)
        try:
            return graphs.check_api_format(document, where)
        except graphs.WorkflowShapeError as exc:
            raise WorkflowFileError(str(exc)) from None

    def _declared_inputs(self, class_type: str) -> list[str]:
        """The inputs the server declares for a node class, optional ones included (what
        ``--set`` may add to a node that leaves them out); none for a class it lacks."""
        info = self.object_info({class_type}).get(class_type)
        declared = info.get("input") if isinstance(info, dict) else None
        if not isinstance(declared, dict):
            return []
        return [
            name
            for group in ("required", "optional")
            if isinstance(declared.get(group), dict)
            for name in declared[group]
        ]

    def convert(self, document: dict[str, Any], where: str) -> dict[str, Any]:
        """A workflow in the web UI's saved format, in the API format (as the web UI converts
        it), with this server's node catalogue; a class the server lacks is named before
        anything is sent."""
        from asset_generator.comfy import ui_format

        catalogue = self.object_info(ui_format.needed_classes(document))
        try:
            return ui_format.to_api(document, catalogue)
        except ui_format.MissingNodeClasses as exc:
            raise ServerError(f"{self.name}: {where}: {exc.message}") from None
        except ui_format.UIFormatError as exc:
            raise WorkflowFileError(
                f"cannot convert {where} (the web UI's saved format): {exc.message}; in "
                "ComfyUI, Workflow → Export (API) writes the format that runs as it is"
            ) from None

    def object_info(self, needed: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The server's node catalogue, cached on disk per server (it is large); fetched again
        when a class the workflow needs is missing from the cached copy (a new custom node)."""
        if self._catalogue is not None and set(needed) <= set(self._catalogue):
            return self._catalogue
        path = self._object_info_path()
        cached: dict[str, Any] | None = None
        if path is not None:
            with contextlib.suppress(OSError, ValueError, RecursionError):
                loaded = json.loads(path.read_bytes())
                cached = loaded if isinstance(loaded, dict) else None
        if cached is not None and set(needed) <= set(cached):
            self._catalogue = cached
            return cached
        fresh = self.client.object_info()
        if path is not None:
            from asset_generator.registry import write_atomic

            with contextlib.suppress(Exception):
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, json.dumps(fresh).encode(), what="the node catalogue")
        self._catalogue = fresh
        return fresh

    def _object_info_path(self) -> Path | None:
        """One file per server address. Not per credential, unlike the registry: the
        catalogue is the same whoever asks, and the cache directory is not private, so
        nothing derived from a token (not even its hash) goes into its names."""
        directory = self._cache_dir
        if directory is None:
            from asset_generator import settings

            directory = settings.cache_dir() / "comfyui"
        from asset_generator.registry import server_key

        return directory / f"{server_key(self.name, None)}-{OBJECT_INFO_FILE}"

    def claimer(self) -> PromptClaimer:
        return PromptClaimer()

    def pool(self) -> PromptClaimer:
        return PromptClaimer()

    def start(self, handle: Handle, prepared: Prepared) -> ComfyRun:
        return ComfyRun(self, dict(handle), prepared)

    def read_seed(self, path: Path) -> tuple[int | None, dict[str, Any] | None]:
        return seed_of_file(path)

    # -- our work, from any process -------------------------------------------------------------

    def job_states(self, handles: list[Handle]) -> list[str]:
        """From one ``/queue``: a handle with a running prompt is RUNNING, a pending one
        QUEUED, else IDLE (finished, deleted, or never sent)."""
        queue = self.client.queue()
        states = []
        for handle in handles:
            found = {queue.state_of(p) for p in prompt_ids(handle)}
            if "running" in found:
                states.append(jobstate.RUNNING)
            elif "pending" in found:
                states.append(jobstate.QUEUED)
            else:
                states.append(jobstate.IDLE)
        return states

    def cancel(self, handles: list[Handle], *, timeout: float | None = None) -> list[bool]:
        """Delete each handle's pending prompts, interrupt its running one by id.

        Always True: a prompt of ours not in the queue may not have been sent yet (its process
        then sees the registry's mark and sends nothing), so absence is never "gone".
        """
        self.stop_prompts([p for handle in handles for p in prompt_ids(handle)], timeout)
        return [True for _ in handles]

    def stop_prompts(self, ids: list[str], timeout: float | None = None) -> set[str]:
        """Delete those of ``ids`` that are pending, then interrupt the one running, by id;
        checked through ``/queue`` afterwards (every cancel answers 200, hit or miss, §5).
        ``timeout`` bounds each request.

        Returns the ids it found queued or running and stopped (with a ``/queue`` that cannot
        be read, every id: see ``_stop_unseen``).
        """
        if not ids:
            return set()
        try:
            queue = self.client.queue(timeout=timeout)
        except (AuthFailed, NotFound):
            raise
        except ServerError as exc:
            # A proxy mangling answers, a server too slow for --timeout, a connection cut
            # mid-answer: the server may well act on what we send. Act without the queue.
            return self._stop_unseen(ids, exc, timeout)
        pending = [p for p in ids if queue.state_of(p) == "pending"]
        running = [p for p in ids if queue.state_of(p) == "running"]
        # Deleted first: an interrupt first would let the next one of ours start (§5.3).
        self.client.delete(pending, timeout=timeout)
        for prompt_id in running:
            self._interrupt_running(prompt_id, timeout)
        if pending:
            # Best effort: what was deleted and interrupted above stays stopped whatever this
            # second look meets, and must not be reported as not stopped.
            try:
                self._stop_started(pending, timeout)
            except ServerError as exc:
                self.debug(f"could not look again for a prompt of ours that started: {exc.message}")
        return set(pending) | set(running)

    def _stop_started(self, pending: list[str], timeout: float | None) -> None:
        """One of ``pending`` may have started between our ``/queue`` and the delete: it is
        interrupted; one still pending (a delete that came too soon) is deleted again."""
        after = self.client.queue(timeout=timeout)
        started = [p for p in pending if after.state_of(p) == "running"]
        still = [p for p in pending if after.state_of(p) == "pending"]
        self.client.delete(still, timeout=timeout)
        for prompt_id in started:
            self._interrupt_running(prompt_id, timeout)

    def wait_left(self, ids: set[str], deadline: float, arriving: Iterable[str] = ()) -> set[str]:
        """Poll ``/queue`` until none of ``ids`` is pending or running, or ``deadline``
        (monotonic) passes; a queue that cannot be read ends the wait.

        ``arriving``: ids of ours that may still reach the queue (their ``POST /prompt`` got
        no answer; the ids are ours, chosen before it): each is stopped by id as it appears,
        and looked for until the deadline. Returns those it stopped.
        """
        ids, arriving, stopped = set(ids), set(arriving), set()
        while ids or arriving:
            try:
                queue = self.client.queue(timeout=max(0.1, deadline - time.monotonic()))
                appeared = [p for p in arriving if queue.state_of(p) is not None]
                if appeared:
                    arriving -= set(appeared)
                    stopped |= self.stop_prompts(appeared, max(0.1, deadline - time.monotonic()))
                    ids |= stopped
            except ServerError as exc:
                self.debug(f"stopped waiting for our prompts to leave the queue: {exc.message}")
                return stopped
            # (One stopped just now still shows in this look: the next one says.)
            if not arriving and not any(queue.state_of(p) in ("pending", "running") for p in ids):
                return stopped
            if time.monotonic() + LEAVE_POLL_SECONDS >= deadline:
                return stopped
            time.sleep(LEAVE_POLL_SECONDS)
        return stopped

    def _stop_unseen(self, ids: list[str], cause: ServerError, timeout: float | None) -> set[str]:
        """Stop ``ids`` without seeing the queue: delete them all (a no-op for any that is not
        pending), then interrupt each by id, which stops it only if it is the one running.

        Only where the interrupt is known to be targeted (``/api/jobs``, or ComfyUI 0.3.57 and
        later, as the server says now or, if it cannot, as it said before): before 0.3.57
        every interrupt is global and only the queue can tell that ours is the one running. Every
        request is tried, and ``cause`` raised if any of them failed (the stop is then not
        confirmed, though the server may have acted on it).
        """
        self.debug(f"could not read the queue ({cause.message}); stopping our prompts by id")
        failed = False
        try:
            self.client.delete(list(ids), timeout=timeout)
        except ServerError:
            failed = True
        try:
            # Asked afresh here, since no /queue guards the interrupt: the remembered version
            # only when the server cannot say (a server made older since, behind a proxy that
            # garbles every answer, is the one case this could still misjudge).
            targeted = self.version() >= TARGETED_INTERRUPT
        except ServerError:
            targeted = (self._remembered_version() or (0,)) >= TARGETED_INTERRUPT
        for prompt_id in ids:
            try:
                if self._cancel_job(prompt_id, timeout):
                    continue
            except ServerError:
                failed = True  # whether the server has the jobs API stays unknown
            if not targeted:
                failed = True
                continue
            try:
                self.client.interrupt(prompt_id, timeout=timeout)
            except ServerError:
                failed = True
        if failed:
            raise cause
        return set(ids)

    def _cancel_job(self, prompt_id: str, timeout: float | None) -> bool:
        """``/api/jobs/{id}/cancel`` where the server has it (remembered); False where not."""
        known = self.ledger.read().cache.get("jobs_api")
        if known is False:
            return False
        try:
            done = self.client.cancel_job(prompt_id, timeout=timeout)
        except BadResponse as exc:
            if isinstance(exc, NotFound):
                raise
            # Answered, but not readably: whether the route exists stays unknown.
            self.debug(f"could not read the jobs API's answer ({exc.message})")
            return False
        if done is None:
            self._remember_cache("jobs_api", False)
            return False
        if known is None:
            self._remember_cache("jobs_api", True)
        return True

    def _interrupt_running(self, prompt_id: str, timeout: float | None) -> None:
        """Interrupt our running prompt and nobody else's (§5.1, §6.6).

        ``/api/jobs/{id}/cancel`` where the server has it (atomic), else the targeted
        ``/interrupt``; a server before 0.3.57 only has the global one, sent only when
        ``/queue`` shows our prompt running just before. ``/queue`` showed it running just
        now, so a version remembered from an earlier run is safe to go by: on a server that
        was since made older, the interrupt it sends stops that same prompt.
        """
        if self._cancel_job(prompt_id, timeout):
            return
        if self._known_version() >= TARGETED_INTERRUPT:
            self.client.interrupt(prompt_id, timeout=timeout)
            return
        if self.client.queue(timeout=timeout).state_of(prompt_id) != "running":
            self.debug(
                f"{self.name} is older than 0.3.57: our prompt is no longer running, so "
                "no interrupt was sent (every interrupt there stops whatever runs)"
            )
            return
        self.debug(
            f"{self.name} is older than 0.3.57, where every interrupt stops whatever runs: "
            "/queue shows our prompt running, so the global interrupt was sent"
        )
        self.client.interrupt(None, timeout=timeout)

    def _remember_cache(self, key: str, value: Any) -> None:
        with contextlib.suppress(Exception), self.ledger.change() as view:
            view.cache[key] = value

    def cancel_all(self, ours: list[Handle]) -> Reach:
        """Clear the queue, then interrupt what runs (in that order, §5.3): anyone's prompts."""
        mine = {p for handle in ours for p in prompt_ids(handle)}
        scope = "ComfyUI has no users: --all reaches every client's prompts"
        try:
            queue = self.client.queue()
        except (AuthFailed, NotFound):
            raise
        except ServerError as exc:
            # Only the counts need the queue: --all stops everything whatever it holds.
            self.debug(f"could not read the queue ({exc.message}); clearing it unseen")
            failed = False
            for call in (self.client.clear, lambda: self.client.interrupt(None)):
                try:
                    call()
                except ServerError:
                    failed = True
            if failed:
                raise exc from None
            return Reach(
                "server",
                f"cleared the queue and interrupted what ran on {self.name} (its queue could "
                f"not be read first, so how many prompts that stopped is unknown; {scope})",
            )
        self.client.clear()
        self.client.interrupt(None)
        running = list(queue.running)
        pending = list(queue.pending)
        ours_stopped = sum(1 for item in running + pending if item.prompt_id in mine)
        text = (
            f"cleared the queue and interrupted what ran on {self.name}: "
            f"{len(running)} running and {len(pending)} pending "
            f"{'prompt' if len(running) + len(pending) == 1 else 'prompts'} stopped, "
            f"{ours_stopped} of them ours ({scope})"
        )
        # --wait waits for every prompt it stopped, anyone's (§7: "none of the cancelled
        # prompts is pending or running").
        others = tuple(
            {"prompt_ids": [item.prompt_id]}
            for item in running + pending
            if item.prompt_id not in mine
        )
        return Reach("server", text, others, stopped=bool(running or pending))

    # -- status, parallelism, models --------------------------------------------------------------

    def facts(self) -> Facts:
        started = time.monotonic()
        stats = self._remember(self.client.system_stats())
        elapsed = (time.monotonic() - started) * 1000
        queue = self.client.queue()
        system = stats.get("system") if isinstance(stats.get("system"), dict) else {}
        devices = []
        for device in stats.get("devices") or []:
            if isinstance(device, dict):
                devices.append(
                    {
                        "name": str(device.get("name") or "?"),
                        "type": str(device.get("type") or "?"),
                        "vram_total": device.get("vram_total"),
                        "vram_free": device.get("vram_free"),
                    }
                )
        mine = {
            p
            for record in self.ledger.read().records
            if not record.is_final
            for p in prompt_ids(record.handle)
        }
        counts = {
            "running": len(queue.running),
            "pending": len(queue.pending),
            "ours_running": sum(1 for i in queue.running if i.prompt_id in mine),
            "ours_pending": sum(1 for i in queue.pending if i.prompt_id in mine),
        }
        version = system.get("comfyui_version")
        python = str(system.get("python_version") or "").split(" ")[0] or None
        pytorch = system.get("pytorch_version")
        document = {
            "server": {
                "url": self.name,
                "type": self.type,
                "reachable": True,
                "response_ms": round(elapsed, 1),
                "version": version,
                "python_version": python,
                "pytorch_version": pytorch,
                "devices": devices,
            },
            "type": self.type,
            "reachable": True,
            "response_ms": round(elapsed, 1),
            "version": version,
            "queue": counts,
        }
        rows = [
            ("type", "comfyui"),
            ("version", str(version or "unknown")),
            ("python", python or "unknown"),
            ("pytorch", str(pytorch or "unknown")),
            (
                "queue",
                f"{counts['running']} running ({counts['ours_running']} ours), "
                f"{counts['pending']} pending ({counts['ours_pending']} ours)",
            ),
        ]
        table = FactTable(
            name="devices",
            columns=("DEVICE", "TYPE", "VRAM FREE", "VRAM TOTAL"),
            rows=[
                (d["name"], d["type"], _bytes(d["vram_free"]), _bytes(d["vram_total"]))
                for d in devices
            ],
            elastic="DEVICE",
            empty="no devices reported",
        )
        return Facts(
            document=document,
            rows=rows,
            tables=[table],
            response_ms=elapsed,
            brief=("version", "queue"),
        )

    def parallelism(self) -> tuple[int, bool]:
        """Two of a pipeline's prompts in the queue: the next waits while one runs (§7)."""
        return SERVER_TYPES[self.type].parallel or 1, False

    def kind_of(self, name: str) -> str:
        """ComfyUI's folder for a SwarmUI sub-type name; any other name as it is."""
        return KINDS.get(name.lower().replace("_", "-"), name)

    def models(self, kind: str | None, folder: str, depth: int) -> ModelListing:
        """``GET /models/{folder}`` (§8), cut to ``folder`` and ``depth`` below it."""
        name = self.kind_of(kind or self.default_kind)
        try:
            names = self.client.models(name)
        except NotFound:
            folders = ", ".join(self.client.model_folders())
            raise RequestError(
                f"Invalid value for '--subtype': {kind!r} is not a model folder of {self.name}; "
                f"its folders: {folders} (SwarmUI's Stable-Diffusion, LoRA, VAE, Embedding, "
                "ControlNet map to checkpoints, loras, vae, embeddings, controlnet)",
                "--subtype",
            ) from None
        root = folder.strip("/\\")
        prefix = f"{root}/" if root else ""
        shown: list[str] = []
        subfolders: set[str] = set()
        for model in names:
            if not model.startswith(prefix):
                continue
            parts = model[len(prefix) :].split("/")
            if len(parts) > 1:
                subfolders.add(prefix + parts[0])
            if len(parts) <= depth:
                shown.append(model)
        return ModelListing(
            kind=name,
            folders=tuple(sorted(subfolders)),
            models=tuple(Model(m, raw={"name": m, "folder": name}) for m in shown),
            complete=not root and depth == MAX_DEPTH,
            described=False,
        )


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value / 2**30:.1f} GiB"


# -- one generation -----------------------------------------------------------------------------


@dataclass
class _Prompt:
    """One of our prompts and what we know of it."""

    index: int
    id: str
    graph: graphs.Graph
    seed: int | None
    # new, sending (POST /prompt under way: it may be queued though no answer came), queued,
    # running, done, failed, interrupted, removed.
    state: str = "new"
    text: str | None = None
    # Output images announced so far (deduplicated: history repeats what `executed` said).
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    results: int = 0
    # The WebSocket dropped before it finished: an `executed` sent meanwhile is lost (§4.5),
    # so it is done only once /history has given its outputs.
    gap: bool = False

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "interrupted", "removed")


class ComfyRun:
    """Our prompts on the server, from the WebSocket opened before the first submit to the
    last image (types.Run)."""

    def __init__(self, server: ComfyServer, handle: Handle, prepared: Prepared) -> None:
        self.server = server
        self.client = server.client
        self.handle = handle
        self.payload: Payload = prepared.payload
        self.client_id = str(handle.get("client_id") or uuid.uuid4().hex)
        ids = prompt_ids(handle)
        self.prompts = [
            _Prompt(i, ids[i], graph, self.payload.seeds[i])
            for i, graph in enumerate(self.payload.graphs)
        ]
        self._by_id = {p.id: p for p in self.prompts}
        # Whether a stop of ours found prompts of ours on the server and stopped them (only
        # then do messages say so: generation.stopped_on_server).
        self.stopped_on_server = False
        self._cancelled = False
        # Whether the registry holds a cancel mark for our generation (set by the caller).
        self.marked: Callable[[], bool] = lambda: False
        self._look_now = False
        self._last_queue_look = 0.0
        # Since when (and with what error) /queue or /history has gone unanswered.
        self._unanswered: tuple[float, ServerError] | None = None

    # -- the stream ---------------------------------------------------------------------------

    def events(self) -> Iterator[Event]:
        with contextlib.ExitStack() as stack:
            socket = self._connect(stack)
            ended = yield from self._submit()
            if ended is not None:
                yield ended
                return
            yield Accepted()
            yield from self._follow(stack, socket)

    def _connect(self, stack: contextlib.ExitStack) -> base.WebSocket | None:
        """The WebSocket for our client id, opened before anything is queued (§4.3)."""
        try:
            return stack.enter_context(self.client.websocket(self.client_id))
        except base.WebSocketRefused as exc:
            self.server.debug(f"{exc}; following the prompts through /queue and /history")
            return None

    def _submit(self) -> Iterator[Event]:
        """Queue our prompts; an Ended if the server refused the workflow or we were stopped."""
        for prompt in self.prompts:
            # A cancel recorded since we registered must be seen before we send anything.
            yield Tick(look=True)
            if self._cancelled:
                prompt.state = "removed"
                continue
            # From here on the server may hold it, answer or not (a timeout, a lost answer):
            # a stop must reach it by its id.
            prompt.state = "sending"
            try:
                errors = self.client.submit(
                    prompt.graph, client_id=self.client_id, prompt_id=prompt.id
                )
            except WorkflowRejected as exc:
                prompt.state = "failed"
                self._stop_ours()
                return Ended(types.FAILED, exc.message)
            except NotQueued:
                # Refused with an answer (a proxy, the size limit): nothing of it to stop.
                prompt.state = "refused"
                raise
            prompt.state = "queued"
            if errors:
                from asset_generator.comfy.client import rejection_text

                yield Notice(
                    f"warning: {self.server.name} will skip part of the workflow: "
                    f"{rejection_text({'node_errors': errors}, prompt.graph)}"
                )
        if all(p.state == "removed" for p in self.prompts):
            return Ended(types.INTERRUPTED, "cancelled before any prompt was queued")
        yield Waiting(jobstate.QUEUED, "queued")
        return None

    def _follow(
        self, stack: contextlib.ExitStack, socket: base.WebSocket | None
    ) -> Iterator[Event]:
        quiet_since = time.monotonic()
        # Reconnects since the last message: a socket that keeps dropping at once is given up.
        tries = 0
        while True:
            if self._look_now:
                self._look_now = False
                yield from self._reconcile()
            end = self._ending()
            if end is not None:
                yield end
                return
            if socket is None:
                time.sleep(POLL_SECONDS)
                yield Tick()
                # /queue carries every queued graph, anyone's: not read more often than this.
                if time.monotonic() - self._last_queue_look >= QUEUE_LOOK_SECONDS:
                    yield from self._reconcile()
                self._give_up_if_unanswered()
                continue
            try:
                message = socket.receive(timeout=POLL_SECONDS, skip_binary=True)
            except RequestTimeout:
                yield Tick()
                if time.monotonic() - quiet_since >= RECONCILE_SECONDS:
                    quiet_since = time.monotonic()
                    yield from self._reconcile()
                continue
            except ConnectionFailed:
                message = None
            except BadResponse as exc:
                # Not ComfyUI's JSON (a proxy mangling frames): the socket only carries
                # progress; the queue and history say the rest. Treated as a drop.
                self.server.debug(f"{exc.message}; reconnecting")
                message = None
            if message is None:
                # Dropped: the prompts go on running on the server (§4.5). Reconnect (the old
                # socket is closed first, so the server cannot pop the new one), and read
                # /history for whatever ended meanwhile.
                stack.close()
                socket = None
                for prompt in self.prompts:
                    prompt.gap = prompt.gap or not prompt.finished
                if tries < RECONNECT_TRIES:
                    tries += 1
                    time.sleep(0.2 * tries)
                    with contextlib.suppress(ConnectionFailed, RequestTimeout, ServerError):
                        socket = stack.enter_context(self.client.websocket(self.client_id))
                        self.server.debug("the WebSocket dropped; reconnected")
                yield from self._reconcile()
                continue
            quiet_since = time.monotonic()
            tries = 0
            yield from self._message(message)

    def _give_up_if_unanswered(self) -> None:
        """Without a socket, /queue and /history are all we have: once they have not been
        answered for --timeout seconds, the server is gone for us (its error is raised)."""
        if self._unanswered is None:
            return
        since, error = self._unanswered
        if time.monotonic() - since >= self.client.transport.timeout:
            raise error

    def _message(self, message: dict[str, Any]) -> Iterator[Event]:
        kind = message.get("type")
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        prompt = self._by_id.get(str(data.get("prompt_id")))
        if kind == "status":
            # The queue changed: one of ours may have been deleted by another process.
            due = time.monotonic() - self._last_queue_look >= QUEUE_LOOK_SECONDS
            if due and any(p.state == "queued" for p in self.prompts):
                yield from self._reconcile()
            return
        if prompt is None or prompt.finished:
            return
        if kind == "execution_start":
            prompt.state = "running"
            yield Waiting(jobstate.RUNNING, self._running_text(prompt))
            if self._cancelled or self.marked():
                # An interrupt that reached the server between taking the prompt from the
                # queue and starting it was reset when it started (execution.py:652, §5.1).
                self.server.debug("a prompt of ours started after its cancel; interrupting it")
                with contextlib.suppress(ServerError):
                    self.server.stop_prompts([prompt.id])
        elif kind == "progress":
            value, most = data.get("value"), data.get("max")
            if isinstance(value, int | float) and isinstance(most, int | float) and most > 0:
                if prompt.state != "running":
                    prompt.state = "running"
                    yield Waiting(jobstate.RUNNING, self._running_text(prompt))
                for index in self._indices(prompt):
                    yield Progress(index, min(max(value / most, 0.0), 1.0))
        elif kind == "executed":
            output = data.get("output")
            yield from self._outputs(prompt, images_of(output))
        elif kind == "execution_success":
            if prompt.gap:
                # Its outputs are read from /history at the final `executing`, written
                # before it (§11.25), or at the next look at the queue.
                return
            prompt.state = "done"
        elif kind == "execution_error":
            prompt.state = "failed"
            prompt.text = _error_text(data)
            self._stop_ours()
        elif kind == "execution_interrupted":
            prompt.state = "interrupted"
            prompt.text = _interrupt_text(data, self.server.name)
            self._stop_ours()
        elif kind == "executing" and data.get("node") is None and not prompt.finished:
            # After history is written: the safe point to check on anything missed (§11.25).
            yield from self._reconcile()

    def _running_text(self, prompt: _Prompt) -> str:
        if len(self.prompts) == 1:
            return "running"
        return f"running prompt {prompt.index + 1} of {len(self.prompts)}"

    def _indices(self, prompt: _Prompt) -> range:
        batch = self.payload.batch
        return range(prompt.index * batch, (prompt.index + 1) * batch)

    def _outputs(self, prompt: _Prompt, images: list[OutputImage]) -> Iterator[Event]:
        for image in images:
            key = (image.filename, image.subfolder, image.type)
            if key in prompt.seen:
                continue
            prompt.seen.add(key)
            if image.type != "output":
                # PreviewImage writes to temp: a preview, not one of the results (§7.1).
                yield NotAResult(prompt.index, "preview", image.shown)
                continue
            index = prompt.index * self.payload.batch + prompt.results
            prompt.results += 1
            yield ImageReady(
                index=index,
                shown=image.shown,
                extension=PurePosixPath(image.filename).suffix.lstrip(".").lower() or "png",
                seed=prompt.seed,
                ref=image,
            )

    def _reconcile(self) -> Iterator[Event]:
        """Read /queue (and /history for prompts no longer in it) to learn what the socket
        did not say: started, finished, failed, interrupted, or removed from the queue."""
        waiting = [p for p in self.prompts if not p.finished and p.state != "new"]
        if not waiting:
            return
        self._last_queue_look = time.monotonic()
        try:
            queue: Queue = self.client.queue()
            entries = {
                p.id: self.client.history(p.id) for p in waiting if queue.state_of(p.id) is None
            }
        except (AuthFailed, NotFound):
            raise
        except ServerError as exc:
            # Passing trouble is for the next look; with no socket, _follow bounds it.
            self.server.debug(f"could not read the queue: {exc.message}")
            self._unanswered = self._unanswered or (time.monotonic(), exc)
            return
        self._unanswered = None
        for prompt in waiting:
            state = queue.state_of(prompt.id)
            if state == "running" and prompt.state == "queued":
                prompt.state = "running"
                yield Waiting(jobstate.RUNNING, self._running_text(prompt))
            if state is not None:
                continue
            entry = entries[prompt.id]
            if entry is None:
                # Neither queued, running nor in history: deleted from the queue (§6.2).
                prompt.state = "removed"
                prompt.text = (
                    f"prompt {prompt.index + 1} was removed from {self.server.name}'s queue"
                )
                self._stop_ours()
                continue
            yield from self._from_history(prompt, entry)

    def _from_history(self, prompt: _Prompt, entry: HistoryEntry) -> Iterator[Event]:
        for node_id in sorted(entry.outputs, key=graphs._id_order):
            yield from self._outputs(prompt, entry.outputs[node_id])
        if entry.status == "success":
            prompt.state = "done"
        elif entry.last_message == "execution_interrupted":
            prompt.state = "interrupted"
            prompt.text = _interrupt_text(entry.last_data, self.server.name)
            self._stop_ours()
        else:
            prompt.state = "failed"
            prompt.text = _error_text(entry.last_data)
            self._stop_ours()

    def _ending(self) -> Ended | None:
        """The run's end once every prompt of ours has finished (the first bad one decides)."""
        if not all(p.finished for p in self.prompts):
            return None
        for state, how in (("failed", types.FAILED), ("interrupted", types.INTERRUPTED)):
            bad = next((p for p in self.prompts if p.state == state), None)
            if bad is not None:
                return Ended(how, bad.text)
        removed = [p for p in self.prompts if p.state == "removed"]
        if removed and self._cancelled:
            return Ended(types.INTERRUPTED, removed[0].text or "removed from the queue")
        made = sum(p.results for p in self.prompts)
        if removed:
            # Gone without a word (a restart, another client's delete): the silent ending, a
            # cancel only if our mark says so (generation._classify). Each short one counts.
            short = sum(max(self.payload.batch - p.results, 1) for p in removed)
            return Ended(types.DONE, images=made + short)
        if made == 0:
            return Ended(
                types.FAILED,
                "the workflow ran to success but saved no image (no SaveImage output, or only "
                "previews)",
            )
        return Ended(types.DONE, images=made)

    # -- stopping -------------------------------------------------------------------------------

    def _stop_ours(self) -> None:
        """One prompt of ours failed or was interrupted: the rest are not wanted."""
        rest = [p.id for p in self.prompts if p.state in ("queued", "running")]
        with contextlib.suppress(ServerError):
            self.server.stop_prompts(rest)
        for prompt in self.prompts:
            if prompt.state in ("queued", "new"):
                prompt.state = "removed"
                prompt.text = prompt.text or "not run: an earlier prompt of the generation ended"
        # The running one ends with its own event (or the next look at the queue).
        self._look_now = True

    def cancel(self, timeout: float) -> bool:
        """Delete our pending prompts and interrupt our running one, by id, then wait for
        them to leave the queue; all within ``timeout`` seconds.

        A real ComfyUI keeps an interrupted prompt in ``queue_running`` until its node next
        checks for the interrupt and its worker has written the history (a few hundred ms):
        a process that exits at once would leave it there for ``status`` to see.
        """
        deadline = time.monotonic() + timeout
        self._cancelled = True
        ids = [p.id for p in self.prompts if p.state in ("sending", "queued", "running")]
        try:
            stopped = self.server.stop_prompts(ids, timeout)
        except ServerError as exc:
            self.server.debug(f"could not stop our prompts on the server: {exc.message}")
            return False
        # A prompt still being sent may reach the queue after that look: stopped as it does.
        sending = [p.id for p in self.prompts if p.state == "sending" and p.id not in stopped]
        stopped |= self.server.wait_left(stopped, deadline, sending)
        self.stopped_on_server = self.stopped_on_server or bool(stopped)
        self._look_now = True
        return True

    def open_image(self, image: ImageReady) -> AbstractContextManager[Iterator[bytes]]:
        return self.client.view(image.ref)


def _error_text(data: dict[str, Any]) -> str:
    """``execution_error`` as one line: node id, class, exception type and message (§4.2)."""
    node_id = data.get("node_id", "?")
    node_type = data.get("node_type", "?")
    kind = data.get("exception_type") or "error"
    message = str(data.get("exception_message") or "").strip() or "no message"
    return f"node {node_id} ({node_type}) raised {kind}: {message}"


def _interrupt_text(data: dict[str, Any], server: str) -> str:
    node = data.get("node_id")
    where = f" at node {node} ({data.get('node_type', '?')})" if node is not None else ""
    return f"{server} interrupted the prompt{where}"
