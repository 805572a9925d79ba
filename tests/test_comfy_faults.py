"""The ComfyUI fault matrix: every way a ComfyUI server or a proxy in front of it misbehaves,
against every command that talks to it.

The same promises as the SwarmUI matrix (``tests/test_faults.py``, whose machinery this
reuses from ``tests/fault_matrix.py``): exit 1, exactly one stderr line naming the server and
what went wrong, one JSON document with a stable code, no traceback, nothing half-written, no
record left ``running``. One more column says what the cell left on the server: the prompts of
ours still queued or running once the command has exited. Closing a connection cancels nothing
on ComfyUI (protocol §11.10), so a command whose stream broke after its prompt was queued must
stop that prompt itself — where the server can still be reached at all.

Two kinds of HTTP fault: a proxy that answers in ComfyUI's place (the request never reaches
it: nothing is queued, deleted or interrupted), and an answer that breaks on its way back (the
server did the work; the client only lost the answer). The ``cancel`` rows have one prompt of
ours running; ``cancel --all`` has the same and always asks the server.

RELIABILITY.md shows the matrix; regenerate it after an intended change with

    ASSET_GENERATOR_UPDATE_DOCS=1 python -m pytest tests/test_comfy_faults.py
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Runner, wait_for
from fault_matrix import (
    HTML_PAGE,
    TIMEOUT,
    FaultCase,
    Hook,
    Matrix,
    MatrixDoc,
    Observed,
    assert_nothing_half_written,
    json_body,
    observe,
    unreachable_port,
)

from asset_generator.emulator import ComfyEmulator, Fault, FaultPoint
from asset_generator.registry import GenerationRecord, Registry, new_generation_id, server_key

DOC = MatrixDoc("COMFYUI FAULT MATRIX", "tests/test_comfy_faults.py", ("ours left on the server",))

TOKEN = "tok-" + "c0mfy" * 4
STEP_SECONDS = 0.02
# A prompt that outlives any failing command (8 s): if it still runs when the command has
# exited, nobody stopped it. Faults that a command may live through use short prompts.
LONG_STEPS = 400
SHORT_STEPS = 5
MODEL = "random-sd15.safetensors"
MAX_BODY = 200
PLAIN = [("Content-Type", "text/plain")]
BASIC_REALM = 'Basic realm="comfy"'
INTERNAL_ERROR = b"500 Internal Server Error\n\nServer got itself in trouble"
BASIC_AUTH_PAGE = (
    b"<html><head><title>401 Authorization Required</title></head><body><center><h1>401 "
    b"Authorization Required</h1></center><hr><center>nginx</center></body></html>"
)
FORBIDDEN_PAGE = (
    b"<html><head><title>403 Forbidden</title></head><body><h1>Forbidden</h1>"
    b"<p>invalid or expired token</p></body></html>"
)

ALL = (
    "generate",
    "generate --workflow",
    "status",
    "models list",
    "cancel",
    "cancel --all",
    "pipeline",
)
GENERATING = ("generate", "generate --workflow", "pipeline")


def _in_front(make: Hook) -> Hook:
    """A proxy answers every request (the WebSocket handshake too) in ComfyUI's place."""

    def hook(point: FaultPoint) -> Fault | None:
        return make(point) if point.transport in ("request", "upgrade") else None

    return hook


def _on_the_way(make: Callable[[FaultPoint], Fault], *, handshake: bool = True) -> Hook:
    """ComfyUI did the work; its answer breaks on the way back (and, unless ``handshake`` is
    False, so does the WebSocket handshake)."""
    points = ("http", "upgrade") if handshake else ("http",)

    def hook(point: FaultPoint) -> Fault | None:
        return make(point) if point.transport in points else None

    return hook


class _FirstProgress:
    """The first ``progress`` message the server sends, once per cell (``fresh``)."""

    def __init__(self, make: Callable[[dict[str, Any]], Fault]) -> None:
        self.make = make
        self.done = threading.Event()

    def fresh(self) -> _FirstProgress:
        return _FirstProgress(self.make)

    def __call__(self, point: FaultPoint) -> Fault | None:
        message = point.message
        if point.transport != "ws" or not isinstance(message, dict) or self.done.is_set():
            return None
        if message.get("type") != "progress":
            return None
        self.done.set()
        return self.make(message)


class _GoneMidRun(_FirstProgress):
    """The server vanishes from the network mid-run: the WebSocket drops at the first
    ``progress`` message, and from then on every connection is dropped unanswered (nothing
    reaches the server; it runs on, unreachable)."""

    def __init__(self) -> None:
        super().__init__(lambda m: Fault(reset=True))

    def fresh(self) -> _GoneMidRun:
        return _GoneMidRun()

    def __call__(self, point: FaultPoint) -> Fault | None:
        if self.done.is_set() and point.transport in ("request", "upgrade"):
            return Fault(reset=True)
        return super().__call__(point)


def _view(transport: str, fault: Fault) -> Hook:
    def hook(point: FaultPoint) -> Fault | None:
        return fault if point.transport == transport and point.route == "/view" else None

    return hook


def _too_large(point: FaultPoint) -> Fault | None:
    """What ComfyUI answers a body over its limit (aiohttp's client_max_size, protocol §1)."""
    length = point.headers.get("content-length", "0")
    if not length.isdigit() or int(length) <= MAX_BODY:
        return None
    text = f"Maximum request body size {MAX_BODY} exceeded.".encode()
    return Fault(status=413, headers=PLAIN, body=text)


def _html(status: int, page: bytes, *headers: tuple[str, str]) -> Fault:
    return Fault(status=status, headers=[("Content-Type", "text/html"), *headers], body=page)


FAULTS = [
    FaultCase("down", "Nothing listens at `--api-url` (connection refused)", lambda p: None, ALL,
              down=True),
    FaultCase(
        "proxy-502",
        "A proxy answers 502 with an HTML page (ComfyUI is down behind it)",
        _in_front(lambda p: _html(502, HTML_PAGE)),
        ALL,
    ),
    FaultCase(
        "proxy-401",
        "A proxy asks for credentials: 401, `WWW-Authenticate: Basic`, an HTML page",
        _in_front(lambda p: _html(401, BASIC_AUTH_PAGE, ("WWW-Authenticate", BASIC_REALM))),
        ALL,
    ),
    FaultCase(
        "token-401",
        "A token gate (ComfyUI-Login, a token proxy) refuses the `--api-key` sent: "
        "`401: Unauthorized`",
        lambda p: None,
        ALL,
        config={"required_authorization": "Bearer the-right-token"},
    ),
    FaultCase(
        "proxy-403",
        "A token proxy refuses the token: 403 with an HTML page",
        _in_front(lambda p: _html(403, FORBIDDEN_PAGE)),
        ALL,
    ),
    FaultCase(
        "origin-403",
        "ComfyUI's own bare 403 (empty body): its check of a foreign `Origin` header, which a "
        "proxy in front may add",
        _in_front(lambda p: Fault(status=403, headers=[], body=b"")),
        ALL,
    ),
    FaultCase(
        "too-large-413",
        "ComfyUI's 413 for a body over `--max-upload-size` (here 200 bytes: every prompt is "
        "larger; a cancel's body is not)",
        _in_front(_too_large),
        ALL,
    ),
    FaultCase(
        "server-500",
        "ComfyUI's own 500 with aiohttp's plain-text body (an exception in a handler)",
        _in_front(lambda p: Fault(status=500, headers=PLAIN, body=INTERNAL_ERROR)),
        ALL,
    ),
    FaultCase(
        "truncated-json",
        "The answer's JSON is cut off in the middle (complete HTTP answer, the work done)",
        _on_the_way(lambda p: json_body(b'{"queue_running": [[0, "'), handshake=False),
        ALL,
    ),
    FaultCase(
        "garbage",
        "A 200 whose body is bytes that are not text (the work done)",
        _on_the_way(lambda p: json_body(b"\xff\xfe\x00\x9c\x80 binary"), handshake=False),
        ALL,
    ),
    FaultCase(
        "slow",
        "Every answer slower than `--timeout` (the work done)",
        _on_the_way(lambda p: Fault(delay_seconds=5)),
        ALL,
    ),
    FaultCase(
        "headers-then-silence",
        "Headers arrive, then nothing (the work done)",
        _on_the_way(lambda p: Fault(stall_after_headers_seconds=5)),
        ALL,
    ),
    FaultCase(
        "reset-mid-body",
        "The connection is reset in the middle of the answer (the work done)",
        _on_the_way(lambda p: Fault(truncate_to=7)),
        ALL,
    ),
    FaultCase(
        "ws-dropped",
        "The WebSocket is dropped mid-run (no Close frame); the prompt goes on on the server",
        _FirstProgress(lambda m: Fault(reset=True)),
        GENERATING,
    ),
    FaultCase(
        "ws-garbage",
        "A WebSocket message mid-run that is not JSON",
        _FirstProgress(lambda m: Fault(replace_message="<html>oops")),
        GENERATING,
    ),
    FaultCase(
        "server-gone",
        "The server vanishes from the network mid-run (the WebSocket drops, then every "
        "connection does)",
        _GoneMidRun(),
        GENERATING,
    ),
    FaultCase(
        "view-404",
        "`/view` answers 404 for an image the server announced (a file removed meanwhile)",
        _view("request", Fault(status=404, headers=[], body=b"")),
        GENERATING,
    ),
    FaultCase(
        "view-reset",
        "`/view` breaks off in the middle of the image",
        _view("http", Fault(truncate_to=100)),
        GENERATING,
    ),
]  # fmt: skip

# Faults a command may live through (or that strike at its end): short prompts keep them fast.
SHORT = {"ws-dropped", "ws-garbage", "view-404", "view-reset"}


def _args(command: str, workdir: Path, steps: int) -> list[str]:
    if command == "generate":
        return ["generate", "image", "--prompt", "matrix", "--model", MODEL, "--steps",
                str(steps), "-o", "out"]  # fmt: skip
    if command == "generate --workflow":
        workflow = workdir / "solid.json"
        workflow.write_text(json.dumps(_solid(steps, "matrix")))
        return ["generate", "image", "--workflow", str(workflow), "-o", "out"]
    if command == "pipeline":
        spec = workdir / "set.yaml"
        spec.write_text(
            "assets:\n  - name: Set\n    assets:\n"
            "      - {id: one, prompt: first}\n      - {id: two, prompt: second}\n"
        )
        # One asset at a time: with two in flight, which one fails first is a race.
        return ["pipeline", str(spec), "--model", MODEL, "--steps", str(steps),
                "--base-seed", "1", "--parallel", "1", "-o", "out"]  # fmt: skip
    return command.split()


def _solid(steps: int, prefix: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "SlowSolidImage",
              "inputs": {"steps": steps, "step_seconds": STEP_SECONDS, "width": 8, "height": 8,
                         "red": 1.0, "green": 0.0, "blue": 0.0}},
        "2": {"class_type": "SaveImage",
              "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }  # fmt: skip


@pytest.fixture(scope="module")
def matrix() -> Iterator[Matrix]:
    with DOC.collecting(FAULTS) as found:
        yield found


def _used_before(state_dir: Path, url: str) -> None:
    """What a first use leaves (cli-contract §7): the type identified, and the version its
    /system_stats named, so each command reaches its own calls; identification has its own
    tests."""
    with Registry(state_dir, warn=print).transaction() as state:
        state.kinds[url] = "comfyui"
        state.server(server_key(url, f"{TOKEN}\0")).adapter["version"] = "0.3.64"


def _seed_running_prompt(
    emulator: ComfyEmulator | None, url: str, state_dir: Path, token: str
) -> str:
    """A prompt of ours running on the server (none when it is down), recorded as a live
    generation (this test's pid), as a `generate` in another terminal leaves it."""
    client_id, prompt_id = uuid.uuid4().hex, str(uuid.uuid4())
    if emulator is not None:
        headers = {}
        if emulator.config.required_authorization:
            headers["Authorization"] = emulator.config.required_authorization
        answer = httpx.post(
            f"{emulator.url}/prompt",
            json={"prompt": _solid(LONG_STEPS, "seeded"), "client_id": client_id,
                  "prompt_id": prompt_id},
            headers=headers,
            timeout=10,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
    record = GenerationRecord(
        id=new_generation_id(),
        server=url,
        server_key=server_key(url, f"{token}\0"),
        server_type="comfyui",
        handle={"client_id": client_id, "prompt_ids": [prompt_id]},
        pid=os.getpid(),
        host=socket.gethostname(),
        prompt="seeded",
        created=time.time(),
        status="running",
    )
    with Registry(state_dir, warn=print).transaction() as state:
        state.generations[record.id] = record
    if emulator is not None:
        assert wait_for(lambda: [i[1] for i in emulator.queue()[0]] == [prompt_id], timeout=10)
    return prompt_id


def _ours(state_dir: Path) -> tuple[list[str], list[str]]:
    """Every prompt id and client id our records hold."""
    path = state_dir / "generations.json"
    if not path.exists():
        return [], []
    records = json.loads(path.read_text())["generations"].values()
    prompts = [p for r in records for p in r["handle"].get("prompt_ids", [])]
    clients = [r["handle"]["client_id"] for r in records if "client_id" in r["handle"]]
    return prompts, clients


def _left(emulator: ComfyEmulator, prompts: list[str]) -> str:
    """Our prompts still queued or running, once an interrupt sent has had time to land."""
    if not prompts:
        return "—"

    def live() -> tuple[int, int]:
        running, pending = emulator.queue()
        return (
            sum(1 for item in running if item[1] in prompts),
            sum(1 for item in pending if item[1] in prompts),
        )

    wait_for(lambda: live() == (0, 0), timeout=1.0)
    running, pending = live()
    if (running, pending) == (0, 0):
        return "none"
    parts = [f"{running} running"] if running else []
    parts += [f"{pending} queued"] if pending else []
    return ", ".join(parts)


CELLS = [(case, command) for case in FAULTS for command in case.commands]


@pytest.mark.parametrize(
    ("case", "command"), CELLS, ids=[f"{c.key}:{cmd.replace(' ', '-')}" for c, cmd in CELLS]
)
def test_fault(
    case: FaultCase,
    command: str,
    cli: Runner,
    workdir: Path,
    state_dir: Path,
    tmp_path: Path,
    matrix: Matrix,
) -> None:
    armed = False
    hook = case.cell_hook()

    def gated(point: FaultPoint) -> Fault | None:
        return hook(point) if armed else None

    emulator = ComfyEmulator(
        base_dir=tmp_path / "comfy", step_seconds=STEP_SECONDS, faults=gated, **case.config
    ).start()
    try:
        url = f"http://127.0.0.1:{unreachable_port()}" if case.down else emulator.url
        cli.url = url
        _used_before(state_dir, url)
        if command.startswith("cancel"):
            _seed_running_prompt(None if case.down else emulator, url, state_dir, TOKEN)
        armed = True
        steps = SHORT_STEPS if case.key in SHORT else LONG_STEPS
        result = cli(
            "-f", "json", "--timeout", TIMEOUT, *_args(command, workdir, steps),
            env={"ASSET_GENERATOR_API_KEY": TOKEN},
        )  # fmt: skip
        armed = False
        prompts, clients = _ours(state_dir)
        left = "—" if case.down else _left(emulator, prompts)
    finally:
        emulator.stop()

    names = {url: "<server>", r"re:gen_[0-9a-f]{8}": "gen_…", r"re:pipe_[0-9a-f]{8}": "pipe_…"}
    # Our prompt ids and client id are handles, kept in the registry only (tests/test_secrets.py).
    seen = observe(result, names=names, secrets=(TOKEN, *prompts, *clients))
    if seen.exit != 0:
        assert "<server>" in seen.line, f"the message must name the server: {seen.line}"
    assert_nothing_half_written(workdir, state_dir)
    if seen.exit == 0 and command in GENERATING:
        # Lived through it: every image there, whole.
        saved = list((workdir / "out").rglob("*.png"))
        assert len(saved) == (2 if command == "pipeline" else 1), saved
        assert all(p.read_bytes().startswith(b"\x89PNG") for p in saved)
    if "stopped" in seen.line:
        # A message that says it stopped our work must be right about it.
        assert left == "none", (seen.line, left)
    DOC.check(matrix, case.key, command, Observed(seen.exit, seen.code, seen.line, (left,)))


def test_every_fault_row_names_a_known_command() -> None:
    assert all(set(case.commands) <= set(ALL) for case in FAULTS)
    assert len({case.key for case in FAULTS}) == len(FAULTS)
    assert re.fullmatch(r"[a-z0-9-]+", "".join(case.key for case in FAULTS))


def test_a_pipeline_whose_download_fails_leaves_none_of_its_queued_prompts(
    cli: Runner, workdir: Path, state_dir: Path, tmp_path: Path
) -> None:
    """Two of the pipeline's prompts in ComfyUI's queue (the default --parallel 2); the image of
    the first to finish cannot be fetched, and from then on /queue answers garbage: the run
    stops, and the other prompt (waiting, or just started) is deleted or interrupted by its
    id all the same."""
    broken = threading.Event()

    def hook(point: FaultPoint) -> Fault | None:
        if point.transport == "request" and point.route == "/view" and not broken.is_set():
            broken.set()
            return Fault(status=404, headers=[], body=b"")
        if broken.is_set() and point.transport == "http" and point.route == "/queue":
            return json_body(b'{"queue_running": [[0, "')
        return None

    emulator = ComfyEmulator(base_dir=tmp_path / "comfy", step_seconds=STEP_SECONDS,
                             faults=hook).start()  # fmt: skip
    try:
        cli.url = emulator.url
        _used_before(state_dir, emulator.url)
        spec = workdir / "set.yaml"
        # Either may be queued first (two workers race to submit); either way the other one
        # is still in the queue, waiting, when the first one's image is announced.
        spec.write_text(
            "assets:\n  - name: Set\n    assets:\n"
            "      - {id: one, prompt: first, params: {steps: 50}}\n"
            "      - {id: two, prompt: second, params: {steps: 50}}\n"
        )
        result = cli(
            "-f", "json", "--timeout", TIMEOUT, "pipeline", str(spec), "--model", MODEL,
            "--base-seed", "1", "-o", "out", env={"ASSET_GENERATOR_API_KEY": TOKEN},
        )  # fmt: skip
        prompts, clients = _ours(state_dir)
        assert len(prompts) == 2
        sent = [c.time for c in emulator.calls("/prompt") if c.method == "POST"]
        view = min(c.time for c in emulator.calls("/view"))
        assert len(sent) == 2 and max(sent) < view
        left = _left(emulator, prompts)
        history = emulator.history()
        interrupts = [c.body for c in emulator.calls("/interrupt") if c.method == "POST"]
        queue_posts = [c.body for c in emulator.calls("/queue") if c.method == "POST"]
    finally:
        emulator.stop()
    seen = observe(result, names={}, secrets=(TOKEN, *prompts, *clients))
    assert seen.exit == 1 and seen.code == "partial"
    assert "cancelled" in result.json()["summary"] and left == "none"
    # The first ran to its end (its image was what failed); the other never did.
    end = {p: str(history.get(p, {}).get("status", {}).get("status_str")) for p in prompts}
    ends = sorted(end.values())
    assert ends in (["None", "success"], ["error", "success"]), ends
    # By its id: every interrupt names a prompt of ours, every delete only ours, the queue is
    # never cleared (the server may be shared), and the other prompt was deleted or interrupted.
    assert all(
        set(body) == {"prompt_id"} and body["prompt_id"] in prompts for body in interrupts
    ), interrupts
    assert {"clear": True} not in queue_posts, queue_posts
    assert all(
        set(body) == {"delete"} and set(body["delete"]) <= set(prompts) for body in queue_posts
    ), queue_posts
    (other,) = [p for p in prompts if end[p] != "success"]
    deleted = {p for body in queue_posts for p in body["delete"]}
    assert other in deleted or {"prompt_id": other} in interrupts, (interrupts, queue_posts)
    assert [c for c in emulator.calls("/view") if c.status == 200] == []
