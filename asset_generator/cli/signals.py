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
from collections.abc import Callable, Iterator
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


class _Deferral:
    """Whether a first signal must wait (``deferred``), and the one that is waiting."""

    depth = 0
    pending: int | None = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A first SIGINT/SIGTERM that arrives inside the block raises only once it is over.

    For a line printed above a live display: the signal's exception, raised inside a write
    to a terminal that is slow to read (EINTR), left half a redraw on the screen, and the
    last frame then climbed too few lines and left a copy of the bars behind. A second
    signal still exits at once.
    """
    _Deferral.depth += 1
    try:
        yield
    finally:
        _Deferral.depth -= 1
        if _Deferral.depth == 0 and _Deferral.pending is not None:
            signum, _Deferral.pending = _Deferral.pending, None
            raise Signalled(signum)


def install(on_second: Callable[[int], str | None] | None = None) -> dict[int, Any]:
    """SIGINT/SIGTERM raise Signalled; a second one exits at once.

    ``on_second(signum)`` may record what it can and return words to add to the last line.
    Returns the previous handlers, for ``restore``.
    """

    def first(signum: int, frame: Any) -> None:
        # A second signal while we are cleaning up exits at once.
        for sig in SIGNAL_EXIT:
            signal.signal(sig, second)
        if _Deferral.depth:
            _Deferral.pending = signum
            return
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
