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
from typing import Any, Protocol

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
from asset_generator.swarm.errors import APIError, InvalidSession, RequestTimeout, SwarmError
from asset_generator.swarm.http import WebSocket, WebSocketRefused
from asset_generator.swarm.params import expected_outputs

# While work is pending the server sends keep_alive messages or, at the least, Kestrel's
# keep-alive Pongs every 30 s, so a socket silent for much longer than that is dead even if
# TCP has not noticed.
SILENCE_LIMIT = 120.0
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

    def progress(self, overall: float, current: float, done: int, expected: int) -> None: ...

    def image(self, saved: SavedImage, done: int, expected: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class SaveOptions:
    """Where and how images are kept."""

    output_dir: Path
    template: str
    overwrite: bool = False
    download: bool = True
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

    def public(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "server_path": self.server_path,
            "batch_index": self.batch_index,
            "seed": self.seed,
            "metadata": self.metadata,
        }


@dataclass
class Outcome:
    """How a generation ended."""

    record: GenerationRecord
    images: list[SavedImage]
    error: str | None
    params: dict[str, Any]
    timings: dict[str, float | None] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.record.status


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
    ) -> None:
        self.client = client
        self.registry = registry
        self.key = key
        self.view = view
        self.save = save
        self.on_saved = on_saved
        self.debug = debug
        self.record: GenerationRecord | None = None
        self.images: list[SavedImage] = []
        self.errors: list[str] = []
        self._fractions: dict[int, float] = {}
        self._body: dict[str, Any] = {}
        self._expected = 1
        self._started = time.monotonic()
        self._first_image: float | None = None
        self._last_write = 0.0
        # The server has answered (and so claimed the request): a cancel can reach it now.
        self._claimed = False
        self._self_interrupted = False
        # The server showed the request waiting (for a backend or a model load).
        self._seen_waiting = False

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
        while True:
            now = time.monotonic()
            if deadline_at is not None and now >= deadline_at:
                raise DeadlinePassed
            wait = POLL_SECONDS if deadline_at is None else min(POLL_SECONDS, deadline_at - now)
            try:
                message = ws.receive(timeout=max(wait, 0.01))
            except RequestTimeout:
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
            self._fractions[event.batch_index] = min(max(event.overall, 0.0), 1.0)
            self._on_progress(event.current)
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
        if counters.waiting_backends or counters.loading_models:
            # Past the parameter checks and waiting for a backend: a silent end from here on
            # is an interrupt (SwarmUI's first status, sent on claiming, shows only queued).
            self._seen_waiting = True
        self.view.state(state, counters)
        if state == RUNNING and self.record.status != RUNNING:
            self._update_record(status=RUNNING)

    def _on_progress(self, current: float) -> None:
        done = sum(1 for f in self._fractions.values() if f >= 1.0)
        overall = min(sum(self._fractions.values()) / self._expected, 1.0)
        self.view.progress(overall, current, done, self._expected)
        assert self.record is not None
        if self.record.status != RUNNING:
            self._update_record(status=RUNNING, progress=overall * 100)
        elif time.monotonic() - self._last_write >= RECORD_WRITE_INTERVAL:
            self._update_record(progress=overall * 100)

    def _on_image(self, event: ImageEvent) -> None:
        if self._first_image is None:
            self._first_image = time.monotonic()
        saved = self._save(event.image, event.batch_index, event.metadata)
        self.images.append(saved)
        self._fractions[event.batch_index] = 1.0
        done = len(self.images)
        self.view.image(saved, done, self._expected)
        self.on_saved(saved)
        overall = min(done / self._expected, 1.0) * 100
        self._update_record(images=[self._shown(i) for i in self.images], progress=overall)

    def _discard(self, indices: set[int]) -> None:
        # Images refused by post-processing are not results (protocol §4.3 step 8).
        for saved in [i for i in self.images if i.batch_index in indices]:
            self.images.remove(saved)
            if saved.path is not None:
                saved.path.unlink(missing_ok=True)

    def _over_http(self, deadline_at: float | None) -> None:
        assert self.record is not None
        self.view.state(QUEUED, Counters(waiting_gens=1))
        timeout = math.inf if deadline_at is None else max(deadline_at - time.monotonic(), 0.1)
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
        for index, path in enumerate(paths):
            self._on_image(ImageEvent(path, index, "", None))

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
        return SavedImage(batch_index, server_path, path, found["seed"], found["metadata"])

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
            if saved.status == CANCELLED and status != SUCCEEDED:
                status, error = CANCELLED, saved.error or error
            saved.finish(status, error)
            self.record = saved

    def _conclude(self) -> Outcome:
        assert self.record is not None
        latest = self.registry.read().generations.get(self.record.id)
        cancelled_elsewhere = latest is not None and latest.status == CANCELLED
        interrupted = any(text.strip() == INTERRUPTED_TEXT for text in self.errors)
        if self.errors:
            status = CANCELLED if interrupted or cancelled_elsewhere else FAILED
            error: str | None = self.errors[0]
        elif len(self.images) < self._expected and (cancelled_elsewhere or self._seen_waiting):
            # Ending short without a word is how SwarmUI answers an interrupt that caught the
            # work still waiting for a backend (protocol §5.2): someone cancelled it, maybe a
            # `cancel --all` whose mark is not in the cache yet, or the web UI.
            status = CANCELLED
            error = (
                f"the generation was cancelled after {len(self.images)} of {self._expected} images"
                if cancelled_elsewhere
                else f"the server stopped the generation after {len(self.images)} of "
                f"{self._expected} images without an error, as SwarmUI does when work waiting "
                "for a backend is interrupted (cancel --all, the web UI, another client)"
            )
        elif len(self.images) < self._expected:
            # Never queued, never cancelled: SwarmUI drops some failures (an exception while
            # reading the parameters) without telling the client (protocol §9 pitfall 19).
            status = FAILED
            error = (
                f"the server ended the request after {len(self.images)} of {self._expected} "
                "images without an error message; its log says why"
            )
        else:
            status, error = SUCCEEDED, None
        self.mark(status, error)
        return self.outcome(error)

    def outcome(self, error: str | None) -> Outcome:
        assert self.record is not None
        now = time.monotonic()
        timings = {
            "total_seconds": round(now - self._started, 3),
            "first_image_seconds": (
                round(self._first_image - self._started, 3) if self._first_image else None
            ),
        }
        return Outcome(self.record, list(self.images), error, dict(self._body), timings)

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
