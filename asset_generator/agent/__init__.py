"""What the MCP tools run for an agent, apart from the SDK's glue (``mcp_tools``).

``arguments`` holds a tool call to its published input schema, strictly; ``worker`` is the
process a generation or a pipeline runs in (so that it outlives the MCP server once the call
has returned); ``jobs`` starts and follows those processes; ``results`` shapes what a call
returns. None of these imports the MCP SDK.
"""
