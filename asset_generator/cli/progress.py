"""Live progress on stderr: a rich bar in a terminal; with -v elsewhere, one line per state change.

Only what the server reports is shown; nothing is simulated.
"""

from __future__ import annotations

import contextlib
from typing import Any

from asset_generator.cli.output import Output
from asset_generator.registry import SUCCEEDED
from asset_generator.saving import SavedImage
from asset_generator.steps import StepProgress


class SilentView:
    """``-q`` or ``--no-progress``: nothing at all."""

    def state(self, state: str, detail: str) -> None:
        pass

    def progress(self, steps: StepProgress) -> None:
        pass

    def image(self, saved: SavedImage, done: int, expected: int) -> None:
        pass

    def ended(self, how: str) -> None:
        """The run ended (``succeeded``, ``stopped``, ...): what the last frame says."""

    def close(self) -> None:
        pass


class PlainView(SilentView):
    """Not a terminal: one plain line per state change, no escape codes."""

    def __init__(self, output: Output, generation_id: str) -> None:
        self._output = output
        self._id = generation_id
        self._last = ""

    def state(self, state: str, detail: str) -> None:
        text = detail
        # Between "waiting for a backend" and "running" the server briefly reports plain
        # "queued" again; a log should read as progress, not flip-flop.
        if text == self._last or (text == "queued" and self._last not in ("", "running")):
            return
        self._last = text
        self._output.info(f"{self._id}: {text}")

    def image(self, saved: SavedImage, done: int, expected: int) -> None:
        self._last = ""
        self._output.info(f"{self._id}: image {done}/{expected} received")


# More running images than this share one summary line, so the live area stays small.
MAX_IMAGE_LINES = 6


class RichView(SilentView):
    """A terminal: an overall bar, and one bar per image the server is making right now.

    Saved paths and messages are printed above the bars (Output.live), never into them.
    """

    def __init__(self, output: Output, generation_id: str, expected: int) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.table import Column

        class Bars(Progress):
            def get_renderables(self) -> Any:
                # Three columns short of the terminal: the "^C" the terminal echoes after the
                # last bar must not wrap, or the last redraw climbs one line too few and
                # leaves a copy of the bars behind.
                table = self.make_tasks_table(self.tasks)
                live = getattr(self, "live", None)  # absent while Progress is being built
                if live is not None:
                    table.width = max(live.console.width - 3, 20)
                yield table

        self._progress: Any = Bars(
            TextColumn("{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=None),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}", table_column=Column(no_wrap=True)),
            TimeElapsedColumn(),
            console=output.stderr_console(),
            transient=False,
            expand=True,
            # Ten redraws a second keep the timers ticking between server messages.
            refresh_per_second=10,
        )
        self._output = output
        self._id = generation_id
        self._expected = expected
        self._state = "queued"
        self._percent = 0.0
        self._done = 0
        self._hidden = 0
        self._overall = self._progress.add_task(
            self._overall_text(), total=100, detail=self._saved_text(0)
        )
        self._images: dict[int, Any] = {}
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(output.live(self._progress.console))
        self._progress.start()

    def _overall_text(self) -> str:
        return f"{self._id} {self._state}"

    def _saved_text(self, done: int) -> str:
        more = f", {self._hidden} more running" if self._hidden > 0 else ""
        return f"{done}/{self._expected} saved{more}"

    def state(self, state: str, detail: str) -> None:
        self._state = detail
        self._progress.update(self._overall, description=self._overall_text())

    def progress(self, steps: StepProgress) -> None:
        self._percent = max(self._percent, steps.percent)
        shown = sorted(steps.running.values(), key=lambda i: i.index)
        self._hidden = max(len(shown) - MAX_IMAGE_LINES, 0)
        self._progress.update(
            self._overall, completed=self._percent, detail=self._saved_text(self._done)
        )
        for image in shown[:MAX_IMAGE_LINES]:
            task = self._images.get(image.index)
            if task is None:
                task = self._progress.add_task(
                    f"  image {image.index + 1}/{self._expected}", total=100, detail=""
                )
                self._images[image.index] = task
            step = steps.step_of(image)
            detail = "" if step is None else f"step {step}/{steps.steps}"
            self._progress.update(task, completed=image.fraction * 100, detail=detail)

    def image(self, saved: SavedImage, done: int, expected: int) -> None:
        task = self._images.pop(saved.batch_index, None)
        if task is not None:
            self._progress.remove_task(task)
        # Backends without live progress send only images: those alone move the bar.
        self._percent = max(self._percent, done / max(expected, 1) * 100)
        self._done = done
        if done >= expected:
            self._state = "done"
        self._progress.update(
            self._overall,
            completed=self._percent,
            description=self._overall_text(),
            detail=self._saved_text(done),
        )

    def ended(self, how: str) -> None:
        # The bars stay on the screen after the program exits: a run stopped or failed must
        # not read "running" there.
        if how != SUCCEEDED or self._state != "done":
            self._state = "done" if how == SUCCEEDED else how
            self._progress.update(self._overall, description=self._overall_text())

    def close(self) -> None:
        self._progress.stop()
        self._stack.close()


def make_view(output: Output, generation_id: str, expected: int, *, enabled: bool) -> SilentView:
    """The right view for where stderr goes and what the user asked."""
    if output.quiet or not enabled:
        return SilentView()
    if output.interactive():
        return RichView(output, generation_id, expected)
    # Not a terminal (scripts, cron): stderr stays for the one line that matters, the error,
    # so scripts can match its phrase (cli-contract §3); -v adds the state lines to the log.
    if output.verbose:
        return PlainView(output, generation_id)
    return SilentView()
