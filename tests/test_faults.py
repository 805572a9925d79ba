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
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Runner

from asset_generator.emulator import Emulator, EmulatorConfig, Fault, FaultPoint
from asset_generator.registry import GenerationRecord, Registry, new_generation_id, server_key

DOC = Path(__file__).resolve().parent.parent / "RELIABILITY.md"
BEGIN = "<!-- BEGIN FAULT MATRIX -->"
END = "<!-- END FAULT MATRIX -->"
PIPE = "\\|"  # a literal | inside a Markdown table cell
UPDATE = os.environ.get("ASSET_GENERATOR_UPDATE_DOCS") == "1"
TIMEOUT = "1"  # --timeout for every cell: slow faults take one second, not thirty
HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
GATEWAY_TIMEOUT_PAGE = b"<html><head><title>504 Gateway Time-out</title></head><body></body></html>"


def _unreachable_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class FaultCase:
    """One misbehaviour: what it models and the emulator hook that produces it."""

    key: str
    title: str
    hook: Callable[[FaultPoint], Fault | None]
    # Commands the fault can reach at all (WebSocket and image faults only touch generate).
    commands: tuple[str, ...] = ()
    # The other host a redirect points to, started per cell (it must receive nothing).
    redirect: bool = False


def _http(make: Callable[[FaultPoint], Fault | None]) -> Callable[[FaultPoint], Fault | None]:
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


def _ws(make: Callable[[dict], Fault | None]) -> Callable[[FaultPoint], Fault | None]:
    def hook(point: FaultPoint) -> Fault | None:
        if point.transport != "ws" or point.message is None:
            return None
        return make(point.message)

    return hook


def _image_path(path: str) -> Callable[[FaultPoint], Fault | None]:
    return _ws(lambda m: Fault(replace_message={**m, "image": path}) if "image" in m else None)


def _json_body(body: bytes, status: int = 200) -> Fault:
    return Fault(status=status, headers=[("Content-Type", "application/json")], body=body)


ALL = ("generate", "status", "cancel", "cancel --all", "models list")

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
        _http(lambda p: _json_body(b'{"status": {"waiting_gens": 0, "live_')),
        ALL,
    ),
    FaultCase(
        "not-utf8",
        "A body of bytes that are not UTF-8",
        _http(lambda p: _json_body(b"\xff\xfe\x00\x9c\x80 binary")),
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
        _http(lambda p: _json_body(b'{"pad":"' + b"x" * (40 * 1024 * 1024) + b'"}')),
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
            lambda p: _json_body(
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
        _http(lambda p: _json_body(b'{"error": {"nested": [1, 2]}, "error_id": 7}')),
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


@dataclass
class Observed:
    exit: int
    code: str
    line: str


@dataclass
class Matrix:
    """The document's rows, and what this run saw (written back in update mode)."""

    expected: dict[tuple[str, str], Observed] = field(default_factory=dict)
    observed: dict[tuple[str, str], Observed] = field(default_factory=dict)


ROW = re.compile(r"^\| `(?P<cmd>[^`]+)` \| (?P<exit>\d+) \| (?P<code>[^|]*) \| (?P<line>.*) \|$")


def _parse_doc() -> dict[tuple[str, str], Observed]:
    rows: dict[tuple[str, str], Observed] = {}
    if not DOC.exists():
        return rows
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text:
        return rows
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    fault = None
    for raw in section.splitlines():
        heading = re.match(r"^### `([^`]+)`", raw)
        if heading:
            fault = heading.group(1)
            continue
        row = ROW.match(raw)
        if row and fault:
            code = row["code"].strip().strip("`").replace("—", "")
            line = row["line"].strip()
            line = line[1:-1] if line.startswith("`") and line.endswith("`") else ""
            rows[(fault, row["cmd"])] = Observed(int(row["exit"]), code, line.replace(PIPE, "|"))
    return rows


def _render(observed: dict[tuple[str, str], Observed]) -> str:
    parts = [
        BEGIN,
        "",
        "<!-- Generated: ASSET_GENERATOR_UPDATE_DOCS=1 python -m pytest tests/test_faults.py -->",
    ]
    for case in FAULTS:
        parts += ["", f"### `{case.key}` — {case.title}", ""]
        parts += ["| command | exit | JSON `error.code` | stderr |", "| --- | --- | --- | --- |"]
        for command in case.commands:
            seen = observed.get((case.key, command))
            if seen is None:
                continue
            code = f"`{seen.code}`" if seen.code else "—"
            escaped = seen.line.replace("|", PIPE)
            line = f"`{escaped}`" if seen.line else "(nothing)"
            parts.append(f"| `{command}` | {seen.exit} | {code} | {line} |")
    parts += ["", END]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def matrix() -> Iterator[Matrix]:
    found = Matrix(expected=_parse_doc())
    yield found
    if UPDATE and found.observed:
        text = DOC.read_text(encoding="utf-8")
        merged = {**found.expected, **found.observed}
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOC.write_text(head + _render(merged) + tail, encoding="utf-8")


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

    assert "Traceback" not in result.stderr, result.stderr
    # generate reports its progress on stderr, one plain line per state change ("gen_…: …");
    # besides those, exactly one line.
    lines = [x for x in result.stderr.splitlines() if not re.match(r"gen_[0-9a-f]{8}: ", x)]
    expected_lines = 0 if result.code == 0 else 1
    assert len(lines) == expected_lines, f"unexpected stderr: {result.stderr!r}"
    line = lines[0].replace(emulator.url, "<server>") if lines else ""
    if other is not None:
        line = line.replace(other.url, "<other host>")
    line = re.sub(r"gen_[0-9a-f]{8}", "gen_…", line)
    assert token not in result.stderr + result.stdout
    code = ""
    if result.stdout.strip():
        document = json.loads(result.stdout)  # exactly one JSON document
        if result.code != 0:
            assert document["ok"] is False
            assert document["error"]["message"] in lines[0]
            code = document["error"]["code"]
    else:
        assert result.code == 0
    if result.code != 0:
        assert "<server>" in line or "session" in line, f"the message must name the server: {line}"
    # Redirects are never followed: the other host sees nothing, so no cookie can leak there.
    assert received == []
    _assert_nothing_half_written(workdir, state_dir)

    seen = Observed(result.code, code, line)
    matrix.observed[(case.key, command)] = seen
    if not UPDATE:
        expected = matrix.expected.get((case.key, command))
        assert expected is not None, (
            f"RELIABILITY.md has no row for {case.key} / {command}; regenerate it "
            "(ASSET_GENERATOR_UPDATE_DOCS=1 python -m pytest tests/test_faults.py)"
        )
        assert seen == expected, "RELIABILITY.md is out of date for this cell (regenerate it)"


def _assert_nothing_half_written(workdir: Path, state_dir: Path) -> None:
    leftovers = [p.name for p in workdir.rglob("*") if p.name.endswith(".part")]
    assert leftovers == []
    outside = [p for p in workdir.parent.parent.rglob("escaped.png")]
    assert outside == [] and not Path("/tmp/escaped.png").exists()
    path = state_dir / "generations.json"
    if path.exists():
        document = json.loads(path.read_text())
        live = [r for r in document["generations"].values() if r["status"] in ("queued", "running")]
        assert all(r["prompt"] == "seeded" for r in live), live
