"""The emulated ``/API/<route>`` handlers and their declared arguments and permissions.

Each handler receives the call context and its coerced route arguments (keyed by the exact,
case-sensitive JSON names of the C# parameters) and returns the JSON object to answer, or
None (WebSocket routes that already sent everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asset_generator.emulator.backends import NoBackendsError
from asset_generator.emulator.core import EmulatedServer
from asset_generator.emulator.generation import generate, http_result
from asset_generator.emulator.httpmsg import HttpRequest
from asset_generator.emulator.models import SORT_MODES, SUBTYPES
from asset_generator.emulator.params import (
    PARAM_TYPES,
    Arg,
    UnreadableParamError,
    clean_model_name,
    token_text,
)
from asset_generator.emulator.state import InterruptToken, Session
from asset_generator.emulator.websocket import WebSocketChannel

Handler = Callable[["CallContext", dict[str, Any]], Awaitable[dict[str, Any] | None]]


@dataclass
class CallContext:
    """Everything a route handler may use."""

    server: EmulatedServer
    request: HttpRequest
    session: Session | None
    raw: dict[str, Any]  # the request object without session_id
    ws: WebSocketChannel | None = None
    # Records one extra WebSocket message and returns it parsed (None if not a JSON object).
    record_message: Callable[[str], dict[str, Any] | None] | None = None


@dataclass(frozen=True)
class Route:
    """One registered API call (``API.RegisterAPICall``)."""

    name: str
    handler: Handler
    permission: str | None
    args: tuple[Arg, ...]
    websocket: bool = False


ROUTES: dict[str, Route] = {}
SESSIONLESS = frozenset({"login", "getnewsession", "registerbasic", "registeroauth"})
# Routes of real SwarmUI that the emulator does not simulate (protocol §1.1).
UNEMULATED = """\
AddImageToHistory AddNewBackend AddNewPreset AdminAddRole AdminAddUser
AdminChangeUserSettings AdminDeleteRole AdminDeleteUser AdminEditRole AdminGetUserInfo
AdminListPermissions AdminListRoles AdminListUsers AdminSetUserOAuthEmail AdminSetUserPassword
AdminTakeControl ChangePassword ChangeServerSettings ChangeUserSettings CheckForUpdates
ComfyDeleteWorkflow ComfyEnsureRefreshable ComfyGetGeneratedWorkflow ComfyGetNodeTypesForBackend
ComfyInstallFeatures ComfyListTorchInstalls ComfyListWorkflows ComfyReadWorkflow
ComfySaveWorkflow ComfyUpdateTorch CountTokens CreateAuthToken DebugGenDocs DebugLanguageAdd
DeleteBackend DeleteImage DeleteModel DeletePreset DeleteWildcard DoLoraExtractionWS
DoModelDownloadWS DoTensorRTCreateWS DuplicatePreset EditBackend EditModelMetadata EditWildcard
ExportUserPresets ExtractVideoAudio ForwardMetadataRequest GenerateLLMText GenerateLLMTextWS
GetAPIKeyStatus GetLanguage GetModelHash GetModelHeaders GetUserSettings GridGenDeleteData
GridGenDoesExist GridGenGetData GridGenListData GridGenRun GridGenSaveData ImageBatchRun
InstallConfirmWS InstallDotnetUpdate InstallExtension ListBackendTypes ListConnectedUsers
ListImages ListLogTypes ListMyAuthTokens ListRecentLogMessages ListServerSettings
LogSubmitToPastebin Login Logout OpenImageFolder Pickle2SafeTensor RegisterBasic RegisterOAuth
RenameModel RestartBackends RevokeMyAuthToken SelectModelWS SetAPIKey SetExtensionEnabled
SetParamEdits SetPresetLinks SetStarredModels ShutdownServer TestPromptFill ToggleBackend
ToggleImageStarred TokenizeInDetail TriggerRefresh UninstallExtension UpdateAndRestart
UpdateExtension WipeMetadata
"""
UNEMULATED_NAMES = {name.lower(): name for name in UNEMULATED.split()}


def route(
    name: str, permission: str | None, *args: Arg, websocket: bool = False
) -> Callable[[Handler], Handler]:
    """Register a handler under ``name`` (looked up lower-cased, as ``API.APIHandlers``)."""

    def register(handler: Handler) -> Handler:
        ROUTES[name.lower()] = Route(name, handler, permission, args, websocket)
        return handler

    return register


def routes_for(serve_interrupt_generation: bool) -> dict[str, Route]:
    """The route table of one emulator (InterruptGeneration only where asked for)."""
    table = dict(ROUTES)
    if serve_interrupt_generation:
        table["interruptgeneration"] = INTERRUPT_GENERATION
    return table


# -- sessions ----------------------------------------------------------------------------------


@route("GetNewSession", None, Arg("impersonateUser", "String", None))
async def get_new_session(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """``BasicAPIFeatures.GetNewSession``."""
    server = ctx.server
    user = server.user_for(ctx.request)
    if user is None:
        return {"error": "Invalid or unauthorized."}
    target = args["impersonateUser"]
    if target is not None:
        if not server.has_permission(user, "manage_users"):
            return {
                "error": "You do not have permission to impersonate other users.",
                "error_id": "bad_impersonate",
            }
        with server.registry.lock:
            found = server.registry.users.get(target)
        if found is None:
            return {
                "error": "The user you are trying to impersonate does not exist.",
                "error_id": "bad_impersonate",
            }
        user = found
    session = server.registry.create_session(user, ctx.request.peer)
    return {
        "session_id": session.session_id,
        "user_id": user.user_id,
        "output_append_user": True,
        "version": server.config.version,
        "server_id": server.server_id,
        "permissions": user.permission_list(server.config.deny_permissions),
    }


@route("GetMyUserData", "fundamental_generate_tab_access")
async def get_my_user_data(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    assert ctx.session is not None
    user = ctx.session.user
    return {
        "user_name": user.user_id,
        "presets": [],
        "language": "en",
        "permissions": user.permission_list(ctx.server.config.deny_permissions),
        "starred_models": {},
        "model_preset_links": {},
        "autocompletions": None,
    }


# -- interrupt ---------------------------------------------------------------------------------


@route("InterruptAll", "basic_image_generation", Arg("other_sessions", "Boolean", False))
async def interrupt_all(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """``BasicAPIFeatures.InterruptAll``: this session, or every session of the same user."""
    assert ctx.session is not None
    registry = ctx.server.registry
    registry.interrupt(ctx.session)
    if args["other_sessions"]:
        with registry.lock:
            siblings = list(ctx.session.user.sessions.values())
        for session in siblings:
            registry.interrupt(session)
    return {"success": True}


async def _interrupt_generation(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    # Not a SwarmUI route (protocol §5.5); served only to emulate servers that add one.
    assert ctx.session is not None
    ctx.server.registry.interrupt(ctx.session)
    return {"success": True}


INTERRUPT_GENERATION = Route(
    "InterruptGeneration", _interrupt_generation, "basic_image_generation", ()
)


@route("AdminInterruptUser", "interrupt_others", Arg("name", "String"))
async def admin_interrupt_user(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    registry = ctx.server.registry
    with registry.lock:
        user = registry.users.get(args["name"])
        sessions = list(user.sessions.values()) if user else []
    if user is None:
        return {"error": "No user by that name exists."}
    for session in sessions:
        registry.interrupt(session)
    return {"success": True}


# -- status ------------------------------------------------------------------------------------


@route("GetCurrentStatus", "fundamental_generate_tab_access")
async def get_current_status(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    assert ctx.session is not None
    return ctx.server.status(ctx.session)


@route("GetGlobalStatus", "read_server_info_panels")
async def get_global_status(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return ctx.server.global_status()


@route("GetServerResourceInfo", "read_server_info_panels")
async def get_server_resource_info(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """``AdminAPI.GetServerResourceInfo`` without ``gpus`` (as on a machine without nvidia-smi)."""
    times = os.times()
    wall = max(time.monotonic() - ctx.server.started, 1e-6)
    total, free = _memory()
    return {
        "cpu": {"usage": (times.user + times.system) / wall, "cores": os.cpu_count() or 1},
        "system_ram": {"total": total, "used": total - free, "free": free},
    }


def _memory() -> tuple[int, int]:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle}
        return info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        return 0, 0


@route("ServerDebugMessage", "server_debug_message", Arg("message", "String"))
async def server_debug_message(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"success": True}


# -- backends ----------------------------------------------------------------------------------


@route(
    "ListBackends",
    "view_backends_list",
    Arg("nonreal", "Boolean", False),
    Arg("full_data", "Boolean", False),
)
async def list_backends(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """``BackendAPI.ListBackends``: an object keyed by backend id as a string."""
    return {str(b.backend_id): b.to_net(args["full_data"]) for b in ctx.server.pool.backends}


@route(
    "FreeBackendMemory",
    "control_mem_clean",
    Arg("system_ram", "Boolean", False),
    Arg("backend", "String", "all"),
)
async def free_backend_memory(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    chosen = [
        b
        for b in ctx.server.pool.running()
        if args["backend"] == "all" or str(b.backend_id) == args["backend"]
    ]
    for backend in chosen:
        if not backend.busy:
            backend.current_model = None
    return {"result": bool(chosen), "count": len(chosen)}


# -- models ------------------------------------------------------------------------------------


def _loaded(ctx: CallContext) -> set[str]:
    return {b.current_model for b in ctx.server.pool.backends if b.current_model}


@route(
    "ListModels",
    "fundamental_model_access",
    Arg("path", "String"),
    Arg("depth", "Int32"),
    Arg("subtype", "String", "Stable-Diffusion"),
    Arg("sortBy", "String", "Name"),
    Arg("allowRemote", "Boolean", True),
    Arg("sortReverse", "Boolean", False),
    Arg("dataImages", "Boolean", False),
)
async def list_models(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """``ModelsAPI.ListModels``: folder/depth filtering, sort modes, exact error texts."""
    sort_by = args["sortBy"]
    sort_mode = next((m for m in SORT_MODES if m.lower() == sort_by.strip().lower()), None)
    if sort_mode is None:
        return {"error": f"Invalid sort mode '{sort_by}'."}
    subtype = args["subtype"]
    if subtype not in SUBTYPES and subtype != "Wildcards":
        return {"error": "Invalid sub-type."}
    depth = min(max(args["depth"], 1), 20)
    path = args["path"].replace("\\", "/")
    if path:
        path += "/"
    while "//" in path:
        path = path.replace("//", "/")
    path = path.lstrip("/")
    folders: list[str] = []
    files = []
    loaded = _loaded(ctx)
    models = [] if subtype == "Wildcards" else ctx.server.catalog.models(subtype)
    for model in models:
        if not model.name.startswith(path) or len(model.name) <= len(path):
            continue
        part = model.name[len(path) :]
        slashes = part.count("/")
        if slashes > 0:
            subfolders = part.rsplit("/", 1)[0].split("/")
            for i in range(1, min(depth, len(subfolders)) + 1):
                folder = "/".join(subfolders[:i])
                if folder not in folders:
                    folders.append(folder)
        if slashes < depth:
            files.append(model)
    if sort_mode == "Name":
        files.sort(key=lambda m: m.name.lower())
    elif sort_mode == "Title":
        files.sort(key=lambda m: (m.title.lower(), m.name.lower()))
    elif sort_mode == "DateCreated":
        files.sort(key=lambda m: (-m.time_created, m.name.lower()))
    else:
        files.sort(key=lambda m: (-m.time_modified, m.name.lower()))
    if args["sortReverse"]:
        files.reverse()
    return {"folders": folders, "files": [m.to_net(m.name in loaded) for m in files]}


@route(
    "DescribeModel",
    "fundamental_model_access",
    Arg("modelName", "String"),
    Arg("subtype", "String", "Stable-Diffusion"),
)
async def describe_model(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    subtype = args["subtype"]
    if subtype not in SUBTYPES and subtype != "Wildcards":
        return {"error": "Invalid sub-type."}
    name = args["modelName"].replace("\\", "/")
    while "//" in name:
        name = name.replace("//", "/")
    name = name.lstrip("/")
    model = ctx.server.catalog.find(subtype, name)
    if model is None:
        return {"error": "Model not found."}
    return {"model": model.to_net(model.name in _loaded(ctx))}


@route("ListLoadedModels", "fundamental_model_access")
async def list_loaded_models(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    loaded = _loaded(ctx)
    models = ctx.server.catalog.models("Stable-Diffusion")
    return {"models": [m.to_net(True) for m in models if m.name in loaded]}


@route(
    "SelectModel",
    "load_models_now",
    Arg("model", "String"),
    Arg("backendId", "String", None),
)
async def select_model(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """``ModelsAPI.SelectModel``: load a model on every running backend, waiting for each."""
    assert ctx.session is not None
    server, session = ctx.server, ctx.session
    name = args["model"]
    if not name.strip():
        return {"error": "Invalid empty name."}
    model = server.catalog.find("Stable-Diffusion", name)
    if model is None:
        return {"error": "Model not found."}
    targets = [
        b
        for b in server.pool.running()
        if args["backendId"] is None or str(b.backend_id) == args["backendId"]
    ]
    if not targets:
        return {"error": "Model failed to load."}
    with server.registry.lock:
        session.loading_models += len(server.pool.backends)
    try:
        # Not interruptible (protocol §5.3): wait on a token nobody cancels.
        token = InterruptToken()
        for backend in targets:
            try:
                got = await server.pool.acquire(
                    model.name, token, target=backend.backend_id, front=True
                )
            except NoBackendsError:
                return {"error": "Model failed to load."}
            if got is not None:
                server.pool.release(got)
    finally:
        with server.registry.lock:
            session.loading_models -= len(server.pool.backends)
    return {"success": True}


# -- generation --------------------------------------------------------------------------------


@route("ListT2IParams", "fundamental_generate_tab_access")
async def list_t2i_params(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """A reduced ``T2IAPI.ListT2IParams``: the parameters the emulator understands."""
    catalog = ctx.server.catalog
    listed = []
    for ptype in PARAM_TYPES.values():
        listed.append(
            {
                "name": ptype.name,
                "id": ptype.id,
                "type": ptype.kind,
                "subtype": ptype.subtype,
                "default": ptype.default,
                "min": ptype.min,
                "max": ptype.max,
                "values": ptype.values(catalog) if ptype.values else None,
                "feature_flag": ptype.feature_flag,
            }
        )
    models = {
        subtype: [[clean_model_name(m.name), m.architecture()[0]] for m in catalog.models(subtype)]
        for subtype in SUBTYPES
    }
    return {"list": listed, "groups": [], "models": models, "wildcards": [], "param_edits": None}


@route("GenerateText2Image", "basic_image_generation", Arg("images", "Int32"))
async def generate_text2image(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """``T2IAPI.GenerateText2Image``: one answer after every task has finished."""
    assert ctx.session is not None
    outputs: list[dict[str, Any]] = []
    await generate(ctx.server, ctx.session, args["images"], ctx.raw, 0, outputs.append, False)
    return http_result(outputs)


def _batch_size_guess(document: dict[str, Any]) -> int:
    # guessBatchSize in T2IAPI.GenerateText2ImageWS reads the raw key only.
    value = _int_value(document.get("batchsize", 1))
    return 1 if value is None else value


def _int_value(value: Any) -> int | None:
    """Newtonsoft ``Value<int>``: missing/null → 0, numeric text converts, else None."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value)
    text = token_text(value).strip()
    try:
        return int(text)
    except ValueError:
        return None


@route("GenerateText2ImageWS", "basic_image_generation", Arg("images", "Int32"), websocket=True)
async def generate_text2image_ws(ctx: CallContext, args: dict[str, Any]) -> None:
    """``T2IAPI.GenerateText2ImageWS``: stream, accept more requests, close after a grace."""
    assert ctx.session is not None and ctx.ws is not None
    server, session, channel = ctx.server, ctx.session, ctx.ws
    tasks: set[asyncio.Task[None]] = set()
    ended = False

    async def run(images: int, raw: dict[str, Any], offset: int) -> None:
        # A non-readable parse failure is only logged on the WS route (protocol §4.6).
        with contextlib.suppress(UnreadableParamError):
            await generate(server, session, images, raw, offset, channel.send, True)

    def launch(images: int, raw: dict[str, Any], offset: int) -> None:
        tasks.add(server.spawn(run(images, raw, offset)))

    async def read_more() -> None:
        offset = args["images"] * _batch_size_guess(ctx.raw)
        while True:
            text = await channel.receive()
            if text is None and channel.vanished:
                # This reader runs in Utilities.RunCheckedTask, which logs what it throws:
                # a receive that meets the end of the connection without a Close frame.
                server.log_error(f"Internal error in async task (unlabeled): {PREMATURE}")
            if text is None or ended:
                return
            assert ctx.record_message is not None
            document = ctx.record_message(text)
            if document is None:
                return  # invalid JSON silently ends this reader
            images = _int_value(document.get("images"))
            if images is None:
                return
            raw = {k: v for k, v in document.items() if k != "session_id"}
            launch(images, raw, offset)
            offset += images * _batch_size_guess(document)

    launch(args["images"], ctx.raw, 0)
    reader = server.spawn(read_more())
    try:
        while tasks:
            await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
            tasks.difference_update({t for t in tasks if t.done()})
            if not tasks:
                channel.send({"socket_intention": "close"})
                await asyncio.sleep(server.config.ws_close_grace_seconds)
                if not tasks:
                    ended = True
    finally:
        reader.cancel()
    if channel.vanished:
        # The reader's failure aborted the socket, so this send throws (invalid state); API.cs
        # logs it as an internal exception, and its try to send the error fails the same way
        # (Utilities.YieldJsonOutput). A client that left with a Close frame meets none of it.
        log_api_error(server, ctx.request, session, f"Internal exception: {ABORTED}")
        server.log_error(f"Failing while yielding JSON output: {ABORTED}")
        channel.failure_logged = True
        return None
    channel.send(server.status(session))
    return None


# What SwarmUI's logs show for a socket whose peer hung up without a Close frame (.NET's
# ManagedWebSocket: the receive throws, the socket is aborted, later sends throw).
PREMATURE = (
    "System.Net.WebSockets.WebSocketException (0x80004005): The remote party closed the "
    "WebSocket connection without completing the close handshake."
)
ABORTED = (
    "System.Net.WebSockets.WebSocketException (0x80004005): The WebSocket is in an invalid "
    "state ('Aborted') for this operation. Valid states are: 'Open, CloseReceived'"
)
DISCONNECTED = (
    "Remote WebSocket disconnected unexpectedly (ConnectionClosedPrematurely). Did your "
    "browser crash while generating?"
)


def log_api_error(
    server: EmulatedServer, request: HttpRequest, session: Session | None, message: str
) -> None:
    """``Error`` in ``API.HandleAsyncRequest``: one line naming the route and the user."""
    user = f" for user '{session.user.user_id}'" if session is not None else ""
    server.log_error(f"[WebAPI] Error handling API request '{request.path}'{user}: {message}")
