"""ComfyUI behind the seam: identified, not yet driven (the adapter is the next step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asset_generator import transport as base
from asset_generator.server.errors import NotFound, ServerError
from asset_generator.server.types import Ledger


class ComfyServer:
    """A ComfyUI server: this version can tell it is one, and says it cannot drive it."""

    type = "comfyui"
    label = "ComfyUI"

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
    ) -> None:
        headers = {}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if auth_header:
            headers["Authorization"] = auth_header
        access = base.Access(headers, "refused our credentials (HTTP 401)", "ComfyUI")
        self.transport = base.Transport(api_url, access, timeout=timeout, log=log)
        self.name = self.transport.server

    def probe(self) -> bool:
        """``GET /system_stats`` names ComfyUI's version (protocol §2)."""
        try:
            document = self.transport.json_value(self.transport.request("GET", "/system_stats"))
        except NotFound:
            return False
        system = document.get("system") if isinstance(document, dict) else None
        return isinstance(system, dict) and "comfyui_version" in system

    def close(self) -> None:
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        raise ServerError(f"{self.name} is ComfyUI; this version supports SwarmUI")
