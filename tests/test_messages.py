"""Messages a user reads and a script matches: JSON codes, usage errors, connection failures."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import Runner
from PIL import Image

from asset_generator.cli.app import ERROR_CODES

ROOT = Path(__file__).resolve().parents[1]
# Calls whose string arguments are JSON error codes (the mapper's helpers and CommandError).
CODE_CALLS = {
    "CommandError",
    "CancelError",
    "ToolFailure",
    "_fail",
    "_json_failure",
    "_fail_with",
    "_stop_after_failure",
}
CODE_SHAPE = re.compile(r"^[a-z]+(_[a-z]+)*$")


def _codes_in(tree: ast.AST) -> set[str]:
    """String literals that the program uses as a JSON error code."""
    found: set[str] = set()

    def literal(node: ast.AST | None) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
        elif isinstance(node, ast.IfExp):
            literal(node.body)
            literal(node.orelse)

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            for keyword in node.keywords:
                if keyword.arg == "code":
                    literal(keyword.value)
            if name in CODE_CALLS:
                for arg in node.args:
                    # A code is one word; the messages beside it have spaces.
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        if CODE_SHAPE.match(arg.value):
                            found.add(arg.value)
                    elif isinstance(arg, ast.IfExp):
                        literal(arg)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = getattr(target, "id", None) or getattr(target, "attr", None)
                if name == "code":
                    literal(node.value)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "code":
                    literal(value)
    return found


def program_codes() -> dict[str, list[str]]:
    """Every code the program's source can emit, with the files that emit it."""
    codes: dict[str, list[str]] = {}
    for path in sorted((ROOT / "asset_generator").rglob("*.py")):
        if "emulator" in path.relative_to(ROOT).parts:
            continue  # the server side of the protocol has its own error ids
        for code in _codes_in(ast.parse(path.read_text(encoding="utf-8"))):
            codes.setdefault(code, []).append(str(path.relative_to(ROOT)))
    return codes


def test_the_program_emits_only_the_contract_codes() -> None:
    codes = program_codes()
    # The collector itself works: these are emitted today.
    assert {"usage_error", "not_found", "connection_failed", "file_error"} <= set(codes)
    strays = {code: files for code, files in codes.items() if code not in ERROR_CODES}
    assert strays == {}, f"JSON codes outside cli-contract §3: {strays}"


@pytest.mark.parametrize("doc", ["README.md", "CANCEL_COMMAND.md"])
def test_the_docs_list_every_code(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    missing = [code for code in ERROR_CODES if f"`{code}`" not in text]
    assert missing == [], f"{doc} does not list {missing}"


def test_a_code_outside_the_contract_never_reaches_a_script(cli: Runner) -> None:
    result = cli("-f", "json", "cancel", "gen_00000000")
    assert result.code == 1
    assert result.json()["error"]["code"] in ERROR_CODES


def _usage_block(result: object, command: str) -> str:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.code == 2, stderr  # type: ignore[attr-defined]
    assert stderr.startswith(f"Usage: asset-generator {command}"), stderr
    assert "Traceback" not in stderr
    return stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "command", "suggestion"),
    [
        (["stauts"], "[OPTIONS] COMMAND", "Did you mean 'status'?"),
        (["genrate", "image"], "[OPTIONS] COMMAND", "Did you mean 'generate'?"),
        (["models", "lsit"], "models", "Did you mean 'list'?"),
        (["config", "gte", "api_url"], "config", "Did you mean 'get'?"),
    ],
)
def test_mistyped_commands_get_a_suggestion_at_every_level(
    cli: Runner, args: list[str], command: str, suggestion: str
) -> None:
    line = _usage_block(cli(*args), command)
    assert line.startswith("Error: No such command") and line.endswith(suggestion)


def test_a_word_for_a_number_is_an_integer_error(cli: Runner) -> None:
    line = _usage_block(cli("generate", "image", "-p", "x", "--steps", "abc"), "generate image")
    assert line == "Error: Invalid value for '--steps': 'abc' is not a valid integer."
    line = _usage_block(cli("generate", "image", "-p", "x", "--cfg-scale", "x"), "generate image")
    assert line == "Error: Invalid value for '--cfg-scale': 'x' is not a valid number."


def test_usage_errors_found_after_parsing_look_like_clicks(cli: Runner) -> None:
    # --watch refusing JSON is raised by the command, not by click: same block all the same.
    result = cli("-f", "json", "status", "--watch")
    assert _usage_block(result, "status").startswith("Error: --watch draws a table")
    assert result.json()["error"]["code"] == "usage_error"


def test_an_api_url_without_scheme_names_the_flag_and_the_fix(cli: Runner) -> None:
    line = _usage_block(cli("status", "--api-url", "127.0.0.1:7951"), "status")
    assert line == (
        "Error: invalid value for --api-url: '127.0.0.1:7951' has no scheme: "
        "use http://127.0.0.1:7951"
    )
    env = cli("status", env={"ASSET_GENERATOR_API_URL": "gpu-box:7801"})
    assert "ASSET_GENERATOR_API_URL" in env.stderr and "use http://gpu-box:7801" in env.stderr


def test_an_api_url_ending_in_api_says_drop_it(cli: Runner) -> None:
    line = _usage_block(cli("status", "--api-url", "http://gpu-box:7801/API/"), "status")
    assert line.endswith("ends with /API; drop it: http://gpu-box:7801")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_down_server_says_what_to_check_whichever_phrase(cli: Runner, emulator_factory) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    # The server's type is not known yet: it may be either.
    hint = f"is SwarmUI or ComfyUI running at {url}? (set the address with --api-url)"
    first = cli("status", "--api-url", url)
    assert first.code == 1
    assert first.stderr == (
        f"failed to get session: cannot connect to {url} (connection refused); {hint}\n"
    )
    # With a session cached for the server, the same failure reads `request failed:`.
    emu = emulator_factory()
    assert cli("status", "--api-url", emu.url).code == 0
    emu.stop()
    hint = f"is SwarmUI running at {emu.url}? (set the address with --api-url)"
    cached = cli("status", "--api-url", emu.url)
    assert cached.code == 1
    assert cached.stderr.startswith("request failed: ") and cached.stderr.endswith(f"; {hint}\n")


def test_https_against_plain_http_says_so(cli: Runner, emulator) -> None:
    url = emulator.url.replace("http://", "https://")
    result = cli("-f", "json", "status", "--api-url", url)
    assert result.code == 1
    message = result.json()["error"]["message"]
    assert "does not speak TLS" in message and f"use --api-url {emulator.url}" in message
    assert "SSL" not in result.stderr and "_ssl.c" not in result.stderr


def test_no_credentials_sent_is_said_so(cli: Runner, emulator_factory) -> None:
    emu = emulator_factory(accounts=True)
    result = cli("status", "--api-url", emu.url)
    assert result.code == 1
    assert result.stderr.startswith("failed to get session: ")
    assert "no credentials were sent" in result.stderr and "--api-key" in result.stderr
    wrong = cli("status", "--api-url", emu.url, "--api-key", "not-a-token-0123")
    assert "did not accept our credentials" in wrong.stderr
    assert "not-a-token-0123" not in wrong.stderr


def test_a_required_authorization_header_not_sent_is_said_so(cli: Runner, emulator_factory) -> None:
    emu = emulator_factory(required_authorization="Bearer s3cret-s3cret")
    result = cli("status", "--api-url", emu.url)
    assert result.code == 1
    assert "none was sent" in result.stderr and "--auth-header" in result.stderr
    wrong = cli("status", "--api-url", emu.url, "--auth-header", "Bearer wrong-wrong-wrong")
    assert "refused the Authorization header" in wrong.stderr


def test_a_mistyped_config_key_gets_a_suggestion(cli: Runner) -> None:
    line = _usage_block(cli("config", "get", "generate.stpes"), "config get")
    assert line.startswith(
        "Error: unknown config key 'generate.stpes'; did you mean generate.steps?"
    )


def test_the_mapper_never_prints_a_code_outside_the_contract(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from asset_generator.cli import _json_failure
    from asset_generator.cli.app import App, CommandError

    app = App()
    app.flags["format"] = "json"
    _json_failure(app, "made_up_code", "boom")
    assert json.loads(capsys.readouterr().out)["error"] == {
        "code": "server_error",
        "message": "boom",
    }
    assert CommandError("bad flag", exit_code=2).code == "usage_error"
    assert CommandError("odd").code in ERROR_CODES


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--timeout", "0", "-f", "json"],
        ["generate", "image", "-p", "x", "--steps", "abc", "--format=json"],
        ["-f", "table", "cancel", "--wait-timeout", "-1", "-fjson"],
    ],
)
def test_a_format_after_the_bad_option_still_gets_its_json(cli: Runner, args: list[str]) -> None:
    # click stops at the first bad value; the -f json after it must still be honoured.
    result = cli(*args)
    assert result.code == 2
    assert result.json()["error"]["code"] == "usage_error"
    assert result.stderr.startswith("Usage: asset-generator")


def test_no_arguments_at_all_is_the_help_and_a_usage_exit(cli: Runner) -> None:
    result = cli()
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "Usage: asset-generator" in result.stdout + result.stderr
    assert cli("-f").code == 2


@pytest.mark.parametrize(
    ("args", "command", "names"),
    [
        (
            ["downscale", "photo.png", "-w", "100", "-h", "100", "-o", "sq.png"],
            "downscale",
            "-l/--height",
        ),
        (["downscale", "photo.png", "-h", "100"], "downscale", "-l/--height"),
        # Joined to its value, as -l100 is accepted: not click's "No such option '-1'".
        (["downscale", "photo.png", "-h100", "-o", "sq.png"], "downscale", "-l/--height"),
        (["generate", "image", "-p", "a cat", "-h512"], "generate image", "--height"),
        (["generate", "image", "-p", "a cat", "-h", "512"], "generate image", "--height"),
        (["pipeline", "game.yaml", "-h", "512", "--dry-run"], "pipeline", "--height"),
    ],
)
def test_h_with_a_value_is_a_usage_error_naming_the_height(
    cli: Runner, workdir: Path, args: list[str], command: str, names: str
) -> None:
    Image.new("RGB", (300, 200)).save(workdir / "photo.png")
    line = _usage_block(cli(*args), command)
    assert line.startswith("Error: -h is the help option, not the height: ")
    assert f"use {names} (e.g." in line
    assert not (workdir / "sq.png").exists()
    as_json = cli("-f", "json", *args)
    assert as_json.code == 2
    document = as_json.json()
    assert document["ok"] is False and document["error"]["code"] == "usage_error"
    assert names in document["error"]["message"]


@pytest.mark.parametrize(
    "args",
    [
        ["downscale", "-h"],
        ["downscale", "photo.png", "-h"],
        ["downscale", "--help"],
        ["downscale", "photo.png", "-w", "100", "--help", "100"],
        ["generate", "image", "-h"],
        ["generate", "-h"],
        ["pipeline", "-h"],
        ["crop", "photo.png", "-h"],
        ["-h"],
    ],
)
def test_a_lone_h_is_still_the_help(cli: Runner, args: list[str]) -> None:
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("Usage: asset-generator")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "http://host:99999",
            "'http://host:99999' has port 99999, which is out of range: a port is 1-65535",
        ),
        ("http://host:0", "'http://host:0' has port 0, which is out of range: a port is 1-65535"),
        ("http://[::1]:70000", "has port 70000, which is out of range: a port is 1-65535"),
        ("http://host:80a", "'http://host:80a' has a port that is not a number"),
    ],
)
def test_a_port_out_of_range_is_said_so(cli: Runner, url: str, says: str) -> None:
    line = _usage_block(cli("status", "--api-url", url), "status")
    assert line.startswith("Error: invalid value for --api-url: ") and line.endswith(says)


def test_counts_are_singular_or_plural_never_s_in_parentheses(cli: Runner, workdir: Path) -> None:
    import asset_generator

    package = Path(asset_generator.__file__).parent
    offenders = []
    # The emulators reproduce the servers' own texts ("Invalid status value(s)"), as they are.
    ours = [p for p in sorted(package.rglob("*.py")) if "emulator" not in p.parts]
    for path in ours:
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and re.search(r"[a-z]\(s\)", text.replace("http(s)", "")):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []

    (workdir / "one.yaml").write_text("assets:\n  - {name: g, assets: [{id: a, prompt: p}]}\n")
    dry = cli("pipeline", "one.yaml", "--dry-run", "--base-seed", "7")
    assert dry.code == 0, dry.stderr
    assert dry.stderr.splitlines()[-1] == (
        "dry run: 1 asset in 1 group, base seed 7; 0 warnings; nothing was sent or written"
    )
    (workdir / "bad.png").write_bytes(b"not an image")
    failed = cli("-f", "json", "crop", "bad.png")
    assert failed.json()["error"]["message"] == "1 of 1 file failed"
