"""`config` end to end: the installed program editing a config file in a temporary XDG home."""

from __future__ import annotations

import os
import stat
import subprocess
import tomllib
from pathlib import Path

from conftest import PROGRAM, Runner

from asset_generator.settings import SETTINGS

TOKEN = "tok-9f8e7d6c5b4a-secret"


def config_file(config_dir: Path) -> Path:
    return config_dir / "config.toml"


def document(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write(path: Path, text: str, permissions: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(permissions)
    return path


def test_set_then_get_round_trips_typed_values(cli: Runner, config_dir: Path) -> None:
    for key, value in [
        ("generate.steps", "30"),
        ("generate.cfg_scale", "7.5"),
        ("generate.overwrite", "yes"),
        ("generate.seed", "-1"),  # a negative number is a value, not an option
        ("generate.sampler", "euler"),
        ("timeout", "45"),
    ]:
        result = cli("config", "set", key, value)
        assert (result.code, result.stdout) == (0, ""), result.stderr
        assert result.stderr.startswith(f"set {key} = ")
    path = config_file(config_dir)
    assert mode(path) == 0o600
    assert document(path) == {
        "timeout": 45.0,
        "generate": {
            "steps": 30,
            "cfg_scale": 7.5,
            "overwrite": True,
            "seed": -1,
            "sampler": "euler",
        },
    }
    assert type(document(path)["generate"]["steps"]) is int
    steps = cli("config", "get", "generate.steps")
    assert (steps.code, steps.stdout, steps.stderr) == (0, "30\n", "")
    assert cli("config", "get", "generate.overwrite").stdout == "true\n"
    assert cli("config", "get", "timeout").stdout == "45\n"
    assert cli("config", "get", "generate.cfg_scale", "-f", "json").json() == {
        "ok": True,
        "key": "generate.cfg_scale",
        "value": 7.5,
        "source": "config",
        "masked": False,
    }
    unset = cli("config", "get", "generate.model")
    assert (unset.code, unset.stdout) == (0, "")
    assert "generate.model is not set" in unset.stderr


def test_bad_values_and_unknown_keys_exit_2_naming_the_key(cli: Runner, config_dir: Path) -> None:
    for key, value in [
        ("generate.steps", "many"),
        ("generate.width", "10"),
        ("api_url", "ftp://gpu-box"),
        ("format", "xml"),
        ("generate.overwrite", "maybe"),
        ("generate.stepz", "3"),
    ]:
        result = cli("config", "set", key, value)
        assert result.code == 2, (key, result.stderr)
        assert result.stdout == ""
        assert key in result.stderr
        assert "Traceback" not in result.stderr
    assert cli("config", "get", "nope").code == 2
    assert not config_file(config_dir).exists()
    failure = cli("config", "set", "generate.steps", "many", "-f", "json")
    assert failure.code == 2
    error = failure.json()["error"]
    assert error["code"] == "usage_error"
    assert "generate.steps" in error["message"]


def test_secrets_are_masked_and_the_file_is_private(cli: Runner, config_dir: Path) -> None:
    result = cli("config", "set", "api_key", TOKEN)
    assert result.code == 0
    assert TOKEN not in result.stdout + result.stderr
    path = config_file(config_dir)
    assert mode(path) == 0o600
    assert document(path) == {"api_key": TOKEN}

    view = cli("config", "view")
    assert view.code == 0
    assert TOKEN not in view.stdout + view.stderr
    assert "api_key" in view.stdout and "********" in view.stdout
    as_json = cli("config", "view", "-f", "json")
    assert TOKEN not in as_json.stdout
    assert as_json.json()["settings"]["api_key"] == {
        "value": "********",
        "source": "config",
        "env": "ASSET_GENERATOR_API_KEY",
    }
    get = cli("config", "get", "api_key")
    # Nothing on stdout: `TOKEN=$(config get api_key)` must not capture the mask.
    assert (get.code, get.stdout) == (0, "")
    assert get.stderr == "api_key is set (********); add --show-secrets to print it\n"
    assert cli("config", "get", "api_key", "-q").stderr == ""

    assert cli("config", "get", "api_key", "--show-secrets").stdout == f"{TOKEN}\n"
    assert f'"{TOKEN}"' in cli("config", "view", "--show-secrets").stdout


def test_a_token_can_come_from_stdin(cli: Runner, config_dir: Path) -> None:
    done = subprocess.run(
        [*PROGRAM, "config", "set", "auth_header", "-"],
        input=f"Bearer {TOKEN}\n",
        env=cli.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout + done.stderr
    assert document(config_file(config_dir)) == {"auth_header": f"Bearer {TOKEN}"}


def test_an_environment_variable_that_shadows_the_key_is_warned(cli: Runner) -> None:
    env = {"ASSET_GENERATOR_API_URL": "http://from-env:1"}
    result = cli("config", "set", "api_url", "http://gpu-box:7801", env=env)
    assert result.code == 0
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1
    assert "ASSET_GENERATOR_API_URL" in warning[0] and "api_url" in warning[0]
    assert cli("config", "get", "api_url", env=env).stdout == "http://from-env:1\n"
    assert cli("config", "get", "api_url").stdout == "http://gpu-box:7801\n"
    quiet = cli("config", "set", "api_url", "http://gpu-box:7801", "-q", env=env)
    assert (quiet.code, quiet.stdout, quiet.stderr) == (0, "", "")
    plain = cli("config", "set", "generate.steps", "20", env=env)
    assert "warning" not in plain.stderr


def test_profiles_are_edited_and_selected(cli: Runner, config_dir: Path) -> None:
    assert cli("config", "set", "api_url", "http://top:1").code == 0
    assert cli("--profile", "lab", "config", "set", "api_url", "http://lab:2").code == 0
    assert cli("config", "set", "generate.steps", "12", "--profile", "lab").code == 0
    path = config_file(config_dir)
    assert document(path) == {
        "api_url": "http://top:1",
        "profiles": {"lab": {"api_url": "http://lab:2", "generate": {"steps": 12}}},
    }
    assert cli("config", "get", "api_url").stdout == "http://top:1\n"
    assert cli("config", "get", "api_url", "--profile", "lab").stdout == "http://lab:2\n"
    from_env = cli("config", "get", "generate.steps", env={"ASSET_GENERATOR_PROFILE": "lab"})
    assert from_env.stdout == "12\n"
    view = cli("config", "view", "--profile", "lab", "-f", "json").json()
    assert view["profile"] == "lab"
    assert view["settings"]["api_url"]["source"] == "profile lab"
    assert view["settings"]["timeout"]["source"] == "default"

    assert cli("config", "unset", "generate.steps", "--profile", "lab").code == 0
    # The emptied [generate] goes; the profile stays, since it may still be selected.
    assert document(path)["profiles"] == {"lab": {"api_url": "http://lab:2"}}
    missing = cli("config", "view", "--profile", "nope")
    assert missing.code == 2
    assert "profile 'nope'" in missing.stderr


def test_init_refuses_to_overwrite_without_force(cli: Runner, config_dir: Path) -> None:
    first = cli("--api-url", "http://gpu-box:7801", "config", "init")
    assert (first.code, first.stdout) == (0, "")
    path = config_file(config_dir)
    assert str(path) in first.stderr
    assert mode(path) == 0o600
    assert path.read_text().startswith("# asset-generator configuration")
    assert document(path) == {"api_url": "http://gpu-box:7801"}

    typed = cli("--api-url", "http://laptop:7801", "config", "init")
    assert typed.code == 1
    assert typed.stderr == (
        f"config file {path} already exists and differs: api_url is http://gpu-box:7801 "
        "there, http://laptop:7801 here; use --force to replace that value "
        "(the rest of the file is kept)\n"
    )
    assert document(path) == {"api_url": "http://gpu-box:7801"}

    forced = cli("config", "init", "--force", "-f", "json")
    assert forced.code == 0
    assert forced.json() == {
        "ok": True,
        "path": str(path),
        "profile": None,
        "values": {"api_url": "http://localhost:7801"},
        "changed": ["api_url"],
    }
    assert document(path) == {"api_url": "http://localhost:7801"}


def test_bare_init_keeps_an_existing_file_and_says_so(cli: Runner, config_dir: Path) -> None:
    path = config_file(config_dir)
    assert cli("--api-url", "http://gpu-box:7801", "config", "init").code == 0
    before = path.read_bytes()
    # Nobody typed http://localhost:7801 (the default), nor the environment's URL here.
    for env in ({}, {"ASSET_GENERATOR_API_URL": "http://elsewhere:7801"}):
        bare = cli("config", "init", env=env)
        assert (bare.code, bare.stdout) == (0, ""), bare.stderr
        assert bare.stderr == (
            f"{path} already exists; kept as it is (api_url http://gpu-box:7801); "
            "give --api-url to change it\n"
        )
        assert path.read_bytes() == before
    as_json = cli("config", "init", "-f", "json")
    assert as_json.code == 0
    assert as_json.json() == {
        "ok": True,
        "path": str(path),
        "profile": None,
        "values": {"api_url": "http://gpu-box:7801"},
        "changed": [],
    }
    # A file without a URL gets the one in effect, as a new file does.
    assert cli("config", "unset", "api_url").code == 0
    assert cli("config", "init").code == 0
    assert document(path) == {"api_url": "http://localhost:7801"}


def test_init_is_idempotent_for_setup_scripts(cli: Runner, config_dir: Path) -> None:
    for _ in range(2):
        assert cli("--api-url", "http://gpu-box:7801", "config", "init").code == 0
    path = config_file(config_dir)
    before = path.read_bytes()
    same = cli("--api-url", "http://gpu-box:7801", "config", "init", "-f", "json")
    assert same.code == 0
    assert "already has these values; nothing to change" in same.stderr
    assert same.json()["changed"] == []
    assert path.read_bytes() == before


def test_init_force_repairs_a_file_that_is_not_toml(cli: Runner, config_dir: Path) -> None:
    path = config_file(config_dir)
    path.parent.mkdir(parents=True)
    path.write_text("api_url = [broken\n")
    refused = cli("config", "init")
    assert refused.code == 1 and "--force replaces the whole file" in refused.stderr
    forced = cli("--api-url", "http://gpu-box:7801", "config", "init", "--force")
    assert forced.code == 0, forced.stderr
    assert "not valid TOML" in forced.stderr
    assert document(path) == {"api_url": "http://gpu-box:7801"}


def test_init_of_one_profile_keeps_the_rest_of_the_file(cli: Runner, config_dir: Path) -> None:
    path = config_file(config_dir)
    assert cli("--api-url", "http://gpu-box:7801", "config", "init").code == 0
    assert cli("config", "set", "generate.steps", "30").code == 0
    assert cli("config", "set", "--profile", "lab", "api_url", "http://lab:1").code == 0
    # A new profile needs no --force: nothing in the file changes but that table.
    added = cli("--api-url", "http://laptop:7801", "config", "init", "--profile", "laptop")
    assert added.code == 0, added.stderr
    replaced = cli(
        "--api-url", "http://lab:2", "--api-key", TOKEN, "config", "init", "--profile", "lab"
    )
    assert replaced.code == 1
    assert "api_url is http://lab:1 there, http://lab:2 here" in replaced.stderr
    assert TOKEN not in replaced.stderr
    forced = cli(
        "--api-url",
        "http://lab:2",
        "--api-key",
        TOKEN,
        "config",
        "init",
        "--profile",
        "lab",
        "--force",
    )
    assert forced.code == 0, forced.stderr
    assert TOKEN not in forced.stdout + forced.stderr
    assert document(path) == {
        "api_url": "http://gpu-box:7801",
        "generate": {"steps": 30},
        "profiles": {
            "lab": {"api_url": "http://lab:2", "api_key": TOKEN},
            "laptop": {"api_url": "http://laptop:7801"},
        },
    }
    assert mode(path) == 0o600


def test_path_follows_the_flag_the_environment_and_xdg(
    cli: Runner, config_dir: Path, tmp_path: Path
) -> None:
    default = cli("config", "path")
    assert (default.code, default.stdout, default.stderr) == (0, f"{config_file(config_dir)}\n", "")
    elsewhere = tmp_path / "elsewhere.toml"
    assert cli("config", "path", "--config", str(elsewhere)).stdout == f"{elsewhere}\n"
    env = {"ASSET_GENERATOR_CONFIG": str(elsewhere)}
    assert cli("config", "path", env=env).stdout == f"{elsewhere}\n"
    assert cli("config", "set", "generate.steps", "9", env=env).code == 0
    assert document(elsewhere) == {"generate": {"steps": 9}}
    assert mode(elsewhere) == 0o600
    assert not config_file(config_dir).exists()


def test_unset_removes_the_key_and_is_idempotent(cli: Runner, config_dir: Path) -> None:
    cli("config", "set", "generate.steps", "30")
    cli("config", "set", "generate.sampler", "euler")
    path = config_file(config_dir)
    assert cli("config", "unset", "generate.steps").code == 0
    assert document(path) == {"generate": {"sampler": "euler"}}
    assert cli("config", "get", "generate.steps").stdout == ""
    assert cli("config", "unset", "generate.sampler").code == 0
    assert document(path) == {}
    again = cli("config", "unset", "generate.sampler")
    assert again.code == 0
    assert "nothing to remove" in again.stderr


def test_a_token_readable_by_others_is_warned_about(cli: Runner, config_dir: Path) -> None:
    path = write(config_file(config_dir), f'api_key = "{TOKEN}"\n', 0o644)
    result = cli("config", "get", "timeout")
    assert (result.code, result.stdout) == (0, "30\n")
    assert result.stderr.startswith("warning:")
    assert "api_key" in result.stderr and "chmod 600" in result.stderr
    assert TOKEN not in result.stderr
    quiet = cli("config", "get", "timeout", "-q")
    assert (quiet.stdout, quiet.stderr) == ("30\n", "")
    # Rewriting the file makes it private again.
    assert cli("config", "set", "timeout", "10").code == 0
    assert mode(path) == 0o600
    assert cli("config", "get", "timeout").stderr == ""
    write(path, 'api_url = "http://gpu-box:7801"\n', 0o644)
    assert cli("config", "get", "timeout").stderr == ""


def test_a_broken_file_is_reported_and_a_bad_value_can_be_repaired(
    cli: Runner, config_dir: Path
) -> None:
    path = write(config_file(config_dir), "api_url = [unclosed\n")
    for args in (("config", "set", "timeout", "5"), ("config", "view")):
        result = cli(*args)
        assert result.code == 1
        assert "not valid TOML" in result.stderr
        assert "Traceback" not in result.stderr
    assert path.read_text() == "api_url = [unclosed\n"
    assert cli("config", "path").code == 0

    write(path, 'timeout = "soon"\n')
    broken = cli("config", "view")
    assert broken.code == 2
    assert "timeout" in broken.stderr
    assert cli("config", "set", "timeout", "10").code == 0
    assert cli("config", "get", "timeout").stdout == "10\n"


def test_a_symlinked_config_is_written_through_the_link(
    cli: Runner, config_dir: Path, tmp_path: Path
) -> None:
    target = write(tmp_path / "dotfiles" / "asset-generator.toml", 'api_url = "http://a:1"\n')
    config_dir.mkdir(parents=True)
    config_file(config_dir).symlink_to(target)
    assert cli("config", "set", "generate.steps", "5").code == 0
    assert config_file(config_dir).is_symlink()
    assert document(target) == {"api_url": "http://a:1", "generate": {"steps": 5}}


def test_view_lists_every_key_with_its_source(cli: Runner, config_dir: Path) -> None:
    write(config_file(config_dir), "[generate]\nsteps = 30\nstepz = 4\n")
    env = {"ASSET_GENERATOR_TIMEOUT": "5"}
    view = cli("--api-url", "http://flag:1", "config", "view", env=env)
    assert view.code == 0
    lines = view.stdout.splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "SOURCE"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows) == [setting.key for setting in SETTINGS]
    assert rows["api_url"] == ['"http://flag:1"', "flag"]
    assert rows["timeout"] == ["5", "env"]
    assert rows["generate.steps"] == ["30", "config"]
    assert rows["generate.model"] == ["-", "default"]
    assert "warning: unknown key generate.stepz" in view.stderr

    as_json = cli("config", "view", "-f", "json", env=env).json()
    assert as_json["ok"] is True
    assert as_json["path"] == str(config_file(config_dir))
    assert set(as_json["settings"]) == {setting.key for setting in SETTINGS}
    assert as_json["settings"]["timeout"] == {
        "value": 5.0,
        "source": "env",
        "env": "ASSET_GENERATOR_TIMEOUT",
    }


def test_no_config_file_is_created_by_reading(cli: Runner, config_dir: Path) -> None:
    assert cli("config", "view").code == 0
    assert cli("config", "get", "api_url").stdout == "http://localhost:7801\n"
    assert not config_dir.exists() or os.listdir(config_dir) == []
