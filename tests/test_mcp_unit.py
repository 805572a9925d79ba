"""Fast checks of the MCP tools through the SDK's in-memory client (one process, real emulator).

Every result is checked against its tool's outputSchema (``mcpcheck``), as a TypeScript
client checks it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import read_registry, session_id_of

from asset_generator.emulator import Emulator

pytest.importorskip("mcp")
from mcp import Client
from mcpcheck import checked_results  # noqa: F401

from asset_generator.cli.app import App
from asset_generator.mcp_tools import MAX_SEED, Tools, build_server

pytestmark = pytest.mark.usefixtures("checked_results")

GENERATION_REQUESTS = ("GenerateText2ImageWS", "GenerateText2Image")


def call(url: str, *calls: tuple[str, dict[str, Any]], **flags: Any) -> list[Any]:
    """Run tool calls in order on a fresh server over ``url``; return their results."""
    results, _ = call_with_tools(url, *calls, **flags)
    return results


def call_with_tools(
    url: str, *calls: tuple[str, dict[str, Any]], **flags: Any
) -> tuple[list[Any], Tools]:
    app = App()
    app.flags.update(api_url=url, **flags)
    tools = Tools(app)
    server = build_server(tools)
    results: list[Any] = []

    async def scenario() -> None:
        async with Client(server) as client:
            for name, arguments in calls:
                results.append(await client.call_tool(name, arguments))

    try:
        anyio.run(scenario)
    finally:
        # Work handed back to the agent runs on in its own process; a test ends it all.
        tools.stop_all("the test is over", handed_back=True)
        app.close()
    return results, tools


def document_of(result: Any) -> dict[str, Any]:
    return json.loads(result.content[0].text)


def error_of(result: Any) -> dict[str, str]:
    assert result.is_error is True
    assert result.structured_content is None
    return document_of(result)["error"]


def generation_requests(emulator: Emulator) -> list[Any]:
    return [call for route in GENERATION_REQUESTS for call in emulator.calls(route)]


# -- strict inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "named"),
    [
        # "yes" must not mean true: that would interrupt every session of the user.
        ("cancel_generation", {"all": "yes"}, "all"),
        ("cancel_generation", {"all": 1}, "all"),
        # "no" must not mean false.
        ("generate_image", {"prompt": "x", "wait": "no"}, "wait"),
        ("generate_image", {"prompt": "x", "steps": "20"}, "steps"),
        ("generate_image", {"prompt": "x", "steps": 2.5}, "steps"),
        ("generate_image", {"prompt": "x", "steps": True}, "steps"),
        ("generate_image", {"prompt": "x", "width": 3}, "width"),
        ("generate_image", {"prompt": "x", "seed": MAX_SEED + 1}, "seed"),
        ("generate_image", {"prompt": "x", "seed": -2}, "seed"),
        ("generate_image", {"prompt": "x", "samplr": "euler"}, "'samplr'"),
        ("generate_image", {"prompt": "x", "params": {"clipstopatlayer": [2]}}, "params"),
        ("generate_image", {"prompt": "x", "loras": "a,b"}, "loras"),
        ("generate_image", {"prompt": "x", "workflow": 3}, "workflow"),
        ("generate_image", {"prompt": ""}, "prompt"),
        ("run_pipeline", {"spec": "s.yaml", "parallel": 0}, "parallel"),
        ("run_pipeline", {}, "spec"),
        ("get_images", {"generation_id": "gen_1", "previews": 100}, "previews"),
        ("list_models", {"depth": "3"}, "depth"),
        ("generation_status", {"id": "gen_1"}, "'id'"),
        ("server_status", {"verbose": True}, "'verbose'"),
        ("cancel_generation", {"generation_id": "gen_a", "feature": "gen_b"}, "feature"),
        # An empty id is not "no id": that would stop the current generation.
        ("cancel_generation", {"generation_id": ""}, "generation_id"),
        ("cancel_generation", {"feature": ""}, "feature"),
        ("cancel_generation", {"generation_id": "", "all": True}, "generation_id"),
        ("generation_status", {"generation_id": ""}, "generation_id"),
    ],
)
def test_bad_arguments_are_usage_errors_and_send_nothing(
    emulator: Emulator, tool: str, arguments: dict[str, Any], named: str
) -> None:
    [result], tools = call_with_tools(emulator.url, (tool, arguments))
    error = error_of(result)
    assert error["code"] == "usage_error", error
    assert named in error["message"], error
    assert "https://" not in error["message"]
    # Refused before anything started: no worker, no request, no record.
    assert tools.jobs == []
    assert emulator.requests == []


def test_unknown_tool_and_a_missing_prompt_are_usage_errors(
    emulator: Emulator, state_dir: Path
) -> None:
    unknown, missing = call(emulator.url, ("paint", {}), ("generate_image", {}))
    assert error_of(unknown)["code"] == "usage_error"
    assert "paint" in error_of(unknown)["message"]
    assert error_of(missing)["code"] == "usage_error"
    assert "prompt" in error_of(missing)["message"]
    assert emulator.requests == []


def test_null_is_not_given_and_json_text_is_taken_for_lists_and_objects(
    emulator: Emulator,
) -> None:
    nothing, spelt = call(
        emulator.url,
        ("cancel_generation", {"generation_id": None, "feature": None, "all": None}),
        ("cancel_generation", {"generation_id": "gen_1", "feature": "gen_1"}),
    )
    assert nothing.structured_content["was_active"] is False
    # The same id twice is one id.
    assert error_of(spelt)["code"] == "not_found"
    assert emulator.requests == []


def test_published_schemas_are_strict_and_plain(emulator: Emulator) -> None:
    app = App()
    app.flags.update(api_url=emulator.url)
    server = build_server(Tools(app))

    async def listed() -> dict[str, Any]:
        async with Client(server) as client:
            return {t.name: t for t in (await client.list_tools()).tools}

    tools = anyio.run(listed)
    for tool in tools.values():
        schema = tool.input_schema
        assert schema["additionalProperties"] is False, tool.name
        for name, prop in schema.get("properties", {}).items():
            # A client that converts `steps=4` by the property's type finds the type.
            assert {"type": "null"} not in prop.get("anyOf", []), (tool.name, name)
            assert "type" in prop or "anyOf" in prop, (tool.name, name)
    seed = tools["generate_image"].input_schema["properties"]["seed"]
    assert (seed["type"], seed["minimum"], seed["maximum"]) == ("integer", -1, 2**63 - 1)
    assert tools["cancel_generation"].input_schema["properties"]["all"]["type"] == "boolean"
    assert tools["generate_image"].input_schema.get("required", []) == []
    assert tools["run_pipeline"].input_schema["required"] == ["spec"]


# -- generate_image -----------------------------------------------------------------------------


def test_sampler_scheduler_and_params_reach_swarmui(emulator: Emulator, tmp_path: Path) -> None:
    [made] = call(
        emulator.url,
        (
            "generate_image",
            {
                "prompt": "x",
                "sampler": "dpmpp_2m",
                "scheduler": "karras",
                "params": {"clipstopatlayer": -2, "aspectratio": "Custom"},
                "output_dir": str(tmp_path),
            },
        ),
    )
    assert made.structured_content["status"] == "succeeded"
    [sent] = generation_requests(emulator)
    assert sent.body["sampler"] == "dpmpp_2m" and sent.body["scheduler"] == "karras"
    assert sent.body["clipstopatlayer"] == -2 and sent.body["aspectratio"] == "Custom"


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}, "workflow"),
        # Refused for what it is, whether or not there is such a file (not file_error).
        ({"workflow": "no-such-workflow.json"}, "workflow"),
        ({"set": {"KSampler.cfg": 7}}, "set"),
    ],
)
def test_comfyui_arguments_on_swarmui_are_usage_errors(
    emulator: Emulator, tmp_path: Path, arguments: dict[str, Any], named: str
) -> None:
    [refused] = call(
        emulator.url,
        ("generate_image", {"prompt": "x", "output_dir": str(tmp_path), **arguments}),
        server_type="swarmui",
    )
    error = error_of(refused)
    assert error["code"] == "usage_error"
    # Named as the tool's argument, with the server type; not as the CLI's --option.
    assert error["message"].startswith(f"{named} is a ComfyUI option"), error
    assert "SwarmUI" in error["message"] and "--" not in error["message"]
    assert emulator.requests == []


def test_run_pipeline_refuses_a_workflow_on_swarmui_readable_or_not(
    emulator: Emulator, tmp_path: Path
) -> None:
    spec = {"assets": [{"name": "g", "assets": [{"id": "a", "prompt": "p"}]}]}
    [refused] = call(
        emulator.url,
        (
            "run_pipeline",
            {"spec": spec, "workflow": str(tmp_path / "nope.json"), "output_dir": str(tmp_path)},
        ),
        server_type="swarmui",
    )
    error = error_of(refused)
    assert error["code"] == "usage_error"
    assert error["message"].startswith("workflow is a ComfyUI option"), error
    assert emulator.requests == []


def test_an_unusable_output_dir_costs_no_request(emulator: Emulator, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    [in_the_way] = call(
        emulator.url, ("generate_image", {"prompt": "x", "output_dir": str(blocker / "sub")})
    )
    assert error_of(in_the_way)["code"] == "file_error"
    assert emulator.requests == []


def test_status_of_unknown_or_other_servers_generation_is_not_found(
    emulator_factory, tmp_path: Path
) -> None:
    one, other = emulator_factory(), emulator_factory()
    [made] = call(one.url, ("generate_image", {"prompt": "x", "output_dir": str(tmp_path)}))
    generation_id = made.structured_content["generation_id"]
    mine, elsewhere, unknown, cancel_elsewhere, images_elsewhere = call(
        other.url,
        ("generation_status", {}),
        ("generation_status", {"generation_id": generation_id}),
        ("generation_status", {"generation_id": "gen_missing"}),
        ("cancel_generation", {"generation_id": generation_id}),
        ("get_images", {"generation_id": generation_id}),
    )
    assert mine.structured_content["generations"] == []
    assert error_of(elsewhere)["code"] == "not_found"
    assert error_of(unknown)["code"] == "not_found"
    assert error_of(cancel_elsewhere)["code"] == "not_found"
    assert error_of(images_elsewhere)["code"] == "not_found"


def test_no_secret_or_session_id_in_results_or_logs(
    emulator_factory, tmp_path: Path, state_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    emu = emulator_factory(accounts=True)
    token = emu.add_user("agent")
    results = call(
        emu.url,
        ("generate_image", {"prompt": "secret-free", "output_dir": str(tmp_path)}),
        ("generation_status", {}),
        ("cancel_generation", {"all": True}),
        ("server_status", {}),
        ("list_models", {}),
        api_key=token,
        verbose=True,
    )
    assert all(result.is_error is False for result in results), results
    sessions = [session_id_of(r) for r in read_registry(state_dir)["generations"].values()]
    shown = capfd.readouterr()
    # The worker's -v log reached ours.
    assert "POST /API/GenerateText2ImageWS" in shown.err or "WS /API" in shown.err
    everything = shown.out + shown.err + "".join(r.model_dump_json() for r in results)
    for secret in (token, *sessions):
        assert secret not in everything
    assert results[3].structured_content["user"] == "agent"


def test_failed_generation_is_an_error_with_what_arrived(emulator_factory, tmp_path: Path) -> None:
    emu = emulator_factory(require_model=True)
    [failed] = call(
        emu.url, ("generate_image", {"prompt": "no model", "output_dir": str(tmp_path)})
    )
    error = error_of(failed)
    assert error["code"] == "server_error"
    assert error["message"].startswith("request failed: ")
    document = document_of(failed)
    assert document["status"] == "failed" and document["images"] == []
    assert document["generation_id"].startswith("gen_")


def test_status_and_images_of_one_generation(emulator: Emulator, tmp_path: Path) -> None:
    [made] = call(
        emulator.url,
        ("generate_image", {"prompt": "x", "images": 3, "output_dir": str(tmp_path)}),
    )
    generation_id = made.structured_content["generation_id"]
    shown, again, none = call(
        emulator.url,
        ("generation_status", {"generation_id": generation_id}),
        ("get_images", {"generation_id": generation_id, "previews": 2, "preview_pixels": 32}),
        ("get_images", {"generation_id": generation_id, "previews": 0}),
    )
    document = shown.structured_content
    # An agent asking about one generation reads its state where generate_image puts it.
    assert document["generation_id"] == generation_id
    assert document["status"] == "succeeded" and document["progress"] == 100
    # Seen from another process: path, size and the seed read back from the file.
    assert document["images"] == made.structured_content["images"]
    assert document["generation"]["id"] == generation_id
    assert document["generations"] == [document["generation"]]
    listed = again.structured_content
    assert [i["path"] for i in listed["images"]] == [i["path"] for i in document["images"]]
    assert all(i["exists"] for i in listed["images"]) and listed["previews"] == 2
    pictures = [c for c in again.content if c.type == "image"]
    assert len(pictures) == 2
    from io import BytesIO

    from PIL import Image

    for data in pictures:
        import base64

        with Image.open(BytesIO(base64.b64decode(data.data))) as image:
            assert max(image.size) <= 32
    assert [c.type for c in none.content] == ["text"]
    Path(listed["images"][0]["path"]).unlink()
    [later] = call(emulator.url, ("get_images", {"generation_id": generation_id}))
    assert later.structured_content["images"][0]["exists"] is False


def test_server_failures_say_whether_the_server_answered(emulator_factory) -> None:
    emu = emulator_factory(accounts=True)
    [down] = call("http://127.0.0.1:9", ("server_status", {}))
    [refused] = call(emu.url, ("server_status", {}), api_key="not-a-token")
    # The same keys as `status --format json` puts next to its error.
    assert error_of(down)["code"] == "connection_failed"
    assert document_of(down)["reachable"] is False
    assert document_of(down)["server"] == "http://127.0.0.1:9"
    assert error_of(refused)["code"] == "auth_failed"
    assert document_of(refused)["reachable"] is True


def test_a_waiting_call_cancelled_elsewhere_says_so_once(emulator_factory, tmp_path: Path) -> None:
    emu = emulator_factory(step_seconds=0.05)
    app = App()
    app.flags.update(api_url=emu.url)
    tools = Tools(app)
    server = build_server(tools)
    results: dict[str, Any] = {}

    async def scenario() -> None:
        async with Client(server) as client, anyio.create_task_group() as group:

            async def wait_for_it() -> None:
                results["waited"] = await client.call_tool(
                    "generate_image", {"prompt": "long", "steps": 400, "output_dir": str(tmp_path)}
                )

            group.start_soon(wait_for_it)
            with anyio.fail_after(20):
                while not generation_requests(emu):
                    await anyio.sleep(0.02)
            results["cancel"] = await client.call_tool("cancel_generation", {})

    try:
        anyio.run(scenario)
    finally:
        tools.stop_all("the test is over", handed_back=True)
        app.close()
    assert results["cancel"].structured_content["was_active"] is True
    error = error_of(results["waited"])
    assert error["code"] == "cancelled"
    message = error["message"]
    assert message.startswith("cancelled: ") and message.count("cancelled") <= 2
    assert "request failed" not in message
    # It names who can have done it.
    assert "cancel_generation" in message or "another client" in message
    assert document_of(results["waited"])["status"] == "cancelled"


def test_timeout_zero_returns_at_once_like_wait_false(emulator_factory, tmp_path: Path) -> None:
    emu = emulator_factory(step_seconds=0.01)
    early, stopped = call(
        emu.url,
        (
            "generate_image",
            {"prompt": "x", "steps": 50, "timeout_s": 0, "output_dir": str(tmp_path)},
        ),
        ("cancel_generation", {}),
    )
    assert early.is_error is False, early.content[0].text
    assert early.structured_content["status"] in ("queued", "running")
    assert stopped.structured_content["was_active"] is True


# -- run_pipeline ---------------------------------------------------------------------------------

SPEC = {
    "assets": [
        {
            "name": "characters",
            "output_dir": "characters",
            "assets": [
                {"id": "mage", "name": "Mage", "prompt": "a mage"},
                {"id": "knight", "name": "Knight", "prompt": "a knight"},
            ],
        },
        {
            "name": "props",
            "assets": [
                {"id": "chest", "name": "Chest", "prompt": "a chest", "params": {"steps": 9}}
            ],
        },
    ]
}


def test_run_pipeline_inline_spec_reports_assets_done_of_total(
    emulator: Emulator, tmp_path: Path, state_dir: Path
) -> None:
    app = App()
    app.flags.update(api_url=emulator.url)
    tools = Tools(app)
    server = build_server(tools)
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    async def scenario() -> tuple[Any, ...]:
        async with Client(server) as client:
            ran = await client.call_tool(
                "run_pipeline",
                {"spec": SPEC, "output_dir": str(tmp_path / "out"), "base_seed": 10, "steps": 3},
                progress_callback=on_progress,
            )
            pipeline_id = ran.structured_content["pipeline_id"]
            status = await client.call_tool("generation_status", {"generation_id": pipeline_id})
            listed = await client.call_tool("generation_status", {})
            images = await client.call_tool(
                "get_images", {"generation_id": pipeline_id, "previews": 3}
            )
            return ran, status, listed, images

    try:
        ran, status, listed, images = anyio.run(scenario)
    finally:
        tools.stop_all("the test is over", handed_back=True)
        app.close()
    document = ran.structured_content
    assert document["status"] == "succeeded", document
    assert (document["done"], document["total"]) == (3, 3)
    assert document["summary"]["succeeded"] == 3
    assert {a["id"] for a in document["assets"]} == {"mage", "knight", "chest"}
    assert (tmp_path / "out/characters/mage.png").is_file()
    # Progress is assets done of the total, each notification further than the last.
    counted = [(value, total) for value, total in progress if total == 3]
    assert [value for value, _ in counted] == [1, 2, 3]
    shown = status.structured_content
    assert shown["pipeline_id"] == document["pipeline_id"] and shown["status"] == "succeeded"
    assert (shown["done"], shown["total"]) == (3, 3)
    assert [p["id"] for p in listed.structured_content["pipelines"]] == [document["pipeline_id"]]
    files = images.structured_content["images"]
    assert sorted(i["asset"] for i in files) == ["chest", "knight", "mage"]
    # Seeds as the spec's rule makes them: base + the group's offset + index in the group.
    assert {i["asset"]: i["seed"] for i in files} == {"mage": 10, "knight": 11, "chest": 10}
    assert images.structured_content["previews"] == 3
    # One record per asset, tied to the pipeline; one request per asset.
    records = read_registry(state_dir)["generations"].values()
    assert {r["pipeline_id"] for r in records} == {document["pipeline_id"]}
    # The call's options win over the spec's params:, as the command line's do.
    assert [c.body["steps"] for c in generation_requests(emulator)] == [3, 3, 3]
    assert any("steps" in note for note in document["notes"]), document["notes"]


def test_run_pipeline_dry_run_and_bad_specs(emulator: Emulator, tmp_path: Path) -> None:
    plan, broken, missing, yaml_text, one_line, bad_line = call(
        emulator.url,
        ("run_pipeline", {"spec": SPEC, "dry_run": True, "base_seed": 5}),
        ("run_pipeline", {"spec": {"groups": []}}),
        ("run_pipeline", {"spec": str(tmp_path / "nope.yaml")}),
        (
            "run_pipeline",
            {
                "spec": "assets:\n  - name: g\n    assets:\n      - {id: a, prompt: p}\n",
                "dry_run": True,
            },
        ),
        # YAML text on one line is the spec too, not a file's name; broken, it is bad_spec.
        (
            "run_pipeline",
            {"spec": "assets: [{name: g, assets: [{id: a, prompt: p}]}]", "dry_run": True},
        ),
        ("run_pipeline", {"spec": "assets: [{name: g"}),
    )
    document = plan.structured_content
    assert document["dry_run"] is True and document["status"] == "planned"
    assert [a["seed"] for a in document["assets"]] == [5, 6, 5]
    assert error_of(broken)["code"] == "bad_spec"
    assert error_of(missing)["code"] == "file_error"
    assert yaml_text.structured_content["total"] == 1
    assert one_line.structured_content["total"] == 1
    assert error_of(bad_line)["code"] == "bad_spec"
    assert emulator.requests == []


def test_run_pipeline_without_waiting_is_followed_and_cancelled_by_its_id(
    emulator_factory, tmp_path: Path, state_dir: Path
) -> None:
    emu = emulator_factory(step_seconds=0.05)
    app = App()
    app.flags.update(api_url=emu.url)
    tools = Tools(app)
    server = build_server(tools)

    def sessions_of(pipeline_id: str) -> set[str]:
        """The sessions the pipeline's generation records run in (those that have one)."""
        records = read_registry(state_dir)["generations"].values()
        return {
            session_id_of(r)
            for r in records
            if r["pipeline_id"] == pipeline_id and r["handle"].get("session_id")
        }

    async def scenario() -> tuple[Any, Any, Any]:
        async with Client(server) as client:
            started = await client.call_tool(
                "run_pipeline",
                {"spec": SPEC, "output_dir": str(tmp_path), "steps": 300, "wait": False},
            )
            pipeline_id = started.structured_content["pipeline_id"]
            with anyio.fail_after(20):
                while not (generation_requests(emu) and sessions_of(pipeline_id)):
                    await anyio.sleep(0.02)
            # The work in flight now: the cancel must interrupt each of these itself, before
            # the clean-up (which interrupts whatever is left) runs.
            in_flight = sessions_of(pipeline_id)
            cancelled = await client.call_tool("cancel_generation", {"generation_id": pipeline_id})
            assert in_flight <= set(emu.interrupted_sessions()), emu.interrupted_sessions()
            with anyio.fail_after(20):
                while True:
                    status = await client.call_tool(
                        "generation_status", {"generation_id": pipeline_id}
                    )
                    if status.structured_content["status"] == "cancelled":
                        break
                    await anyio.sleep(0.05)
            return started, cancelled, status

    try:
        started, cancelled, status = anyio.run(scenario)
    finally:
        tools.stop_all("the test is over", handed_back=True)
        app.close()
    assert started.structured_content["status"] == "running"
    body = cancelled.structured_content
    assert body["was_active"] is True and body["pipeline"]["id"].startswith("pipe_")
    assert status.structured_content["status"] == "cancelled"


def test_errors_the_sdk_makes_get_our_error_document() -> None:
    from asset_generator.mcp_tools import _as_error_document

    def made(text: str) -> dict[str, Any]:
        return {"content": [{"type": "text", "text": text}], "isError": True}

    refused = _as_error_document(
        made(
            "1 validation error for generate_imageArguments\nsteps\n  Input should be a valid "
            "integer For further information visit https://errors.pydantic.dev/2/v/int_type"
        )
    )
    fault = _as_error_document(made("Error executing tool generate_image: boom"))
    ours = _as_error_document(
        {**made('{"error": {"code": "not_found", "message": "no"}}'), "structuredContent": {}}
    )
    for result, code in ((refused, "usage_error"), (fault, "server_error")):
        assert "structuredContent" not in result
        error = json.loads(result["content"][0]["text"])["error"]
        assert error["code"] == code and "https://" not in error["message"]
    assert "structuredContent" not in ours


def test_a_client_cancel_of_a_waiting_run_pipeline_stops_the_whole_run(
    emulator_factory, tmp_path: Path, state_dir: Path
) -> None:
    from conftest import wait_for

    emu = emulator_factory(step_seconds=0.05)
    app = App()
    app.flags.update(api_url=emu.url)
    tools = Tools(app)
    server = build_server(tools)

    async def scenario() -> None:
        async with Client(server) as client, anyio.create_task_group() as group:

            async def run() -> None:
                await client.call_tool(
                    "run_pipeline", {"spec": SPEC, "output_dir": str(tmp_path), "steps": 300}
                )

            group.start_soon(run)
            with anyio.fail_after(20):
                while not generation_requests(emu):
                    await anyio.sleep(0.02)
            # The client gives up on the call (notifications/cancelled).
            group.cancel_scope.cancel()

    try:
        anyio.run(scenario)
        [pipeline] = read_registry(state_dir)["pipelines"].values()
        assert wait_for(
            lambda: read_registry(state_dir)["pipelines"][pipeline["id"]]["status"] == "cancelled"
        )
        assert emu.interrupted_sessions()
    finally:
        tools.stop_all("the test is over", handed_back=True)
        app.close()


# -- the config's [generate] post-processing ----------------------------------------------------

POSTPROCESSING = "[generate]\ndownscale_width = 32\nstrip_metadata = true\n"


def test_generate_image_applies_the_configs_post_processing(
    emulator: Emulator, tmp_path: Path, config_dir: Path
) -> None:
    from PIL import Image

    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(POSTPROCESSING)
    [made] = call(
        emulator.url,
        (
            "generate_image",
            {"prompt": "x", "width": 512, "height": 512, "output_dir": str(tmp_path)},
        ),
    )
    document = made.structured_content
    assert document is not None and document["status"] == "succeeded", document_of(made)
    [image] = document["images"]
    # The emulator draws 512 px at 1/8 scale (64x64); the config downscales it to 32 wide.
    assert (image["width"], image["height"]) == (32, 32)
    with Image.open(image["path"]) as saved:
        assert saved.size == (32, 32)
        assert "parameters" not in saved.info


def test_run_pipeline_after_the_command_on_the_same_spec_regenerates_nothing(
    cli: Any, emulator: Emulator, workdir: Path, config_dir: Path
) -> None:
    from PIL import Image

    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(POSTPROCESSING)
    spec_path = workdir / "spec.yaml"
    spec_path.write_text(json.dumps(SPEC))
    first = cli("pipeline", "spec.yaml", "-o", "out", "--base-seed", "3", "--width", "512")
    assert first.code == 0, first.stderr
    made = workdir / "out/characters/mage.png"
    with Image.open(made) as image:
        assert image.size == (32, 32)
    before = made.stat().st_mtime_ns
    emulator.reset_log()
    [again] = call(
        emulator.url,
        (
            "run_pipeline",
            {"spec": str(spec_path), "output_dir": str(workdir / "out"), "width": 512},
        ),
    )
    document = again.structured_content
    assert document is not None, document_of(again)
    assert document["summary"]["skipped"] == 3 and document["status"] == "succeeded", document
    assert generation_requests(emulator) == []
    assert made.stat().st_mtime_ns == before


def test_an_image_above_pillows_pixel_limit_keeps_its_size_and_gets_no_preview(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from asset_generator.agent.results import image_size, thumbnail

    # As a 16384x16384 image is for Pillow's default limit: Image.open raises
    # DecompressionBombError (twice the limit), after the file was saved.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    [made] = call(
        emulator.url,
        (
            "generate_image",
            {"prompt": "x", "width": 512, "height": 512, "output_dir": str(tmp_path)},
        ),
    )
    document = made.structured_content
    assert document is not None and document["status"] == "succeeded", document_of(made)
    # No preview: the result is the document alone.
    assert [c.type for c in made.content] == ["text"]
    path = Path(document["images"][0]["path"])
    assert image_size(path) == (64, 64)
    assert thumbnail(path) is None
    [again] = call(emulator.url, ("get_images", {"generation_id": document["generation_id"]}))
    shown = again.structured_content
    assert shown is not None, document_of(again)
    assert (shown["images"][0]["width"], shown["images"][0]["height"]) == (64, 64)
    assert shown["previews"] == 0 and [c.type for c in again.content] == ["text"]


def test_a_failure_after_every_image_was_saved_leaves_the_generation_succeeded(
    emulator_factory, tmp_path: Path, state_dir: Path
) -> None:
    from asset_generator.emulator import Fault, FaultPoint

    def garbage_after_the_images(point: FaultPoint) -> Fault | None:
        message = point.message or {}
        if point.transport == "ws" and (
            "socket_intention" in message or "discard_indices" in message
        ):
            return Fault(replace_message="{not json")
        return None

    emu = emulator_factory(faults=garbage_after_the_images)
    [made] = call(emu.url, ("generate_image", {"prompt": "x", "output_dir": str(tmp_path)}))
    # The stream broke, as `generate image` reports it; the one image is saved all the same.
    assert "not JSON" in error_of(made)["message"]
    [image] = document_of(made)["images"]
    assert Path(image["path"]).is_file()
    # Not re-marked failed "...; stopped on the server": the record says what `generate` says.
    [record] = read_registry(state_dir)["generations"].values()
    assert record["status"] == "succeeded" and record["error"] is None, record


def test_workers_never_import_from_the_servers_working_directory(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client may start the server anywhere, a checkout or a project with a yaml.py included.
    started = tmp_path / "somewhere"
    for name in ("asset_generator/__init__.py", "yaml.py"):
        (started / name).parent.mkdir(parents=True, exist_ok=True)
        (started / name).write_text("raise SystemExit('imported from the working directory')\n")
    monkeypatch.chdir(started)
    made, ran = call(
        emulator.url,
        ("generate_image", {"prompt": "x", "output_dir": str(tmp_path / "out")}),
        ("run_pipeline", {"spec": SPEC, "output_dir": str(tmp_path / "assets")}),
    )
    assert made.structured_content is not None, document_of(made)
    assert made.structured_content["status"] == "succeeded"
    assert ran.structured_content is not None, document_of(ran)
    assert ran.structured_content["status"] == "succeeded"


def test_the_result_preview_is_made_off_the_event_loop(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from asset_generator import mcp_tools

    began: list[float] = []

    def slow_thumbnail(path: Any, pixels: int = 256) -> None:
        began.append(time.monotonic())
        time.sleep(1.5)

    monkeypatch.setattr(mcp_tools, "thumbnail", slow_thumbnail)
    app = App()
    app.flags.update(api_url=emulator.url)
    tools = Tools(app)
    server = build_server(tools)
    ticks: list[float] = []

    async def scenario() -> None:
        async with Client(server) as client, anyio.create_task_group() as group:

            async def tick() -> None:
                while True:
                    ticks.append(time.monotonic())
                    await anyio.sleep(0.05)

            group.start_soon(tick)
            made = await client.call_tool(
                "generate_image", {"prompt": "x", "output_dir": str(tmp_path)}
            )
            assert made.structured_content["status"] == "succeeded"
            group.cancel_scope.cancel()

    try:
        anyio.run(scenario)
    finally:
        tools.stop_all("the test is over", handed_back=True)
        app.close()
    [start] = began
    # Other calls (a status poll, a cancel) are served while a preview is being made.
    assert any(start + 0.3 < t < start + 1.2 for t in ticks)
