"""Fast checks of the MCP tools through the SDK's in-memory client (one process, real emulator)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import read_registry

from asset_generator.emulator import Emulator

pytest.importorskip("mcp")
from mcp import Client

from asset_generator.cli.app import App
from asset_generator.mcp_tools import Tools, build_server


def call(url: str, *calls: tuple[str, dict[str, Any]], **flags: Any) -> list[Any]:
    """Run tool calls in order on a fresh server over ``url``; return their results."""
    app = App()
    app.flags.update(api_url=url, **flags)
    server = build_server(Tools(app))
    results: list[Any] = []

    async def scenario() -> None:
        async with Client(server) as client:
            for name, arguments in calls:
                results.append(await client.call_tool(name, arguments))

    try:
        anyio.run(scenario)
    finally:
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
    sessions = [r["session_id"] for r in read_registry(state_dir)["generations"].values()]
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
