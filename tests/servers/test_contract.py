"""The contract every server adapter keeps, run unchanged against each server (backends.py).

What a user sees — exit codes, phrases, files, the registry, what the server holds — must not
depend on which server is behind ``--api-url``.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import backends
import pytest
from backends import Backend, record_of, wait_record
from conftest import Runner, read_registry, wait_for

# The fixture every scenario takes: each server of backends.py in turn.
backend = backends.backend


def test_generate_saves_the_image_and_records_it(backend: Backend, cli: Runner, state_dir: Path):
    result = cli(*backend.quick("contract quick"), "-o", "out", timeout=backend.patience)
    assert result.code == 0, result.stderr
    (path,) = result.stdout.splitlines()
    assert Path(cli.cwd, path).read_bytes().startswith(b"\x89PNG")
    record = record_of(state_dir, "contract quick")
    assert record is not None
    assert record["status"] == "succeeded" and record["server_type"] == backend.kind
    assert record["images"] == [path]
    # The registry is private, and its handle never reaches the output.
    assert (state_dir / "generations.json").stat().st_mode & 0o777 == 0o600
    shown = cli("status", "-f", "json", timeout=backend.patience).json()
    assert all("handle" not in g for g in shown["generations"])


def test_progress_reaches_the_registry_and_cancel_stops_it(
    backend: Backend, cli: Runner, state_dir: Path
):
    process = cli.start(*backend.slow("contract slow"), "-o", "out")
    record = wait_record(state_dir, "contract slow", lambda r: r["progress"] > 0, backend.patience)
    assert record["status"] == "running"
    assert backend.running_on_server(record)
    result = cli("cancel", "-f", "json", timeout=backend.patience)
    assert result.code == 0, result.stderr
    document = result.json()
    assert document["was_active"] is True and document["scope"] == "generation"
    assert [r["id"] for r in document["cancelled"]] == [record["id"]]
    _, err = process.communicate(timeout=backend.patience)
    assert process.returncode == 1
    assert err.strip().splitlines()[-1].startswith("cancelled: ")
    assert record_of(state_dir, "contract slow")["status"] == "cancelled"
    assert not backend.on_server(record)


def test_cancel_one_leaves_our_other_generation_running(
    backend: Backend, cli: Runner, state_dir: Path
):
    first = cli.start(*backend.slow("contract first"), "-o", "out")
    wait_record(state_dir, "contract first", lambda r: r["status"] == "running", backend.patience)
    second = cli.start(*backend.slow("contract second"), "-o", "out")
    victim = wait_record(state_dir, "contract second", lambda r: True, backend.patience)
    assert backend_holds(backend, victim)
    result = cli("cancel", victim["id"], timeout=backend.patience)
    assert result.code == 0, result.stderr
    second.communicate(timeout=backend.patience)
    assert second.returncode == 1
    survivor = record_of(state_dir, "contract first")
    assert survivor["status"] == "running" and backend.running_on_server(survivor)
    assert not backend.on_server(victim)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=backend.patience)
    assert first.returncode == 130
    assert not backend.on_server(survivor)


def backend_holds(backend: Backend, record: dict) -> bool:
    from conftest import wait_for

    return wait_for(lambda: backend.on_server(record), timeout=backend.patience)


def test_cancel_all_reaches_every_generation_of_ours(
    backend: Backend, cli: Runner, state_dir: Path
):
    processes = [cli.start(*backend.slow(f"contract all {i}"), "-o", "out") for i in range(2)]
    for i in range(2):
        # The record is written before its request is sent: wait until the server holds it.
        assert backend_holds(
            backend, wait_record(state_dir, f"contract all {i}", lambda r: True, backend.patience)
        )
    result = cli("cancel", "--all", "-f", "json", timeout=backend.patience)
    assert result.code == 0, result.stderr
    document = result.json()
    assert document["scope"] == ("user" if backend.kind == "swarmui" else "server")
    assert len(document["cancelled"]) == 2
    for process in processes:
        process.communicate(timeout=backend.patience)
        assert process.returncode == 1
    records = [record_of(state_dir, f"contract all {i}") for i in range(2)]
    assert [r["status"] for r in records] == ["cancelled", "cancelled"]
    assert not any(backend.on_server(r) for r in records)


def test_nothing_of_ours_is_no_request_at_all(backend: Backend, cli: Runner):
    if backend.emulator is None:
        pytest.skip("a real server's request log is not ours to read")
    before = len(backend.emulator.requests)
    result = cli("cancel")
    assert result.code == 0
    assert result.stderr.startswith("no active generation")
    assert len(backend.emulator.requests) == before


def test_a_dead_process_is_asked_about_not_assumed_finished(
    backend: Backend, cli: Runner, state_dir: Path
):
    process = cli.start(*backend.slow("contract orphan"), "-o", "out")
    record = wait_record(
        state_dir, "contract orphan", lambda r: r["status"] == "running", backend.patience
    )
    process.kill()
    process.communicate(timeout=backend.patience)
    shown = cli("status", "-f", "json", timeout=backend.patience).json()
    (mine,) = [g for g in shown["generations"] if g["id"] == record["id"]]
    # The server still runs it: running, not "failed" because its process is gone.
    assert mine["status"] == "running"
    assert cli("cancel", record["id"], timeout=backend.patience).code == 0
    assert record_of(state_dir, "contract orphan")["status"] == "cancelled"
    assert not wait_on_server(backend, record)


def wait_on_server(backend: Backend, record: dict) -> bool:
    from conftest import wait_for

    return not wait_for(lambda: not backend.on_server(record), timeout=backend.patience)


def test_models_are_listed_and_cached_for_completion(
    backend: Backend, cli: Runner, state_dir: Path
):
    result = cli("models", "list", "-f", "json", timeout=backend.patience)
    assert result.code == 0, result.stderr
    document = result.json()
    names = [m["name"] for m in document["models"]]
    assert names
    cached = read_registry(state_dir)["servers"]
    kinds = {kind for server in cached.values() for kind in server["models"]}
    assert ("Stable-Diffusion" if backend.kind == "swarmui" else "checkpoints") in kinds
    # -q drops decorations, not data: the names, one a line (issue 19 item 11).
    quiet = cli("models", "list", "-q", timeout=backend.patience)
    assert (quiet.code, quiet.stderr) == (0, "")
    assert quiet.stdout.splitlines() == names


def test_status_names_the_server_and_its_type(backend: Backend, cli: Runner):
    result = cli("status", "-f", "json", timeout=backend.patience)
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True and document["reachable"] is True
    assert document["type"] == document["server"]["type"] == backend.kind
    assert document["server"]["url"] == backend.url and document["server"]["reachable"] is True
    if backend.kind == "comfyui":
        assert set(document["queue"]) == {"running", "pending", "ours_running", "ours_pending"}


# -- issue 19: a lost cancel, a server away, a full stdout, -q data --------------------------------

# The requests that stop our work, per server: a relay loses them on the way.
STOPPING = {
    "swarmui": {"InterruptAll", "InterruptGeneration"},
    "comfyui": {"POST queue", "POST interrupt", "POST cancel"},
}


@pytest.mark.parametrize("ctrl_c", ["once", "twice"])
def test_a_cancel_that_never_reached_the_server_is_sent_again(
    backend: Backend, cli: Runner, state_dir: Path, ctrl_c: str
):
    from relay import relay_to

    with relay_to(backend.url) as relay:
        cli.url = relay.url
        # Lost at once (a dropped connection), or held until a second Ctrl-C gives up on it.
        relay.lose, relay.hold = STOPPING[backend.kind], (0.0 if ctrl_c == "once" else 60.0)
        process = cli.start(*backend.slow("contract lost"), "-o", "out")
        record = wait_record(
            state_dir, "contract lost", lambda r: r["status"] == "running", backend.patience
        )
        gen = record["id"]
        process.send_signal(signal.SIGINT)
        if ctrl_c == "twice":
            assert wait_for(lambda: relay.lost != [], timeout=backend.patience)
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=backend.patience)
        assert process.returncode == 130 and "Traceback" not in err
        assert f"`asset-generator cancel {gen}`" in err.strip().splitlines()[-1], err
        assert relay.lost and backend.running_on_server(record)
        assert record_of(state_dir, "contract lost")["cancel_unconfirmed"] is not None

        relay.lose = set()
        shown = cli("status", "-f", "json", timeout=backend.patience).json()
        (mine,) = [g for g in shown["generations"] if g["id"] == gen]
        assert mine["status"] == "cancelled" and mine["cancel_unconfirmed"] is True
        table = cli("status", timeout=backend.patience).stdout
        assert "cancel sent, not confirmed" in next(
            line for line in table.splitlines() if line.startswith(gen)
        )
        again = cli("cancel", gen, timeout=backend.patience)
        assert again.code == 0, again.stderr
        assert f"cancelled {gen} again" in again.stdout
        assert not wait_on_server(backend, record)
        after = record_of(state_dir, "contract lost")
        assert after["status"] == "cancelled" and after["cancel_unconfirmed"] is None
        done = cli("cancel", gen, timeout=backend.patience)
        assert f"{gen} already cancelled; nothing to cancel" in done.stderr


def test_a_server_that_went_away_still_shows_our_work(
    backend: Backend, cli: Runner, state_dir: Path
):
    if backend.emulator is None:
        pytest.skip("a real server is not ours to stop")
    assert cli(*backend.quick("contract before"), "-o", "out").code == 0
    process = cli.start(*backend.slow("contract left"), "-o", "out")
    left = wait_record(
        state_dir, "contract left", lambda r: r["status"] == "running", backend.patience
    )
    process.kill()
    process.communicate(timeout=backend.patience)
    before = record_of(state_dir, "contract before")
    backend.emulator.stop()

    table = cli("status")
    assert table.code == 1 and "Traceback" not in table.stderr
    (error,) = table.stderr.strip().splitlines()
    assert error.startswith(("request failed: ", "failed to get session: "))
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["server", backend.url]
    assert lines[1].startswith("reachable  no: ") and lines[2].startswith("live state unknown")
    rows = {line.split()[0]: line.split()[1] for line in lines if line.startswith("gen_")}
    assert rows == {left["id"]: "running", before["id"]: "succeeded"}

    document = cli("status", "-f", "json").json()
    assert document["ok"] is False and document["error"]["code"] == "connection_failed"
    assert document["live_state"] == "unknown" and document["reachable"] is False
    shown = {g["id"]: g["status"] for g in document["generations"]}
    assert shown == {left["id"]: "running", before["id"]: "succeeded"}
    assert "handle" not in document["generations"][0]


def test_a_full_stdout_after_the_last_image_leaves_the_generation_succeeded(
    backend: Backend, cli: Runner, state_dir: Path
):
    import subprocess

    from conftest import PROGRAM

    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [*PROGRAM, *backend.quick("contract full"), "-o", "out"],
            cwd=cli.cwd,
            env=cli.env(),
            stdin=subprocess.DEVNULL,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=backend.patience,
        )
    err = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "cannot write to standard output: the disk is full"
    record = record_of(state_dir, "contract full")
    assert record["status"] == "succeeded" and len(record["images"]) == 1
    assert Path(cli.cwd, record["images"][0]).read_bytes().startswith(b"\x89PNG")
