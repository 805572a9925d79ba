"""Simulated generation over HTTP and WebSocket (protocol §4)."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from httpx_ws import connect_ws
from swarm_helpers import Transcript, call, new_session, png_pixels, png_text, ws_transcript

from asset_generator.emulator import Emulator


@pytest.fixture
def emu(emulator_factory) -> Emulator:
    return emulator_factory(step_seconds=0.01)


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=20) as http_client:
        yield http_client


def fetch(client: httpx.Client, path: str) -> httpx.Response:
    return client.get("/" + quote(path, safe="/"))


def test_http_generation_saves_fetchable_pngs_with_the_real_seeds(
    client: httpx.Client, emu: Emulator
) -> None:
    sid = new_session(client)
    answer = call(client, "GenerateText2Image", sid, images=3, seed=100, steps=2, prompt="a cat")
    paths = answer.json()["images"]
    assert len(paths) == 3 and answer.status_code == 200
    pattern = (
        r"View/local/raw/\d{4}-\d\d-\d\d/\d{7}-a cat"
        r"-OfficialStableDiffusionsd_xl_base_10(-\d)?\.png"
    )
    assert all(re.fullmatch(pattern, p) for p in paths), paths
    seeds, bodies = [], set()
    for path in paths:
        image = fetch(client, path)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert image.headers["cache-control"] == "private, max-age=30"
        width, height, _ = png_pixels(image.content)
        assert (width, height) == (64, 64)
        metadata = json.loads(png_text(image.content)["parameters"])
        seeds.append(metadata["sui_image_params"]["seed"])
        bodies.add(image.content)
    assert sorted(seeds) == [100, 101, 102] and len(bodies) == 3
    assert sorted(emu.saved_outputs()) == sorted(paths)


def test_random_seed_is_locked_once_per_request(client: httpx.Client) -> None:
    sid = new_session(client)
    transcript = ws_transcript(
        client, "GenerateText2ImageWS", {"session_id": sid, "images": 2, "steps": 1}
    )
    seeds = sorted(
        json.loads(m["metadata"])["sui_image_params"]["seed"] for m in transcript.of("image")
    )
    assert seeds[1] == seeds[0] + 1 and 0 <= seeds[0] < 2**31


def test_file_names_follow_swarm_cleaning(client: httpx.Client) -> None:
    sid = new_session(client)
    prompt = "a <b>: cät? 50% #1/2 ~ok. and a very long tail that gets cut off here"
    path = call(client, "GenerateText2Image", sid, images=1, steps=0, prompt=prompt,
                model="flux1").json()["images"][0]  # fmt: skip
    name = path.rsplit("/", 1)[1]
    # Each part is cut to 40 characters first, then forbidden characters and "." are removed.
    assert name[7:] == "-a b cät 50% 12 ok and a very lon-fluxflux1-dev.png"
    assert fetch(client, path).status_code == 200
    ranged = client.get("/" + quote(path, safe="/"), headers={"Range": "bytes=0-7"})
    assert (ranged.status_code, ranged.content) == (206, b"\x89PNG\r\n\x1a\n")


def test_view_errors(client: httpx.Client) -> None:
    missing = client.get("/View/local/raw/2020-01-01/nothing.png")
    assert missing.status_code == 404
    assert missing.json() == {"error": "404, file not found.", "error_id": "file_not_found"}
    assert client.get("/view/local/x.png").json()["error_id"] == "bad_path"


def test_donotsave_returns_inline_png_without_metadata(client: httpx.Client, emu: Emulator) -> None:
    sid = new_session(client)
    image = call(client, "GenerateText2Image", sid, images=1, steps=1, donotsave=True).json()
    prefix = "data:image/png;base64,"
    assert image["images"][0].startswith(prefix)
    data = base64.b64decode(image["images"][0][len(prefix) :])
    assert png_text(data) == {}
    assert emu.saved_outputs() == []


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"steps": 20.5}, "Invalid value for parameter Steps: Invalid integer value for param "
         "Steps - '20.5' - must be a valid integer (eg '0', '3', '-5', etc)"),
        ({"steps": 501}, "Invalid value for parameter Steps: Invalid integer value for param "
         "Steps - '501' - must be between 0 and 500"),
        ({"Width": "32"}, "Invalid value for parameter Width: Invalid integer value for param "
         "Width - '32' - must be between 64 and 16384"),
        ({"cfg_scale": "abc"}, "Invalid value for parameter CFG Scale: Invalid decimal value "
         "for param CFG Scale - 'abc' - must be a valid decimal (eg '0.0', '3.5', '-5.2', etc)"),
        ({"CFGScale": 100.5}, "Invalid value for parameter CFG Scale: Invalid decimal value "
         "for param CFG Scale - '100.5' - must be between 0 and 100"),
        ({"seed": -5}, "Invalid value for parameter Seed: Invalid integer value for param Seed "
         "- '-5' - must be between -1 and 9.223372036854776E+18"),
        ({"images": 0}, "Invalid value for parameter Images: Invalid integer value for param "
         "Images - '0' - must be between 1 and 10000"),
        ({"model": "no-such-model"}, "Invalid value for parameter Model: Invalid model value "
         "for param Model - 'no-such-model' - are you sure that model name is correct?"),
        ({"loras": "nope"}, "Invalid value for parameter LoRAs: Invalid value for param LoRAs "
         "- 'nope' - must be one of: `style/pixel-art`, `detail-tweaker`"),
        ({"donotsave": "yes"}, "Invalid value for parameter Do Not Save: Invalid boolean value "
         "for param Do Not Save - 'yes' - must be exactly 'true' or 'false'"),
        ({"rawresolution": "32x4000"}, "Invalid value for parameter Raw Resolution: Invalid "
         "resolution: 32x4000 (must be between 64x64 and 16384x16384)"),
        ({"images": "two"}, "Invalid value 'two' for parameter 'images', must be type 'Int32'"),
    ],
)  # fmt: skip
def test_parameter_errors_are_http_200_with_swarm_texts(
    client: httpx.Client, body: dict, error: str
) -> None:
    sid = new_session(client)
    answer = call(client, "GenerateText2Image", sid, **{"images": 1, "prompt": "x", **body})
    assert (answer.status_code, answer.json()) == (200, {"error": error})


def test_unreadable_parameter_failure_is_http_400(client: httpx.Client) -> None:
    sid = new_session(client)
    answer = call(client, "GenerateText2Image", sid, images=1, rawresolution="12x")
    assert answer.status_code == 400 and answer.json()["error_id"] == "internal_error"


def test_names_are_normalised_models_fuzzy_and_unknown_keys_ignored(client: httpx.Client) -> None:
    sid = new_session(client)
    transcript = ws_transcript(
        client,
        "GenerateText2ImageWS",
        {
            "session_id": sid,
            "images": 1,
            "Steps": 1,
            "CFG Scale": 6.5,
            "model": "sd_xl_base",
            "loras": ["pixel", "detail-tweaker.safetensors"],
            "loraweights": ["0.7"],
            "frobnicate": True,
            "seed2": 42,
        },
    )
    params = json.loads(transcript.of("image")[0]["metadata"])["sui_image_params"]
    assert params["model"] == "OfficialStableDiffusion/sd_xl_base_1.0"
    assert params["cfgscale"] == 6.5 and params["steps"] == 1 and params["seed"] == 42
    assert params["loras"] == ["style/pixel-art", "detail-tweaker"]
    assert params["loraweights"] == ["0.7", "1"]
    assert "frobnicate" not in params


def test_websocket_canonical_sequence(client: httpx.Client) -> None:
    sid = new_session(client)
    transcript = ws_transcript(
        client,
        "GenerateText2ImageWS",
        {"session_id": sid, "images": 1, "prompt": "a cat", "steps": 3, "seed": 7},
    )
    kinds = transcript.kinds()
    assert kinds[:4] == ["status"] * 4
    assert kinds[-6:] == ["image", "status", "keep_alive", "discard_indices",
                          "socket_intention", "status"]  # fmt: skip
    assert set(kinds[4:-6]) == {"gen_progress"}
    assert transcript.statuses() == [
        (1, 0, 0, 0), (1, 0, 1, 0), (1, 0, 0, 0), (1, 0, 0, 1), (0, 0, 0, 0), (0, 0, 0, 0)
    ]  # fmt: skip
    assert transcript.close_code == 1000
    everything = [m["gen_progress"] for m in transcript.of("gen_progress")]
    assert all(p["batch_index"] == "0" and p["request_id"] == "1001" for p in everything)
    progress = [p for p in everything if "preview" not in p]
    assert json.loads(progress[0]["metadata"])["sui_image_params"]["is_preview"] is True
    assert all("metadata" not in p for p in everything[1:])
    assert [p["current_percent"] for p in progress[1:4]] == pytest.approx([1 / 3, 2 / 3, 1])
    assert all(0 < p["overall_percent"] <= 1 for p in everything)
    previews = [p["preview"] for p in everything if "preview" in p]
    assert len(previews) == 3
    assert png_pixels(base64.b64decode(previews[0].split(",", 1)[1]))[:2] == (16, 16)
    image = transcript.of("image")[0]
    assert set(image) == {"image", "batch_index", "request_id", "metadata"}
    assert isinstance(image["image"], str) and image["batch_index"] == "0"
    assert json.loads(image["metadata"])["sui_image_params"]["seed"] == 7
    assert transcript.of("discard_indices") == [{"discard_indices": []}]
    assert transcript.of("socket_intention") == [{"socket_intention": "close"}]
    backend = transcript.messages[-1]
    assert backend["backend_status"]["status"] == "running"
    assert "comfyui" in backend["supported_features"]


def test_tasks_of_one_request_are_bounded_and_queue_on_one_backend(client: httpx.Client) -> None:
    sid = new_session(client)
    transcript = ws_transcript(
        client, "GenerateText2ImageWS", {"session_id": sid, "images": 5, "steps": 10}
    )
    statuses = transcript.statuses()
    # One backend with one slot: at most MaxUsages×2 + 1 = 3 tasks in flight (§4.3).
    assert max(s[2] for s in statuses) == 2 and max(s[3] for s in statuses) == 1
    assert statuses[0] == (5, 0, 0, 0) and statuses[-1] == (0, 0, 0, 0)
    indices = sorted(int(m["batch_index"]) for m in transcript.of("image"))
    assert indices == [0, 1, 2, 3, 4]
    assert len(transcript.of("keep_alive")) >= 1


def test_more_requests_on_the_same_socket(client: httpx.Client, emu: Emulator) -> None:
    sid = new_session(client)
    second = {"images": 2, "steps": 1, "prompt": "more"}
    transcript = ws_transcript(
        client,
        "GenerateText2ImageWS",
        {"session_id": sid, "images": 1, "steps": 1, "batchsize": 1},
        extra=[("image", second)],
    )
    images = transcript.of("image")
    assert sorted(int(m["batch_index"]) for m in images) == [0, 1, 2]
    assert {m["request_id"] for m in images} == {"1001", "1002"}
    assert transcript.kinds()[-1] == "status" and transcript.close_code == 1000
    bodies = [c.body for c in emu.calls("GenerateText2ImageWS")]
    assert bodies[1] == second


def test_model_load_raises_loading_models_while_queued(emulator_factory) -> None:
    emu = emulator_factory(step_seconds=0.01, model_load_seconds=0.2)
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        transcript = ws_transcript(
            client, "GenerateText2ImageWS", {"session_id": sid, "images": 1, "steps": 1}
        )
        again = ws_transcript(
            client, "GenerateText2ImageWS", {"session_id": sid, "images": 1, "steps": 1}
        )
    assert (1, 1, 1, 0) in transcript.statuses()
    assert all(s[1] == 0 for s in again.statuses())  # already loaded


def test_closing_the_websocket_cancels_nothing(emulator_factory) -> None:
    emu = emulator_factory(step_seconds=0.02)
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        with connect_ws("/API/GenerateText2ImageWS", client) as ws:
            ws.send_text(json.dumps({"session_id": sid, "images": 1, "steps": 25}))
            while "gen_progress" not in json.loads(ws.receive_text(timeout=5)):
                pass
        assert emu.session_status(sid)["live_gens"] == 1
        assert sid in emu.active_sessions()
        assert emu.wait_until(lambda: emu.session_status(sid)["waiting_gens"] == 0)
    assert len(emu.saved_outputs()) == 1
    assert emu.active_sessions() == []


def test_aborting_the_http_request_cancels_nothing(emulator_factory) -> None:
    emu = emulator_factory(step_seconds=0.02)
    with httpx.Client(base_url=emu.url, timeout=0.2) as client:
        sid = new_session(client)
        with pytest.raises(httpx.ReadTimeout):
            call(client, "GenerateText2Image", sid, images=1, steps=40)
    assert emu.session_status(sid)["live_gens"] == 1
    assert emu.wait_until(lambda: emu.saved_outputs() != [])
    assert emu.wait_until(lambda: emu.session_status(sid)["waiting_gens"] == 0)


def test_no_backends_fails_after_about_a_second(emulator_factory) -> None:
    emu = emulator_factory(backends=0)
    with httpx.Client(base_url=emu.url, timeout=10) as client:
        sid = new_session(client)
        status = call(client, "GetCurrentStatus", sid).json()
        assert status["backend_status"]["status"] == "empty"
        assert status["supported_features"] == []
        started = time.monotonic()
        answer = call(client, "GenerateText2Image", sid, images=1)
        assert answer.json() == {"error": "No backends available!"}
        assert 0.9 <= time.monotonic() - started < 3


def test_loading_backends_make_requests_wait(emulator_factory) -> None:
    emu = emulator_factory(step_seconds=0.01)
    emu.set_backend_status("loading")
    with httpx.Client(base_url=emu.url, timeout=10) as client:
        sid = new_session(client)
        rollup = call(client, "GetCurrentStatus", sid).json()["backend_status"]
        assert rollup == {
            "status": "loading",
            "class": "soft",
            "message": "Backends are still loading on the server...",
            "any_loading": True,
        }
        with connect_ws("/API/GenerateText2ImageWS", client) as ws:
            ws.send_text(json.dumps({"session_id": sid, "images": 1, "steps": 1}))
            assert emu.wait_until(lambda: emu.session_status(sid)["waiting_backends"] == 1)
            time.sleep(1.2)  # longer than the no-backend grace: still waiting, no error
            assert emu.session_status(sid)["waiting_backends"] == 1
            emu.set_backend_status("running")
            received = []
            while "socket_intention" not in received:
                received.append(next(iter(json.loads(ws.receive_text(timeout=5)))))
        assert "image" in received and "error" not in received


def test_batches_use_seed_plus_k_and_int_preview_indices(client: httpx.Client) -> None:
    sid = new_session(client)
    body = {"session_id": sid, "images": 1, "batchsize": 2, "steps": 2, "seed": 10}
    transcript = ws_transcript(client, "GenerateText2ImageWS", body)
    images = {m["batch_index"]: json.loads(m["metadata"]) for m in transcript.of("image")}
    assert {k: v["sui_image_params"]["seed"] for k, v in images.items()} == {"0": 10, "1": 11}
    indices = {m["gen_progress"]["batch_index"] for m in transcript.of("gen_progress")}
    assert indices == {"0", 1}
    quiet = ws_transcript(client, "GenerateText2ImageWS", {**body, "nopreviews": True})
    assert not any("preview" in m["gen_progress"] for m in quiet.of("gen_progress"))


def test_image_megabytes_pads_outputs_with_a_skippable_chunk(emulator_factory) -> None:
    emu = emulator_factory(step_seconds=0.0, image_megabytes=1.5)
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        path = call(client, "GenerateText2Image", sid, images=1, steps=1).json()["images"][0]
        data = fetch(client, path).content
    assert 1.5 * 1024 * 1024 < len(data) < 1.6 * 1024 * 1024
    assert png_pixels(data)[:2] == (64, 64) and "parameters" in png_text(data)


def test_mini_grid_and_intermediates_have_swarmui_batch_indices(emulator_factory) -> None:
    emu = emulator_factory(step_seconds=0.01, max_images_in_mini_grid=4)
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        body = {"session_id": sid, "images": 2, "batchsize": 2, "steps": 1}
        transcript = ws_transcript(
            client, "GenerateText2ImageWS", {**body, "outputintermediateimages": True}
        )
        plain = ws_transcript(client, "GenerateText2ImageWS", {**body, "images": 1})
    indices = [int(m["batch_index"]) for m in transcript.of("image")]
    # Four real images, one intermediate per task first, the grid last (T2IAPI.cs ~405-466).
    assert sorted(i for i in indices if i >= 0) == [0, 1, 2, 3]
    assert sorted(i for i in indices if i < -1) == [-12, -11]
    assert indices[-1] == -1
    # batchsize 2 of one task is two real images: a grid again, but no intermediates.
    assert sorted(int(m["batch_index"]) for m in plain.of("image")) == [-1, 0, 1]


def test_no_mini_grid_by_default(emulator_factory) -> None:
    emu = emulator_factory(step_seconds=0.01)
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        body = {"session_id": sid, "images": 3, "steps": 1}
        transcript = ws_transcript(client, "GenerateText2ImageWS", body)
    assert sorted(int(m["batch_index"]) for m in transcript.of("image")) == [0, 1, 2]


def test_cancelling_the_load_trigger_fails_the_other_waiter_once(emulator_factory) -> None:
    import threading

    emu = emulator_factory(step_seconds=0.01, model_load_seconds=2.0)
    flux = "flux/flux1-dev.safetensors"
    with httpx.Client(base_url=emu.url) as client:
        trigger, waiter = new_session(client), new_session(client)
        found: dict[str, Transcript] = {}

        def run(name: str, sid: str) -> None:
            body = {"session_id": sid, "images": 1, "steps": 1, "model": flux}
            found[name] = ws_transcript(client, "GenerateText2ImageWS", body)

        first = threading.Thread(target=run, args=("trigger", trigger))
        first.start()
        assert emu.wait_until(lambda: emu.session_status(trigger)["loading_models"] == 1)
        second = threading.Thread(target=run, args=("waiter", waiter))
        second.start()
        assert emu.wait_until(lambda: emu.session_status(waiter)["waiting_backends"] == 1)
        call(client, "InterruptAll", trigger)
        first.join(10)
        second.join(10)
        # The trigger ends silently; the other waiter fails with SwarmUI's load error.
        assert found["trigger"].of("error") == [] and found["trigger"].of("image") == []
        errors = [m["error"] for m in found["waiter"].of("error")]
        assert len(errors) == 1
        assert errors[0].startswith("All available backends failed to load the model '")
        assert flux in errors[0]
        # The failed pressure is gone: the next request for the model loads it again.
        again = ws_transcript(
            client, "GenerateText2ImageWS",
            {"session_id": waiter, "images": 1, "steps": 1, "model": flux},
        )  # fmt: skip
    assert len(again.of("image")) == 1
    assert any(s[1] == 1 for s in again.statuses())
