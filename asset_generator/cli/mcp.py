"""``mcp``: serve generate / pipeline / status / cancel / models as MCP tools on stdio."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import click

from asset_generator.cli import extra_hint, global_options
from asset_generator.cli.app import App, CommandError

if TYPE_CHECKING:
    from asset_generator.mcp_tools import Tools

# Names the extra as the contract's `pip install 'asset-generator[mcp]'` does, then the command
# that installs it here (the package is not on PyPI).
MISSING_EXTRA = "the mcp command needs the MCP SDK (the mcp extra, asset-generator[mcp]): {hint}"
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Variables a client's `env` must carry for the server to use the same files as the shell.
SHARED_LOCATIONS = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")


@click.command("mcp")
@click.option(
    "--client-config",
    is_flag=True,
    help="Print the JSON an MCP client needs to start this server (this executable's "
    "absolute path, the server address) and exit.",
)
@global_options
@click.pass_obj
def command(app: App, client_config: bool) -> int:
    """Serve the image tools to AI agents over MCP (stdio).

    An MCP client (an AI coding assistant, an agent) starts `asset-generator mcp`
    and talks to it on stdin/stdout; logs go to stderr. The tools are
    generate_image, run_pipeline, generation_status, cancel_generation, get_images,
    list_models and server_status. They share this client's registry: what an agent
    starts, `status` shows and `cancel` stops, and the other way round. Work whose
    call has returned runs on in a process of its own after the server ends.
    `--client-config` prints the client's JSON with this executable's absolute path
    (desktop clients do not search the shell's PATH). Needs the optional mcp extra:
    in the clone, pip install -e '.[mcp]' (or pipx install --force '.[mcp]').
    """
    if client_config:
        app.output.json(_client_config(app))
        _client_config_notes(app)
        return 0
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
        # A call still waiting when the client leaves is a call the client abandoned: its
        # work is interrupted. Work whose id a call returned goes on in its own process.
        tools.stop_all("the MCP server ended while the call waited for it")
    return 0


async def _stop_on_signal(tools: Tools) -> None:
    """SIGINT/SIGTERM: interrupt the work of calls still waiting, then exit 130/143.

    The SDK reads stdin in a worker thread that no cancellation can wake, so the process
    exits directly once that work is stopped (the registry is already saved).
    """
    import os
    import sys

    import anyio

    with anyio.open_signal_receiver(*SIGNAL_EXIT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(tools.stop_all, f"the MCP server got {name}")
            sys.stderr.write(f"stopped by {name}\n")
            sys.stderr.flush()
            os._exit(SIGNAL_EXIT[signal.Signals(signum)])


def _executable() -> list[str]:
    """How a client starts this program: the console script's absolute path, else
    ``python -m asset_generator``. Not resolved through symlinks (pipx's survive upgrades)."""
    import os
    import shutil
    import sys
    from pathlib import Path

    script = Path(sys.argv[0])
    if script.name == "asset-generator" and script.exists():
        return [os.path.abspath(script)]
    found = shutil.which("asset-generator")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "asset_generator"]


def _client_config(app: App) -> dict[str, Any]:
    """The ``mcpServers`` entry: a client passes only ``env`` (and a few basics such as HOME
    and PATH) to the server, so everything the shell sets for us goes there; secrets do not."""
    import os

    from asset_generator.settings import CONFIG_ENV, PROFILE_ENV, SETTINGS

    resolved = app.settings
    env = {"ASSET_GENERATOR_API_URL": resolved["api_url"]}
    for setting in SETTINGS:
        if setting.secret or setting.env is None or setting.key in ("api_url", "format"):
            continue
        if resolved.sources.get(setting.key) in ("flag", "env"):
            env[setting.env] = str(resolved[setting.key])
    if app.flags.get("config") or os.environ.get(CONFIG_ENV):
        env[CONFIG_ENV] = str(resolved.config_path.resolve())
    if resolved.profile:
        env[PROFILE_ENV] = resolved.profile
    for name in SHARED_LOCATIONS:
        if os.environ.get(name):
            env[name] = os.path.abspath(os.environ[name])
    command, *args = _executable()
    return {
        "mcpServers": {"asset-generator": {"command": command, "args": [*args, "mcp"], "env": env}}
    }


def _client_config_notes(app: App) -> None:
    from asset_generator.settings import SETTINGS

    for setting in SETTINGS:
        if (
            setting.secret
            and setting.env
            and app.settings.sources.get(setting.key)
            in (
                "flag",
                "env",
            )
        ):
            app.output.warn(
                f'note: {setting.key} is set here but not printed; add "{setting.env}" to '
                f"env, or keep it in the config file (asset-generator config set {setting.key})"
            )
