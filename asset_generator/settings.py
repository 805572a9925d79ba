"""One registry of settings: each key declares its type, default, env var and help once.

Precedence, highest first: command-line flag > environment variable > ``[profiles.NAME]``
table > top level of the config file > default (cli-contract §2). ``config view``, ``config
set`` validation and the resolution used by every command all read the same table below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

APP_NAME = "asset-generator"
ENV_PREFIX = "ASSET_GENERATOR_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
PROFILE_ENV = ENV_PREFIX + "PROFILE"


class SettingsError(Exception):
    """A setting has a bad value (exit 2), or the config file cannot be read (exit 1)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _parse_url(value: Any) -> str:
    text = str(value).strip()
    if "://" not in text and text and not text.startswith("/"):
        # `127.0.0.1:7801` or `gpu-box:7801`: urlsplit reads the host as a scheme.
        raise ValueError(f"{text!r} has no scheme: use http://{text.rstrip('/')}")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL, e.g. http://localhost:7801")
    try:
        port = parts.port
    except ValueError:
        # urlsplit raises alike for `:99999` and `:80a`; only one of them is "not a number".
        given = parts.netloc.rpartition("@")[2].rpartition("]")[2].rpartition(":")[2]
        if given.isdigit():
            raise ValueError(
                f"{text!r} has port {int(given)}, which is out of range: a port is 1-65535"
            ) from None
        raise ValueError(f"{text!r} has a port that is not a number") from None
    if port == 0:
        raise ValueError(f"{text!r} has port 0, which is out of range: a port is 1-65535")
    path = parts.path.rstrip("/")
    if path.lower().endswith("/api"):
        # Every route is /API/<name>: a base that ends in /API would ask for /API/API/...
        base = text.rstrip("/")[: -len("/api")]
        raise ValueError(f"{text!r} ends with /API; drop it: {base}")
    return text.rstrip("/")


def describe_server(base_url: str) -> str:
    """The server as it may be shown to the user: scheme, host and port, no userinfo."""
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


def _parse_str(value: Any) -> str:
    if isinstance(value, bool | int | float):
        raise ValueError(f"{value!r} is not text")
    return str(value)


def _parse_credential(value: Any) -> str:
    """A token or header value: printable ASCII, as HTTP headers need.

    Surrounding white space (the newline of a token file) is dropped. The messages never
    repeat the value: it is a secret.
    """
    if isinstance(value, bool | int | float):
        raise ValueError("is not text")
    text = str(value).strip()
    if not text:
        raise ValueError("is empty (to remove it, use `config unset` or leave it unset)")
    if any(not (" " <= c <= "~") for c in text):
        raise ValueError(
            "holds a control or non-ASCII character, which an HTTP header cannot carry"
        )
    return text


# A day: far above any sensible wait, and far below what datetime and sockets accept.
MAX_SECONDS = 86_400


def _parse_positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not 0 < number <= MAX_SECONDS:  # also refuses nan and inf
        raise ValueError(f"{value!r} must be greater than 0 and at most {MAX_SECONDS:g}")
    return number


def _parse_int(minimum: int, maximum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a whole number")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
        if not minimum <= number <= maximum:
            raise ValueError(f"{number} is outside {minimum}..{maximum}")
        return number

    return parse


def _parse_float(minimum: float, maximum: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
        if not minimum <= number <= maximum:  # also refuses nan
            raise ValueError(f"{number:g} is outside {minimum:g}..{maximum:g}")
        return number

    return parse


def _parse_percentage(value: Any) -> float:
    number = _parse_float(0, 100)(value)
    if not 0 < number < 100:
        raise ValueError(f"{number:g} is not between 0 and 100 (both excluded)")
    return number


def _parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
        return text

    return parse


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{value!r} is not true or false")


@dataclass(frozen=True)
class Setting:
    """One configurable key."""

    key: str
    parse: Callable[[Any], Any]
    default: Any
    description: str
    type_name: str = "text"
    env: str | None = None
    secret: bool = False

    @property
    def section(self) -> str | None:
        return self.key.split(".", 1)[0] if "." in self.key else None

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "api_url",
        _parse_url,
        "http://localhost:7801",
        "Base URL of the SwarmUI or ComfyUI server.",
        "url",
        ENV_PREFIX + "API_URL",
    ),
    Setting(
        "server_type",
        _parse_choice("auto", "swarmui", "comfyui"),
        "auto",
        "Which server --api-url is: auto (ask it once, remember the answer), swarmui, comfyui.",
        "auto|swarmui|comfyui",
        ENV_PREFIX + "SERVER_TYPE",
    ),
    Setting(
        "api_key",
        _parse_credential,
        None,
        "Login token: SwarmUI's swarm_token cookie; for ComfyUI, Authorization: Bearer.",
        "secret",
        ENV_PREFIX + "API_KEY",
        secret=True,
    ),
    Setting(
        "auth_header",
        _parse_credential,
        None,
        "Raw Authorization header for a server or proxy that requires one.",
        "secret",
        ENV_PREFIX + "AUTH_HEADER",
        secret=True,
    ),
    Setting(
        "format",
        _parse_choice("table", "json"),
        "table",
        "Output format: table or json.",
        "table|json",
        ENV_PREFIX + "FORMAT",
    ),
    Setting(
        "timeout",
        _parse_positive_float,
        30.0,
        "Seconds to wait for each request (generation has its own deadline).",
        "seconds",
        ENV_PREFIX + "TIMEOUT",
    ),
    Setting("generate.model", _parse_str, None, "Model name, as `models list` shows it."),
    Setting("generate.width", _parse_int(64, 16384), None, "Image width in pixels.", "int"),
    Setting("generate.height", _parse_int(64, 16384), None, "Image height in pixels.", "int"),
    Setting("generate.steps", _parse_int(0, 500), None, "Sampling steps.", "int"),
    Setting("generate.cfg_scale", _parse_float(0, 100), None, "CFG scale.", "number"),
    Setting("generate.seed", _parse_int(-1, 2**63 - 1), None, "Seed; -1 is random.", "int"),
    Setting("generate.sampler", _parse_str, None, "Sampler name."),
    Setting("generate.scheduler", _parse_str, None, "Scheduler name."),
    Setting("generate.negative_prompt", _parse_str, None, "Negative prompt."),
    Setting("generate.images", _parse_int(1, 10000), None, "Images per run.", "int"),
    Setting("generate.output_dir", _parse_str, ".", "Directory for saved images.", "path"),
    Setting(
        "generate.filename_template",
        _parse_str,
        "{prompt}-{seed}",
        "File name template: {index} {seed} {prompt} {model} {date} {time} {id}.",
    ),
    Setting(
        "generate.overwrite",
        _parse_bool,
        False,
        "Overwrite existing files instead of adding a suffix.",
        "bool",
    ),
    Setting("generate.no_progress", _parse_bool, False, "Never show live progress.", "bool"),
    Setting(
        "generate.deadline",
        _parse_positive_float,
        None,
        "Interrupt a generation that runs longer than this many seconds.",
        "seconds",
    ),
    # Post-processing of each saved image (cli-contract §5, generate image).
    Setting("generate.auto_crop", _parse_bool, False, "Trim near-white borders.", "bool"),
    Setting(
        "generate.auto_crop_threshold",
        _parse_int(0, 255),
        250,
        "Auto-crop: a channel this bright (minus the tolerance) is background.",
        "int",
    ),
    Setting(
        "generate.auto_crop_tolerance",
        _parse_int(0, 255),
        10,
        "Auto-crop: how far below the threshold still counts as background.",
        "int",
    ),
    Setting(
        "generate.auto_crop_preserve_aspect",
        _parse_bool,
        False,
        "Auto-crop: grow the box back to the image's aspect ratio.",
        "bool",
    ),
    Setting(
        "generate.downscale_width", _parse_int(1, 65535), None, "Downscale to this width.", "int"
    ),
    Setting(
        "generate.downscale_height", _parse_int(1, 65535), None, "Downscale to this height.", "int"
    ),
    Setting(
        "generate.downscale_percentage",
        _parse_percentage,
        None,
        "Downscale both sides to this percentage (0 < p < 100).",
        "number",
    ),
    Setting(
        "generate.downscale_filter",
        _parse_choice("lanczos", "bicubic", "bilinear", "nearest"),
        "lanczos",
        "Downscale filter: lanczos, bicubic, bilinear or nearest.",
    ),
    Setting(
        "generate.strip_metadata",
        _parse_bool,
        False,
        "Remove text, time and EXIF metadata from saved images.",
        "bool",
    ),
    Setting("generate.jpeg_quality", _parse_int(1, 100), 90, "Quality of JPEG outputs.", "int"),
)

BY_KEY: dict[str, Setting] = {setting.key: setting for setting in SETTINGS}


def lookup(key: str) -> Setting:
    """Return the setting for ``key`` or raise SettingsError naming the known keys."""
    try:
        return BY_KEY[key]
    except KeyError:
        from difflib import get_close_matches

        known = ", ".join(BY_KEY)
        close = get_close_matches(key, BY_KEY, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise SettingsError(f"unknown config key {key!r}{hint} (known keys: {known})") from None


def validate(key: str, value: Any) -> Any:
    """Parse ``value`` for ``key``; a bad value raises SettingsError naming the key."""
    setting = lookup(key)
    try:
        return setting.parse(value)
    except ValueError as exc:
        raise SettingsError(f"invalid value for {key}: {exc}") from None


def config_dir() -> Path:
    from platformdirs import user_config_path

    return user_config_path(APP_NAME, appauthor=False)


def state_dir() -> Path:
    from platformdirs import user_state_path

    return user_state_path(APP_NAME, appauthor=False)


def cache_dir() -> Path:
    """Where large things that can be fetched again are kept (ComfyUI's node catalogue)."""
    from platformdirs import user_cache_path

    return user_cache_path(APP_NAME, appauthor=False)


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    explicit = environ.get(CONFIG_ENV)
    return Path(explicit).expanduser() if explicit else config_dir() / "config.toml"


def read_config_file(path: Path) -> dict[str, Any]:
    """Read the TOML config; a missing file is empty, an unreadable one is an error."""
    try:
        with path.open("rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}", 1) from None
    import tomllib  # only when there is a file: most cron runs have none

    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SettingsError(f"config file {path} is not UTF-8 text", 1) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}", 1) from None
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}", 1) from None


def _dig(table: Mapping[str, Any], key: str) -> Any:
    node: Any = table
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


@dataclass
class Resolved:
    """Every setting's value and where it came from."""

    values: dict[str, Any]
    sources: dict[str, str]
    config_path: Path
    profile: str | None
    # Warnings about the config file (e.g. a token readable by other users), for the caller.
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def resolve(
    flags: Mapping[str, Any],
    *,
    config_path: Path | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """Resolve all settings: flag > env var > profile > config top level > default."""
    environ = os.environ if environ is None else environ
    path = config_path or default_config_path(environ)
    profile = profile or environ.get(PROFILE_ENV) or None
    named = "--config" if config_path is not None else CONFIG_ENV if environ.get(CONFIG_ENV) else ""
    if named and not path.exists():
        # A file the user named is expected to exist; a typo must not mean "no settings".
        raise SettingsError(f"config file {path} (from {named}) does not exist", 1)
    document = read_config_file(path)
    profile_table: Mapping[str, Any] = {}
    if profile:
        profiles = document.get("profiles", {})
        if not isinstance(profiles, Mapping) or profile not in profiles:
            raise SettingsError(f"profile {profile!r} is not defined in {path}")
        profile_table = profiles[profile]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        candidates = (
            ("flag", flags.get(setting.key)),
            ("env", environ.get(setting.env) if setting.env else None),
            (f"profile {profile}", _dig(profile_table, setting.key)),
            ("config", _dig(document, setting.key)),
        )
        for source, raw in candidates:
            if raw is None or (raw == "" and source == "env"):
                continue
            try:
                values[setting.key] = setting.parse(raw)
            except ValueError as exc:
                where = {
                    "flag": f"--{setting.key.replace('_', '-')}",
                    "env": f"{setting.key} in environment variable {setting.env}",
                }.get(source, f"{setting.key} in {path} ({source})")
                raise SettingsError(f"invalid value for {where}: {exc}") from None
            sources[setting.key] = source
            break
        else:
            values[setting.key] = setting.default
            sources[setting.key] = "default"
    warnings = [permission_warning(path, document)]
    warnings += [
        f"warning: unknown key {key} in {path} is ignored "
        "(`asset-generator config view` lists the keys)"
        for key in unknown_keys(document)
    ]
    return Resolved(values, sources, path, profile, [w for w in warnings if w])


# -- the config file as a document: what `config` shows and edits ------------------------------

MASK = "********"
PROFILES = "profiles"
CONFIG_HEADER = (
    "# asset-generator configuration (TOML).\n"
    "# `asset-generator config view` lists every key; `config set KEY VALUE` changes one.\n"
    "# Precedence: flag > environment variable > [profiles.NAME] > top level > default.\n"
    "# `config set` and `config unset` rewrite this file and keep only these comment lines.\n"
    "\n"
)


def selected_profile(flag: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The profile in effect: ``--profile``, else ``ASSET_GENERATOR_PROFILE``, else none."""
    environ = os.environ if environ is None else environ
    return flag or environ.get(PROFILE_ENV) or None


def display(value: Any) -> str:
    """A value as text for people and shell scripts: TOML spelling, text without quotes."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def shown(setting: Setting, value: Any, show_secrets: bool = False) -> Any:
    """``value`` as it may be shown: a secret that is set is masked unless asked for."""
    if setting.secret and value not in (None, "") and not show_secrets:
        return MASK
    return value


def _tables(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The top level and every profile table."""
    profiles = document.get(PROFILES)
    tables = [document]
    if isinstance(profiles, Mapping):
        tables += [table for table in profiles.values() if isinstance(table, Mapping)]
    return tables


def secrets_in(document: Mapping[str, Any]) -> list[str]:
    """The secret keys that the config file sets, at the top level or in a profile."""
    held = {
        setting.key
        for table in _tables(document)
        for setting in SETTINGS
        if setting.secret and _dig(table, setting.key) not in (None, "")
    }
    return [setting.key for setting in SETTINGS if setting.key in held]


def permission_warning(path: Path, document: Mapping[str, Any]) -> str | None:
    """A warning when the config file holds a secret and other users can read it."""
    held = secrets_in(document)
    if not held or os.name != "posix":
        return None
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o044:
        return None
    return (
        f"warning: {path} holds {held[0]} and other users can read it (mode {mode:04o}); "
        f"run: chmod 600 {path}"
    )


def unknown_keys(document: Mapping[str, Any]) -> list[str]:
    """Keys in the config file that no setting declares: a typo there is otherwise ignored."""
    sections = {setting.section for setting in SETTINGS if setting.section}
    found: list[str] = []

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        for name, value in table.items():
            if name in sections and isinstance(value, Mapping):
                found.extend(
                    f"{prefix}{name}.{sub}" for sub in value if f"{name}.{sub}" not in BY_KEY
                )
            elif name not in BY_KEY:
                found.append(f"{prefix}{name}")

    for name, value in document.items():
        if name == PROFILES and isinstance(value, Mapping):
            for profile, table in value.items():
                if isinstance(table, Mapping):
                    walk(table, f"{PROFILES}.{profile}.")
                else:
                    found.append(f"{PROFILES}.{profile}")
        else:
            walk({name: value}, "")
    return found


def _table(
    document: dict[str, Any], parts: list[str], path: Path, *, create: bool
) -> dict[str, Any] | None:
    node = document
    for index, part in enumerate(parts):
        child = node.get(part)
        if child is None:
            if not create:
                return None
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: index + 1])
            raise SettingsError(f"{where} in {path} is a value, not a table; fix it by hand", 1)
        node = child
    return node


def _parents(key: str, profile: str | None) -> list[str]:
    return ([PROFILES, profile] if profile else []) + key.split(".")[:-1]


def current_value(document: Mapping[str, Any], key: str, profile: str | None = None) -> Any:
    """The value ``key`` has in the file's top level (or ``[profiles.NAME]``); None if unset."""
    table: Any = document
    if profile:
        profiles = document.get(PROFILES)
        table = profiles.get(profile) if isinstance(profiles, Mapping) else None
    return _dig(table, key) if isinstance(table, Mapping) else None


def set_value(
    document: dict[str, Any], key: str, value: Any, path: Path, profile: str | None = None
) -> None:
    """Put an already validated ``value`` under ``key`` (in ``[profiles.NAME]`` if given)."""
    table = _table(document, _parents(key, profile), path, create=True)
    assert table is not None
    table[lookup(key).name] = value


def unset_value(document: dict[str, Any], key: str, path: Path, profile: str | None = None) -> bool:
    """Remove ``key``; False when it was not set there. A section left empty goes too."""
    setting = lookup(key)
    table = _table(document, _parents(key, profile), path, create=False)
    if table is None or setting.name not in table:
        return False
    del table[setting.name]
    if setting.section and not table:
        # Drop an empty [generate]; an empty profile stays, it may still be selected.
        owner = _table(document, _parents(setting.section, profile), path, create=False)
        if owner is not None:
            del owner[setting.section]
    return True


def write_config_file(path: Path, document: Mapping[str, Any]) -> None:
    """Write the config file atomically with mode 0600, through a symlink if it is one."""
    import tomli_w

    from asset_generator.registry import write_atomic

    target = Path(os.path.realpath(path))
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise SettingsError(
            f"cannot create the directory {target.parent}: {exc.strerror}", 1
        ) from None
    payload = CONFIG_HEADER + tomli_w.dumps(dict(document))
    write_atomic(target, payload.encode(), what="the config file")
