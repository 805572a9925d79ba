"""``status``: is the server there, what are its backends doing, where are our generations."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App, CommandError, Stopped
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
            "pipelines": list(self.pipelines),
        }


@click.command("status")
@click.option(
    "--watch",
    "-w",
    is_flag=True,
    help="Redraw every second until Ctrl-C (terminal only).",
)
@global_options
@click.pass_obj
def command(app: App, watch: bool) -> int:
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
        _watch(app, generations)
    # A server that does not answer ends here with the contract's phrases (cli/__init__.py).
    report = gather(app, generations)
    if app.output.is_json:
        app.output.json(report.to_json())
    elif not app.output.quiet:
        app.output.rich(render(report))
    return 0


# -- gathering ---------------------------------------------------------------------------------


def gather(app: App, generations: Generations, *, backends_hidden: str | None = None) -> Report:
    """Ask the server (GetCurrentStatus, ListBackends) and our registry; raise SwarmError.

    ``backends_hidden``: ListBackends was already refused with this text; do not ask again.
    """
    asked: list[str] = []
    elapsed: list[float] = []

    def ask(session_id: str) -> CurrentStatus:
        asked.append(session_id)
        started = time.monotonic()
        answer = app.client().current_status(session_id)
        elapsed.append((time.monotonic() - started) * 1000)
        return answer

    current = app.with_session(ask)
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
        generations=_ours(app, generations),
        pipelines=tuple(pipeline_rows(app.registry, app.server_key)),
    )


def _ours(app: App, generations: Generations) -> list[GenerationRecord]:
    """Our active records (dead processes checked on the server) and the latest finished."""
    records = app.registry.read().records_for(app.server_key)
    generations.refresh([r for r in records if not r.is_final])
    active = [r for r in records if not r.is_final]
    finished = [r for r in records if r.is_final][:RECENT_FINISHED]
    return active + finished


# -- rendering ---------------------------------------------------------------------------------


def render(report: Report) -> Any:
    """The report as rich renderables: server facts, backends, our generations.

    Every text from the server (or a prompt) goes through ``printable``: none may move the
    cursor or recolour the terminal.
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
            backends.add_column(name, no_wrap=name != "MODEL", overflow="fold")
        for b in report.backends:
            label = b.id if not b.title else f"{b.id} {b.title}"
            status = b.status if b.enabled else f"{b.status} (disabled)"
            cells = (label, b.type, status, b.current_model or "-", b.time_since_used or "-")
            backends.add_row(*(printable(cell) for cell in cells))
        parts += ["", backends if report.backends else "no backends configured"]
    else:
        reason = printable(report.backends_error or "refused")
        parts += ["", f"backend list not shown ({reason}); the roll-up is above"]

    parts.append("")
    if report.generations:
        ours = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, pad_edge=False)
        ours.add_column("GENERATION", no_wrap=True)
        ours.add_column("STATE", no_wrap=True)
        ours.add_column("PROGRESS", justify="right", no_wrap=True)
        ours.add_column("AGE", justify="right", no_wrap=True)
        # The column may shrink to the terminal; each prompt stays on one line, cut with "…".
        ours.add_column("PROMPT")
        now = time.time()
        for r in report.generations:
            prompt = Text(printable(r.prompt), no_wrap=True, overflow="ellipsis")
            ours.add_row(r.id, r.status, f"{r.progress:.0f}%", _age(now - r.created), prompt)
        parts.append(ours)
    else:
        parts.append("no generations started by this client on this server")
    for row in report.pipelines:
        flying = ", ".join(f"{a['id']} {a['progress']:.0f}%" for a in row["in_flight"]) or "-"
        parts.append(
            printable(
                f"{row['id']}  {row['status']}  {row['done']}/{row['total']} done  "
                f"in flight: {flying}  {row['spec']}"
            )
        )
    return Group(*parts)


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


def _watch(app: App, generations: Generations) -> NoReturn:
    """Redraw in place every second until Ctrl-C (exit 130, cli-contract §3).

    A server that does not answer is shown as such and asked again: watching a restart
    is one of the things --watch is for.
    """
    from rich.live import Live

    hidden: str | None = None
    try:
        with Live(console=app.output.stdout_console(), auto_refresh=False) as live:
            while True:
                try:
                    report = gather(app, generations, backends_hidden=hidden)
                except SwarmError as exc:
                    view: Any = (
                        f"server     {app.client().server}\nreachable  no: {printable(exc.message)}"
                    )
                else:
                    # A refused ListBackends stays refused: do not ask every second.
                    hidden = report.backends_error if report.backends is None else None
                    view = render(report)
                live.update(view, refresh=True)
                time.sleep(WATCH_SECONDS)
    except KeyboardInterrupt:
        raise Stopped(130) from None
