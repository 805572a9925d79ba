"""Secrets never leak: the token, the Authorization header and session ids stay in their place.

Every command runs with `-v` (and with `--format json`) against an accounts-mode server that
also requires an Authorization header. Afterwards neither secret nor any session id the
server handed out may appear in anything the program printed or in any file it wrote outside
the state dir (where session ids belong, mode 0600) and the config file the user put the
token in (mode 0600).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Result, Runner, read_registry, wait_for

from asset_generator.emulator import Emulator, Fault, FaultPoint

AUTH_HEADER = "Bearer hdr-" + secrets.token_hex(12)
WRONG_TOKEN = "wrong-" + secrets.token_hex(12)
WRONG_HEADER = "Bearer wrong-hdr-" + secrets.token_hex(12)


class SessionWatch:
    """Every session id the server hands out, read from its GetNewSession answers."""

    def __init__(self) -> None:
        self.handed_out: list[str] = []

    def __call__(self, point: FaultPoint) -> None:
        if point.transport == "http" and (point.route or "").lower() == "getnewsession":
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.handed_out.append(json.loads(point.body or b"")["session_id"])


@pytest.fixture
def server(emulator_factory, cli: Runner) -> tuple[Emulator, SessionWatch]:
    watch = SessionWatch()
    emu = emulator_factory(
        accounts=True, required_authorization=AUTH_HEADER, step_seconds=0.05, faults=watch
    )
    cli.url = emu.url
    return emu, watch


def files_under(root: Path, *, skip: tuple[Path, ...]) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path == s or s in path.parents for s in skip):
            yield path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_no_secret_in_any_output_or_file(
    cli: Runner,
    server: tuple[Emulator, SessionWatch],
    tmp_path: Path,
    state_dir: Path,
    config_dir: Path,
) -> None:
    emu, watch = server
    token = emu.add_user("dana")
    env = {"ASSET_GENERATOR_API_KEY": token, "ASSET_GENERATOR_AUTH_HEADER": AUTH_HEADER}
    results: list[tuple[tuple[str, ...], Result]] = []

    def run(*args: str, expect: int = 0, extra: dict[str, str] | None = None) -> Result:
        result = cli(*args, env=extra if extra is not None else env)
        results.append((args, result))
        assert result.code == expect, (args, result.stderr)
        return result

    config_file = config_dir / "config.toml"
    run("config", "init", "-v")
    assert token not in config_file.read_text() and mode(config_file) == 0o600

    run("-v", "generate", "image", "-p", "one", "--steps", "2", "-o", "out")
    run("generate", "image", "-p", "two", "--steps", "2", "-o", "out", "-f", "json", "-v")
    long = cli.start(
        "generate", "image", "-p", "long", "--steps", "400", "-o", "out", "-v", env=env
    )
    assert wait_for(
        lambda: any(
            r["prompt"] == "long" and r["status"] == "running"
            for r in read_registry(state_dir)["generations"].values()
        )
    )
    run("status", "-v")
    run("status", "-f", "json", "-v")
    run("models", "list", "-v")
    run("models", "list", "-f", "json", "-v")
    cancelled = run("cancel", "-v", "-f", "json").json()["cancelled"][0]
    out, err = long.communicate(timeout=30)
    results.append((("generate", "long"), Result(long.returncode, out, err)))
    run("cancel", cancelled["id"], "-v")
    run("cancel", "-v")
    run("cancel", "--all", "-v")
    run("cancel", "--all", "-f", "json", "-v")
    run("config", "view", "-v")
    run("config", "view", "-f", "json")
    run("config", "get", "api_key", "-v")
    run("config", "get", "auth_header", "-f", "json")
    run("config", "path")
    run("completion", "bash")
    run("--api-key", token, "--auth-header", AUTH_HEADER, "status", "-v", extra={})
    # Wrong credentials are secrets too, and failures print the most.
    run("status", "-v", expect=1, extra={**env, "ASSET_GENERATOR_API_KEY": WRONG_TOKEN})
    run(
        "cancel",
        "--all",
        "-v",
        expect=1,
        extra={**env, "ASSET_GENERATOR_AUTH_HEADER": WRONG_HEADER},
    )
    run("status", "-f", "json", expect=1, extra={**env, "ASSET_GENERATOR_API_KEY": WRONG_TOKEN})

    # The user puts the token in the config file; from now on it is read from there.
    run("config", "set", "api_key", token, "-v")
    assert mode(config_file) == 0o600
    from_file = {"ASSET_GENERATOR_AUTH_HEADER": AUTH_HEADER}
    run("status", "-v", extra=from_file)
    run("config", "view", extra=from_file)
    run("config", "get", "api_key", "-f", "json", extra=from_file)
    run("generate", "image", "-p", "three", "--steps", "2", "-o", "out", "-v", extra=from_file)

    assert len(watch.handed_out) >= 2
    sessions = set(watch.handed_out) | {r.session_id for r in emu.requests if r.session_id}
    hidden = {"token": token, "header": AUTH_HEADER, "header secret": AUTH_HEADER.split()[1]}
    hidden |= {"wrong token": WRONG_TOKEN, "wrong header": WRONG_HEADER}
    hidden |= {f"session {s[:6]}…": s for s in sessions}
    for args, result in results:
        for what, value in hidden.items():
            assert value not in result.stdout, f"{what} on stdout of {args}"
            assert value not in result.stderr, f"{what} on stderr of {args}"
    written = list(files_under(tmp_path, skip=(state_dir, config_file)))
    assert any(p.suffix == ".png" for p in written)
    for path in written:
        content = path.read_bytes()
        for what, value in hidden.items():
            assert value.encode() not in content, f"{what} in {path}"

    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for name in ("generations.json", "generations.lock"):
        assert mode(state_dir / name) == 0o600, name
    assert mode(config_file) == 0o600


def test_world_readable_config_holding_a_token_warns(
    cli: Runner, server: tuple[Emulator, SessionWatch], config_dir: Path
) -> None:
    emu, _ = server
    token = emu.add_user("erin")
    config_dir.mkdir(parents=True)
    config_file = config_dir / "config.toml"
    config_file.write_text(f'api_key = "{token}"\nauth_header = "{AUTH_HEADER}"\n')
    config_file.chmod(0o644)

    result = cli("status")
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(config_file) in warnings[0]
    assert "chmod 600" in warnings[0]
    assert token not in result.stderr and AUTH_HEADER not in result.stderr
    as_json = cli("status", "-f", "json")
    assert as_json.code == 0 and as_json.json()["ok"] is True
    assert "warning:" in as_json.stderr

    config_file.chmod(0o600)
    quiet = cli("status")
    assert quiet.code == 0 and "warning" not in quiet.stderr
    # Without a secret in it, a readable config file is nobody's business.
    config_file.write_text(f'api_url = "{emu.url}"\n')
    config_file.chmod(0o644)
    env = {"ASSET_GENERATOR_API_KEY": token, "ASSET_GENERATOR_AUTH_HEADER": AUTH_HEADER}
    plain = cli("status", env=env)
    assert plain.code == 0 and "warning" not in plain.stderr


def test_a_server_that_echoes_the_credentials_cannot_make_us_print_them(
    cli: Runner, emulator_factory
) -> None:
    token = "tok-" + secrets.token_hex(12)
    header = "Bearer hdr-" + secrets.token_hex(12)

    def echo(point: FaultPoint) -> Fault | None:
        if point.route != "getnewsession":
            return None
        said = json.dumps({"error": f"who are you? {point.headers}"}).encode()
        return Fault(status=200, headers=[("Content-Type", "application/json")], body=said)

    emu = emulator_factory(faults=echo)
    cli.url = emu.url
    for fmt in ("table", "json"):
        result = cli(
            "-v",
            "-f",
            fmt,
            "status",
            env={"ASSET_GENERATOR_API_KEY": token, "ASSET_GENERATOR_AUTH_HEADER": header},
        )
        assert result.code == 1
        assert "who are you?" in result.stderr and "***" in result.stderr
        shown = result.stdout + result.stderr
        assert token not in shown and header not in shown and header.split()[-1] not in shown


@pytest.mark.parametrize(
    ("name", "value"),
    [("ASSET_GENERATOR_API_KEY", "tok\tinner"), ("ASSET_GENERATOR_AUTH_HEADER", "Bearer ü-x")],
)
def test_credentials_a_header_cannot_carry_are_refused_without_echoing_them(
    cli: Runner, emulator: Emulator, name: str, value: str
) -> None:
    result = cli("status", env={name: value})
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "cannot carry" in result.stderr and value not in result.stderr
    assert emulator.requests == []
