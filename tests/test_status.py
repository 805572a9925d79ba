"""`status` end to end: the installed program against the emulator on a loopback port."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
from pathlib import Path

from conftest import PROGRAM, Runner, read_registry, session_id_of, wait_for

from asset_generator.emulator import Emulator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def record_with_prompt(state_dir: Path, prompt: str) -> dict | None:
    path = state_dir / "generations.json"
    if not path.exists():
        return None
    for item in read_registry(state_dir)["generations"].values():
        if item["prompt"] == prompt:
            return item
    return None


def test_status_reports_server_rollup_and_backends(cli: Runner, emulator: Emulator) -> None:
    result = cli("status")
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["server", emulator.url]
    assert lines[1].startswith("reachable") and "yes (" in lines[1]
    assert lines[2].split() == ["type", "swarmui"]
    assert lines[3].split() == ["version", "0.9.8.2.GIT-emulator"]
    assert lines[5].split() == ["user", "local"]
    assert lines[6].split() == ["backends", "running"]
    assert lines[7].startswith("features") and "comfyui" in lines[7]
    assert "BACKEND" in result.stdout and "LAST USED" in result.stdout
    backend_row = next(line for line in lines if line.startswith("0 "))
    assert "comfyui_selfstart" in backend_row and "running" in backend_row
    assert "no generations started by this client" in result.stdout

    as_json = cli("status", "-f", "json")
    assert as_json.code == 0
    document = as_json.json()
    assert document["ok"] is True and document["reachable"] is True
    assert document["server"]["url"] == emulator.url and document["type"] == "swarmui"
    assert document["server"]["type"] == "swarmui" and document["server"]["reachable"] is True
    assert document["server"]["version"] == document["version"]
    assert document["user"] == "local"
    assert document["version"] == "0.9.8.2.GIT-emulator"
    assert document["server_id"]
    assert isinstance(document["response_ms"], float | int)
    assert document["backend_status"] == {
        "status": "running",
        "class": "",
        "message": "",
        "any_loading": False,
    }
    assert [(b["id"], b["status"]) for b in document["backends"]] == [("0", "running")]
    assert document["backends_error"] is None
    assert "comfyui" in document["supported_features"]
    assert document["generations"] == []
    # ListBackends is asked on the session GetCurrentStatus used; no session id leaks out.
    session = emulator.calls("GetCurrentStatus")[-1].session_id
    assert emulator.calls("ListBackends")[-1].session_id == session
    assert session not in as_json.stdout


def test_status_shows_our_live_generation_and_asks_for_dead_ones(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    process = cli.start("generate", "image", "--prompt", "a slow lighthouse", "--steps", "400")
    try:
        assert wait_for(
            lambda: (
                (record_with_prompt(state_dir, "a slow lighthouse") or {}).get("progress", 0) > 0
            )
        )
        record = record_with_prompt(state_dir, "a slow lighthouse")
        assert record is not None

        table = cli("status")
        assert table.code == 0, table.stderr
        row = next(line for line in table.stdout.splitlines() if line.startswith(record["id"]))
        assert row.split()[1] == "running"
        assert row.split()[2].endswith("%") and row.split()[2] != "0%"
        assert "a slow lighthouse" in row
        assert "GENERATION" in table.stdout and "PROGRESS" in table.stdout

        document = cli("status", "-f", "json").json()
        (shown,) = document["generations"]
        assert shown["id"] == record["id"]
        assert shown["status"] == "running"
        assert 0 < shown["progress"] < 100
        assert shown["prompt"] == "a slow lighthouse"
        assert shown["age_seconds"] >= 0
        assert "session" not in str(shown)
    finally:
        process.kill()
        process.wait(timeout=10)

    # The process died without a word: not assumed finished, its session is asked and
    # still shows the work (an unasked dead record would be marked failed).
    emu.reset_log()
    document = cli("status", "-f", "json").json()
    assert [g["status"] for g in document["generations"]] == ["running"]
    assert session_id_of(record) in {c.session_id for c in emu.calls("GetCurrentStatus")}

    assert cli("cancel", record["id"], "-q").code == 0
    assert wait_for(lambda: emu.session_status(session_id_of(record))["waiting_gens"] == 0)
    document = cli("status", "-f", "json").json()
    assert [g["status"] for g in document["generations"]] == ["cancelled"]


def test_status_against_a_stopped_server_exits_1(cli: Runner, emulator_factory) -> None:
    cli.url = f"http://127.0.0.1:{free_port()}"
    cold = cli("status")
    assert cold.code == 1
    assert cold.stdout == ""
    lines = cold.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("failed to get session: ")
    assert "connection refused" in lines[0]
    assert "Traceback" not in cold.stderr

    as_json = cli("status", "-f", "json")
    assert as_json.code == 1
    document = as_json.json()
    assert document["ok"] is False and document["reachable"] is False
    assert document["error"]["code"] == "connection_failed"
    assert document["server"] == {"url": cli.url, "type": None, "reachable": False}

    # With a cached session the first request is GetCurrentStatus: "request failed".
    emu = emulator_factory()
    cli.url = emu.url
    assert cli("status", "-q").code == 0
    emu.stop()
    warm = cli("status")
    assert warm.code == 1
    assert warm.stderr.startswith("request failed: ") and "Traceback" not in warm.stderr


def test_a_stopped_server_still_shows_our_work_from_the_registry(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    # Issue 19 item 5: nothing of ours was shown although the registry holds it.
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    assert cli("generate", "image", "-p", "made before", "--steps", "1", "-o", "o").code == 0
    (workdir / "set.yaml").write_text("assets:\n  - {name: g, assets: [{id: a, prompt: p}]}\n")
    assert cli("pipeline", "set.yaml", "--steps", "1", "-q").code == 0
    process = cli.start("generate", "image", "-p", "left running", "--steps", "400")
    assert wait_for(
        lambda: (record_with_prompt(state_dir, "left running") or {}).get("status") == "running"
    )
    process.kill()
    process.wait(timeout=10)
    ours = {r["prompt"]: r for r in read_registry(state_dir)["generations"].values()}
    pipe = next(iter(read_registry(state_dir)["pipelines"].values()))
    emu.stop()

    table = cli("status")
    assert table.code == 1 and "Traceback" not in table.stderr
    (error,) = table.stderr.strip().splitlines()
    assert error.startswith("request failed: ")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["server", cli.url]
    assert lines[1].startswith("reachable  no: request failed: ")
    assert lines[2].startswith("live state unknown: ")
    rows = {line.split()[0]: line.split()[1] for line in lines if line.startswith("gen_")}
    assert rows[ours["left running"]["id"]] == "running"
    assert rows[ours["made before"]["id"]] == "succeeded"
    assert any(line.startswith(pipe["id"]) for line in lines)

    as_json = cli("status", "-f", "json")
    assert as_json.code == 1
    document = as_json.json()
    assert document["ok"] is False and document["error"]["code"] == "connection_failed"
    assert document["error"]["message"] == error
    assert document["reachable"] is False and document["server"]["url"] == cli.url
    assert document["server"]["reachable"] is False
    assert document["live_state"] == "unknown"
    shown = {g["id"]: g["status"] for g in document["generations"]}
    assert shown[ours["left running"]["id"]] == "running"
    assert shown[ours["made before"]["id"]] == "succeeded"
    assert [p["id"] for p in document["pipelines"]] == [pipe["id"]]
    assert "session" not in as_json.stdout

    # Nothing is decided about records whose process died: the server was not asked.
    after = read_registry(state_dir)["generations"][ours["left running"]["id"]]
    assert after["status"] == "running"
    quiet = cli("status", "-q")
    assert (quiet.code, quiet.stdout) == (1, "")


def test_forbidden_backend_list_degrades_to_the_rollup(cli: Runner, emulator_factory) -> None:
    emu = emulator_factory(deny_permissions={"view_backends_list"})
    cli.url = emu.url
    result = cli("status")
    assert result.code == 0, result.stderr
    assert "backends   running" in result.stdout
    assert "backend list not shown (You lack permissions for this route.)" in result.stdout
    assert "comfyui_selfstart" not in result.stdout
    assert [c.status for c in emu.calls("ListBackends")] == [400]

    document = cli("status", "-f", "json").json()
    assert document["ok"] is True
    assert document["backends"] is None
    assert document["backends_error"] == "You lack permissions for this route."
    assert document["backend_status"]["status"] == "running"


def test_rollup_message_when_backends_are_not_running(cli: Runner, emulator: Emulator) -> None:
    emulator.set_backend_status("idle")
    result = cli("status")
    assert result.code == 0
    assert "backends   idle: All backends are idle." in result.stdout
    document = cli("status", "-f", "json").json()
    assert document["backend_status"]["class"] == "warn"
    assert document["backends"][0]["status"] == "idle"


def test_twenty_status_runs_reuse_one_session_quietly(cli: Runner, emulator: Emulator) -> None:
    for _ in range(20):
        result = cli("status", "-q")
        assert (result.code, result.stdout, result.stderr) == (0, "", "")
    assert emulator.sessions_created == 1
    assert len(emulator.calls("GetNewSession")) == 1


def test_warm_cache_costs_at_most_three_requests(cli: Runner, emulator: Emulator) -> None:
    assert cli("status", "-q").code == 0
    emulator.reset_log()
    result = cli("status", "-f", "json")
    assert result.code == 0
    routes = [c.route for c in emulator.requests]
    assert len(routes) <= 3
    assert routes == ["getcurrentstatus", "listbackends"]


def test_stale_cached_session_is_replaced_once(cli: Runner, emulator: Emulator) -> None:
    assert cli("status", "-q").code == 0
    emulator.invalidate_sessions()
    emulator.reset_log()
    result = cli("status", "-q")
    assert (result.code, result.stderr) == (0, "")
    assert [(c.route, c.status) for c in emulator.requests][:3] == [
        ("getcurrentstatus", 401),
        ("getnewsession", 200),
        ("getcurrentstatus", 200),
    ]
    assert emulator.sessions_created == 2


def test_watch_refuses_a_pipe_and_json(cli: Runner, emulator: Emulator) -> None:
    result = cli("status", "--watch")
    assert result.code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith("Error: --watch needs a terminal")
    as_json = cli("status", "--watch", "-f", "json")
    assert as_json.code == 2
    assert as_json.json()["ok"] is False
    assert emulator.requests == []


def test_watch_redraws_on_a_terminal_until_ctrl_c(cli: Runner, emulator: Emulator) -> None:
    primary, secondary = os.openpty()
    process = subprocess.Popen(
        [*PROGRAM, "status", "--watch"],
        cwd=cli.cwd,
        env=cli.env(),
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(secondary)
    shown = bytearray()

    def drain() -> int:
        # Keep reading so the program never blocks on a full terminal buffer.
        while select.select([primary], [], [], 0)[0]:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown.extend(chunk)
        return len(emulator.calls("GetCurrentStatus"))

    try:
        # Three rounds of GetCurrentStatus: the first draw and two redraws.
        assert wait_for(lambda: drain() >= 3)
        # A server that goes away is shown, and watching goes on.
        emulator.stop()
        assert wait_for(lambda: drain() >= 0 and b"reachable  no: " in shown)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
        drain()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(primary)
    # Ctrl-C is the normal way out of --watch (issue 10 item 12).
    assert process.returncode == 0
    assert "Traceback" not in err
    text = shown.decode(errors="replace")
    assert emulator.url in text and "comfyui_selfstart" in text
    assert emulator.sessions_created == 1
