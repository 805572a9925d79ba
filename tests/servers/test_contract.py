"""The contract every server adapter keeps, run unchanged against each server (backends.py).

What a user sees — exit codes, phrases, files, the registry, what the server holds — must not
depend on which server is behind ``--api-url``.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import backends
from backends import Backend, record_of, wait_record
from conftest import Runner, read_registry

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
        wait_record(state_dir, f"contract all {i}", lambda r: True, backend.patience)
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
        return  # a real server's request log is not ours to read
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
    quiet = cli("models", "list", "-q", timeout=backend.patience)
    assert quiet.code == 0


def test_status_names_the_server_and_its_type(backend: Backend, cli: Runner):
    result = cli("status", "-f", "json", timeout=backend.patience)
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True and document["reachable"] is True
    assert document["type"] == backend.kind
    if backend.kind == "comfyui":
        assert document["server"]["type"] == "comfyui"
        assert set(document["queue"]) == {"running", "pending", "ours_running", "ours_pending"}
    else:
        assert document["server"] == backend.url
