"""The MCP tools on ComfyUI: workflow and set on generate_image, params refused, cancel by id.

Runs on the project's ComfyUI emulator when it is there, and on a real ComfyUI when
``ASSET_GENERATOR_TEST_COMFYUI_URL`` names one (a shared server: only our own prompts are
ever cancelled, by their ids). Every result is checked against its outputSchema.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from conftest import Runner, read_registry

pytest.importorskip("mcp")
from mcp import Client
from mcpcheck import checked_results  # noqa: F401

from asset_generator.cli.app import App
from asset_generator.mcp_tools import Tools, build_server

pytestmark = pytest.mark.usefixtures("checked_results")

REAL_URL = os.environ.get("ASSET_GENERATOR_TEST_COMFYUI_URL", "").rstrip("/")

T = TypeVar("T")


def _emulator_class() -> Any:
    try:
        from asset_generator.emulator import ComfyEmulator
    except ImportError:
        return None
    return ComfyEmulator


@pytest.fixture(
    params=[
        pytest.param(
            "emulator",
            marks=pytest.mark.skipif(
                _emulator_class() is None, reason="the ComfyUI emulator is not in this tree"
            ),
        ),
        pytest.param(
            "real",
            marks=pytest.mark.skipif(
                not REAL_URL, reason="set ASSET_GENERATOR_TEST_COMFYUI_URL to a real ComfyUI"
            ),
        ),
    ]
)
def comfy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """(its URL, the emulator or None for the real server)."""
    if request.param == "real":
        yield REAL_URL, None
        return
    emulator = _emulator_class()(base_dir=tmp_path / "comfy").start()
    try:
        yield emulator.url, emulator
    finally:
        emulator.stop()


def slow_graph(steps: int = 4, green: float = 0.0) -> dict[str, Any]:
    """SlowSolidImage -> SaveImage: a real ComfyUI runs it in about a second, on a CPU."""
    return {
        "1": {
            "class_type": "SlowSolidImage",
            "inputs": {
                "steps": steps,
                "step_seconds": 0.25,
                "width": 32,
                "height": 32,
                "red": 1.0,
                "green": green,
                "blue": 0.0,
            },
        },
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": f"mcp-{uuid.uuid4().hex[:8]}"},
        },
    }


def with_client(
    url: str, scenario: Callable[[Client], Awaitable[T]], server_type: str = "comfyui"
) -> T:
    """Run ``scenario`` with a client of a fresh server over ``url``; end all it started."""
    app = App()
    app.flags.update(api_url=url, server_type=server_type)
    tools = Tools(app)
    server = build_server(tools)

    async def main() -> T:
        async with Client(server) as client:
            return await scenario(client)

    try:
        return anyio.run(main)
    finally:
        # Our own prompts only, by their ids: the server may be shared.
        tools.stop_all("the test is over", handed_back=True)
        app.close()


def call(url: str, *calls: tuple[str, dict[str, Any]]) -> list[Any]:
    """Run tool calls in order; return their results."""

    async def scenario(client: Client) -> list[Any]:
        return [await client.call_tool(name, arguments) for name, arguments in calls]

    return with_client(url, scenario)


def queued(emulator: Any, prompt_id: str) -> bool:
    """The emulator holds ``prompt_id``, running or pending."""
    return any(item[1] == prompt_id for part in emulator.queue() for item in part)


def error_of(result: Any) -> dict[str, str]:
    assert result.is_error is True and result.structured_content is None
    return json.loads(result.content[0].text)["error"]


def test_an_inline_workflow_with_set_runs_and_saves(comfy: tuple[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    comfy_url, _ = comfy
    [made, again] = call(
        comfy_url,
        (
            "generate_image",
            {
                "workflow": slow_graph(),
                "set": {"1.green": 1.0},
                "output_dir": str(tmp_path),
            },
        ),
        ("generate_image", {"workflow": json.dumps(slow_graph()), "output_dir": str(tmp_path)}),
    )
    document = made.structured_content
    assert document["status"] == "succeeded", made.content[0].text
    [image] = document["images"]
    with Image.open(image["path"]) as saved:
        # set reached the node: red and green make yellow.
        assert saved.convert("RGB").getpixel((0, 0)) == (255, 255, 0)
    # A workflow's JSON text is the workflow too (clients that send objects as text).
    assert again.structured_content["status"] == "succeeded"


def test_a_workflow_file_and_params_refused_on_comfyui(
    comfy: tuple[str, Any], tmp_path: Path, state_dir: Path
) -> None:
    comfy_url, emulator = comfy
    workflow = tmp_path / "slow.json"
    workflow.write_text(json.dumps(slow_graph()))
    made, refused, missing = call(
        comfy_url,
        ("generate_image", {"workflow": str(workflow), "output_dir": str(tmp_path)}),
        (
            "generate_image",
            {"workflow": str(workflow), "params": {"clipstopatlayer": 2}, "output_dir": "x"},
        ),
        ("generate_image", {"workflow": str(tmp_path / "nope.json")}),
    )
    assert made.structured_content["status"] == "succeeded"
    error = error_of(refused)
    assert error["code"] == "usage_error"
    assert (
        error["message"].startswith("params is a SwarmUI option") and "ComfyUI" in error["message"]
    )
    assert error_of(missing)["code"] == "file_error"
    # Only the first call queued anything.
    assert len(read_registry(state_dir)["generations"]) == 1
    if emulator is not None:
        assert len(emulator.calls("/prompt")) == 1


def test_bad_input_sends_nothing_to_comfyui(comfy: tuple[str, Any], tmp_path: Path) -> None:
    comfy_url, emulator = comfy
    if emulator is None:
        pytest.skip("a shared real server cannot say what it did not receive")
    results = call(
        comfy_url,
        ("generate_image", {"workflow": slow_graph(), "params": {"a": 1}}),
        ("generate_image", {"workflow": slow_graph(), "steps": "4"}),
        ("cancel_generation", {"all": "yes"}),
    )
    assert [error_of(r)["code"] for r in results] == ["usage_error"] * 3
    assert emulator.requests == []


def test_work_left_running_is_cancelled_by_its_id(
    comfy: tuple[str, Any], tmp_path: Path, state_dir: Path
) -> None:
    comfy_url, emulator = comfy
    # A shared real server may be busy with others' prompts before ours starts.
    patience = 20.0 if emulator is not None else 300.0
    seen: dict[str, Any] = {}

    async def scenario(client: Client) -> None:
        started = await client.call_tool(
            "generate_image",
            {"workflow": slow_graph(steps=40), "wait": False, "output_dir": str(tmp_path)},
        )
        generation_id = started.structured_content["generation_id"]
        seen["id"] = generation_id
        # Cancelled once the server runs it (not before anything reached the server).
        with anyio.fail_after(patience):
            while True:
                status = await client.call_tool(
                    "generation_status", {"generation_id": generation_id}
                )
                state = status.structured_content["status"]
                if state == "running":
                    break
                assert state == "queued", status.content[0].text
                await anyio.sleep(0.05)
        seen["stopped"] = await client.call_tool("cancel_generation", {})
        seen["shown"] = await client.call_tool("generation_status", {})
        if emulator is not None:
            # What the cancel sent, and where it left our prompt: before the clean-up acts.
            (seen["pid"],) = read_registry(state_dir)["generations"][generation_id]["handle"][
                "prompt_ids"
            ]
            deadline = anyio.current_time() + patience
            while queued(emulator, seen["pid"]) and anyio.current_time() < deadline:
                await anyio.sleep(0.02)
            seen["queued"] = queued(emulator, seen["pid"])
            seen["interrupts"] = [c.body for c in emulator.calls("/interrupt")]

    with_client(comfy_url, scenario)
    body = seen["stopped"].structured_content
    assert body["was_active"] is True and [r["id"] for r in body["cancelled"]] == [seen["id"]]
    [record] = seen["shown"].structured_content["generations"]
    assert record["id"] == seen["id"] and record["status"] == "cancelled"
    if emulator is not None:
        # By its id, and nothing global: the server may be shared.
        assert seen["interrupts"] == [{"prompt_id": seen["pid"]}]
        assert seen["queued"] is False  # neither running nor pending any more


def test_cancel_all_says_how_many_prompts_it_stopped_and_how_many_were_ours(
    comfy: tuple[str, Any], tmp_path: Path
) -> None:
    # cli-contract §7: `--all` says how many running and pending prompts it stopped and how
    # many were ours; an agent has no stderr to read, so the result carries it.
    comfy_url, emulator = comfy
    if emulator is None:
        pytest.skip("all: true clears a shared real server's whole queue")
    import httpx

    theirs = {"1": slow_graph(steps=400)["1"], "2": slow_graph()["2"]}
    answer = httpx.post(f"{comfy_url}/prompt", json={"prompt": theirs, "client_id": "else"})
    assert answer.status_code == 200, answer.text

    async def scenario(client: Client) -> tuple[Any, Any]:
        started = await client.call_tool(
            "generate_image",
            {"workflow": slow_graph(), "wait": False, "output_dir": str(tmp_path)},
        )
        # wait: false returns once the work is recorded; ours is counted once it is queued.
        with anyio.fail_after(20):
            while len(emulator.queue()[1]) < 1:
                await anyio.sleep(0.02)
        return started, await client.call_tool("cancel_generation", {"all": True})

    started, stopped = with_client(comfy_url, scenario)
    body = stopped.structured_content
    assert body["scope"] == "server" and body["was_active"] is True
    assert [r["id"] for r in body["cancelled"]] == [started.structured_content["generation_id"]]
    assert "1 running and 1 pending prompts stopped, 1 of them ours" in body["message"]
    assert "--all" not in body["message"]
    assert emulator.queue() == ([], [])


def test_the_built_in_graph_takes_sampler_and_scheduler_and_says_the_drawn_seed(
    comfy: tuple[str, Any], tmp_path: Path
) -> None:
    comfy_url, emulator = comfy
    [made] = call(
        comfy_url,
        (
            "generate_image",
            {
                "prompt": "a cat",
                "model": "random-sd15.safetensors",
                "sampler": "euler",
                "scheduler": "karras",
                "steps": 2,
                "width": 64,
                "height": 64,
                "output_dir": str(tmp_path),
            },
        ),
    )
    document = made.structured_content
    assert document["status"] == "succeeded", made.content[0].text
    [image] = document["images"]
    # ComfyUI has no random seed: the client drew one, and says how to repeat it.
    [note] = document["notes"]
    assert f"seed {image['seed']}" in note and "--" not in note
    if emulator is not None:
        [sent] = emulator.calls("/prompt")
        [sampler] = [n for n in sent.body["prompt"].values() if n["class_type"] == "KSampler"]
        assert sampler["inputs"]["sampler_name"] == "euler"
        assert sampler["inputs"]["scheduler"] == "karras"


def test_a_remembered_type_that_no_longer_fits_is_asked_again(
    emulator_factory: Any, cli: Runner, state_dir: Path, tmp_path: Path
) -> None:
    """cli-contract §7 through MCP: SwarmUI is remembered for the URL, ComfyUI listens there
    now. The worker (told SwarmUI by the registry) and the MCP server (holding the adapter it
    made while SwarmUI answered) ask again, and the registry then remembers ComfyUI."""
    comfy_class = _emulator_class()
    if comfy_class is None:
        pytest.skip("the ComfyUI emulator is not in this tree")
    swarm = emulator_factory()
    cli.url = swarm.url
    assert cli("status", "-f", "json").json()["type"] == "swarmui"
    assert read_registry(state_dir)["kinds"][swarm.url] == "swarmui"
    started: list[Any] = []
    generate = {
        "prompt": "a heron",
        "model": "random-sd15.safetensors",
        "steps": 2,
        "width": 64,
        "height": 64,
        "output_dir": str(tmp_path / "out"),
    }

    def swap() -> None:
        swarm.stop()
        started.append(comfy_class(base_dir=tmp_path / "comfy", port=swarm.port).start())

    async def scenario(client: Client) -> list[Any]:
        results = [await client.call_tool("server_status", {})]
        await anyio.to_thread.run_sync(swap)
        for name, arguments in [
            ("generate_image", generate),
            ("generate_image", generate),
            ("server_status", {}),
            ("list_models", {}),
        ]:
            results.append(await client.call_tool(name, arguments))
        return results

    try:
        before, first, made, after, models = with_client(swarm.url, scenario, "auto")
        prompts = started[0].calls("/prompt")
    finally:
        for emulator in started:
            emulator.stop()
    assert before.structured_content["type"] == "swarmui"
    # The SwarmUI session cached by `status` let the first one register without a request;
    # once registered it is never run again (its request reached the server), as `generate`.
    assert error_of(first)["code"] == "bad_response"
    assert "not a SwarmUI server" in error_of(first)["message"]
    # The next asks SwarmUI for a session, before registering: the server is asked again.
    assert made.structured_content is not None, made.content[0].text
    assert made.structured_content["status"] == "succeeded"
    assert len(prompts) == 1
    # The MCP server's own adapter, made for SwarmUI, made way for one asked afresh.
    assert after.structured_content is not None, after.content[0].text
    assert after.structured_content["type"] == "comfyui"
    assert models.structured_content is not None, models.content[0].text
    assert "random-sd15.safetensors" in [m["name"] for m in models.structured_content["models"]]
    assert read_registry(state_dir)["kinds"][swarm.url] == "comfyui"
