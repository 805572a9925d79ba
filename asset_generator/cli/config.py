"""``config``: show and change the TOML config file, driven by the one settings registry.

``set``, ``unset``, ``init`` and ``path`` never resolve the settings in effect, so they
still work when the file holds a bad value: that is how a user repairs it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from asset_generator import settings
from asset_generator.cli import global_options
from asset_generator.cli.app import App, CommandError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

INIT_KEYS = ("api_url", "api_key", "auth_header")
SHOW_SECRETS = click.option(
    "--show-secrets", is_flag=True, help="Print api_key and auth_header instead of ********."
)


def complete_key(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Complete a config key, with its description for shells that show one."""
    from click.shell_completion import CompletionItem

    return [
        CompletionItem(setting.key, help=setting.description)
        for setting in settings.SETTINGS
        if setting.key.startswith(incomplete)
    ]


KEY = click.argument("key", shell_complete=complete_key)


@click.group("config")
def command() -> None:
    """Show and change settings in the config file (TOML).

    Keys: api_url, api_key, auth_header, format and timeout (the global options), and
    generate.* defaults for `generate image` (`config view` lists them all). With
    --profile NAME (or ASSET_GENERATOR_PROFILE), get, set, unset and view work on the
    [profiles.NAME] table. The file is written atomically with mode 0600; api_key and
    auth_header are masked unless --show-secrets.
    """


@command.command("path")
@global_options
@click.pass_obj
def path_command(app: App) -> int:
    """Print the path of the config file in use (it may not exist yet)."""
    path = _config_path(app)
    if app.output.is_json:
        app.output.json({"ok": True, "path": str(path), "exists": path.exists()})
    else:
        app.output.data(str(path))
    return 0


@command.command("init")
@click.option("--force", is_flag=True, help="Replace values that differ in an existing file.")
@global_options
@click.pass_obj
def init(app: App, force: bool) -> int:
    """Create the config file, with the server URL in effect.

    Writes api_url (from --api-url, ASSET_GENERATOR_API_URL or the default), and api_key
    and auth_header when given as options, e.g.
    `asset-generator --api-url http://gpu-box:7801 config init`. With --profile NAME the
    values go in [profiles.NAME]. On an existing file only these values change, and
    everything else in it is kept: values already there are a no-op (exit 0), values
    that differ are listed and need --force (exit 1 without it). Without --api-url, an
    existing file keeps its api_url (exit 0, with a note).
    """
    path = _config_path(app)
    profile = settings.selected_profile(app.flags.get("profile"))
    exists = os.path.lexists(path)
    wanted = _init_values(app)
    try:
        document = settings.read_config_file(path) if exists else {}
    except settings.SettingsError as exc:
        if not force:
            raise settings.SettingsError(f"{exc}; --force replaces the whole file", 1) from None
        # A file that is not TOML cannot be merged into; --force asked for a fresh one.
        app.output.warn(f"warning: {exc}; replacing it")
        document = {}
    # A value the user did not type on this command line (the env var's, the default) only
    # fills a gap: the file's own value stands, and is not a difference to refuse over.
    kept = {
        key: current
        for key in list(wanted)
        if app.flags.get(key) is None
        and not force
        and (current := settings.current_value(document, key, profile)) is not None
    }
    for key in kept:
        del wanted[key]
    differ = [
        key
        for key, value in wanted.items()
        if settings.current_value(document, key, profile) not in (None, value)
    ]
    if differ and not force:
        raise CommandError(
            f"config file {path} already exists and differs: "
            + "; ".join(_difference(document, key, wanted[key], profile) for key in differ)
            + "; use --force to replace "
            + ("that value" if len(differ) == 1 else "those values")
            + " (the rest of the file is kept)",
            "file_error",
        )
    changed = [
        key
        for key, value in wanted.items()
        if settings.current_value(document, key, profile) != value
    ]
    for key in changed:
        settings.set_value(document, key, wanted[key], path, profile)
    if changed or not exists:
        settings.write_config_file(path, document)
        verb = "updated" if exists else "wrote"
        app.output.info(f"{verb} {', '.join(changed)} in {_where(path, profile)}")
    elif kept and not wanted:
        values = ", ".join(
            f"{key} {settings.shown(settings.lookup(key), value)}" for key, value in kept.items()
        )
        options = " or ".join(f"--{key.replace('_', '-')}" for key in kept)
        app.output.info(
            f"{_where(path, profile)} already exists; kept as it is ({values}); "
            f"give {options} to change it"
        )
    else:
        app.output.info(f"{_where(path, profile)} already has these values; nothing to change")
    if app.output.is_json:
        app.output.json(
            {
                "ok": True,
                "path": str(path),
                "profile": profile,
                "values": {
                    key: settings.shown(settings.lookup(key), value)
                    for key, value in {**kept, **wanted}.items()
                },
                "changed": changed,
            }
        )
    return 0


def _init_values(app: App) -> dict[str, Any]:
    """What `config init` writes: the connection only (--format, --timeout, -q are per run)."""
    values: dict[str, Any] = {}
    for key in INIT_KEYS:
        setting = settings.lookup(key)
        value = app.flags.get(key)
        if value is None and key == "api_url":
            value = (setting.env and os.environ.get(setting.env)) or setting.default
        if value is not None:
            values[key] = settings.validate(key, value)
    return values


def _difference(document: dict[str, Any], key: str, value: Any, profile: str | None) -> str:
    setting = settings.lookup(key)
    if setting.secret:
        return f"{key} is set to another value there"
    there = settings.display(settings.current_value(document, key, profile))
    return f"{key} is {there} there, {settings.display(value)} here"


@command.command("get")
@KEY
@SHOW_SECRETS
@global_options
@click.pass_obj
def get(app: App, key: str, show_secrets: bool) -> int:
    """Print the value of KEY in effect.

    The value comes from a flag, an environment variable, the profile, the config file or
    the default, in that order. Prints nothing on stdout when KEY has no value, and for
    api_key and auth_header unless --show-secrets (stderr says they are set); exit 0
    either way. `--format json` also says where the value came from.
    """
    setting = settings.lookup(key)
    resolved = app.settings
    value = settings.shown(setting, resolved[key], show_secrets)
    masked = value is settings.MASK
    if app.output.is_json:
        app.output.json(
            {
                "ok": True,
                "key": key,
                "value": value,
                "source": resolved.sources[key],
                "masked": masked,
            }
        )
        return 0
    if value is None:
        app.output.info(f"{key} is not set")
        return 0
    if masked:
        # Never the mask on stdout: `$(config get api_key)` would capture a fake token.
        app.output.info(f"{key} is set ({settings.MASK}); add --show-secrets to print it")
        return 0
    app.output.data(settings.display(value))
    return 0


@command.command("set", context_settings={"ignore_unknown_options": True})
@KEY
@click.argument("value")
@global_options
@click.pass_obj
def set_command(app: App, key: str, value: str) -> int:
    """Set KEY to VALUE in the config file.

    VALUE is checked and typed: `config set generate.steps 30` stores a number,
    `config set generate.overwrite yes` a boolean, `config set generate.seed -1` works
    without `--`. A VALUE of - is read from stdin, which keeps a token out of the shell
    history: `printf %s "$TOKEN" | asset-generator config set api_key -`. Unknown keys
    and bad values are refused (exit 2). Warns when an environment variable overrides
    KEY.
    """
    setting = settings.lookup(key)
    if value == "-":
        value = sys.stdin.read().rstrip("\r\n")
    typed = settings.validate(key, value)
    path = _config_path(app)
    profile = settings.selected_profile(app.flags.get("profile"))
    document = settings.read_config_file(path)
    settings.set_value(document, key, typed, path, profile)
    settings.write_config_file(path, document)
    shown = settings.shown(setting, typed)
    app.output.info(f"set {key} = {settings.display(shown)} in {_where(path, profile)}")
    if setting.env and os.environ.get(setting.env):
        app.output.warn(
            f"warning: {setting.env} is set in the environment and overrides {key} "
            "from the config file"
        )
    if app.output.is_json:
        app.output.json(
            {"ok": True, "key": key, "value": shown, "path": str(path), "profile": profile}
        )
    return 0


@command.command("unset")
@KEY
@global_options
@click.pass_obj
def unset(app: App, key: str) -> int:
    """Remove KEY from the config file.

    Then the default applies again (or, for a key removed from a profile, the top level).
    Removing a key that is not set is not an error.
    """
    settings.lookup(key)
    path = _config_path(app)
    profile = settings.selected_profile(app.flags.get("profile"))
    document = settings.read_config_file(path)
    removed = settings.unset_value(document, key, path, profile)
    if removed:
        settings.write_config_file(path, document)
        app.output.info(f"removed {key} from {_where(path, profile)}")
    else:
        app.output.info(f"{key} is not set in {_where(path, profile)}; nothing to remove")
    if app.output.is_json:
        app.output.json(
            {"ok": True, "key": key, "removed": removed, "path": str(path), "profile": profile}
        )
    return 0


@command.command("view")
@SHOW_SECRETS
@global_options
@click.pass_obj
def view(app: App, show_secrets: bool) -> int:
    """Show every setting in effect, its value and where it came from.

    Sources, highest first: flag, env, profile NAME, config (the file's top level),
    default. Keys in the file that no setting declares are reported as warnings.
    """
    resolved = app.settings  # warns about keys in the file that no setting declares
    path = resolved.config_path
    rows = {
        setting.key: {
            "value": settings.shown(setting, resolved[setting.key], show_secrets),
            "source": resolved.sources[setting.key],
            "env": setting.env,
        }
        for setting in settings.SETTINGS
    }
    if app.output.is_json:
        app.output.json(
            {
                "ok": True,
                "path": str(path),
                "exists": path.exists(),
                "profile": resolved.profile,
                "settings": rows,
            }
        )
        return 0
    missing = "" if path.exists() else " (no file yet: defaults apply)"
    app.output.info(f"settings from {_where(path, resolved.profile)}{missing}")
    table = [("KEY", "VALUE", "SOURCE")]
    table += [(key, _cell(row["value"]), row["source"]) for key, row in rows.items()]
    widths = [max(len(row[column]) for row in table) for column in range(2)]
    for key, value, source in table:
        app.output.data(f"{key:<{widths[0]}}  {value:<{widths[1]}}  {source}")
    return 0


def _config_path(app: App) -> Path:
    flag = app.flags.get("config")
    return Path(flag).expanduser() if flag else settings.default_config_path()


def _where(path: Path, profile: str | None) -> str:
    return f"[profiles.{profile}] of {path}" if profile else str(path)


def _cell(value: Any) -> str:
    """A value in the `view` table: text quoted as in TOML, so an empty one still shows."""
    if value is None:
        return "-"
    if isinstance(value, str) and value != settings.MASK:
        return json.dumps(value, ensure_ascii=False)
    return settings.display(value)
