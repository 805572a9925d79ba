"""Progress as a person means it: sampling steps of the images being made, never backwards.

SwarmUI's ``overall_percent`` counts ComfyUI workflow nodes, with different denominators for
progress and preview frames (protocol §4.5): it starts at a third before the first step, goes
backwards and can exceed 1. ``current_percent`` is the fraction of the running node, which for
the sampler is exactly steps done / steps. So each image's figure is the highest
``current_percent`` seen for it (later nodes report 0 again), 1 once the image has arrived, and
the generation's figure is the mean over the images asked for, kept monotonic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RunningImage:
    """One image the server is making now."""

    index: int
    fraction: float = 0.0
    started: float = field(default_factory=time.monotonic)


class StepProgress:
    """Monotonic progress of one generation of ``expected`` images (``steps`` each, if known)."""

    def __init__(self, expected: int, steps: int | None = None) -> None:
        self.expected = max(expected, 1)
        self.steps = steps if steps and steps > 0 else None
        self.running: dict[int, RunningImage] = {}
        self.saved: set[int] = set()
        self._best = 0.0

    def update(self, batch_index: int, current: float) -> None:
        """A ``gen_progress`` for ``batch_index`` with its ``current_percent``."""
        # A mini-grid (-1), intermediates (-11, -12, ...) and extra workflow outputs are not
        # among the images asked for (protocol §9.21).
        if not 0 <= batch_index < self.expected or batch_index in self.saved:
            return
        image = self.running.setdefault(batch_index, RunningImage(batch_index))
        image.fraction = max(image.fraction, min(max(current, 0.0), 1.0))
        self._advance()

    def finished(self, batch_index: int) -> None:
        """The image ``batch_index`` arrived."""
        if not 0 <= batch_index < self.expected:
            return
        self.running.pop(batch_index, None)
        self.saved.add(batch_index)
        self._advance()

    @property
    def done(self) -> int:
        return len(self.saved)

    @property
    def fraction(self) -> float:
        """0..1 over all images asked for; never decreases."""
        return self._best

    @property
    def percent(self) -> float:
        return round(self._best * 100, 1)

    def step_of(self, image: RunningImage) -> int | None:
        """The sampling step ``image`` is at, when the request named its step count."""
        return None if self.steps is None else round(image.fraction * self.steps)

    def _advance(self) -> None:
        made = len(self.saved) + sum(i.fraction for i in self.running.values())
        self._best = max(self._best, min(made / self.expected, 1.0))
