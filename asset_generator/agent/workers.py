"""The MCP server's side of its workers: start one per call, follow its events, stop it.

A call that waits relays the worker's progress to the client; a call that returns (``wait:
false``, or ``timeout_s`` passed) leaves the worker running on its own. Stopping goes
through the one cancel core (``jobs``), as ``cancel_generation`` does: the record is marked,
then our work on the server is interrupted, and the worker sees its run end cancelled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from asset_generator.agent.worker import GENERATION, PIPELINE
from asset_generator.registry import QUEUED, RUNNING

if TYPE_CHECKING:
    from asset_generator.jobs import Generations

__all__ = ["GENERATION", "PIPELINE", "WorkerJob", "spawn"]

# A stopped worker reports how its run ended within this bound (its interrupt is bounded by 3 s).
STOP_BOUND_SECONDS = 6.0


class WorkerJob:
    """One worker process and what it has reported so far."""

    def __init__(self, kind: str, proc: subprocess.Popen[bytes]) -> None:
        self.kind = kind
        self.proc = proc
        self.id: str | None = None
        self.state = QUEUED
        self.value = 0.0
        self.total = 100.0
        self.message = "starting"
        self.notes: list[str] = []
        self.output_dir: str | None = None
        self.images: list[dict[str, Any]] = []
        self.assets: list[dict[str, Any]] = []
        # A pipeline's assets done (succeeded or skipped; failed and cancelled ones are not).
        self.done_count = 0
        # The worker's last event: {"document", "error"}.
        self.end: dict[str, Any] | None = None
        # Set once the record exists (``started``) or the worker ended before it did.
        self.started = threading.Event()
        self.done = threading.Event()
        # Every progress change, for a waiting call to relay in order: a short run would
        # otherwise end between two looks at the latest one.
        self.updates: deque[tuple[float, float, str]] = deque(maxlen=1000)
        # Tool calls waiting on it; a job nobody waits for any more runs on its own.
        self.waiting = 0
        # Passes the worker's log on; joined before ``done``, so the log is whole by then.
        self.log: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def progress(self) -> float:
        """0-100, whatever the unit of the worker's own progress."""
        return round(100.0 * self.value / self.total, 1) if self.total else 0.0

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        with self._lock:
            if kind == "started":
                self.id = event.get("id")
                self.total = float(event.get("total") or 100)
                self.notes = list(event.get("notes") or [])
                self.output_dir = event.get("output_dir")
                if self.kind == PIPELINE:
                    self.state = RUNNING
                self.started.set()
            elif kind == "state":
                self.state = event.get("state") or self.state
            elif kind == "progress":
                value = float(event.get("value") or 0)
                self.total = float(event.get("total") or self.total)
                self.value = max(self.value, value)
                self.message = str(event.get("message") or self.message)
                self.updates.append((self.value, self.total, self.message))
            elif kind == "image":
                self.images.append(event["image"])
            elif kind == "asset":
                self.assets.append(event["asset"])
                self.done_count = int(event.get("done") or self.done_count)
            elif kind == "end":
                self.end = {"document": event.get("document"), "error": event.get("error")}

    def follow(self) -> None:
        """The reader thread: events until the worker's stdout closes, then reap it."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.apply(json.loads(line))
        code = self.proc.wait()
        if self.log is not None:
            self.log.join(2.0)
        if self.end is None:
            what = "generation" if self.kind == GENERATION else "pipeline"
            self.end = {
                "document": None,
                "error": {
                    "code": "server_error",
                    "message": f"asset-generator failed: the {what} process ended (exit "
                    f"{code}) without saying how; the MCP server's log (stderr) has its messages",
                },
            }
        self.started.set()
        self.done.set()

    def stop(self, generations: Generations, reason: str, server: str) -> None:
        """Stop the work (marked cancelled, then interrupted on the server) and wait, bounded.

        A worker that has not recorded its work yet is ended by SIGTERM: before the record
        exists nothing was sent, and once it does its own handler stops what it started.
        """
        from asset_generator import jobs
        from asset_generator.jobs.stop import stop

        if self.done.is_set():
            return
        if self.id is None:
            self.terminate()
        else:
            try:
                if self.kind == PIPELINE:
                    jobs.cancel_one(generations, self.id, server=server)
                else:
                    record = generations.find(self.id)
                    if record is not None and not record.is_final:
                        stop(generations, [record], reason=reason)
            except Exception as exc:
                # Its own handler interrupts it all the same.
                sys.stderr.write(f"asset-generator mcp: stopping {self.id}: {exc}\n")
                self.terminate()
        if not self.done.wait(STOP_BOUND_SECONDS):
            self.terminate()
            self.done.wait(STOP_BOUND_SECONDS)

    def terminate(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.send_signal(signal.SIGTERM)


def spawn(kind: str, flags: dict[str, Any], arguments: dict[str, Any]) -> WorkerJob:
    """Start a worker for ``kind`` with the MCP server's settings flags and the call's arguments.

    It runs in a session of its own (a client that ends our process group does not end it)
    and logs through our stderr while we are there to pass it on.
    """
    proc = subprocess.Popen(
        # -P: not the working directory first on sys.path (as -m puts it), so an
        # asset_generator/ or yaml.py where the client started us is never imported.
        [sys.executable, "-P", "-m", "asset_generator.agent.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # The worker's PATH, XDG dirs and ASSET_GENERATOR_* are ours: the same registry.
        env=os.environ.copy(),
    )
    job = WorkerJob(kind, proc)
    assert proc.stdin is not None
    job_text = json.dumps({"kind": kind, "flags": flags, "arguments": arguments})
    try:
        # Secrets travel here, never on the command line (`ps` shows that to everyone).
        proc.stdin.write(job_text.encode())
        proc.stdin.close()
    except OSError:
        pass  # it died at once; follow() reports how
    job.log = threading.Thread(target=_pass_on, args=(proc,), name="worker log", daemon=True)
    job.log.start()
    threading.Thread(target=job.follow, name=f"{kind} worker", daemon=True).start()
    return job


def _pass_on(proc: subprocess.Popen[bytes]) -> None:
    """The worker's log lines, onto our stderr (which the MCP client shows as the server's)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(line.decode("utf-8", "replace"))
            sys.stderr.flush()


def wait_all(jobs: list[WorkerJob], bound: float) -> None:
    """Wait for ``jobs`` to end, ``bound`` seconds in all."""
    until = time.monotonic() + bound
    for job in jobs:
        job.done.wait(max(0.0, until - time.monotonic()))
