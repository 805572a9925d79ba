"""The generation registry (cli-contract §4): our work on every server, in one local file.

Every ``generate`` records its work here *before* it sends anything, under a handle its server's
adapter chose (a SwarmUI session, ComfyUI prompt ids), so ``cancel`` and ``status`` in any
other process find it again: neither server can tell whose work is whose (a SwarmUI interrupt
stops a whole session, ComfyUI has one queue for everyone), and closing a connection stops
nothing on either. Each adapter also keeps its own memory here (``ServerState.adapter``).

The file lives in the user *state* dir (losing it orphans running work), is rewritten
atomically under a file lock, and is mode 0600 because a handle can be a credential (a
SwarmUI session id, protocol §2.4). A corrupt file is set aside with a warning and rebuilt,
never a crash. Schema 1 files (before the server seam) are read and converted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FILE_NAME = "generations.json"
LOCK_NAME = "generations.lock"
SCHEMA = 2
# Files written before the seam: SwarmUI only, a session id per record.
SCHEMA_SWARM_ONLY = 1

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
STATES = FINAL_STATES | {QUEUED, RUNNING}
PROMPT_CHARS = 80
KEEP_FINISHED_SECONDS = 7 * 24 * 3600
KEEP_FINISHED_COUNT = 200
LOCK_WAIT_SECONDS = 10.0
# A cache written by another program (or damaged) must not smuggle in values that break us
# later: a pid of 0 or -1 makes os.kill() probe whole process groups, a time beyond year
# 9999 makes strftime fail, a NaN progress makes --format json emit invalid JSON.
LAST_TIMESTAMP = 253402300799.0
MAX_PID = 2**31 - 1


class RegistryError(Exception):
    """The state directory or file cannot be written."""


def server_key(api_url: str, credential: str | None) -> str:
    """Key records by server and credential without storing the credential itself."""
    import hashlib

    digest = hashlib.sha256(f"{api_url}\0{credential or ''}".encode())
    return digest.hexdigest()[:16]


def this_host() -> str:
    """This machine's name as records store it (``uname -n``, what gethostname() returns)."""
    return os.uname().nodename


def process_alive(host: str, pid: int) -> bool | None:
    """Whether process ``pid`` runs; None when it ran on another host (we cannot tell)."""
    if host != this_host():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_generation_id() -> str:
    return "gen_" + os.urandom(4).hex()


def new_pipeline_id() -> str:
    return "pipe_" + os.urandom(4).hex()


@dataclass(kw_only=True)
class JobRecord:
    """What every job of ours holds: who runs it where, and how it ended."""

    id: str
    server: str
    server_key: str
    pid: int
    host: str
    created: float
    # Which kind of server runs it (server.SERVER_TYPES); schema-1 records were SwarmUI's.
    server_type: str = "swarmui"
    status: str = QUEUED
    error: str | None = None
    finished: float | None = None

    @property
    def ended(self) -> bool:
        """The status is one a job ends with (its work may still run: see ``is_final``)."""
        return self.status in FINAL_STATES

    @property
    def is_final(self) -> bool:
        """Finished, and nothing of it can still be running on the server."""
        return self.ended

    def process_alive(self) -> bool | None:
        """True/False for a process on this host; None when it ran on another host."""
        return process_alive(self.host, self.pid)

    def finish(self, status: str, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished = time.time()

    def _times(self) -> dict[str, Any]:
        return {
            "created": _iso(self.created),
            "finished": _iso(self.finished) if self.finished else None,
        }


@dataclass(kw_only=True)
class GenerationRecord(JobRecord):
    """One generation started by this client."""

    # The adapter's identification of our work on the server: private (never in public()).
    handle: dict[str, Any]
    prompt: str
    progress: float = 0.0
    images: list[str] = field(default_factory=list)
    # Which kind of process runs it when not the CLI itself (``"mcp"``); old caches lack it.
    owner: str | None = None
    # The pipe_ record of the pipeline this generation is one asset of.
    pipeline_id: str | None = None
    # When we recorded a stop (a cancel) whose interrupt the server has not been seen to take;
    # None once it is confirmed (jobs.stop).
    cancel_unconfirmed: float | None = None

    @property
    def is_final(self) -> bool:
        """Finished, and nothing of it can still be running on the server.

        A cancel not yet confirmed is the generating process's to finish while it lives (it
        honours the mark, interrupts its own work and records how it ended); once that
        process is gone the work may still run, so the record stays active: `cancel` sends
        the interrupt again and `status` asks the server.
        """
        if self.cancel_unconfirmed is None:
            return self.ended
        return self.ended and self.process_alive() is True

    def finish(self, status: str, error: str | None = None, *, unconfirmed: bool = False) -> None:
        """End the record; ``unconfirmed``: an interrupt of its work is on its way (or lost)."""
        super().finish(status, error)
        if status == SUCCEEDED:
            self.progress = 100.0
        self.cancel_unconfirmed = self.finished if unconfirmed else None

    def confirm(self) -> None:
        """The server took the interrupt (or shows the work gone): nothing of it runs there."""
        self.cancel_unconfirmed = None

    def public(self) -> dict[str, Any]:
        """The record as shown to users and scripts: never the handle."""
        times = self._times()
        return {
            "id": self.id,
            "server": self.server,
            "prompt": self.prompt,
            "status": self.status,
            "progress": round(self.progress, 1),
            "created": times["created"],
            "finished": times["finished"],
            "pid": self.pid,
            "images": list(self.images),
            "error": self.error,
            "pipeline_id": self.pipeline_id,
            # A cancel of ours the server has not confirmed: the work may still run there.
            "cancel_unconfirmed": self.cancel_unconfirmed is not None,
            **({"owner": self.owner} if self.owner else {}),
        }

    @classmethod
    def from_dict(cls, data: Any) -> GenerationRecord:
        """A record as stored in the cache; ValueError/TypeError when it has the wrong shape."""
        record = _known_fields(cls, data, "a generation record")
        _check_job(record, "generation", ("prompt",))
        _expect(_is_handle(record.handle), "a generation's handle is not an object of text")
        _expect(
            _is_number(record.progress) and 0 <= record.progress <= 100,
            "a generation's progress is not a percentage",
        )
        _expect(
            isinstance(record.images, list) and all(isinstance(i, str) for i in record.images),
            "a generation's images are not a list of paths",
        )
        _expect(record.owner is None or isinstance(record.owner, str), "an owner is not text")
        _expect(
            record.pipeline_id is None or isinstance(record.pipeline_id, str),
            "a generation's pipeline id is not text",
        )
        _expect(
            record.cancel_unconfirmed is None or _is_time(record.cancel_unconfirmed),
            "a generation has an impossible cancel time",
        )
        _expect(
            record.cancel_unconfirmed is None or record.ended,
            "a generation has an unconfirmed cancel but no final status",
        )
        return record


# How a pipeline's assets stand: made (or already there), failed, cancelled, in flight (sent,
# not ended) and not started. Only the first two are "done"; the others are counted apart.
PIPELINE_COUNTS = ("succeeded", "skipped", "failed", "cancelled", "in_flight", "not_started")
DONE_COUNTS = ("succeeded", "skipped")


@dataclass(kw_only=True)
class PipelineRecord(JobRecord):
    """One ``pipeline`` run: its spec, where it writes, and how far it got."""

    spec: str
    output_dir: str
    base_seed: int
    total: int
    status: str = RUNNING
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Assets whose file is made: succeeded or skipped (never failed or cancelled)."""
        return sum(self.counts.get(name, 0) for name in DONE_COUNTS)

    @property
    def ended(self) -> int:
        """Assets that ended, however (done, failed or cancelled): neither in flight nor
        waiting to start. A pipeline's progress is this of the total."""
        counts = self.tally()
        return self.total - counts["in_flight"] - counts["not_started"]

    def tally(self) -> dict[str, int]:
        """Every count of PIPELINE_COUNTS; what no count covers has not started.

        Records written before "in_flight" and "not_started" were counted hold only the ended
        assets: the rest of the total is then not started (or in flight, while it runs).
        """
        tally = {name: self.counts.get(name, 0) for name in PIPELINE_COUNTS}
        counted = sum(tally.values())
        if "not_started" not in self.counts:
            tally["not_started"] = max(self.total - counted, 0)
        return tally

    def public(self) -> dict[str, Any]:
        times = self._times()
        tally = self.tally()
        return {
            "id": self.id,
            "server": self.server,
            "spec": self.spec,
            "output_dir": self.output_dir,
            "base_seed": self.base_seed,
            "status": self.status,
            "total": self.total,
            "done": self.done,
            "failed": tally["failed"],
            "cancelled": tally["cancelled"],
            "not_started": tally["not_started"],
            "counts": tally,
            "created": times["created"],
            "finished": times["finished"],
            "pid": self.pid,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Any) -> PipelineRecord:
        """A pipeline record as stored; ValueError/TypeError when it has the wrong shape."""
        record = _known_fields(cls, data, "a pipeline record")
        _check_job(record, "pipeline", ("spec", "output_dir"))
        for name in ("base_seed", "total"):
            value = getattr(record, name)
            _expect(isinstance(value, int) and not isinstance(value, bool), f"bad pipeline {name}")
        _expect(
            isinstance(record.counts, dict)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in record.counts.values()),
            "a pipeline's counts are not numbers",
        )
        return record


def _known_fields(cls: type[T], data: Any, what: str) -> T:
    """``cls`` built from the keys of ``data`` it knows (newer caches may hold more)."""
    _expect(isinstance(data, dict), f"{what} is not an object")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _check_job(record: JobRecord, kind: str, text: tuple[str, ...]) -> None:
    """What both record kinds must hold: text ids, a known status, a real pid, sane times."""
    for name in ("id", "server", "server_key", "host", "server_type", *text):
        _expect(isinstance(getattr(record, name), str), f"a {kind}'s {name} is not text")
    _expect(
        isinstance(record.status, str) and record.status in STATES,
        f"a {kind} has an unknown status",
    )
    _expect(
        isinstance(record.pid, int)
        and not isinstance(record.pid, bool)
        and 0 < record.pid <= MAX_PID,
        f"a {kind} has an impossible pid",
    )
    _expect(_is_time(record.created), f"a {kind} has an impossible creation time")
    _expect(
        record.finished is None or _is_time(record.finished),
        f"a {kind} has an impossible finishing time",
    )
    _expect(record.error is None or isinstance(record.error, str), "an error is not text")


def _is_handle(value: Any) -> bool:
    """A JSON object of text keys whose values are text, numbers or lists of text."""
    if not isinstance(value, dict):
        return False
    for key, item in value.items():
        if not isinstance(key, str):
            return False
        if isinstance(item, list):
            if not all(isinstance(i, str) for i in item):
                return False
        elif item is not None and not isinstance(item, str | int | float):
            return False
    return True


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(problem)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _is_time(value: Any) -> bool:
    return _is_number(value) and 0 <= value <= LAST_TIMESTAMP


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


@dataclass
class ServerState:
    """What we remember about one server + credential."""

    # The adapter's own memory (SwarmUI: sessions, route flags), opaque to everyone else.
    adapter: dict[str, Any] = field(default_factory=dict)
    # Model names `models list` saw, by kind, for shell completion.
    models: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class State:
    """The whole registry file, loaded."""

    generations: dict[str, GenerationRecord] = field(default_factory=dict)
    servers: dict[str, ServerState] = field(default_factory=dict)
    # Absent from files written before pipelines existed; they load with none.
    pipelines: dict[str, PipelineRecord] = field(default_factory=dict)
    # Which kind of server answered at each address (`--server-type auto`), by URL as shown.
    kinds: dict[str, str] = field(default_factory=dict)

    def server(self, key: str) -> ServerState:
        return self.servers.setdefault(key, ServerState())

    def records_for(self, key: str) -> list[GenerationRecord]:
        """This server's records, newest first."""
        records = [r for r in self.generations.values() if r.server_key == key]
        return sorted(records, key=lambda r: r.created, reverse=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "generations": {k: asdict(v) for k, v in self.generations.items()},
            "servers": {k: asdict(v) for k, v in self.servers.items()},
            "pipelines": {k: asdict(v) for k, v in self.pipelines.items()},
            "kinds": dict(self.kinds),
        }

    @classmethod
    def from_json(cls, data: Any) -> State:
        if not isinstance(data, dict) or data.get("schema") not in (SCHEMA, SCHEMA_SWARM_ONLY):
            raise ValueError("not a registry document of this version")
        if data["schema"] == SCHEMA_SWARM_ONLY:
            data = _from_swarm_only(data)
        stored_generations = data.get("generations", {})
        stored_servers = data.get("servers", {})
        _expect(isinstance(stored_generations, dict), "generations is not an object")
        _expect(isinstance(stored_servers, dict), "servers is not an object")
        generations = {}
        for key, value in stored_generations.items():
            record = GenerationRecord.from_dict(value)
            _expect(key == record.id, "a generation is filed under another id")
            generations[key] = record
        servers = {}
        for key, value in stored_servers.items():
            _expect(isinstance(value, dict), "a server entry is not an object")
            adapter = value.get("adapter", {})
            _expect(isinstance(adapter, dict), "a server's adapter memory is not an object")
            models = value.get("models", {})
            _expect(
                isinstance(models, dict)
                and all(
                    isinstance(names, list) and all(isinstance(n, str) for n in names)
                    for names in models.values()
                ),
                "a server's model names are not lists of text",
            )
            servers[key] = ServerState(
                adapter=adapter, models={k: list(v) for k, v in models.items()}
            )
        stored_pipelines = data.get("pipelines", {})
        _expect(isinstance(stored_pipelines, dict), "pipelines is not an object")
        pipelines = {}
        for key, value in stored_pipelines.items():
            pipeline = PipelineRecord.from_dict(value)
            _expect(key == pipeline.id, "a pipeline is filed under another id")
            pipelines[key] = pipeline
        kinds = data.get("kinds", {})
        _expect(
            isinstance(kinds, dict) and all(isinstance(v, str) for v in kinds.values()),
            "the remembered server types are not text",
        )
        return cls(generations, servers, pipelines, dict(kinds))

    def prune(self, now: float | None = None) -> None:
        """Drop old finished records (the newest KEEP_FINISHED_COUNT of each kind stay)."""
        now = time.time() if now is None else now
        for jobs in (self.generations, self.pipelines):
            ended = sorted(
                (r for r in jobs.values() if r.is_final),
                key=lambda r: r.finished or r.created,
                reverse=True,
            )
            for index, record in enumerate(ended):
                age = now - (record.finished or record.created)
                if index >= KEEP_FINISHED_COUNT or age > KEEP_FINISHED_SECONDS:
                    del jobs[record.id]


def _from_swarm_only(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 document in schema 2's shape: session ids become SwarmUI handles.

    A generation may be running while the user upgrades; its record must still be found.
    """
    generations = data.get("generations", {})
    _expect(isinstance(generations, dict), "generations is not an object")
    converted: dict[str, Any] = {}
    for key, value in generations.items():
        _expect(isinstance(value, dict), "a generation record is not an object")
        record = {k: v for k, v in value.items() if k != "session_id"}
        session_id = value.get("session_id")
        _expect(isinstance(session_id, str), "a generation's session_id is not text")
        record["handle"] = {"session_id": session_id}
        record["server_type"] = "swarmui"
        converted[key] = record
    servers: dict[str, Any] = {}
    stored = data.get("servers", {})
    _expect(isinstance(stored, dict), "servers is not an object")
    for key, value in stored.items():
        _expect(isinstance(value, dict), "a server entry is not an object")
        adapter = {
            name: value[name] for name in ("sessions", "interrupt_generation") if name in value
        }
        servers[key] = {"adapter": adapter, "models": value.get("models", {})}
    return {**data, "generations": converted, "servers": servers}


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def cached_model_names(state: State, key: str, subtype: str = "Stable-Diffusion") -> list[str]:
    """Model names ``models list`` last saw on this server, for completion (no network).

    ``key`` is the server key (``App.server_key``); ``subtype`` the kind as the server names
    it (SwarmUI's ``LoRA``, ComfyUI's ``loras``...).
    """
    server = state.servers.get(key)
    return list(server.models.get(subtype, ())) if server is not None else []


def remember_model_names(
    state: State, key: str, subtype: str, names: list[str], *, complete: bool
) -> None:
    """Cache names seen by ``models list``: a complete listing replaces, a partial one adds."""
    models = state.server(key).models
    known = [] if complete else models.get(subtype, [])
    models[subtype] = sorted(set(known) | set(names))


class Registry:
    """Access to the registry file: read without waiting, change under an exclusive lock."""

    def __init__(self, directory: Path, warn: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self._lock_path = directory / LOCK_NAME
        self._warn = warn or (lambda message: None)
        self._warned: set[str] = set()

    def read(self) -> State:
        """A consistent snapshot; the file is only ever replaced whole, so no lock is needed.

        A corrupt file is set aside and rebuilt here too (under the lock), so a command that
        only reads (`cancel` with nothing active) says so once and leaves a good file behind.
        """
        try:
            return self._load(set_aside=False)
        except _Corrupt as corrupt:
            try:
                with self.transaction() as state:
                    return state
            except RegistryError:
                self._warn_once(
                    f"warning: the session cache {self.path} is corrupt ({corrupt}); ignoring it"
                )
                return State()

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self._warn(message)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """Load under the lock, let the caller change the state, write it back atomically."""
        self._ensure_directory()
        try:
            lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RegistryError(
                f"cannot open the session cache lock {self._lock_path}: {exc.strerror}"
            ) from None
        try:
            self._lock(lock)
            state = self._load(set_aside=True)
            yield state
            state.prune()
            self._write(state)
        finally:
            os.close(lock)

    def _lock(self, lock: int) -> None:
        """Take the lock, waiting at most LOCK_WAIT_SECONDS.

        Every holder only reads, changes and writes a small file, so a longer wait means
        something is wrong (a stopped process, a hung network file system); saying so beats
        a cron job that never ends.
        """
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        pause = 0.001
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RegistryError(
                        f"the session cache {self.path} has been locked by another process "
                        f"for {LOCK_WAIT_SECONDS:g} s (a stopped asset-generator?)"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.02)

    def _ensure_directory(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise RegistryError(
                f"cannot create the state directory {self.directory}: {exc.strerror}"
            ) from None

    def _load(self, *, set_aside: bool) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return State()
        except OSError as exc:
            if not set_aside:
                self._warn_once(
                    f"warning: cannot read the session cache {self.path}: {exc.strerror}"
                )
                return State()
            raise RegistryError(
                f"cannot read the session cache {self.path}: {exc.strerror}"
            ) from None
        try:
            # NaN and Infinity are not JSON (we never write them): a file holding one anywhere,
            # even in an adapter's opaque memory, could not be written back.
            return State.from_json(json.loads(raw, parse_constant=_not_json))
        # RecursionError: json.loads of a deeply nested document (e.g. "[[[[...").
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            if not set_aside:
                raise _Corrupt(reason) from None
            aside = self._aside_name()
            try:
                os.replace(self.path, aside)
                # It may hold session ids, which are credentials on SwarmUI.
                os.chmod(aside, 0o600)
            except OSError:
                aside = self.path
            self._warn(
                f"warning: the session cache {self.path} was corrupt ({reason}); "
                f"moved it to {aside.name} and started a new one"
            )
            return State()

    def _aside_name(self) -> Path:
        """A name for a corrupt file that no earlier one (of the same second) holds."""
        stem = f"{FILE_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        aside = self.path.with_name(stem)
        number = 1
        while aside.exists():
            aside = self.path.with_name(f"{stem}-{number}")
            number += 1
        return aside

    def _write(self, state: State) -> None:
        payload = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        write_atomic(self.path, payload, what="the session cache")


class _Corrupt(Exception):
    """The registry file holds something that is not a registry (the reason is the text)."""


def write_atomic(path: Path, payload: bytes, *, what: str, mode: int = 0o600) -> None:
    """Write a file whole or not at all: temp file, fsync, rename; mode 0600 by default.

    On failure (full disk, read-only directory) the previous file is left untouched.
    """
    temp_name: str | None = None
    try:
        import tempfile

        # Same directory, so the rename is atomic.
        handle, temp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
        try:
            os.fchmod(handle, mode)
            view = memoryview(payload)
            while view:
                written = os.write(handle, view)
                view = view[written:]
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(temp_name, path)
    except BaseException as exc:
        # Ctrl-C lands here too (generate turns signals into exceptions): no temp file stays.
        if temp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
        if not isinstance(exc, OSError):
            raise
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
        raise RegistryError(f"cannot write {what} {path}: {reason}") from None
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def active_under_other_credentials(state: State, server: str, key: str) -> list[GenerationRecord]:
    """Unfinished records on ``server`` (as shown) that were started with other credentials.

    ``cancel`` cannot reach them with the credentials in effect (keys hash server and
    credential), so "nothing to cancel" would be wrong while they may still be running.
    A record whose process is known dead is left out: nothing may be running there.
    """
    records = [
        r
        for r in state.generations.values()
        if r.server == server
        and r.server_key != key
        and not r.is_final
        and r.process_alive() is not False
    ]
    return sorted(records, key=lambda r: r.created, reverse=True)


class LedgerView:
    """One server's part of a loaded registry, as its adapter sees it (``types.LedgerView``)."""

    def __init__(self, state: State, key: str) -> None:
        self._state = state
        self.cache = state.server(key).adapter
        self.records = state.records_for(key)

    def add(self, record: GenerationRecord) -> None:
        self._state.generations[record.id] = record
        self.records.insert(0, record)


class ServerLedger:
    """The registry lent to one server's adapter (``types.Ledger``): its memory, our records."""

    def __init__(self, registry: Registry, key: str) -> None:
        self.registry = registry
        self.key = key

    def read(self) -> LedgerView:
        """A snapshot: changes to it are not kept."""
        return LedgerView(self.registry.read(), self.key)

    @contextlib.contextmanager
    def change(self) -> Iterator[LedgerView]:
        """Under the registry's lock; what the adapter changes is written back."""
        with self.registry.transaction() as state:
            yield LedgerView(state, self.key)
