"""Outcomes a real SwarmUI reports differently from a naive reading (issue #11).

Each test drives the installed program against an emulator that does what SwarmUI's source
does (v0.9.8.2), and checks what a user notices: exit codes, messages, files, JSON.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import Runner, read_registry, session_id_of, wait_for

from asset_generator.emulator import Emulator
from asset_generator.emulator.config import DEFAULT_MODELS

FLUX = "flux/flux1-dev.safetensors"


def record_with_prompt(state_dir: Path, prompt: str) -> dict | None:
    path = state_dir / "generations.json"
    if not path.exists():
        return None
    for item in read_registry(state_dir)["generations"].values():
        if item["prompt"] == prompt:
            return item
    return None


def session_of(state_dir: Path, prompt: str) -> str:
    assert wait_for(lambda: record_with_prompt(state_dir, prompt) is not None)
    found = record_with_prompt(state_dir, prompt)
    assert found is not None
    return session_id_of(found)


def finish(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def counters(emu: Emulator, session_id: str) -> dict[str, int]:
    try:
        return emu.session_status(session_id)
    except KeyError:
        return {}


# -- item 1: a model load claims every waiting session ------------------------------------------


def test_model_load_claims_do_not_keep_cancel_wait_waiting(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    emu = emulator_factory(
        backends=1, model_load_seconds=30, loaded_model=DEFAULT_MODELS[0], step_seconds=0.05
    )
    cli.url = emu.url
    out = ["--output-dir", str(workdir)]
    # C holds the only backend while A, B and D queue for a model that is not loaded.
    c = cli.start("generate", "image", "--prompt", "c", "--steps", "500", *out)
    sc = session_of(state_dir, "c")
    assert wait_for(lambda: counters(emu, sc).get("live_gens") == 1)
    waiting = {}
    processes = {}
    for name in ("a", "b", "d"):
        extra = ["-f", "json"] if name == "d" else []
        processes[name] = cli.start(
            "generate", "image", "--prompt", name, "--model", FLUX, "--steps", "1", *out, *extra
        )
        waiting[name] = session_of(state_dir, name)
        sid = waiting[name]
        assert wait_for(lambda sid=sid: counters(emu, sid).get("waiting_backends") == 1)
    # C ends: A's request triggers the load, which claims every session waiting for it.
    assert cli("cancel", record_with_prompt(state_dir, "c")["id"]).code == 0
    assert finish(c)[0] == 1
    assert wait_for(lambda: all(counters(emu, s)["loading_models"] == 1 for s in waiting.values()))

    # B only waited: its request ends at once, the load's claim on its session stays.
    b_id = record_with_prompt(state_dir, "b")["id"]
    waited = cli("cancel", b_id, "--wait", "--wait-timeout", "3")
    assert waited.code == 0, waited.stderr
    assert counters(emu, waiting["b"]) == {
        "waiting_gens": 0,
        "loading_models": 1,
        "waiting_backends": 0,
        "live_gens": 0,
    }
    code, _, err = finish(processes["b"])
    assert code == 1 and "cancelled" in err
    assert record_with_prompt(state_dir, "b")["status"] == "cancelled"

    # Cancelling A, which triggered the load, fails the load: D, the other waiter on this
    # one-backend server, fails with SwarmUI's load error and that is not a cancel.
    assert cli("cancel", record_with_prompt(state_dir, "a")["id"]).code == 0
    assert finish(processes["a"])[0] == 1
    code, stdout, err = finish(processes["d"])
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("request failed: ")
    assert "All available backends failed to load the model" in last
    document = json.loads(stdout)
    assert document["ok"] is False and document["error"]["code"] == "server_error"
    assert record_with_prompt(state_dir, "d")["status"] == "failed"
    assert all(counters(emu, s)["loading_models"] == 0 for s in waiting.values())


# -- items 2 and 3: only a known cancel is a cancel ---------------------------------------------


def test_a_silent_short_ending_is_a_failure_not_a_cancel(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    emu = emulator_factory(silent_task_failures=1)
    cli.url = emu.url
    result = cli("generate", "image", "--prompt", "x", "--output-dir", str(workdir), "-f", "json")
    assert result.code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("request failed: ") and "ended without images" in last
    assert "server" in last and "log" in last
    assert not last.startswith("cancelled")
    document = result.json()
    assert document["ok"] is False and document["error"]["code"] == "server_error"
    assert record_with_prompt(state_dir, "x")["status"] == "failed"
    assert emu.interrupted_sessions() == []


def test_the_first_error_decides_when_interrupted_text_follows_it(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    failure = "Something went wrong while generating images."
    emu = emulator_factory(backends=2, step_seconds=0.05, task_errors=[failure])
    cli.url = emu.url
    result = cli(
        "generate", "image", "--prompt", "x", "-n", "2", "--steps", "50",
        "--output-dir", str(workdir), "-f", "json",
    )  # fmt: skip
    assert result.code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("request failed: ") and failure in last
    document = result.json()
    assert document["error"]["code"] == "server_error"
    assert document["error"]["message"].startswith("request failed: ")
    assert record_with_prompt(state_dir, "x")["status"] == "failed"
    # The other task was stopped by SwarmUI itself, which then said "interrupted".
    assert emu.interrupted_sessions() == []


def test_interrupted_text_alone_is_still_a_cancel(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    import httpx

    emu = emulator_factory(step_seconds=0.05)
    cli.url = emu.url
    process = cli.start("generate", "image", "--prompt", "x", "--steps", "200", "-o", str(workdir))
    sid = session_of(state_dir, "x")
    assert wait_for(lambda: counters(emu, sid).get("live_gens") == 1)
    # Someone else (the web UI) interrupts the session: no mark in our registry.
    httpx.post(f"{emu.url}/API/InterruptAll", json={"session_id": sid}).raise_for_status()
    code, _, err = finish(process)
    assert code == 1
    assert "Generation session interrupted." in err
    assert record_with_prompt(state_dir, "x")["status"] == "cancelled"


# -- item 6: the HTTP fallback honours a cancel mark ---------------------------------------------


def _refuse_websocket(delay: float = 0.0):
    from asset_generator.emulator import Fault

    def hook(point):
        if point.transport == "upgrade":
            return Fault(
                delay_seconds=delay,
                status=400,
                headers=[("Content-Type", "text/plain")],
                body=b"Bad Request",
            )
        return None

    return hook


def test_http_fallback_sends_nothing_after_an_early_cancel(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    # The WebSocket handshake takes a while and is then refused; `cancel` lands meanwhile,
    # before the server could have claimed anything.
    emu = emulator_factory(faults=_refuse_websocket(delay=1.5))
    cli.url = emu.url
    process = cli.start("generate", "image", "--prompt", "x", "-o", str(workdir), "-f", "json")
    session_of(state_dir, "x")
    cancelled = cli("cancel")
    assert cancelled.code == 0, cancelled.stderr
    code, stdout, _ = finish(process)
    assert code == 1
    assert json.loads(stdout)["error"]["code"] == "cancelled"
    assert emu.calls("GenerateText2Image") == []
    assert record_with_prompt(state_dir, "x")["status"] == "cancelled"
    assert list(workdir.iterdir()) == []


def test_http_fallback_interrupts_when_a_cancel_mark_appears(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    from asset_generator.registry import Registry

    emu = emulator_factory(faults=_refuse_websocket(), step_seconds=0.02)
    cli.url = emu.url
    process = cli.start("generate", "image", "--prompt", "x", "--steps", "300", "-o", str(workdir))
    sid = session_of(state_dir, "x")
    assert wait_for(lambda: counters(emu, sid).get("live_gens") == 1)
    # A cancel whose InterruptAll was lost (it reached the server before the request did)
    # leaves only its mark in the registry.
    with Registry(state_dir).transaction() as state:
        state.generations[record_with_prompt(state_dir, "x")["id"]].finish("cancelled", "by test")
    code, _, err = finish(process)
    assert code == 1 and "Generation session interrupted." in err
    assert sid in emu.interrupted_sessions()
    assert record_with_prompt(state_dir, "x")["status"] == "cancelled"
    assert list(workdir.iterdir()) == []
    assert len(emu.calls("GenerateText2Image")) == 1


# -- item 7: only a recognised InterruptGeneration answer is believed ---------------------------


def test_interrupt_generation_answer_must_say_success() -> None:
    import httpx

    from asset_generator.swarm.client import SwarmClient
    from asset_generator.swarm.errors import InvalidSession, UnknownRoute
    from asset_generator.swarm.http import Transport

    def client_answering(status: int, body: object) -> SwarmClient:
        mock = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
        return SwarmClient(Transport("http://swarm.test", None, transport=mock, timeout=5))

    client_answering(200, {"success": True}).interrupt_generation("s1")
    for status, body in [
        (200, {"error": "This route is for admins of the fork."}),
        (200, {"result": "ok"}),
        (200, {"success": False}),
        (200, {"success": "yes"}),
        (400, {"error_id": "bad_route", "error": "Unknown API route"}),
    ]:
        with pytest.raises(UnknownRoute):
            client_answering(status, body).interrupt_generation("s1")
    stale = {"error": "Invalid session ID.", "error_id": "invalid_session_id"}
    with pytest.raises(InvalidSession):
        client_answering(401, stale).interrupt_generation("s1")


@pytest.mark.parametrize("answer", [b'{"error": "no such job"}', b'{"interrupted": 0}'])
def test_cancel_falls_back_when_interrupt_generation_answers_oddly(
    cli: Runner, emulator_factory, state_dir: Path, answer: bytes
) -> None:
    from asset_generator.emulator import Fault

    def hook(point):
        # A fork's InterruptGeneration, which does not stop our session.
        if point.transport == "http" and point.route == "interruptgeneration":
            return Fault(status=200, headers=[("Content-Type", "application/json")], body=answer)
        return None

    emu = emulator_factory(backends=1, step_seconds=0.05, faults=hook)
    cli.url = emu.url
    for prompt in ("first", "second"):
        process = cli.start("generate", "image", "--prompt", prompt, "--steps", "400")
        sid = session_of(state_dir, prompt)
        assert wait_for(lambda sid=sid: counters(emu, sid).get("live_gens") == 1)
        result = cli("cancel")
        assert result.code == 0, result.stderr
        assert finish(process)[0] == 1
        assert sid in emu.interrupted_sessions()
        assert record_with_prompt(state_dir, prompt)["status"] == "cancelled"
        servers = read_registry(state_dir)["servers"]
        assert [s["adapter"]["interrupt_generation"] for s in servers.values()] == [False]
    # Remembered: the second cancel went straight to InterruptAll on its session.
    assert len(emu.calls("InterruptGeneration")) == 1
    interrupts = emu.calls("InterruptAll")
    assert len(interrupts) == 2 and all(c.body["other_sessions"] is False for c in interrupts)


# -- item 8: a LoRA name with a comma cannot be sent ---------------------------------------------


def test_lora_with_a_comma_is_refused_before_sending(cli: Runner, emulator: Emulator) -> None:
    result = cli("generate", "image", "--prompt", "x", "--lora", "style/a,b.safetensors:0.5")
    assert result.code == 2
    assert "comma" in result.stderr and "SwarmUI" in result.stderr
    assert "Traceback" not in result.stderr
    as_json = cli("generate", "image", "--prompt", "x", "--lora", "a,b", "-f", "json")
    assert as_json.code == 2
    assert as_json.json()["error"]["code"] == "usage_error"
    assert emulator.requests == []


# -- item 4: mini-grids and intermediate images are not outputs ---------------------------------


def test_grid_and_intermediates_are_neither_counted_nor_saved(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    emu = emulator_factory(max_images_in_mini_grid=4)
    cli.url = emu.url
    result = cli(
        "generate", "image", "--prompt", "x", "-n", "2", "--steps", "2",
        "--param", "outputintermediateimages=true", "-o", str(workdir), "-f", "json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    document = result.json()
    assert sorted(image["batch_index"] for image in document["images"]) == [0, 1]
    assert sorted(path.name for path in workdir.iterdir()) == sorted(
        Path(image["path"]).name for image in document["images"]
    )
    assert len(list(workdir.iterdir())) == 2
    skipped = sorted((s["kind"], s["batch_index"]) for s in document["skipped"])
    assert skipped == [("grid", -1), ("intermediate", -12), ("intermediate", -11)]
    assert all(s["server_path"].startswith("View/") for s in document["skipped"])
    # The server did send five images; the record lists only the two results.
    assert len(emu.saved_outputs()) == 5
    assert len(record_with_prompt(state_dir, "x")["images"]) == 2


def test_no_grid_by_default_and_none_for_a_single_image(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(max_images_in_mini_grid=4)
    cli.url = emu.url
    result = cli(
        "generate", "image", "--prompt", "x", "--steps", "1", "-o", str(workdir), "-f", "json"
    )
    assert result.code == 0 and result.json()["skipped"] == []
    assert len(emu.saved_outputs()) == 1


# -- item 5: version and server id belong to the running process -------------------------------


def test_status_shows_the_restarted_servers_version_and_id(
    cli: Runner, emulator_factory, state_dir: Path, tmp_path: Path
) -> None:
    from asset_generator.registry import Registry

    sessions = tmp_path / "sessions.json"
    first = emulator_factory(sessions_file=sessions, version="0.9.8.1.GIT-old")
    cli.url = first.url
    before = cli("status", "-f", "json").json()
    assert before["version"] == "0.9.8.1.GIT-old"
    port = first.port
    first.stop()
    second = emulator_factory(sessions_file=sessions, version="0.9.8.2.GIT-new", port=port)
    assert second.url == cli.url
    # The cached session still works on the restarted server (restored from its database)...
    cached = read_registry(state_dir)["servers"]
    assert len(next(iter(cached.values()))["adapter"]["sessions"]) == 1
    # ...and is older than the facts may be: the minute has passed.
    with Registry(state_dir).transaction() as state:
        for server in state.servers.values():
            for session in server.adapter["sessions"]:
                session["created"] -= 120
    after = cli("status", "-f", "json").json()
    assert after["version"] == "0.9.8.2.GIT-new"
    assert after["server_id"] != before["server_id"]
    assert second.sessions_created == 1
    # Within the minute the fresh session is reused: no session per status run.
    assert cli("status", "-f", "json").json()["server_id"] == after["server_id"]
    assert second.sessions_created == 1


def test_a_restart_our_commands_saw_shows_at_once(
    cli: Runner, emulator_factory, tmp_path: Path
) -> None:
    # Issue 19 item 7: within the minute the old version and server id were still shown.
    sessions = tmp_path / "sessions.json"
    first = emulator_factory(sessions_file=sessions, version="0.9.8.1.GIT-old")
    cli.url = first.url
    before = cli("status", "-f", "json").json()
    assert before["version"] == "0.9.8.1.GIT-old"
    port = first.port
    first.stop()
    # Any command of ours that finds the server away (here `status`, as `--watch` does
    # every second) means the next facts may belong to another process.
    assert cli("status", "-q").code == 1
    second = emulator_factory(sessions_file=sessions, version="0.9.8.2.GIT-new", port=port)
    after = cli("status", "-f", "json").json()
    assert after["version"] == "0.9.8.2.GIT-new"
    assert after["server_id"] != before["server_id"]
    assert second.sessions_created == 1
    # Then the session is reused again: one session per server process, not per run.
    for _ in range(3):
        assert cli("status", "-f", "json").json()["server_id"] == after["server_id"]
    assert second.sessions_created == 1


def test_a_restart_whose_backends_are_still_loading_shows_at_once(
    cli: Runner, emulator_factory, tmp_path: Path
) -> None:
    # Nobody of ours saw the server away, but its backends are starting again: the cheap
    # sign GetCurrentStatus gives of a new process, worth one new session.
    sessions = tmp_path / "sessions.json"
    first = emulator_factory(sessions_file=sessions, version="0.9.8.1.GIT-old")
    cli.url = first.url
    before = cli("status", "-f", "json").json()
    port = first.port
    first.stop()
    second = emulator_factory(sessions_file=sessions, version="0.9.8.2.GIT-new", port=port)
    second.set_backend_status("loading")
    after = cli("status", "-f", "json").json()
    assert after["backend_status"]["status"] == "loading"
    assert (after["version"], second.sessions_created) == ("0.9.8.2.GIT-new", 1)
    assert after["server_id"] != before["server_id"]
    # Loading on, then running: the same session, no new one per run.
    for status in ("loading", "running", "running"):
        second.set_backend_status(status)
        assert cli("status", "-f", "json").json()["server_id"] == after["server_id"]
    assert second.sessions_created == 1


def test_busy_is_the_requests_own_claim() -> None:
    from asset_generator.swarm.client import Counters

    # An interrupted session still carrying another request's model-load claim is idle.
    assert not Counters(waiting_gens=0, loading_models=1).busy
    assert Counters(waiting_gens=1).busy
    assert Counters(waiting_gens=1, live_gens=1).busy
