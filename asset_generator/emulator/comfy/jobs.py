"""``/api/jobs`` of newer ComfyUI servers (protocol §6.6), after ``comfy_execution/jobs.py``.

One view of queue and history: a job is ``pending``, ``in_progress``, ``completed``,
``failed`` or ``cancelled`` (an error whose messages end in an interrupt). Cancelling one
interrupts it if it is the prompt running (checked and done in one step, so a cancel cannot
land on the next prompt) or removes it from the queue if pending; finished and unknown ids
answer ``{"cancelled": false}``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from asset_generator.emulator.comfy.execution import SENSITIVE_EXTRA_DATA_KEYS
from asset_generator.emulator.httpmsg import Answer

if TYPE_CHECKING:
    from asset_generator.emulator.comfy.hub import ComfyServer

PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = (
    "pending",
    "in_progress",
    "completed",
    "failed",
    "cancelled",
)
ALL_STATUSES = [PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED]
PREVIEWABLE_MEDIA_TYPES = frozenset({"images", "video", "audio", "3d", "text"})


def _json(data: Any, status: int = 200) -> Answer:
    from asset_generator.emulator.comfy.web import json_response

    return json_response(data, status)


def without_secrets(item: Any) -> Any:
    """A queue item whose extra_data no longer holds the Comfy.org credentials."""
    number, prompt_id, prompt, extra_data, outputs = item
    if isinstance(extra_data, dict):
        extra_data = {k: v for k, v in extra_data.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}
    return (number, prompt_id, prompt, extra_data, outputs)


def _prune(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if v is not None}


def _metadata(extra_data: Any) -> tuple[Any, Any]:
    if not isinstance(extra_data, dict):
        return None, None
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") or {}
    return extra_data.get("create_time"), workflow.get("id") if isinstance(workflow, dict) else None


def _queue_job(item: Any, status: str, include_workflow: bool = False) -> dict[str, Any]:
    priority, prompt_id, prompt, extra_data, _ = without_secrets(item)
    create_time, workflow_id = _metadata(extra_data)
    job = _prune(
        {
            "id": prompt_id,
            "status": status,
            "priority": priority,
            "create_time": create_time,
            "outputs_count": 0,
            "previewable_outputs_count": 0,
            "workflow_id": workflow_id,
        }
    )
    if include_workflow:
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def _outputs_summary(outputs: dict[str, Any]) -> tuple[int, int, dict[str, Any] | None]:
    count = previewable = 0
    preview = fallback = None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if media_type not in PREVIEWABLE_MEDIA_TYPES:
                    continue
                previewable += 1
                enriched = {**item, "nodeId": node_id}
                enriched.setdefault("mediaType", media_type)
                if preview is None and item.get("type") == "output":
                    preview = enriched
                elif fallback is None:
                    fallback = enriched
    return count, previewable, preview or fallback


def _history_job(prompt_id: Any, entry: dict[str, Any], include_outputs: bool) -> dict[str, Any]:
    priority, _, prompt, extra_data, _ = entry["prompt"]
    create_time, workflow_id = _metadata(extra_data)
    status_info = entry.get("status") or {}
    outputs = entry.get("outputs", {})
    count, previewable, preview = _outputs_summary(outputs)
    start = end = error = None
    interrupted = False
    for event, data in status_info.get("messages", []):
        if not isinstance(data, dict):
            continue
        if event == "execution_start":
            start = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            if event == "execution_error":
                error = data
            elif event == "execution_interrupted":
                interrupted = True
    status_str = status_info.get("status_str")
    status = (CANCELLED if interrupted else FAILED) if status_str == "error" else COMPLETED
    job = _prune(
        {
            "id": prompt_id,
            "status": status,
            "priority": priority,
            "create_time": create_time,
            "execution_start_time": start,
            "execution_end_time": end,
            "execution_error": error,
            "outputs_count": count,
            "previewable_outputs_count": previewable,
            "preview_output": preview,
            "workflow_id": workflow_id,
        }
    )
    if include_outputs:
        job["outputs"] = outputs
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def list_jobs(server: ComfyServer, query: dict[str, str]) -> Answer:
    """``GET /api/jobs?status=&workflow_id=&sort_by=&sort_order=&limit=&offset=``."""
    status_param = query.get("status")
    sort_by = query.get("sort_by", "created_at").lower()
    sort_order = query.get("sort_order", "desc").lower()
    wanted = ALL_STATUSES
    if status_param:
        wanted = [s.strip().lower() for s in status_param.split(",") if s.strip()]
        invalid = [s for s in wanted if s not in ALL_STATUSES]
        if invalid:
            return _json(
                {
                    "error": f"Invalid status value(s): {', '.join(invalid)}. "
                    f"Valid values: {', '.join(ALL_STATUSES)}"
                },
                400,
            )
    if sort_by not in ("created_at", "execution_duration"):
        return _json({"error": "sort_by must be 'created_at' or 'execution_duration'"}, 400)
    if sort_order not in ("asc", "desc"):
        return _json({"error": "sort_order must be 'asc' or 'desc'"}, 400)
    limit = None
    if "limit" in query:
        try:
            limit = int(query["limit"])
        except ValueError:
            return _json({"error": "limit must be an integer"}, 400)
        if limit <= 0:
            return _json({"error": "limit must be a positive integer"}, 400)
    offset = 0
    if "offset" in query:
        try:
            offset = max(0, int(query["offset"]))
        except ValueError:
            return _json({"error": "offset must be an integer"}, 400)

    running, pending = server.prompt_queue.get_current_queue()
    found: list[dict[str, Any]] = []
    if IN_PROGRESS in wanted:
        found += [_queue_job(item, IN_PROGRESS) for item in running]
    if PENDING in wanted:
        found += [_queue_job(item, PENDING) for item in pending]
    if {COMPLETED, FAILED, CANCELLED} & set(wanted):
        for prompt_id, entry in server.prompt_queue.history.items():
            job = _history_job(prompt_id, entry, include_outputs=False)
            if job["status"] in wanted:
                found.append(job)
    workflow_id = query.get("workflow_id")
    if workflow_id:
        found = [j for j in found if j.get("workflow_id") == workflow_id]

    def key(job: dict[str, Any]) -> Any:
        if sort_by == "execution_duration":
            start, end = job.get("execution_start_time", 0), job.get("execution_end_time", 0)
            return end - start if end and start else 0
        return job.get("create_time", 0)

    found.sort(key=key, reverse=sort_order == "desc")
    total = len(found)
    page = found[offset:]
    if limit is not None:
        page = page[:limit]
    return _json(
        {
            "jobs": page,
            "pagination": {
                "offset": offset,
                "limit": limit,
                "total": total,
                "has_more": offset + len(page) < total,
            },
        }
    )


def one_job(server: ComfyServer, job_id: str) -> Answer:
    """``GET /api/jobs/{id}``: the job with its outputs and workflow, or 404."""
    queue = server.prompt_queue
    if job_id in queue.history:
        return _json(_history_job(job_id, queue.history[job_id], include_outputs=True))
    running, pending = queue.get_current_queue()
    for items, status in ((running, IN_PROGRESS), (pending, PENDING)):
        for item in items:
            if item[1] == job_id:
                return _json(_queue_job(item, status, include_workflow=True))
    return _json({"error": "Job not found"}, 404)


def cancel(server: ComfyServer, job_id: str) -> bool:
    """Interrupt it if running (atomically), dequeue it if pending; False otherwise."""
    queue = server.prompt_queue
    running, pending = queue.get_current_queue()
    if any(item[1] == job_id for item in running):
        server.interrupt.set()  # on one event loop the check and the set cannot be split
        return True
    if any(item[1] == job_id for item in pending):
        return queue.delete_queue_item(lambda a: a[1] == job_id)
    return False


def _valid_job_id(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def cancel_batch(server: ComfyServer, json_data: Any) -> Answer:
    """``POST /api/jobs/cancel {"job_ids": [...]}``: ids must be canonical UUIDs."""
    job_ids = json_data.get("job_ids") if isinstance(json_data, dict) else None
    if not isinstance(job_ids, list):
        return _json({"error": "job_ids must be a list"}, 400)
    invalid = [j if isinstance(j, str) else repr(j) for j in job_ids if not _valid_job_id(j)]
    if invalid:
        return _json({"error": "job_ids contains invalid id(s)", "invalid_ids": invalid}, 400)
    cancelled = False
    for job_id in job_ids:
        if cancel(server, job_id):
            cancelled = True
    return _json({"cancelled": cancelled})
