"""Ctrl-C and SIGTERM at every stage of `generate image`.

Whatever the stage (no session yet, queued behind another job, running, downloading), the
program must stop our own work on the server, record the generation as cancelled, exit
130 / 143 and leave no file, partial or whole, in the output directory. A second Ctrl-C while
it is cleaning up exits at once.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Runner, read_registry, session_id_of, wait_for

from asset_generator.emulator import Emulator, Fault, FaultPoint

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
# Long enough that the stage cannot end by itself during a test; the emulator cuts it at stop.
HELD_SECONDS = 30.0


def hold(route: str | None = None, path_prefix: str | None = None) -> Callable:
    """A faults hook that holds back one kind of HTTP answer."""

    def hook(point: FaultPoint) -> Fault | None:
        if point.transport != "http":
            return None
        if route is not None and (point.route or "").lower() == route.lower():
            return Fault(delay_seconds=HELD_SECONDS)
        if path_prefix is not None and point.path.lower().startswith(path_prefix):
            return Fault(delay_seconds=HELD_SECONDS)
        return None

    return hook


def generations(state_dir: Path) -> dict[str, dict]:
    if not (state_dir / "generations.json").exists():
        return {}
    return read_registry(state_dir)["generations"]


def record_of(state_dir: Path, prompt: str) -> dict | None:
    return next((r for r in generations(state_dir).values() if r["prompt"] == prompt), None)


def wait_record(state_dir: Path, prompt: str, status: str) -> dict:
    assert wait_for(lambda: (record_of(state_dir, prompt) or {}).get("status") == status), (
        f"{prompt!r} never became {status}: {record_of(state_dir, prompt)}"
    )
    found = record_of(state_dir, prompt)
    assert found is not None
    return found


def start(cli: Runner, prompt: str, *extra: str) -> subprocess.Popen[str]:
    return cli.start("generate", "image", "--prompt", prompt, "-o", "out", *extra)


def stopped(process: subprocess.Popen[str], sig: signal.Signals) -> str:
    """Signal the process, wait for it, check how it ended; return its stderr."""
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    assert process.returncode == EXIT[sig], err
    assert "Traceback" not in err
    assert out == ""
    return err


def no_files(workdir: Path) -> list[str]:
    out = workdir / "out"
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def assert_interrupted(emu: Emulator, record: dict, state_dir: Path) -> None:
    session = session_id_of(record)
    assert wait_for(lambda: session in emu.interrupted_sessions(), timeout=10)
    assert wait_for(lambda: emu.session_status(session)["live_gens"] == 0, timeout=10)
    final = generations(state_dir)[record["id"]]
    assert final["status"] == "cancelled", final
    assert final["error"].startswith("stopped by SIG")


@SIGNALS
def test_before_the_session_exists(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path, sig: signal.Signals
) -> None:
    emu = emulator_factory(backends=1, faults=hold(route="GetNewSession"))
    cli.url = emu.url
    process = start(cli, "too early", "--steps", "2")
    assert wait_for(lambda: emu.calls("GetNewSession") != [])

    err = stopped(process, sig)
    assert err.strip().splitlines()[-1] == "interrupted"
    # Nothing was asked of the server, so nothing runs there and nothing is recorded as ours.
    assert emu.calls("GenerateText2ImageWS") == [] and emu.calls("GenerateText2Image") == []
    assert emu.active_sessions() == []
    assert generations(state_dir) == {}
    assert no_files(workdir) == []


@SIGNALS
def test_while_queued_behind_another_generation(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path, sig: signal.Signals
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    blocker = start(cli, "blocker", "--steps", "400")
    other = wait_record(state_dir, "blocker", "running")
    process = start(cli, "waiting", "--steps", "2")
    ours = wait_record(state_dir, "waiting", "queued")
    assert wait_for(lambda: emu.session_status(session_id_of(ours))["waiting_backends"] == 1)

    err = stopped(process, sig)
    assert f"interrupted: stopping {ours['id']} on the server" in err
    assert_interrupted(emu, ours, state_dir)
    # Only our own session: the other generation keeps running.
    assert session_id_of(other) not in emu.interrupted_sessions()
    assert emu.session_status(session_id_of(other))["live_gens"] == 1
    assert no_files(workdir) == []
    stopped(blocker, signal.SIGTERM)


@SIGNALS
def test_while_running(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path, sig: signal.Signals
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    process = start(cli, "slow steps", "--steps", "400")
    ours = wait_record(state_dir, "slow steps", "running")

    err = stopped(process, sig)
    assert f"interrupted: stopping {ours['id']} on the server" in err
    assert f"{ours['id']}: 0 of 1 saved; the server stopped the rest" in err
    assert_interrupted(emu, ours, state_dir)
    assert emu.saved_outputs() == []
    assert no_files(workdir) == []


def test_ctrl_c_says_how_many_images_were_saved(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.01)
    cli.url = emu.url
    process = start(cli, "three", "-n", "3", "--steps", "300", "--no-progress")
    assert process.stdout is not None
    first = process.stdout.readline()
    ours = record_of(state_dir, "three")
    assert first and ours is not None
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "Traceback" not in err
    assert f"{ours['id']}: 1 of 3 saved; the server stopped the rest" in err.splitlines()
    assert_interrupted(emu, ours, state_dir)


@SIGNALS
def test_while_downloading(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path, sig: signal.Signals
) -> None:
    emu = emulator_factory(backends=1, faults=hold(path_prefix="/view/"))
    cli.url = emu.url
    process = start(cli, "slow download", "--steps", "2")
    assert wait_for(lambda: any(r.path.lower().startswith("/view/") for r in emu.requests))
    ours = record_of(state_dir, "slow download")
    assert ours is not None

    stopped(process, sig)
    assert_interrupted(emu, ours, state_dir)
    assert len(emu.saved_outputs()) == 1
    assert no_files(workdir) == []


def test_second_ctrl_c_exits_at_once(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    # The server is slow to answer the interrupt, so the first Ctrl-C's clean-up waits.
    emu = emulator_factory(backends=1, step_seconds=0.05, faults=hold(route="InterruptAll"))
    cli.url = emu.url
    process = start(cli, "impatient", "--steps", "400")
    ours = wait_record(state_dir, "impatient", "running")
    process.send_signal(signal.SIGINT)
    assert wait_for(lambda: emu.calls("InterruptAll") != [])

    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 130
    # One line: the server may still be running it, and how to stop it (issue 10 item 11).
    assert err.strip().splitlines()[-1] == (
        f"interrupted again: exiting without waiting; the server may still be running "
        f"{ours['id']}: stop it with `asset-generator cancel {ours['id']}`"
    )
    assert "Traceback" not in err and out == ""
    # Marked cancelled before exiting: `status` must not call it a failure.
    assert generations(state_dir)[ours["id"]]["status"] == "cancelled"
    # The interrupt had reached the server; only its answer was not waited for.
    assert session_id_of(ours) in emu.interrupted_sessions()
    assert no_files(workdir) == []


@SIGNALS
def test_json_is_still_one_document_when_stopped(
    cli: Runner, emulator_factory, state_dir: Path, sig: signal.Signals
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    process = start(cli, "json run", "--steps", "400", "-f", "json")
    ours = wait_record(state_dir, "json run", "running")
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    assert process.returncode == EXIT[sig], err
    document = json.loads(out)
    assert document["ok"] is False and document["error"]["code"] == "interrupted"
    assert document["id"] == ours["id"] and document["status"] == "cancelled"
    assert_interrupted(emu, ours, state_dir)


@SIGNALS
def test_other_commands_stop_cleanly_too(
    cli: Runner, emulator_factory, state_dir: Path, sig: signal.Signals
) -> None:
    # `cancel --wait` polling a server whose status answers are held back.
    emu = emulator_factory(backends=1, step_seconds=0.05, faults=hold(route="getcurrentstatus"))
    cli.url = emu.url
    generating = start(cli, "waited on", "--steps", "400")
    wait_record(state_dir, "waited on", "running")
    waiting = cli.start("cancel", "--all", "--wait", "-f", "json")
    assert wait_for(lambda: emu.calls("GetCurrentStatus") != [])
    waiting.send_signal(sig)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == EXIT[sig], err
    # (click ends the terminal's "^C" line with a newline first)
    said = [line for line in err.splitlines() if line.strip()]
    assert said == ["interrupted" if sig == signal.SIGINT else "terminated"]
    assert json.loads(out)["error"]["code"] == "interrupted"
    generating.communicate(timeout=30)


# -- an interrupt that never reached the server (issue 19 item 3) --------------------------------


@pytest.mark.parametrize("ctrl_c", ["once", "twice"])
def test_a_lost_interrupt_is_sent_again_by_cancel(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path, ctrl_c: str
) -> None:
    from relay import relay_to

    emu = emulator_factory(backends=1, step_seconds=0.05)
    with relay_to(emu.url) as relay:
        cli.url = relay.url
        # The interrupt is lost on the way: at once (a dropped connection), or after the
        # second Ctrl-C gave up waiting for it.
        relay.lose, relay.hold = {"InterruptAll"}, (0.0 if ctrl_c == "once" else HELD_SECONDS)
        process = start(cli, "lost interrupt", "--steps", "400")
        ours = wait_record(state_dir, "lost interrupt", "running")
        gen = ours["id"]
        process.send_signal(signal.SIGINT)
        if ctrl_c == "twice":
            assert wait_for(lambda: relay.lost != [])
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130 and "Traceback" not in err
        assert f"`asset-generator cancel {gen}`" in err.strip().splitlines()[-1], err
        assert relay.lost == ["POST interruptall"]
        # Still generating on the server: the record is cancelled, the cancel unconfirmed.
        session = session_id_of(ours)
        assert emu.session_status(session)["live_gens"] == 1
        saved = generations(state_dir)[gen]
        assert saved["status"] == "cancelled" and saved["cancel_unconfirmed"] is not None

        relay.lose = set()
        status = cli("status", "-f", "json")
        assert status.code == 0, status.stderr
        (shown,) = [g for g in status.json()["generations"] if g["id"] == gen]
        assert shown["status"] == "cancelled" and shown["cancel_unconfirmed"] is True
        table = cli("status").stdout
        row = next(line for line in table.splitlines() if line.startswith(gen))
        assert "cancel sent, not confirmed" in row, table

        # `cancel ID` sends the interrupt again instead of calling it done.
        again = cli("cancel", gen)
        assert again.code == 0, again.stderr
        assert f"cancelled {gen} again" in again.stdout
        assert wait_for(lambda: session in emu.interrupted_sessions())
        assert wait_for(lambda: emu.session_status(session)["live_gens"] == 0)
        after = cli("status", "-f", "json").json()
        (shown,) = [g for g in after["generations"] if g["id"] == gen]
        assert shown["status"] == "cancelled" and shown["cancel_unconfirmed"] is False
        # Confirmed now: a further cancel has nothing left to do.
        done = cli("cancel", gen)
        assert done.code == 0 and f"{gen} already cancelled; nothing to cancel" in done.stderr
