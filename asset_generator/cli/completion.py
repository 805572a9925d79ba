"""``completion``: print the shell completion script; completers that read only local files.

Completion itself is click's protocol: the shell runs the program with
``_ASSET_GENERATOR_COMPLETE=bash_complete`` (or ``zsh_complete``, ``fish_complete``) and
``COMP_WORDS``/``COMP_CWORD``, and the program answers before running any command. So a
completer must be quick, print nothing, and never contact the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App
from asset_generator.settings import SettingsError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

SHELLS = ("bash", "zsh", "fish")
PROG_NAME = "asset-generator"
COMPLETE_VAR = "_ASSET_GENERATOR_COMPLETE"


def script(shell: str) -> str:
    """The completion script for ``shell``, exactly as ``completions/`` holds it."""
    from click.shell_completion import get_completion_class

    from asset_generator.cli import cli

    completer_class = get_completion_class(shell)
    if completer_class is None:
        raise ValueError(f"no completion for {shell!r}")
    completer = completer_class(cli, {}, PROG_NAME, COMPLETE_VAR)
    # The template itself: BashComplete.source() would also run the local bash to check its
    # version, which would make the script depend on the machine that printed it.
    source = completer.source_template % completer.source_vars()
    return source.rstrip("\n") + "\n"


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@global_options
@click.pass_obj
def command(app: App, shell: str) -> int:
    """Print the shell completion script for bash, zsh or fish.

    Install it once, then open a new shell:

    \b
    bash (4.4 or newer), either of:
      asset-generator completion bash > ~/.local/share/bash-completion/completions/asset-generator
      echo 'eval "$(asset-generator completion bash)"' >> ~/.bashrc
    zsh, either of (the first needs fpath=(~/.zfunc $fpath) before compinit in ~/.zshrc):
      mkdir -p ~/.zfunc && asset-generator completion zsh > ~/.zfunc/_asset-generator
      echo 'eval "$(asset-generator completion zsh)"' >> ~/.zshrc
    fish:
      asset-generator completion fish > ~/.config/fish/completions/asset-generator.fish

    Commands, options, config keys, --model names, the ids `cancel` takes, image and
    spec files, and directories for --output-dir complete.
    Model names come from the list that `models list` last saved for the server, and ids
    from this client's registry, so completion never contacts the server. The script is
    printed as is; only an explicit --format json wraps it.
    """
    text = script(shell)
    # Only the flag: a `format = "json"` in the config must not break `eval "$(...)"`.
    if app.flags.get("format") == "json":
        app.output.json({"ok": True, "shell": shell, "script": text})
    else:
        app.output.data(text.rstrip("\n"))
    return 0


def complete_model(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Complete ``--model`` from the names `models list` cached for this server."""
    return _items(_cached_names(ctx, "model_kind"), incomplete)


def complete_lora(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Complete ``--lora NAME`` from the names `models list --subtype LoRA` cached.

    Nothing once the user has reached the ``:WEIGHT`` part.
    """
    if ":" in incomplete:
        return []
    return _items(_cached_names(ctx, "lora_kind"), incomplete)


JOB_PREFIXES = ("gen_", "pipe_")


def complete_job_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Complete ``cancel ID`` with the unfinished generations (and pipelines) of the registry.

    The file is read as plain JSON, without the lock or the network: any record with a
    ``gen_``/``pipe_`` id and a status that is not final counts, wherever it sits in the
    file, so kinds of record added later complete too.
    """
    import json

    from click.shell_completion import CompletionItem

    from asset_generator.registry import FILE_NAME, FINAL_STATES
    from asset_generator.settings import describe_server, state_dir

    probe = _probe(ctx)
    try:
        server: str | None = describe_server(probe.api_url)
    except SettingsError:
        server = None
    try:
        document = json.loads((state_dir() / FILE_NAME).read_bytes())
    except (OSError, ValueError, RecursionError):
        return []
    found: dict[str, tuple[float, str]] = {}
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(value for value in node.values() if isinstance(value, dict | list))
        ident, status = node.get("id"), node.get("status")
        if not (isinstance(ident, str) and ident.startswith(JOB_PREFIXES)):
            continue
        if not isinstance(status, str) or status in FINAL_STATES:
            continue
        if server and isinstance(node.get("server"), str) and node["server"] != server:
            continue
        if ident.startswith(incomplete):
            created = node.get("created")
            label = node.get("prompt") or node.get("spec") or node.get("file") or ""
            found[ident] = (
                created if isinstance(created, int | float) else 0.0,
                f"{status}: {label}" if isinstance(label, str) and label else status,
            )
    newest_first = sorted(found.items(), key=lambda item: item[1][0], reverse=True)
    return [CompletionItem(ident, help=help_text) for ident, (_, help_text) in newest_first]


def _probe(ctx: click.Context) -> App:
    """A quiet App of our own with the global options typed so far: no warning may reach
    the terminal in the middle of a completion."""
    probe = App()
    app = ctx.find_object(App)
    probe.flags = {**(app.flags if app is not None else {}), "quiet": True}
    return probe


def _cached_names(ctx: click.Context, which: str) -> list[str]:
    """Names cached for the server's model (``model_kind``) or LoRA (``lora_kind``) kind.

    The server's type comes from the setting or the registry's memory, never the network.
    """
    from asset_generator.registry import cached_model_names
    from asset_generator.server import DEFAULT_TYPE, SERVER_TYPES

    # The global options typed so far pick the server (and its credential).
    probe = _probe(ctx)
    try:
        key = probe.server_key
        kind = SERVER_TYPES.get(probe.known_type() or DEFAULT_TYPE, SERVER_TYPES[DEFAULT_TYPE])
    except SettingsError:
        return []
    return cached_model_names(probe.registry.read(), key, getattr(kind, which))


def _items(names: list[str], incomplete: str) -> list[CompletionItem]:
    """Names starting with ``incomplete``, else containing it (model names sit in folders)."""
    from click.shell_completion import CompletionItem

    folded = incomplete.casefold()
    chosen = [name for name in names if name.casefold().startswith(folded)]
    if not chosen:
        chosen = [name for name in names if folded in name.casefold()]
    return [CompletionItem(name) for name in chosen]
