"""The fault matrix: every way a server or proxy misbehaves, against every command.

Each cell runs the installed program against an emulator that injects one fault and checks
what a user relies on: the exit code, exactly one line on stderr naming the server (never a
traceback), one JSON failure document on stdout with a stable code, nothing half-written in
the output directory and a registry that still parses with no generation left "running".

RELIABILITY.md shows the same matrix. Each cell compares what it observed with its row
there, so the document cannot drift; regenerate it after an intended change with

    ASSET_GENERATOR_UPDATE_DOCS=1 python -m pytest tests/test_faults.py
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Runner
from fault_matrix import (
    GATEWAY_TIMEOUT_PAGE,
    HTML_PAGE,
    TIMEOUT,
    FaultCase,
    Hook,
    Matrix,
    MatrixDoc,
    assert_nothing_half_written,
    json_body,
    observe,
)

from asset_generator.emulator import Emulator, EmulatorConfig, Fault, FaultPoint
from asset_generator.registry import GenerationRecord, Registry, new_generation_id, server_key

DOC = MatrixDoc("FAULT MATRIX", "tests/test_faults.py")


def _http(make: Hook) -> Hook:
    """Apply to every HTTP answer and handshake except GetNewSession.

    Sessions are exempt so each command reaches its own calls; the ``session`` row covers
    GetNewSession itself.
    """

    def hook(point: FaultPoint) -> Fault | None:
        if point.transport == "ws" or point.route == "getnewsession":
            return None
        # A proxy that breaks every answer also breaks the WebSocket handshake.
        return make(point)

    return hook


def _ws(make: Callable[[dict], Fault | None]) -> Hook:
    def hook(point: FaultPoint) -> Fault | None:
        if point.transport != "ws" or point.message is None:
            return None
        return make(point.message)

    return hook


def _image_path(path: str) -> Hook:
    return _ws(lambda m: Fault(replace_message={**m, "image": path}) if "image" in m else None)


ALL = ("generate", "status", "cancel", "cancel --all", "models list")

# Built once: making 40 MiB per answer inside the emulator's event loop delayed even the
# headers past the cells' one-second --timeout on a loaded machine (a CI run saw `timeout`).
HUGE_JSON = b'{"pad":"' + b"x" * (40 * 1024 * 1024) + b'"}'

FAULTS = [
    FaultCase(
        "session",
        "GetNewSession answers a proxy's HTML error page",
        lambda p: (
            Fault(status=502, headers=[("Content-Type", "text/html")], body=HTML_PAGE)
            if p.route == "getnewsession"
            else None
        ),
        ALL,
    ),
    FaultCase(
        "proxy-502",
        "A proxy answers 502 with an HTML page",
        _http(lambda p: Fault(status=502, headers=[("Content-Type", "text/html")], body=HTML_PAGE)),
        ALL,
    ),
    FaultCase(
        "proxy-504",
        "A proxy answers 504 with an HTML page",
        _http(
            lambda p: Fault(
                status=504, headers=[("Content-Type", "text/html")], body=GATEWAY_TIMEOUT_PAGE
            )
        ),
        ALL,
    ),
    FaultCase(
        "server-500",
        "HTTP 500 with a plain-text body",
        _http(
            lambda p: Fault(
                status=500,
                headers=[("Content-Type", "text/plain")],
                body=b"Internal Server Error\nSystem.NullReferenceException at T2IAPI",
            )
        ),
        ALL,
    ),
    FaultCase(
        "truncated-json",
        "JSON cut off in the middle (complete HTTP answer)",
        _http(lambda p: json_body(b'{"status": {"waiting_gens": 0, "live_')),
        ALL,
    ),
    FaultCase(
        "not-utf8",
        "A body of bytes that are not UTF-8",
        _http(lambda p: json_body(b"\xff\xfe\x00\x9c\x80 binary")),
        ALL,
    ),
    FaultCase(
        "slow",
        "An answer slower than --timeout",
        _http(lambda p: Fault(delay_seconds=5)),
        ALL,
    ),
    FaultCase(
        "headers-then-silence",
        "Headers arrive, then nothing",
        _http(lambda p: Fault(stall_after_headers_seconds=5)),
        ALL,
    ),
    FaultCase(
        "reset-mid-body",
        "Connection reset in the middle of the body",
        _http(lambda p: Fault(truncate_to=7)),
        ALL,
    ),
    FaultCase(
        "huge-json",
        "A JSON body far larger than any real answer (40 MiB)",
        _http(lambda p: json_body(HUGE_JSON)),
        ALL,
    ),
    FaultCase(
        "redirect",
        "A redirect to another host",
        _http(lambda p: None),  # replaced per cell: the Location needs the other host's URL
        ALL,
        redirect=True,
    ),
    FaultCase(
        "odd-error",
        "An `error` answer with an unknown `error_id`, several lines and a terminal escape",
        _http(
            lambda p: json_body(
                json.dumps(
                    {
                        "error": "Backend exploded.\n- reason one\n- \x1b[31mreason two",
                        "error_id": "quantum_flux",
                    }
                ).encode()
            )
        ),
        ALL,
    ),
    FaultCase(
        "error-not-text",
        "An `error` key whose value is not text",
        _http(lambda p: json_body(b'{"error": {"nested": [1, 2]}, "error_id": 7}')),
        ALL,
    ),
    FaultCase(
        "ws-dropped",
        "WebSocket connection dropped mid-stream",
        lambda p: Fault(reset=True) if p.transport == "ws" and p.index == 3 else None,
        ("generate",),
    ),
    FaultCase(
        "ws-never-upgraded",
        "The WebSocket handshake is answered with plain HTTP (a proxy without WebSockets)",
        lambda p: (
            Fault(status=400, headers=[("Content-Type", "text/plain")], body=b"Bad Request")
            if p.transport == "upgrade"
            else None
        ),
        ("generate",),
    ),
    FaultCase(
        "ws-garbage",
        "A WebSocket message that is not JSON",
        _ws(lambda m: Fault(replace_message="<html>oops") if "gen_progress" in m else None),
        ("generate",),
    ),
    FaultCase(
        "image-dotdot",
        "An image path that climbs out with `../`",
        _image_path("View/local/raw/../../../../escaped.png"),
        ("generate",),
    ),
    FaultCase(
        "image-absolute",
        "An absolute image path",
        _image_path("/tmp/escaped.png"),
        ("generate",),
    ),
    FaultCase(
        "image-nul",
        "An image path with a NUL byte",
        _image_path("View/local/raw/a\x00b.png"),
        ("generate",),
    ),
    FaultCase(
        "image-long",
        "An image path of 5000 characters",
        _image_path("View/local/raw/" + "a" * 5000 + ".png"),
        ("generate",),
    ),
]

ARGS = {
    "generate": ["generate", "image", "--prompt", "matrix", "--steps", "4"],
    "status": ["status"],
    "cancel": ["cancel"],
    "cancel --all": ["cancel", "--all"],
    "models list": ["models", "list"],
}


@pytest.fixture(scope="module")
def matrix() -> Iterator[Matrix]:
    with DOC.collecting(FAULTS) as found:
        yield found


def _seed_live_generation(emulator: Emulator, state_dir: Path, token: str) -> str:
    """A generation of ours that looks alive (this test's pid), in a real server session."""
    import httpx

    session_id = httpx.post(f"{emulator.url}/API/GetNewSession", json={}).json()["session_id"]
    registry = Registry(state_dir, warn=print)
    url = emulator.url
    record = GenerationRecord(
        id=new_generation_id(),
        server=url,
        server_key=server_key(url, f"{token}\0"),
        handle={"session_id": session_id},
        pid=os.getpid(),
        host=socket.gethostname(),
        prompt="seeded",
        created=time.time(),
        status="running",
    )
    with registry.transaction() as state:
        state.generations[record.id] = record
    return session_id


CELLS = [(case, command) for case in FAULTS for command in case.commands]


@pytest.mark.parametrize(
    ("case", "command"), CELLS, ids=[f"{c.key}:{cmd.replace(' ', '-')}" for c, cmd in CELLS]
)
def test_fault(
    case: FaultCase, command: str, cli: Runner, workdir: Path, state_dir: Path, matrix: Matrix
) -> None:
    other: Emulator | None = None
    hook = case.hook
    if case.redirect:
        other = Emulator(EmulatorConfig()).start()
        target = other.url

        def hook(point: FaultPoint) -> Fault | None:
            if point.transport == "ws" or point.route == "getnewsession":
                return None
            return Fault(status=302, headers=[("Location", f"{target}/API/GetCurrentStatus")])

    armed = command != "cancel"  # the seeded session is made before the fault is switched on

    def gated(point: FaultPoint) -> Fault | None:
        return hook(point) if armed else None

    emulator = Emulator(
        EmulatorConfig(step_seconds=0.02, ws_close_grace_seconds=0.05, faults=gated)
    ).start()
    try:
        cli.url = emulator.url
        token = "tok-" + "s3cret" * 4
        if command == "cancel":
            _seed_live_generation(emulator, state_dir, token)
            armed = True
        result = cli(
            "-f",
            "json",
            "--timeout",
            TIMEOUT,
            *ARGS[command],
            env={"ASSET_GENERATOR_API_KEY": token},
        )
        received = list(other.requests) if other is not None else []
    finally:
        emulator.stop()
        if other is not None:
            other.stop()

    names = {emulator.url: "<server>", r"re:gen_[0-9a-f]{8}": "gen_…"}
    if other is not None:
        names = {emulator.url: "<server>", other.url: "<other host>", **names}
    seen = observe(result, names=names, secrets=(token,))
    if seen.exit != 0:
        assert "<server>" in seen.line or "session" in seen.line, (
            f"the message must name the server: {seen.line}"
        )
    # Redirects are never followed: the other host sees nothing, so no cookie can leak there.
    assert received == []
    assert_nothing_half_written(workdir, state_dir)
    DOC.check(matrix, case.key, command, seen)
