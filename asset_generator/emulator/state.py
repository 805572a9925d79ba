"""Users, permissions, sessions, generation claims and interrupt tokens.

Mirrors ``src/Accounts/{User,Session,SessionHandler,Permissions}.cs``. Mutations happen on the
emulator's event loop; the test thread reads through the same ``threading.RLock``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Permission ids and their default level (src/Accounts/Permissions.cs).
PERMISSION_LEVELS: dict[str, str] = {
    "fundamental": "GUEST",
    "fundamental_generate_tab_access": "GUEST",
    "fundamental_model_access": "GUEST",
    "read_user_settings": "GUEST",
    "use_tokenizer": "GUEST",
    "basic_image_generation": "USER",
    "basic_text_generation": "USER",
    "model_params": "USER",
    "param_video": "USER",
    "param_controlnet": "USER",
    "view_image_history": "USER",
    "user_delete_image": "USER",
    "user_star_images": "USER",
    "edit_user_settings": "USER",
    "edit_params": "USER",
    "manage_presets": "USER",
    "utilities_tab": "USER",
    "simple_tab": "USER",
    "user_tab": "USER",
    "view_server_tab": "POWERUSERS",
    "view_backends_list": "POWERUSERS",
    "restart_backends": "POWERUSERS",
    "control_model_refresh": "POWERUSERS",
    "install_features": "POWERUSERS",
    "create_tensorrt": "POWERUSERS",
    "extra_loras": "POWERUSERS",
    "control_mem_clean": "POWERUSERS",
    "load_models_now": "POWERUSERS",
    "edit_wildcards": "POWERUSERS",
    "edit_model_metadata": "POWERUSERS",
    "download_models": "POWERUSERS",
    "reset_metadata": "POWERUSERS",
    "pickle2safetensors": "POWERUSERS",
    "delete_models": "POWERUSERS",
    "param_backend_type": "POWERUSERS",
    "param_backend_id": "POWERUSERS",
    "interrupt_others": "ADMINS",
    "restart": "ADMINS",
    "read_server_settings": "ADMINS",
    "edit_server_settings": "ADMINS",
    "view_logs": "ADMINS",
    "read_server_info_panels": "ADMINS",
    "admin_debug": "ADMINS",
    "manage_extensions": "ADMINS",
    "view_others_outputs": "ADMINS",
    "add_remove_backends": "ADMINS",
    "edit_backends": "ADMINS",
    "toggle_backends": "ADMINS",
    "local_image_folder": "NOBODY",
    "install": "NOBODY",
    "server_debug_message": "NOBODY",
    "automated_control": "NOBODY",
    "configure_roles": "NOBODY",
    "manage_users": "NOBODY",
    "shutdown": "NOBODY",
}
USER_ROLE_PERMISSIONS = frozenset(
    perm for perm, level in PERMISSION_LEVELS.items() if level in ("GUEST", "USER")
)
LOCAL_USER_ID = "local"
OWNER = "*"
SESSION_ID_BYTES = 20  # SessionHandler.SessionIDLength = 40 hex chars


class InterruptToken:
    """One generation of a session's interrupt token (``Session.SessInterrupt``)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until cancelled (True) or ``timeout`` seconds pass (False)."""
        if self._event.is_set():
            return True
        try:
            # Not wait_for, which on 3.11 can swallow a cancel (see websocket.receive).
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


@dataclass
class User:
    """A server user: permission flags, auth tokens, in-memory sessions, request counter."""

    user_id: str
    permissions: set[str]
    tokens: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    # User.RequestIdCounter starts at 1000 and is pre-incremented (src/Accounts/User.cs).
    request_id_counter: int = 1000

    def has_permission(self, perm: str, denied: set[str]) -> bool:
        if perm in denied:
            return False
        return OWNER in self.permissions or perm in self.permissions

    def permission_list(self, denied: set[str]) -> list[str]:
        """What ``GetNewSession.permissions`` lists: owner gets ``*`` plus every known id."""
        if OWNER in self.permissions:
            listed = [OWNER, *PERMISSION_LEVELS]
        else:
            listed = sorted(self.permissions)
        return [perm for perm in listed if perm not in denied]

    def next_request_id(self) -> int:
        self.request_id_counter += 1
        return self.request_id_counter


@dataclass
class Session:
    """A SwarmUI session: owner, four status counters, and a replaceable interrupt token."""

    session_id: str
    user: User
    origin: str
    token: InterruptToken = field(default_factory=InterruptToken)
    waiting_gens: int = 0
    loading_models: int = 0
    waiting_backends: int = 0
    live_gens: int = 0

    def counters(self) -> dict[str, int]:
        return {
            "waiting_gens": self.waiting_gens,
            "loading_models": self.loading_models,
            "waiting_backends": self.waiting_backends,
            "live_gens": self.live_gens,
        }


class Claim:
    """``Session.GenClaim``: counters held by one request, released together at the end.

    ``token`` is the session's interrupt token as it was when the request began, so an
    ``InterruptAll`` that lands later never touches requests submitted after it.
    """

    def __init__(self, registry: Registry, session: Session, gens: int) -> None:
        self._registry = registry
        self.session = session
        self.token = session.token
        self.local_cancelled = False
        self.held = {"waiting_gens": 0, "loading_models": 0, "waiting_backends": 0, "live_gens": 0}
        self.extend(waiting_gens=gens)

    @property
    def should_cancel(self) -> bool:
        return self.token.cancelled or self.local_cancelled

    def extend(self, **counts: int) -> None:
        with self._registry.lock:
            for name, amount in counts.items():
                self.held[name] += amount
                setattr(self.session, name, getattr(self.session, name) + amount)

    def complete(self, **counts: int) -> None:
        self.extend(**{name: -amount for name, amount in counts.items()})

    def release(self) -> None:
        """Give back whatever is still held (the ``using`` dispose at the end of a request)."""
        self.complete(**dict(self.held))


class Registry:
    """Every user and session of the emulator, plus the interrupt log the tests read."""

    def __init__(self, accounts: bool, sessions_file: Path | None = None) -> None:
        self.lock = threading.RLock()
        self.accounts = accounts
        # Like SwarmUI's LiteDB session table: ids survive a restart and are restored lazily.
        self._sessions_file = sessions_file
        self._persisted: dict[str, dict[str, Any]] = self._load_persisted()
        self.users: dict[str, User] = {}
        self.sessions: dict[str, Session] = {}
        # Every session ever created, even forgotten ones, for the test-side introspection.
        self.known: dict[str, Session] = {}
        self.sessions_created = 0
        self.interrupted: list[str] = []
        self.get_user(LOCAL_USER_ID)

    def get_user(self, user_id: str) -> User:
        """The user of that id, created as an owner if missing (``SessionHandler.GetUser``)."""
        with self.lock:
            user = self.users.get(user_id)
            if user is None:
                user = User(user_id, {OWNER})
                self.users[user_id] = user
            return user

    def add_user(self, name: str, permissions: set[str] | None = None) -> str:
        """Create (or reuse) an accounts-mode user with USER-role permissions; return a token."""
        with self.lock:
            user = self.users.get(name)
            if user is None:
                user = User(name, set(USER_ROLE_PERMISSIONS) | set(permissions or ()))
                self.users[name] = user
            elif permissions:
                user.permissions |= set(permissions)
            token_id = secrets.token_hex(8)
            secret = secrets.token_hex(16)
            user.tokens[token_id] = secret
            return f"{name.encode().hex()}.{token_id}.{secret}"

    def user_for_token(self, token: str | None) -> User | None:
        """``WebUtil.GetValidLogin`` for a ``swarm_token`` cookie value."""
        if token is None or not 10 <= len(token) <= 1000:
            return None
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            user_id = bytes.fromhex(parts[0]).decode()
        except ValueError:
            return None
        with self.lock:
            user = self.users.get(user_id)
            if user is None or user.tokens.get(parts[1]) != parts[2]:
                return None
            return user

    def create_session(self, user: User, origin: str) -> Session:
        with self.lock:
            session = self._remember(Session(secrets.token_hex(SESSION_ID_BYTES), user, origin))
            self.sessions_created += 1
            if self._sessions_file is not None:
                self._persisted[session.session_id] = {
                    "user_id": user.user_id,
                    "permissions": sorted(user.permissions),
                    "origin": origin,
                }
                self._save_persisted()
            return session

    def _remember(self, session: Session) -> Session:
        self.sessions[session.session_id] = session
        self.known[session.session_id] = session
        session.user.sessions[session.session_id] = session
        return session

    def find_session(self, session_id: str) -> Session | None:
        """The live session, or one restored from ``sessions_file`` with zeroed counters."""
        with self.lock:
            session = self.sessions.get(session_id)
            saved = self._persisted.get(session_id)
            if session is None and saved is not None:
                user = self.users.get(saved["user_id"])
                if user is None:
                    user = User(saved["user_id"], set(saved["permissions"]))
                    self.users[user.user_id] = user
                session = self._remember(Session(session_id, user, saved.get("origin", "")))
            return session

    def _load_persisted(self) -> dict[str, dict[str, Any]]:
        if self._sessions_file is None or not self._sessions_file.exists():
            return {}
        try:
            document = json.loads(self._sessions_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        sessions = document.get("sessions") if isinstance(document, dict) else None
        return sessions if isinstance(sessions, dict) else {}

    def _save_persisted(self) -> None:
        assert self._sessions_file is not None
        temporary = self._sessions_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"sessions": self._persisted}), encoding="utf-8")
        os.replace(temporary, self._sessions_file)

    def interrupt(self, session: Session) -> None:
        """``Session.Interrupt``: cancel the current token and install a fresh one."""
        with self.lock:
            old = session.token
            session.token = InterruptToken()
            if session.session_id not in self.interrupted:
                self.interrupted.append(session.session_id)
        old.cancel()

    def forget_sessions(self) -> None:
        """Drop every session id, as a restart with ``--no_persist`` does."""
        with self.lock:
            self.sessions.clear()
            for user in self.users.values():
                user.sessions.clear()
            if self._persisted:
                self._persisted.clear()
                self._save_persisted()
