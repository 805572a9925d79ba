"""The WebSocket (protocol §4): greeting, event order, routing, reconnects, previews."""

from __future__ import annotations

import json
import struct
import threading
import time

from comfy_helpers import Frame, Socket, Target, sd_graph, slow_graph, unique

PROMPT_EVENTS = {
    "execution_start",
    "execution_cached",
    "executing",
    "executed",
    "execution_success",
    "execution_error",
    "execution_interrupted",
}


def kinds(frames: list[Frame]) -> list[str]:
    return [f.type for f in frames]


def compact(frames: list[Frame], prompt_id: str) -> list[str]:
    """Our prompt's events, and the status broadcasts (abridged) between them."""
    out = []
    for frame in frames:
        if frame.type == "status":
            out.append(f"status:{frame.data['status']['exec_info']['queue_remaining']}")
        elif frame.prompt_id == prompt_id:
            if frame.type == "progress_state":
                nodes = frame.data["nodes"]
                states = ",".join(f"{n}:{s['state']}" for n, s in nodes.items())
                out.append(f"progress_state[{states}]")
            elif frame.type == "executing":
                out.append(f"executing:{frame.data['node']}")
            elif frame.type == "progress":
                out.append(f"progress:{frame.data['value']}/{frame.data['max']}")
            else:
                out.append(frame.type)
    return out


def test_greeting_and_a_server_chosen_sid(comfy: Target) -> None:
    named = comfy.socket("ag-greet-1")
    greeting = named.frames[0]
    assert greeting.type == "status"
    assert greeting.data["sid"] == "ag-greet-1"
    assert set(greeting.data["status"]["exec_info"]) == {"queue_remaining"}
    anonymous = comfy.socket(None)
    assert len(anonymous.sid) == 32 and int(anonymous.sid, 16) >= 0
    # The server-chosen sid works as the client_id of a prompt.
    prompt_id = comfy.submit(slow_graph(1, 0.0), client_id=anonymous.sid)
    anonymous.wait_end(prompt_id)
    assert "execution_success" in kinds(anonymous.of(prompt_id))


def test_event_order_of_a_normal_run(comfy: Target) -> None:
    sock = comfy.socket()
    prompt_id = comfy.submit(slow_graph(3, 0.02), client_id=sock.client_id)
    end = sock.wait_end(prompt_id)
    start = sock.wait_for(lambda f: f.type == "execution_start" and f.prompt_id == prompt_id)
    sequence = compact(sock.snapshot(), prompt_id)
    events = [e for e in sequence if not e.startswith("status")]
    assert events == [
        "execution_start",
        "execution_cached",
        "progress_state[1:running]",
        "executing:1",
        "progress_state[1:running]",
        "progress:1/3",
        "progress_state[1:running]",
        "progress:2/3",
        "progress_state[1:running]",
        "progress:3/3",
        "progress_state[1:finished]",
        "progress_state[1:finished,2:running]",
        "executing:2",
        "executed",
        "progress_state[1:finished,2:finished]",
        "execution_success",
        "executing:None",
    ]
    ordered = sock.snapshot()
    before_start = [f for f in ordered[: ordered.index(start)] if f.type == "status"]
    assert len(before_start) >= 3  # greeting, put, taken by the worker
    last_status = max(i for i, f in enumerate(ordered) if f.type == "status")
    assert ordered.index(end) > last_status  # history is written before the end marker
    if comfy.is_emulator:
        assert sequence[:3] == ["status:0", "status:1", "status:1"]
        assert sequence[-2:] == ["status:0", "executing:None"]
    states = [f for f in sock.of(prompt_id) if f.type == "progress_state"]
    assert states[0].data["nodes"]["1"] == {
        "value": 0.0,
        "max": 1.0,
        "state": "running",
        "node_id": "1",
        "prompt_id": prompt_id,
        "display_node_id": "1",
        "parent_node_id": None,
        "real_node_id": "1",
    }
    assert states[-1].data["nodes"]["2"]["value"] == 1.0
    executed = next(f for f in sock.of(prompt_id) if f.type == "executed")
    assert executed.data["node"] == executed.data["display_node"] == "2"
    assert executed.data["output"]["images"][0]["type"] == "output"
    # The end marker is the safe point: history is already there.
    entry = comfy.history(prompt_id)[prompt_id]
    assert entry["status"] == {
        "status_str": "success",
        "completed": True,
        "messages": entry["status"]["messages"],
    }
    assert entry["outputs"]["2"] == executed.data["output"]


def test_routing_to_the_owner_only(comfy: Target) -> None:
    owner, other, anonymous = comfy.socket(), comfy.socket(), comfy.socket(None)
    prompt_id = comfy.submit(slow_graph(2, 0.01), client_id=owner.client_id)
    owner.wait_end(prompt_id)
    other.settle()
    assert {"execution_start", "progress", "executed"} <= set(kinds(owner.of(prompt_id)))
    assert other.of(prompt_id) == [] and anonymous.of(prompt_id) == []
    assert {f.type for f in other.snapshot()} <= {"status", "progress", "progress_state"}

    nobody = comfy.submit(slow_graph(1, 0.0), client_id=f"ag-nobody-{time.time_ns()}")
    comfy.wait_history(nobody)
    owner.settle()
    for sock in (owner, other, anonymous):
        assert sock.of(nobody) == []


def test_a_prompt_without_client_id_broadcasts_only_progress(comfy: Target) -> None:
    first, second = comfy.socket(), comfy.socket(None)
    prompt_id = comfy.submit(slow_graph(2, 0.01))
    comfy.wait_history(prompt_id)
    first.settle()
    for sock in (first, second):
        seen = set(kinds(sock.of(prompt_id)))
        assert seen == {"progress", "progress_state"}, seen
    failing = comfy.submit(slow_graph(3, 0.01, fail_at_step=1))
    interrupted = comfy.submit(slow_graph(400, 0.02))
    assert comfy.wait_history(failing)["status"]["status_str"] == "error"
    comfy.wait_running(interrupted)
    comfy.http.post("/interrupt", json={"prompt_id": interrupted})
    comfy.wait_history(interrupted)
    first.settle()
    for sock in (first, second):
        # execution_error goes to nobody; execution_interrupted to everybody.
        assert "execution_error" not in kinds(sock.of(failing))
        assert "execution_interrupted" in kinds(sock.of(interrupted))
        assert "execution_start" not in kinds(sock.of(interrupted))


def test_failure_and_interrupt_events(comfy: Target) -> None:
    sock = comfy.socket()
    failing = comfy.submit(slow_graph(4, 0.01, fail_at_step=2), client_id=sock.client_id)
    sock.wait_end(failing)
    error = next(f for f in sock.of(failing) if f.type == "execution_error").data
    assert error["node_id"] == "1" and error["node_type"] == "SlowSolidImage"
    assert error["executed"] == []
    assert error["exception_message"] == "SlowSolidImage: requested failure at step 2\n"
    assert error["exception_type"] == "RuntimeError"
    assert isinstance(error["traceback"], list) and error["traceback"]
    assert error["current_inputs"]["steps"] == [4]
    assert error["current_inputs"]["fail_at_step"] == [2]
    assert sorted(error["current_outputs"]) == ["1", "2"]
    progress = [f for f in sock.of(failing) if f.type == "progress"]
    assert [f.data["value"] for f in progress] == [1]
    entry = comfy.history(failing)[failing]
    assert (entry["status"]["status_str"], entry["status"]["completed"]) == ("error", False)
    assert entry["status"]["messages"][-1][0] == "execution_error"
    assert entry["outputs"] == {}

    evil = slow_graph(1, 0.0, prefix="../evil")
    escaped = comfy.submit(evil, client_id=sock.client_id)
    sock.wait_end(escaped)
    error = next(f for f in sock.of(escaped) if f.type == "execution_error").data
    assert (error["node_id"], error["node_type"]) == ("2", "SaveImage")
    assert error["executed"] == ["1"]
    assert error["exception_type"] == "Exception"
    assert error["exception_message"].startswith(
        "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: "
    )


def test_reconnect_during_a_run(comfy: Target) -> None:
    client_id = f"ag-reconnect-{time.time_ns()}"
    first = comfy.socket(client_id)
    # A run of about 2 s on either server (the real one's step is longer): the reconnect must
    # land while node 1 still runs, even on a loaded machine.
    steps = round(2.0 / comfy.step)
    prompt_id = comfy.submit(slow_graph(steps, comfy.step), client_id=client_id)
    first.wait_for(lambda f: f.type == "progress" and f.prompt_id == prompt_id)
    first.close()
    second = comfy.socket(client_id)
    # The greeting is awaited on connecting; the frame after it may still be on its way.
    second.wait_for(lambda f: f.type == "executing")
    assert second.frames[0].data["status"]["exec_info"]["queue_remaining"] >= 1
    assert second.frames[1].type == "executing"
    assert second.frames[1].data == {"node": "1"}  # only the node: no prompt_id
    second.wait_end(prompt_id)
    assert "execution_success" in kinds(second.of(prompt_id))


def test_a_reused_client_id_silences_the_newer_socket(comfy: Target) -> None:
    client_id = f"ag-reuse-{time.time_ns()}"
    older = comfy.socket(client_id)
    newer = comfy.socket(client_id)
    prompt_id = comfy.submit(slow_graph(1, 0.0), client_id=client_id)
    newer.wait_end(prompt_id)
    older.settle()  # anything sent to the older socket has had time to arrive
    assert older.of(prompt_id) == []  # replaced: the older socket hears nothing
    older.close()  # ...and its clean-up removes the newer socket's entry
    newer.settle()
    heard = len(newer.snapshot())
    silenced = comfy.submit(slow_graph(1, 0.0), client_id=client_id)
    comfy.wait_history(silenced)
    newer.settle()
    assert newer.snapshot()[heard:] == []  # not even the status broadcasts
    assert not newer.closed


def test_a_disconnect_does_not_cancel(comfy: Target) -> None:
    sock = comfy.socket()
    graph = slow_graph(4, comfy.step, prefix=unique("gone"))
    prompt_id = comfy.submit(graph, client_id=sock.sid)
    sock.wait_for(lambda f: f.type == "progress" and f.prompt_id == prompt_id)
    sock.close()
    entry = comfy.wait_history(prompt_id)
    assert entry["status"]["status_str"] == "success"
    image = entry["outputs"]["2"]["images"][0]
    assert comfy.view(image).status_code == 200


def test_feature_flags_only_as_the_first_frame(comfy: Target) -> None:
    negotiated = comfy.socket(feature_flags=True)
    reply = negotiated.wait_for(lambda f: f.type == "feature_flags")
    assert reply.data == {"supports_preview_metadata": True, "max_upload_size": 104857600}
    negotiated.ws.send_text(json.dumps({"type": "feature_flags", "data": {}}))
    late = comfy.socket()
    late.ws.send_text(json.dumps({"type": "hello", "data": {}}))
    late.ws.send_text(
        json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    )
    negotiated.settle()
    assert kinds(negotiated.snapshot()).count("feature_flags") == 1
    assert "feature_flags" not in kinds(late.snapshot())


def _preview_run(comfy: Target, sock: Socket) -> list[Frame]:
    prompt_id = comfy.submit(slow_graph(2, 0.01, preview=True), client_id=sock.client_id)
    sock.wait_end(prompt_id)
    frames = sock.snapshot()
    start = next(i for i, f in enumerate(frames) if f.prompt_id == prompt_id)
    return frames[start:]


def test_binary_preview_frames_in_both_formats(comfy: Target) -> None:
    legacy = comfy.socket()
    frames = _preview_run(comfy, legacy)
    binary = [f for f in frames if f.binary is not None]
    assert len(binary) == 2 and {f.type for f in binary} == {"binary:1"}
    (image_type,) = struct.unpack(">I", binary[0].binary[4:8])
    assert image_type == 1 and binary[0].binary[8:10] == b"\xff\xd8"  # JPEG
    order = [f.type for f in frames if f.type in ("progress", "binary:1")]
    assert order == ["progress", "binary:1", "progress", "binary:1"]

    negotiated = comfy.socket(feature_flags=True)
    negotiated.wait_for(lambda f: f.type == "feature_flags")
    frames = _preview_run(comfy, negotiated)
    binary = [f for f in frames if f.binary is not None]
    assert {f.type for f in binary} == {"binary:4"}
    (length,) = struct.unpack(">I", binary[0].binary[4:8])
    metadata = json.loads(binary[0].binary[8 : 8 + length])
    assert metadata["node_id"] == "1" and metadata["image_type"] == "image/jpeg"
    assert metadata["display_node_id"] == "1" and metadata["parent_node_id"] is None
    assert binary[0].binary[8 + length : 10 + length] == b"\xff\xd8"
    order = [f.type for f in frames if f.type in ("progress", "binary:4")]
    assert order == ["binary:4", "progress", "binary:4", "progress"]


def test_events_can_arrive_before_the_post_reply(emulator_only) -> None:
    target = emulator_only(latency_seconds=0.15)
    sock = target.socket()
    prompt_id = "ag-early-" + str(time.time_ns())
    target.submitted.append(prompt_id)
    target.http.post("/prompt", json={"prompt": slow_graph(1, 0.0), "client_id": sock.sid,
                                      "prompt_id": prompt_id})  # fmt: skip
    replied = time.monotonic()
    start = sock.wait_for(lambda f: f.type == "execution_start" and f.prompt_id == prompt_id)
    assert start.at < replied


def test_dropping_websockets_mid_run(emulator_only) -> None:
    target = emulator_only()
    emulator = target.require_emulator()
    kept, dropped = target.socket(), target.socket()
    prompt_id = target.submit(slow_graph(20, 0.02), client_id=dropped.client_id)
    dropped.wait_for(lambda f: f.type == "progress")
    assert emulator.drop_websockets(dropped.client_id) == 1
    dropped.wait_closed()
    assert not kept.closed
    entry = target.wait_history(prompt_id)
    assert entry["status"]["status_str"] == "success"  # the run goes on without its socket
    assert emulator.drop_websockets() == 1


def test_ksampler_previews_need_a_preview_method(emulator_only) -> None:
    for method, expected in (("none", 0), ("latent2rgb", 3)):
        target = emulator_only(preview_method=method, step_seconds=0.0)
        sock = target.socket()
        prompt_id = target.submit(sd_graph(**{"3.steps": 3}), client_id=sock.client_id)
        sock.wait_end(prompt_id)
        frames = sock.snapshot()
        assert len([f for f in frames if f.binary is not None]) == expected, method


def test_many_sockets_and_threads_do_not_leak(emulator_only) -> None:
    before = threading.active_count()
    target = emulator_only()
    sockets = [target.socket() for _ in range(5)]
    prompt_id = target.submit(slow_graph(1, 0.0), client_id=sockets[0].client_id)
    sockets[0].wait_end(prompt_id)
    emulator = target.require_emulator()
    for sock in sockets:
        sock.close()
    target.sockets.clear()
    target.submitted.clear()
    emulator.stop()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
