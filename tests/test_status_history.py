"""`status` says how many older finished generations it leaves out, and shows them on request."""

from __future__ import annotations

from conftest import Runner

from asset_generator.emulator import Emulator


def test_older_finished_generations_are_counted_not_hidden(cli: Runner, emulator: Emulator) -> None:
    for index in range(7):
        done = cli("generate", "image", "-p", f"run {index}", "--steps", "1", "-q", "--no-save")
        assert done.code == 0, done.stderr
    default = cli("status")
    assert default.code == 0, default.stderr
    assert default.stdout.count("succeeded") == 5
    assert "2 older finished generations not shown (--all shows them, --limit N the newest N)" in (
        default.stdout
    )
    assert "run 6" in default.stdout and "run 0" not in default.stdout

    everything = cli("status", "--all")
    assert everything.stdout.count("succeeded") == 7
    assert "not shown" not in everything.stdout

    one = cli("status", "--limit", "1", "-f", "json").json()
    assert [g["prompt"] for g in one["generations"]] == ["run 6"]
    assert one["older_not_shown"] == 6
    none = cli("status", "--limit", "0")
    assert "7 older finished generations not shown" in none.stdout
    assert "no generations started by this client" not in none.stdout
