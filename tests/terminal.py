"""Run the real program under a pseudo-terminal and see what a person would see (pyte)."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyte
from conftest import PROGRAM


@dataclass
class Terminal:
    """A pseudo-terminal of ``columns`` x ``lines`` with a program on stdin/stdout/stderr."""

    columns: int
    lines: int
    process: subprocess.Popen[bytes] | None = None
    raw: bytearray = field(default_factory=bytearray)
    frames: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.screen = pyte.Screen(self.columns, self.lines)
        self.stream = pyte.ByteStream(self.screen)
        self.master, self.slave = os.openpty()
        self.resize(self.columns, self.lines, signal_it=False)

    def resize(self, columns: int, lines: int, *, signal_it: bool = True) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self.columns, self.lines = columns, lines
        self.screen.resize(lines, columns)
        if signal_it and self.process is not None:
            self.process.send_signal(signal.SIGWINCH)

    def start(self, *args: str, cwd: Path, env: dict[str, str]) -> None:
        clean = {k: v for k, v in env.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
        clean["TERM"] = "xterm-256color"
        self.process = subprocess.Popen(
            [*PROGRAM, *args],
            cwd=cwd,
            env=clean,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
            # The pty becomes the program's controlling terminal, so a typed Ctrl-C
            # (``type("\x03")``) is a SIGINT echoed as "^C", as in a real terminal.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def pump(self, seconds: float = 0.05) -> bool:
        """Read what the program drew for up to ``seconds``; False once it has gone."""
        ready, _, _ = select.select([self.master], [], [], seconds)
        if not ready:
            return self.process is not None and self.process.poll() is None
        try:
            chunk = os.read(self.master, 65536)
        except OSError:
            return False
        if not chunk:
            return False
        self.raw += chunk
        self.stream.feed(chunk)
        self.frames.append(self.display())
        return True

    def run_until(self, done: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return True
            self.pump()
        return done()

    def finish(self, timeout: float = 30.0) -> int:
        """Read until the program exits; its exit code."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self.pump()
        code = self.process.wait(timeout=max(deadline - time.monotonic(), 1))
        # Whatever is still in the pty buffer after the exit.
        while self.pump(0.05):
            pass
        os.close(self.slave)
        os.close(self.master)
        return code

    def display(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.display())
