"""Protocol errors: lower layers raise these; the CLI edge maps them to messages and exits."""

from __future__ import annotations


class SwarmError(Exception):
    """Base of every failure talking to a SwarmUI server.

    ``code`` is the stable machine-readable code of cli-contract §3.
    """

    code = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectionFailed(SwarmError):
    """The server could not be reached (refused, DNS, reset before an answer)."""

    code = "connection_failed"


class RequestTimeout(SwarmError):
    """The server did not answer within the configured timeout."""

    code = "timeout"


class BadResponse(SwarmError):
    """The server answered with something that is not the protocol (HTML, garbage, huge)."""

    code = "bad_response"


class NotFound(BadResponse):
    """HTTP 404: an output not on the server (GET), or a route it does not have (POST)."""


class AuthFailed(SwarmError):
    """The server refused our credentials (shared-secret gate or swarm_token)."""

    code = "auth_failed"


class APIError(SwarmError):
    """A JSON ``error`` answer; most arrive with HTTP 200 (swarmui-protocol.md §1.5)."""

    def __init__(
        self,
        message: str,
        error_id: str | None = None,
        status: int = 200,
        text: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_id = error_id
        self.status = status
        # The server's own words, for users who match on them.
        self.text = text if text is not None else message


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


class SessionFailed(SwarmError):
    """``GetNewSession`` failed; wraps the cause so the message reads 'failed to get session'."""

    def __init__(self, cause: SwarmError) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.code = cause.code if not isinstance(cause, APIError) else "session_failed"
