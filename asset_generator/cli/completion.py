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
# The ListModels subtype whose names `--model` takes.
MODEL_SUBTYPE = "Stable-Diffusion"
LORA_SUBTYPE = "LoRA"


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

    Commands, options, config keys and --model names complete. Model names come from
    the list that `models list` last saved for the server, so completion never contacts
    the server. The script is printed as is; only an explicit --format json wraps it.
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
    return _items(_cached_names(ctx, MODEL_SUBTYPE), incomplete)


def complete_lora(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Complete ``--lora NAME`` from the names `models list --subtype LoRA` cached.

    Nothing once the user has reached the ``:WEIGHT`` part.
    """
    if ":" in incomplete:
        return []
    return _items(_cached_names(ctx, LORA_SUBTYPE), incomplete)


def _cached_names(ctx: click.Context, subtype: str) -> list[str]:
    from asset_generator.registry import cached_model_names

    # A quiet App of our own: the global options typed so far pick the server (and its
    # credential), and no warning may reach the terminal in the middle of a completion.
    probe = App()
    app = ctx.find_object(App)
    probe.flags = {**(app.flags if app is not None else {}), "quiet": True}
    try:
        key = probe.server_key
    except SettingsError:
        return []
    return cached_model_names(probe.registry.read(), key, subtype)


def _items(names: list[str], incomplete: str) -> list[CompletionItem]:
    """Names starting with ``incomplete``, else containing it (model names sit in folders)."""
    from click.shell_completion import CompletionItem

    folded = incomplete.casefold()
    chosen = [name for name in names if name.casefold().startswith(folded)]
    if not chosen:
        chosen = [name for name in names if folded in name.casefold()]
    return [CompletionItem(name) for name in chosen]
