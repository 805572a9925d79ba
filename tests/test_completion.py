"""Shell completion end to end through click's protocol, and what --help and Tab import."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from conftest import Runner

from asset_generator.emulator import Emulator

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("httpx", "httpx_ws", "rich.table", "rich.progress", "tomli_w")


def stopped_server() -> str:
    """The URL of a port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def complete(cli: Runner, line: str, shell: str = "bash", env: dict | None = None) -> list[str]:
    """What the shell would offer for ``line`` (a trailing space starts a new word)."""
    words = line.split()
    if shell == "fish":
        current = "" if line.endswith(" ") else words[-1]
        protocol = {"COMP_WORDS": line, "COMP_CWORD": current}
    else:
        cword = len(words) if line.endswith(" ") else len(words) - 1
        protocol = {"COMP_WORDS": line, "COMP_CWORD": str(cword)}
    protocol["_ASSET_GENERATOR_COMPLETE"] = f"{shell}_complete"
    result = cli(env={**protocol, **(env or {})})
    assert (result.code, result.stderr) == (0, ""), result.stderr
    if shell == "zsh":
        lines = result.stdout.splitlines()
        return [lines[i + 1] for i in range(0, len(lines) - 2, 3) if lines[i] == "plain"]
    return [
        item.split(",", 1)[1].split("\t")[0]
        for item in result.stdout.splitlines()
        if item.startswith("plain,")
    ]


def test_completion_prints_the_committed_scripts(cli: Runner) -> None:
    for shell in ("bash", "zsh", "fish"):
        result = cli("completion", shell)
        assert (result.code, result.stderr) == (0, "")
        committed = (ROOT / "completions" / f"asset-generator.{shell}").read_text()
        assert result.stdout == committed, (
            f"completions/asset-generator.{shell} is stale: "
            "run `python -m asset_generator.cli.reference --write`"
        )
        assert "_ASSET_GENERATOR_COMPLETE" in result.stdout
    wrapped = cli("completion", "zsh", "-f", "json").json()
    assert wrapped["ok"] is True and wrapped["script"].startswith("#compdef asset-generator")
    # A format chosen in the config must not turn `eval "$(...)"` into JSON.
    plain = cli("completion", "bash", env={"ASSET_GENERATOR_FORMAT": "json"})
    assert not plain.stdout.startswith("{")
    assert cli("completion", "tcsh").code == 2
    help_text = cli("completion", "--help").stdout
    assert "~/.bashrc" in help_text and "~/.config/fish/completions" in help_text


def test_subcommands_complete_with_the_server_stopped(cli: Runner) -> None:
    cli.url = stopped_server()
    assert "config" in complete(cli, "asset-generator con")
    assert complete(cli, "asset-generator config s") == ["set"]
    assert {"get", "init", "path", "set", "unset", "view"} <= set(
        complete(cli, "asset-generator config ")
    )
    assert complete(cli, "asset-generator generate i") == ["image"]
    assert "--model" in complete(cli, "asset-generator generate image --mo")
    assert complete(cli, "asset-generator config set generate.ste") == ["generate.steps"]
    assert complete(cli, "asset-generator config get api_u", shell="zsh") == ["api_url"]
    assert complete(cli, "asset-generator config un", shell="fish") == ["unset"]


def test_model_names_come_from_models_list_and_never_the_network(
    cli: Runner, emulator: Emulator
) -> None:
    assert complete(cli, "asset-generator generate image --model ") == []
    listed = cli("models", "list")
    assert listed.code == 0, listed.stderr
    emulator.reset_log()
    names = complete(cli, "asset-generator generate image --model ")
    assert "flux/flux1-dev.safetensors" in names
    assert "OfficialStableDiffusion/sd_xl_base_1.0.safetensors" in names
    assert complete(cli, "asset-generator generate image -m fl") == ["flux/flux1-dev.safetensors"]
    # No prefix match: fall back to names containing the text (models sit in folders).
    assert complete(cli, "asset-generator generate image -m sd_xl") == [
        "OfficialStableDiffusion/sd_xl_base_1.0.safetensors"
    ]
    assert "flux/flux1-dev.safetensors" in complete(
        cli, "asset-generator generate image -m f", shell="fish"
    )
    assert emulator.requests == []

    url = emulator.url
    emulator.stop()
    assert "flux/flux1-dev.safetensors" in complete(
        cli, "asset-generator generate image --model ", env={"ASSET_GENERATOR_API_URL": url}
    )
    # The names belong to that server and credential: another server has none cached.
    other = stopped_server()
    assert complete(cli, f"asset-generator --api-url {other} generate image --model ") == []
    assert complete(cli, "asset-generator generate image --api-key other --model ") == []


def test_lora_names_come_from_the_cached_lora_listing(cli: Runner, emulator: Emulator) -> None:
    assert complete(cli, "asset-generator generate image --lora ") == []
    assert cli("models", "list", "--subtype", "LoRA").code == 0
    emulator.reset_log()
    names = complete(cli, "asset-generator generate image --lora ")
    assert sorted(names) == ["detail-tweaker.safetensors", "style/pixel-art.safetensors"]
    assert complete(cli, "asset-generator generate image --lora pix") == [
        "style/pixel-art.safetensors"
    ]
    assert complete(cli, "asset-generator generate image --lora style/pixel-art:") == []
    # Stable-Diffusion models are not LoRAs.
    assert "flux/flux1-dev.safetensors" not in names
    assert emulator.requests == []


def test_completion_stays_silent_with_a_broken_config(cli: Runner, config_dir: Path) -> None:
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text("api_url = [unclosed\n")
    assert complete(cli, "asset-generator generate image --model ") == []
    assert complete(cli, "asset-generator canc") == ["cancel"]


HEAVY_CHECK = """
import json, os, sys
from asset_generator.cli import run

runs, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
seen = set()
found = {}
for argv, env in runs:
    os.environ.update(env)
    try:
        run(argv)
    except SystemExit:
        pass
    for name in env:
        os.environ.pop(name)
    loaded = sorted(m for m in heavy if m in sys.modules and m not in seen)
    seen.update(loaded)
    if loaded:
        found[" ".join(argv) or repr(env)] = loaded
print(json.dumps(found))
"""


def leaf_commands() -> list[list[str]]:
    import click

    from asset_generator.cli import cli

    found: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        found.append(path)
        if isinstance(command, click.Group):
            context = click.Context(command)
            for name in command.list_commands(context):
                walk(command.get_command(context, name), [*path, name])

    walk(cli, [])
    return found


def test_help_and_completion_import_nothing_heavy(cli: Runner) -> None:
    """--help, every command's --help and Tab completion must start fast."""
    protocol = {"_ASSET_GENERATOR_COMPLETE": "bash_complete", "COMP_CWORD": "4"}
    runs = [([*path, "--help"], {}) for path in leaf_commands()]
    runs += [
        (["completion", "bash"], {}),
        ([], {**protocol, "COMP_WORDS": "asset-generator generate image --model "}),
        ([], {**protocol, "COMP_WORDS": "asset-generator config set api_u"}),
        ([], {**protocol, "COMP_WORDS": "asset-generator models list --sub", "COMP_CWORD": "3"}),
        ([], {**protocol, "COMP_WORDS": "asset-generator cancel ", "COMP_CWORD": "2"}),
    ]
    assert len(runs) > 10
    done = subprocess.run(
        [sys.executable, "-c", HEAVY_CHECK, json.dumps(runs), json.dumps(HEAVY)],
        env=cli.env({"ASSET_GENERATOR_API_URL": stopped_server()}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {}, f"imported at startup (make these imports lazy): {report}"


def test_cancel_completes_unfinished_ids_from_the_registry(
    cli: Runner, emulator: Emulator, state_dir: Path
) -> None:
    assert cli("generate", "image", "-p", "finished one", "--steps", "1", "-q").code == 0
    done = cli("status", "-f", "json").json()["generations"][0]["id"]
    # Records as a running generation and a running pipeline would leave them.
    path = state_dir / "generations.json"
    document = json.loads(path.read_text())
    (record,) = document["generations"].values()
    running = {**record, "id": "gen_0badf00d", "status": "running", "created": 1e9 + 1}
    document["generations"]["gen_0badf00d"] = running
    document["pipelines"] = {"pipe_00c0ffee": {**running, "id": "pipe_00c0ffee", "created": 1e9}}
    elsewhere = {**running, "id": "gen_0e15e0e0", "server": "http://elsewhere:1"}
    document["generations"]["gen_0e15e0e0"] = elsewhere
    path.write_text(json.dumps(document))
    cli.url = stopped_server()  # completion never asks the server
    env = {"ASSET_GENERATOR_API_URL": emulator.url}
    assert complete(cli, "asset-generator cancel ", env=env) == ["gen_0badf00d", "pipe_00c0ffee"]
    assert complete(cli, "asset-generator cancel pi", env=env) == ["pipe_00c0ffee"]
    assert done not in complete(cli, "asset-generator cancel gen_", env=env)
    assert complete(cli, "asset-generator cancel ", shell="zsh", env=env)[:1] == ["gen_0badf00d"]


def raw_complete(cli: Runner, line: str) -> list[str]:
    """click's bash answer lines for ``line``: ``type,value`` (``file``/``dir`` = the shell's)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    protocol = {"COMP_WORDS": line, "COMP_CWORD": str(cword)}
    result = cli(env={**protocol, "_ASSET_GENERATOR_COMPLETE": "bash_complete"})
    assert (result.code, result.stderr) == (0, ""), result.stderr
    return result.stdout.splitlines()


def test_pipeline_specs_complete_files_and_output_dirs_complete_directories(
    cli: Runner,
) -> None:
    cli.url = stopped_server()  # offline: nothing is asked of any server
    assert raw_complete(cli, "asset-generator pipeline ga") == ["file,ga"]
    assert raw_complete(cli, "asset-generator pipeline ") == ["file,"]
    assert raw_complete(cli, "asset-generator pipeline --file ga") == ["file,ga"]
    for option in ("-o", "--output-dir"):
        assert raw_complete(cli, f"asset-generator pipeline game.yaml {option} ou") == ["dir,ou"]
        assert raw_complete(cli, f"asset-generator generate image {option} ou") == ["dir,ou"]
    # As crop's files do.
    assert raw_complete(cli, "asset-generator crop sp") == ["file,sp"]


def test_config_files_complete_before_and_after_the_command(cli: Runner) -> None:
    cli.url = stopped_server()
    assert raw_complete(cli, "asset-generator --config my") == ["file,my"]
    assert raw_complete(cli, "asset-generator status --config ") == ["file,"]
    assert raw_complete(cli, "asset-generator config view --config my") == ["file,my"]
