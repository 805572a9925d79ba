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

    # At least one session id to look for. A second one is made only when the last generate
    # starts while the cancelled session still rests (10 s), which a loaded machine misses.
    assert watch.handed_out
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


# -- ComfyUI: the token, the header, and our prompt ids and client ids ---------------------------


def _comfy_workflow(workdir: Path, name: str, steps: int) -> str:
    graph = {
        "1": {"class_type": "SlowSolidImage",
              "inputs": {"steps": steps, "step_seconds": 0.02, "width": 8, "height": 8,
                         "red": 1.0, "green": 0.0, "blue": 0.0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": name}},
    }  # fmt: skip
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(graph))
    return str(path)


def _comfy_ui_workflow(workdir: Path) -> str:
    """The web UI's saved format: converted with the server's /object_info (cached on disk)."""
    document = {
        "nodes": [
            {"id": 1, "type": "SlowSolidImage", "mode": 0, "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
             "widgets_values": [2, 0.02, 8, 8, 0.0, 1.0, 0.0, 0, False]},
            {"id": 2, "type": "SaveImage", "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
             "widgets_values": ["ui"]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    }  # fmt: skip
    path = workdir / "saved.json"
    path.write_text(json.dumps(document))
    return str(path)


def test_comfyui_never_shows_the_token_the_header_or_our_prompt_and_client_ids(
    cli: Runner, tmp_path: Path, workdir: Path, state_dir: Path, config_dir: Path
) -> None:
    from asset_generator.emulator import ComfyEmulator

    token = "tok-" + secrets.token_hex(12)
    # Two gates: one that wants the token as a Bearer header, one that wants our header
    # (--auth-header wins over --api-key, cli-contract §7).
    by_token = ComfyEmulator(
        base_dir=tmp_path / "server-a", required_authorization=f"Bearer {token}"
    ).start()
    by_header = ComfyEmulator(
        base_dir=tmp_path / "server-b", required_authorization=AUTH_HEADER
    ).start()
    results: list[tuple[tuple[str, ...], Result]] = []
    try:
        with_token = {"ASSET_GENERATOR_API_KEY": token, "ASSET_GENERATOR_SERVER_TYPE": "auto"}
        with_header = {**with_token, "ASSET_GENERATOR_AUTH_HEADER": AUTH_HEADER}

        def run(server: ComfyEmulator, env: dict[str, str], *args: str, expect: int = 0) -> Result:
            result = cli(*args, env={"ASSET_GENERATOR_API_URL": server.url, **env})
            results.append((args, result))
            assert result.code == expect, (args, result.stderr)
            return result

        for server, env in ((by_token, with_token), (by_header, with_header)):
            run(server, env, "-v", "status")  # identified on first use (with -v)
            run(server, env, "status", "-f", "json", "-v")
            run(server, env, "models", "list", "-v")
            run(server, env, "models", "list", "--subtype", "LoRA", "-f", "json", "-v")
            run(server, env, "-v", "generate", "image", "-p", "one", "--model",
                "random-sd15", "--steps", "2", "-o", "out")  # fmt: skip
            run(server, env, "generate", "image", "--workflow",
                _comfy_workflow(workdir, "wf", 2), "-f", "json", "-v",
                "-o", "out")  # fmt: skip
            run(server, env, "workflow", "show", _comfy_ui_workflow(workdir), "-f", "json", "-v")
            run(server, env, "generate", "image", "--workflow", _comfy_ui_workflow(workdir),
                "-v", "-o", "out")  # fmt: skip
            # One running, one waiting behind it: status shows them, cancel stops them.
            long = cli.start(
                "generate", "image", "-p", "long", "--model", "random-sd15", "--steps", "500",
                "-n", "2", "-o", "out", "-v",
                env={"ASSET_GENERATOR_API_URL": server.url, **env},
            )  # fmt: skip
            assert wait_for(
                lambda server=server: any(
                    r["prompt"] == "long" and r["status"] == "running" and r["server"] == server.url
                    for r in read_registry(state_dir)["generations"].values()
                )
            ), (long.poll(), read_registry(state_dir))
            run(server, env, "status", "-v")
            run(server, env, "status", "-f", "json", "-v")
            cancelled = run(server, env, "cancel", "-v", "-f", "json", "--wait").json()
            out, err = long.communicate(timeout=30)
            results.append((("generate", "long"), Result(long.returncode, out, err)))
            run(server, env, "cancel", cancelled["cancelled"][0]["id"], "-v")
            run(server, env, "cancel", "-v")
            run(server, env, "cancel", "--all", "-v", "-f", "json")
            spec = workdir / "set.yaml"
            spec.write_text(
                "params: {steps: 2}\nassets:\n  - name: S\n    assets:\n"
                "      - {id: a, prompt: first}\n      - {id: b, prompt: second}\n"
            )
            run(server, env, "pipeline", str(spec), "--model", "random-sd15", "-v",
                "-o", "pipe", "--base-seed", "3")  # fmt: skip
            run(server, env, "pipeline", str(spec), "--model", "random-sd15", "-f", "json",
                "-o", "pipe", "--force")  # fmt: skip
        # Wrong credentials print the most.
        wrong = {"ASSET_GENERATOR_API_KEY": WRONG_TOKEN}
        run(by_token, wrong, "status", "-v", expect=1)
        run(by_token, wrong, "generate", "image", "--workflow",
            _comfy_workflow(workdir, "refused", 2), "-v", "-f", "json", expect=1)  # fmt: skip
        run(by_header, {**with_token, "ASSET_GENERATOR_AUTH_HEADER": WRONG_HEADER},
            "cancel", "--all", "-v", expect=1)  # fmt: skip
        received = by_token.requests + by_header.requests
    finally:
        by_token.stop()
        by_header.stop()

    handles = [r["handle"] for r in read_registry(state_dir)["generations"].values()]
    prompt_ids = {p for h in handles for p in h["prompt_ids"]}
    client_ids = {h["client_id"] for h in handles}
    # Every id the server saw from us is one the registry holds.
    sent = {c.body["prompt_id"] for c in received if c.route == "/prompt" and c.method == "POST"
            and isinstance(c.body, dict)}  # fmt: skip
    assert sent and sent <= prompt_ids
    hidden = {"token": token, "header": AUTH_HEADER, "header secret": AUTH_HEADER.split()[1]}
    hidden |= {"wrong token": WRONG_TOKEN, "wrong header": WRONG_HEADER}
    hidden |= {f"prompt id {p[:8]}…": p for p in prompt_ids}
    hidden |= {f"client id {c[:8]}…": c for c in client_ids}
    for args, result in results:
        for what, value in hidden.items():
            assert value not in result.stdout, f"{what} on stdout of {args}"
            assert value not in result.stderr, f"{what} on stderr of {args}"
    servers = (tmp_path / "server-a", tmp_path / "server-b")  # the servers' own files
    written = list(files_under(tmp_path, skip=(state_dir, *servers)))
    assert any(p.suffix == ".png" for p in written)
    catalogue = list((tmp_path / "home" / "xdg_cache_home").rglob("*-object_info.json"))
    assert len(catalogue) == 2 and all(p in written for p in catalogue)
    for path in written:
        content = path.read_bytes()
        for what, value in hidden.items():
            assert value.encode() not in content, f"{what} in {path}"
    # Not even a hash of a credential names a file outside the state directory.
    from asset_generator.registry import server_key

    keys = {server_key(s.url, f"{token}\0{h}") for s in (by_token, by_header)
            for h in ("", AUTH_HEADER)}  # fmt: skip
    assert not any(k in str(p) for p in written for k in keys)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for name in ("generations.json", "generations.lock"):
        assert mode(state_dir / name) == 0o600, name
    assert not (config_dir / "config.toml").exists()
