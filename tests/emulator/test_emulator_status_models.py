"""Status, backends and models routes (protocol §6, §7), and the command line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from swarm_helpers import call, new_session

from asset_generator.emulator import Emulator

MODEL_FIELDS = {
    "name", "title", "author", "description", "preview_image", "loaded", "architecture",
    "class", "compat_class", "resolution", "standard_width", "standard_height", "license",
    "date", "prediction_type", "usage_hint", "trigger_phrase", "merged_from", "tags",
    "is_supported_model_format", "is_negative_embedding", "lora_default_weight",
    "lora_default_confinement", "local", "time_created", "time_modified", "hash",
    "hash_sha256", "special_format",
}  # fmt: skip


@pytest.fixture
def emu(emulator_factory) -> Emulator:
    return emulator_factory(backends=2, step_seconds=0.01)


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=10) as http_client:
        yield http_client


def test_current_status_shape(client: httpx.Client) -> None:
    status = call(client, "GetCurrentStatus", new_session(client)).json()
    assert status["status"] == {
        "waiting_gens": 0,
        "loading_models": 0,
        "waiting_backends": 0,
        "live_gens": 0,
    }
    assert status["backend_status"] == {
        "status": "running",
        "class": "",
        "message": "",
        "any_loading": False,
    }
    assert "comfyui" in status["supported_features"]


@pytest.mark.parametrize(
    ("states", "expected", "css"),
    [
        (["running", "loading"], "some_loading", "warn"),
        (["disabled", "disabled"], "all_disabled", "error"),
        (["errored", "running"], "errored", "error"),
        (["idle", "idle"], "idle", "warn"),
        (["disabled", "idle"], "disabled", "warn"),
    ],
)
def test_backend_status_rollup(
    emu: Emulator, client: httpx.Client, states: list[str], expected: str, css: str
) -> None:
    for backend_id, state in enumerate(states):
        emu.set_backend_status(state, backend_id)
    sid = new_session(client)
    rollup = call(client, "GetCurrentStatus", sid).json()["backend_status"]
    assert (rollup["status"], rollup["class"]) == (expected, css)
    assert rollup["message"]
    backends = call(client, "ListBackends", sid).json()
    assert [b["status"] for b in backends.values()] == states


def test_idle_backends_fail_generation(emu: Emulator, client: httpx.Client) -> None:
    emu.set_backend_status("idle")
    sid = new_session(client)
    answer = call(client, "GenerateText2Image", sid, images=1)
    assert answer.json() == {"error": "No backends available!"}


def test_list_backends_is_keyed_by_id(client: httpx.Client) -> None:
    sid = new_session(client)
    backends = call(client, "ListBackends", sid, full_data=True).json()
    assert list(backends) == ["0", "1"]
    first = backends["0"]
    assert first["id"] == 0 and first["type"] == "comfyui_selfstart"
    assert first["time_since_used"] == "Never" and first["max_usages"] == 1
    assert first["current_model"] == "OfficialStableDiffusion/sd_xl_base_1.0.safetensors"
    assert "current_model" not in call(client, "ListBackends", sid).json()["0"]


def test_admin_routes_and_global_status(client: httpx.Client) -> None:
    sid = new_session(client)
    info = call(client, "GetServerResourceInfo", sid).json()
    assert set(info) == {"cpu", "system_ram"}
    assert info["cpu"]["cores"] >= 1 and isinstance(info["cpu"]["usage"], float)
    call(client, "GenerateText2Image", new_session(client), images=1, steps=1)
    totals = call(client, "GetGlobalStatus", sid).json()["status"]
    assert totals == {"waiting_gens": 0, "loading_models": 0, "waiting_backends": 0,
                      "live_gens": 0}  # fmt: skip


def test_list_models_folders_depth_and_sorting(client: httpx.Client) -> None:
    sid = new_session(client)
    top = call(client, "ListModels", sid, path="", depth=1).json()
    assert top["files"] == []
    assert sorted(top["folders"]) == ["OfficialStableDiffusion", "flux", "sd15"]
    deep = call(client, "ListModels", sid, path="", depth=2).json()["files"]
    names = [m["name"] for m in deep]
    assert names == sorted(names, key=str.lower) and len(names) == 3
    assert all(n.endswith(".safetensors") for n in names)
    assert set(deep[0]) == MODEL_FIELDS
    assert sum(m["loaded"] for m in deep) == 1
    flux = call(client, "ListModels", sid, path="flux/", depth=1).json()
    assert [m["name"] for m in flux["files"]] == ["flux/flux1-dev.safetensors"]
    newest = call(client, "ListModels", sid, path="", depth=3, sortBy="datecreated").json()
    created = [m["time_created"] for m in newest["files"]]
    assert created == sorted(created, reverse=True)
    reverse = call(client, "ListModels", sid, path="", depth=3, sortReverse=True).json()
    assert [m["name"] for m in reverse["files"]] == names[::-1]
    loras = call(client, "ListModels", sid, path="", depth=1, subtype="LoRA").json()
    assert [m["name"] for m in loras["files"]] == ["detail-tweaker.safetensors"]
    assert loras["folders"] == ["style"]


def test_list_models_errors(client: httpx.Client) -> None:
    sid = new_session(client)
    assert call(client, "ListModels", sid, path="", depth=1, subtype="lora").json() == {
        "error": "Invalid sub-type."
    }
    assert call(client, "ListModels", sid, path="", depth=1, sortBy="Size").json() == {
        "error": "Invalid sort mode 'Size'."
    }
    assert call(client, "ListModels", sid, depth=1).json() == {
        "error": "Missing required parameter 'path'"
    }


def test_describe_and_select_model(client: httpx.Client) -> None:
    sid = new_session(client)
    described = call(client, "DescribeModel", sid, modelName="flux/flux1-dev").json()
    assert described["model"]["name"] == "flux/flux1-dev.safetensors"
    assert described["model"]["loaded"] is False
    assert call(client, "DescribeModel", sid, modelName="flux").json() == {
        "error": "Model not found."
    }
    assert call(client, "SelectModel", sid, model=" ").json() == {"error": "Invalid empty name."}
    assert call(client, "SelectModel", sid, model="nope").json() == {"error": "Model not found."}
    assert call(client, "SelectModel", sid, model="flux/flux1-dev").json() == {"success": True}
    loaded = call(client, "ListLoadedModels", sid).json()["models"]
    assert [m["name"] for m in loaded] == ["flux/flux1-dev.safetensors"]


def test_command_line_serves_until_sigint(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen(
        [sys.executable, "-m", "asset_generator.emulator", "--port", "0", "--accounts",
         "--user", "alice", "--step-seconds", "0.01"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        listening = process.stderr.readline()
        match = re.fullmatch(
            r"SwarmUI emulator listening on (http://127\.0\.0\.1:\d+)\n", listening
        )
        assert match, listening
        user_line = process.stderr.readline().split()
        assert user_line[:3] == ["user", "alice", "token"]
        with httpx.Client(base_url=match.group(1)) as client:
            answer = client.post(
                "/API/GetNewSession", json={}, headers={"Cookie": f"swarm_token={user_line[3]}"}
            )
            assert answer.json()["user_id"] == "alice"
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "Traceback" not in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_command_line_rejects_users_without_accounts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asset_generator.emulator", "--user", "x"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=20,
    )
    assert done.returncode == 2 and "--user needs --accounts" in done.stderr
