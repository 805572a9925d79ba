"""InterruptAll semantics: per session or per user, queued vs running work (protocol §5)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
from httpx_ws import connect_ws
from swarm_helpers import Transcript, call, new_session

from asset_generator.emulator import Emulator


class Background:
    """Run ``function`` in a thread and keep its result."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.result: Any = None
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True)
        self._thread.start()

    def _run(self, function: Callable[[], Any]) -> None:
        self.result = function()

    def join(self, timeout: float = 15) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish"
        return self.result


def http_generate(url: str, sid: str, **body: Any) -> Background:
    def run() -> dict[str, Any]:
        with httpx.Client(base_url=url, timeout=20) as client:
            return call(client, "GenerateText2Image", sid, **body).json()

    return Background(run)


def ws_generate(url: str, sid: str, **body: Any) -> Background:
    def run() -> Transcript:
        transcript = Transcript()
        with (
            httpx.Client(base_url=url) as client,
            connect_ws("/API/GenerateText2ImageWS", client) as ws,
        ):
            ws.send_text(json.dumps({"session_id": sid, **body}))
            try:
                while True:
                    transcript.messages.append(json.loads(ws.receive_text(timeout=15)))
            except Exception as closed:  # WebSocketDisconnect ends the transcript
                transcript.close_code = getattr(closed, "code", None)
        return transcript

    return Background(run)


def live(emu: Emulator, sid: str) -> bool:
    return emu.wait_until(lambda: emu.session_status(sid)["live_gens"] == 1)


def test_running_work_reports_interrupted_and_queued_work_vanishes(emulator_factory) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.02)
    with httpx.Client(base_url=emu.url) as client:
        running_sid, queued_sid = new_session(client), new_session(client)
        running = http_generate(emu.url, running_sid, images=1, steps=200)
        assert live(emu, running_sid)
        queued = http_generate(emu.url, queued_sid, images=2, steps=2)
        assert emu.wait_until(lambda: emu.session_status(queued_sid)["waiting_backends"] >= 1)

        assert call(client, "InterruptAll", queued_sid).json() == {"success": True}
        # Everything of that request was still queued: a short (here empty) list, no error.
        assert queued.join() == {"images": []}
        assert emu.session_status(running_sid)["live_gens"] == 1

        assert call(client, "InterruptAll", running_sid, other_sessions=False).json() == {
            "success": True
        }
        assert running.join() == {"error": "Generation session interrupted."}
        assert emu.interrupted_sessions() == [queued_sid, running_sid]
        assert emu.active_sessions() == []

        # A request submitted after the interrupt is unaffected.
        after = call(client, "GenerateText2Image", running_sid, images=1, steps=1).json()
        assert len(after["images"]) == 1
        # Idempotent: nothing running still answers success.
        assert call(client, "InterruptAll", running_sid).json() == {"success": True}


def test_interrupted_websocket_gets_the_error_and_the_normal_tail(emulator_factory) -> None:
    emu = emulator_factory(step_seconds=0.02)
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        job = ws_generate(emu.url, sid, images=1, steps=200)
        assert live(emu, sid)
        call(client, "InterruptAll", sid)
        transcript = job.join()
    kinds = transcript.kinds()
    assert transcript.of("error") == [{"error": "Generation session interrupted."}]
    assert "image" not in kinds
    assert kinds[-4:] == ["keep_alive", "discard_indices", "socket_intention", "status"]
    assert transcript.close_code == 1000
    assert transcript.statuses()[-1] == (0, 0, 0, 0)


def test_interrupt_is_per_session_without_other_sessions(emulator_factory) -> None:
    emu = emulator_factory(backends=2, step_seconds=0.02)
    with httpx.Client(base_url=emu.url) as client:
        first, second = new_session(client), new_session(client)
        one = ws_generate(emu.url, first, images=1, steps=40)
        two = ws_generate(emu.url, second, images=1, steps=40)
        assert live(emu, first) and live(emu, second)
        call(client, "InterruptAll", first)
        assert one.join().of("error") and not two.join().of("error")
        assert len(two.join().of("image")) == 1
    assert emu.interrupted_sessions() == [first]


def test_other_sessions_reaches_every_session_of_the_user_only(emulator_factory) -> None:
    emu = emulator_factory(accounts=True, backends=3, step_seconds=0.02)
    alice, bob = emu.add_user("alice"), emu.add_user("bob")
    with httpx.Client(base_url=emu.url) as client:
        a1 = new_session(client, Cookie=f"swarm_token={alice}")
        a2 = new_session(client, Cookie=f"swarm_token={alice}")
        b1 = new_session(client, Cookie=f"swarm_token={bob}")
        jobs = {sid: ws_generate(emu.url, sid, images=1, steps=40) for sid in (a1, a2, b1)}
        assert all(live(emu, sid) for sid in jobs)
        assert call(client, "InterruptAll", a2, other_sessions=True).json() == {"success": True}
        results = {sid: job.join() for sid, job in jobs.items()}
    assert results[a1].of("error") and results[a2].of("error")
    assert not results[b1].of("error") and len(results[b1].of("image")) == 1
    assert set(emu.interrupted_sessions()) == {a1, a2}
    assert emu.calls("InterruptAll")[0].body == {"session_id": a2, "other_sessions": True}


def test_accounts_off_other_sessions_interrupts_everyone(emulator_factory) -> None:
    emu = emulator_factory(backends=2, step_seconds=0.02)
    with httpx.Client(base_url=emu.url) as client:
        first, second = new_session(client), new_session(client)
        jobs = [ws_generate(emu.url, sid, images=1, steps=40) for sid in (first, second)]
        assert live(emu, first) and live(emu, second)
        call(client, "InterruptAll", new_session(client), other_sessions=True)
        assert all(job.join().of("error") for job in jobs)
