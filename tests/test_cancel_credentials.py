"""`cancel` with the wrong (or no) credentials while our generation runs under others."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import Runner, read_registry, wait_for


def _running(state_dir: Path) -> bool:
    try:
        records = read_registry(state_dir)["generations"].values()
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return any(r["status"] == "running" for r in records)


def test_cancel_names_generations_it_cannot_reach(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    emu = emulator_factory(accounts=True, step_seconds=0.05)
    cli.url = emu.url
    token = emu.add_user("alice")
    job = cli.start(
        "generate",
        "image",
        "-p",
        "slow",
        "--steps",
        "400",
        "-q",
        env={"ASSET_GENERATOR_API_KEY": token},
    )
    try:
        assert wait_for(lambda: _running(state_dir))
        (gen_id,) = read_registry(state_dir)["generations"]
        for env in ({}, {"ASSET_GENERATOR_API_KEY": emu.add_user("bob")}):
            result = cli("cancel", env=env)
            assert result.code == 1, result.stderr
            assert result.stderr == (
                f"nothing cancelled: 1 generation of this client on {emu.url} ({gen_id}) runs "
                "under other credentials; pass the --api-key (or --auth-header) it was started "
                "with to reach it\n"
            )
            assert token not in result.stderr
            quiet = cli("-f", "json", "cancel", "-q", env=env)
            assert quiet.code == 1 and quiet.json()["error"]["code"] == "auth_failed"
        # Nothing was sent for those: no session was created to find out.
        assert emu.calls("InterruptAll") == []
        right = cli("cancel", env={"ASSET_GENERATOR_API_KEY": token})
        assert right.code == 0, right.stderr
        assert right.stdout.startswith(f"cancelled {gen_id}")
    finally:
        try:
            job.wait(timeout=30)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()


def test_other_servers_do_not_count(cli: Runner, emulator_factory, state_dir: Path) -> None:
    busy = emulator_factory(step_seconds=0.05)
    idle = emulator_factory()
    job = cli.start(
        "generate",
        "image",
        "-p",
        "slow",
        "--steps",
        "400",
        "-q",
        env={"ASSET_GENERATOR_API_URL": busy.url},
    )
    try:
        assert wait_for(lambda: _running(state_dir))
        result = cli("cancel", env={"ASSET_GENERATOR_API_URL": idle.url})
        assert result.code == 0
        assert result.stderr.startswith("no active generation")
    finally:
        assert cli("cancel", env={"ASSET_GENERATOR_API_URL": busy.url}).code == 0
        job.wait(timeout=30)
