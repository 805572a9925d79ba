"""Start-up, round-trip and memory figures for asset-generator, each next to its floor.

Plain Python, no pytest: ``python benchmarks/run.py`` starts the emulator on loopback and
prints a table of medians over several runs. Each figure is compared with a floor measured in
the same run on the same interpreter: ``python -c "import click"`` for help and completion,
``python -c "import click, platformdirs"`` for a cancel with nothing to do, and a stdlib
``http.client`` script making the same number of requests for the network commands. It also
prints how many HTTP requests each command made (the emulator counts them), the peak memory of
a 50-image download, how long `generate image` lives after its last path, the pipeline's wall,
busy and peak-memory figures on SwarmUI and its queue depth on ComfyUI, and whether each
budget of PERFORMANCE.md holds. Tests never time anything; this script is where time is
measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asset_generator.emulator import Emulator, EmulatorConfig  # noqa: E402

PROGRAM = [str(Path(sys.executable).with_name("asset-generator"))]
if not Path(PROGRAM[0]).exists():
    PROGRAM = [sys.executable, "-m", "asset_generator"]

HTTP_FLOOR = """
import http.client, json, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection(host, port, timeout=10)
body = json.dumps({}).encode()
for _ in range(count):
    conn.request("POST", "/API/GetNewSession", body, {"Content-Type": "application/json"})
    conn.getresponse().read()
"""

# The floor of a network command on this project's own stack (the issue 13 decision): the
# imports it cannot avoid and the same requests, made with httpx.
HTTPX_FLOOR = """
import click, platformdirs, httpx, json, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
    for _ in range(count):
        client.post("/API/GetNewSession", json={}).read()
"""

# ComfyUI's floors: the same imports and the same number of requests, on a route ComfyUI has.
COMFY_HTTPX_FLOOR = """
import click, platformdirs, httpx, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
    for _ in range(count):
        client.get("/queue").read()
"""

COMFY_HTTP_FLOOR = """
import http.client, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection(host, port, timeout=10)
for _ in range(count):
    conn.request("GET", "/queue")
    conn.getresponse().read()
"""
COMFY_MODEL = "random-sd15.safetensors"

PIPELINE_ASSETS = 40
PIPELINE_BACKENDS = 4
PIPELINE_STEPS = 10
PIPELINE_STEP_SECONDS = 0.05


COMFY_ASSETS = 20
COMFY_STEPS = 10
COMFY_STEP_SECONDS = 0.03
# Against a real ComfyUI (--comfyui-url): a CPU peer runs a 64x64 image of few steps in seconds.
REAL_STEPS = 4


def _execution_span(entry: dict) -> tuple[float, float]:
    """(start, end) of one prompt in ComfyUI's history, in seconds (its timestamps are ms)."""
    stamps = {event: data.get("timestamp") for event, data in entry["status"]["messages"]}
    end = next(stamps[e] for e in ("execution_success", "execution_error") if e in stamps)
    return stamps["execution_start"] / 1000, end / 1000


def _queue_figures(wall: float, spans: list[tuple[float, float]]) -> tuple[float, ...]:
    """(wall, ideal, mean gap, largest gap, prompts) of one pipeline run on ComfyUI."""
    ideal = sum(end - start for start, end in spans)
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(spans)]
    return wall, ideal, statistics.mean(gaps), max(gaps), len(spans)


def _queue_table(
    title: str, figures: dict[str, tuple[float, ...]], budget: float = 0.05
) -> list[str]:
    """The queue-depth table: the default --parallel beside --parallel 1."""
    wall, ideal, gap, worst, count = figures["default"]
    serial = figures["serial"]
    return [
        f"{title} ({count} prompts run):",
        "",
        "| figure | default --parallel (2) | --parallel 1 | budget | holds |",
        "| --- | ---: | ---: | --- | --- |",
        f"| gap between prompts, mean | {gap * 1000:.0f} ms | {serial[2] * 1000:.0f} ms | "
        f"<= {budget * 1000:.0f} ms | {'yes' if gap <= budget else 'NO'} |",
        f"| gap between prompts, largest | {worst * 1000:.0f} ms | {serial[3] * 1000:.0f} ms | | |",
        f"| ideal (sum of the prompts' execution) | {ideal:.2f} s | {serial[1]:.2f} s | | |",
        f"| wall (the whole command) | {wall:.2f} s | {serial[0]:.2f} s | | |",
        f"| wall / ideal | {wall / ideal:.2f}x | {serial[0] / serial[1]:.2f}x | | |",
    ]


def _all_queued_at_once(url: str, graph: dict, count: int) -> tuple[float, ...]:
    """The floor on a real ComfyUI: ``count`` copies of ``graph`` (new seeds) queued at once."""
    import httpx

    sampler = next(key for key, node in graph.items() if "seed" in node.get("inputs", {}))
    client_id = str(uuid.uuid4())
    base = int(time.time())
    started = time.perf_counter()
    ids = []
    for i in range(count):
        copy = json.loads(json.dumps(graph))
        copy[sampler]["inputs"]["seed"] = base + i
        answer = httpx.post(
            f"{url}/prompt", json={"prompt": copy, "client_id": client_id}, timeout=30
        )
        answer.raise_for_status()
        ids.append(answer.json()["prompt_id"])
    while True:
        history = httpx.get(f"{url}/history", timeout=30).json()
        if all(i in history for i in ids):
            break
        time.sleep(0.5)
    wall = time.perf_counter() - started
    return _queue_figures(wall, sorted(_execution_span(history[i]) for i in ids))


def pipeline_spec(count: int) -> str:
    """A one-group spec of ``count`` assets (every asset the same step count)."""
    items = "\n".join(f"      - {{id: a{i:03d}, prompt: 'asset {i}'}}" for i in range(count))
    return f"assets:\n  - name: Bench\n    output_dir: bench\n    assets:\n{items}\n"


@dataclass
class Row:
    name: str
    seconds: float
    floor_name: str
    floor: float
    requests: int | None = None
    budget: str = ""
    holds: bool | None = None
    # Network commands: the median with the emulator adding 50 ms to every answer.
    slow: float | None = None
    # The stdlib http.client floor, shown beside an httpx floor so the stack's cost shows.
    stdlib_floor: float | None = None

    @property
    def ratio(self) -> float:
        return self.seconds / self.floor if self.floor else float("nan")


def paired_medians(
    run: Callable[[], None], floor: Callable[[], None], repeat: int
) -> tuple[float, float]:
    """Medians of ``run`` and ``floor`` timed alternately, so both meet the same noise.

    On a shared machine (a VM with busy neighbours) timings drift over seconds; measuring
    a command and its floor in separate blocks would turn that drift into a false ratio.
    """
    run()
    floor()
    runs, floors = [], []
    for _ in range(repeat):
        for target, samples in ((floor, floors), (run, runs)):
            started = time.perf_counter()
            target()
            samples.append(time.perf_counter() - started)
    return statistics.median(runs), statistics.median(floors)


def run_quiet(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=False)


class Bench:
    def __init__(self, repeat: int) -> None:
        self.repeat = repeat
        self.temp = Path(tempfile.mkdtemp(prefix="ag-bench-"))
        # Byte-code caching as on a user's machine: with PYTHONDONTWRITEBYTECODE every run
        # would recompile our modules (but not click's, which pip compiled), skewing ratios.
        inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env = {
            **inherited,
            "XDG_STATE_HOME": str(self.temp / "state"),
            "XDG_CONFIG_HOME": str(self.temp / "config"),
            "NO_COLOR": "1",
        }
        self.rows: list[Row] = []
        self.stdlib_floors: list[float] = []
        self.pipeline_lines: list[str] = []
        self.leaving_lines: list[str] = []
        self.comfy_lines: list[str] = []
        self.comfy_generate_lines: list[str] = []
        self.comfy_real_lines: list[str] = []

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_quiet([*PROGRAM, *args], {**self.env, **(env or {})})

    def python(self, code: str, *args: str) -> None:
        run_quiet([sys.executable, "-c", code, *args], self.env)

    # -- local commands -------------------------------------------------------------------------

    def local(self) -> None:
        def click_floor() -> None:
            self.python("import click")

        help_time, floor = paired_medians(lambda: self.cli("--help"), click_floor, self.repeat)
        self.rows.append(
            Row("--help", help_time, "import click", floor, 0, "<= 1.5x", help_time <= 1.5 * floor)
        )
        completion_env = {
            "_ASSET_GENERATOR_COMPLETE": "bash_complete",
            "COMP_WORDS": "asset-generator ca",
            "COMP_CWORD": "1",
        }
        tab, floor = paired_medians(lambda: self.cli(env=completion_env), click_floor, self.repeat)
        self.rows.append(
            Row("Tab completion", tab, "import click", floor, 0, "<= 1.5x", tab <= 1.5 * floor)
        )
        with Emulator(EmulatorConfig()) as emu:
            env = {"ASSET_GENERATOR_API_URL": emu.url}
            idle, floor = paired_medians(
                lambda: self.cli("cancel", "-q", env=env),
                lambda: self.python("import click, platformdirs"),
                self.repeat,
            )
            requests = len(emu.requests)
        self.rows.append(
            Row(
                "cancel -q (nothing active)",
                idle,
                "import click, platformdirs",
                floor,
                requests,
                "0 requests, <= 1.5x",
                requests == 0 and idle <= 1.5 * floor,
            )
        )

    # -- network commands -----------------------------------------------------------------------

    def network(self, latency: float = 0.0) -> dict[str, tuple[float, int, float]]:
        """Median time, request count and (if measured alongside) floor of each network
        command at a given added latency."""
        figures: dict[str, tuple[float, int, float]] = {}
        # The generation to cancel ticks twice a second, so that it and the emulator do not
        # compete with the measured `cancel` for the CPU.
        with Emulator(EmulatorConfig(step_seconds=0.5, latency_seconds=latency)) as emu:
            env = {"ASSET_GENERATOR_API_URL": emu.url}
            # Warm the cache: a session exists and the InterruptGeneration probe is done.
            self.cli("cancel", "--all", "-q", env=env)
            count = self._cancel_running(emu, env)[1]

            runs = [self._cancel_running(emu, env, max(count, 1)) for _ in range(self.repeat)]
            figures["cancel -q (1 running)"] = (
                statistics.median(seconds for seconds, _, _ in runs),
                round(statistics.median(count for _, count, _ in runs)),
                statistics.median(floor for _, _, floor in runs),
            )
        with Emulator(EmulatorConfig(step_seconds=0.01, latency_seconds=latency)) as emu:
            env = {"ASSET_GENERATOR_API_URL": emu.url}
            self.cli("status", "-q", env=env)  # a cached session, as in a status loop
            out = str(self.temp / "out")
            commands = {
                "status -f json": ["status", "-f", "json"],
                "generate image (1 step)": [
                    *("generate", "image", "-p", "bench", "--steps", "1"),
                    *("-q", "-o", out, "--overwrite"),
                ],
            }
            for name, args in commands.items():
                emu.reset_log()
                self.cli(*args, env=env)
                count = len(emu.requests)
                seconds, floor = paired_medians(
                    lambda args=args: self.cli(*args, env=env),
                    lambda count=count: self.python(
                        HTTP_FLOOR, "127.0.0.1", str(emu.port), str(max(count, 1))
                    ),
                    self.repeat,
                )
                figures[name] = (seconds, count, floor)
        return figures

    def _cancel_running(
        self, emu: Emulator, env: dict[str, str], floor_requests: int = 1
    ) -> tuple[float, int, float]:
        """Start a long generation, wait until it runs, time `cancel -q`, reap it.

        The floor is timed in the same conditions (the generation running beside it), just
        before the cancel: the generating process and the emulator share the CPU with both.
        """
        process = subprocess.Popen(
            [*PROGRAM, "generate", "image", "-p", "victim", "--steps", "500", "-q"],
            env={**self.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_running(process.pid)
        floor_started = time.perf_counter()
        self.python(HTTPX_FLOOR, "127.0.0.1", str(emu.port), str(floor_requests))
        floor = time.perf_counter() - floor_started
        stdlib_started = time.perf_counter()
        self.python(HTTP_FLOOR, "127.0.0.1", str(emu.port), str(floor_requests))
        self.stdlib_floors.append(time.perf_counter() - stdlib_started)
        window_start = time.monotonic()
        started = time.perf_counter()
        self.cli("cancel", "-q", env=env)
        elapsed = time.perf_counter() - started
        window_end = time.monotonic()
        process.wait(timeout=30)
        # The generation is only reading its socket meanwhile: these are the cancel's requests.
        count = sum(1 for r in emu.requests if window_start <= r.time <= window_end)
        return elapsed, count, floor

    def network_rows(self) -> None:
        plain = self.network()
        slow = self.network(latency=0.05)
        for name, (seconds, count, floor) in plain.items():
            budget, holds = self._budget(name, seconds, floor, count, slow[name][0])
            httpx_floor = name.startswith("cancel")
            self.rows.append(
                Row(
                    name,
                    seconds,
                    f"{'httpx' if httpx_floor else 'http.client'} x{max(count, 1)}",
                    floor,
                    count,
                    budget,
                    holds,
                    slow[name][0],
                    statistics.median(self.stdlib_floors) if httpx_floor else None,
                )
            )

    @staticmethod
    def _budget(
        name: str, seconds: float, floor: float, count: int, slow: float
    ) -> tuple[str, bool]:
        serial_ok = slow <= count * 0.05 + seconds + 0.06
        if name.startswith("cancel"):
            return (
                "2 requests, <= 1.3x httpx floor, +50ms/request",
                count <= 2 and seconds <= 1.3 * floor and serial_ok,
            )
        if name.startswith("status"):
            return "<= 3 requests, +50ms/request", count <= 3 and serial_ok
        return "+50ms/request", serial_ok

    # -- leaving ----------------------------------------------------------------------------------

    def exit_after_path(self) -> None:
        """How long `generate image` lives after printing its last path, SwarmUI's 2 s grace on.

        The time from the path line on stdout to the process's exit, one image of one step,
        a cached idle session. SwarmUI holds the socket 2 s after ``socket_intention: close``;
        the client leaves with a Close frame instead of waiting it out, and the emulator logs
        what SwarmUI would (nothing for a clean close).
        """
        gaps: list[float] = []
        with Emulator(EmulatorConfig(step_seconds=0.01, ws_close_grace_seconds=2.0)) as emu:
            env = {**self.env, "ASSET_GENERATOR_API_URL": emu.url}
            args = [*PROGRAM, "generate", "image", "-p", "leave", "--steps", "1",
                    "-o", str(self.temp / "leave"), "--overwrite"]  # fmt: skip
            for index in range(self.repeat + 1):
                process = subprocess.Popen(
                    args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
                )
                assert process.stdout is not None
                process.stdout.readline()
                printed = time.perf_counter()
                process.wait()
                if index:  # the first run warms the session cache up
                    gaps.append(time.perf_counter() - printed)
            errors = emu.server_errors()
            sessions = emu.sessions_created
        median, worst = statistics.median(gaps), max(gaps)
        self.leaving_lines = [
            "`generate image`: from its last path on stdout to its exit (SwarmUI's 2 s socket "
            "close grace kept by the emulator):",
            "",
            "| figure | value | budget | holds |",
            "| --- | ---: | --- | --- |",
            f"| last path -> exit, median of {len(gaps)} | {median * 1000:.0f} ms | <= 300 ms | "
            f"{'yes' if median <= 0.3 else 'NO'} |",
            f"| last path -> exit, slowest | {worst * 1000:.0f} ms | | |",
            f"| errors SwarmUI would log | {len(errors)} | 0 | {'yes' if not errors else 'NO'} |",
            f"| sessions created for {len(gaps) + 1} runs | {sessions} | 1 | "
            f"{'yes' if sessions == 1 else 'NO'} |",
        ]

    # -- ComfyUI --------------------------------------------------------------------------------

    def comfy_rows(self) -> None:
        """`cancel -q` (one running) and `status -f json` on the ComfyUI emulator, each against
        its floor as for SwarmUI, with and without 50 ms added to every answer."""
        plain = self._comfy_network()
        slow = self._comfy_network(latency=0.05)
        for name, (seconds, count, floor, stdlib) in plain.items():
            budget, holds = self._budget(
                name.removeprefix("ComfyUI "), seconds, floor, count, slow[name][0]
            )
            self.rows.append(
                Row(
                    name,
                    seconds,
                    f"httpx x{max(count, 1)}",
                    floor,
                    count,
                    budget,
                    holds,
                    slow[name][0],
                    stdlib,
                )
            )

    def _comfy_network(self, latency: float = 0.0) -> dict[str, tuple[float, int, float, float]]:
        """Median time, request count, httpx floor and stdlib floor of each ComfyUI command."""
        from asset_generator.emulator import ComfyEmulator

        figures: dict[str, tuple[float, int, float, float]] = {}
        base = self.temp / "comfy-server"
        # A step every half second: the generation to cancel and the emulator stay off the
        # CPU the measured `cancel` needs.
        with ComfyEmulator(base_dir=base, step_seconds=0.5, latency_seconds=latency) as emu:
            env = {"ASSET_GENERATOR_API_URL": emu.url}
            # A first use: the type, the version and the jobs-API probe are remembered.
            self.cli("status", "-q", env=env)
            self._comfy_cancel_running(emu, env, warm=True)
            count = self._comfy_cancel_running(emu, env, verbose=True)[1]
            runs = [self._comfy_cancel_running(emu, env, count) for _ in range(self.repeat)]
            figures["ComfyUI cancel -q (1 running)"] = (
                statistics.median(r[0] for r in runs),
                count,
                statistics.median(r[2] for r in runs),
                statistics.median(r[3] for r in runs),
            )
        with ComfyEmulator(base_dir=base, step_seconds=0.01, latency_seconds=latency) as emu:
            env = {"ASSET_GENERATOR_API_URL": emu.url}
            self.cli("status", "-q", env=env)
            emu.reset_log()
            self.cli("status", "-f", "json", env=env)
            count = len(emu.requests)

            def floor(code: str) -> Callable[[], None]:
                return lambda: self.python(code, "127.0.0.1", str(emu.port), str(count))

            seconds, httpx_floor = paired_medians(
                lambda: self.cli("status", "-f", "json", env=env),
                floor(COMFY_HTTPX_FLOOR),
                self.repeat,
            )
            stdlib = statistics.median(_timed(floor(COMFY_HTTP_FLOOR)) for _ in range(3))
            figures["ComfyUI status -f json"] = (seconds, count, httpx_floor, stdlib)
        return figures

    def _comfy_cancel_running(
        self,
        emu: object,
        env: dict[str, str],
        floor_requests: int = 2,
        *,
        warm: bool = False,
        verbose: bool = False,
    ) -> tuple[float, int, float, float]:
        """Start a long generation, wait until it runs, time `cancel -q`, reap it.

        The request count is read from a `-v` run's exchange lines (the generating process
        reads /queue and /history too once its prompt is interrupted, in the same window).
        """
        process = subprocess.Popen(
            [
                *PROGRAM,
                "generate",
                "image",
                "-p",
                "victim",
                "--model",
                COMFY_MODEL,
                "--steps",
                "500",
                "-q",
                "-o",
                str(self.temp / "comfy-out"),
            ],
            env={**self.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_running(process.pid)
        port = str(emu.port)  # type: ignore[attr-defined]
        floor = stdlib = 0.0
        if not warm and not verbose:
            floor = _timed(
                lambda: self.python(COMFY_HTTPX_FLOOR, "127.0.0.1", port, str(floor_requests))
            )
            stdlib = _timed(
                lambda: self.python(COMFY_HTTP_FLOOR, "127.0.0.1", port, str(floor_requests))
            )
        started = time.perf_counter()
        done = self.cli("cancel", *(["-v"] if verbose else ["-q"]), env=env)
        elapsed = time.perf_counter() - started
        process.wait(timeout=30)
        count = sum(1 for line in done.stderr.splitlines() if line.startswith("> "))
        return elapsed, count, floor, stdlib

    def _wait_running(self, pid: int) -> None:
        state = Path(self.env["XDG_STATE_HOME"]) / "asset-generator" / "generations.json"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                records = json.loads(state.read_text())["generations"].values()
            except (OSError, ValueError, KeyError):
                records = []
            if any(r["pid"] == pid and r["status"] == "running" for r in records):
                return
            time.sleep(0.01)

    def comfy_generate(self) -> None:
        """`generate image` on the ComfyUI emulator: the wall time minus the server's work
        (each prompt's execution_start to execution_success, from /history), i.e. what the
        client adds per prompt: start-up, the socket, the submit, the download, the save."""
        from asset_generator.emulator import ComfyEmulator

        rows = []
        with ComfyEmulator(base_dir=self.temp / "comfy-gen", step_seconds=0.05) as emu:
            env = {"ASSET_GENERATOR_API_URL": emu.url}
            self.cli("status", "-q", env=env)
            seed = 0
            for prompts in (1, 4):
                walls, works = [], []
                for _ in range(self.repeat + 1):
                    seed += prompts  # a new seed each run: a repeated one is served from cache
                    before = set(emu.history())
                    wall = _timed(
                        lambda prompts=prompts, seed=seed: self.cli(
                            "generate",
                            "image",
                            "-p",
                            "bench",
                            "--model",
                            COMFY_MODEL,
                            "--steps",
                            "10",
                            "--seed",
                            str(seed),
                            "-n",
                            str(prompts),
                            "-q",
                            "-o",
                            str(self.temp / "comfy-gen-out"),
                            "--overwrite",
                            env=env,
                        )
                    )
                    entries = [v for k, v in emu.history().items() if k not in before]
                    walls.append(wall)
                    works.append(sum(_work_seconds(entry) for entry in entries))
                wall, work = statistics.median(walls[1:]), statistics.median(works[1:])
                rows.append((prompts, wall, work))
        (_, wall1, work1), (_, wall4, work4) = rows
        marginal = ((wall4 - work4) - (wall1 - work1)) / 3
        self.comfy_generate_lines = [
            "`generate image` on the ComfyUI emulator (built-in graph, 10 steps x 50 ms; the "
            "server's work is each prompt's execution_start to execution_success in /history):",
            "",
            "| prompts (-n) | wall | server's work | client overhead | per prompt |",
            "| ---: | ---: | ---: | ---: | ---: |",
            *(
                f"| {n} | {w * 1000:.0f} ms | {k * 1000:.0f} ms | {(w - k) * 1000:.0f} ms | "
                f"{(w - k) / n * 1000:.0f} ms |"
                for n, w, k in rows
            ),
            "",
            f"Each prompt after the first adds {marginal * 1000:+.0f} ms of client overhead: all "
            "N are queued at once, so each one's download, save and records overlap the "
            "server's work on the next; the overhead is the command's start-up and the last "
            "image's download and save.",
        ]

    # -- pipeline -------------------------------------------------------------------------------

    def pipeline(self) -> None:
        """40 assets on 4 backends: wall vs ideal, busy fraction, --parallel 1, peak RSS."""
        ideal = PIPELINE_ASSETS * PIPELINE_STEPS * PIPELINE_STEP_SECONDS / PIPELINE_BACKENDS
        wall, usage, small_rss = self._pipeline_run(PIPELINE_ASSETS, [])
        busy = usage["busy_seconds"] / (PIPELINE_BACKENDS * usage["span_seconds"])
        serial, _, _ = self._pipeline_run(PIPELINE_ASSETS, ["--parallel", "1"])
        # Same pace, three times the assets: the same number in flight at any time, so peak
        # memory must not depend on how many went before (issue 19: <= 1.10x).
        large_rss = self._pipeline_run(PIPELINE_ASSETS * 3, [])[2]
        wall_ok = wall <= 1.10 * ideal + 3
        self.pipeline_lines = [
            f"`pipeline`: {PIPELINE_ASSETS} assets x {PIPELINE_STEPS} steps x "
            f"{PIPELINE_STEP_SECONDS * 1000:.0f} ms on {PIPELINE_BACKENDS} backends "
            "(SwarmUI's 2 s socket close grace kept by the emulator):",
            "",
            "| figure | value | budget | holds |",
            "| --- | ---: | --- | --- |",
            f"| wall (default --parallel) | {wall:.2f} s | <= 1.10 x ideal + 3 s = "
            f"{1.10 * ideal + 3:.2f} s | {'yes' if wall_ok else 'NO'} |",
            f"| ideal (steps x step time / backends) | {ideal:.2f} s | | |",
            f"| ratio wall / ideal | {wall / ideal:.2f}x | | |",
            f"| backends busy (first task to last, {usage['peak_busy']:.0f} at peak) | "
            f"{busy * 100:.1f} % | >= 95 % | {'yes' if busy >= 0.95 else 'NO'} |",
            f"| --parallel 1 (as the Go tool runs) | {serial:.2f} s | | |",
            f"| speed-up | {serial / wall:.2f}x | | |",
            f"| peak RSS, {PIPELINE_ASSETS} / {PIPELINE_ASSETS * 3} assets | "
            f"{small_rss / 1024:.1f} / {large_rss / 1024:.1f} MiB "
            f"({large_rss / small_rss:.2f}x) | <= 1.10x | "
            f"{'yes' if large_rss <= small_rss * 1.10 else 'NO'} |",
        ]

    def _pipeline_run(
        self, count: int, extra: list[str], step_seconds: float = PIPELINE_STEP_SECONDS
    ) -> tuple[float, dict[str, float], int]:
        """One fresh pipeline run: wall seconds, the emulator's backend usage, peak RSS (KiB)."""
        spec = self.temp / f"pipeline-{count}.yaml"
        spec.write_text(pipeline_spec(count))
        out = self.temp / "pipeline-out"
        shutil.rmtree(out, ignore_errors=True)
        config = EmulatorConfig(
            backends=PIPELINE_BACKENDS, step_seconds=step_seconds, default_steps=PIPELINE_STEPS
        )
        code = (
            "import resource, subprocess, sys, time\n"
            "started = time.perf_counter()\n"
            "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
            "print(time.perf_counter() - started, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        )
        with Emulator(config) as emu:
            done = subprocess.run(
                [sys.executable, "-c", code, *PROGRAM, "pipeline", str(spec), "-q",
                 "-o", str(out), "--base-seed", "1", *extra],
                env={**self.env, "ASSET_GENERATOR_API_URL": emu.url},
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            usage = emu.backend_usage()
        seconds, rss = done.stdout.split()
        return float(seconds), usage, int(rss)

    # -- pipeline on ComfyUI ----------------------------------------------------------------------

    def comfy_pipeline(self) -> None:
        """20 assets on the ComfyUI emulator: does the queue stay --parallel deep?

        ComfyUI runs one prompt at a time; the pipeline keeps the next ones waiting in its queue
        (--parallel, 2 there) so that the GPU never waits on the client. Measured from
        ComfyUI's own history: the ideal is the sum of the prompts' execution times, the gap
        the time from one prompt's end (execution_success) to the next one's start.
        """
        from asset_generator.emulator import ComfyEmulator

        figures = {}
        for label, extra in (("default", []), ("serial", ["--parallel", "1"])):
            spec = self.temp / "comfy-pipeline.yaml"
            spec.write_text(pipeline_spec(COMFY_ASSETS))
            out = self.temp / "comfy-out"
            shutil.rmtree(out, ignore_errors=True)
            with ComfyEmulator(step_seconds=COMFY_STEP_SECONDS) as emu:
                started = time.perf_counter()
                subprocess.run(
                    [*PROGRAM, "pipeline", str(spec), "-q", "-o", str(out), "--base-seed", "1",
                     "--model", "sd15/v1-5-pruned-emaonly", "--steps", str(COMFY_STEPS), *extra],
                    env={**self.env, "ASSET_GENERATOR_API_URL": emu.url},
                    stdout=subprocess.DEVNULL, check=True,
                )  # fmt: skip
                wall = time.perf_counter() - started
                spans = sorted(_execution_span(entry) for entry in emu.history().values())
            figures[label] = _queue_figures(wall, spans)
        self.comfy_lines = _queue_table(
            f"`pipeline` on ComfyUI: {COMFY_ASSETS} assets x {COMFY_STEPS} steps x "
            f"{COMFY_STEP_SECONDS * 1000:.0f} ms on the ComfyUI emulator",
            figures,
        )

    def comfy_pipeline_real(self, url: str, model: str) -> None:
        """The same 20-asset figure once against a real ComfyUI (issue 18): its own history.

        A shared server: only the prompts this run added to the history are counted, and the
        run uses the smallest image and few steps so that a CPU peer finishes it in minutes.
        A real ComfyUI has a gap of its own between two prompts (its worker's bookkeeping
        after each one), so the floor is measured in the same run: the same 20 prompts
        queued at once by a bare HTTP client, the best any client can do.
        """
        import httpx

        figures = {}
        graph: dict = {}
        for label, extra in (("default", []), ("serial", ["--parallel", "1"])):
            spec = self.temp / "comfy-real-pipeline.yaml"
            spec.write_text(pipeline_spec(COMFY_ASSETS))
            out = self.temp / "comfy-real-out"
            shutil.rmtree(out, ignore_errors=True)
            before = set(httpx.get(f"{url}/history", timeout=30).json())
            started = time.perf_counter()
            subprocess.run(
                [*PROGRAM, "pipeline", str(spec), "-q", "-o", str(out), "--base-seed",
                 str(int(time.time())), "--model", model, "--steps", str(REAL_STEPS),
                 "--width", "64", "--height", "64", *extra],
                env={**self.env, "ASSET_GENERATOR_API_URL": url,
                     "ASSET_GENERATOR_SERVER_TYPE": "comfyui"},
                stdout=subprocess.DEVNULL, check=True,
            )  # fmt: skip
            wall = time.perf_counter() - started
            history = httpx.get(f"{url}/history", timeout=30).json()
            ours = [entry for key, entry in history.items() if key not in before]
            graph = ours[0]["prompt"][2]
            figures[label] = _queue_figures(wall, sorted(_execution_span(e) for e in ours))
        figures["floor"] = _all_queued_at_once(url, graph, COMFY_ASSETS)
        floor_gap = figures["floor"][2]
        self.comfy_real_lines = [
            *_queue_table(
                f"`pipeline` on a real ComfyUI ({url}): {COMFY_ASSETS} assets x "
                f"{REAL_STEPS} steps, 64x64, model {model}",
                figures,
                budget=floor_gap + 0.05,
            ),
            "",
            f"Floor: the same prompts all queued at once by a bare HTTP client: mean gap "
            f"{floor_gap * 1000:.0f} ms, largest {figures['floor'][3] * 1000:.0f} ms "
            "(the server's own time between two prompts); the budget is that plus 50 ms.",
        ]

    # -- memory ---------------------------------------------------------------------------------

    def memory(self) -> tuple[int, int]:
        """Peak RSS (KiB) of a 1-image and a 50-image download of multi-MB images."""
        peaks = []
        for images in (1, 50):
            with Emulator(
                EmulatorConfig(step_seconds=0.0, default_steps=1, image_megabytes=4, backends=4)
            ) as emu:
                code = (
                    "import resource, subprocess, sys\n"
                    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
                    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
                )
                out = self.temp / f"mem{images}"
                done = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        code,
                        *PROGRAM,
                        "generate",
                        "image",
                        "-p",
                        "mem",
                        "--images",
                        str(images),
                        "-q",
                        "-o",
                        str(out),
                    ],
                    env={**self.env, "ASSET_GENERATOR_API_URL": emu.url},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                peaks.append(int(done.stdout.strip()))
        return peaks[0], peaks[1]

    # -- report ---------------------------------------------------------------------------------

    def report(self, memory: tuple[int, int] | None) -> str:
        lines = [
            f"asset-generator benchmarks — Python {sys.version.split()[0]}, "
            f"median of {self.repeat} runs, {os.cpu_count()} cores",
            "",
            "| command | median | floor | floor median | ratio | requests | budget | holds |",
            "| --- | ---: | --- | ---: | ---: | ---: | --- | --- |",
        ]
        for row in self.rows:
            lines.append(
                f"| {row.name} | {row.seconds * 1000:.0f} ms | {row.floor_name} | "
                f"{row.floor * 1000:.0f} ms | {row.ratio:.2f}x | "
                f"{'' if row.requests is None else row.requests} | {row.budget} | "
                f"{'yes' if row.holds else 'NO'} |"
            )
        lines += [
            "",
            "With the emulator adding 50 ms to every answer (allowed: requests x 50 ms + the",
            "no-latency time + 60 ms):",
            "",
            "| command | no latency | +50 ms/answer | allowed | holds |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for row in self.rows:
            if row.slow is None or row.requests is None:
                continue
            allowed = row.requests * 0.05 + row.seconds + 0.06
            lines.append(
                f"| {row.name} | {row.seconds * 1000:.0f} ms | {row.slow * 1000:.0f} ms | "
                f"{allowed * 1000:.0f} ms | {'yes' if row.slow <= allowed else 'NO'} |"
            )
        stdlib = [row for row in self.rows if row.stdlib_floor is not None]
        if stdlib:
            lines += ["", "The stdlib `http.client` floor beside the httpx one:", ""]
            lines += [
                f"- {row.name}: httpx floor {row.floor * 1000:.0f} ms, stdlib floor "
                f"{row.stdlib_floor * 1000:.0f} ms, command {row.seconds * 1000:.0f} ms "
                f"({row.seconds / row.stdlib_floor:.2f}x the stdlib floor)"
                for row in stdlib
                if row.stdlib_floor
            ]
        if self.leaving_lines:
            lines += ["", *self.leaving_lines]
        if self.pipeline_lines:
            lines += ["", *self.pipeline_lines]
        if self.comfy_lines:
            lines += ["", *self.comfy_lines]
        if self.comfy_generate_lines:
            lines += ["", *self.comfy_generate_lines]
        if self.comfy_real_lines:
            lines += ["", *self.comfy_real_lines]
        if memory:
            lines += [
                "",
                f"Peak RSS of `generate image` (4 MB images): 1 image {memory[0] / 1024:.1f} MiB, "
                f"50 images {memory[1] / 1024:.1f} MiB "
                f"({'flat' if memory[1] <= memory[0] * 1.25 else 'GROWS'})",
            ]
        return "\n".join(lines)


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _work_seconds(entry: dict) -> float:
    """A history entry's execution time: execution_start to its last message (ms stamps)."""
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return (end - start) / 1000 if start and end else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (median)")
    parser.add_argument("--no-memory", action="store_true", help="skip the 50-image download")
    parser.add_argument("--only-pipeline", action="store_true", help="just the pipeline rows")
    parser.add_argument(
        "--only-exit", action="store_true", help="just `generate image`'s time to exit"
    )
    parser.add_argument(
        "--only-comfyui", action="store_true", help="just the ComfyUI cancel, status, generate rows"
    )
    parser.add_argument(
        "--comfyui-url",
        metavar="URL",
        help="just the ComfyUI pipeline figure, against this real ComfyUI (a shared server: "
        "only this run's prompts are counted)",
    )
    parser.add_argument(
        "--comfyui-model",
        default="random-sd15.safetensors",
        help="checkpoint for --comfyui-url [default: the peer's random-weight SD 1.5]",
    )
    args = parser.parse_args()
    bench = Bench(args.repeat)
    if args.comfyui_url:
        bench.comfy_pipeline_real(args.comfyui_url.rstrip("/"), args.comfyui_model)
        print(bench.report(None))
        return 0
    if args.only_comfyui:
        bench.comfy_rows()
        bench.comfy_generate()
        print(bench.report(None))
        return 0
    if args.only_exit:
        bench.exit_after_path()
        print(bench.report(None))
        return 0
    bench.pipeline()
    bench.comfy_pipeline()
    if args.only_pipeline:
        print(bench.report(None))
        return 0
    bench.local()
    bench.network_rows()
    bench.exit_after_path()
    bench.comfy_rows()
    bench.comfy_generate()
    memory = None if args.no_memory else bench.memory()
    print(bench.report(memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
