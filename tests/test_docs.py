"""Docs that cannot drift: docs/reference.md and completions/ match the program; the README
stays a newcomer's page and runs the same test command as CI."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from asset_generator import settings
from asset_generator.cli import reference

ROOT = Path(__file__).resolve().parents[1]
STALE = f"is out of date with the program: run `{reference.REGENERATE}` and commit the result"


def test_reference_and_completions_match_the_program() -> None:
    for path, content in reference.rendered(ROOT).items():
        assert path.exists(), f"{path.relative_to(ROOT)} is missing: run `{reference.REGENERATE}`"
        assert path.read_text(encoding="utf-8") == content, f"{path.relative_to(ROOT)} {STALE}"


def test_the_generator_checks_from_the_command_line(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "asset_generator.cli.reference", "--check", "--root", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (ok.returncode, ok.stderr) == (0, ""), ok.stderr
    # A checkout with a stale reference: --check fails and names the fix, --write repairs it.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "reference.md").write_text("STALE TEXT\n")
    assert reference.main(["--check", "--root", str(tmp_path)]) == 1
    assert reference.main(["--write", "--root", str(tmp_path)]) == 0
    assert reference.stale(tmp_path) == []
    text = (tmp_path / "docs" / "reference.md").read_text()
    assert text.startswith("# asset-generator reference\n") and "STALE TEXT" not in text


def test_global_options_are_shown_once() -> None:
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    for option in ("--api-url URL", "--api-key TOKEN", "--timeout SECONDS", "-q, --quiet"):
        assert text.count(option) == 1, option
    # ... and the leaf commands still accept them (cli-contract §2).
    from asset_generator.cli.cancel import command

    context = command.make_context("cancel", [], resilient_parsing=True)
    assert "--api-url URL" in command.get_help(context)


def test_the_readme_is_for_newcomers_and_runs_the_ci_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    # Short enough to read through: two servers now, the details in docs/.
    assert len(readme.splitlines()) < 300
    assert "Usage: asset-generator" not in readme, "the command reference lives in docs/"
    for target in (
        "docs/reference.md",
        "docs/images.md",
        "docs/pipeline.md",
        "docs/mcp.md",
        "docs/comfyui.md",
        "docs/architecture.md",
    ):
        assert f"]({target})" in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci.startswith("python3 -m venv .venv && ")
    assert f"```bash\n{ci}\n```" in readme, "README's test command differs from .ci/run"


def test_help_does_not_depend_on_the_terminal_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = reference.command_reference()
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("ASSET_GENERATOR_API_URL", "http://elsewhere:1")
    monkeypatch.setenv("ASSET_GENERATOR_FORMAT", "json")
    monkeypatch.setenv("ASSET_GENERATOR_PROFILE", "nope")
    assert reference.command_reference() == expected
    monkeypatch.setenv("COLUMNS", "300")
    assert reference.command_reference() == expected
    assert max(len(line) for line in expected.splitlines()) <= reference.WIDTH


def test_reference_covers_every_command() -> None:
    text = reference.command_reference()
    for command in (
        "asset-generator",
        "asset-generator cancel",
        "asset-generator completion",
        "asset-generator config",
        "asset-generator config set",
        "asset-generator generate image",
        "asset-generator models list",
        "asset-generator status",
    ):
        assert f"### `{command}`\n" in text
        assert f"Usage: {command} " in text


def test_configuration_section_lists_every_key_and_its_example_is_valid(tmp_path: Path) -> None:
    text = reference.configuration_section()
    for setting in settings.SETTINGS:
        assert f"| `{setting.key}` |" in text
        if setting.env:
            assert f"`{setting.env}`" in text
    assert reference.EXAMPLE_CONFIG in text
    path = tmp_path / "example.toml"
    path.write_text(reference.EXAMPLE_CONFIG)
    assert settings.unknown_keys(tomllib.loads(reference.EXAMPLE_CONFIG)) == []
    top = settings.resolve({}, config_path=path, environ={})
    laptop = settings.resolve({}, config_path=path, profile="laptop", environ={})
    assert (top["generate.steps"], laptop["generate.steps"]) == (30, 12)
    assert laptop["api_url"] == "http://localhost:7801"


def test_the_documented_generate_image_result_has_every_key_the_tool_returns() -> None:
    import json
    import re

    pytest.importorskip("mcp")
    from asset_generator.mcp_tools import GenerateResult

    text = (ROOT / "docs" / "mcp.md").read_text(encoding="utf-8")
    section = text.split("### `generate_image`", 1)[1].split("\n### ", 1)[0]
    documents = [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", section, re.S)]
    [result] = [d for d in documents if d.get("status") == "succeeded"]
    assert set(result) == set(GenerateResult.model_fields)
