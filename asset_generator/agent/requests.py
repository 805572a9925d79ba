"""Tool arguments as the CLI's own requests: a ``Request`` for generate_image, a pipeline's
run parameters for run_pipeline. The server's adapter translates them (``prepare``) exactly as
it does the command line's, so an option the server has no use for is refused the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asset_generator.agent.failures import ToolFailure
from asset_generator.server.types import OPTIONS

if TYPE_CHECKING:
    from asset_generator.cli.app import App
    from asset_generator.server.types import Request, SetInput, Workflow

# How an inline workflow is named in messages, records and manifests.
INLINE_WORKFLOW = "(inline workflow)"


def generation_request(app: App, arguments: dict[str, Any]) -> Request:
    """generate_image's arguments as a Request, the config's [generate] values under them."""
    from asset_generator.generate_settings import config_defaults
    from asset_generator.server.types import Lora, Request

    workflow = workflow_of(arguments.get("workflow"))
    prompt = arguments.get("prompt")
    if not prompt and workflow is None:
        raise ToolFailure(
            "usage_error", "prompt: required (only a ComfyUI workflow can do without one)"
        )
    return Request(
        prompt=prompt,
        **{name: arguments.get(name) for name in OPTIONS},
        loras=tuple(Lora.parse(item) for item in arguments.get("loras") or ()),
        params=tuple((arguments.get("params") or {}).items()),
        workflow=workflow,
        sets=sets_of(arguments.get("set")),
        defaults=config_defaults(app.settings, OPTIONS),
    )


def pipeline_params(
    app: App, arguments: dict[str, Any]
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """run_pipeline's generation arguments as `pipeline`'s (``launch.run_params``): the
    config's [generate] values below the spec's ``params:``, the call's own above them."""
    from asset_generator.pipeline.launch import run_params

    return run_params(
        app.settings,
        (arguments.get("params") or {}).items(),
        arguments,
        loras=arguments.get("loras") or (),
        workflow=workflow_of(arguments.get("workflow")),
        sets=sets_of(arguments.get("set")),
    )


def workflow_of(value: str | dict[str, Any] | None) -> Workflow | None:
    """A workflow file's path, or the workflow itself (an object, or its JSON text)."""
    if value is None:
        return None
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        from asset_generator.workflows import WorkflowFileError, read_workflow

        try:
            return read_workflow(Path(value).expanduser())
        except WorkflowFileError as exc:
            raise ToolFailure("file_error", str(exc)) from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise ToolFailure(
                "usage_error", "workflow: the text is not valid JSON (give a path or an object)"
            ) from None
        if not isinstance(value, dict):
            raise ToolFailure("usage_error", "workflow: expected an object of nodes")
    return inline_workflow(value)


def inline_workflow(document: dict[str, Any]) -> Workflow:
    """A workflow given in the call itself; hashed like a file, so a manifest notices a change."""
    from asset_generator.server.types import Workflow

    text = json.dumps(document, sort_keys=True, ensure_ascii=False).encode()
    return Workflow(Path(INLINE_WORKFLOW), document, hashlib.sha256(text).hexdigest())


def sets_of(value: dict[str, Any] | None) -> tuple[SetInput, ...]:
    """``set``: ``{"NODE.INPUT": value}`` as `--set NODE.INPUT=VALUE` items, values as given."""
    from asset_generator.workflows import parse_set

    items = []
    for target, item in (value or {}).items():
        try:
            shown = item if isinstance(item, str) else json.dumps(item)
            items.append(parse_set(f"{target}={shown}", typed=item))
        except ValueError as exc:
            raise ToolFailure("usage_error", f"set: {exc}") from None
    return tuple(items)
