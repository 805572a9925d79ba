"""Failures as an agent reads them: a code of cli-contract §3 and the CLI's own phrases.

The lower layers raise typed errors worded for the command line (``--param is a SwarmUI
option``); an agent calls tools, so those words name the tool's arguments instead
(``params is a SwarmUI option``).
"""

from __future__ import annotations

import re
import sys
import traceback
from typing import Any

# A command-line option as the tool argument that carries it.
ARGUMENT_OF_OPTION = {
    "--param": "params",
    "--set": "set",
    "--workflow": "workflow",
    "--lora": "loras",
    "--model": "model",
    "--seed": "seed",
    "--images": "images",
    "--subtype": "subtype",
    "--negative-prompt": "negative_prompt",
    "--width": "width",
    "--height": "height",
    "--steps": "steps",
    "--cfg-scale": "cfg_scale",
    "--sampler": "sampler",
    "--scheduler": "scheduler",
    "--prompt": "prompt",
    "--output-dir": "output_dir",
    "--base-seed": "base_seed",
    "--style-prefix": "style_prefix",
    "--style-suffix": "style_suffix",
    "--parallel": "parallel",
    "--force": "force",
    "--overwrite": "overwrite",
    "--continue-on-error": "continue_on_error",
    "--all": "all",
}
_PHRASES = (
    (re.compile(r"--set NODE\.INPUT=VALUE"), 'set {"NODE.INPUT": value}'),
    (re.compile(r"--param KEY=VALUE"), 'params {"KEY": value}'),
    (re.compile(r"pass --model NAME"), "pass model"),
    (re.compile(r"`asset-generator models list`"), "list_models"),
    (re.compile(r"`asset-generator cancel --all`"), "cancel_generation with all: true"),
)
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


class ToolFailure(Exception):
    """A tool call that cannot be done; ``code`` is a JSON code of cli-contract §3.

    ``details``: keys the error document carries next to ``error`` (what a generation did
    before it failed, the server and whether it answered).
    """

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def in_tool_words(message: str) -> str:
    """A message written for the command line, with options named as the tool's arguments."""
    for pattern, words in _PHRASES:
        message = pattern.sub(words, message)
    return _OPTION.sub(lambda m: ARGUMENT_OF_OPTION.get(m.group(0), m.group(0)), message)


def failure_of(exc: BaseException, server: str | None = None) -> ToolFailure:
    """Map what the lower layers raise to a §3 code and the CLI's own phrases.

    ``server``: named, with whether it answered, next to a protocol error (as the CLI does).
    A bug keeps its traceback, on stderr (never stdout: the protocol's).
    """
    from asset_generator.downloads import DownloadError
    from asset_generator.jobs import CancelError
    from asset_generator.registry import RegistryError
    from asset_generator.settings import SettingsError

    if isinstance(exc, ToolFailure):
        return exc
    if isinstance(exc, CancelError):
        return ToolFailure(exc.code, exc.message)
    if isinstance(exc, RegistryError | DownloadError):
        return ToolFailure("file_error", str(exc))
    if isinstance(exc, SettingsError):
        return ToolFailure("usage_error", str(exc))
    if "asset_generator.server.errors" in sys.modules:
        from asset_generator.server.errors import RequestError, ServerError

        if isinstance(exc, RequestError):
            return ToolFailure("usage_error", in_tool_words(exc.message))
        if isinstance(exc, ServerError):
            details = server_details(exc, server) if server else None
            return ToolFailure(exc.code, f"{exc.phrase}: {exc.message}", details)
    traceback.print_exception(exc, file=sys.stderr)
    return ToolFailure("server_error", f"asset-generator failed: {type(exc).__name__}")


def server_details(exc: Exception, server: str) -> dict[str, Any]:
    """``server`` and ``reachable``, the keys ``--format json`` puts next to a protocol error."""
    # A server that answered but refused us or said something odd is reachable.
    return {"server": server, "reachable": getattr(exc, "reachable", True)}
