"""Cancelling on ComfyUI (protocol §5): the interrupt table and the queue delete/clear no-ops.

On a real server only targeted interrupts of our own prompts are sent; the global forms, the
lost idle interrupt and clearing the queue run against the emulator only.
"""

from __future__ import annotations

import uuid

from comfy_helpers import Frame, Socket, Target, slow_graph


def _long(comfy: Target, sock: Socket) -> str:
    prompt_id = comfy.submit(slow_graph(400, comfy.step), client_id=sock.client_id)
    sock.wait_for(lambda f: f.type == "progress" and f.prompt_id == prompt_id)
    return prompt_id


def _outcome(comfy: Target, sock: Socket, prompt_id: str) -> str:
    sock.wait_end(prompt_id)
    entry = comfy.history(prompt_id)[prompt_id]
    return entry["status"]["messages"][-1][0]


def _remaining(frame: Frame) -> int | None:
    """A status frame's queue_remaining (None for any other frame)."""
    if frame.type != "status":
        return None
    return frame.data["status"]["exec_info"]["queue_remaining"]


def test_targeted_interrupt_of_the_running_prompt(comfy: Target) -> None:
    sock = comfy.socket()
    prompt_id = _long(comfy, sock)
    answer = comfy.http.post("/interrupt", json={"prompt_id": prompt_id})
    assert (answer.status_code, answer.content) == (200, b"")
    sock.wait_end(prompt_id)
    ours = sock.of(prompt_id)
    interrupted = next(f for f in ours if f.type == "execution_interrupted").data
    assert set(interrupted) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    assert (interrupted["node_id"], interrupted["node_type"]) == ("1", "SlowSolidImage")
    assert interrupted["executed"] == []
    types = [f.type for f in ours]
    assert "execution_success" not in types and "executed" not in types
    entry = comfy.history(prompt_id)[prompt_id]
    assert (entry["status"]["status_str"], entry["status"]["completed"]) == ("error", False)
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert entry["outputs"] == {}
    running_ids, pending_ids = comfy.queue_ids()
    assert prompt_id not in running_ids + pending_ids


def test_interrupts_that_hit_nothing(comfy: Target) -> None:
    sock = comfy.socket()
    running = _long(comfy, sock)
    pending = comfy.submit(slow_graph(1, 0.0), client_id=sock.client_id)
    finished = f"ag-never-{uuid.uuid4()}"
    for body in ({"prompt_id": pending}, {"prompt_id": finished}, {"prompt_id": ["a"]}):
        answer = comfy.http.post("/interrupt", json=body)
        assert (answer.status_code, answer.content) == (200, b""), body
    sock.settle()
    assert "execution_interrupted" not in [f.type for f in sock.snapshot()]
    comfy.http.post("/interrupt", json={"prompt_id": running})
    assert _outcome(comfy, sock, running) == "execution_interrupted"
    # The pending prompt was not touched: it runs to the end.
    assert _outcome(comfy, sock, pending) == "execution_success"


def test_queue_delete_removes_pending_only(comfy: Target) -> None:
    sock = comfy.socket()
    running = _long(comfy, sock)
    pending = comfy.submit(slow_graph(1, 0.0), client_id=sock.client_id)
    answer = comfy.http.post("/queue", json={"delete": [pending, running, "unknown-id"]})
    assert (answer.status_code, answer.content) == (200, b"")
    running_ids, pending_ids = comfy.queue_ids()
    assert running in running_ids and pending not in pending_ids
    sock.settle()
    assert sock.of(pending) == []
    comfy.http.post("/interrupt", json={"prompt_id": running})
    assert _outcome(comfy, sock, running) == "execution_interrupted"
    assert comfy.history(pending) == {}  # a deleted pending prompt never reaches history


def test_global_interrupts(emulator_only) -> None:
    target = emulator_only()
    sock = target.socket()
    json_type = {"content-type": "application/json"}
    for body in (None, b"", b"{}", b'{"prompt_id": null}', b'{"prompt_id": ""}', b"abc"):
        prompt_id = _long(target, sock)
        answer = target.http.post("/interrupt", content=body, headers=json_type)
        assert (answer.status_code, answer.content) == (200, b""), body
        assert _outcome(target, sock, prompt_id) == "execution_interrupted", body


def test_an_interrupt_while_idle_is_lost(emulator_only) -> None:
    target = emulator_only()
    sock = target.socket()
    target.http.post("/interrupt")
    prompt_id = target.submit(slow_graph(2, 0.01), client_id=sock.client_id)
    assert _outcome(target, sock, prompt_id) == "execution_success"


def test_before_0_3_57_every_interrupt_is_global(emulator_only) -> None:
    target = emulator_only(comfy_version="0.3.50")
    sock = target.socket()
    running = _long(target, sock)
    pending = target.submit(slow_graph(1, 0.0), client_id=sock.client_id)
    target.http.post("/interrupt", json={"prompt_id": pending})  # aimed at the pending one
    assert _outcome(target, sock, running) == "execution_interrupted"
    assert _outcome(target, sock, pending) == "execution_success"
    # Nor does it read the body: a JSON string is no error there.
    running = _long(target, sock)
    answer = target.http.post("/interrupt", content=b'"x"')
    assert answer.status_code == 200
    assert _outcome(target, sock, running) == "execution_interrupted"


def test_clear_keeps_the_running_prompt_and_cancel_all_order(emulator_only) -> None:
    target = emulator_only()
    sock = target.socket()
    running = _long(target, sock)
    pending = [target.submit(slow_graph(1, 0.0), client_id=sock.client_id) for _ in range(3)]
    # The last submit's status first: a status frame counted after the clear is then its own.
    sock.wait_for(lambda f: _remaining(f) == 4)
    before = len(sock.snapshot())
    assert target.http.post("/queue", json={"clear": True}).content == b""
    running_ids, pending_ids = target.queue_ids()
    assert (running_ids, pending_ids) == ([running], [])
    sock.wait_for(lambda f: 1 in [_remaining(g) for g in sock.snapshot()[before:]])
    target.http.post("/interrupt")
    assert _outcome(target, sock, running) == "execution_interrupted"
    assert all(target.history(p) == {} for p in pending)


def test_deleting_the_only_pending_prompt_sends_two_statuses(emulator_only) -> None:
    target = emulator_only()
    sock = target.socket()
    running = _long(target, sock)
    pending = target.submit(slow_graph(1, 0.0), client_id=sock.client_id)
    sock.wait_for(lambda f: f.type == "status" and f.data["status"]["exec_info"][
        "queue_remaining"] == 2)  # fmt: skip
    before = len(sock.snapshot())

    def statuses() -> list[int]:
        later = [f for f in sock.snapshot()[before:] if f.type == "status"]
        return [f.data["status"]["exec_info"]["queue_remaining"] for f in later]

    target.http.post("/queue", json={"delete": [pending]})
    sock.wait_for(lambda f: len(statuses()) >= 2)
    assert statuses()[:2] == [1, 1]  # wipe_queue's, then delete_queue_item's (execution.py)
    target.http.post("/interrupt", json={"prompt_id": running})
