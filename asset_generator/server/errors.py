"""Failures talking to a server: lower layers raise these; the CLI edge maps them to exits.

``code`` is the stable machine-readable code of cli-contract §3 and ``phrase`` the words a
message starts with (``request failed``; SwarmUI's session errors say ``failed to get
session``). Each adapter subclasses them for its own protocol's cases.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base of every failure talking to an image server."""

    code = "server_error"
    phrase = "request failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reachable(self) -> bool:
        """The server answered (it refused us, or said something odd); exit 1 all the same."""
        return True


class ConnectionFailed(ServerError):
    """The server could not be reached (refused, DNS, reset before an answer)."""

    code = "connection_failed"

    @property
    def reachable(self) -> bool:
        return False


class RequestTimeout(ServerError):
    """The server did not answer within the configured timeout."""

    code = "timeout"

    @property
    def reachable(self) -> bool:
        return False


class BadResponse(ServerError):
    """The server answered with something that is not its protocol (HTML, garbage, huge)."""

    code = "bad_response"


class NotFound(BadResponse):
    """HTTP 404 (or 405): an output not on the server, or a route it does not have."""


class WrongServer(BadResponse):
    """The answer shows that another kind of server listens at the address."""


class AuthFailed(ServerError):
    """The server (or a proxy in front of it) refused our credentials."""

    code = "auth_failed"


class APIError(ServerError):
    """The server's own error answer; ``text`` is its words, for users who match on them."""

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
        self.text = text if text is not None else message


class RequestError(Exception):
    """A request this server cannot take as given (an option with no place): exit 2, nothing sent.

    ``option`` names the offending option (``--cfg-scale``), for the usage message.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.option = option
