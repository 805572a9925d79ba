"""``mcp``: serve generate / status / cancel / models as Model Context Protocol tools on stdio."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import click

from asset_generator.cli import extra_hint, global_options
from asset_generator.cli.app import App, CommandError

if TYPE_CHECKING:
    from asset_generator.mcp_tools import Tools

MISSING_EXTRA = "the mcp command needs the MCP SDK (the mcp extra): {hint}"
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@click.command("mcp")
@global_options
@click.pass_obj
def command(app: App) -> int:
    """Serve the generate, status and cancel tools to AI agents over MCP (stdio).

    An MCP client (an AI coding assistant, an agent) starts `asset-generator mcp`
    and talks to it on stdin/stdout; logs go to stderr. The tools are
    generate_image, generation_status, cancel_generation, list_models and
    server_status. They share this client's registry: what an agent starts,
    `status` shows and `cancel` stops, and the other way round. Needs the
    optional mcp extra: in the clone, pip install -e '.[mcp]' (or pipx install
    --force '.[mcp]').
    """
    try:
        import mcp  # noqa: F401

        from asset_generator.mcp_tools import Tools, build_server
    except ImportError as exc:
        # Not installed, or something else answers to the name `mcp` (an SDK older than
        # 2.x has no MCPServer): either way the extra is what makes the command work.
        if exc.name is not None and exc.name != "mcp" and not exc.name.startswith("mcp."):
            raise
        raise CommandError(MISSING_EXTRA.format(hint=extra_hint("mcp")), "unavailable") from None
    import anyio

    # Settings first: a broken config file is one line on stderr, not a server that fails
    # every call. The server itself is not contacted until a tool needs it.
    app.settings  # noqa: B018
    tools = Tools(app)
    server = build_server(tools)

    async def serve() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(_stop_on_signal, tools)
            # Returns at the end of input (the client closed our stdin).
            await server.run_stdio_async()
            group.cancel_scope.cancel()

    try:
        anyio.run(serve)
    finally:
        # Generations started with wait: false (or past their timeout_s) run in threads of
        # this process: ending it would leave them running on the server.
        tools.stop_all("the MCP server stopped (end of input)")
    return 0


async def _stop_on_signal(tools: Tools) -> None:
    """SIGINT/SIGTERM: interrupt our generations on the server, then exit 130/143.

    The SDK reads stdin in a worker thread that no cancellation can wake, so the process
    exits directly once its server-side work is stopped (the registry is already saved).
    """
    import functools
    import os
    import sys

    import anyio

    with anyio.open_signal_receiver(*SIGNAL_EXIT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            with anyio.CancelScope(shield=True):
                # The process exits right after: no need to wait for the threads to end.
                stop = functools.partial(tools.stop_all, settle=False)
                await anyio.to_thread.run_sync(stop, f"the MCP server got {name}")
            sys.stderr.write(f"stopped by {name}\n")
            sys.stderr.flush()
            os._exit(SIGNAL_EXIT[signal.Signals(signum)])
