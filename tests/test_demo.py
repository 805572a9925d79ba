"""The README's first command: the demo a newcomer runs must work and read sensibly."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path


def test_the_demo_generates_cancels_and_explains(workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asset_generator.demo"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Traceback" not in out + done.stderr
    # The three acts: a finished image, a cancel from another process, nothing left.
    assert ".png" in out
    assert "cancelled gen_" in out and "Generation session interrupted." in out
    assert "no active generation" in out
    # Each echoed command pastes into a shell as it was run: the prompts stay one word.
    commands = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("$ ")]
    assert commands[0][:5] == [
        "asset-generator",
        "generate",
        "image",
        "--prompt",
        "a lighthouse at dusk",
    ]
    assert commands[1][4] == "a very slow castle" and commands[1][-1] == "&"
