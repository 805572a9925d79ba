"""``python -m asset_generator.demo``: the main job, end to end, against the bundled emulator.

Starts the emulator on a free loopback port, runs one generation to completion, starts a long
one, cancels it from a second process, and shows what each command printed and how it exited.
Everything happens in a temporary directory; nothing of yours is touched.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _say(text: str) -> None:
    print(f"\n{text}", flush=True)


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Quoted as a shell needs it, so each echoed command can be pasted and run as it stands.
    print(f"$ {shlex.join(['asset-generator', *args])}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "asset_generator", *args],
        env=env,
        text=True,
        capture_output=True,
        check=False,
    )
    _show(done.stdout, done.stderr, done.returncode)
    return done


def _show(stdout: str, stderr: str, code: int) -> None:
    for line in stdout.splitlines():
        print(f"  stdout| {line}")
    for line in stderr.splitlines():
        print(f"  stderr| {line}")
    print(f"  exit {code}", flush=True)


def _wait_running(state: Path, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            records = json.loads((state / "generations.json").read_text())["generations"]
        except (OSError, ValueError, KeyError):
            records = {}
        if any(r.get("status") == "running" for r in records.values()):
            return True
        time.sleep(0.05)
    return False


def main() -> int:
    from asset_generator.emulator import Emulator, EmulatorConfig

    with tempfile.TemporaryDirectory(prefix="asset-generator-demo-") as temp:
        root = Path(temp)
        emulator = Emulator(EmulatorConfig(backends=1, step_seconds=0.05)).start()
        try:
            env = {
                **os.environ,
                "ASSET_GENERATOR_API_URL": emulator.url,
                "XDG_STATE_HOME": str(root / "state"),
                "XDG_CONFIG_HOME": str(root / "config"),
                "NO_COLOR": "1",
            }
            _say(f"SwarmUI emulator listening on {emulator.url} (1 backend, 50 ms per step)")

            _say("1. A generation that runs to the end; the saved path goes to stdout:")
            _run(
                env,
                "generate",
                "image",
                "--prompt",
                "a lighthouse at dusk",
                "--steps",
                "10",
                "-o",
                str(root / "out"),
            )

            _say("2. A long generation, started in the background...")
            slow = [
                "generate",
                "image",
                "--prompt",
                "a very slow castle",
                "--steps",
                "400",
                "-o",
                str(root / "out"),
            ]
            print(f"$ {shlex.join(['asset-generator', *slow])} &")
            long_run = subprocess.Popen(
                [sys.executable, "-m", "asset_generator", *slow],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            if not _wait_running(root / "state" / "asset-generator"):
                print("the background generation never started running", file=sys.stderr)
                long_run.kill()
                return 1

            _say("...and cancelled from another process (SwarmUI: InterruptAll on its session):")
            _run(env, "cancel")
            out, err = long_run.communicate(timeout=30)
            _say("What the cancelled generation printed:")
            _show(out, err, long_run.returncode)

            _say("3. Nothing left to cancel: informational, exit 0, no request made:")
            _run(env, "cancel")
        finally:
            emulator.stop()
    _say("Done. Point ASSET_GENERATOR_API_URL at your SwarmUI server to do this for real.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
