"""The HTTP handlers of ``server.py`` (ComfyUI 0.3.64), one function each.

They are written as close to the real handlers as Python allows, so that odd bodies fail the
same way: a JSON list where an object is expected, a string ``number``, an unknown upload
``type`` all raise here as they raise there, and become the same plain-text 500.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import sys
import time
import uuid
from email.utils import formatdate
from typing import Any

from asset_generator.emulator.comfy import jobs
from asset_generator.emulator.comfy.config import (
    JOBS_CANCEL_VERSION,
    JOBS_READ_VERSION,
    TARGETED_INTERRUPT_VERSION,
)
from asset_generator.emulator.comfy.hub import ComfyServer
from asset_generator.emulator.comfy.web import (
    HTTPError,
    WebRequest,
    empty,
    json_response,
)
from asset_generator.emulator.httpmsg import Answer
from asset_generator.emulator.transport import ranged

PYTORCH_VERSION = "2.13.0+cpu"
FRONTEND_VERSION = "1.27.10"
TEMPLATES_VERSION = "0.1.95"


def _memory() -> tuple[int, int]:
    """Total and available RAM in bytes (what psutil reports on the real server)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            info = {
                line.split(":")[0]: int(line.split()[1]) * 1024
                for line in handle
                if line.split()[1:2]
            }
        return info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    except (OSError, KeyError, ValueError):
        return 16 * 1024**3, 8 * 1024**3


# -- identity and status ----------------------------------------------------------------------


async def system_stats(server: ComfyServer, request: WebRequest) -> Answer:
    ram_total, ram_free = _memory()
    config = server.config
    return json_response(
        {
            "system": {
                "os": os.name,
                "ram_total": ram_total,
                "ram_free": ram_free,
                "comfyui_version": config.comfy_version,
                "required_frontend_version": FRONTEND_VERSION,
                "installed_templates_version": TEMPLATES_VERSION,
                "required_templates_version": TEMPLATES_VERSION,
                "python_version": sys.version,
                "pytorch_version": PYTORCH_VERSION,
                "embedded_python": False,
                "argv": ["main.py", "--cpu", "--listen", config.host, "--port", str(server.port)],
            },
            "devices": [
                {
                    "name": "cpu",
                    "type": "cpu",
                    "index": None,
                    "vram_total": ram_total,
                    "vram_free": ram_free,
                    "torch_vram_total": ram_total,
                    "torch_vram_free": ram_free,
                }
            ],
        }
    )


async def features(server: ComfyServer, request: WebRequest) -> Answer:
    return json_response(server.server_features())


async def get_prompt(server: ComfyServer, request: WebRequest) -> Answer:
    return json_response(server.get_queue_info())


async def embeddings(server: ComfyServer, request: WebRequest) -> Answer:
    names = server.catalog.model_files("embeddings") or []
    return json_response([os.path.splitext(n)[0] for n in names])


async def list_model_types(server: ComfyServer, request: WebRequest) -> Answer:
    from asset_generator.emulator.comfy.catalog import MODEL_FOLDERS

    return json_response(list(MODEL_FOLDERS))


async def get_models(server: ComfyServer, request: WebRequest) -> Answer:
    files = server.catalog.model_files(request.match_info["folder"])
    if files is None:
        return empty(404)
    return json_response(files)


async def index(server: ComfyServer, request: WebRequest) -> Answer:
    page = b"<!DOCTYPE html><html><body><h1>ComfyUI emulator</h1></body></html>"
    headers = [
        ("Content-Type", "text/html"),
        ("Cache-Control", "no-cache"),
        ("Pragma", "no-cache"),
        ("Expires", "0"),
    ]
    return Answer(200, page, headers)


async def extensions(server: ComfyServer, request: WebRequest) -> Answer:
    return json_response([])


async def users(server: ComfyServer, request: WebRequest) -> Answer:
    return json_response({"storage": "server", "migrated": False})


async def settings(server: ComfyServer, request: WebRequest) -> Answer:
    return json_response({})


async def object_info(server: ComfyServer, request: WebRequest) -> Answer:
    return json_response(server.catalog.all_info())


async def object_info_node(server: ComfyServer, request: WebRequest) -> Answer:
    node_class = request.match_info["node_class"]
    out = {}
    if server.catalog.has(node_class):
        out[node_class] = server.catalog.info(node_class)
    return json_response(out)


async def view_metadata(server: ComfyServer, request: WebRequest) -> Answer:
    # The emulated model files have no safetensors header to read.
    return empty(404)


# -- queue and history ------------------------------------------------------------------------


def _shown(server: ComfyServer, items: list[Any]) -> list[Any]:
    """Queue items as GET /queue shows them (newer servers hide the API keys)."""
    if server.config.version < JOBS_READ_VERSION:
        return items
    return [jobs.without_secrets(item) for item in items]


async def get_queue(server: ComfyServer, request: WebRequest) -> Answer:
    running, pending = server.prompt_queue.get_current_queue()
    return json_response(
        {"queue_running": _shown(server, running), "queue_pending": _shown(server, pending)}
    )


async def get_history(server: ComfyServer, request: WebRequest) -> Answer:
    max_items: Any = request.query.get("max_items", None)
    if max_items is not None:
        max_items = int(max_items)
    offset: Any = request.query.get("offset", None)
    offset = int(offset) if offset is not None else -1
    return json_response(server.prompt_queue.get_history(max_items=max_items, offset=offset))


async def get_history_prompt(server: ComfyServer, request: WebRequest) -> Answer:
    prompt_id = request.match_info["prompt_id"]
    return json_response(server.prompt_queue.get_history(prompt_id=prompt_id))


async def post_prompt(server: ComfyServer, request: WebRequest) -> Answer:
    json_data = await request.json()
    if "number" in json_data:
        number = float(json_data["number"])
    else:
        number = server.number
        if "front" in json_data and json_data["front"]:  # noqa: RUF019 (may be a list)
            number = -number
        server.number += 1

    if "prompt" in json_data:
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        partial_execution_targets = None
        if "partial_execution_targets" in json_data:
            partial_execution_targets = json_data["partial_execution_targets"]
        valid = server.validator.validate_prompt(prompt, partial_execution_targets)
        extra_data: Any = {}
        if "extra_data" in json_data:
            extra_data = json_data["extra_data"]
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if valid[0]:
            if server.config.version >= JOBS_READ_VERSION:
                extra_data["create_time"] = int(time.time() * 1000)
            server.prompt_queue.put((number, prompt_id, prompt, extra_data, valid[2]))
            return json_response(
                {"prompt_id": prompt_id, "number": number, "node_errors": valid[3]}
            )
        return json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
    error = {
        "type": "no_prompt",
        "message": "No prompt provided",
        "details": "No prompt provided",
        "extra_info": {},
    }
    return json_response({"error": error, "node_errors": {}}, status=400)


async def post_queue(server: ComfyServer, request: WebRequest) -> Answer:
    json_data = await request.json()
    queue = server.prompt_queue
    if "clear" in json_data and json_data["clear"]:  # noqa: RUF019 (may be a list)
        queue.wipe_queue()
    if "delete" in json_data:
        for id_to_delete in json_data["delete"]:
            queue.delete_queue_item(lambda a, wanted=id_to_delete: a[1] == wanted)
    return empty(200)


async def post_interrupt(server: ComfyServer, request: WebRequest) -> Answer:
    if server.config.version < TARGETED_INTERRUPT_VERSION:
        # Before 0.3.57 the handler reads no body: every interrupt is global.
        server.interrupt.set()
        return empty(200)
    try:
        json_data = await request.json()
    except json.JSONDecodeError:
        json_data = {}
    prompt_id = json_data.get("prompt_id")
    if prompt_id:
        running, _ = server.prompt_queue.get_current_queue()
        if any(item[1] == prompt_id for item in running):
            server.interrupt.set()
        # else: "Prompt P is not currently running, skipping interrupt"
    else:
        server.interrupt.set()  # "Global interrupt (no prompt_id specified)"
    return empty(200)


async def post_free(server: ComfyServer, request: WebRequest) -> Answer:
    json_data = await request.json()
    unload_models = json_data.get("unload_models", False)
    free_memory = json_data.get("free_memory", False)
    if unload_models:
        server.prompt_queue.set_flag("unload_models", unload_models)
    if free_memory:
        server.prompt_queue.set_flag("free_memory", free_memory)
    return empty(200)


async def post_history(server: ComfyServer, request: WebRequest) -> Answer:
    json_data = await request.json()
    if "clear" in json_data and json_data["clear"]:  # noqa: RUF019 (may be a list)
        server.prompt_queue.wipe_history()
    if "delete" in json_data:
        for id_to_delete in json_data["delete"]:
            server.prompt_queue.delete_history_item(id_to_delete)
    return empty(200)


# -- files ------------------------------------------------------------------------------------


def _dir_by_type(server: ComfyServer, dir_type: Any) -> tuple[str, str]:
    if dir_type is None:
        dir_type = "input"
    found = server.folders.directory_by_type(dir_type)
    if found is None:
        # server.py leaves type_dir unassigned: UnboundLocalError, a 500.
        raise UnboundLocalError("cannot access local variable 'type_dir'")
    return found, dir_type


async def upload_image(server: ComfyServer, request: WebRequest) -> Answer:
    post = await request.post()
    image = post.get("image")
    overwrite = post.get("overwrite")
    image_is_duplicate = False
    upload_dir, image_upload_type = _dir_by_type(server, post.get("type"))
    if image and image.file is not None:
        filename = image.filename
        if not filename:
            return empty(400)
        subfolder = post.get("subfolder", "")
        full_output_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(full_output_folder, filename))
        if os.path.commonpath((upload_dir, filepath)) != upload_dir:
            return empty(400)
        if not os.path.exists(full_output_folder):
            os.makedirs(full_output_folder)
        split = os.path.splitext(filename)
        if overwrite is not None and overwrite in ("true", "1"):
            pass
        else:
            i = 1
            while os.path.exists(filepath):
                with open(filepath, "rb") as handle:
                    same = (
                        hashlib.sha256(handle.read()).digest()
                        == hashlib.sha256(image.file).digest()
                    )
                if same:  # the same bytes under the same name: nothing to write (#3465)
                    image_is_duplicate = True
                    break
                filename = f"{split[0]} ({i}){split[1]}"
                filepath = os.path.join(full_output_folder, filename)
                i += 1
        if not image_is_duplicate:
            with open(filepath, "wb") as handle:
                handle.write(image.file)
        return json_response({"name": filename, "subfolder": subfolder, "type": image_upload_type})
    return empty(400)


def _file_response(path: str, filename: str, content_type: str, request: WebRequest) -> Answer:
    """``web.FileResponse``: Etag, Last-Modified, byte ranges, HEAD."""
    with open(path, "rb") as handle:
        data = handle.read()
    stat = os.stat(path)
    headers = [
        ("Content-Type", content_type),
        ("Content-Disposition", f'filename="{filename}"'),
        ("Accept-Ranges", "bytes"),
        ("Etag", f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'),
        ("Last-Modified", formatdate(stat.st_mtime, usegmt=True)),
    ]
    return ranged(data, request.header("range"), headers)


def _converted(path: str, filename: str, query: dict[str, str]) -> Answer | None:
    """``/view`` with ``preview=`` or ``channel=``: re-encoded by Pillow."""
    import io

    from PIL import Image

    disposition = ("Content-Disposition", f'filename="{filename}"')
    if "preview" in query:
        with Image.open(path) as img:
            preview_info = query["preview"].split(";")
            image_format = preview_info[0]
            if image_format not in ("webp", "jpeg") or "a" in query.get("channel", ""):
                image_format = "webp"
            quality = int(preview_info[-1]) if preview_info[-1].isdigit() else 90
            buffer = io.BytesIO()
            shown = img
            if image_format == "jpeg" or query.get("channel", "") == "rgb":
                shown = img.convert("RGB")
            shown.save(buffer, format=image_format, quality=quality)
            return Answer(
                200, buffer.getvalue(), [("Content-Type", f"image/{image_format}"), disposition]
            )
    channel = query.get("channel", "rgba")
    if channel == "rgb":
        with Image.open(path) as img:
            new_img = Image.merge("RGB", img.split()[:3]) if img.mode == "RGBA" else img
            buffer = io.BytesIO()
            new_img.convert("RGB").save(buffer, format="PNG")
            return Answer(200, buffer.getvalue(), [("Content-Type", "image/png"), disposition])
    if channel == "a":
        with Image.open(path) as img:
            alpha = img.split()[3] if img.mode == "RGBA" else Image.new("L", img.size, 255)
            alpha_img = Image.new("RGBA", img.size)
            alpha_img.putalpha(alpha)
            buffer = io.BytesIO()
            alpha_img.save(buffer, format="PNG")
            return Answer(200, buffer.getvalue(), [("Content-Type", "image/png"), disposition])
    return None


async def view_image(server: ComfyServer, request: WebRequest) -> Answer:
    query = request.query
    folders = server.folders
    if "filename" in query:
        filename, output_dir = folders.annotated_filepath(query["filename"])
        if not filename:
            return empty(400)
        if filename[0] == "/" or ".." in filename:
            return empty(400)
        if output_dir is None:
            output_dir = folders.directory_by_type(query.get("type", "output"))
        if output_dir is None:
            return empty(400)
        if "subfolder" in query:
            full_output_dir = os.path.join(output_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) != output_dir:
                return empty(403)
            output_dir = full_output_dir
        filename = os.path.basename(filename)
        file = os.path.join(output_dir, filename)
        if os.path.isfile(file):
            converted = _converted(file, filename, query)
            if converted is not None:
                return converted
            content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            if content_type in {
                "text/html",
                "text/html-sandboxed",
                "application/xhtml+xml",
                "text/javascript",
                "text/css",
            }:
                content_type = "application/octet-stream"  # force a download
            return _file_response(file, filename, content_type, request)
    return empty(404)


# -- /api/jobs (newer servers) ----------------------------------------------------------------


async def get_jobs(server: ComfyServer, request: WebRequest) -> Answer:
    return jobs.list_jobs(server, request.query)


async def get_job(server: ComfyServer, request: WebRequest) -> Answer:
    return jobs.one_job(server, request.match_info["job_id"])


async def cancel_job(server: ComfyServer, request: WebRequest) -> Answer:
    return json_response({"cancelled": jobs.cancel(server, request.match_info["job_id"])})


async def cancel_jobs(server: ComfyServer, request: WebRequest) -> Answer:
    try:
        json_data = await request.json()
    except json.JSONDecodeError:
        raise HTTPError(
            json_response({"error": "Request body must be valid JSON"}, status=400)
        ) from None
    return jobs.cancel_batch(server, json_data)


def route_table(version: tuple[int, ...]) -> list[tuple[str, str, Any]]:
    """Every (method, path, handler) the server registers, in its order (None: /ws)."""
    table: list[tuple[str, str, Any]] = [
        ("GET", "/ws", None),
        ("GET", "/", index),
        ("GET", "/embeddings", embeddings),
        ("GET", "/models", list_model_types),
        ("GET", "/models/{folder}", get_models),
        ("GET", "/extensions", extensions),
        ("POST", "/upload/image", upload_image),
        ("GET", "/view", view_image),
        ("GET", "/view_metadata/{folder_name}", view_metadata),
        ("GET", "/system_stats", system_stats),
        ("GET", "/features", features),
        ("GET", "/prompt", get_prompt),
        ("GET", "/object_info", object_info),
        ("GET", "/object_info/{node_class}", object_info_node),
    ]
    if version >= JOBS_READ_VERSION:
        table += [("GET", "/api/jobs", get_jobs), ("GET", "/api/jobs/{job_id}", get_job)]
    if version >= JOBS_CANCEL_VERSION:
        table += [
            ("POST", "/api/jobs/{job_id}/cancel", cancel_job),
            ("POST", "/api/jobs/cancel", cancel_jobs),
        ]
    table += [
        ("GET", "/history", get_history),
        ("GET", "/history/{prompt_id}", get_history_prompt),
        ("GET", "/queue", get_queue),
        ("POST", "/prompt", post_prompt),
        ("POST", "/queue", post_queue),
        ("POST", "/interrupt", post_interrupt),
        ("POST", "/free", post_free),
        ("POST", "/history", post_history),
        # app/user_manager.py and app_settings.py in single-user mode.
        ("GET", "/users", users),
        ("GET", "/settings", settings),
    ]
    return table
