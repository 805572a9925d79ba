"""Simulated text-to-image generation with SwarmUI's request and task life cycle.

``generate`` follows ``T2IAPI.GenT2I_Internal`` (claim, parse, launch tasks, keep_alive,
discard_indices) and ``_image_task`` follows ``T2IEngine.CreateImageTask`` (wait for a backend,
run, emit progress and images), including where each counter moves and where a status message
is emitted. The "backend" is a timer: ``steps × step_seconds`` of sampling.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asset_generator.emulator.backends import Backend, NoBackendsError
from asset_generator.emulator.core import EmulatedServer
from asset_generator.emulator.outputs import output_path
from asset_generator.emulator.params import (
    PARAM_TYPES,
    GenParams,
    ParamError,
    clean_model_name,
    parse_generation_params,
)
from asset_generator.emulator.png import gradient_png, preview_size
from asset_generator.emulator.state import Claim, Session

Output = Callable[[dict[str, Any]], None]

INTERRUPTED = "Generation session interrupted."
NOTHING_GENERATED = (
    "No images were generated (all refused, or failed - check server logs for details)."
)
NO_MODEL = "No model input given. Did your UI load properly?"
# Backends.MaxRequestsForcedOrder: below this queue length launches pause 20 ms to keep order.
MAX_REQUESTS_FORCED_ORDER = 20
LAUNCH_PAUSE_SECONDS = 0.02
KEEP_ALIVE_SECONDS = 30.0
# An injected task fault strikes after this many sampling steps.
FAULT_AFTER_STEPS = 5
# A simulated ComfyUI workflow: progress is (nodes_done + current) / (nodes + 1)
# (ComfyUIAPIAbstractBackend.AwaitJobLive); the sampler is the fifth node of seven.
WORKFLOW_NODES = 7
NODES_BEFORE_SAMPLER = 4
PREVIEW_SIDE = 16
# Task i uses seed + i × batchsize; .NET long arithmetic wraps.
_INT64 = 2**64

# ResolutionAspectReferences (src/Text2Image/T2IParamInput.cs).
_ASPECTS = {
    "1:1": (512, 512),
    "4:3": (576, 448),
    "3:2": (608, 416),
    "8:5": (608, 384),
    "16:9": (672, 384),
    "21:9": (768, 320),
    "2:3": (416, 608),
    "5:8": (384, 608),
    "9:16": (384, 672),
    "9:21": (320, 768),
    "3:4": (448, 576),
}


def _wrap64(value: int) -> int:
    return (value + 2**63) % _INT64 - 2**63


@dataclass
class _Request:
    """One parsed generation request, shared by its tasks."""

    server: EmulatedServer
    session: Session
    claim: Claim
    params: GenParams
    request_id: int
    when: datetime
    name_counter: int
    images: int
    batch_size: int
    output: Output
    is_ws: bool
    continue_after_errors: bool
    extra_metadata: dict[str, Any]
    # SharedGenT2IData.NumNonReal: intermediate images get -11, -12, ... request-wide.
    non_real: int = 0
    # Real images produced (their seeds), for the mini-grid.
    real_seeds: list[int] = field(default_factory=list)

    def send_status(self) -> None:
        if self.is_ws:
            self.output(self.server.status(self.session))

    def set_error(self, message: str) -> None:
        """``setError``: report the error (unless continueaftererrors) and stop launching."""
        if not self.continue_after_errors or self.claim.should_cancel:
            self.output({"error": message})
            self.claim.local_cancelled = True


async def generate(
    server: EmulatedServer,
    session: Session,
    images: int,
    raw: dict[str, Any],
    batch_offset: int,
    output: Output,
    is_ws: bool,
) -> None:
    """Run one generation request, reporting through ``output`` as SwarmUI does."""
    claim = Claim(server.registry, session, images)
    try:
        if is_ws:
            output(server.status(session))
        with server.registry.lock:
            request_id = session.user.next_request_id()
        when = datetime.now()
        name_counter = server.minute_counter.next(when)
        try:
            params = parse_generation_params(
                raw, lambda perm: server.has_permission(session.user, perm), server.catalog
            )
        except ParamError as exc:
            output({"error": str(exc)})
            claim.local_cancelled = True
            return
        _apply_special_logic(params)
        extra = _extra_metadata(raw, when)
        request = _Request(
            server=server,
            session=session,
            claim=claim,
            params=params,
            request_id=request_id,
            when=when,
            name_counter=name_counter,
            images=params.get_int("images", 1),
            batch_size=params.get_int("batchsize", 1),
            output=output,
            is_ws=is_ws,
            continue_after_errors=params.get_bool("continueaftererrors"),
            extra_metadata=extra,
        )
        claim.extend(waiting_gens=request.images - claim.held["waiting_gens"])
        await _run_tasks(request, batch_offset)
        _mini_grid(request)
        output({"discard_indices": []})
    finally:
        claim.release()


def _apply_special_logic(params: GenParams) -> None:
    """Lock the seed (``T2IParamSet.LockSeeds``) and fit LoRA weights to the LoRA list."""
    if params.get_int("seed", -1) == -1:
        params.values["seed"] = str(random.randrange(2**31 - 1))
    if params.get_int("variationseed", 0) == -1:
        params.values["variationseed"] = str(random.randrange(2**31 - 1))
    loras = params.get_list("loras")
    if loras:
        weights = params.get_list("loraweights")[: len(loras)]
        weights += ["1"] * (len(loras) - len(weights))
        params.values["loraweights"] = ",".join(weights)


def _extra_metadata(raw: dict[str, Any], when: datetime) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    supplied = raw.get("extra_metadata")
    if isinstance(supplied, dict):
        for key, value in supplied.items():
            extra[key] = value if isinstance(value, list) else _plain_text(value)
    presets = raw.get("presets")
    if isinstance(presets, list) and presets:
        # The user has no presets here, so each title is skipped, but the use is recorded.
        extra["presets_used"] = [_plain_text(p) for p in presets]
    extra["date"] = f"{when:%Y-%m-%d}"
    return extra


def _plain_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


async def _run_tasks(request: _Request, batch_offset: int) -> None:
    server, claim = request.server, request.claim
    max_degrees = server.pool.max_simultaneous()
    tasks: set[asyncio.Task[None]] = set()
    seed = request.params.get_int("seed", 0)
    for i in range(request.images):
        if claim.should_cancel:
            break
        tasks = {t for t in tasks if not t.done()}
        while len(tasks) > max_degrees:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            tasks = {t for t in tasks if not t.done()}
        if claim.should_cancel:
            break
        local_index = i * request.batch_size
        task_seed = seed
        if not request.params.get_bool("noseedincrement"):
            task_seed = _wrap64(seed + local_index)
        image_index = local_index + batch_offset
        tasks.add(server.spawn(_image_task(request, image_index, task_seed)))
        if server.pool.queued < MAX_REQUESTS_FORCED_ORDER:
            await asyncio.sleep(LAUNCH_PAUSE_SECONDS)
    while tasks:
        await asyncio.wait(tasks, timeout=KEEP_ALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        request.output({"keep_alive": True})
        tasks = {t for t in tasks if not t.done()}


async def _image_task(request: _Request, image_index: int, seed: int) -> None:
    server, claim, session = request.server, request.claim, request.session
    if claim.should_cancel:
        return
    model = request.params.values.get("model")

    def claim_load() -> Callable[[], None]:
        # A model load claims every session waiting for the model, not the request
        # (BackendHandler.cs ~1362): it outlives an interrupt of a request that only waited.
        with server.registry.lock:
            session.loading_models += 1

        def release() -> None:
            with server.registry.lock:
                session.loading_models -= 1

        return release

    claim.extend(waiting_backends=1)
    request.send_status()
    backend: Backend | None = None
    try:
        backend = await server.pool.acquire(
            model, claim.token, claim_load=claim_load, session_key=session,
            notify=request.send_status,
        )  # fmt: skip
    except NoBackendsError as exc:
        request.set_error(str(exc))
        return
    finally:
        claim.complete(waiting_backends=1)
        request.send_status()
    if backend is None or claim.should_cancel:
        if backend is not None:
            server.pool.release(backend)
        return
    claim.extend(live_gens=1)
    request.send_status()
    try:
        if claim.should_cancel:
            return
        if server.config.require_model and model is None:
            request.set_error(NO_MODEL)
            return
        fault = server.take_task_fault()
        if fault is not None:
            # The backend ran a few steps, then failed: with a text, as a ComfyUI error does;
            # without, as a TaskCanceledException does (T2IEngine.cs ~370: no message).
            if await claim.token.wait(FAULT_AFTER_STEPS * server.config.step_seconds):
                request.set_error(INTERRUPTED)
            elif fault:
                request.set_error(fault)
            return
        produced = await _sample(request, backend, image_index, seed)
        if produced == 0:
            request.set_error(INTERRUPTED if claim.should_cancel else NOTHING_GENERATED)
    finally:
        server.pool.release(backend)
        claim.complete(waiting_gens=1, live_gens=1)
        request.send_status()


async def _sample(request: _Request, backend: Backend, image_index: int, seed: int) -> int:
    """The simulated backend run; returns how many images it produced (0 if interrupted)."""
    config = request.server.config
    steps = request.params.get_int("steps", config.default_steps)
    model = request.params.values.get("model") or backend.current_model
    started = time.monotonic()
    preview = _metadata(request, seed, model, preview=True)

    def progress(nodes_done: int, current: float) -> None:
        nonlocal preview
        message: dict[str, Any] = {
            "batch_index": str(image_index),
            "request_id": str(request.request_id),
            "overall_percent": (nodes_done + current) / (WORKFLOW_NODES + 1),
            "current_percent": current,
        }
        if preview is not None:
            message["metadata"] = json.dumps(preview, indent=2)
            preview = None
        request.output({"gen_progress": message})

    def previews(step: int, current: float) -> None:
        # ComfyUI preview frames (AwaitJobLive): overall divides by the node count, and the
        # 2nd+ image of a batch carries an *integer* batch_index.
        for k in range(request.batch_size):
            frame = gradient_png(_wrap64(seed + k + step), PREVIEW_SIDE, PREVIEW_SIDE)
            index: str | int = str(image_index) if k == 0 else image_index + k
            preview_message = {
                "batch_index": index,
                "request_id": str(request.request_id),
                "preview": "data:image/png;base64," + base64.b64encode(frame).decode("ascii"),
                "overall_percent": (NODES_BEFORE_SAMPLER + current) / WORKFLOW_NODES,
                "current_percent": current,
            }
            request.output({"gen_progress": preview_message})

    show_previews = config.previews and not request.params.get_bool("nopreviews")
    progress(NODES_BEFORE_SAMPLER, 0.0)
    token = request.claim.token
    for step in range(steps):
        # The request's own cancel (setError after another task failed) stops it too: the
        # backend watches the claim's linked token (T2IEngine.cs ~321).
        if await token.wait(config.step_seconds) or request.claim.local_cancelled:
            return 0
        progress(NODES_BEFORE_SAMPLER, (step + 1) / steps)
        if show_previews:
            previews(step, (step + 1) / steps)
    if token.cancelled:
        return 0
    for nodes_done in range(NODES_BEFORE_SAMPLER + 1, WORKFLOW_NODES):
        progress(nodes_done, 0.0)
    elapsed = time.monotonic() - started
    if request.params.get_bool("outputintermediateimages"):
        # One non-real image (the stage before the final decode) per task, sent first.
        request.non_real += 1
        inline = request.params.get_bool("donotsaveintermediates")
        _save_and_announce(request, -10 - request.non_real, seed, model, elapsed, inline=inline)
    for k in range(request.batch_size):
        actual_index = image_index + k
        image_seed = _wrap64(seed + k)
        _save_and_announce(request, actual_index, image_seed, model, elapsed)
        request.real_seeds.append(image_seed)
    return request.batch_size


def _mini_grid(request: _Request) -> None:
    """The grid of a batch, saved as batch index -1 when MaxImagesInMiniGrid allows it."""
    count = len(request.real_seeds)
    if 1 < count <= request.server.config.max_images_in_mini_grid:
        seed = request.real_seeds[0]
        model = request.params.values.get("model") or request.server.pool.default_model
        _save_and_announce(request, -1, seed, model, 0.0)


def _image_size(params: GenParams) -> tuple[int, int]:
    """``T2IParamInput.GetImageWidth/Height``."""
    raw = params.values.get("rawresolution")
    if raw:
        width, _, height = raw.partition("x")
        return int(width), int(height)
    aspect = params.values.get("aspectratio")
    if "sidelength" in params.values and aspect in _ASPECTS:
        side = params.get_int("sidelength", 1024)
        ref_w, ref_h = _ASPECTS[aspect]
        return (round(ref_w * side / 512 / 16) * 16, round(ref_h * side / 512 / 16) * 16)
    return params.get_int("width", 512), params.get_int("height", 512)


def _typed(param_id: str, text: str) -> Any:
    ptype = PARAM_TYPES.get(param_id)
    kind = ptype.kind if ptype else "text"
    if kind == "integer":
        return int(text)
    if kind == "decimal":
        return float(text)
    if kind == "boolean":
        return text == "true"
    if kind == "list":
        splitter = "\n|||\n" if "\n|||\n" in text else ","
        return [item.strip() for item in text.split(splitter) if item.strip()]
    if kind == "model":
        return clean_model_name(text)
    return text


def _metadata(
    request: _Request, seed: int, model: str | None, preview: bool = False, elapsed: float = 0.0
) -> dict[str, Any]:
    """``T2IParamInput.GenFullMetadataObject`` (the preview variant of ComfyUI's first progress)."""
    params = {key: _typed(key, value) for key, value in request.params.values.items()}
    params["seed"] = seed
    if model:
        params["model"] = clean_model_name(model)
    params["swarm_version"] = request.server.config.version.split(".GIT")[0]
    extra = dict(request.extra_metadata)
    if preview:
        params.pop("donotsave", None)
        params.pop("exactbackendid", None)
        params["is_preview"] = True
        params["preview_notice"] = "Image is not done generating"
    else:
        extra["prep_time"] = "0.00 sec"
        extra["generation_time"] = f"{elapsed:.2f} sec"
    return {"sui_image_params": params, "sui_extra_data": extra}


def _save_and_announce(
    request: _Request,
    actual_index: int,
    seed: int,
    model: str | None,
    elapsed: float,
    *,
    inline: bool = False,
) -> None:
    """``saveImage`` in T2IAPI.cs: store (or inline) the image and emit the flat image message."""
    metadata = _metadata(request, seed, model, elapsed=elapsed)
    # SwarmUI writes metadata indented with non-ASCII escaped (T2IParamInput.SafeSerializer).
    metadata_text = json.dumps(metadata, indent=2, ensure_ascii=True)
    width, height = preview_size(*_image_size(request.params))
    padding = int(request.server.config.image_megabytes * 1024 * 1024)
    if inline or request.params.get_bool("donotsave"):
        # Inline results are the backend's raw bytes: no embedded metadata (Session.cs).
        data = gradient_png(seed, width, height, padding_bytes=padding)
        url = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    else:
        text = {"parameters": metadata_text}
        data = gradient_png(seed, width, height, text, padding_bytes=padding)
        user_id = request.session.user.user_id
        path = output_path(
            request.when, request.name_counter, request.params.values.get("prompt", ""), model
        )
        relative = request.server.store.save(user_id, path, "png", data)
        url = f"View/{user_id}/{relative}"
    if request.params.get_bool("forwardswarmdata"):
        request.output({"raw_swarm_data": {"params_used": sorted(request.params.values)}})
    request.output(
        {
            "image": url,
            "batch_index": str(actual_index),
            "request_id": str(request.request_id),
            "metadata": metadata_text,
        }
    )


def http_result(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """``T2IAPI.GenerateText2Image``: the first error wins, else images in completion order."""
    images: dict[int, str] = {}
    discards: list[int] = []
    for message in outputs:
        if "error" in message:
            return message
        if "image" in message and "batch_index" in message:
            images[int(message["batch_index"])] = message["image"]
        if "discard_indices" in message:
            discards = list(message["discard_indices"])
    for index in discards:
        images.pop(index, None)
    return {"images": list(images.values())}
