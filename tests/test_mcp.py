"""``asset-generator mcp`` driven through the SDK's own stdio client, against the emulator.

Every tools/call result is checked against its tool's outputSchema (``mcpcheck``), error
results included, as the TypeScript SDK checks them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import (
    PROGRAM,
    Runner,
    assert_install_hint,
    read_registry,
    session_id_of,
    wait_for,
)

from asset_generator.emulator import Emulator

mcp = pytest.importorskip("mcp")
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcpcheck import check_result, checked_results  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("checked_results")

TOOLS = {
    "generate_image",
    "run_pipeline",
    "generation_status",
    "cancel_generation",
    "get_images",
    "list_models",
    "server_status",
}


def params(url: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return StdioServerParameters(
        command=PROGRAM[0],
        args=[*PROGRAM[1:], "mcp", *args],
        env={**os.environ, "ASSET_GENERATOR_API_URL": url, **(env or {})},
        cwd=str(cwd),
    )


@asynccontextmanager
async def connected(url: str, cwd: Path, *args: str, **kw: Any) -> AsyncIterator[ClientSession]:
    async with (
        stdio_client(params(url, cwd, *args, **kw)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    anyio.run(scenario)


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)
        return True
    return predicate()


def record_of(state_dir: Path, generation_id: str) -> dict[str, Any]:
    return read_registry(state_dir)["generations"][generation_id]


def text_json(result: Any) -> Any:
    return json.loads(result.content[0].text)


def error_of(result: Any) -> dict[str, str]:
    assert result.is_error is True and result.structured_content is None
    return text_json(result)["error"]


def test_tools_have_schemas_annotations_and_descriptions(emulator: Emulator, workdir) -> None:
    async def scenario() -> None:
        async with connected(emulator.url, workdir) as session:
            listed = {tool.name: tool for tool in (await session.list_tools()).tools}
            assert set(listed) == TOOLS
            for tool in listed.values():
                assert tool.input_schema["type"] == "object"
                assert tool.output_schema and tool.output_schema["type"] == "object"
                assert tool.description and len(tool.description) > 40
            generate = listed["generate_image"]
            # A ComfyUI workflow can do without a prompt; the tool says so when one is needed.
            assert "required" not in generate.input_schema
            assert {
                "wait", "timeout_s", "loras", "output_dir", "sampler", "scheduler", "params",
                "workflow", "set",
            } <= set(generate.input_schema["properties"])  # fmt: skip
            for name in ("generate_image", "run_pipeline"):
                described = listed[name].description
                assert "timeout_s" in described and "wait: false" in described
                assert "generation_status" in described and "goes on" in described
            assert {"generation_id", "status", "images"} <= set(
                generate.output_schema["properties"]
            )
            for name in ("generation_status", "list_models", "server_status"):
                assert listed[name].annotations.read_only_hint is True
            cancel = listed["cancel_generation"].annotations
            # Idempotent as cli-contract §5 says (by id); the description warns that a retry
            # without an id stops the next generation.
            assert cancel.destructive_hint is True and cancel.idempotent_hint is True
            assert "retry with the id" in listed["cancel_generation"].description
            assert "every client" in listed["cancel_generation"].description
            assert {"generation_id", "feature", "all"} <= set(
                listed["cancel_generation"].input_schema["properties"]
            )
        # Listing tools sends nothing to the server.
        assert emulator.requests == []

    run(scenario)


def test_generate_reports_progress_and_saves_the_image(
    emulator: Emulator, workdir, state_dir
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def scenario() -> None:
        async with connected(emulator.url, workdir) as session:
            result = await session.call_tool(
                "generate_image",
                {"prompt": "a red cube", "steps": 20, "output_dir": "out"},
                progress_callback=on_progress,
            )
            assert result.is_error is False
            document = result.structured_content
            assert text_json(result) == document
            assert document["status"] == "succeeded"
            [image] = document["images"]
            path = Path(image["path"])
            assert path.is_absolute() and path.parent == workdir / "out" and path.is_file()
            assert (image["width"], image["height"]) == (64, 64)
            assert isinstance(image["seed"], int)
            assert [c.type for c in result.content] == ["text", "image"]
            assert result.content[1].mime_type == "image/png"
            record = record_of(state_dir, document["generation_id"])
            assert record["status"] == "succeeded" and record["owner"] == "mcp"

    run(scenario)
    assert progress and all(total == 100 for _, total, _ in progress)
    values = [value for value, _, _ in progress]
    assert values == sorted(values) and values[-1] == 100
    # Real WebSocket progress, not only a start and an end.
    assert any(0 < value < 100 for value in values)
    [generate] = [c for c in emulator.requests if c.route == "generatetext2imagews"]
    assert generate.body["steps"] == 20


def test_a_short_run_still_reports_each_step_and_progress_only_grows(
    emulator_factory, workdir
) -> None:
    # A run shorter than the relay's interval: its steps must not be lost in between.
    emu = emulator_factory(step_seconds=0.002)
    values: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        values.append(value)

    async def scenario() -> None:
        async with connected(emu.url, workdir) as session:
            result = await session.call_tool(
                "generate_image", {"prompt": "quick", "steps": 8}, progress_callback=on_progress
            )
            assert result.structured_content["status"] == "succeeded"

    run(scenario)
    # MCP: each notification's progress is larger than the one before.
    assert values == sorted(set(values)) and values[-1] == 100
    assert len([v for v in values if 0 < v < 100]) >= 4


def test_client_cancel_interrupts_the_generation_session(
    emulator_factory, workdir, state_dir
) -> None:
    emu = emulator_factory(step_seconds=0.05)
    started = anyio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if value > 0:
            started.set()

    async def scenario() -> None:
        async with connected(emu.url, workdir) as session:
            async with anyio.create_task_group() as group:

                async def call() -> None:
                    await session.call_tool(
                        "generate_image",
                        {"prompt": "slow", "steps": 400},
                        progress_callback=on_progress,
                    )

                group.start_soon(call)
                with anyio.fail_after(20):
                    await started.wait()
                group.cancel_scope.cancel()
            [record] = read_registry(state_dir)["generations"].values()
            assert await until(lambda: session_id_of(record) in emu.interrupted_sessions())
            assert await until(lambda: record_of(state_dir, record["id"])["status"] == "cancelled")
            # The server goes on serving after a cancelled call.
            status = await session.call_tool("generation_status", {"generation_id": record["id"]})
            assert status.structured_content["generation"]["status"] == "cancelled"

    run(scenario)
    calls = [c for c in emu.calls("InterruptAll")]
    assert calls and all(c.body.get("other_sessions") is False for c in calls)


def test_cancel_generation_finished_unknown_and_all(emulator: Emulator, workdir) -> None:
    async def scenario() -> None:
        async with connected(emulator.url, workdir) as session:
            done = await session.call_tool("generate_image", {"prompt": "quick", "steps": 2})
            generation_id = done.structured_content["generation_id"]
            for _ in range(2):  # idempotent
                again = await session.call_tool(
                    "cancel_generation", {"generation_id": generation_id}
                )
                assert again.is_error is False
                body = again.structured_content
                assert body["was_active"] is False and body["cancelled"] == []
                assert body["generation"]["status"] == "succeeded"
            via_feature = await session.call_tool("cancel_generation", {"feature": generation_id})
            assert via_feature.structured_content["generation"]["id"] == generation_id

            unknown = await session.call_tool("cancel_generation", {"generation_id": "gen_0000"})
            assert error_of(unknown)["code"] == "not_found"

            nothing = await session.call_tool("cancel_generation", {})
            assert nothing.structured_content["was_active"] is False
            said = nothing.structured_content["message"]
            assert said.startswith("no active generation")
            # The reach of all, in the tool's words (an agent has no `cancel --all` to run).
            assert "cancel_generation with all: true" in said and "--all" not in said

            everything = await session.call_tool("cancel_generation", {"all": True})
            assert everything.is_error is False
            assert everything.structured_content["scope"] == "user"

            both = await session.call_tool(
                "cancel_generation", {"all": True, "generation_id": generation_id}
            )
            assert error_of(both)["code"] == "usage_error"

    run(scenario)
    assert [c.body["other_sessions"] for c in emulator.calls("InterruptAll")] == [True]


def test_cli_generation_is_visible_and_cancellable_from_mcp(
    emulator_factory, cli: Runner, workdir, state_dir
) -> None:
    emu = emulator_factory(step_seconds=0.05)
    cli.url = emu.url
    proc = cli.start("generate", "image", "--prompt", "from the terminal", "--steps", "400")
    try:
        assert wait_for(
            lambda: (
                (state_dir / "generations.json").exists()
                and read_registry(state_dir)["generations"] != {}
            )
        )
        [generation_id] = read_registry(state_dir)["generations"]

        async def scenario() -> None:
            async with connected(emu.url, workdir) as session:
                status = await session.call_tool("generation_status", {})
                [shown] = status.structured_content["generations"]
                assert shown["id"] == generation_id and shown["status"] in ("queued", "running")
                assert "owner" not in shown and "session_id" not in shown
                cancelled = await session.call_tool(
                    "cancel_generation", {"generation_id": generation_id}
                )
                body = cancelled.structured_content
                assert body["was_active"] is True
                assert [r["id"] for r in body["cancelled"]] == [generation_id]

        run(scenario)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    # The terminal's generate learns that it was cancelled (its wording is generate's own).
    assert proc.returncode == 1 and "cancelled" in err.splitlines()[-1]
    assert record_of(state_dir, generation_id)["status"] == "cancelled"


def test_mcp_generation_without_waiting_is_stopped_by_cli_cancel(
    emulator_factory, cli: Runner, workdir, state_dir
) -> None:
    emu = emulator_factory(step_seconds=0.05)
    cli.url = emu.url

    async def scenario() -> None:
        async with connected(emu.url, workdir) as session:
            started = await session.call_tool(
                "generate_image", {"prompt": "agent work", "steps": 400, "wait": False}
            )
            assert started.is_error is False
            body = started.structured_content
            assert body["status"] == "queued" and body["images"] == []
            generation_id = body["generation_id"]

            async def state() -> dict[str, Any]:
                result = await session.call_tool(
                    "generation_status", {"generation_id": generation_id}
                )
                return result.structured_content["generation"]

            with anyio.fail_after(20):
                while (await state())["status"] != "running":
                    await anyio.sleep(0.05)
            # A person at a terminal sees it and stops it.
            listed = await anyio.to_thread.run_sync(lambda: cli("status", "-f", "json"))
            [shown] = listed.json()["generations"]
            assert shown["id"] == generation_id and shown["owner"] == "mcp"
            stopped = await anyio.to_thread.run_sync(lambda: cli("cancel", generation_id))
            assert stopped.code == 0, stopped.stderr
            assert stopped.stdout.startswith(f"cancelled {generation_id}")
            session_id = session_id_of(record_of(state_dir, generation_id))
            assert session_id in emu.interrupted_sessions()
            with anyio.fail_after(20):
                while (await state())["status"] != "cancelled":
                    await anyio.sleep(0.05)

    run(scenario)


def test_timeout_returns_the_id_and_the_generation_goes_on(
    emulator_factory, workdir, state_dir
) -> None:
    emu = emulator_factory(step_seconds=0.02)

    async def scenario() -> None:
        async with connected(emu.url, workdir) as session:
            early = await session.call_tool(
                "generate_image", {"prompt": "goes on", "steps": 100, "timeout_s": 0.3}
            )
            body = early.structured_content
            assert early.is_error is False and body["status"] in ("queued", "running")
            generation_id = body["generation_id"]
            assert await until(lambda: record_of(state_dir, generation_id)["status"] == "succeeded")
            late = await session.call_tool("generation_status", {"generation_id": generation_id})
            [path] = late.structured_content["generation"]["images"]
            assert Path(path).is_file()

    run(scenario)
    assert emu.calls("InterruptAll") == []


def test_server_down_the_mcp_server_still_answers(workdir) -> None:
    async def scenario() -> None:
        async with connected("http://127.0.0.1:9", workdir, "--timeout", "2") as session:
            assert {t.name for t in (await session.list_tools()).tools} == TOOLS
            for name, arguments in (
                ("server_status", {}),
                ("list_models", {}),
                ("generate_image", {"prompt": "x"}),
                ("cancel_generation", {"all": True}),
            ):
                result = await session.call_tool(name, arguments)
                error = error_of(result)
                assert error["code"] == "connection_failed", (name, error)
            status = await session.call_tool("generation_status", {})
            assert status.structured_content["generations"] == []

    run(scenario)


def test_missing_extra_names_the_install_command() -> None:
    probe = (
        "import sys; sys.modules['mcp'] = None\n"
        "from asset_generator.cli import run\n"
        "sys.exit(run(sys.argv[1:]))\n"
    )
    for args in (["mcp"], ["-f", "json", "mcp"]):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 1
        [line] = done.stderr.splitlines()
        assert line.startswith(
            "the mcp command needs the MCP SDK (the mcp extra, asset-generator[mcp]): "
        )
        assert_install_hint(line, "mcp")
        assert "Traceback" not in done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "unavailable"


# -- ending the server: raw JSON-RPC over a pipe, to see the exit code and every stdout line ----


class RawServer:
    def __init__(self, url: str, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*PROGRAM, "mcp", *args],
            cwd=cwd,
            env={**os.environ, "ASSET_GENERATOR_API_URL": url},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._next = 0
        self.schemas: dict[str, Any] = {}

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        self.send({"id": self._next, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, self.proc.stderr.read() if self.proc.stderr else ""
            self.lines.append(line)
            message = json.loads(line)
            if message.get("id") == self._next:
                if method == "tools/call":
                    name = params["name"]
                    check_result(name, self.schemas.get(name), message["result"])
                return message

    def initialize(self) -> None:
        from mcp.types import LATEST_PROTOCOL_VERSION

        answer = self.request(
            "initialize",
            {
                "protocolVersion": LATEST_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"},
            },
        )
        assert "result" in answer, answer
        self.send({"method": "notifications/initialized"})
        listed = self.request("tools/list", {})["result"]["tools"]
        self.schemas = {tool["name"]: tool.get("outputSchema") for tool in listed}

    def start_generation(self, state_dir: Path, *, wait: bool) -> str:
        """A long generation, by a call that returns at once or one still waiting for it."""
        arguments = {"prompt": "long", "steps": 60, "wait": wait}
        if not wait:
            answer = self.request("tools/call", {"name": "generate_image", "arguments": arguments})
            return answer["result"]["structuredContent"]["generation_id"]
        self._next += 1
        self.send(
            {
                "id": self._next,
                "method": "tools/call",
                "params": {"name": "generate_image", "arguments": arguments},
            }
        )
        assert wait_for(
            lambda: (
                (state_dir / "generations.json").exists()
                and read_registry(state_dir)["generations"] != {}
            )
        )
        [generation_id] = read_registry(state_dir)["generations"]
        return generation_id

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.lines += out.splitlines(keepends=True)
        return self.proc.returncode, err


@pytest.mark.parametrize(
    ("how", "waiting"),
    [("eof", True), ("sigterm", True), ("eof", False), ("sigterm", False)],
)
def test_ending_the_server_stops_waiting_calls_and_leaves_returned_work_running(
    emulator_factory, workdir, state_dir, how: str, waiting: bool
) -> None:
    """A call still waiting was abandoned by its client: its work is interrupted. Work whose
    id a call returned (wait: false) goes on in its own process and finishes."""
    emu = emulator_factory(step_seconds=0.05)
    server = RawServer(emu.url, workdir, "-v")
    try:
        server.initialize()
        generation_id = server.start_generation(state_dir, wait=waiting)
        session_id = session_id_of(record_of(state_dir, generation_id))
        assert wait_for(lambda: emu.session_status(session_id)["live_gens"] == 1)
        if how == "sigterm":
            server.proc.send_signal(signal.SIGTERM)
            # Its stdin stays open: the signal alone must end it.
            server.proc.wait(timeout=30)
        # communicate() closes stdin: the end of input, for "eof".
        code, err = server.finish()
    finally:
        server.proc.kill()
    assert code == (143 if how == "sigterm" else 0), err
    assert "Traceback" not in err
    # -v logged every exchange, on stderr: stdout carried nothing but the protocol.
    assert session_id not in err
    for line in server.lines:
        assert json.loads(line)["jsonrpc"] == "2.0"
    if waiting:
        assert session_id in emu.interrupted_sessions()
        assert record_of(state_dir, generation_id)["status"] == "cancelled"
        assert "POST /API/InterruptAll" in err
    else:
        assert wait_for(
            lambda: record_of(state_dir, generation_id)["status"] == "succeeded", timeout=30
        )
        assert emu.interrupted_sessions() == []
        [path] = record_of(state_dir, generation_id)["images"]
        assert Path(path).is_file()


@pytest.mark.parametrize(
    "files",
    [
        ["mcp/__init__.py"],  # a package named mcp that is not the SDK
        ["mcp/__init__.py", "mcp/server/__init__.py"],  # an SDK without MCPServer (1.x)
    ],
)
def test_an_unusable_sdk_is_the_missing_extra(
    cli: Runner, tmp_path: Path, files: list[str]
) -> None:
    shadow = tmp_path / "shadow"
    for name in files:
        (shadow / name).parent.mkdir(parents=True, exist_ok=True)
        (shadow / name).write_text("")
    done = cli("-f", "json", "mcp", env={"PYTHONPATH": str(shadow)})
    assert done.code == 1
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert_install_hint(line, "mcp")
    assert done.json()["error"]["code"] == "unavailable"


def test_client_config_names_the_executable_by_its_absolute_path(
    cli: Runner, isolated: Path
) -> None:
    done = cli(
        "--api-url",
        "http://gpu-box:7801",
        "mcp",
        "--client-config",
        env={"ASSET_GENERATOR_API_KEY": "s3cret-token", "ASSET_GENERATOR_SERVER_TYPE": "comfyui"},
    )
    assert done.code == 0, done.stderr
    [entry] = done.json()["mcpServers"].values()
    command = Path(entry["command"])
    # Desktop clients start it without the shell's PATH.
    assert command.is_absolute() and os.access(command, os.X_OK)
    assert entry["args"][-1] == "mcp"
    env = entry["env"]
    assert env["ASSET_GENERATOR_API_URL"] == "http://gpu-box:7801"
    assert env["ASSET_GENERATOR_SERVER_TYPE"] == "comfyui"
    # The shell's locations go along, or the server would use another registry.
    assert env["XDG_STATE_HOME"] == str(isolated / "xdg_state_home")
    # A secret is never printed; a note says where it must go.
    assert "s3cret-token" not in done.stdout + done.stderr
    assert "ASSET_GENERATOR_API_KEY" in done.stderr
