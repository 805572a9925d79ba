"""``status``: is the server there, what is it doing, where are our generations."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App, CommandError
from asset_generator.cli.output import is_terminal
from asset_generator.cli.output import one_line as printable
from asset_generator.report import RECENT_FINISHED, Report, gather

if TYPE_CHECKING:
    from asset_generator.jobs import Generations
    from asset_generator.server.types import FactTable

WATCH_SECONDS = 1.0


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

    Reports the server URL, whether it answered and how fast, and its version. SwarmUI:
    its id, the user, the backend roll-up, each backend (when the user may list them)
    and supported features. ComfyUI: Python and PyTorch versions, devices and the queue
    (how much of it is ours). Then the generations and pipelines started by this client
    with their live state and progress.

    Exit 0 when the server answered, 1 otherwise, so `asset-generator status -q &&
    ...` works in scripts. Reuses a cached server session: a status loop does not
    pile up sessions on the server.
    """
    generations = app.generations()
    if watch:
        _refuse_watch(app)
        return _watch(app, generations)
    # A server that does not answer ends here with the contract's phrases (cli/__init__.py).
    report = gather(app.server(), generations, finished_limit=None if show_all else limit)
    if app.output.is_json:
        app.output.json(report.to_json())
    elif not app.output.quiet:
        app.output.rich(render(report))
    return 0


# -- rendering ---------------------------------------------------------------------------------


def render(
    report: Report, *, max_rows: int | None = None, max_generations: int | None = None
) -> Any:
    """The report as rich renderables: server facts, its tables, our generations.

    Every text from the server (or a prompt) goes through ``printable``: none may move the
    cursor or recolour the terminal. ``max_*`` cut a table to fit a screen, saying how many
    rows were left out.
    """
    from rich.console import Group
    from rich.table import Table

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    document = report.facts.document
    server = document["server"]
    facts.add_row("server", printable(server["url"] if isinstance(server, dict) else server))
    facts.add_row("reachable", f"yes ({report.response_ms:.0f} ms)")
    for label, value in report.facts.rows:
        facts.add_row(label, printable(value))
    parts: list[Any] = [facts]
    for table in report.facts.tables:
        parts += ["", *_table(table, max_rows)]
    for line in report.facts.lines:
        parts.append(printable(line))

    parts.append("")
    if report.generations and max_generations == 0:
        parts.append(
            f"{len(report.generations)} generations of ours (`asset-generator status` lists them)"
        )
    elif report.generations:
        parts += _generations(report, max_generations)
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


def _table(table: FactTable, max_rows: int | None) -> list[Any]:
    """One table of server facts, cut to ``max_rows`` (0: only how many there are)."""
    from rich.table import Table
    from rich.text import Text

    if table.unavailable is not None:
        return [printable(table.unavailable)]
    if max_rows == 0 and table.rows:
        return [f"{len(table.rows)} {table.name} (`asset-generator status` lists them)"]
    if not table.rows:
        return [table.empty]
    shown = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, pad_edge=False)
    for name in table.columns:
        # Only the elastic column gives way on a narrow terminal, shortened with "…" on one
        # line, never chopped into pieces.
        shown.add_column(name, no_wrap=name != table.elastic)
    elastic = table.columns.index(table.elastic) if table.elastic in table.columns else None
    for row in table.rows[:max_rows]:
        cells: list[Any] = [printable(cell) for cell in row]
        if elastic is not None:
            cells[elastic] = Text(cells[elastic], no_wrap=True, overflow="ellipsis")
        shown.add_row(*cells)
    return [shown, *_more(len(table.rows), max_rows, table.name)]


def _generations(report: Report, limit: int | None) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    ours = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, pad_edge=False)
    ours.add_column("GENERATION", no_wrap=True)
    ours.add_column("STATE", no_wrap=True)
    ours.add_column("PROGRESS", justify="right", no_wrap=True)
    ours.add_column("AGE", justify="right", no_wrap=True)
    # The column may shrink to the terminal; each prompt stays on one line, cut with "…".
    ours.add_column("PROMPT")
    now = time.time()
    for r in report.generations[:limit]:
        prompt = Text(printable(r.prompt), no_wrap=True, overflow="ellipsis")
        ours.add_row(r.id, r.status, f"{r.progress:.0f}%", _age(now - r.created), prompt)
    return [ours, *_more(len(report.generations), limit, "generations")]


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
    if not is_terminal(sys.stdout):
        raise CommandError(
            "--watch needs a terminal on stdout; in scripts run `asset-generator status` "
            "(or `status --format json`) in a loop instead",
            "usage_error",
            exit_code=2,
        )


def _watch(app: App, generations: Generations) -> int:
    """Redraw in place every second until Ctrl-C, the normal way out (exit 0).

    A server that does not answer is shown as such and asked again: watching a restart
    is one of the things --watch is for. Each frame is cut to the terminal's height, and a
    resize clears the screen, so no line of an older, wider frame is left behind.
    """
    from rich.live import Live

    from asset_generator.server.errors import ServerError

    console = app.output.stdout_console()
    try:
        with (
            Live(console=console, auto_refresh=False, vertical_overflow="crop") as live,
            app.output.live(console),
        ):
            while True:
                try:
                    report: Report | None = gather(app.server(), generations)
                except ServerError as exc:
                    report = None
                    problem = printable(exc.message)
                size = console.size
                view = (
                    _fit(console, report)
                    if report is not None
                    else _with_hint(f"server     {app.server_name}\nreachable  no: {problem}")
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

    Finished generations are left out first, then table rows, then active generations.
    """
    height = max(console.size.height - 1, 1)
    rows = max((len(t.rows) for t in report.facts.tables if t.unavailable is None), default=0)
    ours = len(report.generations)
    active = sum(1 for r in report.generations if not r.is_final)
    while True:
        view = _with_hint(render(report, max_rows=rows, max_generations=ours))
        if (ours == 0 and rows == 0) or len(console.render_lines(view, pad=False)) <= height:
            return view
        if ours > active or (ours > 0 and rows == 0):
            ours -= 1
        else:
            rows -= 1


def _wait_for_resize(size: Any, console: Any, seconds: float) -> bool:
    """Sleep ``seconds``; True (early) when the terminal changed size meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
        if console.size != size:
            return True
    return False
