"""Many processes, one server: the session cache stays whole and true.

Fifty processes at once (generate, cancel, cancel --all, status) are cron next to a person at
a terminal. Afterwards the cache must still parse, hold exactly one record per `generate`
that ran (a lost update would drop one), and every record must agree with what its process
told the user; no process may fail because another held the cache lock. The smaller tests
pin down the races behind that: a cancel that never reaches the server, a session the
server forgot, a queued generation interrupted by another client.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
from conftest import Runner, read_registry, session_id_of, wait_for

GENERATE = 30
CANCEL = 8
CANCEL_ALL = 2
STATUS = 10
LAUNCH_GAP_SECONDS = 0.05
# What a lock problem, a torn read or a crash would print.
BAD_SIGNS = ("lock", "Traceback", "corrupt", "warning", "cannot write", "cannot read")


def test_fifty_processes_keep_every_record(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    emu = emulator_factory(backends=3, step_seconds=0.01)
    cli.url = emu.url
    commands: list[tuple[str, list[str]]] = [
        (f"job {n}", ["generate", "image", "--prompt", f"job {n}", "--steps", "15", "-o", "out"])
        for n in range(GENERATE)
    ]
    commands += [("cancel", ["cancel"])] * CANCEL
    commands += [("cancel --all", ["cancel", "--all"])] * CANCEL_ALL
    commands += [("status", ["status", "-f", "json"])] * STATUS
    random.Random(50).shuffle(commands)

    processes = []
    for name, args in commands:
        processes.append((name, cli.start(*args)))
        # Spread the starts a little, so cancel and status also meet generations in flight.
        time.sleep(LAUNCH_GAP_SECONDS)
    finished: list[tuple[str, int, str, str]] = []
    try:
        for name, process in processes:
            out, err = process.communicate(timeout=90)
            finished.append((name, process.returncode, out, err))
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()

    for name, code, _, err in finished:
        for sign in BAD_SIGNS:
            assert sign not in err, f"{name} (exit {code}) printed {sign!r}:\n{err}"
        if not name.startswith("job "):
            assert code == 0, f"{name} failed:\n{err}"

    document = read_registry(state_dir)
    records = document["generations"]
    by_prompt = {record["prompt"]: record for record in records.values()}
    assert len(records) == GENERATE, sorted(r["prompt"] for r in records.values())
    assert sorted(by_prompt) == sorted(f"job {n}" for n in range(GENERATE))

    saved_images = []
    for name, code, out, err in finished:
        if not name.startswith("job "):
            continue
        record = by_prompt[name]
        if code == 0:
            assert record["status"] == "succeeded", (record, err)
            assert [line for line in out.splitlines()] == record["images"]
            saved_images += record["images"]
        else:
            assert code == 1, err
            assert record["status"] == "cancelled", (record, err)
            assert "Generation session interrupted." in err or "cancelled" in err, err

    for name, _, out, _ in finished:
        if name == "status":
            assert json.loads(out)["ok"] is True
        if name == "cancel" and out:
            # "cancelled gen_... (was running, 40%): job 7" names one of the records.
            assert out.split()[1] in records, out
    out_dir = workdir / "out"
    on_disk = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert on_disk == sorted(Path(p).name for p in saved_images)
    assert [p.name for p in state_dir.iterdir() if p.name.startswith(".")] == []
    assert not list(state_dir.glob("generations.json.corrupt-*"))
    # Every generation the server saw belongs to a record (none started behind our back).
    recorded_sessions = {session_id_of(record) for record in records.values()}
    generate_calls = [c for c in emu.calls("GenerateText2ImageWS") if c.body is not None]
    assert {c.session_id for c in generate_calls} <= recorded_sessions


class Gate:
    """A TCP relay in front of the emulator that can stop letting new connections through.

    Connections already made (the generating process's WebSocket) keep flowing, so a cancel can
    fail to reach a server that goes on generating.
    """

    def __init__(self, target_url: str) -> None:
        self.target = ("127.0.0.1", int(target_url.rsplit(":", 1)[1]))
        self.open = True
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def test_a_cancel_that_cannot_reach_the_server_leaves_the_generation_cancellable(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    # cancel marks the record before it interrupts (a queued generation ends without a word,
    # so its process learns "cancelled" only from that mark); a failed interrupt takes it back.
    emu = emulator_factory(backends=1, step_seconds=0.05)
    gate = Gate(emu.url)
    cli.url = gate.url
    try:
        process = cli.start("generate", "image", "--prompt", "stubborn", "--steps", "400")
        assert wait_for(lambda: _status_of(state_dir, "stubborn") == "running")

        gate.open = False
        failed = cli("cancel")
        assert failed.code == 1 and failed.stderr.startswith("request failed: "), failed.stderr
        assert _status_of(state_dir, "stubborn") == "running"
        assert process.poll() is None and emu.interrupted_sessions() == []

        gate.open = True
        assert cli("cancel", "-q").code == 0
        _, err = process.communicate(timeout=30)
        assert process.returncode == 1 and "Generation session interrupted." in err
        assert _status_of(state_dir, "stubborn") == "cancelled"
    finally:
        gate.close()


def test_a_cancel_whose_session_the_server_forgot_marks_it_failed(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    process = cli.start("generate", "image", "--prompt", "forgotten", "--steps", "400")
    assert wait_for(lambda: _status_of(state_dir, "forgotten") == "running")
    emu.invalidate_sessions()

    result = cli("cancel")
    assert result.code == 0
    assert "is no longer known to the server; nothing to cancel" in result.stderr
    assert _status_of(state_dir, "forgotten") == "failed"
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 143


def test_queued_generation_interrupted_by_another_client_fails_naming_the_interrupt(
    cli: Runner, emulator_factory, state_dir: Path
) -> None:
    # SwarmUI ends work interrupted while it waits for a backend without any message
    # (protocol §5.2); the web UI's "interrupt all" does that to our queued generation. A
    # backend failure ends it the same way (§9.22), so without a cancel of ours it is a
    # failure whose message names both causes (cli-contract §3).
    emu = emulator_factory(backends=1, step_seconds=0.05)
    cli.url = emu.url
    blocker = cli.start("generate", "image", "--prompt", "blocker", "--steps", "400")
    assert wait_for(lambda: _status_of(state_dir, "blocker") == "running")
    queued = cli.start("generate", "image", "--prompt", "queued", "--steps", "2")
    assert wait_for(lambda: _status_of(state_dir, "queued") == "queued")
    session = next(
        session_id_of(r)
        for r in read_registry(state_dir)["generations"].values()
        if r["prompt"] == "queued"
    )
    assert wait_for(lambda: emu.session_status(session)["waiting_backends"] == 1)

    answer = httpx.post(
        f"{emu.url}/API/InterruptAll", json={"session_id": session, "other_sessions": False}
    )
    assert answer.json() == {"success": True}
    _, err = queued.communicate(timeout=30)
    assert queued.returncode == 1
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("request failed: ") and "ended without images" in last
    assert "interrupt from outside" in last
    assert _status_of(state_dir, "queued") == "failed"
    assert _status_of(state_dir, "blocker") == "running"
    blocker.send_signal(signal.SIGTERM)
    blocker.communicate(timeout=30)


def _status_of(state_dir: Path, prompt: str) -> str | None:
    if not (state_dir / "generations.json").exists():
        return None
    records = read_registry(state_dir)["generations"].values()
    return next((r["status"] for r in records if r["prompt"] == prompt), None)
