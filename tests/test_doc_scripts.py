"""Every bash script in the docs runs against the emulator, so a doc script cannot rot.

The rule, for whoever adds a doc section: every fenced ```bash block in README.md,
CANCEL_COMMAND.md and docs/*.md is run, unless the line before its fence is an HTML comment
``<!-- not run: reason -->``; so is the command of every line of a ```cron block (with sh, as
cron runs it; the five time fields are dropped). A block runs in an empty directory, with the
installed ``asset-generator`` first on the PATH, an isolated home, ``ASSET_GENERATOR_API_URL``
and every ``http://gpu-box:7801`` / ``http://localhost:7801`` in its text pointing at the
SwarmUI emulator, and ``$TOKEN`` set to a test token. A block about ComfyUI (one that names
``http://gpu-box:8188`` or ``http://localhost:8188``, its default port) runs against the
ComfyUI emulator instead. It must exit 0 with no traceback, no usage error and no unknown
command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Runner

from asset_generator.emulator import ComfyEmulator, Emulator

ROOT = Path(__file__).resolve().parents[1]
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")
PLACEHOLDER_URLS = ("http://gpu-box:7801", "http://localhost:7801")
COMFYUI_URLS = ("http://gpu-box:8188", "http://localhost:8188")
TEST_TOKEN = "doc-script-token-0123456789"
# What a rotted script prints even when its last command succeeds.
ROT = ("Traceback", "command not found", "Usage: asset-generator", "No such option")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    text: str
    skipped: str | None  # the reason, for a block marked not run
    shell: str = "bash"

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def comfyui(self) -> bool:
        """A block about ComfyUI: it runs against the ComfyUI emulator."""
        return any(url in self.text for url in COMFYUI_URLS)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CANCEL_COMMAND.md", *sorted((ROOT / "docs").glob("*.md"))]


def _cron_commands(lines: list[str]) -> str:
    """The commands of crontab lines: each without its five time fields."""
    commands = [
        line.split(None, 5)[5]
        for line in lines
        if line.strip() and not line.lstrip().startswith("#") and len(line.split(None, 5)) == 6
    ]
    return "\n".join(commands) + "\n"


def bash_blocks(path: Path) -> list[Block]:
    """The ```bash and ```cron blocks of ``path``, each with its reason not to run, if any."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        fence = lines[index].strip()
        if fence.startswith("```") and fence[3:].strip() in ("bash", "cron"):
            end = next(j for j in range(index + 1, len(lines)) if lines[j].strip() == "```")
            before = lines[index - 1].strip() if index > 0 else ""
            marked = NOT_RUN.match(before)
            body = lines[index + 1 : end]
            cron = fence[3:].strip() == "cron"
            text = _cron_commands(body) if cron else "\n".join(body) + "\n"
            reason = marked["reason"] if marked else None
            blocks.append(Block(path, index + 1, text, reason, "sh" if cron else "bash"))
            index = end
        elif fence.startswith("```"):
            # Skip other fenced blocks whole: a ```bash inside a ```text block is not code.
            index = next(
                (j for j in range(index + 1, len(lines)) if lines[j].strip() == "```"), index
            )
        index += 1
    return blocks


ALL_BLOCKS = [block for path in doc_files() for block in bash_blocks(path)]
RUN_BLOCKS = [block for block in ALL_BLOCKS if block.skipped is None]


def run_script(
    text: str, url: str, cwd: Path, shell: str = "bash"
) -> subprocess.CompletedProcess[str]:
    for placeholder in (*PLACEHOLDER_URLS, *COMFYUI_URLS):
        text = text.replace(placeholder, url)
    env = dict(os.environ)  # the autouse fixture has isolated HOME and the XDG dirs
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["ASSET_GENERATOR_API_URL"] = url
    env["TOKEN"] = TEST_TOKEN
    script = cwd / "doc-script.sh"
    script.write_text(text, encoding="utf-8")
    return subprocess.run(
        [shell, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def block_containing(path: str, needle: str) -> Block:
    (found,) = [b for b in RUN_BLOCKS if b.path == ROOT / path and needle in b.text]
    return found


def test_the_docs_have_scripts_and_every_skip_says_why() -> None:
    names = {b.path.name for b in RUN_BLOCKS}
    assert {"README.md", "CANCEL_COMMAND.md"} <= names
    assert len(RUN_BLOCKS) >= 8
    assert len([b for b in RUN_BLOCKS if b.shell == "sh"]) >= 2
    for block in ALL_BLOCKS:
        assert block.skipped is None or block.skipped.strip(), block.name


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.name)
def test_doc_script_runs(block: Block, emulator_factory, cli: Runner, tmp_path: Path) -> None:
    if block.comfyui:
        with ComfyEmulator(base_dir=tmp_path / "comfy") as comfy:
            done = run_script(block.text, comfy.url, cli.cwd, block.shell)
    else:
        done = run_script(block.text, emulator_factory().url, cli.cwd, block.shell)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{block.name} exited {done.returncode}:\n{output}"
    for sign in ROT:
        assert sign not in output, f"{block.name} printed {sign!r}:\n{output}"


def test_the_cleanup_script_logs_the_real_exit_code(cli: Runner, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    block = block_containing("CANCEL_COMMAND.md", "cancel failed (exit")
    done = run_script(block.text, dead, cli.cwd)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "cancel failed (exit 1)"
    assert done.stderr.startswith("failed to get session: cannot connect")


def test_the_loop_idiom_survives_spaces_in_file_names(emulator: Emulator, cli: Runner) -> None:
    block = block_containing("README.md", "while IFS= read -r f")
    done = run_script(block.text, emulator.url, cli.cwd)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        match = re.fullmatch(r"saved: (out/a lighthouse at dusk-\d+\.png) \((\d+) bytes\)", line)
        assert match, line
        saved = cli.cwd / match[1]
        assert saved.stat().st_size == int(match[2]) > 0
