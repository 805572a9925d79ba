"""Tool arguments held to the schema each tool publishes: no coercion, no unknown names.

The SDK validates arguments with pydantic's lax mode, where ``"yes"`` is true, ``"no"`` is
false and ``"5"`` is 5, and it drops names it does not know. An agent that sends
``"all": "yes"`` must not interrupt every session of the server user, and a misspelt
``sampler`` must not be dropped in silence; so every call is checked here, against the very
schema ``tools/list`` published, before the SDK sees it. A failure is the caller's mistake
(``usage_error``) and nothing reaches the server.
"""

from __future__ import annotations

import copy
import json
from typing import Any

# Names of JSON types as a message says them.
_TYPE_WORDS = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "an object",
}


class ArgumentError(Exception):
    """Arguments that do not fit the tool's schema; the message names each problem."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def published(schema: dict[str, Any]) -> dict[str, Any]:
    """The input schema to publish: plain types for optional arguments, no unknown names.

    pydantic writes an optional argument as ``anyOf: [{type: T}, {type: null}]``; clients
    that build arguments from the schema (the MCP Inspector turns ``steps=4`` into a number
    only where the property says ``type: integer``) need the plain ``type``. A null is still
    taken as "not given" (``check``).
    """
    schema = copy.deepcopy(schema)
    for name, prop in schema.get("properties", {}).items():
        schema["properties"][name] = _without_null(prop)
    schema["additionalProperties"] = False
    schema.pop("title", None)
    return schema


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    arms = prop.get("anyOf")
    if isinstance(arms, list):
        kept = [arm for arm in arms if arm != {"type": "null"}]
        rest = {k: v for k, v in prop.items() if k != "anyOf"}
        prop = {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}
    if prop.get("default", 0) is None:
        del prop["default"]
    prop.pop("title", None)
    return prop


def check(tool: str, schema: dict[str, Any], arguments: Any) -> dict[str, Any]:
    """``arguments`` as the tool takes them; ArgumentError naming every problem.

    A null for an argument that is not required is the same as leaving it out. Where the
    schema wants a list or an object, its JSON text is taken too: some clients (Claude
    Desktop) send nested values that way.
    """
    from jsonschema import Draft202012Validator

    if not isinstance(arguments, dict):
        raise ArgumentError(f"{tool} takes an object of named arguments")
    properties = schema.get("properties", {})
    required = set(schema.get("required", ()))
    given: dict[str, Any] = {}
    for name, value in arguments.items():
        if value is None and name in properties and name not in required:
            continue
        given[name] = _parsed_json(value, properties.get(name))
    problems = sorted(
        Draft202012Validator(schema).iter_errors(given),
        key=lambda e: (list(e.absolute_path), e.validator != "additionalProperties"),
    )
    if problems:
        words = [_describe(tool, properties, error) for error in problems]
        raise ArgumentError("; ".join(dict.fromkeys(words)))
    return given


def _parsed_json(value: Any, prop: dict[str, Any] | None) -> Any:
    if not isinstance(value, str) or prop is None:
        return value
    wanted = {arm.get("type") for arm in prop.get("anyOf", [prop])}
    if "string" in wanted or not wanted & {"array", "object"}:
        return value
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return value
    return parsed if isinstance(parsed, list | dict) else value


def _describe(tool: str, properties: dict[str, Any], error: Any) -> str:
    """One problem in the caller's words: which argument, what it must be, what it was."""
    path = list(error.absolute_path)
    where = ".".join(str(part) for part in path)
    if error.validator == "additionalProperties" and not path:
        unknown = sorted(set(error.instance) - set(properties))
        names = ", ".join(repr(name) for name in unknown)
        noun = "argument" if len(unknown) == 1 else "arguments"
        return f"unknown {noun} {names}; {tool} takes {', '.join(properties)}"
    if error.validator == "required":
        return f"missing argument {error.message.split(' ')[0]}"
    shown = json.dumps(error.instance, ensure_ascii=False)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if error.validator == "type":
        expected = error.validator_value
        kinds = expected if isinstance(expected, list) else [expected]
        wanted = " or ".join(_TYPE_WORDS.get(kind, kind) for kind in kinds)
        return f"{where}: expected {wanted}, got {shown}"
    if error.validator == "anyOf":
        kinds = [arm.get("type") for arm in error.validator_value if isinstance(arm, dict)]
        wanted = " or ".join(_TYPE_WORDS.get(kind, str(kind)) for kind in kinds)
        return f"{where}: expected {wanted}, got {shown}"
    return f"{where}: {error.message}" if where else error.message
