"""Live progress on stderr: a rich bar in a terminal, one line per state change otherwise.

Only what the server reports is shown; nothing is simulated.
"""

from __future__ import annotations

from typing import Any

from asset_generator.cli.output import Output
from asset_generator.generation import SavedImage, View
from asset_generator.swarm.client import Counters


def _describe(state: str, counters: Counters) -> str:
    if state == "running":
        return "running"
    if state == "loading model":
        return "waiting for a model to load"
    if counters.waiting_backends:
        return "queued, waiting for a backend"
    return "queued"


class SilentView:
    """``-q`` or ``--no-progress``: nothing at all."""

    def state(self, state: str, counters: Counters) -> None:
        pass

    def progress(self, overall: float, current: float, done: int, expected: int) -> None:
        pass

    def image(self, saved: SavedImage, done: int, expected: int) -> None:
        pass

    def close(self) -> None:
        pass


class PlainView(SilentView):
    """Not a terminal: one plain line per state change, no escape codes."""

    def __init__(self, output: Output, generation_id: str) -> None:
        self._output = output
        self._id = generation_id
        self._last = ""

    def state(self, state: str, counters: Counters) -> None:
        text = _describe(state, counters)
        # Between "waiting for a backend" and "running" the server briefly reports plain
        # "queued" again; a log should read as progress, not flip-flop.
        if text == self._last or (text == "queued" and self._last not in ("", "running")):
            return
        self._last = text
        self._output.info(f"{self._id}: {text}")

    def image(self, saved: SavedImage, done: int, expected: int) -> None:
        self._last = ""
        self._output.info(f"{self._id}: image {done}/{expected} received")


class RichView(SilentView):
    """A terminal: overall and current-image bars with the server's own state."""

    def __init__(self, output: Output, generation_id: str, expected: int) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress: Any = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=output.stderr_console(),
            transient=False,
        )
        self._id = generation_id
        self._overall = self._progress.add_task(f"{generation_id} queued", total=100)
        self._current = self._progress.add_task(f"image 1/{expected}", total=100)
        self._progress.start()

    def state(self, state: str, counters: Counters) -> None:
        self._progress.update(self._overall, description=f"{self._id} {_describe(state, counters)}")

    def progress(self, overall: float, current: float, done: int, expected: int) -> None:
        self._progress.update(self._overall, completed=overall * 100)
        self._progress.update(
            self._current,
            completed=min(max(current, 0.0), 1.0) * 100,
            description=f"image {min(done + 1, expected)}/{expected}",
        )

    def image(self, saved: SavedImage, done: int, expected: int) -> None:
        self._progress.update(self._overall, completed=done / expected * 100)
        self._progress.update(self._current, completed=100, description=f"image {done}/{expected}")

    def close(self) -> None:
        self._progress.stop()


def make_view(output: Output, generation_id: str, expected: int, *, enabled: bool) -> View:
    """The right view for where stderr goes and what the user asked."""
    if output.quiet or not enabled:
        return SilentView()
    if output.interactive():
        return RichView(output, generation_id, expected)
    return PlainView(output, generation_id)
