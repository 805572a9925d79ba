"""Commands are imported only when used; the root group's summary of them cannot drift."""

from __future__ import annotations

import importlib
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
loaded = sorted(m for m in sys.modules if m.startswith("asset_generator.cli."))
print("LOADED", ",".join(loaded), file=sys.stderr)
"""


def loaded_modules(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60
    )
    line = [x for x in done.stderr.splitlines() if x.startswith("LOADED ")][-1]
    return [m for m in line.removeprefix("LOADED ").split(",") if m]


def test_help_imports_no_command_module() -> None:
    allowed = {"asset_generator.cli.app", "asset_generator.cli.output"}
    assert set(loaded_modules("--help")) <= allowed


def test_a_command_imports_only_itself() -> None:
    loaded = loaded_modules("cancel", "-q")
    assert "asset_generator.cli.cancel" in loaded
    for other in ("generate", "status", "models", "config", "completion"):
        assert f"asset_generator.cli.{other}" not in loaded
