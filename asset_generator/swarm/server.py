"""SwarmUI behind the seam: sessions as handles, the WebSocket as events, InterruptAll as cancel.

SwarmUI stops work per session (``InterruptAll``), never per request, so a generation that must
be cancellable on its own runs in a session nobody else is using (protocol §5.4): the handle of
our work is that session. Sessions are cached in the registry (the adapter's memory there) and
reused once idle, never one per run (protocol §9 pitfall 3).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from asset_generator.downloads import decode_data_url, extension_of
from asset_generator.registry import CANCELLED, RegistryError
from asset_generator.server import jobstate, types
from asset_generator.server.errors import RequestError
from asset_generator.server.types import (
    MAX_MODEL_DEPTH,
    MODEL_KINDS,
    Accepted,
    Discarded,
    Ended,
    Event,
    Facts,
    FactTable,
    Handle,
    ImageReady,
    Ledger,
    LedgerView,
    Model,
    ModelListing,
    NotAResult,
    Prepared,
    Progress,
    Reach,
    Renewed,
    Request,
    Tick,
    Waiting,
)
from asset_generator.swarm.client import (
    INTERRUPTED_TEXT,
    Counters,
    DiscardEvent,
    ErrorEvent,
    ImageEvent,
    ProgressEvent,
    SessionInfo,
    StatusEvent,
    SwarmClient,
    parse_event,
)
from asset_generator.swarm.errors import (
    APIError,
    ConnectionFailed,
    InvalidSession,
    NotFound,
    RequestTimeout,
    SessionFailed,
    SwarmError,
    UnknownRoute,
)
from asset_generator.swarm.http import Credentials, Transport, WebSocket, WebSocketRefused
from asset_generator.swarm.metadata import seed_from_metadata, seed_of_file
from asset_generator.swarm.params import build_request, expected_outputs, refuse_unsendable_loras

T = TypeVar("T")

# While work is pending the server sends keep_alive messages or, at the least, Kestrel's
# keep-alive Pongs every 30 s, so a socket silent for much longer than that is dead even if
# TCP has not noticed.
SILENCE_LIMIT = 120.0
POLL_SECONDS = 0.25
# A cancel aimed at a generation that has just ended may still be on its way to the server;
# its session is not given to a new generation until that cancel has surely landed. Only
# sessions an interrupt may still reach rest: a generation that ended cancelled, or one that
# an interrupt of ours or a cancel another process marked touched before it ended (a cancel
# marks the record first, then interrupts; jobs.stop). The others serve the next run at once,
# so a script that loops over `generate` reuses one session (protocol §9 pitfall 3).
SESSION_REST_SECONDS = 10.0
# Sessions kept in the cache beyond those our generations hold.
KEEP_SESSIONS = 16
# How old the session whose version and server id `status` shows may be: a new session (one
# GetNewSession) at most this often, so a restart that none of our commands saw shows within
# a minute. One that any of them saw (the server unreachable) shows at once.
SERVER_FACTS_SECONDS = 60.0
# Backend roll-ups (protocol §6.1) of a server whose backends are (re)starting.
STARTING_ROLLUPS = ("loading", "some_loading", "empty")
# Text-model backends (protocol §6.3) generate no images.
TEXT_BACKENDS = ("localllama", "simpleremotellm")
# SwarmUI's model sub-types (protocol §7): it answers any other name "Invalid sub-type.".
SUBTYPES = MODEL_KINDS
MAX_DEPTH = MAX_MODEL_DEPTH


# -- the session cache (the adapter's memory in the registry) -------------------------------------


@dataclass
class CachedSession:
    """A server session we created and may reuse."""

    id: str
    user_id: str | None = None
    version: str | None = None
    server_id: str | None = None
    created: float = field(default_factory=time.time)

    @classmethod
    def from_info(cls, info: SessionInfo) -> CachedSession:
        return cls(info.session_id, info.user_id, info.version, info.server_id)

    @classmethod
    def from_dict(cls, data: Any) -> CachedSession | None:
        """A cached session as stored; None when the entry has the wrong shape."""
        if not isinstance(data, dict):
            return None
        names = {f.name for f in fields(cls)}
        try:
            session = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None
        texts = (session.user_id, session.version, session.server_id)
        if not isinstance(session.id, str) or not session.id:
            return None
        if any(value is not None and not isinstance(value, str) for value in texts):
            return None
        stamp = session.created
        if isinstance(stamp, bool) or not isinstance(stamp, int | float):
            return None
        if not (math.isfinite(stamp) and 0 <= stamp <= 253402300799.0):
            return None
        return session


def sessions_of(view: LedgerView) -> list[CachedSession]:
    """The cached sessions, oldest first (entries a damaged file spoilt are left out)."""
    stored = view.cache.get("sessions")
    if not isinstance(stored, list):
        return []
    found = (CachedSession.from_dict(item) for item in stored)
    return [session for session in found if session is not None]


def _keep_sessions(view: LedgerView, sessions: list[CachedSession]) -> None:
    """Store ``sessions``: every one our generations hold, and the newest others up to
    KEEP_SESSIONS in all (oldest first, as they were made)."""
    if len(sessions) > KEEP_SESSIONS:
        held = {session_of(r.handle) for r in view.records if not r.is_final}
        spare = [s for s in sessions if s.id not in held]
        surplus = len(sessions) - max(KEEP_SESSIONS, len(sessions) - len(spare))
        dropped = {s.id for s in spare[:surplus]}
        sessions = [s for s in sessions if s.id not in dropped]
    view.cache["sessions"] = [asdict(s) for s in sessions]


def _add_session(view: LedgerView, session: CachedSession) -> None:
    _keep_sessions(view, [*sessions_of(view), session])


def _drop_session(view: LedgerView, session_id: str) -> None:
    _keep_sessions(view, [s for s in sessions_of(view) if s.id != session_id])


def session_of(handle: Handle) -> str:
    return str(handle.get("session_id", ""))


def _resting(view: LedgerView, now: float) -> set[str]:
    """Sessions an unfinished generation holds, or that an interrupt may still reach."""
    held = {
        session_of(r.handle)
        for r in view.records
        if r.server_type == "swarmui"
        and (
            not r.is_final
            # An interrupt on its way (its process records the end before the session rests).
            or r.cancel_unconfirmed is not None
            or (r.status == CANCELLED and now - (r.finished or now) < SESSION_REST_SECONDS)
        )
    }
    resting = view.cache.get("resting")
    if isinstance(resting, dict):
        held |= {
            str(session)
            for session, until in resting.items()
            if isinstance(until, int | float) and until > now
        }
    return held


def _rest(view: LedgerView, session_id: str, now: float) -> None:
    """Keep ``session_id`` from new generations for SESSION_REST_SECONDS (expired rests go)."""
    resting = view.cache.get("resting")
    kept = {
        str(session): until
        for session, until in (resting.items() if isinstance(resting, dict) else ())
        if isinstance(until, int | float) and until > now
    }
    kept[session_id] = now + SESSION_REST_SECONDS
    view.cache["resting"] = kept


class SessionClaimer:
    """`generate`'s way: an idle cached session, else a new one (types.Claimer)."""

    def __init__(self, server: SwarmServer) -> None:
        self.server = server

    def claim(self, ledger: Ledger, record: Callable[[Handle], Any], prepared: Prepared) -> Handle:
        with ledger.change() as view:
            held = _resting(view, time.time())
            idle = next((s for s in reversed(sessions_of(view)) if s.id not in held), None)
            if idle is not None:
                handle = {"session_id": idle.id}
                view.add(record(handle))
                return handle
        return self.server.new_held_session(ledger, record)

    def release(self, handle: Handle, *, cancelled: bool) -> None:
        """``cancelled``: an interrupt may still reach the session, so it rests a while; else
        the registry already tells the next generation that the session is free."""
        if cancelled:
            with self.server.ledger.change() as view:
                _rest(view, session_of(handle), time.time())


class SessionPool:
    """A pipeline's few sessions, each held by at most one in-flight asset (types.Claimer).

    A session is reused at once after an asset that ended normally, and rests after one that
    was cancelled (an interrupt aimed at it may still land).
    """

    def __init__(self, server: SwarmServer) -> None:
        self.server = server
        self._free: list[tuple[float, str]] = []
        self._owned: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, ledger: Ledger, record: Callable[[Handle], Any], prepared: Prepared) -> Handle:
        with self._lock:
            now = time.monotonic()
            # A session is taken in the same transaction that records it, so another
            # process's `generate` cannot take it in between; one of ours that such a
            # process took while it was free is held by its record and passed over.
            with ledger.change() as view:
                held = _resting(view, time.time())
                ours = [
                    (index, session_id)
                    for index, (ready, session_id) in enumerate(self._free)
                    if ready <= now and session_id not in held
                ]
                if ours:
                    index, chosen = ours[0]
                    del self._free[index]
                else:
                    chosen = next(
                        (
                            s.id
                            for s in reversed(sessions_of(view))
                            if s.id not in held and s.id not in self._owned
                        ),
                        None,
                    )
                if chosen is not None:
                    handle = {"session_id": chosen}
                    view.add(record(handle))
            if chosen is None:
                handle = self.server.new_held_session(ledger, record)
            self._owned.add(session_of(handle))
            return handle

    def release(self, handle: Handle, *, cancelled: bool) -> None:
        """Free for our next asset; after a cancel the session rests, for other processes'
        generations too (the registry says so)."""
        if cancelled:
            with self.server.ledger.change() as view:
                _rest(view, session_of(handle), time.time())
        with self._lock:
            ready = time.monotonic() + (SESSION_REST_SECONDS if cancelled else 0.0)
            self._free.append((ready, session_of(handle)))


# -- the adapter -----------------------------------------------------------------------------------


class SwarmServer:
    """A SwarmUI server for one credential (types.Server)."""

    type = "swarmui"
    label = "SwarmUI"
    gone_text = "the server no longer knows this generation's session"
    # Backends take requests as they free up; the order of sending decides little.
    one_queue = False
    silent_causes = (
        "a backend failure (ComfyUI timed out or crashed, the server shut down) or an interrupt "
        "from outside this client (the web UI, another client's cancel --all)"
    )
    model_kinds = SUBTYPES
    default_kind = "Stable-Diffusion"
    max_depth = MAX_DEPTH

    def __init__(
        self,
        api_url: str,
        ledger: Ledger,
        *,
        api_key: str | None = None,
        auth_header: str | None = None,
        timeout: float = 30.0,
        log: Callable[[str, str, int | None, float], None] | None = None,
        debug: Callable[[str], None] = lambda message: None,
        transport: Any = None,
        product: str = "SwarmUI",
    ) -> None:
        self.ledger = ledger
        self.debug = debug
        self.client = SwarmClient(
            Transport(
                api_url,
                Credentials(api_key, auth_header),
                timeout=timeout,
                log=log,
                transport=transport,
                product=product,
            )
        )
        self.name = self.client.server
        self._backends_refused: str | None = None

    def close(self) -> None:
        self.client.close()

    # -- identification ---------------------------------------------------------------------

    def probe(self) -> bool:
        """Is SwarmUI here? ``GetNewSession`` says so (and its session is kept for the command).

        False only when the answer shows another server (a bare 404/405 page for the route);
        any other failure is raised, as the command itself would have met it.
        """
        try:
            with self.client.transport.any_server_type():
                self.new_session()
        except SessionFailed as exc:
            if isinstance(exc.cause, NotFound):
                return False
            raise
        return True

    # -- sessions -------------------------------------------------------------------------------

    def new_session(self) -> CachedSession:
        """Create a server session and remember it for reuse."""
        with self._reaching():
            session = CachedSession.from_info(self.client.new_session())
        with self.ledger.change() as view:
            _add_session(view, session)
        return session

    def new_held_session(self, ledger: Ledger, record: Callable[[Handle], Any]) -> Handle:
        """A new server session for one generation, cached together with its record.

        Stored in one transaction: a session cached before the record that holds it looks
        idle, and another process's `generate` could take it (two generations on one
        session, so a cancel of one would stop both).
        """
        with self._reaching():
            session = CachedSession.from_info(self.client.new_session())
        handle = {"session_id": session.id}
        with ledger.change() as view:
            view.add(record(handle))
            _add_session(view, session)
        return handle

    def forget_session(self, session_id: str) -> None:
        with self.ledger.change() as view:
            _drop_session(view, session_id)

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Remember when the server could not be reached (down, restarting): a session made
        before then may describe a process that is gone (``_facts_session``)."""
        try:
            yield
        except ConnectionFailed:
            with contextlib.suppress(RegistryError), self.ledger.change() as view:
                view.cache["unreachable_seen"] = time.time()
            raise

    def control_session(self) -> CachedSession:
        """A session for status, cancel and models: the newest cached one, else a new one."""
        sessions = sessions_of(self.ledger.read())
        return sessions[-1] if sessions else self.new_session()

    def with_session(self, call: Callable[[str], T]) -> T:
        """Run ``call(session_id)`` on the control session (see ``control_session``).

        On 401 ``invalid_session_id`` (server restarted without persistence, or the session was
        purged) get a new session and retry once, as protocol §3.3 prescribes.
        """
        session = self.control_session()
        try:
            with self._reaching():
                return call(session.id)
        except InvalidSession:
            self.debug("the cached session is no longer valid; getting a new one")
            self.forget_session(session.id)
            session = self.new_session()
            with self._reaching():
                return call(session.id)

    # -- generation -----------------------------------------------------------------------------

    def prepare(self, request: Request) -> Prepared:
        """The T2I body: only what the user set (config < --param < options), protocol §4.2."""
        if request.workflow is not None:
            raise RequestError(
                f"--workflow is a ComfyUI option; {self.name} is SwarmUI (its parameters "
                "go in --param KEY=VALUE)",
                "--workflow",
            )
        if request.sets:
            raise RequestError(
                f"--set is a ComfyUI option; {self.name} is SwarmUI (use --param KEY=VALUE)",
                "--set",
            )
        refuse_unsendable_loras(request)
        body = build_request(request)
        steps = _int_value(body, "steps")
        return Prepared(
            request=request,
            expected=expected_outputs(body),
            steps=steps,
            model=_text_value(body, "model"),
            prompt=request.prompt or "",
            parameters=body,
            payload=body,
        )

    def claimer(self) -> SessionClaimer:
        return SessionClaimer(self)

    def pool(self) -> SessionPool:
        return SessionPool(self)

    def start(self, handle: Handle, prepared: Prepared) -> SwarmRun:
        return SwarmRun(self, dict(handle), prepared)

    def read_seed(self, path: Path) -> tuple[int | None, dict[str, Any] | None]:
        """The seed SwarmUI wrote into the image's ``parameters`` chunk, and that metadata."""
        return seed_of_file(path)

    # -- other processes' work --------------------------------------------------------------------

    def job_states(self, handles: list[Handle]) -> list[str]:
        """Each handle's session: QUEUED/RUNNING while it holds a request, IDLE, or GONE."""
        states = []
        for handle in handles:
            try:
                with self._reaching():
                    counters = self.client.current_status(session_of(handle)).counters
            except InvalidSession:
                states.append(jobstate.GONE)
                continue
            if counters.busy:
                states.append(jobstate.RUNNING if counters.live else jobstate.QUEUED)
            else:
                states.append(jobstate.IDLE)
        return states

    def cancel(self, handles: list[Handle], *, timeout: float | None = None) -> list[bool]:
        """Interrupt each handle's session; False where the server no longer knows it."""
        return [self._interrupt(session_of(handle), timeout) for handle in handles]

    def _interrupt(self, session_id: str, timeout: float | None) -> bool:
        """``InterruptGeneration`` first, for servers that have it; real SwarmUI answers
        ``bad_route``, which is remembered so later cancels go straight to ``InterruptAll
        {other_sessions: false}`` on that session (cli-contract §5)."""
        known = self.ledger.read().cache.get("interrupt_generation")
        try:
            if known is not False:
                try:
                    self.client.interrupt_generation(session_id)
                except UnknownRoute:
                    self.debug("the server has no InterruptGeneration route; using InterruptAll")
                    self._remember_route(False)
                except NotFound as exc:
                    # A 404 page, not SwarmUI's JSON (a server or proxy without the route):
                    # InterruptAll, the protocol's own cancel, decides; nothing is remembered.
                    self.debug(
                        f"InterruptGeneration answered oddly ({exc.message}); using InterruptAll"
                    )
                else:
                    if known is None:
                        self._remember_route(True)
                    return True
            self.client.interrupt_all(session_id, other_sessions=False, timeout=timeout)
        except InvalidSession:
            return False
        return True

    def _remember_route(self, supported: bool) -> None:
        with self.ledger.change() as view:
            view.cache["interrupt_generation"] = supported

    def cancel_all(self, ours: list[Handle]) -> Reach:
        """``InterruptAll {other_sessions: true}``: every session of this server user.

        On a server without accounts every client is the same user, browser tabs included.
        """
        self.with_session(lambda session: self.client.interrupt_all(session, other_sessions=True))
        sessions = sessions_of(self.ledger.read())
        user = sessions[-1].user_id if sessions and sessions[-1].user_id else "this user"
        reach = (
            " (a server without accounts: that is every client, browser tabs included)"
            if user == "local"
            else ""
        )
        return Reach("user", f"interrupted all generations of {user} on {self.name}{reach}")

    # -- status, parallelism, models --------------------------------------------------------------

    def facts(self) -> Facts:
        """GetCurrentStatus (and ListBackends when permitted) on a recent session."""
        asked: list[str] = []
        elapsed: list[float] = []

        def ask(session_id: str) -> Any:
            asked.append(session_id)
            started = time.monotonic()
            answer = self.client.current_status(session_id)
            elapsed.append((time.monotonic() - started) * 1000)
            return answer

        current = self.with_session(ask)
        session_id = self._facts_session(asked[-1], current.backend_status)
        backends = None
        backends_error = self._backends_refused
        if backends_error is None:
            try:
                backends = self.client.backends(session_id)
            except APIError as exc:
                # ListBackends needs view_backends_list (power users, protocol §6.3); without
                # it the roll-up is all this user may see, which is not a failure. A refusal
                # stands for this process (`status --watch` does not ask every second).
                backends_error = self._backends_refused = exc.text
        cached = next((s for s in sessions_of(self.ledger.read()) if s.id == session_id), None)
        version = cached.version if cached else None
        server_id = cached.server_id if cached else None
        user = cached.user_id if cached else None
        rollup = current.backend_status
        summary = str(rollup.get("status") or "unknown")
        if rollup.get("message"):
            summary += f": {rollup['message']}"
        features = list(current.supported_features)
        response_ms = round(elapsed[-1], 1)
        identity = {
            "type": self.type,
            "reachable": True,
            "response_ms": response_ms,
            "version": version,
            "server_id": server_id,
            "user": user,
        }
        document = {
            # As on ComfyUI (cli-contract §7: `server.type`); the flat keys stay for scripts.
            "server": {"url": self.name, **identity},
            **identity,
            "backend_status": dict(rollup),
            "backends": (
                None
                if backends is None
                else [
                    {
                        "id": b.id,
                        "type": b.type,
                        "title": b.title,
                        "status": b.status,
                        "enabled": b.enabled,
                        "current_model": b.current_model,
                        "time_since_used": b.time_since_used,
                    }
                    for b in backends
                ]
            ),
            "backends_error": backends_error,
            "supported_features": features,
        }
        rows = [
            ("type", self.type),
            ("version", version or "unknown"),
            ("server id", server_id or "unknown"),
            ("user", user or "unknown"),
            ("backends", summary),
            ("features", ", ".join(features) or "none"),
        ]
        table = FactTable(
            name="backends",
            columns=("BACKEND", "TYPE", "STATUS", "MODEL", "LAST USED"),
            rows=[
                (
                    b.id if not b.title else f"{b.id} {b.title}",
                    b.type,
                    b.status if b.enabled else f"{b.status} (disabled)",
                    b.current_model or "-",
                    b.time_since_used or "-",
                )
                for b in backends or []
            ],
            elastic="MODEL",
            empty="no backends configured",
            unavailable=(
                None
                if backends is not None
                else f"backend list not shown ({backends_error or 'refused'}); the roll-up is above"
            ),
        )
        return Facts(
            document=document,
            rows=rows,
            tables=[table],
            response_ms=elapsed[-1],
            brief=("version", "backends"),
        )

    def _facts_session(self, session_id: str, rollup: dict[str, Any]) -> str:
        """The session whose version and server id `status` shows: ``session_id`` (the one
        just asked), or a new one when its facts may belong to a process that is gone.

        They come only with GetNewSession and belong to the process that made the session,
        which a session outlives (protocol §9.23); a session per run is pitfall 3. So a new
        one is made when the server was seen unreachable since (by any command of ours), when
        its backends are starting again (a restart that nobody saw go down), and at the latest
        SERVER_FACTS_SECONDS after the last one.
        """
        view = self.ledger.read()
        session = next((s for s in sessions_of(view) if s.id == session_id), None)
        down = view.cache.get("unreachable_seen")
        down = down if isinstance(down, int | float) and not isinstance(down, bool) else None
        starting = self._backends_starting(session_id, rollup)
        if (
            session is not None
            and time.time() - session.created <= SERVER_FACTS_SECONDS
            and (down is None or session.created > down)
            and not starting
        ):
            return session_id
        return self.new_session().id

    def _backends_starting(self, session_id: str, rollup: dict[str, Any]) -> bool:
        """The backends went back to starting since ``session_id``'s facts were last shown.

        A SwarmUI that restarts (an update, say) brings its backends up again, and status
        asked a second later sees them loading: its cached session's version and server id
        may then be the old process's, worth one new session. The roll-up is remembered per
        session only when it changes, so `status --watch` writes nothing while it is steady.
        """
        status = str(rollup.get("status") or "")
        seen = self.ledger.read().cache.get("backends_seen")
        if seen == {"session": session_id, "status": status}:
            return False
        with contextlib.suppress(RegistryError), self.ledger.change() as view:
            view.cache["backends_seen"] = {"session": session_id, "status": status}
        return (
            isinstance(seen, dict)
            and seen.get("session") == session_id
            and seen.get("status") not in STARTING_ROLLUPS
            and status in STARTING_ROLLUPS
        )

    def workers(self) -> int:
        """How many generation backends the server has (ListBackends when permitted), else 0."""
        try:
            backends = self.with_session(self.client.backends)
        except APIError as exc:
            self.debug(f"cannot list the server's backends ({exc.text}); one asset at a time")
            return 0
        usable = [
            b
            for b in backends
            if b.enabled
            and b.status in ("running", "loading", "waiting")
            and b.type not in TEXT_BACKENDS
        ]
        return len(usable)

    def parallelism(self) -> tuple[int, bool]:
        """A pipeline's default --parallel (its backends) and whether to queue ahead at it."""
        backends = self.workers()
        return max(1, backends), backends > 0

    def kind_of(self, name: str) -> str | None:
        """SwarmUI's spelling of a model sub-type given in any case; None if unknown."""
        return next((s for s in SUBTYPES if s.lower() == name.lower()), None)

    def models(self, kind: str | None, folder: str, depth: int) -> ModelListing:
        """``ListModels`` on the control session; model names keep their extension."""
        subtype = self.kind_of(kind or self.default_kind)
        if subtype is None:
            raise RequestError(
                f"Invalid value for '--subtype': {kind!r} is not a model type; the types are: "
                f"{', '.join(SUBTYPES)}.",
                "--subtype",
            )
        listing = self.with_session(
            lambda session: self.client.models(session, subtype=subtype, path=folder, depth=depth)
        )
        return ModelListing(
            kind=subtype,
            folders=listing.folders,
            models=tuple(
                Model(m.name, m.title, m.architecture, m.resolution, m.loaded, m.raw)
                for m in listing.models
            ),
            complete=folder.strip("/\\") == "" and depth == MAX_DEPTH,
        )


# -- one generation -----------------------------------------------------------------------------


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


def describe_wait(counters: Counters) -> tuple[str, str] | None:
    """The state a status message shows (and the words for it), or None when idle."""
    if counters.live:
        return jobstate.RUNNING, "running"
    if not counters.busy:
        return None
    if counters.loading_models:
        return types.LOADING, "waiting for a model to load"
    if counters.waiting_backends:
        return jobstate.QUEUED, "queued, waiting for a backend"
    return jobstate.QUEUED, "queued"


class SwarmRun:
    """One generation on its session: the WebSocket (or plain HTTP) as events (types.Run)."""

    def __init__(self, server: SwarmServer, handle: Handle, prepared: Prepared) -> None:
        self.server = server
        self.client = server.client
        self.handle = handle
        self.prepared = prepared
        self._body: dict[str, Any] = prepared.payload
        self._expected = prepared.expected
        self._images = 0
        self._errors: list[str] = []
        # cancel() was called: nothing more is sent.
        self._cancelled = False

    @property
    def session_id(self) -> str:
        return session_of(self.handle)

    def events(self) -> Iterator[Event]:
        """Send the request and follow it to the end; HTTP when WebSockets are refused."""
        try:
            renewed = False
            while True:
                stale = False
                with self.client.generation_socket(self.session_id, self._body) as ws:
                    for event in self._read_socket(ws, allow_renew=not renewed):
                        if isinstance(event, _Stale):
                            stale = True
                            break
                        yield event
                if not stale:
                    break
                renewed = True
                self.server.debug("the cached session is no longer valid; getting a new one")
                yield self._renew()
        except WebSocketRefused as exc:
            self.server.debug(f"{exc}; falling back to GenerateText2Image (no live progress)")
            yield from self._over_http()
            return
        yield self._ending()

    def _renew(self) -> Renewed:
        stale = self.session_id
        session = CachedSession.from_info(self.client.new_session())
        with self.server.ledger.change() as view:
            _keep_sessions(view, [s for s in sessions_of(view) if s.id != stale] + [session])
            # Our record takes the new session only when the Renewed event is handled; until
            # then it rests, so no other process's generation takes it as idle.
            _rest(view, session.id, time.time())
        self.handle = {"session_id": session.id}
        return Renewed(dict(self.handle))

    def _ending(self) -> Ended:
        if self._errors:
            first = self._errors[0]
            # After any other error SwarmUI cancels the request's own token and its other
            # running tasks report "interrupted" too (T2IAPI.cs ~263, T2IEngine.cs ~321), so
            # only an interrupt that comes first means someone cancelled.
            how = types.INTERRUPTED if first.strip() == INTERRUPTED_TEXT else types.FAILED
            return Ended(how, first)
        return Ended(types.DONE)

    def _read_socket(self, ws: WebSocket, *, allow_renew: bool) -> Iterator[Event | _Stale]:
        """Messages until the server closes; a _Stale when the session must be renewed."""
        last_message = time.monotonic()
        accepted = False
        while True:
            try:
                message = ws.receive(timeout=POLL_SECONDS)
            except ConnectionFailed:
                # A connection dropped once every image is in loses nothing; earlier it is a
                # failure.
                if self._images < self._expected:
                    raise
                self.server.debug("the server dropped the WebSocket after the generation ended")
                return
            except RequestTimeout:
                # Kestrel's keep-alive Pongs count: while SwarmUI is still launching a large
                # batch it sends no keep_alive message for minutes (T2IAPI.cs), only those.
                if time.monotonic() - max(last_message, ws.last_heard) > SILENCE_LIMIT:
                    raise RequestTimeout(
                        f"{self.client.server} sent nothing for {SILENCE_LIMIT:.0f} s "
                        "during the generation"
                    ) from None
                yield Tick()
                continue
            if message is None:
                return
            last_message = time.monotonic()
            if message.get("socket_intention") == "close":
                # Every image, error and discard of the request is in: SwarmUI sends this
                # when the socket has no request left, then idles 2 s for another one, sends
                # a last status and closes (T2IAPI.cs GenerateText2ImageWS). We close first,
                # with a Close frame: SwarmUI's reader takes it as the end of the socket
                # (no log), and its last sends go nowhere without an error (Kestrel drops
                # writes once the peer has gone). Only a hang-up *without* a Close frame
                # makes its reader fail, an error in SwarmUI's log per generation (API.cs,
                # Utilities.RunCheckedTask; protocol §9 pitfall 18).
                return
            event = parse_event(message)
            if (
                isinstance(event, ErrorEvent)
                and event.error_id == "invalid_session_id"
                and allow_renew
                and not self._images
            ):
                yield _Stale()
                return
            if isinstance(event, StatusEvent) and not accepted:
                # The server answered, so it has claimed the request: a cancel reaches it now.
                accepted = True
                yield Accepted()
            yield from self._translate(event)

    def _translate(self, event: object) -> Iterator[Event]:
        if isinstance(event, StatusEvent):
            wait = describe_wait(event.status.counters)
            if wait is not None:
                yield Waiting(*wait)
        elif isinstance(event, ProgressEvent):
            yield Progress(event.batch_index, event.current)
        elif isinstance(event, ImageEvent):
            yield self._image(event)
        elif isinstance(event, ErrorEvent):
            self._errors.append(event.text)
        elif isinstance(event, DiscardEvent):
            yield Discarded(tuple(event.indices))
        else:
            yield Tick()

    def _image(self, event: ImageEvent) -> Event:
        inline = event.image.startswith("data:")
        shown = None if inline else event.image
        kind = not_an_output(event.batch_index, self._expected)
        if kind is not None:
            # Not one of the N results (protocol §9.21): neither counted nor saved.
            return NotAResult(event.batch_index, kind, shown)
        self._images += 1
        return ImageReady(
            index=event.batch_index,
            shown=shown,
            extension=extension_of(event.image),
            data=decode_data_url(event.image) if inline else None,
            seed=seed_from_metadata(event.metadata),
            metadata=event.metadata,
            ref=shown,
        )

    def _over_http(self) -> Iterator[Event]:
        """``GenerateText2Image``: one answer at the very end (protocol §4.4).

        No status arrives, so the request is run in a thread while the session is watched:
        once the server shows the request (its session busy), it is Accepted and an interrupt
        reaches it.
        """
        yield Waiting(jobstate.QUEUED, "queued")
        # A cancel recorded while the WebSocket was tried must stop us before we send.
        yield Tick(look=True)
        if self._cancelled:
            yield Ended(types.INTERRUPTED, "cancelled before the request was sent")
            return
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def request() -> None:
            try:
                try:
                    outcome["paths"] = self.client.generate_http(
                        self.session_id, self._body, timeout=math.inf
                    )
                except InvalidSession:
                    self.server.debug("the cached session is no longer valid; getting a new one")
                    outcome["renewed"] = self._renew()
                    outcome["paths"] = self.client.generate_http(
                        self.session_id, self._body, timeout=math.inf
                    )
            except BaseException as exc:  # handed to the reading thread below
                outcome["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=request, name="generate-http", daemon=True)
        worker.start()
        accepted = False
        while not done.wait(POLL_SECONDS):
            if not accepted:
                try:
                    accepted = self.client.current_status(self.session_id).counters.busy
                except SwarmError as exc:
                    self.server.debug(f"could not look at the session: {exc.message}")
                if accepted:
                    yield Accepted()
            yield Tick()
        if "renewed" in outcome:
            yield outcome["renewed"]
        error = outcome.get("error")
        if isinstance(error, APIError) and error.error_id is None:
            yield Ended(
                types.INTERRUPTED if error.text.strip() == INTERRUPTED_TEXT else types.FAILED,
                error.text,
            )
            return
        if error is not None:
            raise error
        for index, path in enumerate(outcome.get("paths", [])):
            event = self._image(ImageEvent(path, index, "", None))
            yield event
        yield Ended(types.DONE)

    def cancel(self, timeout: float) -> bool:
        """Interrupt our own session on the server, bounded by ``timeout`` seconds."""
        self._cancelled = True
        try:
            self.client.interrupt_all(self.session_id, other_sessions=False, timeout=timeout)
        except SwarmError as exc:
            self.server.debug(f"could not interrupt the generation on the server: {exc.message}")
            return False
        return True

    def open_image(self, image: ImageReady) -> AbstractContextManager[Iterator[bytes]]:
        return self.client.open_image(str(image.ref))


class _Stale:
    """The session the request went to is unknown to the server (renew it, resend)."""


def _int_value(body: dict[str, Any], name: str) -> int | None:
    from asset_generator.swarm.params import clean_name

    for key, value in body.items():
        if clean_name(key) == name and isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _text_value(body: dict[str, Any], name: str) -> str | None:
    from asset_generator.swarm.params import clean_name

    for key, value in body.items():
        if clean_name(key) == name and isinstance(value, str):
            return value
    return None
