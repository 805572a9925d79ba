"""Commands are imported only when used; the root group's summary of them cannot drift."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from asset_generator.cli import COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_summary_is_the_commands_own_first_sentence(name: str) -> None:
    module_name, summary = COMMANDS[name]
    command = importlib.import_module(module_name).command
    assert command.name == name
    assert command.get_short_help_str(limit=10**6) == summary, (
        f"update COMMANDS[{name!r}] in asset_generator/cli/__init__.py"
    )


PROBE = """
import sys
from asset_generator.cli import run
code = run(sys.argv[1:])
loaded = sorted(sys.modules)
print("LOADED", ",".join(loaded), file=sys.stderr)
"""


def loaded_modules(*args: str, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    line = [x for x in done.stderr.splitlines() if x.startswith("LOADED ")][-1]
    return [m for m in line.removeprefix("LOADED ").split(",") if m]


def commands_loaded(*args: str) -> set[str]:
    return {m for m in loaded_modules(*args) if m.startswith("asset_generator.cli.")}


def test_help_imports_no_command_module() -> None:
    allowed = {"asset_generator.cli.app", "asset_generator.cli.output"}
    assert commands_loaded("--help") <= allowed


def test_a_command_imports_only_itself() -> None:
    loaded = commands_loaded("cancel", "-q")
    assert "asset_generator.cli.cancel" in loaded
    for other in ("generate", "status", "models", "config", "completion"):
        assert f"asset_generator.cli.{other}" not in loaded


def test_a_network_command_skips_httpx_cli_and_websockets(emulator) -> None:
    # httpx's own CLI would pull in rich.progress, rich.syntax and pygments; only generate
    # needs the WebSocket stack.
    loaded = set(
        loaded_modules("cancel", "--all", "-q", env={"ASSET_GENERATOR_API_URL": emulator.url})
    )
    assert "httpx" in loaded
    assert not loaded & {"pygments", "rich.progress", "rich.syntax", "httpx_ws"}


def test_pipeline_imports_yaml_only_when_it_runs(tmp_path) -> None:
    assert "yaml" not in loaded_modules("pipeline", "--help")
    assert "yaml" not in loaded_modules("cancel", "-q")
    spec = tmp_path / "s.yaml"
    spec.write_text("assets:\n  - {name: g, assets: [{id: a, prompt: p}]}\n")
    loaded = set(loaded_modules("pipeline", str(spec), "--dry-run", "-q"))
    assert "yaml" in loaded
    # A dry run sends nothing, so it needs neither the HTTP nor the WebSocket stack.
    assert not loaded & {"httpx", "httpx_ws", "rich.progress"}
