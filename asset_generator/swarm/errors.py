"""SwarmUI's own failures, on top of the shared ones (``server.errors``)."""

from __future__ import annotations

from asset_generator.server.errors import (  # noqa: F401 - SwarmUI code imports them from here
    APIError,
    AuthFailed,
    BadResponse,
    ConnectionFailed,
    NotFound,
    RequestTimeout,
    ServerError,
    WrongServer,
)

# The name the SwarmUI code has always used for the base.
SwarmError = ServerError


class InvalidSession(APIError):
    """401 ``invalid_session_id``: the server no longer knows the session (§3.3)."""

    code = "session_failed"


class UnknownRoute(APIError):
    """400 ``bad_route``: the server has no such route (e.g. ``InterruptGeneration``)."""


class UnrecognisedRoute(UnknownRoute):
    """A route of a name we know answered in a shape we do not: treated as absent.

    A fork or a later SwarmUI can add a route named like ours with other semantics; only an
    answer we recognise is believed (an ``InterruptGeneration`` that says ``success``).
    """


class PermissionDenied(APIError):
    """400 ``bad_permissions``: the user's role lacks the route's permission."""

    code = "auth_failed"


class SessionFailed(ServerError):
    """``GetNewSession`` failed; wraps the cause so the message reads 'failed to get session'."""

    phrase = "failed to get session"

    def __init__(self, cause: ServerError) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.code = cause.code if not isinstance(cause, APIError) else "session_failed"

    @property
    def reachable(self) -> bool:
        return self.cause.reachable
