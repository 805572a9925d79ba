"""POST /prompt (protocol §3): ids, numbers, the heap order, validation, history reads."""

from __future__ import annotations

import uuid
from typing import Any

from comfy_helpers import Target, sd_graph, slow_graph, unique


def rejected(comfy: Target, body: Any) -> dict[str, Any]:
    answer = comfy.http.post("/prompt", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    document = answer.json()
    assert set(document) == {"error", "node_errors"}
    assert set(document["error"]) == {"type", "message", "details", "extra_info"}
    return document


def reason(document: dict[str, Any], node: str) -> dict[str, Any]:
    entry = document["node_errors"][node]
    assert set(entry) == {"errors", "dependent_outputs", "class_type"}
    return entry["errors"][0]


def test_whole_prompt_refusals(comfy: Target) -> None:
    assert rejected(comfy, {"client_id": "x"})["error"] == {
        "type": "no_prompt",
        "message": "No prompt provided",
        "details": "No prompt provided",
        "extra_info": {},
    }
    no_class = rejected(comfy, {"prompt": {"1": {"inputs": {}}}})
    assert no_class["error"]["type"] == "invalid_prompt"
    assert no_class["error"]["message"] == (
        "Cannot execute because a node is missing the class_type property."
    )
    assert no_class["error"]["details"] == "Node ID '#1'"
    unknown = rejected(comfy, {"prompt": {"7": {"class_type": "NoSuchNode", "inputs": {}}}})
    assert unknown["error"]["message"] == "Cannot execute because node NoSuchNode does not exist."
    assert unknown["error"]["details"] == "Node ID '#7'"
    assert unknown["node_errors"] == {}
    for prompt in ({}, {"1": slow_graph()["1"]}):
        empty = rejected(comfy, {"prompt": prompt})
        assert empty["error"]["type"] == "prompt_no_outputs"
        assert empty["error"]["message"] == "Prompt has no outputs"


def test_missing_models_and_bad_combos_are_value_not_in_list(comfy: Target) -> None:
    checkpoint = rejected(comfy, {"prompt": sd_graph(**{"4.ckpt_name": "nope.safetensors"})})
    assert checkpoint["error"]["type"] == "prompt_outputs_failed_validation"
    assert checkpoint["error"]["message"] == "Prompt outputs failed validation"
    found = reason(checkpoint, "4")
    assert found["type"] == "value_not_in_list"
    assert found["message"] == "Value not in list"
    options = comfy.http.get("/models/checkpoints").json()
    assert found["details"] == f"ckpt_name: 'nope.safetensors' not in {options}"
    assert found["extra_info"]["input_name"] == "ckpt_name"
    assert found["extra_info"]["received_value"] == "nope.safetensors"
    assert found["extra_info"]["input_config"][0] == options
    entry = checkpoint["node_errors"]["4"]
    assert entry["class_type"] == "CheckpointLoaderSimple"
    assert entry["dependent_outputs"] == ["9"]

    lora = rejected(comfy, {"prompt": sd_graph(**{"10.lora_name": "missing.safetensors"})})
    assert reason(lora, "10")["type"] == "value_not_in_list"
    assert lora["node_errors"]["10"]["class_type"] == "LoraLoader"

    sampler = rejected(comfy, {"prompt": sd_graph(**{"3.sampler_name": "warp_drive"})})
    found = reason(sampler, "3")
    assert found["type"] == "value_not_in_list"
    assert found["details"].startswith("sampler_name: 'warp_drive' not in (list of length ")
    assert found["extra_info"]["input_config"] is None  # long lists are not sent back


def test_input_reasons(comfy: Target) -> None:
    small = rejected(comfy, {"prompt": slow_graph(steps=-5)})
    found = reason(small, "1")
    assert found["type"] == "value_smaller_than_min"
    assert found["message"] == "Value -5 smaller than min of 1"
    assert found["details"] == "steps"
    assert found["extra_info"]["received_value"] == -5
    assert found["extra_info"]["input_config"][0] == "INT"
    assert small["error"]["details"] == ""  # the output node itself has no reasons

    seed = rejected(comfy, {"prompt": sd_graph(**{"3.seed": 2**64})})
    assert reason(seed, "3")["message"] == (
        "Value 18446744073709551616 bigger than max of 18446744073709551615"
    )
    typed = rejected(comfy, {"prompt": slow_graph(steps="abc")})
    found = reason(typed, "1")
    assert found["type"] == "invalid_input_type"
    assert found["message"] == "Failed to convert an input value to a INT value"
    assert found["details"] == "steps, abc, invalid literal for int() with base 10: 'abc'"

    graph = slow_graph()
    del graph["1"]["inputs"]["width"]
    missing = rejected(comfy, {"prompt": graph})
    assert reason(missing, "1") == {
        "type": "required_input_missing",
        "message": "Required input is missing",
        "details": "width",
        "extra_info": {"input_name": "width"},
    }

    graph = sd_graph()
    graph["9"]["inputs"]["images"] = ["5", 0]
    mismatch = rejected(comfy, {"prompt": graph})
    found = reason(mismatch, "9")
    assert found["type"] == "return_type_mismatch"
    assert found["details"] == "images, received_type(LATENT) mismatch input_type(IMAGE)"
    assert found["extra_info"]["linked_node"] == ["5", 0]

    graph = slow_graph()
    graph["2"]["inputs"]["images"] = ["1"]
    bad_link = rejected(comfy, {"prompt": graph})
    assert reason(bad_link, "2")["type"] == "bad_linked_input"

    graph = slow_graph()
    graph["2"]["inputs"]["images"] = ["9", 0]
    dangling = rejected(comfy, {"prompt": graph})
    found = reason(dangling, "2")
    assert found["type"] == "exception_during_validation"
    assert found["details"] == "'9'"
    assert found["extra_info"]["exception_type"] == "KeyError"
    assert isinstance(found["extra_info"]["traceback"], list)

    load = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "missing-file.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    custom = rejected(comfy, {"prompt": load})
    found = reason(custom, "1")
    assert found["type"] == "custom_validation_failed"
    assert found["details"] == "image - Invalid image file: missing-file.png"


def test_partially_valid_prompt_runs_only_the_valid_outputs(comfy: Target) -> None:
    graph = slow_graph(1, 0.0)
    graph["3"] = {
        "class_type": "SlowSolidImage",
        "inputs": {**graph["1"]["inputs"], "steps": -1},
    }
    graph["4"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["3", 0], "filename_prefix": unique("bad")},
    }
    sock = comfy.socket()
    answer = comfy.post_prompt(graph, client_id=sock.client_id)
    assert answer.status_code == 200
    body = answer.json()
    assert body["node_errors"]["3"]["dependent_outputs"] == ["4"]
    assert body["node_errors"]["3"]["errors"][0]["type"] == "value_smaller_than_min"
    prompt_id = body["prompt_id"]
    sock.wait_end(prompt_id)
    entry = comfy.history(prompt_id)[prompt_id]
    assert entry["prompt"][4] == ["2"]
    assert list(entry["outputs"]) == ["2"]
    assert entry["status"]["status_str"] == "success"


def test_prompt_ids_numbers_and_conversions(comfy: Target) -> None:
    sock = comfy.socket()
    own = f"my-own-id-{uuid.uuid4()}"
    first = comfy.post_prompt(slow_graph("1", 0.0), prompt_id=own, client_id=sock.sid)
    assert first.status_code == 200 and first.json()["prompt_id"] == own
    refused = comfy.http.post("/prompt", json={"prompt": slow_graph(steps=0)})
    assert refused.status_code == 400
    numbered = 9_000_000_000 + uuid.uuid4().int % 1_000_000
    second = comfy.post_prompt(slow_graph(1, 0.0), prompt_id=numbered, client_id=sock.sid)
    assert second.json()["prompt_id"] == str(numbered)
    n1, n2 = first.json()["number"], second.json()["number"]
    assert n2 >= n1 + 2  # the refused prompt used a number too
    if comfy.is_emulator:
        assert n2 == n1 + 2
    explicit = comfy.post_prompt(slow_graph(1, 0.0), number="5", client_id=sock.sid)
    assert explicit.json()["number"] == 5.0
    third = comfy.post_prompt(slow_graph(1, 0.0), client_id=sock.sid)
    assert third.json()["number"] >= n2 + 1  # an explicit number takes none
    for answer in (first, second, explicit, third):
        sock.wait_end(answer.json()["prompt_id"])
    # Validation converted "1" to 1 in the prompt that ran.
    entry = comfy.history(own)[own]
    assert entry["prompt"][2]["1"]["inputs"]["steps"] == 1
    assert entry["prompt"][0] == n1 and entry["prompt"][1] == own
    assert entry["prompt"][3] == {"client_id": sock.sid}


def test_duplicate_prompt_ids_both_run_and_history_keeps_one(comfy: Target) -> None:
    sock = comfy.socket()
    duplicate = f"dup-{uuid.uuid4()}"
    for _ in range(2):
        comfy.submit(slow_graph(1, 0.0), prompt_id=duplicate, client_id=sock.client_id)
    ends = lambda: [  # noqa: E731
        f for f in sock.of(duplicate) if f.type == "executing" and f.data["node"] is None
    ]
    sock.wait_for(lambda f: len(ends()) == 2)
    history = comfy.history(duplicate)
    assert list(history) == [duplicate]


def test_heap_order_front_and_explicit_numbers(comfy: Target) -> None:
    sock = comfy.socket()
    blocker = comfy.submit(slow_graph(200, 0.05), client_id=sock.client_id)
    comfy.wait_running(blocker)
    normal = comfy.submit(slow_graph(1, 0.0), client_id=sock.client_id)
    front = comfy.submit(slow_graph(1, 0.0), client_id=sock.client_id, front=True)
    first = comfy.submit(slow_graph(1, 0.0), client_id=sock.client_id, number=-(10**12))
    last = comfy.submit(slow_graph(1, 0.0), client_id=sock.client_id, number=10**12)
    pending = comfy.http.get("/queue").json()["queue_pending"]
    numbers = [item[0] for item in pending]
    # The raw heap list: a valid heap, not sorted.
    assert all(numbers[(i - 1) // 2] <= numbers[i] for i in range(1, len(numbers)))
    ours = {item[1]: item[0] for item in pending}
    assert ours[front] < 0 and ours[first] == -(10**12) and ours[last] == 10**12
    comfy.http.post("/interrupt", json={"prompt_id": blocker})
    for prompt_id in (normal, front, first, last):
        sock.wait_end(prompt_id)
    starts = [
        f.prompt_id
        for f in sock.snapshot()
        if f.type == "execution_start" and f.prompt_id in (normal, front, first, last)
    ]
    assert starts == [first, front, normal, last]


def test_history_reads_and_deletes(comfy: Target) -> None:
    sock = comfy.socket()
    ids = [comfy.submit(slow_graph(1, 0.0), client_id=sock.client_id) for _ in range(2)]
    for prompt_id in ids:
        sock.wait_end(prompt_id)
    assert comfy.history(str(uuid.uuid4())) == {}
    newest = comfy.http.get("/history", params={"max_items": 1}).json()
    assert len(newest) == 1
    if comfy.is_emulator:
        assert list(newest) == [ids[1]]
        assert list(comfy.http.get("/history", params={"max_items": 1, "offset": 0}).json()) == [
            ids[0]
        ]
        assert list(comfy.http.get("/history").json()) == ids
    entry = comfy.history(ids[0])[ids[0]]
    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    assert entry["meta"]["2"] == {
        "node_id": "2",
        "display_node": "2",
        "parent_node": None,
        "real_node_id": "2",
    }
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert comfy.http.post("/history", json={"delete": [ids[0]]}).content == b""
    assert comfy.history(ids[0]) == {}
    assert comfy.history(ids[1]) != {}


def test_history_clear(emulator_only) -> None:
    target = emulator_only()
    sock = target.socket()
    prompt_id = target.submit(slow_graph(1, 0.0), client_id=sock.client_id)
    sock.wait_end(prompt_id)
    assert target.http.post("/history", json={"clear": True}).status_code == 200
    assert target.http.get("/history").json() == {}
