"""SIGINT/SIGTERM for commands that run work on the server (generate, pipeline, mcp).

The first signal raises ``Signalled`` in the main thread, so the command stops its own
server-side work (bounded) before exiting 130 / 143. A second one exits at once, after
``on_second`` had a moment to record what it can.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
# How long stopping our own work on the server may take after a signal or a failure.
INTERRUPT_BOUND_SECONDS = 3.0


class Signalled(BaseException):
    """Raised in the main thread by our SIGINT/SIGTERM handler."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT.get(signal.Signals(self.signum), 130)


def install(on_second: Callable[[int], str | None] | None = None) -> dict[int, Any]:
    """SIGINT/SIGTERM raise Signalled; a second one exits at once.

    ``on_second(signum)`` may record what it can and return words to add to the last line.
    Returns the previous handlers, for ``restore``.
    """

    def first(signum: int, frame: Any) -> None:
        # A second signal while we are cleaning up exits at once.
        for sig in SIGNAL_EXIT:
            signal.signal(sig, second)
        raise Signalled(signum)

    def second(signum: int, frame: Any) -> None:
        line = "interrupted again: exiting without waiting"
        if on_second is not None:
            more = on_second(signum)
            if more:
                line += f"; {more}"
        with contextlib.suppress(OSError, AttributeError, ValueError):
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        os._exit(SIGNAL_EXIT.get(signal.Signals(signum), 130))

    previous = {}
    for sig in SIGNAL_EXIT:
        previous[sig] = signal.signal(sig, first)
    return previous


def restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
