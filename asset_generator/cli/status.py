"""``status``: is the server there, what is it doing, where are our generations."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import click

from asset_generator.cli import global_options
from asset_generator.cli.app import App, CommandError
from asset_generator.cli.output import is_terminal
from asset_generator.cli.output import one_line as printable
from asset_generator.registry import CANCELLED, GenerationRecord
from asset_generator.report import RECENT_FINISHED, Report, gather, gather_local
from asset_generator.server.errors import ServerError
from asset_generator.text import plural

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
    ...` works in scripts; a server that does not answer still gets our generations
    and pipelines as this client last recorded them (their live state unknown). A
    cancel the server has not confirmed shows as "cancel sent, not confirmed". Reuses
    a cached server session: a status loop does not pile up sessions on the server.
    """
    generations = app.generations()
    if watch:
        _refuse_watch(app)
        return _watch(app, generations)
    finished_limit = None if show_all else limit
    try:
        report = gather(app.server(), generations, finished_limit=finished_limit)
    except ServerError as exc:
        if app.wrong_type_remembered(exc):
            raise
        _unreachable(app, generations, exc, finished_limit)
    if app.output.is_json:
        app.output.json(report.to_json())
    elif not app.output.quiet:
        app.output.rich(render(report))
    return 0


def _unreachable(
    app: App, generations: Generations, exc: ServerError, finished_limit: int | None
) -> NoReturn:
    """The server did not answer: our work as last recorded, then the error (exit 1).

    The message and code are the contract's for that failure (cli/__init__.py); the JSON
    failure document also carries our generations and pipelines, their live state unknown.
    """
    problem = f"{exc.phrase}: {exc.message}"
    report = gather_local(generations, app.server_name, problem, finished_limit=finished_limit)
    # The shape of the answered document's `server` (cli-contract §7), unreachable.
    server = {"url": app.server_name, "type": app.known_type(), "reachable": exc.reachable}
    if report.ours and not app.output.is_json and not app.output.quiet:
        app.output.rich(render(report))
    raise CommandError(
        problem,
        exc.code,
        details={
            "server": server,
            "type": server["type"],
            "reachable": exc.reachable,
            **report.to_json(),
        },
    )


# -- rendering ---------------------------------------------------------------------------------

LISTS_THEM = "(`asset-generator status` lists them)"
UNKNOWN = "live state unknown: this client's generations and pipelines as it last recorded them"


def render(report: Report) -> Any:
    """The report as rich renderables: the server, its tables, then our work.

    Every text from the server (or a prompt) goes through ``printable``: none may move the
    cursor or recolour the terminal.
    """
    from rich.console import Group

    return Group(*_server_block(report), "", *_our_work(report))


def _server_block(report: Report) -> list[Any]:
    """Server facts and tables (or, for a server that did not answer, why not)."""
    from rich.table import Table

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("server", printable(_server_name(report)))
    if report.facts is None:
        facts.add_row("reachable", f"no: {printable(report.problem or 'no answer')}")
        return [facts, *([UNKNOWN] if report.ours else [])]
    facts.add_row("reachable", f"yes ({report.response_ms:.0f} ms)")
    for label, value in report.facts.rows:
        facts.add_row(label, printable(value))
    parts: list[Any] = [facts]
    for table in report.facts.tables:
        parts += ["", *_table(table)]
    parts += [printable(line) for line in report.facts.lines]
    return parts


def _server_brief(report: Report) -> list[Any]:
    """The server in a line for a short terminal: address, answer, the main facts."""
    from rich.text import Text

    def line(text: str) -> Text:
        return Text(text, no_wrap=True, overflow="ellipsis")

    name = printable(_server_name(report))
    if report.facts is None:
        problem = printable(report.problem or "no answer")
        return [line(f"{name} reachable no: {problem}"), *([line(UNKNOWN)] if report.ours else [])]
    words = [f"{name} ({report.response_ms:.0f} ms)"]
    words += [
        f"{label} {printable(value)}"
        for label, value in report.facts.rows
        if label in report.facts.brief
    ]
    return [line(" · ".join(words))]


def _server_name(report: Report) -> str:
    if report.facts is None:
        return report.server
    server = report.facts.document["server"]
    return str(server["url"] if isinstance(server, dict) else server)


def _our_work(
    report: Report,
    *,
    finished: int | None = None,
    active: int | None = None,
    ended_pipelines: bool = True,
    watching: bool = False,
) -> list[Any]:
    """Our generations (active ones first) and pipelines.

    ``finished`` / ``active``: how many of each kind of generation to show (None: all of
    them), the rest counted on one line; ``ended_pipelines``: show finished pipelines too.
    """
    from rich.text import Text

    running = [row for row in report.pipelines if row["status"] not in FINISHED]
    ended = [row for row in report.pipelines if row["status"] in FINISHED]
    parts: list[Any] = [_pipeline_line(row) for row in running]
    live = [r for r in report.generations if not r.is_final]
    done = [r for r in report.generations if r.is_final]
    shown = live[:active] + done[:finished]
    if shown:
        parts.append(_generations(shown))
    hidden = len(report.generations) - len(shown)
    if hidden:
        more = f"… {plural(hidden, 'more generation', 'more generations')} {LISTS_THEM}"
        # One line however narrow the terminal: the count is what matters.
        parts.append(Text(more, no_wrap=True, overflow="ellipsis"))
    elif not report.generations and not report.older_not_shown:
        parts.append("no generations started by this client on this server")
    # A frame cut to the screen (--watch) already says what it left out.
    if report.older_not_shown and not watching:
        parts.append(
            f"{plural(report.older_not_shown, 'older finished generation')} not shown "
            "(--all shows them, --limit N the newest N)"
        )
    for record in shown:
        if record.cancel_unconfirmed is not None:
            parts.append(
                f"{record.id}: the server has not confirmed the cancel; "
                f"`asset-generator cancel {record.id}` sends it again"
            )
    if ended_pipelines:
        parts += [_pipeline_line(row) for row in ended]
    return parts


FINISHED = ("succeeded", "failed", "cancelled")


def _pipeline_line(row: dict[str, Any]) -> str:
    flying = ", ".join(f"{a['id']} {a['progress']:.0f}%" for a in row["in_flight"]) or "-"
    return printable(
        f"{row['id']}  {row['status']}  {row['done']}/{row['total']} done  "
        f"in flight: {flying}  {row['spec']}"
    )


def _table(table: FactTable) -> list[Any]:
    """One table of server facts, whole: a short terminal leaves it out instead (``_fit``)."""
    from rich.table import Table
    from rich.text import Text

    if table.unavailable is not None:
        return [printable(table.unavailable)]
    if not table.rows:
        return [table.empty]
    shown = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, pad_edge=False)
    for name in table.columns:
        # Only the elastic column gives way on a narrow terminal, shortened with "…" on one
        # line, never chopped into pieces.
        shown.add_column(name, no_wrap=name != table.elastic)
    elastic = table.columns.index(table.elastic) if table.elastic in table.columns else None
    for row in table.rows:
        cells: list[Any] = [printable(cell) for cell in row]
        if elastic is not None:
            cells[elastic] = Text(cells[elastic], no_wrap=True, overflow="ellipsis")
        shown.add_row(*cells)
    return [shown]


def _generations(records: list[GenerationRecord]) -> Any:
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
    for r in records:
        prompt = Text(printable(r.prompt), no_wrap=True, overflow="ellipsis")
        ours.add_row(r.id, _state(r), f"{r.progress:.0f}%", _age(now - r.created), prompt)
    return ours


def _state(record: GenerationRecord) -> str:
    """The STATE column: the status, and a cancel the server has not confirmed."""
    if record.cancel_unconfirmed is None:
        return record.status
    if record.status == CANCELLED:
        return "cancel sent, not confirmed"
    return f"{record.status}, cancel sent, not confirmed"


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

    A server that does not answer is shown as such, with our work as last recorded, and
    asked again: watching a restart is one of the things --watch is for. Each frame is cut
    to the terminal's height, and a resize clears the screen, so no line of an older, wider
    frame is left behind.
    """
    from rich.live import Live

    console = app.output.stdout_console()
    try:
        with (
            Live(console=console, auto_refresh=False, vertical_overflow="crop") as live,
            app.output.live(console),
        ):
            while True:
                try:
                    report = gather(app.server(), generations)
                except ServerError as exc:
                    problem = f"{exc.phrase}: {exc.message}"
                    report = gather_local(generations, app.server_name, problem)
                size = console.size
                live.update(_fit(console, report), refresh=True)
                if _wait_for_resize(size, console, WATCH_SECONDS):
                    console.clear()
    except KeyboardInterrupt:
        return 0


HINT = f"every {WATCH_SECONDS:g} s; Ctrl-C to quit"


def _fit(console: Any, report: Report) -> Any:
    """The report cut to the terminal's height.

    As `status` shows it when it fits; otherwise the first of ``_shorter_frames`` that does.
    """
    from rich.console import Group

    height = max(console.size.height - 1, 1)
    full = Group(HINT, "", *_server_block(report), "", *_our_work(report, watching=True))
    view = full
    for view in _shorter_frames(report, first=full):
        if len(console.render_lines(view, pad=False)) <= height:
            break
    return view


def _shorter_frames(report: Report, first: Any) -> Iterator[Any]:
    """``first``, then frames for a short terminal, each shorter than the one before.

    Our work comes first and the server shrinks to a line below it (its tables kept while
    they fit). Lines that are the same every second (blank lines, the hint) go before
    anything of ours is left out, which is then counted on a line: finished pipelines, then
    finished generations; the server's line goes before the active generations do.
    """
    from rich.console import Group

    live = sum(1 for r in report.generations if not r.is_final)
    done = len(report.generations) - live
    tables = [] if report.facts is None else report.facts.tables
    brief = _server_brief(report)

    def frame(
        *,
        hint: bool = True,
        gaps: bool = True,
        with_tables: bool = False,
        server: bool = True,
        ended: bool = True,
        finished: int = done,
        active: int = live,
    ) -> Any:
        gap = [""] if gaps else []
        work = _our_work(
            report, finished=finished, active=active, ended_pipelines=ended, watching=True
        )
        below: list[Any] = [*gap, *brief] if server else []
        if server and with_tables:
            for table in tables:
                below += [*gap, *_table(table)]
        return Group(*([HINT, *gap] if hint else []), *work, *below)

    yield first
    if tables:
        yield frame(with_tables=True)
    yield frame()
    yield frame(gaps=False)
    yield frame(gaps=False, hint=False)
    yield frame(gaps=False, hint=False, ended=False)
    quiet = {"gaps": False, "hint": False, "ended": False}
    for finished in range(done - 1, -1, -1):
        yield frame(**quiet, finished=finished)
    yield frame(**quiet, finished=0, server=False)
    for active in range(live - 1, -1, -1):
        yield frame(**quiet, finished=0, server=False, active=active)


def _wait_for_resize(size: Any, console: Any, seconds: float) -> bool:
    """Sleep ``seconds``; True (early) when the terminal changed size meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
        if console.size != size:
            return True
    return False
