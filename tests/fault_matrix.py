"""The machinery of a fault matrix: one table per server type in RELIABILITY.md, each cell run.

A matrix is a list of faults (``FaultCase``: what it models and the emulator hook that
produces it) times the commands each fault can reach. Each cell runs the installed program
against an emulator with the fault injected and checks what a user relies on
(``observe``): the exit code, exactly one line on stderr naming the server (never a
traceback), one JSON failure document on stdout with a stable code, and no secret shown.
What it saw is compared with the cell's row in RELIABILITY.md (``MatrixDoc``), so the
document cannot drift; with ``ASSET_GENERATOR_UPDATE_DOCS=1`` the section is rewritten
instead. ``tests/test_faults.py`` (SwarmUI) and ``tests/test_comfy_faults.py`` (ComfyUI) use it.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import Result

from asset_generator.emulator import Fault, FaultPoint

DOC = Path(__file__).resolve().parent.parent / "RELIABILITY.md"
PIPE = "\\|"  # a literal | inside a Markdown table cell
UPDATE = os.environ.get("ASSET_GENERATOR_UPDATE_DOCS") == "1"
TIMEOUT = "1"  # --timeout for every cell: slow faults take one second, not thirty
HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
GATEWAY_TIMEOUT_PAGE = b"<html><head><title>504 Gateway Time-out</title></head><body></body></html>"
# A generating process reports its progress on stderr, one plain line per state change, and
# (ComfyUI) the seed it drew before it sends anything.
PROGRESS_LINE = re.compile(r"(gen|pipe)_[0-9a-f]{8}: |seed \d+ \(drawn by the client; ")

Hook = Callable[[FaultPoint], Fault | None]


def unreachable_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def json_body(body: bytes, status: int = 200) -> Fault:
    return Fault(status=status, headers=[("Content-Type", "application/json")], body=body)


@dataclass(frozen=True)
class FaultCase:
    """One misbehaviour: what it models and the emulator hook that produces it."""

    key: str
    title: str
    hook: Hook
    # Commands the fault can reach at all (WebSocket and image faults only touch generate).
    commands: tuple[str, ...] = ()
    # The other host a redirect points to, started per cell (it must receive nothing).
    redirect: bool = False
    # Emulator settings the fault needs (a small upload limit, a credential gate).
    config: Mapping[str, Any] = field(default_factory=dict)
    # No server at all: the command is pointed at a port nothing listens on.
    down: bool = False

    def cell_hook(self) -> Hook:
        """The hook for one cell: a fresh one where it keeps state (a fault that strikes
        once has a ``fresh`` method making a new one)."""
        fresh = getattr(self.hook, "fresh", None)
        return fresh() if callable(fresh) else self.hook


@dataclass(frozen=True)
class Observed:
    """What a user saw in one cell; ``extra`` are the matrix's own further columns."""

    exit: int
    code: str
    line: str
    extra: tuple[str, ...] = ()


@dataclass
class Matrix:
    """The document's rows, and what this run saw (written back in update mode)."""

    expected: dict[tuple[str, str], Observed] = field(default_factory=dict)
    observed: dict[tuple[str, str], Observed] = field(default_factory=dict)


def _cells(row: str) -> list[str]:
    """The cells of a Markdown table row; ``\\|`` stays inside its cell."""
    inner = row.strip()[1:-1]
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", inner)]


def _code_span(text: str) -> str:
    """The text of a cell shown as one code span, or '' for a placeholder."""
    return text[1:-1] if text.startswith("`") and text.endswith("`") and len(text) > 1 else ""


@dataclass(frozen=True)
class MatrixDoc:
    """One generated section of RELIABILITY.md: its markers and its table's columns."""

    # The word in the markers: <!-- BEGIN {name} --> … <!-- END {name} -->.
    name: str
    # The test file that generates it (named in the section's regenerate comment).
    test_file: str
    # Further columns after `stderr`, with their headings.
    extra_columns: tuple[str, ...] = ()
    path: Path = DOC

    @property
    def begin(self) -> str:
        return f"<!-- BEGIN {self.name} -->"

    @property
    def end(self) -> str:
        return f"<!-- END {self.name} -->"

    def parse(self) -> dict[tuple[str, str], Observed]:
        rows: dict[tuple[str, str], Observed] = {}
        if not self.path.exists():
            return rows
        text = self.path.read_text(encoding="utf-8")
        if self.begin not in text:
            return rows
        section = text.split(self.begin, 1)[1].split(self.end, 1)[0]
        fault = None
        width = 4 + len(self.extra_columns)
        for raw in section.splitlines():
            heading = re.match(r"^### `([^`]+)`", raw)
            if heading:
                fault = heading.group(1)
                continue
            if not raw.startswith("| `") or fault is None:
                continue
            cells = _cells(raw)
            if len(cells) != width or not cells[1].isdigit():
                continue
            command, exit_code, code, line, *extra = cells
            rows[(fault, _code_span(command))] = Observed(
                int(exit_code),
                _code_span(code),
                _code_span(line).replace(PIPE, "|"),
                tuple(e.replace(PIPE, "|") for e in extra),
            )
        return rows

    def render(self, cases: list[FaultCase], observed: dict[tuple[str, str], Observed]) -> str:
        headings = ["command", "exit", "JSON `error.code`", "stderr", *self.extra_columns]
        parts = [
            self.begin,
            "",
            f"<!-- Generated: ASSET_GENERATOR_UPDATE_DOCS=1 python -m pytest {self.test_file} -->",
        ]
        for case in cases:
            parts += ["", f"### `{case.key}` — {case.title}", ""]
            parts += ["| " + " | ".join(headings) + " |", "|" + " --- |" * len(headings)]
            for command in case.commands:
                seen = observed.get((case.key, command))
                if seen is None:
                    continue
                code = f"`{seen.code}`" if seen.code else "—"
                escaped = seen.line.replace("|", PIPE)
                line = f"`{escaped}`" if seen.line else "(nothing)"
                cells = [f"`{command}`", str(seen.exit), code, line]
                cells += [e.replace("|", PIPE) for e in seen.extra]
                parts.append("| " + " | ".join(cells) + " |")
        parts += ["", self.end]
        return "\n".join(parts)

    @contextmanager
    def collecting(self, cases: list[FaultCase]) -> Iterator[Matrix]:
        """The matrix a module's cells fill in; in update mode, written back at the end."""
        found = Matrix(expected=self.parse())
        yield found
        if UPDATE and found.observed:
            # Under a lock and from the file as it is now: each xdist worker runs some of the
            # cells and writes back its own on top of the others'.
            import fcntl
            import tempfile

            lock_path = Path(tempfile.gettempdir()) / "asset-generator-fault-matrix.lock"
            with open(lock_path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                text = self.path.read_text(encoding="utf-8")
                merged = {**self.parse(), **found.observed}
                if self.begin in text:
                    head, rest = text.split(self.begin, 1)
                    tail = rest.split(self.end, 1)[1]
                else:
                    head, tail = text.rstrip("\n") + "\n\n", "\n"
                self.path.write_text(head + self.render(cases, merged) + tail, encoding="utf-8")

    def check(self, matrix: Matrix, key: str, command: str, seen: Observed) -> None:
        """Record what a cell saw; outside update mode, it must be the document's row."""
        matrix.observed[(key, command)] = seen
        if UPDATE:
            return
        expected = matrix.expected.get((key, command))
        regenerate = f"ASSET_GENERATOR_UPDATE_DOCS=1 python -m pytest {self.test_file}"
        assert expected is not None, (
            f"RELIABILITY.md has no row for {key} / {command}; regenerate it ({regenerate})"
        )
        assert seen == expected, f"RELIABILITY.md is out of date for this cell ({regenerate})"


def observe(result: Result, *, names: Mapping[str, str], secrets: tuple[str, ...] = ()) -> Observed:
    """The promises every cell keeps, checked; what the user saw, with names made generic.

    ``names``: text to replace in the line (the server's URL by ``<server>``, ids by
    placeholders), applied in order; keys starting with ``re:`` are regular expressions.
    """
    assert "Traceback" not in result.stderr, result.stderr
    # Besides the progress lines of a generating process, exactly one line.
    lines = [x for x in result.stderr.splitlines() if not PROGRESS_LINE.match(x)]
    expected_lines = 0 if result.code == 0 else 1
    assert len(lines) == expected_lines, f"unexpected stderr: {result.stderr!r}"
    line = lines[0] if lines else ""
    for old, new in names.items():
        line = re.sub(old[3:], new, line) if old.startswith("re:") else line.replace(old, new)
    for secret in secrets:
        assert secret not in result.stderr + result.stdout
    code = ""
    if result.stdout.strip():
        document = json.loads(result.stdout)  # exactly one JSON document
        if result.code != 0:
            assert document["ok"] is False
            assert document["error"]["message"] in lines[0]
            code = document["error"]["code"]
    else:
        assert result.code == 0
    return Observed(result.code, code, line)


def assert_nothing_half_written(
    workdir: Path, state_dir: Path, live_prompts: tuple[str, ...] = ("seeded",)
) -> None:
    """No partial download, nothing outside the output directory, no record left running
    (except the seeded ones a cell made for its command to act on)."""
    leftovers = [p.name for p in workdir.rglob("*") if p.name.endswith(".part")]
    assert leftovers == []
    outside = [p for p in workdir.parent.parent.rglob("escaped.png")]
    assert outside == [] and not Path("/tmp/escaped.png").exists()
    path = state_dir / "generations.json"
    if path.exists():
        document = json.loads(path.read_text())
        live = [r for r in document["generations"].values() if r["status"] in ("queued", "running")]
        assert all(r["prompt"] in live_prompts for r in live), live
