"""Running one generation on any server: a record first, then its events to the last file.

The adapter (``server.types.Server``) translates the request, chooses where it runs and turns
the server's messages into events; this module records the run in the registry *before*
anything is sent (so ``cancel`` in another process can always find it), saves each image
(``saving``), honours a cancel recorded by another process, and decides how the run ended.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from asset_generator.registry import (
    CANCELLED,
    FAILED,
    PROMPT_CHARS,
    RUNNING,
    SUCCEEDED,
    GenerationRecord,
    Registry,
    RegistryError,
    ServerLedger,
    new_generation_id,
    this_host,
)
from asset_generator.saving import Naming, SavedImage, SaveOptions, Saver
from asset_generator.server import types
from asset_generator.server.types import (
    Accepted,
    Claimer,
    Discarded,
    Ended,
    Handle,
    ImageReady,
    NotAResult,
    Notice,
    Prepared,
    Progress,
    Renewed,
    Run,
    Server,
    Tick,
    Waiting,
)
from asset_generator.steps import StepProgress
from asset_generator.text import plural

RECORD_WRITE_INTERVAL = 1.0
# How long a run waits for another process's cancel to be confirmed before interrupting its
# work itself (that interrupt may have been lost); the bound every stop of ours keeps.
CONFIRM_GRACE_SECONDS = 3.0


class DeadlinePassed(Exception):
    """``--deadline`` passed before the generation finished."""


class View(Protocol):
    """What a person sees while a generation runs (progress bar, plain lines, or nothing)."""

    def state(self, state: str, detail: str) -> None: ...

    def progress(self, steps: StepProgress) -> None: ...

    def image(self, saved: SavedImage, done: int, expected: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class Outcome:
    """How a generation ended."""

    record: GenerationRecord
    images: list[SavedImage]
    error: str | None
    params: dict[str, Any]
    expected: int
    timings: dict[str, float | None] = field(default_factory=dict)
    # Images saved full size because post-processing them failed (the run is then failed).
    postprocess_errors: list[str] = field(default_factory=list)
    # Images the server sent that are not results: mini-grid, intermediates, extra outputs.
    skipped: list[dict[str, Any]] = field(default_factory=list)
    # A cancel of ours (this process, or `cancel` through the registry) stopped it; else a
    # cancelled run was stopped by the web UI or another client.
    cancelled_by_us: bool = False

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def failed_in_postprocessing(self) -> bool:
        """Every image arrived and was saved; only processing one of them failed."""
        return (
            self.status == FAILED
            and bool(self.postprocess_errors)
            and (self.error or "").startswith(self.postprocess_errors[0])
        )


class GenerationRun:
    """One generation from registration to the last saved file, on any server."""

    def __init__(
        self,
        server: Server,
        registry: Registry,
        key: str,
        *,
        view: View,
        save: SaveOptions,
        on_saved: Callable[[SavedImage], None] = lambda saved: None,
        on_accepted: Callable[[], None] = lambda: None,
        debug: Callable[[str], None] = lambda message: None,
        notice: Callable[[str], None] | None = None,
        owner: str | None = None,
        claimer: Claimer | None = None,
    ) -> None:
        self.server = server
        # Recorded so `status` can say which kind of process runs it (e.g. "mcp").
        self.owner = owner
        self.registry = registry
        self.key = key
        self.view = view
        self.save = save
        self.on_saved = on_saved
        # The server holds the request (a pipeline sends its next asset after this one).
        self.on_accepted = on_accepted
        self.debug = debug
        # Warnings from the server worth a line even without -v.
        self.notice = notice or debug
        self.claimer = claimer or server.claimer()
        self.record: GenerationRecord | None = None
        self.prepared: Prepared | None = None
        self.live: Run | None = None
        self.images: list[SavedImage] = []
        self.skipped: list[dict[str, Any]] = []
        self.steps = StepProgress(1)
        self._saver: Saver | None = None
        self._ended: Ended | None = None
        self._started = time.monotonic()
        self._first_image: float | None = None
        self._last_write = 0.0
        self._self_cancelled = False
        # Set by _classify: our own cancel is what ended the run.
        self._cancelled_here = False
        # When the server took the request (wall clock, to compare with a mark's time).
        self._accepted_at: float | None = None
        # Until when another process's unconfirmed cancel may still be confirmed (monotonic).
        self._confirm_by: float | None = None
        # stop() had the server take its interrupt (until then our work may still run there).
        self.stop_confirmed = False
        # An interrupt may still reach our handle after the run: one of ours was sent, or
        # another process marked a cancel (then interrupts) before we recorded the end.
        self._interrupt_may_land = False
        self._released = False
        # The record was kept unconfirmed (not final) only until release() lets the handle
        # rest: a handle an interrupt may still reach must never look free in between.
        self._held_for_rest = False

    @property
    def expected(self) -> int:
        return self.prepared.expected if self.prepared is not None else 1

    @property
    def postprocess_errors(self) -> list[str]:
        return self._saver.postprocess_errors if self._saver is not None else []

    # -- registration -------------------------------------------------------------------------

    def register(self, prepared: Prepared, *, pipeline_id: str | None = None) -> GenerationRecord:
        """Record the generation where the server's claimer puts it, before anything is sent."""
        self.prepared = prepared
        self.steps = StepProgress(prepared.expected, prepared.steps)
        record_id = new_generation_id()

        def record(handle: Handle) -> GenerationRecord:
            self.record = GenerationRecord(
                id=record_id,
                server=self.server.name,
                server_key=self.key,
                server_type=self.server.type,
                handle=dict(handle),
                pid=os.getpid(),
                host=this_host(),
                prompt=prepared.prompt[:PROMPT_CHARS],
                created=time.time(),
                owner=self.owner,
                pipeline_id=pipeline_id,
            )
            return self.record

        self.claimer.claim(ServerLedger(self.registry, self.key), record, prepared)
        assert self.record is not None
        self._saver = Saver(
            self.save,
            Naming(prepared.prompt, prepared.model, record_id),
            self.server.read_seed,
        )
        return self.record

    # -- following ----------------------------------------------------------------------------

    def follow(self, deadline_at: float | None) -> Outcome:
        """Send the request and follow its events to the end."""
        assert self.record is not None and self.prepared is not None
        if self._marked_cancelled():
            # Cancelled between registering and sending: nothing reaches the server.
            self._self_cancelled = True
            return self._conclude()
        self.live = self.server.start(self.record.handle, self.prepared)
        if hasattr(self.live, "marked"):
            # ComfyUI can lose an interrupt that lands as a prompt starts: its run asks then.
            self.live.marked = lambda: self._mark() is not None
        for event in self.live.events():
            if deadline_at is not None and time.monotonic() >= deadline_at:
                raise DeadlinePassed
            self._handle(event)
            if isinstance(event, Ended):
                self._ended = event
                break
        return self._conclude()

    def _handle(self, event: types.Event) -> None:
        if self._confirm_by is not None:
            # Another process's interrupt is on its way: see whether the server took it.
            self._look_for_cancel()
        if isinstance(event, Tick):
            if event.look:
                self._look_for_cancel()
        elif isinstance(event, Accepted):
            # The server holds the request now: a cancel that came before it reached nothing.
            self._accepted_at = time.time()
            self._look_for_cancel()
            self.on_accepted()
        elif isinstance(event, Waiting):
            self._on_wait(event)
        elif isinstance(event, Progress):
            self.steps.update(event.index, event.fraction)
            self._on_progress()
        elif isinstance(event, ImageReady):
            self._on_image(event)
        elif isinstance(event, NotAResult):
            # Not one of the N results (protocol §9.21): neither counted nor saved.
            self.skipped.append(
                {"batch_index": event.index, "kind": event.kind, "server_path": event.shown}
            )
            self.debug(f"skipped the {event.kind} image the server sent (index {event.index})")
        elif isinstance(event, Discarded):
            self._discard(set(event.indices))
        elif isinstance(event, Renewed):
            self._update_record(handle=dict(event.handle))
        elif isinstance(event, Notice):
            self.notice(event.text)

    def _on_wait(self, event: Waiting) -> None:
        assert self.record is not None
        self.view.state(event.state, event.detail)
        if event.state == RUNNING and self.record.status != RUNNING:
            self._update_record(status=RUNNING)

    def _on_progress(self) -> None:
        self.view.progress(self.steps)
        assert self.record is not None
        if self.record.status != RUNNING:
            self._update_record(status=RUNNING, progress=self.steps.percent)
        elif time.monotonic() - self._last_write >= RECORD_WRITE_INTERVAL:
            self._update_record(progress=self.steps.percent)

    def _on_image(self, image: ImageReady) -> None:
        assert self._saver is not None and self.live is not None
        if self._first_image is None:
            self._first_image = time.monotonic()
        saved = self._saver.save(image, self.live.open_image)
        self.images.append(saved)
        self.steps.finished(image.index)
        done = len(self.images)
        self.view.image(saved, done, self.expected)
        # Recorded before it is printed: printing can fail (a full or closed stdout).
        self._update_record(images=[i.shown() for i in self.images], progress=self.steps.percent)
        self.on_saved(saved)

    def _discard(self, indices: set[int]) -> None:
        # Images refused by the server's post-processing are not results (protocol §4.3 step 8).
        for saved in [i for i in self.images if i.batch_index in indices]:
            self.images.remove(saved)
            if saved.path is not None:
                saved.path.unlink(missing_ok=True)

    # -- a cancel from another process -----------------------------------------------------------

    def _marked_cancelled(self) -> bool:
        return self._mark() is not None

    def _mark(self) -> GenerationRecord | None:
        """Our record as saved, if another process marked it cancelled."""
        assert self.record is not None
        latest = self.registry.read().generations.get(self.record.id)
        return latest if latest is not None and latest.status == CANCELLED else None

    def _look_for_cancel(self) -> None:
        """Stop our own work once if another process marked us cancelled.

        ``cancel`` marks the record first, then interrupts; an interrupt that lands before the
        server holds the request stops nothing (SwarmUI binds a request to its session's
        token when it claims it). So the run looks at its mark once the server has the
        request, before anything more is sent, and whenever it writes its record.
        """
        if self._self_cancelled or self.record is None:
            return
        try:
            mark = self._mark()
        except RegistryError as exc:
            self.debug(f"could not check for a cancel: {exc}")
            return
        if mark is not None:
            self._cancel_ourselves(mark)
        else:
            # The mark was taken back (its interrupt could not be sent): we go on.
            self._confirm_by = None

    def _cancel_ourselves(self, mark: GenerationRecord) -> None:
        """Interrupt our own work for a mark another process made, unless its own interrupt
        reached the server: a mark made after the server took the request, whose interrupt
        the server confirmed, needs no second one (one interrupt per cancel). One still on its
        way gets CONFIRM_GRACE_SECONDS; after that it may have been lost, and we send ours."""
        if self._self_cancelled:
            return
        after = self._accepted_at is not None and (mark.finished or 0) > self._accepted_at
        if after and mark.cancel_unconfirmed is None:
            self._self_cancelled = True
            self._confirm_by = None
            self.debug(
                "this generation was cancelled from another process after the server took it"
            )
            return
        if after and self._confirm_by is None:
            self._confirm_by = time.monotonic() + CONFIRM_GRACE_SECONDS
        if after and self._confirm_by is not None and time.monotonic() < self._confirm_by:
            return
        self._self_cancelled = True
        self._confirm_by = None
        self.debug("this generation was cancelled from another process; interrupting it")
        self.interrupt()

    @property
    def cancelled_by_us(self) -> bool:
        """Whether the run ended cancelled by this client: its own stop or a cancel of ours
        marked in the registry (known once the run ended; cli-contract §7 names who)."""
        return self._cancelled_here

    @property
    def stopped_on_server(self) -> bool:
        """Whether stopping found work of ours on the server and stopped it, so a message may
        say so. A run that does not tell (SwarmUI: an interrupt of our own session always
        stops what the request started) is taken to have, once it exists."""
        return self.live is not None and bool(getattr(self.live, "stopped_on_server", True))

    # -- ending -------------------------------------------------------------------------------

    def interrupt(self, timeout: float = 3.0) -> bool:
        """Stop our own work on the server, bounded by ``timeout`` seconds."""
        if self.record is None:
            return False
        self._interrupt_may_land = True
        if self.live is not None:
            return self.live.cancel(timeout)
        try:
            return self.server.cancel([self.record.handle], timeout=timeout)[0]
        except Exception as exc:  # a server error must not hide why we are stopping
            self.debug(f"could not interrupt the generation on the server: {exc}")
            return False

    def stop(self, status: str, reason: str, timeout: float = 3.0) -> bool:
        """Record how the run ends, then stop our work on the server (bounded).

        The mark comes first, as every stop of ours does it (``jobs.stop``), and says the
        interrupt is unconfirmed until the server takes it; a registry that cannot be written
        must not keep the interrupt from being sent. A run whose every image is saved has
        succeeded, whatever stops it now (printing the last path can fail). True when the
        server took the interrupt.
        """
        if self.record is None:
            return False
        complete = self.complete
        if complete:
            status, reason = self._classify_complete()
        # Our interrupt follows the mark: the handle must not look free before it rests.
        self._interrupt_may_land = True
        with contextlib.suppress(RegistryError):
            self.mark(status, reason, unconfirmed=not complete, releasing=True)
        self.stop_confirmed = self.interrupt(timeout)
        if self.stop_confirmed and not complete:
            with contextlib.suppress(RegistryError):
                self._confirm()
        with contextlib.suppress(RegistryError):
            self.release()
        return self.stop_confirmed

    def stop_after_failure(self, problem: str, timeout: float = 3.0) -> str:
        """Something broke after registering (a full disk, a broken stream): record the run
        failed and stop our work on the server, since closing a connection stops nothing on
        either server. Returns the problem as recorded: with "; stopped ID on the server"
        when the server stopped work of ours. A run whose every image is saved keeps what
        ``stop`` records (succeeded)."""
        if self.record is None:
            return problem
        stopped = self.stop(FAILED, problem, timeout)
        if stopped and not self.complete and self.stopped_on_server:
            problem = f"{problem}; stopped {self.record.id} on the server"
            with contextlib.suppress(RegistryError):
                self.mark(FAILED, problem)
        return problem

    @property
    def reached_nothing(self) -> bool:
        """The server never took the request (no Accepted event, no image): nothing of this
        run can be running anywhere."""
        return self._accepted_at is None and not self.images

    def withdraw(self) -> None:
        """Take back a record whose request no server took (another kind of server answered
        at the address), so that the command, run once more, leaves one record, not two."""
        assert self.record is not None and self.reached_nothing
        with self.registry.transaction() as state:
            state.generations.pop(self.record.id, None)

    @property
    def complete(self) -> bool:
        """Every image the run expects is saved."""
        return self.prepared is not None and len(self.images) >= self.expected

    def mark(
        self,
        status: str,
        error: str | None = None,
        *,
        unconfirmed: bool = False,
        releasing: bool = False,
    ) -> None:
        """Record how the generation ended; a cancel recorded by another process stands.

        ``unconfirmed``: an interrupt of our work is about to be sent (or was lost); without
        it the work is over, which confirms any cancel of it. ``releasing``: release() comes
        next, so a handle an interrupt may still reach can stay held until it rests there.
        """
        assert self.record is not None
        with self.registry.transaction() as state:
            saved = state.generations.get(self.record.id)
            if saved is None:
                saved = self.record
                state.generations[saved.id] = saved
            saved.images = [i.shown() for i in self.images]
            # The figure shown last, not the one written up to a second earlier.
            saved.progress = max(saved.progress, self.steps.percent)
            if saved.status == CANCELLED:
                # Marked by a cancel (which interrupts next): it stands, unless every image
                # arrived; either way its interrupt may still be on its way.
                self._interrupt_may_land = True
                if status != SUCCEEDED:
                    status, error = CANCELLED, saved.error or error
            # A finished record frees its handle for the next generation (a SwarmUI session),
            # which an interrupt still on its way would stop: until release() has the handle
            # rest, the record stays unconfirmed, so it still holds the handle.
            held = releasing and self._interrupt_may_land and not self._released
            held = held and not unconfirmed
            saved.finish(status, error, unconfirmed=unconfirmed or held)
            self._held_for_rest = held
            self.record = saved

    def _confirm(self) -> None:
        assert self.record is not None
        with self.registry.transaction() as state:
            saved = state.generations.get(self.record.id)
            if saved is not None:
                saved.confirm()
        self.record.confirm()

    def _conclude(self) -> Outcome:
        assert self.record is not None
        status, error = self._classify()
        self.mark(status, error, releasing=True)
        self.release()
        return self.outcome(error)

    def release(self, *, cancelled: bool = False) -> None:
        """Give our handle back to the claimer, once (a SwarmUI session then serves the next
        generation); it rests first when an interrupt may still reach it."""
        if self._released or self.record is None:
            return
        self._released = True
        may_land = cancelled or self._interrupt_may_land or self.record.status == CANCELLED
        self.claimer.release(self.record.handle, cancelled=may_land)
        if self._held_for_rest:
            self._held_for_rest = False
            self._confirm()

    def _classify(self) -> tuple[str, str | None]:
        """How the run ended: cancelled only when someone is known to have cancelled it.

        A cancel this client sent or recorded (the registry's mark) is a cancel; so is the
        server's own word for an interrupt. An error is a failure. A run that ended short
        without a word is how a server answers an interrupt of queued work, but also a
        backend timeout, a shutdown or a logged exception: without a cancel of ours it is a
        failure, whose message says what may have happened and where to look.
        """
        assert self.record is not None
        latest = self.registry.read().generations.get(self.record.id)
        cancelled_here = self._self_cancelled or (latest is not None and latest.status == CANCELLED)
        self._cancelled_here = cancelled_here
        ended = self._ended or Ended(types.DONE)
        if ended.images is not None and self.prepared is not None:
            self.prepared.expected = ended.images
        if ended.how == types.INTERRUPTED:
            return CANCELLED, ended.text or "the server interrupted the generation"
        if ended.how == types.FAILED:
            return (CANCELLED if cancelled_here else FAILED), ended.text
        done, expected = len(self.images), self.expected
        if done >= expected:
            return self._classify_complete()
        if cancelled_here:
            return CANCELLED, (
                f"the generation was cancelled after {done} of {plural(expected, 'image')}"
            )
        causes = getattr(self.server, "silent_causes", "a failure on the server")
        return FAILED, (
            f"the generation ended without images for {expected - done} of its "
            f"{plural(expected, 'output')} and without an error message; {causes} ends a "
            "generation this way; the server's log says which"
        )

    def _classify_complete(self) -> tuple[str, str | None]:
        """Every image saved: succeeded, unless post-processing one of them failed."""
        if self.postprocess_errors:
            more = len(self.postprocess_errors) - 1
            suffix = f" (and {plural(more, 'more image', 'more images')})" if more else ""
            return FAILED, self.postprocess_errors[0] + suffix
        return SUCCEEDED, None

    def outcome(self, error: str | None) -> Outcome:
        assert self.record is not None
        now = time.monotonic()
        timings = {
            "total_seconds": round(now - self._started, 3),
            "first_image_seconds": (
                round(self._first_image - self._started, 3) if self._first_image else None
            ),
        }
        return Outcome(
            self.record,
            list(self.images),
            error,
            dict(self.prepared.parameters) if self.prepared is not None else {},
            self.expected,
            timings,
            list(self.postprocess_errors),
            list(self.skipped),
            cancelled_by_us=self._cancelled_here,
        )

    def _update_record(self, **changes: Any) -> None:
        assert self.record is not None
        for name, value in changes.items():
            setattr(self.record, name, value)
        self._last_write = time.monotonic()
        with self.registry.transaction() as state:
            saved = state.generations.get(self.record.id)
            # A record that ended (marked cancelled by another process, say) keeps its status.
            if saved is not None and not saved.ended:
                for name, value in changes.items():
                    setattr(saved, name, value)
        if saved is not None and saved.status == CANCELLED:
            self._cancel_ourselves(saved)
