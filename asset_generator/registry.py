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
import hashlib
import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

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
PROMPT_CHARS = 80
KEEP_FINISHED_SECONDS = 7 * 24 * 3600
KEEP_FINISHED_COUNT = 200
KEEP_SESSIONS = 16


class RegistryError(Exception):
    """The state directory or file cannot be written."""


def server_key(api_url: str, credential: str | None) -> str:
    """Key records by server and credential without storing the credential itself."""
    digest = hashlib.sha256(f"{api_url}\0{credential or ''}".encode())
    return digest.hexdigest()[:16]


def new_generation_id() -> str:
    return "gen_" + secrets.token_hex(4)


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

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES

    def process_alive(self) -> bool | None:
        """True/False for a process on this host; None when it ran on another host."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


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
        }

    @classmethod
    def from_json(cls, data: Any) -> State:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError("not a registry document of this version")
        generations = {
            key: GenerationRecord.from_dict(value)
            for key, value in data.get("generations", {}).items()
        }
        servers = {}
        for key, value in data.get("servers", {}).items():
            sessions = [CachedSession(**s) for s in value.get("sessions", [])]
            servers[key] = ServerState(
                sessions=sessions,
                interrupt_generation=value.get("interrupt_generation"),
                models={k: list(v) for k, v in value.get("models", {}).items()},
            )
        return cls(generations, servers)

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
        for server in self.servers.values():
            held = {r.session_id for r in self.generations.values() if not r.is_final}
            if len(server.sessions) > KEEP_SESSIONS:
                keep = [s for s in server.sessions if s.id in held]
                keep += [s for s in reversed(server.sessions) if s.id not in held]
                server.sessions = keep[: max(KEEP_SESSIONS, len(held))]


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
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._load(set_aside=True)
            yield state
            state.prune()
            self._write(state)
        finally:
            os.close(lock)

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
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
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
    except OSError as exc:
        if temp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
        raise RegistryError(f"cannot write {what} {path}: {reason}") from None
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
