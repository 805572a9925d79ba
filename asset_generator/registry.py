"""The session cache and generation registry (cli-contract §4).

SwarmUI cannot cancel one job: ``InterruptAll`` stops a *session*, and closing a connection
stops nothing (swarmui-protocol.md §5). So every ``generate`` runs in a session of its own and
records it here before it sends anything; ``cancel`` and ``status`` find the session again.

The file lives in the user *state* dir (losing it orphans running work), is rewritten
atomically under a file lock, and is mode 0600 because a session id is a bearer credential
(protocol §2.4). A corrupt file is set aside with a warning and rebuilt, never a crash.
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
SCHEMA = 1

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
KEEP_SESSIONS = 16
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


@dataclass
class GenerationRecord:
    """One generation started by this client."""

    id: str
    server: str
    server_key: str
    session_id: str
    pid: int
    host: str
    prompt: str
    created: float
    status: str = QUEUED
    progress: float = 0.0
    images: list[str] = field(default_factory=list)
    error: str | None = None
    finished: float | None = None
    # Which kind of process runs it when not the CLI itself (``"mcp"``); old caches lack it.
    owner: str | None = None
    # The pipe_ record of the pipeline this generation is one asset of.
    pipeline_id: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES

    def process_alive(self) -> bool | None:
        """True/False for a process on this host; None when it ran on another host."""
        return process_alive(self.host, self.pid)

    def finish(self, status: str, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished = time.time()
        if status == SUCCEEDED:
            self.progress = 100.0

    def public(self) -> dict[str, Any]:
        """The record as shown to users and scripts: never the session id."""
        return {
            "id": self.id,
            "server": self.server,
            "prompt": self.prompt,
            "status": self.status,
            "progress": round(self.progress, 1),
            "created": _iso(self.created),
            "finished": _iso(self.finished) if self.finished else None,
            "pid": self.pid,
            "images": list(self.images),
            "error": self.error,
            "pipeline_id": self.pipeline_id,
            **({"owner": self.owner} if self.owner else {}),
        }

    @classmethod
    def from_dict(cls, data: Any) -> GenerationRecord:
        """A record as stored in the cache; ValueError/TypeError when it has the wrong shape."""
        record = _known_fields(cls, data, "a generation record")
        _check_job(record, "generation", ("session_id", "prompt"))
        _expect(
            _is_number(record.progress) and 0 <= record.progress <= 100,
            "a generation's progress is not a percentage",
        )
        _expect(
            isinstance(record.images, list) and all(isinstance(i, str) for i in record.images),
            "a generation's images are not a list of paths",
        )
        _expect(record.error is None or isinstance(record.error, str), "an error is not text")
        _expect(record.owner is None or isinstance(record.owner, str), "an owner is not text")
        _expect(
            record.pipeline_id is None or isinstance(record.pipeline_id, str),
            "a generation's pipeline id is not text",
        )
        return record


PIPELINE_COUNTS = ("succeeded", "skipped", "failed", "cancelled")


@dataclass
class PipelineRecord:
    """One ``pipeline`` run: its spec, where it writes, and how far it got."""

    id: str
    server: str
    server_key: str
    pid: int
    host: str
    spec: str
    output_dir: str
    base_seed: int
    total: int
    created: float
    status: str = RUNNING
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    finished: float | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def done(self) -> int:
        return sum(self.counts.get(name, 0) for name in PIPELINE_COUNTS)

    def process_alive(self) -> bool | None:
        """As GenerationRecord.process_alive: None when it ran on another host."""
        return process_alive(self.host, self.pid)

    def finish(self, status: str, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished = time.time()

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "server": self.server,
            "spec": self.spec,
            "output_dir": self.output_dir,
            "base_seed": self.base_seed,
            "status": self.status,
            "total": self.total,
            "done": self.done,
            "counts": {name: self.counts.get(name, 0) for name in PIPELINE_COUNTS},
            "created": _iso(self.created),
            "finished": _iso(self.finished) if self.finished else None,
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
        _expect(record.error is None or isinstance(record.error, str), "an error is not text")
        return record


def _known_fields(cls: type[T], data: Any, what: str) -> T:
    """``cls`` built from the keys of ``data`` it knows (newer caches may hold more)."""
    _expect(isinstance(data, dict), f"{what} is not an object")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _check_job(record: GenerationRecord | PipelineRecord, kind: str, text: tuple[str, ...]) -> None:
    """What both record kinds must hold: text ids, a known status, a real pid, sane times."""
    for name in ("id", "server", "server_key", "host", *text):
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
class CachedSession:
    """A server session we created and may reuse."""

    id: str
    user_id: str | None = None
    version: str | None = None
    server_id: str | None = None
    created: float = field(default_factory=time.time)

    @classmethod
    def from_info(cls, info: Any) -> CachedSession:
        """From what GetNewSession answered (a swarm.client.SessionInfo)."""
        return cls(info.session_id, info.user_id, info.version, info.server_id)

    @classmethod
    def from_dict(cls, data: Any) -> CachedSession:
        """A cached session as stored; ValueError/TypeError when it has the wrong shape."""
        _expect(isinstance(data, dict), "a cached session is not an object")
        names = {f.name for f in fields(cls)}
        session = cls(**{k: v for k, v in data.items() if k in names})
        _expect(isinstance(session.id, str) and bool(session.id), "a cached session has no id")
        for name in ("user_id", "version", "server_id"):
            value = getattr(session, name)
            _expect(value is None or isinstance(value, str), f"a session's {name} is not text")
        _expect(_is_time(session.created), "a cached session has an impossible creation time")
        return session


@dataclass
class ServerState:
    """What we remember about one server + credential."""

    sessions: list[CachedSession] = field(default_factory=list)
    # None: not probed yet; False: answered bad_route (real SwarmUI has no such route).
    interrupt_generation: bool | None = None
    models: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class State:
    """The whole registry file, loaded."""

    generations: dict[str, GenerationRecord] = field(default_factory=dict)
    servers: dict[str, ServerState] = field(default_factory=dict)
    # Absent from files written before pipelines existed; they load with none.
    pipelines: dict[str, PipelineRecord] = field(default_factory=dict)

    def server(self, key: str) -> ServerState:
        return self.servers.setdefault(key, ServerState())

    def records_for(self, key: str) -> list[GenerationRecord]:
        """This server's records, newest first."""
        records = [r for r in self.generations.values() if r.server_key == key]
        return sorted(records, key=lambda r: r.created, reverse=True)

    def holders(self, session_id: str) -> list[GenerationRecord]:
        return [
            r for r in self.generations.values() if r.session_id == session_id and not r.is_final
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "generations": {k: asdict(v) for k, v in self.generations.items()},
            "servers": {k: asdict(v) for k, v in self.servers.items()},
            "pipelines": {k: asdict(v) for k, v in self.pipelines.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> State:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError("not a registry document of this version")
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
            sessions = value.get("sessions", [])
            _expect(isinstance(sessions, list), "a server's sessions are not a list")
            interrupt = value.get("interrupt_generation")
            _expect(interrupt is None or isinstance(interrupt, bool), "a route flag is not a bool")
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
                sessions=[CachedSession.from_dict(s) for s in sessions],
                interrupt_generation=interrupt,
                models={k: list(v) for k, v in models.items()},
            )
        stored_pipelines = data.get("pipelines", {})
        _expect(isinstance(stored_pipelines, dict), "pipelines is not an object")
        pipelines = {}
        for key, value in stored_pipelines.items():
            pipeline = PipelineRecord.from_dict(value)
            _expect(key == pipeline.id, "a pipeline is filed under another id")
            pipelines[key] = pipeline
        return cls(generations, servers, pipelines)

    def prune(self, now: float | None = None) -> None:
        """Drop old finished records and surplus cached sessions."""
        now = time.time() if now is None else now
        finished = sorted(
            (r for r in self.generations.values() if r.is_final),
            key=lambda r: r.finished or r.created,
            reverse=True,
        )
        for index, record in enumerate(finished):
            age = now - (record.finished or record.created)
            if index >= KEEP_FINISHED_COUNT or age > KEEP_FINISHED_SECONDS:
                del self.generations[record.id]
        ended = sorted(
            (p for p in self.pipelines.values() if p.is_final),
            key=lambda p: p.finished or p.created,
            reverse=True,
        )
        for index, pipeline in enumerate(ended):
            age = now - (pipeline.finished or pipeline.created)
            if index >= KEEP_FINISHED_COUNT or age > KEEP_FINISHED_SECONDS:
                del self.pipelines[pipeline.id]
        for server in self.servers.values():
            held = {r.session_id for r in self.generations.values() if not r.is_final}
            if len(server.sessions) > KEEP_SESSIONS:
                keep = [s for s in server.sessions if s.id in held]
                keep += [s for s in reversed(server.sessions) if s.id not in held]
                server.sessions = keep[: max(KEEP_SESSIONS, len(held))]


def cached_model_names(state: State, key: str, subtype: str = "Stable-Diffusion") -> list[str]:
    """Model names ``models list`` last saw on this server, for completion (no network).

    ``key`` is the server key (``App.server_key``); ``subtype`` as in ListModels (``LoRA``...).
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

    def read(self) -> State:
        """A consistent snapshot; the file is only ever replaced whole, so no lock is needed."""
        return self._load(set_aside=False)

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
                self._warn(f"warning: cannot read the session cache {self.path}: {exc.strerror}")
                return State()
            raise RegistryError(
                f"cannot read the session cache {self.path}: {exc.strerror}"
            ) from None
        try:
            return State.from_json(json.loads(raw))
        # RecursionError: json.loads of a deeply nested document (e.g. "[[[[...").
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            if not set_aside:
                self._warn(
                    f"warning: the session cache {self.path} is corrupt ({reason}); ignoring it"
                )
                return State()
            aside = self.path.with_name(f"{FILE_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            self._warn(
                f"warning: the session cache {self.path} was corrupt ({reason}); "
                f"moved it to {aside.name} and started a new one"
            )
            return State()

    def _write(self, state: State) -> None:
        payload = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        write_atomic(self.path, payload, what="the session cache")


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
