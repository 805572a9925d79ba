"""Server versions: /api/jobs on newer servers (protocol §6.6), secrets in GET /queue.

The real peer is 0.3.64 (no jobs API), so the version-dependent parts run on emulators told
to be another version; what 0.3.64 does runs on both.
"""

from __future__ import annotations

import uuid

from comfy_helpers import Socket, Target, slow_graph

from asset_generator.emulator.comfy.config import JOBS_CANCEL_VERSION, JOBS_READ_VERSION

READ = ".".join(map(str, JOBS_READ_VERSION))
CANCEL = ".".join(map(str, JOBS_CANCEL_VERSION))


def _long(target: Target, sock: Socket) -> str:
    prompt_id = target.submit(slow_graph(400, target.step), client_id=sock.client_id)
    sock.wait_for(lambda f: f.type == "progress" and f.prompt_id == prompt_id)
    return prompt_id


def test_queued_secrets_are_visible_until_history_on_0_3_64(comfy: Target) -> None:
    sock = comfy.socket()
    running = _long(comfy, sock)
    extra = {"api_key_comfy_org": "SECRET", "extra_pnginfo": {"k": "v"}}
    pending = comfy.submit(slow_graph(1, 0.0), client_id=sock.client_id, extra_data=extra)
    queued = comfy.http.get("/queue").json()["queue_pending"]
    item = next(i for i in queued if i[1] == pending)
    assert item[3] == {**extra, "client_id": sock.client_id}
    assert len(item) == 5 and item[4] == ["2"]
    comfy.http.post("/interrupt", json={"prompt_id": running})
    sock.wait_end(pending)
    stored = comfy.history(pending)[pending]["prompt"][3]
    assert stored == {"extra_pnginfo": {"k": "v"}, "client_id": sock.client_id}


def test_no_jobs_api_before_it_existed(emulator_only) -> None:
    target = emulator_only(comfy_version="0.3.64")
    assert target.http.get("/api/jobs").status_code == 404
    assert target.http.post(f"/api/jobs/{uuid.uuid4()}/cancel").status_code == 405


def test_jobs_listing_without_cancel(emulator_only) -> None:
    target = emulator_only(comfy_version=READ)
    sock = target.socket()
    done = target.submit(slow_graph(1, 0.0), client_id=sock.client_id)
    sock.wait_end(done)
    running = _long(target, sock)
    pending = target.submit(slow_graph(1, 0.0), client_id=sock.client_id)
    listing = target.http.get("/api/jobs").json()
    statuses = {job["id"]: job["status"] for job in listing["jobs"]}
    assert statuses == {done: "completed", running: "in_progress", pending: "pending"}
    assert listing["pagination"] == {"offset": 0, "limit": None, "total": 3, "has_more": False}
    page = target.http.get("/api/jobs", params={"status": "pending,completed", "limit": 1})
    assert page.json()["pagination"]["has_more"] is True
    bad = target.http.get("/api/jobs", params={"status": "nope"})
    assert bad.status_code == 400 and "Invalid status value(s): nope" in bad.json()["error"]
    job = target.http.get(f"/api/jobs/{done}").json()
    assert job["status"] == "completed" and job["outputs_count"] == 1
    assert job["preview_output"]["nodeId"] == "2"
    assert job["outputs"]["2"]["images"][0]["type"] == "output"
    assert target.http.get(f"/api/jobs/{uuid.uuid4()}").json() == {"error": "Job not found"}
    # Registered as /api/jobs: there is no bare /jobs, and /api/api/jobs exists.
    assert target.http.get("/jobs").status_code == 404
    assert target.http.get("/api/api/jobs").status_code == 200
    assert target.http.post(f"/api/jobs/{running}/cancel").status_code == 405
    # create_time is recorded and hidden secrets stay out of GET /queue on these versions.
    queued = target.http.get("/queue").json()["queue_pending"][0]
    assert isinstance(queued[3]["create_time"], int)
    target.http.post("/interrupt", json={"prompt_id": running})


def test_jobs_cancel_whatever_the_state(emulator_only) -> None:
    target = emulator_only(comfy_version=CANCEL)
    sock = target.socket()
    running = _long(target, sock)
    pending = target.submit(slow_graph(1, 0.0), client_id=sock.client_id)

    def cancel(job_id: str) -> bool:
        answer = target.http.post(f"/api/jobs/{job_id}/cancel")
        assert answer.status_code == 200
        return answer.json()["cancelled"]

    assert cancel(pending) is True
    assert target.queue_ids()[1] == []
    assert cancel(running) is True
    sock.wait_end(running)
    assert target.http.get(f"/api/jobs/{running}").json()["status"] == "cancelled"
    assert cancel(running) is False  # finished
    assert cancel(str(uuid.uuid4())) is False  # unknown
    batch = target.http.post("/api/jobs/cancel", json={"job_ids": ["not-a-uuid", running]})
    assert batch.status_code == 400
    assert batch.json() == {
        "error": "job_ids contains invalid id(s)",
        "invalid_ids": ["not-a-uuid"],
    }
    ok = target.http.post("/api/jobs/cancel", json={"job_ids": [running]})
    assert ok.json() == {"cancelled": False}
    assert target.http.post("/api/jobs/cancel", json={"job_ids": "x"}).status_code == 400
    # A failure reads as failed, not cancelled.
    failing = target.submit(slow_graph(2, 0.0, fail_at_step=1), client_id=sock.client_id)
    sock.wait_end(failing)
    assert target.http.get(f"/api/jobs/{failing}").json()["status"] == "failed"
