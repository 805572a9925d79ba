"""Workflow files and ``--set`` values as the user gives them, before any server sees them.

Reading is the same for `generate --workflow`, a pipeline spec's ``workflow:`` and the MCP
tool: a JSON file, read whole and hashed (the manifest notices an edited workflow). What the
graph means is the ComfyUI adapter's business.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from asset_generator.server.types import SetInput, Workflow, typed_value

# A workflow file is a few KiB to a few MiB; a larger "workflow" is a mistake (an image?).
MAX_WORKFLOW_BYTES = 64 * 1024 * 1024


class WorkflowFileError(Exception):
    """A workflow file that cannot be read or is not JSON (exit 1, ``file_error``)."""


def read_workflow(path: Path) -> Workflow:
    """The file at ``path`` as a Workflow; WorkflowFileError naming the file otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_WORKFLOW_BYTES:
            raise WorkflowFileError(
                f"cannot use {path} as a workflow: it is {size} bytes, far more than a "
                "workflow file holds"
            )
        raw = path.read_bytes()
    except IsADirectoryError:
        raise WorkflowFileError(f"cannot read the workflow {path}: it is a directory") from None
    except OSError as exc:
        raise WorkflowFileError(f"cannot read the workflow {path}: {exc.strerror}") from None
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise WorkflowFileError(f"the workflow {path} is not text (UTF-8 JSON)") from None
    except (ValueError, RecursionError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise WorkflowFileError(f"the workflow {path} is not valid JSON{where}") from None
    if not isinstance(document, dict):
        raise WorkflowFileError(f"the workflow {path} is not a JSON object of nodes")
    return Workflow(path, document, hashlib.sha256(raw).hexdigest())


def parse_set(item: str, *, typed: Any = None) -> SetInput:
    """``NODE.INPUT=VALUE`` (NODE may itself hold dots: the last dot splits).

    ``typed``: the value already typed (a YAML spec's); else VALUE is typed like ``--param``.
    Raises ValueError naming what is wrong.
    """
    target, sep, value = item.partition("=")
    node, dot, name = target.strip().rpartition(".")
    if not sep or not dot or not node.strip() or not name.strip():
        raise ValueError(f"{item!r} is not NODE.INPUT=VALUE")
    return SetInput(
        node=node.strip(),
        input=name.strip(),
        value=typed if typed is not None else typed_value(value),
        text=item,
    )
