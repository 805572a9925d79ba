"""Running one generation: its own session, a registry record first, the WebSocket to the end.

SwarmUI stops work per session (``InterruptAll``), never per request, so a generation that
must be cancellable on its own needs a session nobody else is using (protocol §5.4). The
record is written before the request is sent, so ``cancel`` from another process can always
find the session, even in the instant before the first message arrives.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from asset_generator.downloads import (
    NameFields,
    decode_data_url,
    png_text_metadata,
    prepare_directory,
    save_stream,
    seed_from_metadata,
    target_name,
)
from asset_generator.registry import (
    CANCELLED,
    FAILED,
    PROMPT_CHARS,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    CachedSession,
    GenerationRecord,
    Registry,
    new_generation_id,
    this_host,
)
from asset_generator.steps import StepProgress
from asset_generator.swarm.client import (
    INTERRUPTED_TEXT,
    Counters,
    DiscardEvent,
    ErrorEvent,
    ImageEvent,
    ProgressEvent,
    StatusEvent,
    SwarmClient,
    parse_event,
)
from asset_generator.swarm.errors import (
    APIError,
    ConnectionFailed,
    InvalidSession,
    RequestTimeout,
    SwarmError,
)
from asset_generator.swarm.http import WebSocket, WebSocketRefused
from asset_generator.swarm.params import expected_outputs

if TYPE_CHECKING:
    import threading

    from asset_generator.images import PostProcess

# While work is pending the server sends keep_alive messages or, at the least, Kestrel's
# keep-alive Pongs every 30 s, so a socket silent for much longer than that is dead even if
# TCP has not noticed.
SILENCE_LIMIT = 120.0
# After socket_intention:close SwarmUI closes within ~2 s; a server that keeps the socket
# open longer has nothing more for us, and the run ends on what arrived.
CLOSE_WAIT_LIMIT = 10.0
POLL_SECONDS = 0.25
RECORD_WRITE_INTERVAL = 1.0
# A cancel aimed at a generation that has just ended may still be on its way to the server;
# its session is not given to a new generation until that cancel has surely landed.
SESSION_REST_SECONDS = 10.0


class DeadlinePassed(Exception):
    """``--deadline`` passed before the generation finished."""


class View(Protocol):
    """What a person sees while a generation runs (progress bar, plain lines, or nothing)."""

    def state(self, state: str, counters: Counters) -> None: ...

    def progress(self, steps: StepProgress) -> None: ...

    def image(self, saved: SavedImage, done: int, expected: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class SaveOptions:
    """Where and how images are kept."""

    output_dir: Path
    template: str
    overwrite: bool = False
    download: bool = True
    # Crop / downscale / strip each saved file after its seed and parameters were read.
    postprocess: PostProcess | None = None
    # An exact file name instead of the template (a pipeline asset's planned path).
    filename: str | None = None


@dataclass
class SavedImage:
    """One image the server produced, and where we put it."""

    batch_index: int
    server_path: str | None
    path: Path | None
    seed: int | None
    metadata: dict[str, Any] | None
    # What post-processing did (box, sizes, removed metadata) or its error.
    postprocess: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        shown = {
            "path": str(self.path) if self.path else None,
            "server_path": self.server_path,
            "batch_index": self.batch_index,
            "seed": self.seed,
            "metadata": self.metadata,
        }
        if self.postprocess is not None:
            shown["postprocess"] = self.postprocess
        return shown


@dataclass
class Outcome:
    """How a generation ended."""

    record: GenerationRecord
    images: list[SavedImage]
    error: str | None
    params: dict[str, Any]
    timings: dict[str, float | None] = field(default_factory=dict)
    # Images saved full size because post-processing them failed (the run is then failed).
    postprocess_errors: list[str] = field(default_factory=list)
    # Images the server sent that are not results: mini-grid, intermediates, extra outputs.
    skipped: list[dict[str, Any]] = field(default_factory=list)

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


def not_an_output(batch_index: int, expected: int) -> str | None:
    """What an image of this batch index is when it is not one of the ``expected`` results.

    SwarmUI numbers real images 0 … images × batchsize − 1, the mini-grid -1, intermediate
    images -11, -12, … and a workflow's extra outputs from images × batchsize up
    (T2IAPI.cs ~405-466).
    """
    if batch_index == -1:
        return "grid"
    if batch_index < 0:
        return "intermediate"
    if batch_index >= expected:
        return "extra"
    return None


def _path(event: ImageEvent) -> str | None:
    return None if event.image.startswith("data:") else event.image


class GenerationRun:
    """One ``generate image`` invocation from registration to the last saved file."""

    def __init__(
        self,
        client: SwarmClient,
        registry: Registry,
        key: str,
        *,
        view: View,
        save: SaveOptions,
        on_saved: Callable[[SavedImage], None] = lambda saved: None,
        debug: Callable[[str], None] = lambda message: None,
        owner: str | None = None,
    ) -> None:
        self.client = client
        # Recorded so `status` can say which kind of process runs it (e.g. "mcp").
        self.owner = owner
        self.registry = registry
        self.key = key
        self.view = view
        self.save = save
        self.on_saved = on_saved
        self.debug = debug
        self.record: GenerationRecord | None = None
        self.images: list[SavedImage] = []
        self.errors: list[str] = []
        self.postprocess_errors: list[str] = []
        self.skipped: list[dict[str, Any]] = []
        self.steps = StepProgress(1)
        self._body: dict[str, Any] = {}
        self._expected = 1
        self._started = time.monotonic()
        self._first_image: float | None = None
        self._last_write = 0.0
        # The server has answered (and so claimed the request): a cancel can reach it now.
        self._claimed = False
        self._self_interrupted = False
        # Over HTTP: a cancel mark was there before or after the request.
        self._cancelled_over_http = False

    # -- registration -------------------------------------------------------------------------

    def register(
        self,
        body: dict[str, Any],
        prompt: str,
        *,
        session_id: str | None = None,
        pipeline_id: str | None = None,
    ) -> GenerationRecord:
        """Pick an idle cached session (or create one) and record the generation on it.

        ``session_id``: a session the caller holds (a pipeline's pool) instead of picking one.
        """
        self._body = dict(body)
        self._expected = expected_outputs(body)
        self.steps = StepProgress(self._expected, self._int_param("steps"))
        record_id = new_generation_id()
        if session_id is not None:
            with self.registry.transaction() as state:
                self.record = self._new_record(record_id, session_id, prompt)
                self.record.pipeline_id = pipeline_id
                state.generations[record_id] = self.record
            return self.record
        with self.registry.transaction() as state:
            server = state.server(self.key)
            now = time.time()
            held = {
                r.session_id
                for r in state.generations.values()
                if not r.is_final or now - (r.finished or now) < SESSION_REST_SECONDS
            }
            idle = next((s for s in reversed(server.sessions) if s.id not in held), None)
            if idle is not None:
                self.record = self._new_record(record_id, idle.id, prompt)
                state.generations[record_id] = self.record
                return self.record
        info = self.client.new_session()
        with self.registry.transaction() as state:
            state.server(self.key).sessions.append(CachedSession.from_info(info))
            self.record = self._new_record(record_id, info.session_id, prompt)
            state.generations[record_id] = self.record
        return self.record

    def _new_record(self, record_id: str, session_id: str, prompt: str) -> GenerationRecord:
        import os

        return GenerationRecord(
            id=record_id,
            server=self.client.server,
            server_key=self.key,
            session_id=session_id,
            pid=os.getpid(),
            host=this_host(),
            prompt=prompt[:PROMPT_CHARS],
            created=time.time(),
            owner=self.owner,
        )

    def _renew_session(self) -> None:
        """The cached session was stale: replace it in the cache and in our record."""
        assert self.record is not None
        stale = self.record.session_id
        info = self.client.new_session()
        with self.registry.transaction() as state:
            server = state.server(self.key)
            server.sessions = [s for s in server.sessions if s.id != stale]
            server.sessions.append(CachedSession.from_info(info))
            saved = state.generations.get(self.record.id)
            if saved is not None:
                saved.session_id = info.session_id
        self.record.session_id = info.session_id

    # -- following ----------------------------------------------------------------------------

    def follow(self, deadline_at: float | None) -> Outcome:
        """Send the request and follow it to the end; HTTP when WebSockets are refused."""
        assert self.record is not None
        try:
            retried = False
            while True:
                with self.client.generation_socket(self.record.session_id, self._body) as ws:
                    stale = self._read_socket(ws, deadline_at, allow_renew=not retried)
                if not stale:
                    break
                retried = True
                self.debug("the cached session is no longer valid; getting a new one")
                self._renew_session()
        except WebSocketRefused as exc:
            self.debug(f"{exc}; falling back to GenerateText2Image (no live progress)")
            self._over_http(deadline_at)
        return self._conclude()

    def _read_socket(self, ws: WebSocket, deadline_at: float | None, *, allow_renew: bool) -> bool:
        """Read messages until the server closes; True if the session must be renewed."""
        last_message = time.monotonic()
        closing_since: float | None = None
        while True:
            now = time.monotonic()
            if deadline_at is not None and now >= deadline_at:
                raise DeadlinePassed
            wait = POLL_SECONDS if deadline_at is None else min(POLL_SECONDS, deadline_at - now)
            try:
                message = ws.receive(timeout=max(wait, 0.01))
            except ConnectionFailed:
                # A connection dropped once the request is over (every image in, or the
                # server said it is closing) loses nothing; earlier it is a failure.
                if closing_since is None and len(self.images) < self._expected:
                    raise
                self.debug("the server dropped the WebSocket after the generation ended")
                return False
            except RequestTimeout:
                if closing_since is not None and now - closing_since > CLOSE_WAIT_LIMIT:
                    self.debug("the server did not close the WebSocket; ending the read")
                    return False
                # Kestrel's keep-alive Pongs count: while SwarmUI is still launching a large
                # batch it sends no keep_alive message for minutes (T2IAPI.cs), only those.
                if time.monotonic() - max(last_message, ws.last_heard) > SILENCE_LIMIT:
                    raise RequestTimeout(
                        f"{self.client.server} sent nothing for {SILENCE_LIMIT:.0f} s "
                        "during the generation"
                    ) from None
                continue
            if message is None:
                return False
            last_message = time.monotonic()
            if message.get("socket_intention") == "close" and closing_since is None:
                closing_since = last_message
            # After socket_intention:close the server idles ~2 s, sends a last status and
            # closes. We read on to its Close: hanging up first makes SwarmUI log an error
            # for every generation (its final send fails; protocol §9 pitfall 18).
            event = parse_event(message)
            if (
                isinstance(event, ErrorEvent)
                and event.error_id == "invalid_session_id"
                and allow_renew
                and not self.images
            ):
                return True
            self._handle(event)

    def _handle(self, event: object) -> None:
        if isinstance(event, StatusEvent):
            self._on_status(event.status.counters)
        elif isinstance(event, ProgressEvent):
            self.steps.update(event.batch_index, event.current)
            self._on_progress()
        elif isinstance(event, ImageEvent):
            self._on_image(event)
        elif isinstance(event, ErrorEvent):
            self.errors.append(event.text)
        elif isinstance(event, DiscardEvent):
            self._discard(set(event.indices))

    def _on_status(self, counters: Counters) -> None:
        assert self.record is not None
        if not self._claimed:
            self._claimed = True
            self._honour_cancel_mark(self.registry.read().generations.get(self.record.id))
        if counters.live:
            state = RUNNING
        elif counters.busy:
            state = "loading model" if counters.loading_models else QUEUED
        else:
            return
        self.view.state(state, counters)
        if state == RUNNING and self.record.status != RUNNING:
            self._update_record(status=RUNNING)

    def _on_progress(self) -> None:
        self.view.progress(self.steps)
        assert self.record is not None
        if self.record.status != RUNNING:
            self._update_record(status=RUNNING, progress=self.steps.percent)
        elif time.monotonic() - self._last_write >= RECORD_WRITE_INTERVAL:
            self._update_record(progress=self.steps.percent)

    def _on_image(self, event: ImageEvent) -> None:
        kind = not_an_output(event.batch_index, self._expected)
        if kind is not None:
            # Not one of the N results (protocol §9.21): neither counted nor saved.
            self.skipped.append(
                {"batch_index": event.batch_index, "kind": kind, "server_path": _path(event)}
            )
            self.debug(
                f"skipped the {kind} image the server sent (batch_index {event.batch_index})"
            )
            return
        if self._first_image is None:
            self._first_image = time.monotonic()
        saved = self._save(event.image, event.batch_index, event.metadata)
        self.images.append(saved)
        self.steps.finished(event.batch_index)
        done = len(self.images)
        self.view.image(saved, done, self._expected)
        # Recorded before it is printed: printing can fail (a full or closed stdout).
        self._update_record(
            images=[self._shown(i) for i in self.images], progress=self.steps.percent
        )
        self.on_saved(saved)

    def _discard(self, indices: set[int]) -> None:
        # Images refused by post-processing are not results (protocol §4.3 step 8).
        for saved in [i for i in self.images if i.batch_index in indices]:
            self.images.remove(saved)
            if saved.path is not None:
                saved.path.unlink(missing_ok=True)

    def _over_http(self, deadline_at: float | None) -> None:
        """``GenerateText2Image``: no status arrives, so the cancel mark is watched instead.

        A ``cancel`` that lands before the server claims the request stops nothing, and the
        HTTP route says nothing until the end. So the mark is checked before sending (then
        nothing is sent), watched while the request runs (once the server shows the request,
        our session is interrupted), and checked after it (the run is then ``cancelled``).
        """
        assert self.record is not None
        if self._marked_cancelled():
            self._cancelled_over_http = True
            return
        self.view.state(QUEUED, Counters(waiting_gens=1))
        timeout = math.inf if deadline_at is None else max(deadline_at - time.monotonic(), 0.1)
        import threading

        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_cancel_mark, args=(stop,), daemon=True)
        watcher.start()
        try:
            try:
                paths = self.client.generate_http(
                    self.record.session_id, self._body, timeout=timeout
                )
            except InvalidSession:
                self.debug("the cached session is no longer valid; getting a new one")
                self._renew_session()
                paths = self.client.generate_http(
                    self.record.session_id, self._body, timeout=timeout
                )
        except RequestTimeout:
            if deadline_at is not None and time.monotonic() >= deadline_at - 0.5:
                raise DeadlinePassed from None
            raise
        except APIError as exc:
            if exc.error_id is not None:
                raise
            self.errors.append(exc.text)
            return
        finally:
            stop.set()
            watcher.join(timeout=POLL_SECONDS * 4)
            if self._marked_cancelled():
                self._cancelled_over_http = True
        for index, path in enumerate(paths):
            self._on_image(ImageEvent(path, index, "", None))

    def _marked_cancelled(self) -> bool:
        assert self.record is not None
        latest = self.registry.read().generations.get(self.record.id)
        return latest is not None and latest.status == CANCELLED

    def _watch_cancel_mark(self, stop: threading.Event) -> None:
        """While the HTTP request runs: interrupt our session once it holds the request."""
        from asset_generator.registry import RegistryError

        assert self.record is not None
        while not stop.wait(POLL_SECONDS):
            try:
                latest = self.registry.read().generations.get(self.record.id)
                if latest is None or latest.status != CANCELLED:
                    continue
                # Only an interrupt that lands after the server claimed the request stops it.
                if self.client.current_status(self.record.session_id).counters.busy:
                    self._honour_cancel_mark(latest)
                    return
            except (RegistryError, SwarmError) as exc:
                self.debug(f"could not check for a cancel: {exc}")

    # -- saving -------------------------------------------------------------------------------

    def _save(self, image: str, batch_index: int, metadata: dict[str, Any] | None) -> SavedImage:
        assert self.record is not None
        seed = seed_from_metadata(metadata)
        server_path = None if image.startswith("data:") else image
        if not self.save.download:
            return SavedImage(batch_index, server_path, None, seed, metadata)
        found: dict[str, Any] = {"seed": seed, "metadata": metadata}

        def name(temp: Path) -> str:
            if self.save.filename is not None:
                return self.save.filename
            if found["seed"] is None:
                embedded = png_text_metadata(temp)
                found["seed"] = seed_from_metadata(embedded)
                found["metadata"] = found["metadata"] or embedded
            fields = NameFields(
                index=batch_index,
                seed=found["seed"],
                prompt=str(self._body.get("prompt", "")),
                model=self._model(),
                generation_id=self.record.id if self.record else "",
                when=time.time(),
            )
            return target_name(self.save.template, fields, image)

        prepare_directory(self.save.output_dir)
        if server_path is None:
            path = save_stream(
                self.save.output_dir, name, [decode_data_url(image)], overwrite=self.save.overwrite
            )
        else:
            with self.client.open_image(server_path) as chunks:
                path = save_stream(
                    self.save.output_dir, name, chunks, overwrite=self.save.overwrite
                )
        saved = SavedImage(batch_index, server_path, path, found["seed"], found["metadata"])
        if self.save.postprocess is not None and self.save.postprocess.active:
            self._postprocess(saved, self.save.postprocess)
        return saved

    def _postprocess(self, saved: SavedImage, steps: PostProcess) -> None:
        """Crop, downscale, strip a saved file in place; on failure it stays full size."""
        from asset_generator.images import ImageError, postprocess_in_place

        assert saved.path is not None
        try:
            result = postprocess_in_place(saved.path, steps)
        except ImageError as exc:
            # The message names the file; the original stays because every write is atomic.
            problem = f"post-processing failed: {exc}; the full-size file is kept"
            self.postprocess_errors.append(problem)
            saved.postprocess = {"error": problem}
            return
        shown = result.public()
        saved.postprocess = {k: shown[k] for k in ("box", "size_before", "size_after", "removed")}

    def _int_param(self, name: str) -> int | None:
        from asset_generator.swarm.params import clean_name

        for key, value in self._body.items():
            if clean_name(key) == name and isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    def _model(self) -> str | None:
        from asset_generator.swarm.params import clean_name

        for key, value in self._body.items():
            if clean_name(key) == "model" and isinstance(value, str):
                return value
        return None

    @staticmethod
    def _shown(saved: SavedImage) -> str:
        return str(saved.path) if saved.path else saved.server_path or "(inline image)"

    # -- ending -------------------------------------------------------------------------------

    def interrupt(self, timeout: float = 3.0) -> bool:
        """Interrupt our own session on the server, bounded by ``timeout`` seconds."""
        if self.record is None:
            return False
        try:
            self.client.interrupt_all(self.record.session_id, other_sessions=False, timeout=timeout)
        except SwarmError as exc:
            self.debug(f"could not interrupt the generation on the server: {exc.message}")
            return False
        return True

    def mark(self, status: str, error: str | None = None) -> None:
        """Record how the generation ended; a cancel recorded by another process stands."""
        assert self.record is not None
        with self.registry.transaction() as state:
            saved = state.generations.get(self.record.id)
            if saved is None:
                saved = self.record
                state.generations[saved.id] = saved
            saved.images = [self._shown(i) for i in self.images]
            # The figure shown last, not the one written up to a second earlier.
            saved.progress = max(saved.progress, self.steps.percent)
            if saved.status == CANCELLED and status != SUCCEEDED:
                status, error = CANCELLED, saved.error or error
            saved.finish(status, error)
            self.record = saved

    def _conclude(self) -> Outcome:
        assert self.record is not None
        status, error = self._classify()
        self.mark(status, error)
        return self.outcome(error)

    def _classify(self) -> tuple[str, str | None]:
        """How the run ended: cancelled only when someone is known to have cancelled it.

        A cancel this client sent or recorded (the registry's mark) is a cancel. So is the
        server's "Generation session interrupted." when it is the first error: after any
        other error SwarmUI cancels the request's own token and the request's other running
        tasks report that text too (T2IAPI.cs ~263, T2IEngine.cs ~321), so the first error
        is the cause. A short ending without an error is how SwarmUI answers an interrupt of
        queued work, but also a backend timeout, a shutdown or a logged exception (protocol
        §9.22): without a cancel of ours it is a failure.
        """
        assert self.record is not None
        latest = self.registry.read().generations.get(self.record.id)
        cancelled_here = self._self_interrupted or (
            latest is not None and latest.status == CANCELLED
        )
        if self.errors:
            first = self.errors[0]
            if cancelled_here or first.strip() == INTERRUPTED_TEXT:
                return CANCELLED, first
            return FAILED, first
        done, expected = len(self.images), self._expected
        if done >= expected and not self._cancelled_over_http:
            if self.postprocess_errors:
                more = len(self.postprocess_errors) - 1
                suffix = f" (and {more} more image(s))" if more else ""
                return FAILED, self.postprocess_errors[0] + suffix
            return SUCCEEDED, None
        if cancelled_here or self._cancelled_over_http:
            return CANCELLED, f"the generation was cancelled after {done} of {expected} images"
        return FAILED, (
            f"the generation ended without images for {expected - done} of its {expected} "
            "outputs and without an error message; a backend failure (ComfyUI timed out or "
            "crashed, the server shut down) or an interrupt from outside this client (the web "
            "UI, another client's cancel --all) ends a generation this way; the server's log "
            "says which"
        )

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
            dict(self._body),
            timings,
            list(self.postprocess_errors),
            list(self.skipped),
        )

    def _update_record(self, **changes: Any) -> None:
        assert self.record is not None
        for name, value in changes.items():
            setattr(self.record, name, value)
        self._last_write = time.monotonic()
        with self.registry.transaction() as state:
            saved = state.generations.get(self.record.id)
            if saved is not None and not saved.is_final:
                for name, value in changes.items():
                    setattr(saved, name, value)
        self._honour_cancel_mark(saved)

    def _honour_cancel_mark(self, saved: GenerationRecord | None) -> None:
        """Interrupt our own session once if another process marked us cancelled.

        SwarmUI binds a request to its session's interrupt token when it claims the request,
        so an InterruptAll that lands before the claim (``cancel`` right after ``generate``
        started) stops nothing. ``cancel`` marks the record first; seeing that mark once the
        server has answered, we interrupt ourselves so the cancel is never lost.
        """
        if self._self_interrupted or saved is None or saved.status != CANCELLED:
            return
        self._self_interrupted = True
        self.debug("this generation was cancelled from another process; interrupting it")
        self.interrupt()
