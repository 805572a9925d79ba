"""What a terminal shows: the real program under a pseudo-terminal, rendered with pyte.

Issue 10 items 1, 2 and 12: saved paths whole on their own lines above the live bars, bars
that never go backwards with a line per running image, and a `status --watch` that fits.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from terminal import Terminal

from asset_generator.steps import StepProgress

SIZES = pytest.mark.parametrize(("columns", "lines", "images"), [(80, 24, 4), (120, 35, 3)])
BAR = "━"
OVERALL = re.compile(r"^(gen_[0-9a-f]+) .*?(\d+)%")


def saved_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


@SIZES
def test_saved_paths_stay_whole_above_the_bars(
    cli, emulator_factory, workdir: Path, columns: int, lines: int, images: int
) -> None:
    emu = emulator_factory(backends=2, step_seconds=0.02)
    term = Terminal(columns, lines)
    term.start(
        "generate", "image", "-p", "a lighthouse at dusk", "-n", str(images), "--steps", "30",
        "-o", "out", cwd=workdir, env={**cli.env(), "ASSET_GENERATOR_API_URL": emu.url},
    )  # fmt: skip
    assert term.finish() == 0
    files = saved_files(workdir / "out")
    assert len(files) == images
    screen = term.display()
    for path in files:
        # Each path is a line of its own: not glued to a bar, not erased by a redraw.
        assert f"out/{path.name}" in screen, term.text()
    assert not any(BAR in line and "out/" in line for frame in term.frames for line in frame)
    # The last frame: the overall bar at 100 %, every image saved, below the paths.
    bar_line = next(i for i, line in enumerate(screen) if OVERALL.match(line))
    assert f"{images}/{images} saved" in screen[bar_line] and "100%" in screen[bar_line]
    assert bar_line > max(screen.index(f"out/{p.name}") for p in files)


def test_bars_never_go_backwards_and_show_each_running_image(
    cli, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=2, step_seconds=0.03)
    term = Terminal(80, 24)
    term.start(
        "generate", "image", "-p", "two at once", "-n", "3", "--steps", "20", "-o", "out",
        cwd=workdir, env={**cli.env(), "ASSET_GENERATOR_API_URL": emu.url},
    )  # fmt: skip
    assert term.finish() == 0
    overall = [
        int(m.group(2)) for frame in term.frames for line in frame if (m := OVERALL.match(line))
    ]
    assert overall and overall == sorted(overall), overall
    # Nothing done at step 0 (SwarmUI's node-based overall_percent starts at a third).
    assert overall[0] < 10 and overall[-1] == 100
    # Two backends: at some moment two images render, each on a line of its own.
    assert any(
        any("image 1/3" in line for line in frame) and any("image 2/3" in line for line in frame)
        for frame in term.frames
    )
    step = re.compile(r"image (\d)/3 .*?(\d+)% step (\d+)/20")
    seen: dict[str, list[int]] = {}
    for frame in term.frames:
        for line in frame:
            if m := step.search(line):
                seen.setdefault(m.group(1), []).append(int(m.group(3)))
    assert seen and all(steps == sorted(steps) for steps in seen.values()), seen


def test_step_progress_ignores_node_based_overall_and_never_goes_back() -> None:
    steps = StepProgress(expected=2, steps=10)
    assert steps.percent == 0
    steps.update(0, 0.5)
    steps.update(1, 0.2)
    assert steps.percent == 35
    # After the sampler, later ComfyUI nodes report current_percent 0 again.
    steps.update(0, 0.0)
    assert steps.percent == 35 and steps.step_of(steps.running[0]) == 5
    # A mini-grid (-1), an intermediate (-11) and an extra output are not images asked for.
    for index in (-1, -11, 7):
        steps.update(index, 1.0)
        steps.finished(index)
    assert steps.percent == 35 and steps.done == 0
    steps.finished(0)
    assert steps.percent == 60 and list(steps.running) == [1]
    steps.update(0, 0.1)  # a late frame for a saved image
    assert steps.percent == 60
    steps.finished(1)
    assert steps.percent == 100


def test_the_record_holds_steps_done_not_the_servers_node_count(
    cli, emulator, state_dir: Path
) -> None:
    from conftest import read_registry, wait_for

    # 200 steps of 0.02 s: the record is written about once a second while it runs.
    process = cli.start("generate", "image", "-p", "slow", "--steps", "200", "-o", "out")
    try:

        def running() -> dict | None:
            if not state_dir.joinpath("generations.json").exists():
                return None
            records = list(read_registry(state_dir)["generations"].values())
            live = [r for r in records if r["status"] == "running" and r["progress"] > 0]
            return live[0] if live else None

        assert wait_for(lambda: running() is not None)
        first = running()
        assert first is not None
        # SwarmUI's overall_percent says 50 % before the first step (4 of 8 nodes).
        assert first["progress"] < 30, first
        done = cli("cancel", first["id"])
        assert done.code == 0
        shown = re.search(r"was running, (\d+)%", done.stderr + done.stdout)
        assert shown and int(shown.group(1)) < 60, done
    finally:
        process.kill()
        process.wait()


# -- status --watch -------------------------------------------------------------------------


@pytest.fixture
def busy_server(cli, emulator_factory, workdir: Path):
    """Four backends, eight finished generations of ours and two running ones."""
    emu = emulator_factory(backends=4, step_seconds=0.05)
    cli.url = emu.url
    # At once, as the four backends allow: the fixture needs them finished, not in turn.
    finishing = [
        cli.start("generate", "image", "-p", f"finished {i}", "--steps", "1", "-o", "o")
        for i in range(8)
    ]
    for process in finishing:
        assert process.wait(timeout=60) == 0, process.communicate()
    model = "OfficialStableDiffusion/sd_xl_base_1.0.safetensors"
    running = [
        cli.start("generate", "image", "-p", f"running {i}", "--steps", "500", "-m", model)
        for i in range(2)
    ]
    yield emu
    for process in running:
        process.kill()
        process.wait()


def watch(cli, columns: int, lines: int) -> Terminal:
    term = Terminal(columns, lines)
    term.start("status", "--watch", cwd=cli.cwd, env=cli.env())
    assert term.run_until(lambda: "running 1" in term.text() and "running 0" in term.text())
    return term


def quit_watch(term: Terminal) -> None:
    import signal

    assert term.process is not None
    term.process.send_signal(signal.SIGINT)
    # Ctrl-C is the normal way out of --watch.
    assert term.finish() == 0
    assert "Traceback" not in term.raw.decode(errors="replace")


def test_watch_fits_the_terminal_as_status_shows_it(cli, busy_server) -> None:
    term = watch(cli, 120, 35)
    term.run_until(lambda: False, timeout=1.2)
    screen = term.display()
    quit_watch(term)
    assert screen[0] == "every 1 s; Ctrl-C to quit"
    assert screen[2].split() == ["server", busy_server.url]
    # Model names are shortened on their line, never folded into 8-character pieces.
    rows = [line for line in screen if "comfyui_selfstart" in line]
    assert len(rows) == 4 and all(" OfficialStableD" in line for line in rows)
    assert not any(
        line.strip().startswith(("Diffusion", "_base", "safetensors")) for line in screen
    )
    # Room for all: the five latest finished ones, as `status` shows them, and no cut.
    text = "\n".join(screen)
    assert "running 0" in text and "running 1" in text
    assert sum("finished" in line for line in screen) == 5
    assert not any("more generations" in line for line in screen)


@pytest.mark.parametrize(("columns", "lines"), [(80, 24), (100, 16), (80, 12), (60, 8), (80, 6)])
def test_a_short_pane_shows_our_running_work_first(
    cli, busy_server, columns: int, lines: int
) -> None:
    # Issue 19 item 13: "N more" while the server's static lines took the room.
    term = watch(cli, columns, lines)
    term.run_until(lambda: False, timeout=1.2)
    screen = term.display()
    quit_watch(term)
    filled = [line for line in screen if line]
    text = "\n".join(screen)
    # Our running work comes first, right below the table header (and the hint, if any).
    header = next(i for i, line in enumerate(filled) if line.startswith("GENERATION"))
    assert header <= 1, text
    assert {filled[header + 1].split()[-1], filled[header + 2].split()[-1]} == {"0", "1"}
    assert all(" running " in filled[header + n] for n in (1, 2)), text
    # The server is one line below our work, not its block of facts.
    assert not any(line.startswith(("server id", "user ", "features")) for line in screen)
    assert sum(line.startswith(busy_server.url) for line in screen) == 1, text
    # Nothing of ours is counted away while a blank line or the hint still takes room.
    cut = [line for line in filled if line.startswith("… ") and "more generations" in line]
    if cut:
        first, last = screen.index(filled[0]), screen.index(filled[-1])
        assert "" not in screen[first:last] and "Ctrl-C to quit" not in text, text
    if lines == 24:
        # Room for every generation `status` shows, and for the backends below the server.
        assert not cut and sum("finished" in line for line in screen) == 5
        assert screen[0] == "every 1 s; Ctrl-C to quit"
        assert sum("comfyui_selfstart" in line for line in screen) == 4
    else:
        assert len(filled) <= lines - 1


def test_a_short_pane_on_comfyui_shows_our_prompt_first(cli, workdir: Path, tmp_path) -> None:
    import json

    from asset_generator.emulator import ComfyEmulator

    with ComfyEmulator(base_dir=tmp_path / "comfy") as comfy:
        cli.url = comfy.url
        graph = {
            "1": {"class_type": "SlowSolidImage",
                  "inputs": {"steps": 400, "step_seconds": 0.05, "width": 16, "height": 16,
                             "red": 0.1, "green": 0.2, "blue": 0.3}},
            "2": {"class_type": "SaveImage",
                  "inputs": {"images": ["1", 0], "filename_prefix": "watch"}},
        }  # fmt: skip
        for name in ("quick a", "quick b", "quick c", "long one"):
            graph["1"]["inputs"]["steps"] = 400 if name == "long one" else 1
            (workdir / f"{name}.json").write_text(json.dumps(graph))
        for name in ("quick a", "quick b", "quick c"):
            assert cli("generate", "image", "--workflow", f"{name}.json", "-o", "o").code == 0
        running = cli.start("generate", "image", "--workflow", "long one.json", "-o", "o")
        try:
            term = Terminal(80, 8)
            term.start("status", "--watch", cwd=cli.cwd, env=cli.env())
            # Until the generating process has seen its prompt start, its row says queued
            # while ComfyUI's queue already says running (a moment; longer on a loaded machine).
            assert term.run_until(
                lambda: (
                    "1 running" in term.text()
                    and any("long one" in line and " running " in line for line in term.display())
                )
            )
            screen = term.display()
            quit_watch(term)
        finally:
            running.kill()
            running.wait()
    text = "\n".join(screen)
    filled = [line for line in screen if line]
    header = next(i for i, line in enumerate(filled) if line.startswith("GENERATION"))
    assert header <= 1 and "long one" in filled[header + 1] and " running " in filled[header + 1]
    # ComfyUI's line: version and the queue, how much of it is ours.
    (brief,) = [line for line in screen if line.startswith(comfy.url)]
    assert "version 0.3.64" in brief and "queue 1 running (1 ours)" in brief, text
    assert not any(line.startswith(("python", "pytorch", "DEVICE")) for line in screen)


def test_watch_leaves_no_stale_lines_after_a_resize(cli, busy_server) -> None:
    term = watch(cli, 120, 35)
    term.resize(60, 20)
    term.run_until(lambda: False, timeout=2.5)
    screen = term.display()
    quit_watch(term)
    text = "\n".join(screen)
    assert text.count("Ctrl-C to quit") == 1 and text.count(busy_server.url) == 1, text
    assert "running 0" in text or "running 1" in text


def test_watch_shows_the_restarted_servers_version(cli, emulator_factory, tmp_path) -> None:
    # Issue 19 item 7: a restart seen by --watch shows the new process's facts at once.
    sessions = tmp_path / "sessions.json"
    first = emulator_factory(sessions_file=sessions, version="0.9.8.1.GIT-old")
    cli.url = first.url
    term = Terminal(120, 35)
    term.start("status", "--watch", cwd=cli.cwd, env=cli.env())
    # The whole frame, not just its first lines: a frame is drawn in more than one write.
    assert term.run_until(
        lambda: (
            "0.9.8.1.GIT-old" in term.text()
            and any(line.startswith("server id") for line in term.display())
        )
    )
    old_id = next(line for line in term.display() if line.startswith("server id")).split()[-1]
    port = first.port
    first.stop()
    assert term.run_until(lambda: "reachable  no: " in term.text())
    second = emulator_factory(sessions_file=sessions, version="0.9.8.2.GIT-new", port=port)
    assert term.run_until(lambda: "0.9.8.2.GIT-new" in term.text(), timeout=10), term.text()
    term.run_until(lambda: False, timeout=2.5)
    screen = term.display()
    quit_watch(term)
    server_id = next(line for line in screen if line.startswith("server id")).split()[-1]
    assert server_id != old_id
    # One new session for the new process, then reused frame after frame (and after).
    assert second.sessions_created == 1
    assert cli("status", "-f", "json").json()["server_id"] == server_id
    assert second.sessions_created == 1


def test_a_typed_ctrl_c_leaves_one_copy_of_the_bars(cli, emulator_factory, workdir: Path) -> None:
    # At full width the echoed "^C" wrapped and the last redraw left the bars twice.
    # Image 3 starts once 1 and 2 are saved and runs 3 s: a loaded machine that shows its
    # bar late still types the Ctrl-C while it runs (at 1.5 s all three were saved once).
    emu = emulator_factory(backends=2, step_seconds=0.05)
    term = Terminal(80, 24)
    term.start(
        "generate", "image", "-p", "stop me", "-n", "3", "--steps", "60", "-o", "out", "-v",
        cwd=workdir, env={**cli.env(), "ASSET_GENERATOR_API_URL": emu.url},
    )  # fmt: skip
    # Typed once image 3 alone runs: a Ctrl-C as image 2 is being saved can leave its file
    # on disk uncounted (a race of its own, not what this test is about).
    assert term.run_until(lambda: "image 3/3" in term.text() and "2/3 saved" in term.text())
    term.type(b"\x03")
    assert term.finish() == 130
    screen = term.display()
    text = term.text()
    assert sum(bool(OVERALL.match(line)) for line in screen) == 1, text
    saved = saved_files(workdir / "out")
    assert 1 <= len(saved) < 3
    assert screen[-1] == "" and f"{len(saved)} of 3 saved; the server stopped the rest" in text
    # The bars left on the screen say the run stopped, not that it is running (item 13).
    overall = next(line for line in screen if OVERALL.match(line))
    assert overall.split()[1] == "stopped" and "running" not in overall, text
    # -v lines are whole lines above the bars too.
    assert any(line.startswith("> GET /View/") for line in screen), text
    assert not any(BAR in line and "> " in line for frame in term.frames for line in frame)


def test_many_parallel_images_keep_the_live_area_small(
    cli, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=8, step_seconds=0.03)
    term = Terminal(80, 24)
    term.start(
        "generate", "image", "-p", "wide", "-n", "8", "--steps", "20", "-o", "out",
        cwd=workdir, env={**cli.env(), "ASSET_GENERATOR_API_URL": emu.url},
    )  # fmt: skip
    assert term.finish() == 0
    image_lines = [sum("  image " in line for line in frame) for frame in term.frames]
    assert max(image_lines) == 6
    assert any("2 more running" in line for frame in term.frames for line in frame)
    assert len(saved_files(workdir / "out")) == 8


@SIZES
def test_comfyui_prompts_show_one_at_a_time_and_never_go_backwards(
    cli, workdir: Path, tmp_path: Path, columns: int, lines: int, images: int
) -> None:
    # ComfyUI runs one prompt at a time: the overall bar counts prompts, the line below it
    # the running prompt's sampler steps (cli-contract §7 "Progress").
    from asset_generator.emulator import ComfyEmulator

    with ComfyEmulator(base_dir=tmp_path / "comfy", step_seconds=0.02) as comfy:
        term = Terminal(columns, lines)
        term.start(
            "generate", "image", "-p", "a lighthouse at dusk", "--model", "random-sd15",
            "-n", str(images), "--steps", "20", "--seed", "5", "-o", "out",
            cwd=workdir, env={**cli.env(), "ASSET_GENERATOR_API_URL": comfy.url},
        )  # fmt: skip
        assert term.finish() == 0
    files = saved_files(workdir / "out")
    assert [p.name for p in files] == [f"a lighthouse at dusk-{5 + i}.png" for i in range(images)]
    overall = [
        int(m.group(2)) for frame in term.frames for line in frame if (m := OVERALL.match(line))
    ]
    assert overall and overall == sorted(overall) and overall[-1] == 100, overall
    # Never two prompts running at once, and each one's steps only go forward.
    step = re.compile(rf"image (\d)/{images} .*?(\d+)% step (\d+)/20")
    seen: dict[str, list[int]] = {}
    for frame in term.frames:
        running = [m for line in frame if (m := step.search(line))]
        assert len(running) <= 1, frame
        for m in running:
            seen.setdefault(m.group(1), []).append(int(m.group(3)))
    assert seen and all(steps == sorted(steps) for steps in seen.values()), seen
    assert any(f"running prompt 2 of {images}" in line for frame in term.frames for line in frame)
    screen = term.display()
    bar_line = next(i for i, line in enumerate(screen) if OVERALL.match(line))
    assert "done" in screen[bar_line] and f"{images}/{images} saved" in screen[bar_line]
    assert bar_line > max(screen.index(f"out/{p.name}") for p in files)
    assert not any(BAR in line and "out/" in line for frame in term.frames for line in frame)
