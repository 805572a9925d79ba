"""`cancel` end to end: the installed program against the emulator on a loopback port."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import Runner, read_registry, session_id_of, wait_for

from asset_generator.emulator import Emulator, Fault, FaultPoint


def records(state_dir: Path) -> dict[str, dict]:
    path = state_dir / "generations.json"
    if not path.exists():
        return {}
    return read_registry(state_dir)["generations"]


def record_with_prompt(state_dir: Path, prompt: str) -> dict | None:
    for item in records(state_dir).values():
        if item["prompt"] == prompt:
            return item
    return None


def wait_status(state_dir: Path, prompt: str, status: str, timeout: float = 20) -> dict:
    assert wait_for(
        lambda: (record_with_prompt(state_dir, prompt) or {}).get("status") == status, timeout
    ), f"{prompt!r} never reached {status}: {record_with_prompt(state_dir, prompt)}"
    found = record_with_prompt(state_dir, prompt)
    assert found is not None
    return found


def finish(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_active_makes_no_request_and_says_so(cli: Runner, emulator: Emulator) -> None:
    result = cli("cancel")
    assert result.code == 0
    assert result.stdout == ""
    assert result.stderr.startswith("no active generation")
    assert "--all" in result.stderr
    quiet = cli("cancel", "-q")
    assert (quiet.code, quiet.stdout, quiet.stderr) == (0, "", "")
    before = cli("-q", "cancel")
    assert (before.code, before.stdout, before.stderr) == (0, "", "")
    assert emulator.requests == []


def test_nothing_active_json(cli: Runner, emulator: Emulator) -> None:
    result = cli("cancel", "-f", "json")
    assert result.code == 0
    assert result.json() == {
        "ok": True,
        "scope": "generation",
        "cancelled": [],
        "was_active": False,
    }


def test_cancel_stops_the_running_generation_and_not_the_queued_one(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    running = cli.start("generate", "image", "--prompt", "long one", "--steps", "400")
    wait_status(state_dir, "long one", "running")
    queued = cli.start("generate", "image", "--prompt", "short one", "--steps", "3")
    short = wait_status(state_dir, "short one", "queued")
    assert wait_for(lambda: emu.session_status(session_id_of(short))["waiting_backends"] == 1)

    result = cli("cancel")
    assert result.code == 0, result.stderr
    long_record = record_with_prompt(state_dir, "long one")
    assert long_record is not None
    assert result.stdout.startswith(f"cancelled {long_record['id']}")

    code, _, err = finish(running)
    assert code == 1
    assert "Generation session interrupted." in err
    assert record_with_prompt(state_dir, "long one")["status"] == "cancelled"

    code, out, err = finish(queued)
    assert code == 0, err
    saved = Path(workdir, out.strip())
    assert saved.is_file() and saved.read_bytes().startswith(b"\x89PNG")
    assert record_with_prompt(state_dir, "short one")["status"] == "succeeded"
    assert session_id_of(short) not in emu.interrupted_sessions()
    assert session_id_of(long_record) in emu.interrupted_sessions()


def test_cancel_probes_interrupt_generation_once(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    for prompt in ("first", "second"):
        process = cli.start("generate", "image", "--prompt", prompt, "--steps", "400")
        wait_status(state_dir, prompt, "running")
        assert cli("cancel", "-q").code == 0
        assert finish(process)[0] == 1
    probes = emu.calls("InterruptGeneration")
    assert len(probes) == 1 and probes[0].status == 400
    interrupts = emu.calls("InterruptAll")
    assert len(interrupts) == 2
    assert all(call.body.get("other_sessions") is False for call in interrupts)


def test_cancel_uses_interrupt_generation_where_the_server_has_it(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05, serve_interrupt_generation=True)
    cli.url = emu.url
    process = cli.start("generate", "image", "--prompt", "served", "--steps", "400")
    record = wait_status(state_dir, "served", "running")
    assert cli("cancel").code == 0
    assert finish(process)[0] == 1
    assert [c.status for c in emu.calls("InterruptGeneration")] == [200]
    assert emu.calls("InterruptAll") == []
    assert session_id_of(record) in emu.interrupted_sessions()


def test_cancel_by_id_and_idempotent_after_finish(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    process = cli.start("generate", "image", "--prompt", "by id", "--steps", "400")
    record = wait_status(state_dir, "by id", "running")
    result = cli("cancel", record["id"], "-f", "json")
    assert result.code == 0
    document = result.json()
    assert document["scope"] == "generation" and document["was_active"] is True
    assert [r["id"] for r in document["cancelled"]] == [record["id"]]
    assert "session" not in result.stdout
    assert finish(process)[0] == 1
    again = cli("cancel", record["id"])
    assert again.code == 0 and "already cancelled" in again.stderr
    unknown = cli("cancel", "gen_00000000", "-f", "json")
    assert unknown.code == 1
    assert unknown.json()["error"]["code"] == "not_found"


def test_cancel_all_reaches_every_session_of_the_user_only(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05, accounts=True)
    cli.url = emu.url
    alice = {"ASSET_GENERATOR_API_KEY": emu.add_user("alice")}
    bob = {"ASSET_GENERATOR_API_KEY": emu.add_user("bob")}
    a1 = cli.start("generate", "image", "--prompt", "alice 1", "--steps", "400", env=alice)
    wait_status(state_dir, "alice 1", "running")
    a2 = cli.start("generate", "image", "--prompt", "alice 2", "--steps", "400", env=alice)
    b1 = cli.start("generate", "image", "--prompt", "bob 1", "--steps", "3", env=bob)
    wait_status(state_dir, "alice 2", "queued")
    bob_record = wait_status(state_dir, "bob 1", "queued")
    assert wait_for(lambda: emu.session_status(session_id_of(bob_record))["waiting_backends"] == 1)

    result = cli("cancel", "--all", "-f", "json", env=alice)
    assert result.code == 0, result.stderr
    document = result.json()
    assert document["scope"] == "user" and document["was_active"] is True
    assert sorted(r["prompt"] for r in document["cancelled"]) == ["alice 1", "alice 2"]
    calls = emu.calls("InterruptAll")
    assert [c.body["other_sessions"] for c in calls if c.body["other_sessions"]] == [True]
    # Besides it, only alice's own generations may interrupt their own sessions: each one
    # that sees the cancel mark makes sure of it (generation.GenerationRun._look_for_cancel),
    # sooner or later than this line, so their calls are not counted.
    own = {r["handle"]["session_id"] for r in read_registry(state_dir)["generations"].values()
           if r["prompt"].startswith("alice")}  # fmt: skip
    assert {c.session_id for c in calls if not c.body["other_sessions"]} <= own

    assert finish(a1)[0] == 1
    assert finish(a2)[0] != 0
    code, out, err = finish(b1)
    assert code == 0, err
    assert out.strip().endswith(".png")
    assert record_with_prompt(state_dir, "bob 1")["status"] == "succeeded"
    assert record_with_prompt(state_dir, "alice 2")["status"] == "cancelled"


def test_unreachable_server_is_one_clear_line(cli: Runner) -> None:
    cli.url = f"http://127.0.0.1:{free_port()}"
    result = cli("cancel", "--all")
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("failed to get session: ")
    assert "Traceback" not in result.stderr
    as_json = cli("cancel", "--all", "-f", "json")
    assert as_json.code == 1
    assert as_json.json()["error"]["code"] == "connection_failed"


def test_stale_session_is_renewed_transparently(cli: Runner, emulator: Emulator) -> None:
    assert cli("cancel", "--all", "-q").code == 0
    emulator.invalidate_sessions()
    emulator.reset_log()
    result = cli("cancel", "--all", "-q")
    assert (result.code, result.stderr) == (0, "")
    routes = [(c.route, c.status) for c in emulator.requests]
    assert routes == [("interruptall", 401), ("getnewsession", 200), ("interruptall", 200)]
    emulator.reset_log()
    assert cli("cancel", "--all", "-q").code == 0
    assert [c.route for c in emulator.requests] == ["interruptall"]


def test_ctrl_c_interrupts_the_session_on_the_server(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    for prompt, sig, expected in (
        ("ctrl c", signal.SIGINT, 130),
        ("terminated", signal.SIGTERM, 143),
    ):
        process = cli.start("generate", "image", "--prompt", prompt, "--steps", "400")
        record = wait_status(state_dir, prompt, "running")
        process.send_signal(sig)
        code, _, err = finish(process)
        assert code == expected, err
        assert "Traceback" not in err
        assert session_id_of(record) in emu.interrupted_sessions()
        assert record_with_prompt(state_dir, prompt)["status"] == "cancelled"
        assert wait_for(lambda r=record: emu.session_status(session_id_of(r))["live_gens"] == 0)


def test_concurrent_generate_and_cancel_keep_every_record(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    emu = emulator_factory(backends=2, step_seconds=0.01)
    cli.url = emu.url
    generators = [
        cli.start("generate", "image", "--prompt", f"job {n}", "--steps", "5") for n in range(6)
    ]
    cancellers = [cli.start("cancel", "-q") for _ in range(4)]
    for process in generators + cancellers:
        process.communicate(timeout=60)
    assert all(p.returncode == 0 for p in cancellers)
    saved = records(state_dir)
    assert sorted(r["prompt"] for r in saved.values()) == [f"job {n}" for n in range(6)]
    assert all(r["status"] in ("succeeded", "cancelled") for r in saved.values())


def test_corrupt_cache_warns_and_still_works(
    cli: Runner, emulator: Emulator, state_dir: Path, config_dir: Path
) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "generations.json").write_text('{"schema": 1, "generations": [oops')
    result = cli("cancel")
    assert result.code == 0
    assert "corrupt" in result.stderr and result.stderr.count("no active generation") == 1
    # cli-contract §4: set aside with *a* warning and rebuilt, even by a command that only
    # reads (cancel with nothing active); the file left behind is a good one, mode 0600.
    assert result.stderr.count("warning:") == 1, result.stderr
    assert len(list(state_dir.glob("generations.json.corrupt-*"))) == 1
    cache = state_dir / "generations.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert read_registry(state_dir)["generations"] == {}
    (state_dir / "generations.json").write_text("[]")
    again = cli("cancel")
    assert again.code == 0 and again.stderr.count("warning:") == 1, again.stderr
    # Two set aside within one second keep both.
    assert len(list(state_dir.glob("generations.json.corrupt-*"))) == 2
    generated = cli("generate", "image", "--prompt", "after corruption", "--steps", "2")
    assert generated.code == 0, generated.stderr
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert "after corruption" in json.dumps(read_registry(state_dir))
    assert list(state_dir.glob("generations.json.corrupt-*"))


@pytest.mark.parametrize("flag_first", [True, False])
def test_verbose_shows_exchanges_without_secrets(
    cli: Runner, emulator_factory, flag_first: bool, state_dir: Path
) -> None:
    emu = emulator_factory(accounts=True)
    cli.url = emu.url
    token = emu.add_user("carol")
    args = ["-v", "cancel", "--all"] if flag_first else ["cancel", "--all", "-v"]
    result = cli(*args, env={"ASSET_GENERATOR_API_KEY": token})
    assert result.code == 0, result.stderr
    assert "POST /API/GetNewSession 200" in result.stderr
    assert "POST /API/InterruptAll 200" in result.stderr
    session = emu.calls("InterruptAll")[0].session_id
    for secret in (token, session):
        assert secret not in result.stderr and secret not in result.stdout


def test_images_that_arrived_before_the_cancel_are_kept(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    # One backend runs the three images one after another: cancel after the first lands.
    emu = emulator_factory(backends=1, step_seconds=0.02)
    cli.url = emu.url
    process = cli.start(
        "generate", "image", "--prompt", "three", "--images", "3", "--steps", "60", "-o", "out"
    )
    assert wait_for(
        lambda: len((record_with_prompt(state_dir, "three") or {}).get("images", [])) == 1
    )
    result = cli("cancel")
    assert result.code == 0, result.stderr

    code, out, err = finish(process)
    assert code == 1
    assert "Generation session interrupted." in err and "kept 1 image that arrived" in err
    kept = [Path(workdir, line) for line in out.splitlines()]
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (workdir / "out").iterdir()) == [kept[0].name]
    record = record_with_prompt(state_dir, "three")
    assert record["status"] == "cancelled" and len(record["images"]) == 1


def test_a_cancel_that_lands_before_the_server_claims_the_request_is_not_lost(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    # SwarmUI binds a request to its session's interrupt token only when it claims it, so
    # an InterruptAll sent between `generate` registering and the server reading the request
    # stops nothing by itself. The handshake is held back to open that window wide.
    def slow_handshake(point: FaultPoint) -> Fault | None:
        return Fault(delay_seconds=1.0) if point.transport == "upgrade" else None

    emu = emulator_factory(backends=1, step_seconds=0.05, faults=slow_handshake)
    cli.url = emu.url
    process = cli.start("generate", "image", "--prompt", "early", "--steps", "400")
    record = wait_status(state_dir, "early", "queued")
    result = cli("cancel")
    assert result.code == 0 and result.stdout.startswith(f"cancelled {record['id']}")

    code, out, err = finish(process)
    assert code == 1, err
    assert out == "" and list(workdir.iterdir()) == []
    assert record_with_prompt(state_dir, "early")["status"] == "cancelled"
    assert emu.session_status(session_id_of(record))["live_gens"] == 0
