"""The pipeline's ETA (issue 19.12): it starts sensible and moves.

From measured steps and finished generations, never from assets skipped in no time, and it
counts down between finished assets. The unit tests drive the estimator with a fake clock;
the terminal test renders the real program under a pseudo-terminal (pyte).
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import pytest
from terminal import Terminal

from asset_generator.cli.pipeline import PipelineEta

ETA = re.compile(r"^assets (\d+)/(\d+) done\b.*\seta (-|\d+):(--|\d\d):(--|\d\d)\s*$")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_skipped_assets_do_not_make_the_run_look_fast() -> None:
    clock = Clock()
    # Ten assets, four already done (skipped without a request): six to generate, two at once.
    eta = PipelineEta(6, clock=clock)
    for index in range(4):
        eta.finished(index)  # skipped: never started
    assert eta.seconds_left() is None  # nothing measured yet: no guess
    eta.started(4)
    eta.started(5)
    clock.now += 3.0  # session set-up, queue, model load: before the first step
    assert eta.seconds_left() is None
    # Each asset does a step of 1/20 every half second: 10 s an asset, two at once.
    for step in range(1, 9):
        eta.progress(4, step / 20)
        eta.progress(5, step / 20)
        clock.now += 0.5
    # 6 assets, 0.8 of one done, two at once: about 26 s left.
    assert eta.seconds_left() == pytest.approx((6 - 0.8) * 10 / 2, rel=0.15)


def test_it_counts_down_between_finished_assets_and_reaches_zero() -> None:
    clock = Clock()
    eta = PipelineEta(2, clock=clock)
    eta.started(0)
    eta.progress(0, 0.05)
    seen = []
    for step in range(2, 21):
        clock.now += 0.5
        eta.progress(0, step / 20)
        seen.append(eta.seconds_left())
    assert all(a > b for a, b in itertools.pairwise(seen)), seen
    eta.finished(0)
    eta.started(1)
    clock.now += 0.5
    after_first = eta.seconds_left()
    assert after_first is not None and 8 < after_first < 11  # one more asset of ~10 s
    eta.progress(1, 1.0)
    eta.finished(1)
    assert eta.seconds_left() == 0


def _eta_frames(term: Terminal, timeout: float = 60) -> list[tuple[float, int, int, float | None]]:
    """(time, done, total, eta seconds or None) for each distinct overall line drawn."""
    frames: list[tuple[float, int, int, float | None]] = []
    last = None
    deadline = time.monotonic() + timeout
    assert term.process is not None
    while time.monotonic() < deadline and term.pump(0.02):
        for line in term.display():
            match = ETA.match(line)
            if match and line != last:
                last = line
                done, total, hours, minutes, seconds = match.groups()
                left = (
                    None if hours == "-" else int(hours) * 3600 + int(minutes) * 60 + int(seconds)
                )
                frames.append((time.monotonic(), int(done), int(total), left))
    return frames


@pytest.mark.parametrize(("columns", "lines"), [(80, 24), (120, 35)])
def test_the_eta_on_a_terminal_starts_sensible_and_counts_down(
    cli, emulator_factory, workdir: Path, columns: int, lines: int
) -> None:
    emu = emulator_factory(backends=2, step_seconds=0.05)
    env = {**cli.env(), "ASSET_GENERATOR_API_URL": emu.url}
    ids = [f"a{n}" for n in range(10)]
    spec = "params: {steps: 20}\nassets:\n  - name: g\n    assets:\n" + "".join(
        f"      - {{id: {i}, prompt: asset {i}}}\n" for i in ids
    )
    (workdir / "spec.yaml").write_text(spec)
    # A first run makes four of them; the rerun skips those four in no time, first.
    (workdir / "four.yaml").write_text(spec.split("      - {id: a4")[0])
    assert cli("pipeline", "four.yaml", "--base-seed", "5", "-q", env=env).code == 0

    term = Terminal(columns, lines)
    term.start("pipeline", "spec.yaml", "--base-seed", "5", "--parallel", "2", cwd=workdir, env=env)
    frames = _eta_frames(term)
    end = time.monotonic()
    assert term.finish() == 0
    assert frames, term.text()
    numeric = [(t, done, left) for t, done, total, left in frames if left is not None]
    assert numeric, frames
    # Starts sensible: the first estimate is not the "no time left" that four instant skips
    # would suggest, and is within a factor of three of the time that was really left
    # (give or take the display's whole seconds and a busy machine's jitter).
    first_time, _, first_left = numeric[0]
    really_left = end - first_time
    assert first_left >= 1, frames
    assert really_left / 3 - 1 <= first_left <= really_left * 3 + 2, (really_left, frames)
    # Moves: between two finished assets (same done count) it counts down at least once.
    assert any(
        done_a == done_b and left_b < left_a
        for (_, done_a, left_a), (_, done_b, left_b) in itertools.pairwise(numeric)
    ), frames
    assert "Traceback" not in term.raw.decode(errors="replace")
