"""Every tools/call result the tests see, checked as the strictest client checks it.

The TypeScript SDK (the MCP Inspector's, most agent hosts') validates ``structuredContent``
against the tool's ``outputSchema`` whenever it is there, error results included; the Python
SDK skips errors, so a suite on the Python SDK alone let 20 of 21 error results through that
TypeScript clients refused (issue 21). Here every result is validated with ``jsonschema``,
whichever client made the call, and held to our own contract: a success carries its
document as structured content and as JSON text; an error carries ``{"error": {"code",
"message"}}`` as JSON text and no structured content.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from asset_generator.cli.app import ERROR_CODES

# How many results were checked (a test can see that its calls went through the check).
CHECKED: list[str] = []


def check_result(name: str, schema: dict[str, Any] | None, result: dict[str, Any]) -> None:
    """One ``tools/call`` result in its wire form (camelCase keys), against ``schema``."""
    from jsonschema import Draft202012Validator

    structured = result.get("structuredContent")
    # Only a tool that does not exist has no schema, and calling it must be an error.
    assert schema is not None or result.get("isError"), f"{name} publishes no outputSchema"
    if structured is not None:
        assert schema is not None, f"{name}: structuredContent without a schema"
        # As the TypeScript SDK does: whatever isError says.
        problems = [e.message for e in Draft202012Validator(schema).iter_errors(structured)]
        assert not problems, f"{name}: structuredContent does not match its schema: {problems}"
    content = result.get("content") or []
    assert content and content[0].get("type") == "text", f"{name}: no text content first"
    document = json.loads(content[0]["text"])
    if result.get("isError"):
        assert structured is None, f"{name}: an error result carries structuredContent"
        error = document.get("error")
        assert isinstance(error, dict) and set(error) == {"code", "message"}, document
        assert error["code"] in ERROR_CODES, error
        assert isinstance(error["message"], str) and error["message"], error
    else:
        assert structured is not None, f"{name}: a success without structuredContent"
        assert document == structured, f"{name}: the text is not the structured document"
    CHECKED.append(name)


@pytest.fixture
def checked_results(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every ``ClientSession.call_tool`` (stdio and in-memory clients alike) checked."""
    from mcp.client.session import ClientSession
    from mcp.types import CallToolResult

    original = ClientSession.call_tool

    async def call_tool(self: Any, name: str, arguments: Any = None, **options: Any) -> Any:
        result = await original(self, name, arguments, **options)
        if isinstance(result, CallToolResult):
            if name not in self._tool_output_schemas:
                await self.list_tools()
            schema = self._tool_output_schemas.get(name)
            check_result(name, schema, result.model_dump(by_alias=True, mode="json"))
        return result

    monkeypatch.setattr(ClientSession, "call_tool", call_tool)
    before = len(CHECKED)
    yield CHECKED
    del CHECKED[before:]
