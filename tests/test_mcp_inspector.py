"""``asset-generator mcp`` through a client nobody here wrote: the MCP Inspector's CLI.

The Inspector is built on the TypeScript SDK, which checks every result's structured content
against the tool's outputSchema, error results included, and refuses the call when it does
not match; the Python SDK does not, which is how 20 of 21 error results once went unnoticed
(issue 21). The Inspector also starts one server process per call, so a generation started
with ``wait: false`` must outlive the process that started it.

Needs ``npx`` (Node 20 runs 0.15.0) and the npm registry or cache; skipped otherwise. CI
(``.ci/run``) installs no Node, so these run where a developer has npx and the registry or a
cache. ``ASSET_GENERATOR_TEST_INSPECTOR=required`` makes a missing Inspector a failure instead
of a skip (nothing sets it today: set it where the Inspector must not go untested).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import PROGRAM, read_registry, wait_for

from asset_generator.emulator import Emulator

pytest.importorskip("mcp")

INSPECTOR = "@modelcontextprotocol/inspector@0.15.0"
REQUIRED = os.environ.get("ASSET_GENERATOR_TEST_INSPECTOR") == "required"


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"the MCP Inspector is required here: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def npm_cache() -> dict[str, str]:
    """The user's npm cache, named outright: each test has a HOME of its own (conftest), and
    npx would otherwise fetch the Inspector again for every test."""
    npm = shutil.which("npm")
    if npm is None:
        return {}
    done = subprocess.run(
        [npm, "config", "get", "cache"], capture_output=True, text=True, timeout=60
    )
    cache = done.stdout.strip()
    return {"npm_config_cache": cache} if done.returncode == 0 and cache else {}


@pytest.fixture(scope="module")
def npx(npm_cache: dict[str, str]) -> str:
    """npx with the Inspector in its cache (the first run downloads it, ~30 s)."""
    found = shutil.which("npx")
    if found is None:
        _unavailable("npx is not on PATH (Node.js 20 runs the Inspector 0.15)")
    try:
        done = subprocess.run(
            [found, "--yes", INSPECTOR, "--cli", "--help"],
            env={**os.environ, **npm_cache},
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"npx could not fetch {INSPECTOR} within 300 s")
    if done.returncode != 0 or "--cli" not in done.stdout:
        _unavailable(f"npx cannot run {INSPECTOR}: {done.stderr.strip()[-300:]}")
    return found


@pytest.fixture(scope="module")
def inspector_cli(npx: str, npm_cache: dict[str, str]) -> list[str]:
    """What `npx @modelcontextprotocol/inspector --cli` runs (node on inspector-cli's
    build/index.js), called directly: the same TypeScript client, without starting npx and
    another Node process for every call."""
    done = subprocess.run(
        [npx, "--yes", "-p", INSPECTOR, "-c", "command -v mcp-inspector-cli"],
        env={**os.environ, **npm_cache},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    path = done.stdout.strip()
    node = shutil.which("node")
    if done.returncode != 0 or not path or node is None:
        _unavailable(f"no mcp-inspector-cli in {INSPECTOR}: {done.stderr.strip()[-300:]}")
    entry = Path(os.path.realpath(path)).with_name("index.js")
    if not entry.is_file():
        _unavailable(f"{INSPECTOR} has no {entry}")
    return [node, str(entry)]


class Inspector:
    """One Inspector CLI run per call, as a user types it: one server process each time."""

    def __init__(self, program: list[str], url: str, isolated: Path, cwd: Path) -> None:
        self.program = program
        self.cwd = cwd
        # What a client's `env` must carry: the server gets nothing else from a desktop app.
        self.env = {
            "ASSET_GENERATOR_API_URL": url,
            "XDG_STATE_HOME": str(isolated / "xdg_state_home"),
            "XDG_CONFIG_HOME": str(isolated / "xdg_config_home"),
        }

    def run(self, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **({"ASSET_GENERATOR_API_URL": url} if url else {})}
        base = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_GENERATOR_")}
        return subprocess.run(
            [*self.program, *PROGRAM, "mcp", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            env={**base, **env},
        )

    def call(self, tool: str, *pairs: str, url: str | None = None) -> dict[str, Any]:
        """tools/call through the TypeScript SDK; a result it refused fails the test."""
        args = ["--method", "tools/call", "--tool-name", tool]
        for pair in pairs:
            args += ["--tool-arg", pair]
        done = self.run(*args, url=url)
        assert done.returncode == 0, f"the Inspector refused {tool}: {done.stderr[-2000:]}"
        return json.loads(done.stdout)


@pytest.fixture
def inspector(
    inspector_cli: list[str], emulator: Emulator, isolated: Path, workdir: Path
) -> Inspector:
    return Inspector(inspector_cli, emulator.url, isolated, workdir)


def test_the_issues_reproduction_through_npx_now_passes(
    npx: str,
    npm_cache: dict[str, str],
    emulator: Emulator,
    isolated: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Word for word the call of issue 21, with -e for the server's environment."""
    for name, value in npm_cache.items():
        monkeypatch.setenv(name, value)
    inspector = Inspector([npx, "--yes", INSPECTOR, "--cli"], emulator.url, isolated, workdir)
    pairs = [item for k, v in inspector.env.items() for item in ("-e", f"{k}={v}")]
    inspector.program += pairs
    result = inspector.call("generation_status", "generation_id=gen_nope")
    assert error_of(result)["code"] == "not_found"


def error_of(result: dict[str, Any]) -> dict[str, str]:
    assert result["isError"] is True and "structuredContent" not in result, result
    return json.loads(result["content"][0]["text"])["error"]


def test_success_and_every_kind_of_error_pass_the_typescript_sdk(
    inspector: Inspector, emulator: Emulator, workdir: Path
) -> None:
    listed = json.loads(inspector.run("--method", "tools/list").stdout)
    assert {t["name"] for t in listed["tools"]} >= {"generate_image", "run_pipeline", "get_images"}
    made = inspector.call(
        "generate_image", "prompt=a red cube", "steps=3", "sampler=euler", "output_dir=out"
    )
    assert made["isError"] is False
    document = made["structuredContent"]
    assert document["status"] == "succeeded"
    [image] = document["images"]
    assert Path(image["path"]).parent == workdir / "out"
    generation_id = document["generation_id"]

    # (tool, arguments, another server URL, the error code expected or None for a success)
    calls: list[tuple[str, tuple[str, ...], str | None, str | None]] = [
        ("generation_status", ("generation_id=gen_nope",), None, "not_found"),
        ("get_images", ("generation_id=gen_nope",), None, "not_found"),
        ("cancel_generation", (f"generation_id={generation_id}", "all=true"), None, "usage_error"),
        ("generate_image", ("prompt=x", "width=3"), None, "usage_error"),
        ("generate_image", ("prompt=x", "samplr=euler"), None, "usage_error"),
        (
            "generate_image",
            ("prompt=x", 'workflow={"1": {"class_type": "SaveImage", "inputs": {}}}'),
            None,
            "usage_error",
        ),
        ("run_pipeline", ("spec=missing.yaml",), None, "file_error"),
        ("run_pipeline", ('spec={"groups": []}',), None, "bad_spec"),
        ("server_status", (), "http://127.0.0.1:9", "connection_failed"),
        ("generate_image", ("prompt=x",), "http://127.0.0.1:9", "connection_failed"),
        ("generation_status", (f"generation_id={generation_id}",), None, None),
        ("get_images", (f"generation_id={generation_id}",), None, None),
        ("cancel_generation", (f"generation_id={generation_id}",), None, None),
        ("list_models", ("depth=1",), None, None),
        ("server_status", (), None, None),
    ]

    def one(item: tuple[str, tuple[str, ...], str | None, str | None]) -> tuple[str, str | None]:
        tool, pairs, url, _ = item
        result = inspector.call(tool, *pairs, url=url)
        return tool, error_of(result)["code"] if result["isError"] else None

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(one, calls))
    assert codes == [(tool, code) for tool, _, _, code in calls]


def test_work_returned_by_one_server_process_is_followed_by_the_next(
    inspector: Inspector, emulator_factory: Callable[..., Emulator], state_dir: Path
) -> None:
    emu = emulator_factory(step_seconds=0.02)
    started = inspector.call(
        "generate_image", "prompt=later", "steps=60", "wait=false", url=emu.url
    )
    generation_id = started["structuredContent"]["generation_id"]
    # The process that started it has exited; the generation goes on and finishes.
    assert wait_for(
        lambda: read_registry(state_dir)["generations"][generation_id]["status"] == "succeeded",
        timeout=30,
    )
    shown = inspector.call("generation_status", f"generation_id={generation_id}", url=emu.url)
    assert shown["structuredContent"]["status"] == "succeeded"
    assert emu.interrupted_sessions() == []
    images = inspector.call("get_images", f"generation_id={generation_id}", url=emu.url)
    [image] = images["structuredContent"]["images"]
    assert image["exists"] is True
    assert [c["type"] for c in images["content"]] == ["text", "image"]
