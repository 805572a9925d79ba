"""Fast checks of the MCP tools through the SDK's in-memory client (one process, real emulator)."""

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

from asset_generator.cli.app import App
from asset_generator.mcp_tools import Tools, build_server


def call(url: str, *calls: tuple[str, dict[str, Any]], **flags: Any) -> list[Any]:
    """Run tool calls in order on a fresh server over ``url``; return their results."""
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
        # As the mcp command does: no generation outlives the server (nor its HTTP client).
        tools.stop_all("the test is over")
        for job in tools.jobs.values():
            job.done.wait(10)
        app.close()
    return results


def error_of(result: Any) -> dict[str, str]:
    assert result.is_error is True
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content["error"]


def test_bad_arguments_and_unknown_tools_are_usage_errors(emulator: Emulator) -> None:
    small, missing, unknown = call(
        emulator.url,
        ("generate_image", {"prompt": "x", "width": 3}),
        ("generate_image", {}),
        ("paint", {}),
    )
    assert error_of(small)["code"] == "usage_error" and "width" in error_of(small)["message"]
    assert "https://" not in error_of(small)["message"]
    assert error_of(missing)["code"] == "usage_error" and "prompt" in error_of(missing)["message"]
    assert error_of(unknown)["code"] == "usage_error"
    assert emulator.requests == []


def test_an_unusable_output_dir_costs_no_request(emulator: Emulator, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    [in_the_way] = call(
        emulator.url, ("generate_image", {"prompt": "x", "output_dir": str(blocker)})
    )
    assert error_of(in_the_way)["code"] == "file_error"
    assert "not a directory" in error_of(in_the_way)["message"]
    assert emulator.requests == []


def test_status_of_unknown_or_other_servers_generation_is_not_found(
    emulator_factory, tmp_path: Path
) -> None:
    one, other = emulator_factory(), emulator_factory()
    [made] = call(one.url, ("generate_image", {"prompt": "x", "output_dir": str(tmp_path)}))
    generation_id = made.structured_content["generation_id"]
    mine, elsewhere, unknown, cancel_elsewhere = call(
        other.url,
        ("generation_status", {}),
        ("generation_status", {"generation_id": generation_id}),
        ("generation_status", {"generation_id": "gen_missing"}),
        ("cancel_generation", {"generation_id": generation_id}),
    )
    assert mine.structured_content["generations"] == []
    assert error_of(elsewhere)["code"] == "not_found"
    assert error_of(unknown)["code"] == "not_found"
    assert error_of(cancel_elsewhere)["code"] == "not_found"


def test_no_secret_or_session_id_in_results_or_logs(
    emulator_factory, tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
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
    shown = capsys.readouterr()
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
    assert failed.structured_content["status"] == "failed"
    assert failed.structured_content["images"] == []


def test_status_of_one_generation_has_its_state_at_the_top(
    emulator: Emulator, tmp_path: Path
) -> None:
    [made] = call(emulator.url, ("generate_image", {"prompt": "x", "output_dir": str(tmp_path)}))
    generation_id = made.structured_content["generation_id"]
    [shown] = call(emulator.url, ("generation_status", {"generation_id": generation_id}))
    document = shown.structured_content
    # An agent asking about one generation reads its state where generate_image puts it.
    assert document["generation_id"] == generation_id
    assert document["status"] == "succeeded" and document["progress"] == 100
    # Seen from another process: path, size and the seed read back from the file.
    assert document["images"] == made.structured_content["images"]
    assert document["generation"]["id"] == generation_id
    assert document["generations"] == [document["generation"]]


def test_server_failures_say_whether_the_server_answered(emulator_factory) -> None:
    emu = emulator_factory(accounts=True)
    [down] = call("http://127.0.0.1:9", ("server_status", {}))
    [refused] = call(emu.url, ("server_status", {}), api_key="not-a-token")
    # The same keys as `status --format json` puts next to its error.
    assert error_of(down)["code"] == "connection_failed"
    assert down.structured_content["reachable"] is False
    assert down.structured_content["server"] == "http://127.0.0.1:9"
    assert error_of(refused)["code"] == "auth_failed"
    assert refused.structured_content["reachable"] is True


def test_a_waiting_call_cancelled_elsewhere_says_so_once(emulator_factory, tmp_path: Path) -> None:
    emu = emulator_factory(step_seconds=0.05)
    app = App()
    app.flags.update(api_url=emu.url)
    server = build_server(Tools(app))
    results: dict[str, Any] = {}

    async def scenario() -> None:
        async with Client(server) as client, anyio.create_task_group() as group:

            async def wait_for_it() -> None:
                results["waited"] = await client.call_tool(
                    "generate_image", {"prompt": "long", "steps": 400, "output_dir": str(tmp_path)}
                )

            group.start_soon(wait_for_it)
            with anyio.fail_after(20):
                while not emu.calls("GenerateText2ImageWS") and not emu.calls("GenerateText2Image"):
                    await anyio.sleep(0.02)
            results["cancel"] = await client.call_tool("cancel_generation", {})

    try:
        anyio.run(scenario)
    finally:
        app.close()
    assert results["cancel"].structured_content["was_active"] is True
    error = error_of(results["waited"])
    assert error["code"] == "cancelled"
    message = error["message"]
    assert message.startswith("cancelled: ") and message.count("cancelled") <= 2
    assert "request failed" not in message
    # It names who can have done it.
    assert "cancel_generation" in message or "another client" in message
    assert results["waited"].structured_content["status"] == "cancelled"


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
