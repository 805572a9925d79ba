"""Running a plan: up to ``parallel`` assets at once, each one ``GenerationRun`` of its own.

Every asset is a generation with its own record (tied to the ``pipe_`` record) under a handle
no other in-flight asset shares, so ``cancel gen_…`` stops that asset alone: the server's
claimer hands them out (SwarmUI: a small pool of sessions, never one per asset, protocol §9
pitfall 3; ComfyUI: prompt ids of their own).

An asset counts as done once its image is saved: its bookkeeping (record, manifest) follows
in its thread while the next asset already runs, so no backend waits for it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from asset_generator.downloads import DownloadError
from asset_generator.generation import GenerationRun
from asset_generator.jobs.generations import Generations
from asset_generator.jobs.stop import stop
from asset_generator.pipeline.manifest import BLOCKED, SKIP, Decision, Manifest
from asset_generator.pipeline.plan import Plan, PlannedAsset
from asset_generator.registry import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    GenerationRecord,
    PipelineRecord,
    Registry,
    RegistryError,
)
from asset_generator.saving import SaveOptions
from asset_generator.server.errors import ServerError

if TYPE_CHECKING:
    from asset_generator.images import PostProcess
    from asset_generator.server.types import Claimer, Prepared, Server
    from asset_generator.steps import StepProgress

SKIPPED, NOT_STARTED, IN_FLIGHT = "skipped", "not_started", "in_flight"
# How an asset can end in a run (NOT_STARTED aside).
ENDED = (SUCCEEDED, SKIPPED, FAILED, CANCELLED)
INTERRUPT_BOUND_SECONDS = 3.0
# After a stop, in-flight assets get this long to wind down (their interrupt lands, the
# socket ends) before the pipeline reports them cancelled and exits.
DRAIN_BOUND_SECONDS = 5.0
CANCEL_POLL_SECONDS = 0.25
# On a server with one queue, an asset's request waits this long at most for the asset before
# it to be taken (a request that hangs must not hold the rest back for its whole timeout).
IN_ORDER_BOUND_SECONDS = 5.0
NOT_SENT = "the pipeline stopped before this asset was sent"


def bound_allocator() -> None:
    """Keep the C allocator's memory from growing with the number of assets (glibc only).

    Every asset's threads (its own, and the WebSocket library's) allocate from a glibc arena
    of their own, up to 8 per core, and memory freed there is rarely given back: peak RSS
    grew with the run's length although Python's heap did not (tracemalloc), 36 MiB at 40
    assets and 42 MiB at 120. One arena for all threads (they take turns on the GIL anyway)
    and a fixed mmap threshold (large buffers, such as the registry's JSON, mapped and
    unmapped rather than carved out of an arena) keep it flat; PERFORMANCE.md has the
    figures. A no-op where there is no glibc ``mallopt``.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # malloc.h: M_ARENA_MAX -8, M_MMAP_THRESHOLD -3 (setting it also ends its adjusting).
    mallopt(-8, 1)
    mallopt(-3, 128 * 1024)


@dataclass
class AssetResult:
    """How one asset ended in this run."""

    asset: PlannedAsset
    status: str = NOT_STARTED
    generation_id: str | None = None
    error: str | None = None
    # Cancelled by a cancel of ours (the registry's mark), not by the web UI or another client.
    cancelled_by_us: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "id": self.asset.id,
            "name": self.asset.name,
            "group": self.asset.group,
            "prompt": self.asset.prompt,
            "seed": self.asset.seed,
            "path": str(self.asset.path),
            "status": self.status,
            "generation_id": self.generation_id,
            "error": self.error,
        }


class Reporter(Protocol):
    """What a person sees while the pipeline runs."""

    def started(self, asset: PlannedAsset, generation_id: str) -> None: ...

    def progress(self, asset: PlannedAsset, fraction: float) -> None: ...

    def saved(self, path: str) -> None: ...

    def finished(self, result: AssetResult, tally: PipelineRecord) -> None:
        """``result`` ended; ``tally`` counts the pipeline's assets so far (``tally()``)."""
        ...


class AssetRun(GenerationRun):
    """A GenerationRun whose record is settled the moment its image is saved."""

    settled = False

    def mark(
        self,
        status: str,
        error: str | None = None,
        *,
        unconfirmed: bool = False,
        releasing: bool = False,
    ) -> None:
        if not self.settled:
            super().mark(status, error, unconfirmed=unconfirmed, releasing=releasing)


class _AssetView:
    """Forwards one asset's live progress to the reporter."""

    def __init__(self, reporter: Reporter, asset: PlannedAsset) -> None:
        self.reporter = reporter
        self.asset = asset

    def state(self, state: str, detail: str) -> None:
        pass

    def progress(self, steps: StepProgress) -> None:
        self.reporter.progress(self.asset, steps.fraction)

    def image(self, saved: Any, done: int, expected: int) -> None:
        pass

    def close(self) -> None:
        pass


class _Worker:
    """One in-flight asset: its thread, its run, and how it ended."""

    def __init__(self, asset: PlannedAsset) -> None:
        self.asset = asset
        # Set when the asset may send its request (a standby waits for a free slot).
        self.go = threading.Event()
        self.abort = False
        self.run: AssetRun | None = None
        self.thread: threading.Thread | None = None
        self.reported = False
        # Its handle went back to the claimer (SwarmUI: the session serves the next asset).
        self.released = False
        # Set once the server holds its request, or it ended without one.
        self.sent = threading.Event()
        # On a server with one queue: the asset started before it, whose request goes first.
        self.after: _Worker | None = None


class PipelineRun:
    """Runs a plan against one server; the caller handles signals and output."""

    def __init__(
        self,
        server: Server,
        registry: Registry,
        key: str,
        plan: Plan,
        record: PipelineRecord,
        manifest: Manifest,
        *,
        prepared: dict[int, Prepared],
        parallel: int,
        force: bool,
        overwrite: bool,
        continue_on_error: bool,
        reporter: Reporter,
        claimer: Claimer,
        queue_ahead: bool = False,
        debug: Callable[[str], None] = lambda message: None,
        decisions: dict[int, Decision] | None = None,
        postprocess: PostProcess | None = None,
    ) -> None:
        self.server = server
        self.registry = registry
        self.key = key
        self.plan = plan
        self.record = record
        self.manifest = manifest
        self.parallel = max(1, parallel)
        self.force = force
        self.overwrite = overwrite
        self.continue_on_error = continue_on_error
        self.reporter = reporter
        self.claimer = claimer
        # Each asset's request as its server takes it (translated before the run starts).
        self.prepared = prepared
        # Send the next asset of each slot ahead, to wait in the server's queue: only when
        # --parallel covers every backend, so it never runs more at once than asked.
        self.queue_ahead = queue_ahead
        self.debug = debug
        # Manifest verdicts by asset index, when the caller already made them (each costs a hash).
        self.decisions = decisions or {}
        # The `generate image` post-processing, applied by the one generation path on save.
        self.postprocess = postprocess
        self.results = {a.index: AssetResult(a) for a in plan.assets}
        self.stop_reason: str | None = None
        self.cancelled = False
        self.stopping = False
        self._events: queue.Queue[tuple[str, _Worker, str, str | None]] = queue.Queue()
        self._inflight: dict[int, _Worker] = {}
        # The in-flight assets whose image is not saved yet: these hold a --parallel slot.
        self._generating: set[int] = set()
        # Assets prepared ahead of a free slot: one, or (queue_ahead) one per slot, already
        # sent, since equal assets finish together and each backend needs its next one.
        self._standby: list[_Worker] = []
        self._ahead = self.parallel if queue_ahead else 1
        self._threads: list[threading.Thread] = []
        self._last_started: _Worker | None = None
        self._last_poll = 0.0
        self._counts_due = False
        self._counts_at = 0.0

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> list[AssetResult]:
        """Skip what is done, generate the rest; returns every asset's result in plan order."""
        bound_allocator()
        pending: list[PlannedAsset] = []
        for asset in self.plan.assets:
            decision = self.decisions.get(asset.index) or self.manifest.decide(
                asset, force=self.force, overwrite=self.overwrite
            )
            verdict, why = decision.verdict, decision.why
            if verdict == SKIP:
                self._finish(self.results[asset.index], SKIPPED, None)
            elif verdict == BLOCKED:
                self._finish(self.results[asset.index], FAILED, why)
                if not self.continue_on_error:
                    self.stop_reason = f"{asset.id} failed: {why}"
                    break
            else:
                pending.append(asset)
        self._save_manifest()
        pending.reverse()
        while (pending and self.stop_reason is None) or self._inflight:
            self._fill(pending)
            try:
                kind, worker, status, error = self._events.get(timeout=CANCEL_POLL_SECONDS)
            except queue.Empty:
                self._publish_counts()
                self._check_cancelled()
                continue
            if kind == "saved":
                # The image is on disk: its backend is free, so the next asset starts now and
                # this one's bookkeeping (record, manifest) follows while that one is queued.
                self._generating.discard(worker.asset.index)
                self.reporter.saved(str(worker.asset.path))
                continue
            self._settle(worker, status, error)
            self._check_cancelled()
        self._publish_counts(now=True)
        self._check_cancelled(now=True)
        self.drain()
        return [self.results[a.index] for a in self.plan.assets]

    def drain(self, bound: float = DRAIN_BOUND_SECONDS) -> None:
        """Wait (bounded) for the assets' threads to end: each closes its socket with a Close
        frame (a hang-up without one would make SwarmUI log an error per asset)."""
        deadline = time.monotonic() + bound
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def _fill(self, pending: list[PlannedAsset]) -> None:
        """Fill every free slot (the standby first), then prepare the next standby.

        The standby has its session and record ready and sends its request the moment a
        slot frees, so a backend does not wait for our bookkeeping between two assets.
        """
        if len(self._generating) < self.parallel and (pending or self._standby):
            # Before starting anything: a cancel must not let a new asset begin.
            self._check_cancelled(now=True)
        while self.stop_reason is None and len(self._generating) < self.parallel:
            if self._standby:
                worker = self._standby.pop(0)
                self._generating.add(worker.asset.index)
                worker.go.set()
            elif pending:
                self._start(pending.pop(), go=True, slot=True)
            else:
                break
        while self.stop_reason is None and len(self._standby) < self._ahead and pending:
            # With every backend in use, a request queued at the server cannot start before
            # one frees: sending the standby now leaves no gap at all (queue_ahead).
            self._standby.append(self._start(pending.pop(), go=self.queue_ahead, slot=False))
        self._recount()

    def _start(self, asset: PlannedAsset, *, go: bool, slot: bool) -> _Worker:
        worker = _Worker(asset)
        if self.server.one_queue:
            worker.after, self._last_started = self._last_started, worker
        self._inflight[asset.index] = worker
        if slot:
            self._generating.add(asset.index)
        if go:
            worker.go.set()
        worker.thread = threading.Thread(
            target=self._work, args=(worker,), name=f"asset-{asset.id}", daemon=True
        )
        worker.thread.start()
        self._threads.append(worker.thread)
        return worker

    def _settle(self, worker: _Worker, status: str, error: str | None) -> None:
        if worker.reported:
            return
        worker.reported = True
        self._inflight.pop(worker.asset.index, None)
        self._generating.discard(worker.asset.index)
        if worker in self._standby:
            self._standby.remove(worker)
        result = self.results[worker.asset.index]
        if status == NOT_STARTED:
            # A standby the stop caught before it sent anything: nothing to report or record.
            return
        result.generation_id = worker.run.record.id if worker.run and worker.run.record else None
        result.cancelled_by_us = status == CANCELLED and (
            worker.run is None or worker.run.cancelled_by_us or self.cancelled
        )
        self._finish(result, status, error, kept_file=bool(worker.run and worker.run.images))
        self._save_manifest()
        if status == FAILED and not self.continue_on_error and self.stop_reason is None:
            self.stop_reason = f"{worker.asset.id} failed: {error}"
            self.stop_inflight(f"stopped after {worker.asset.id} failed")

    def _finish(
        self, result: AssetResult, status: str, error: str | None, *, kept_file: bool = False
    ) -> None:
        result.status, result.error = status, error
        self.manifest.record(
            result.asset,
            status,
            generation_id=result.generation_id,
            error=error,
            kept_file=kept_file,
        )
        self._count(status)
        self.reporter.finished(result, self.record)

    def _count(self, status: str) -> None:
        self.record.counts[status] = self.record.counts.get(status, 0) + 1
        self._counts_due = True
        self._recount()
        self._publish_counts()

    def _recount(self) -> None:
        """Count the assets in flight (sent, not ended) and those not started, apart from
        the ended ones: a failed or cancelled asset is never counted as done."""
        counts = self.record.counts
        ended = sum(counts.get(name, 0) for name in ENDED)
        flying = sum(1 for w in self._inflight.values() if w.go.is_set() and not w.abort)
        waiting = max(len(self.plan.assets) - ended - flying, 0)
        if (counts.get(IN_FLIGHT), counts.get(NOT_STARTED)) != (flying, waiting):
            counts[IN_FLIGHT], counts[NOT_STARTED] = flying, waiting
            self._counts_due = True

    def final_counts(self) -> dict[str, int]:
        """The counts once the run is over, from every asset's result (nothing in flight)."""
        counts = dict.fromkeys((*ENDED, IN_FLIGHT, NOT_STARTED), 0)
        for result in self.results.values():
            counts[result.status] = counts.get(result.status, 0) + 1
        return {name: count for name, count in counts.items() if count}

    def _publish_counts(self, *, now: bool = False) -> None:
        """Copy the counts to the registry for `status`, at most every CANCEL_POLL_SECONDS.

        A registry transaction per finished asset contended for its lock with every asset's
        own record updates and slowed the loop that starts the next asset.
        """
        moment = time.monotonic()
        if not self._counts_due or (not now and moment - self._counts_at < CANCEL_POLL_SECONDS):
            return
        self._counts_due, self._counts_at = False, moment
        with contextlib.suppress(RegistryError), self.registry.transaction() as state:
            saved = state.pipelines.get(self.record.id)
            if saved is not None:
                saved.counts = dict(self.record.counts)

    def _save_manifest(self) -> None:
        self.manifest.save()

    # -- one asset ------------------------------------------------------------------------------

    def _work(self, worker: _Worker) -> None:
        """Thread body: one asset from its claim to the saved file; reports through the queue."""
        asset = worker.asset
        status, error = FAILED, None
        try:
            run = AssetRun(
                self.server,
                self.registry,
                self.key,
                view=_AssetView(self.reporter, asset),
                save=SaveOptions(
                    asset.path.parent,
                    "",
                    overwrite=True,
                    postprocess=self.postprocess,
                    filename=asset.path.name,
                ),
                on_saved=lambda saved: self._saved(worker),
                on_accepted=worker.sent.set,
                debug=self.debug,
                claimer=self.claimer,
            )
            worker.run = run
            asset.path.parent.mkdir(parents=True, exist_ok=True)
            record = run.register(self.prepared[asset.index], pipeline_id=self.record.id)
            worker.go.wait()
            if worker.after is not None:
                # The spec's order is the order the server runs them in (ComfyUI's one queue).
                worker.after.sent.wait(IN_ORDER_BOUND_SECONDS)
                worker.after = None
            if worker.abort or self.stopping or self._pipeline_cancelled():
                # Stopped (or a cancel of the whole pipeline came) before the request was sent.
                run.mark(CANCELLED, NOT_SENT)
                status, error = NOT_STARTED, None
                return
            self.reporter.started(asset, record.id)
            outcome = run.follow(None)
            if run.settled:
                return
            status, error = outcome.status, outcome.error
        except (ServerError, DownloadError, RegistryError, OSError) as exc:
            error = str(getattr(exc, "message", None) or exc)
            if worker.run is not None and worker.run.settled:
                # The stream broke after the image: the asset is done, and its place on the
                # server may already serve the next asset, so nothing is interrupted.
                return
            if worker.run is not None and worker.run.record is not None:
                worker.run.stop(FAILED, error, INTERRUPT_BOUND_SECONDS)
                status = worker.run.record.status
        finally:
            worker.sent.set()
            if not (worker.run is not None and worker.run.settled):
                self._release(worker, rest=status == CANCELLED)
                self._events.put(("done", worker, status, error))

    def _saved(self, worker: _Worker) -> None:
        """In the asset's thread: its image is on disk, so the asset is done."""
        run = worker.run
        assert run is not None
        if len(run.images) < 1 or run.settled:
            self._events.put(("saved", worker, "", None))
            return
        # Final before its session serves another asset: a cancel aimed at this asset can then
        # no longer mark it, so it can never interrupt the next one. The image arrived, but a
        # post-processing failure (full-size file kept, named in the error) fails the asset.
        if run.postprocess_errors:
            run.mark(FAILED, run.postprocess_errors[0], releasing=True)
        else:
            run.mark(SUCCEEDED, releasing=True)
        status = run.record.status if run.record else SUCCEEDED
        run.settled = True
        self._release(worker, rest=status == CANCELLED)
        self._events.put(("saved", worker, "", None))
        self._events.put(("done", worker, status, run.record.error if run.record else None))

    def _release(self, worker: _Worker, *, rest: bool) -> None:
        if worker.run is not None and not worker.released:
            worker.released = True
            worker.run.release(cancelled=rest)

    # -- stopping -------------------------------------------------------------------------------

    def _pipeline_cancelled(self) -> bool:
        saved = self.registry.read().pipelines.get(self.record.id)
        return saved is not None and saved.status == CANCELLED

    def _check_cancelled(self, *, now: bool = False) -> None:
        moment = time.monotonic()
        if self.cancelled or (not now and moment - self._last_poll < CANCEL_POLL_SECONDS):
            return
        self._last_poll = moment
        if self._pipeline_cancelled():
            self.cancelled = True
            if self.stop_reason is None:
                self.stop_reason = "the pipeline was cancelled"
            self.stop_inflight("the pipeline was cancelled")

    def stop_inflight(self, reason: str) -> None:
        """Stop every in-flight asset (marked cancelled, then interrupted, bounded, at once).

        ``stopping`` is set first: an asset registering meanwhile either sees it and never
        sends, or was registered before and is marked here (and so interrupts itself).
        """
        self.stopping = True
        standby, self._standby = self._standby, []
        for waiting in standby:
            if not waiting.go.is_set():
                waiting.abort = True
                waiting.go.set()
        runs = {
            w.run.record.id: w.run
            for w in self._inflight.values()
            if w.run and w.run.record and w.go.is_set() and not w.abort
        }
        if not runs:
            return
        records = [run.record for run in runs.values() if run.record is not None]

        def confirm(run: AssetRun) -> None:
            run.stop_confirmed = run.interrupt(INTERRUPT_BOUND_SECONDS)

        def interrupt(marked: list[GenerationRecord]) -> list[bool]:
            threads = [
                threading.Thread(target=confirm, args=(runs[r.id],), daemon=True) for r in marked
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(INTERRUPT_BOUND_SECONDS + 0.5)
            return [True] * len(marked)

        generations = Generations(self.registry, self.key, lambda: self.server, self.debug)
        try:
            stop(generations, records, reason=reason, interrupt=interrupt)
        except RegistryError:
            # The marks could not be written: the interrupts matter more.
            interrupt(records)

    def abandon(self, reason: str) -> None:
        """After a signal: stop everything in flight, wait a little, record the rest."""
        self.stop_reason = reason
        self.stop_inflight(reason)
        deadline = time.monotonic() + DRAIN_BOUND_SECONDS
        while self._inflight and time.monotonic() < deadline:
            try:
                kind, worker, status, error = self._events.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == "done":
                self._settle(worker, status, error)
        for worker in list(self._inflight.values()):
            self._settle(worker, CANCELLED, reason)
        self.drain(max(deadline - time.monotonic(), 0.5))

    def leave(self, reason: str) -> list[str]:
        """A second signal: record every unfinished asset cancelled at once, without a request.

        The same states as a stop that had time: an asset that was sent ends ``cancelled``
        (record and manifest), one that was not stays ``not_started``. Returns the generation
        ids whose interrupt the server has not confirmed: their work may still run there.
        """
        unconfirmed = []
        for worker in list(self._inflight.values()):
            run = worker.run
            if run is None or run.record is None:
                continue
            sent = worker.go.is_set() and not worker.abort
            if not run.record.is_final:
                with contextlib.suppress(RegistryError):
                    run.mark(CANCELLED, reason if sent else NOT_SENT)
            if not sent or worker.reported:
                continue
            if not run.stop_confirmed and not run.settled:
                unconfirmed.append(run.record.id)
            # A settled asset (its image saved) keeps how it ended; the rest are cancelled.
            status = run.record.status if run.record.is_final else CANCELLED
            error = run.record.error if run.record.is_final else reason
            worker.reported = True
            result = self.results[worker.asset.index]
            result.generation_id = run.record.id
            result.status, result.error = status, error
            self.manifest.record(
                result.asset, status, generation_id=run.record.id, error=error,
                kept_file=bool(run.images),
            )  # fmt: skip
        self._save_manifest()
        return unconfirmed
