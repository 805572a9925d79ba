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
    for other in ("generate", "status", "models", "config", "completion", "mcp"):
        assert f"asset_generator.cli.{other}" not in loaded


def test_cancel_with_nothing_active_loads_no_protocol_code() -> None:
    # No request is made, so neither the seam's vocabulary of a run nor an adapter or the HTTP
    # stack has any use (they were a third of its start-up beyond click's).
    loaded = set(loaded_modules("cancel", "-q"))
    assert "asset_generator.jobs" in loaded
    assert not loaded & {
        "asset_generator.server.types",
        "asset_generator.swarm",
        "asset_generator.comfy",
        "asset_generator.transport",
        "httpx",
    }


def test_a_network_command_skips_httpx_cli_and_websockets(emulator) -> None:
    # httpx's own CLI would pull in rich.progress, rich.syntax and pygments; only generate
    # needs the WebSocket stack.
    loaded = set(
        loaded_modules("cancel", "--all", "-q", env={"ASSET_GENERATOR_API_URL": emulator.url})
    )
    assert "httpx" in loaded
    assert not loaded & {"pygments", "rich.progress", "rich.syntax", "httpx_ws"}


# -- the image libraries (issue 12) -----------------------------------------------------------

IMAGE_LIBRARIES = {"PIL", "vtracer"}

# Completion exits through SystemExit, so the probe reports the modules on the way out.
EXIT_PROBE = """
import sys
from asset_generator.cli import main
try:
    main()
finally:
    print("LOADED", ",".join(sorted(sys.modules)), file=sys.stderr)
"""


def test_help_completion_and_cancel_never_import_the_image_libraries() -> None:
    for args in (["--help"], ["crop", "--help"], ["convert", "svg", "--help"], ["cancel", "-q"]):
        assert not set(loaded_modules(*args)) & IMAGE_LIBRARIES, args
    done = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "_ASSET_GENERATOR_COMPLETE": "bash_complete",
            "COMP_WORDS": "asset-generator cr",
            "COMP_CWORD": "1",
        },
    )
    assert "crop" in done.stdout
    line = [x for x in done.stderr.splitlines() if x.startswith("LOADED ")][-1]
    assert not set(line.removeprefix("LOADED ").split(",")) & IMAGE_LIBRARIES


def test_generate_imports_pillow_only_to_post_process(emulator, tmp_path) -> None:
    env = {"ASSET_GENERATOR_API_URL": emulator.url}
    plain = loaded_modules("generate", "image", "-p", "x", "-o", str(tmp_path), env=env)
    assert "asset_generator.generation" in plain
    assert not set(plain) & IMAGE_LIBRARIES
    cropped = loaded_modules(
        "generate", "image", "-p", "x", "-o", str(tmp_path), "--auto-crop", env=env
    )
    assert "PIL" in cropped
    assert "vtracer" not in cropped


def test_only_the_mcp_command_imports_the_mcp_sdk(emulator) -> None:
    # The SDK (pydantic, starlette, anyio, ...) costs a lot at start-up and is an optional extra.
    heavy = {"mcp", "pydantic", "asset_generator.mcp_tools", "asset_generator.cli.mcp"}
    for args in (["--help"], ["mcp", "--help"], ["cancel", "-q"], ["status", "-q"]):
        env = {"ASSET_GENERATOR_API_URL": emulator.url}
        loaded = set(loaded_modules(*args, env=env))
        assert not loaded & (heavy - ({"asset_generator.cli.mcp"} if args[0] == "mcp" else set()))


def test_live_displays_are_imported_only_when_drawn(emulator, tmp_path) -> None:
    # `status` in a script and `generate --help` draw nothing live: no rich.progress/rich.live.
    env = {"ASSET_GENERATOR_API_URL": emulator.url}
    status = set(loaded_modules("status", env=env))
    assert "asset_generator.cli.status" in status
    assert not status & {"rich.progress", "rich.live", "asset_generator.steps"}
    helped = set(loaded_modules("generate", "image", "--help"))
    assert not helped & {"rich.progress", "rich.live", "httpx", "httpx_ws", "PIL"}


def test_pipeline_imports_yaml_only_when_it_runs(tmp_path) -> None:
    assert "yaml" not in loaded_modules("pipeline", "--help")
    assert "yaml" not in loaded_modules("cancel", "-q")
    spec = tmp_path / "s.yaml"
    spec.write_text("assets:\n  - {name: g, assets: [{id: a, prompt: p}]}\n")
    loaded = set(loaded_modules("pipeline", str(spec), "--dry-run", "-q"))
    assert "yaml" in loaded
    # A dry run sends nothing, so it needs neither the HTTP nor the WebSocket stack.
    assert not loaded & {"httpx", "httpx_ws", "rich.progress"}
    # The post-processing options on `pipeline` do not load Pillow for --help.
    assert "PIL" not in set(loaded_modules("pipeline", "--help"))
