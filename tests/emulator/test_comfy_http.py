"""ComfyUI over plain HTTP (protocol §1, §2, §7, §8, §9): routes, errors, files, catalogue.

Each test runs against the emulator and, with ASSET_GENERATOR_TEST_COMFYUI_URL set, against a
real ComfyUI; where they disagree the real server is right.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from comfy_helpers import Target, png_size_and_pixel, png_text_chunks, slow_graph, unique

from asset_generator.emulator import ComfyEmulator, Fault, FaultPoint

INTERNAL_ERROR = b"500 Internal Server Error\n\nServer got itself in trouble"
MODEL_FOLDERS = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
]  # fmt: skip


def test_routes_are_served_bare_and_under_api(comfy: Target) -> None:
    for path in ("/system_stats", "/features", "/prompt", "/models", "/object_info/KSampler"):
        bare, api = comfy.http.get(path), comfy.http.get("/api" + path)
        assert bare.status_code == api.status_code == 200, path
        assert bare.headers["content-type"] == "application/json; charset=utf-8"
        document = bare.json()
        if isinstance(document, dict):
            assert document.keys() == api.json().keys(), path
        else:
            assert document == api.json(), path
    queue = comfy.http.get("/api/queue").json()
    assert set(queue) == {"queue_running", "queue_pending"}
    assert comfy.http.get("/api/history/" + str(uuid.uuid4())).json() == {}


def test_unknown_paths_are_the_static_routes_404_and_405(comfy: Target) -> None:
    for path in ("/nope", "/api/nope", "/interrupt", "/api/internal/folder_paths", "/api/jobs"):
        answer = comfy.http.get(path)
        assert (answer.status_code, answer.content) == (404, b""), path
        assert answer.headers["content-type"] == "application/octet-stream"
    for method, path, allow in [
        ("POST", "/nope", "GET,HEAD"),
        ("PUT", "/prompt", "GET,HEAD,POST"),
        ("DELETE", "/queue", "GET,HEAD,POST"),
        ("POST", "/system_stats", "GET,HEAD"),
        ("POST", "/api/jobs/x/cancel", "GET,HEAD"),
        ("POST", "/history/abc", "GET,HEAD"),
    ]:
        answer = comfy.http.request(method, path)
        assert answer.status_code == 405, (method, path)
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert answer.content == b"405: Method Not Allowed"
        assert answer.headers["allow"] == allow
    assert comfy.http.options("/prompt").status_code == 200
    # A GET on /ws without the upgrade is aiohttp's handshake refusal.
    refused = comfy.http.get("/ws")
    assert refused.status_code == 400
    assert refused.text == 'No WebSocket UPGRADE hdr: None\n Can "Upgrade" only to "WebSocket".'


def test_malformed_requests_get_aiohttps_plain_500(comfy: Target) -> None:
    json_type = {"content-type": "application/json"}
    for method, path, body in [
        ("POST", "/prompt", b"notjson"),
        ("POST", "/prompt", b"5"),
        ("POST", "/queue", b"{nope"),
        # A JSON string has no .get: 500 before any interrupt happens.
        ("POST", "/interrupt", b'"RUNNING"'),
        ("GET", "/history?max_items=abc", b""),
    ]:
        answer = comfy.http.request(method, path, content=body or None, headers=json_type)
        assert answer.status_code == 500, (path, body)
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert answer.content == INTERNAL_ERROR
    # A JSON list is not an error for /prompt: it has no "prompt".
    listed = comfy.http.post("/prompt", content=b"[]", headers=json_type)
    assert listed.status_code == 400
    assert listed.json()["error"]["type"] == "no_prompt"


def test_mutating_routes_answer_200_with_no_body_and_no_content_type(comfy: Target) -> None:
    for path, body in [
        ("/queue", {"delete": [str(uuid.uuid4())]}),
        ("/queue", {"clear": False, "delete": []}),
        ("/history", {"delete": [str(uuid.uuid4())]}),
        ("/interrupt", {"prompt_id": str(uuid.uuid4())}),  # targeted: touches nobody
        ("/free", {}),
    ]:
        answer = comfy.http.post(path, json=body)
        assert (answer.status_code, answer.content) == (200, b""), path
        assert "content-type" not in answer.headers


def test_bodies_over_the_upload_limit_get_413_even_json(comfy: Target, emulator_only) -> None:
    limit_mb = 100
    if comfy.is_emulator:  # the same rule with --max-upload-size 1, to stay quick
        limit_mb = 1
        comfy = emulator_only(max_upload_mb=limit_mb)
    limit = limit_mb * 1024 * 1024
    assert comfy.http.get("/features").json()["max_upload_size"] == limit
    body = b'{"prompt": "' + b"x" * limit + b'"}'
    answer = comfy.http.post("/prompt", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert answer.text == f"Maximum request body size {limit} exceeded."
    # Routes that never read the body do not care.
    assert comfy.http.post("/nope", content=body).status_code == 405
    # The connection is still good for the next request.
    assert comfy.http.get("/prompt").status_code == 200


def test_system_stats_and_features(comfy: Target) -> None:
    stats = comfy.http.get("/system_stats").json()
    system = stats["system"]
    assert system["comfyui_version"] == "0.3.64"
    for key in ("os", "ram_total", "ram_free", "python_version", "pytorch_version", "argv"):
        assert key in system
    device = stats["devices"][0]
    assert {"name", "type", "index", "vram_total", "vram_free"} <= set(device)
    assert comfy.http.get("/features").json() == {
        "supports_preview_metadata": True,
        "max_upload_size": 104857600,
    }
    assert comfy.http.get("/prompt").json()["exec_info"].keys() == {"queue_remaining"}


def test_model_folders_and_lists(comfy: Target) -> None:
    assert comfy.http.get("/models").json() == MODEL_FOLDERS
    unknown = comfy.http.get("/models/nope")
    assert (unknown.status_code, unknown.content) == (404, b"")
    checkpoints = comfy.http.get("/models/checkpoints").json()
    assert "random-sd15.safetensors" in checkpoints
    assert checkpoints == sorted(checkpoints)
    assert "random-lora.safetensors" in comfy.http.get("/models/loras").json()
    assert isinstance(comfy.http.get("/embeddings").json(), list)
    assert comfy.http.get("/models/configs").status_code == 200


def test_object_info_shapes_and_both_combo_encodings(comfy: Target) -> None:
    assert comfy.http.get("/object_info/NoSuchNode").json() == {}
    ksampler = comfy.http.get("/object_info/KSampler").json()["KSampler"]
    required = ksampler["input"]["required"]
    assert list(required) == ksampler["input_order"]["required"]
    samplers = required["sampler_name"][0]
    assert "euler" in samplers and "dpmpp_2m" in samplers
    seed_type, seed = required["seed"]
    assert seed_type == "INT"
    assert (seed["default"], seed["min"], seed["max"]) == (0, 0, 18446744073709551615)
    loader = comfy.http.get("/object_info/CheckpointLoaderSimple").json()
    ckpt = loader["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
    assert isinstance(ckpt[0], list)  # V1: the options are the type
    assert ckpt[0] == comfy.http.get("/models/checkpoints").json()
    upscale = comfy.http.get("/object_info/UpscaleModelLoader").json()["UpscaleModelLoader"]
    declared = upscale["input"]["required"]["model_name"]
    assert declared[0] == "COMBO" and "options" in declared[1]  # V3
    everything = comfy.http.get("/object_info").json()
    assert {"KSampler", "SaveImage", "SlowSolidImage", "LoraLoader"} <= set(everything)


def test_object_info_is_what_the_real_server_declares(comfy: Target, tmp_path) -> None:
    """Run against the real server: the emulator's declarations are the real ones.

    Classes, their keys and their inputs come in the real order; inside one declaration's
    options the committed capture has its keys sorted, so those compare as mappings.
    """
    if comfy.is_emulator:
        pytest.skip("compares the emulator with a real server")
    run_time = {
        ("CheckpointLoaderSimple", "ckpt_name"),
        ("LoraLoader", "lora_name"),
        ("LoraLoaderModelOnly", "lora_name"),
        ("VAELoader", "vae_name"),
        ("UpscaleModelLoader", "model_name"),
        ("LoadImage", "image"),
    }
    with ComfyEmulator(base_dir=tmp_path / "emu") as emulator:
        ours = httpx.get(f"{emulator.url}/object_info", timeout=10).json()
    theirs = comfy.http.get("/object_info").json()
    for name, info in ours.items():
        real = theirs[name]
        for owner, input_name in run_time:
            if owner == name:
                for section in ("required", "optional"):
                    for document in (info, real):
                        declared = document["input"].get(section, {}).get(input_name)
                        if declared is not None:
                            declared[0 if declared[0] != "COMBO" else 1] = "<files>"
        assert info == real, name
        assert list(info) == list(real), name
        for section, inputs in info["input"].items():
            assert list(inputs) == list(real["input"][section]), (name, section)
    assert [n for n in theirs if n in ours] == list(ours)


def test_combo_lists_follow_the_configured_models(emulator_only) -> None:
    target = emulator_only(checkpoints=["a/one.safetensors", "two.ckpt", "notes.txt"], loras=[])
    assert target.http.get("/models/checkpoints").json() == ["a/one.safetensors", "two.ckpt"]
    info = target.http.get("/object_info/CheckpointLoaderSimple").json()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [
        "a/one.safetensors",
        "two.ckpt",
    ]
    assert target.http.get("/models/loras").json() == []


def _saved_image(comfy: Target, prefix: str) -> dict[str, str]:
    sock = comfy.socket()
    prompt_id = comfy.submit(slow_graph(1, 0.0, prefix=prefix), client_id=sock.client_id)
    sock.wait_end(prompt_id)
    return comfy.history(prompt_id)[prompt_id]["outputs"]["2"]["images"][0]


def test_view_rules(comfy: Target) -> None:
    stem = unique("view")
    image = _saved_image(comfy, f"{stem}/dir/f")
    assert image == {"filename": "f_00001_.png", "subfolder": f"{stem}/dir", "type": "output"}
    name, sub = image["filename"], image["subfolder"]

    def view(**params: str) -> httpx.Response:
        return comfy.http.get("/view", params=params)

    found = view(filename=name, subfolder=sub, type="output")
    assert found.status_code == 200
    assert found.headers["content-type"] == "image/png"
    assert found.headers["content-disposition"] == f'filename="{name}"'
    assert png_size_and_pixel(found.content) == ((16, 16), (255, 0, 0))
    assert view(filename=name, subfolder=sub).content == found.content  # type defaults
    assert view(filename=f"{name} [output]", subfolder=sub, type="input").status_code == 200
    for params, status in [
        ({"filename": name, "subfolder": "other"}, 404),
        ({"filename": f"{sub}/{name}"}, 404),
        ({"filename": name, "subfolder": sub, "type": "input"}, 404),
        ({"filename": name, "subfolder": sub, "type": "bogus"}, 400),
        ({"filename": ""}, 400),
        ({"filename": "../main.py"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": name, "subfolder": ".."}, 403),
        ({"filename": name, "subfolder": "/etc"}, 403),
        ({"filename": "missing.png"}, 404),
        ({}, 404),
    ]:
        answer = view(**params)
        assert (answer.status_code, answer.content) == (status, b""), params
    head = comfy.http.head("/view", params={"filename": name, "subfolder": sub})
    assert head.status_code == 200 and head.headers["etag"] and head.headers["last-modified"]
    part = comfy.http.get(
        "/view", params={"filename": name, "subfolder": sub}, headers={"Range": "bytes=0-9"}
    )
    assert (part.status_code, part.content) == (206, found.content[:10])
    jpeg = view(filename=name, subfolder=sub, preview="jpeg;50")
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
    rgb = view(filename=name, subfolder=sub, channel="rgb")
    assert rgb.headers["content-type"] == "image/png"


def test_saved_png_carries_the_prompt_and_extra_pnginfo(comfy: Target) -> None:
    sock = comfy.socket()
    graph = slow_graph(1, 0.0, prefix=unique("meta"))
    workflow = {"id": "wf-1", "nodes": []}
    prompt_id = comfy.submit(
        graph, client_id=sock.client_id, extra_data={"extra_pnginfo": {"workflow": workflow}}
    )
    sock.wait_end(prompt_id)
    image = comfy.history(prompt_id)[prompt_id]["outputs"]["2"]["images"][0]
    chunks = png_text_chunks(comfy.view(image).content)
    embedded = json.loads(chunks["prompt"])
    # Nodes with IS_CHANGED carry its result, written into the prompt before the run.
    assert '"is_changed": [NaN]' in chunks["prompt"]
    assert embedded["1"].pop("is_changed")[0] != 0
    assert embedded == graph
    assert json.loads(chunks["workflow"]) == workflow


def test_upload_image_renaming_rules(comfy: Target) -> None:
    name = unique("up") + ".png"

    def upload(data: bytes, **fields: str) -> httpx.Response:
        return comfy.http.post(
            "/upload/image", files={"image": (name, data, "image/png")}, data=fields
        )

    first = upload(b"one")
    assert first.json() == {"name": name, "subfolder": "", "type": "input"}
    assert upload(b"one").json()["name"] == name  # same bytes: the same file
    stem = name[:-4]
    assert upload(b"two").json()["name"] == f"{stem} (1).png"
    assert upload(b"three").json()["name"] == f"{stem} (2).png"
    assert upload(b"four", overwrite="true").json()["name"] == name
    sub = upload(b"five", subfolder="up/sub")
    assert sub.json() == {"name": name, "subfolder": "up/sub", "type": "input"}
    escaped = upload(b"six", subfolder="../../x")
    assert (escaped.status_code, escaped.content) == (400, b"")
    missing = comfy.http.post("/upload/image", data={"type": "input"})
    assert (missing.status_code, missing.content) == (400, b"")
    as_json = comfy.http.post("/upload/image", json={"image": "x"})
    assert (as_json.status_code, as_json.content) == (400, b"")
    # The content is not checked; the upload becomes a LoadImage option.
    options = comfy.http.get("/object_info/LoadImage").json()["LoadImage"]["input"]
    assert name in options["required"]["image"][0]


def test_origin_check_refuses_a_foreign_origin_on_loopback(comfy: Target) -> None:
    host = comfy.url.split("//", 1)[1]
    same = comfy.http.get("/queue", headers={"Origin": f"http://{host}"})
    assert same.status_code == 200
    no_port = comfy.http.get("/queue", headers={"Origin": "http://127.0.0.1"})
    assert no_port.status_code == 200
    for origin in ("http://evil.example", "http://localhost:1", "http://127.0.0.1:9"):
        refused = comfy.http.get("/queue", headers={"Origin": origin})
        assert (refused.status_code, refused.content) == (403, b""), origin
    # Authorization headers are ignored by ComfyUI itself.
    assert comfy.http.get("/queue", headers={"Authorization": "Bearer x"}).status_code == 200


def test_required_authorization_stands_for_a_token_proxy(emulator_only) -> None:
    target = emulator_only(required_authorization="Bearer s3cret")
    assert target.http.get("/system_stats").status_code == 200
    bare = httpx.get(f"{target.url}/system_stats")
    assert (bare.status_code, bare.text) == (401, "401: Unauthorized")
    with pytest.raises(Exception, match="401"):
        from httpx_ws import connect_ws

        with connect_ws(f"{target.url}/ws?clientId=x", httpx.Client()):
            pass
    assert target.socket().sid  # with the header the socket opens


def test_recorded_requests_and_faults(emulator_only) -> None:
    def faults(point: FaultPoint) -> Fault | None:
        if point.transport == "http" and point.route == "/free":
            return Fault(status=502, body=b"bad gateway")
        if point.transport == "ws" and point.message and point.message["type"] == "feature_flags":
            return Fault(replace_message={"type": "feature_flags", "data": {"faulty": True}})
        return None

    target = emulator_only(faults=faults)
    emulator = target.require_emulator()
    assert target.http.post("/free", json={}).status_code == 502
    sock = target.socket("rec-1", feature_flags=True)
    assert sock.wait_for(lambda f: f.type == "feature_flags").data == {"faulty": True}
    prompt_id = target.submit(slow_graph(1, 0.0), client_id="rec-1")
    sock.wait_end(prompt_id)
    posted = emulator.calls("/prompt")
    assert len(posted) == 1 and posted[0].body["prompt_id"] == prompt_id
    assert posted[0].body["client_id"] == "rec-1" and posted[0].status == 200
    assert [r.path for r in emulator.websocket_connects()] == ["/ws?clientId=rec-1"]
    sent = emulator.websocket_messages("rec-1")
    assert sent[0].body["type"] == "feature_flags"
    emulator.reset_log()
    assert emulator.requests == []
