"""``status``: is the server there, what are its backends doing, where are our generations."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App, CommandError
from asset_generator.cli.output import one_line as printable
from asset_generator.jobs import Generations
from asset_generator.pipeline.control import pipeline_rows
from asset_generator.registry import GenerationRecord
from asset_generator.swarm.errors import (
    APIError,
    SwarmError,
)

if TYPE_CHECKING:
    from asset_generator.swarm.client import Backend, CurrentStatus

WATCH_SECONDS = 1.0
# How old the session whose version and server id we show may be: a new session (one
# GetNewSession) at most this often, so a restart shows within a minute.
SERVER_FACTS_SECONDS = 60.0
# Finished generations shown below the active ones, newest first.
RECENT_FINISHED = 5


@dataclass
class Report:
    """Everything ``status`` shows, gathered in one pass."""

    server: str
    response_ms: float
    user: str | None
    version: str | None
    server_id: str | None
    current: CurrentStatus
    backends: list[Backend] | None
    backends_error: str | None
    generations: list[GenerationRecord]
    # Finished generations of ours left out by the limit (`--all` shows them).
    older_not_shown: int = 0
    # Our pipelines (pipeline.control.pipeline_rows): running ones with their in-flight assets.
    pipelines: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        now = time.time()
        return {
            "ok": True,
            "server": self.server,
            "reachable": True,
            "response_ms": round(self.response_ms, 1),
            "version": self.version,
            "server_id": self.server_id,
            "user": self.user,
            "backend_status": dict(self.current.backend_status),
            "backends": (
                None
                if self.backends is None
                else [
                    {
                        "id": b.id,
                        "type": b.type,
                        "title": b.title,
                        "status": b.status,
                        "enabled": b.enabled,
                        "current_model": b.current_model,
                        "time_since_used": b.time_since_used,
                    }
                    for b in self.backends
                ]
            ),
            "backends_error": self.backends_error,
            "supported_features": list(self.current.supported_features),
            "generations": [
                {**r.public(), "age_seconds": max(int(now - r.created), 0)}
                for r in self.generations
            ],
            "older_not_shown": self.older_not_shown,
            "pipelines": list(self.pipelines),
        }


@click.command("status")
@click.option(
    "--watch",
    "-w",
    is_flag=True,
    help="Redraw every second until Ctrl-C (terminal only).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=RECENT_FINISHED,
    show_default=True,
    metavar="N",
    help="Show the N newest finished generations of ours (the active ones always).",
)
@click.option("--all", "show_all", is_flag=True, help="Show every finished generation of ours.")
@global_options
@click.pass_obj
def command(app: App, watch: bool, limit: int, show_all: bool) -> int:
    """Show the server, its backends and this client's generations.

    Reports the server URL, whether it answered and how fast, its version and id,
    the user, the backend roll-up, each backend (when the user may list them),
    supported features, and the generations started by this client with their
    live state and progress.

    Exit 0 when the server answered, 1 otherwise, so `asset-generator status -q &&
    ...` works in scripts. Reuses a cached server session: a status loop does not
    pile up sessions on the server.
    """
    generations = Generations(app.registry, app.server_key, app.client, app.output.debug)
    if watch:
        _refuse_watch(app)
        return _watch(app, generations)
    # A server that does not answer ends here with the contract's phrases (cli/__init__.py).
    report = gather(app, generations, finished_limit=None if show_all else limit)
    if app.output.is_json:
        app.output.json(report.to_json())
    elif not app.output.quiet:
        app.output.rich(render(report))
    return 0


# -- gathering ---------------------------------------------------------------------------------


def gather(
    app: App,
    generations: Generations,
    *,
    backends_hidden: str | None = None,
    finished_limit: int | None = RECENT_FINISHED,
) -> Report:
    """Ask the server (GetCurrentStatus, ListBackends) and our registry; raise SwarmError.

    ``backends_hidden``: ListBackends was already refused with this text; do not ask again.
    ``finished_limit``: how many finished generations to include; None for all of them.
    """
    asked: list[str] = []
    elapsed: list[float] = []

    def ask(session_id: str) -> CurrentStatus:
        asked.append(session_id)
        started = time.monotonic()
        answer = app.client().current_status(session_id)
        elapsed.append((time.monotonic() - started) * 1000)
        return answer

    # Version and server id come only with GetNewSession and change on a restart.
    current = app.with_session(ask, fresh_within=SERVER_FACTS_SECONDS)
    session_id = asked[-1]
    backends: list[Backend] | None = None
    backends_error = backends_hidden
    if backends_hidden is None:
        try:
            backends = app.client().backends(session_id)
        except APIError as exc:
            # ListBackends needs view_backends_list (power users, protocol §6.3); without it
            # the roll-up above is all this user may see, which is not a failure.
            backends_error = exc.text
    ours, older = _ours(app, generations, finished_limit)
    state = app.registry.read()
    cached = next((s for s in state.server(app.server_key).sessions if s.id == session_id), None)
    return Report(
        server=app.client().server,
        response_ms=elapsed[-1],
        user=cached.user_id if cached else None,
        version=cached.version if cached else None,
        server_id=cached.server_id if cached else None,
        current=current,
        backends=backends,
        backends_error=backends_error,
        generations=ours,
        older_not_shown=older,
        pipelines=tuple(pipeline_rows(app.registry, app.server_key)),
    )


def _ours(
    app: App, generations: Generations, limit: int | None
) -> tuple[list[GenerationRecord], int]:
    """Our active records (dead processes checked on the server), the latest finished, and
    how many older finished ones were left out."""
    records = app.registry.read().records_for(app.server_key)
    generations.refresh([r for r in records if not r.is_final])
    active = [r for r in records if not r.is_final]
    finished = [r for r in records if r.is_final]
    shown = finished if limit is None else finished[:limit]
    return active + shown, len(finished) - len(shown)


# -- rendering ---------------------------------------------------------------------------------


def render(
    report: Report, *, max_backends: int | None = None, max_generations: int | None = None
) -> Any:
    """The report as rich renderables: server facts, backends, our generations.

    Every text from the server (or a prompt) goes through ``printable``: none may move the
    cursor or recolour the terminal. ``max_*`` cut a table to fit a screen, saying how many
    rows were left out.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("server", printable(report.server))
    facts.add_row("reachable", f"yes ({report.response_ms:.0f} ms)")
    facts.add_row("version", printable(report.version or "unknown"))
    facts.add_row("server id", printable(report.server_id or "unknown"))
    facts.add_row("user", printable(report.user or "unknown"))
    rollup = report.current.backend_status
    summary = str(rollup.get("status") or "unknown")
    if rollup.get("message"):
        summary += f": {rollup['message']}"
    facts.add_row("backends", printable(summary))
    features = ", ".join(report.current.supported_features) or "none"
    facts.add_row("features", printable(features))
    parts: list[Any] = [facts]

    if report.backends is not None:
        backends = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, pad_edge=False)
        for name in ("BACKEND", "TYPE", "STATUS", "MODEL", "LAST USED"):
            # Only MODEL gives way on a narrow terminal, shortened with "…" on one line, never
            # chopped into pieces.
            backends.add_column(name, no_wrap=name != "MODEL")
        for b in report.backends[:max_backends]:
            label = b.id if not b.title else f"{b.id} {b.title}"
            status = b.status if b.enabled else f"{b.status} (disabled)"
            model = Text(printable(b.current_model or "-"), no_wrap=True, overflow="ellipsis")
            cells = (label, b.type, status, b.time_since_used or "-")
            row = [printable(cell) for cell in cells]
            backends.add_row(*row[:3], model, row[3])
        if max_backends == 0 and report.backends:
            parts += ["", f"{len(report.backends)} backends (`asset-generator status` lists them)"]
        else:
            parts += ["", backends if report.backends else "no backends configured"]
            parts += _more(len(report.backends), max_backends, "backends")
    else:
        reason = printable(report.backends_error or "refused")
        parts += ["", f"backend list not shown ({reason}); the roll-up is above"]

    parts.append("")
    if report.generations and max_generations == 0:
        parts.append(
            f"{len(report.generations)} generations of ours (`asset-generator status` lists them)"
        )
    elif report.generations:
        ours = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, pad_edge=False)
        ours.add_column("GENERATION", no_wrap=True)
        ours.add_column("STATE", no_wrap=True)
        ours.add_column("PROGRESS", justify="right", no_wrap=True)
        ours.add_column("AGE", justify="right", no_wrap=True)
        # The column may shrink to the terminal; each prompt stays on one line, cut with "…".
        ours.add_column("PROMPT")
        now = time.time()
        for r in report.generations[:max_generations]:
            prompt = Text(printable(r.prompt), no_wrap=True, overflow="ellipsis")
            ours.add_row(r.id, r.status, f"{r.progress:.0f}%", _age(now - r.created), prompt)
        parts.append(ours)
        parts += _more(len(report.generations), max_generations, "generations")
    elif not report.older_not_shown:
        parts.append("no generations started by this client on this server")
    # A frame cut to the screen (--watch) already says what it left out.
    if report.older_not_shown and max_generations is None:
        count = report.older_not_shown
        parts.append(
            f"{count} older finished generation{'s' if count > 1 else ''} not shown "
            "(--all shows them, --limit N the newest N)"
        )
    for row in report.pipelines:
        flying = ", ".join(f"{a['id']} {a['progress']:.0f}%" for a in row["in_flight"]) or "-"
        parts.append(
            printable(
                f"{row['id']}  {row['status']}  {row['done']}/{row['total']} done  "
                f"in flight: {flying}  {row['spec']}"
            )
        )
    return Group(*parts)


def _more(total: int, shown: int | None, what: str) -> list[str]:
    hidden = 0 if shown is None else total - shown
    return [f"… {hidden} more {what} (`asset-generator status` lists them)"] if hidden > 0 else []


def _age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# -- watching ----------------------------------------------------------------------------------


def _refuse_watch(app: App) -> None:
    """--watch redraws a terminal; anything else would fill a file or pipe with frames."""
    if app.output.is_json:
        raise CommandError(
            "--watch draws a table; for JSON run `asset-generator status --format json` "
            "in a loop instead",
            "usage_error",
            exit_code=2,
        )
    if app.output.quiet:
        raise CommandError("--watch shows output; it cannot be quiet", "usage_error", exit_code=2)
    if not _is_terminal(sys.stdout):
        raise CommandError(
            "--watch needs a terminal on stdout; in scripts run `asset-generator status` "
            "(or `status --format json`) in a loop instead",
            "usage_error",
            exit_code=2,
        )


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _watch(app: App, generations: Generations) -> int:
    """Redraw in place every second until Ctrl-C, the normal way out (exit 0).

    A server that does not answer is shown as such and asked again: watching a restart
    is one of the things --watch is for. Each frame is cut to the terminal's height, and a
    resize clears the screen, so no line of an older, wider frame is left behind.
    """
    from rich.live import Live

    console = app.output.stdout_console()
    hidden: str | None = None
    try:
        with (
            Live(console=console, auto_refresh=False, vertical_overflow="crop") as live,
            app.output.live(console),
        ):
            while True:
                try:
                    report: Report | None = gather(app, generations, backends_hidden=hidden)
                except SwarmError as exc:
                    report = None
                    problem = printable(exc.message)
                else:
                    # A refused ListBackends stays refused: do not ask every second.
                    hidden = report.backends_error if report.backends is None else None
                size = console.size
                view = (
                    _fit(console, report)
                    if report is not None
                    else _with_hint(f"server     {app.client().server}\nreachable  no: {problem}")
                )
                live.update(view, refresh=True)
                if _wait_for_resize(size, console, WATCH_SECONDS):
                    console.clear()
    except KeyboardInterrupt:
        return 0


def _with_hint(view: Any) -> Any:
    from rich.console import Group

    return Group(f"every {WATCH_SECONDS:g} s; Ctrl-C to quit", "", view)


def _fit(console: Any, report: Report) -> Any:
    """The report cut to the terminal's height.

    Finished generations are left out first, then backends, then active generations.
    """
    height = max(console.size.height - 1, 1)
    backends = len(report.backends or [])
    ours = len(report.generations)
    active = sum(1 for r in report.generations if not r.is_final)
    while True:
        view = _with_hint(render(report, max_backends=backends, max_generations=ours))
        if (ours == 0 and backends == 0) or len(console.render_lines(view, pad=False)) <= height:
            return view
        if ours > active or (ours > 0 and backends == 0):
            ours -= 1
        else:
            backends -= 1


def _wait_for_resize(size: Any, console: Any, seconds: float) -> bool:
    """Sleep ``seconds``; True (early) when the terminal changed size meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
        if console.size != size:
            return True
    return False
