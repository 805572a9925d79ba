"""SwarmUI over the shared transport: every route is ``POST /API/<name>``, logins are a cookie.

SwarmUI answers a route it does not have with JSON ``bad_route`` and most failures with HTTP
200 and an ``error`` key (swarmui-protocol.md §1.5), which ``client.check_answer`` reads; this
module only shapes the requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from asset_generator import transport as base
from asset_generator.transport import (  # noqa: F401 - the names the SwarmUI code uses
    Client,
    ExchangeLogger,
    WebSocket,
    WebSocketRefused,
    describe_body,
    shown_path,
)


@dataclass(frozen=True)
class Credentials:
    """What identifies us to SwarmUI: the ``swarm_token`` login cookie and, for a server or
    proxy that requires one, a raw ``Authorization`` header. Never printed."""

    api_key: str | None = None
    auth_header: str | None = None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.api_key:
            headers["Cookie"] = f"swarm_token={self.api_key}"
        if self.auth_header:
            headers["Authorization"] = self.auth_header
        return headers

    def refused(self) -> str:
        """What a bare 401 means: SwarmUI's shared-secret gate (protocol §2.3) or a proxy."""
        if self.auth_header:
            return "refused the Authorization header (HTTP 401 Unauthorized); check --auth-header"
        return (
            "requires an Authorization header (HTTP 401 Unauthorized) and none was sent; "
            "pass it with --auth-header or ASSET_GENERATOR_AUTH_HEADER"
        )


class Transport(base.Transport):
    """The shared transport with SwarmUI's route prefix and login cookie."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None = None,
        *,
        timeout: float = 30.0,
        transport: Any = None,
        log: ExchangeLogger | None = None,
        product: str = "SwarmUI",
    ) -> None:
        self.credentials = credentials or Credentials()
        server = base.describe_server(base_url.rstrip("/"))
        access = base.Access(
            self.credentials.headers(), f"{server} {self.credentials.refused()}", product
        )
        super().__init__(base_url, access, timeout=timeout, transport=transport, log=log)

    @contextmanager
    def any_server_type(self) -> Iterator[None]:
        """While the server has not said what it is (``--server-type auto``), ``--api-key`` also
        goes as ComfyUI's ``Authorization: Bearer`` token, beside the cookie: a ComfyUI, or the
        proxy in front of it, then sees it on every request, the question included
        (cli-contract §7). ``--auth-header`` is that header already."""
        key = self.credentials.api_key
        if not key or self.credentials.auth_header:
            yield
            return
        plain = self.access
        self.access = replace(
            plain,
            headers={**plain.headers, "Authorization": f"Bearer {key}"},
            refused=f"{self.server} refused the token (sent as SwarmUI's swarm_token cookie and "
            "as an Authorization: Bearer header, HTTP 401 Unauthorized); check --api-key, or "
            "give the header the server or its proxy wants with --auth-header",
        )
        try:
            yield
        finally:
            self.access = plain

    def post_json(  # type: ignore[override]
        self, route: str, body: dict[str, Any], *, timeout: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST ``body`` to ``/API/<route>``; return the HTTP status and the JSON object."""
        return super().post_json(f"/API/{route}", body, timeout=timeout)

    @contextmanager
    def websocket(self, route: str) -> Iterator[WebSocket]:  # type: ignore[override]
        """Open ``/API/<route>`` as a WebSocket."""
        with super().websocket(f"/API/{route}") as socket:
            yield socket

    @contextmanager
    def stream_get(  # type: ignore[override]
        self, server_path: str, *, quoted_twice: bool = False
    ) -> Iterator[Iterator[bytes]]:
        """GET a server-relative output path (``View/...``), yielding its body in chunks.

        ``quoted_twice``: percent-encode the encoded path again, for a server that decodes
        the path a second time (see SwarmClient.open_image).
        """
        path = "/" + quote(server_path.lstrip("/"), safe="/")
        if quoted_twice:
            path = quote(path, safe="/")
        with super().stream_get(path, shown=server_path) as chunks:
            yield chunks
