"""The seam's vocabulary: a request in the user's words, the events of a run, the operations.

An adapter translates a ``Request`` into its server's protocol (``prepare``), records our work
under a ``Handle`` of its choosing before anything is sent (``claim``), and runs it as a stream
of ``Event``s (``start``). Handles are private to the adapter and to the registry file (0600):
a SwarmUI session id is a credential, and a ComfyUI prompt id lets anyone cancel the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Handle = dict[str, Any]

# Waiting.state: jobstate.QUEUED, jobstate.RUNNING, or waiting for a model to load.
LOADING = "loading model"

# `generate image` options a Request carries, by their config names.
OPTIONS = (
    "negative_prompt",
    "model",
    "width",
    "height",
    "steps",
    "cfg_scale",
    "seed",
    "sampler",
    "scheduler",
    "images",
)
# The options every run of a pipeline takes alike (its seed and image count are its own).
RUN_OPTIONS = tuple(name for name in OPTIONS if name not in ("seed", "images"))
# The seed of a run as the user may give it: -1 or unset is random.
RANDOM_SEED = -1


@dataclass(frozen=True)
class Lora:
    """``--lora NAME[:WEIGHT]``; the weight is kept as typed (SwarmUI takes the text)."""

    name: str
    weight: str = "1"

    @property
    def strength(self) -> float:
        return float(self.weight)

    @classmethod
    def parse(cls, item: str) -> Lora:
        """``NAME[:WEIGHT]``; a colon not followed by a number belongs to the name."""
        name, sep, weight = item.rpartition(":")
        if sep and name:
            try:
                float(weight)
            except ValueError:
                pass
            else:
                return cls(name, weight.strip())
        return cls(item, "1")

    def __str__(self) -> str:
        return f"{self.name}:{self.weight}"


@dataclass(frozen=True)
class SetInput:
    """``--set NODE.INPUT=VALUE``: one input of a workflow node, set last (it wins)."""

    node: str
    input: str
    value: Any
    # As the user typed it, for messages.
    text: str


@dataclass(frozen=True)
class Workflow:
    """A workflow file the user gave (``--workflow``), already read and parsed."""

    path: Path
    document: dict[str, Any]
    sha256: str


@dataclass(frozen=True)
class Request:
    """A generation as the user asked for it: explicit options, else the config's ``defaults``.

    An option left None is not sent, so the model's (or the workflow's) own value applies.
    ``params`` are free SwarmUI parameters (``--param``), ``workflow`` and ``sets`` ComfyUI's.
    """

    prompt: str | None
    negative_prompt: str | None = None
    model: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    sampler: str | None = None
    scheduler: str | None = None
    images: int | None = None
    loras: tuple[Lora, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()
    workflow: Workflow | None = None
    sets: tuple[SetInput, ...] = ()
    # SwarmUI: the server keeps nothing, images arrive inline.
    no_save: bool = False
    # The config's [generate] values, by option name: below --param and explicit options.
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> Any:
        """The explicit value of option ``name``, else the config's, else None."""
        value = getattr(self, name)
        return value if value is not None else self.defaults.get(name)

    def given(self) -> dict[str, Any]:
        """The options set explicitly, by name."""
        return {name: getattr(self, name) for name in OPTIONS if getattr(self, name) is not None}

    def with_options(self, **changes: Any) -> Request:
        from dataclasses import replace

        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """What the request asks beyond prompt and seed, in the user's words (for manifests)."""
        shown: dict[str, Any] = {
            name: self.option(name)
            for name in OPTIONS
            if name not in ("seed", "images") and self.option(name) is not None
        }
        if self.loras:
            shown["loras"] = [str(lora) for lora in self.loras]
        for key, value in self.params:
            shown[key] = value
        if self.workflow is not None:
            shown["workflow"] = {"file": str(self.workflow.path), "sha256": self.workflow.sha256}
        if self.sets:
            shown["set"] = {f"{s.node}.{s.input}": s.value for s in self.sets}
        if self.no_save:
            shown["no_save"] = True
        return shown


@dataclass
class Prepared:
    """A request translated for one server: what the run needs to know of it."""

    request: Request
    # Images the run should save (SwarmUI: images × batch size; ComfyUI: prompts × batch).
    expected: int
    # Sampling steps per image, when known (progress lines show "step 3/20").
    steps: int | None
    # For {model} in file names.
    model: str | None
    # The prompt as recorded and used in file names.
    prompt: str
    # What is sent, as `generate -f json` shows it under "parameters".
    parameters: dict[str, Any]
    # The adapter's own translation (a T2I body, API-format graphs).
    payload: Any = None
    # Things worth telling the user before the run (a seed the client drew, say).
    notes: tuple[str, ...] = ()


def typed_value(text: str) -> Any:
    """A ``--param``/``--set`` value: booleans, integers and decimals become JSON ones."""
    import re

    stripped = text.strip()
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if re.fullmatch(r"[+-]?\d+", stripped):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", stripped):
        return float(text)
    return text


def parse_assignment(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (key, typed value); ValueError on a malformed item."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not any(c.isalpha() for c in key):
        raise ValueError(f"{item!r} is not KEY=VALUE")
    return key.strip(), typed_value(value)


# -- events of a run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """The server holds the request now: an interrupt sent from here on reaches it."""


@dataclass(frozen=True)
class Waiting:
    """The run's state changed: QUEUED, LOADING or RUNNING, with the words to show."""

    state: str
    detail: str


@dataclass(frozen=True)
class Progress:
    """Image ``index`` (0-based among the expected) is ``fraction`` (0..1) done."""

    index: int
    fraction: float


@dataclass(frozen=True)
class ImageReady:
    """A result image: inline ``data``, or one to fetch with ``Run.open_image``."""

    index: int
    # The server's name for it (`--no-download` prints it); None when it came inline.
    shown: str | None
    extension: str
    data: bytes | None = None
    seed: int | None = None
    metadata: dict[str, Any] | None = None
    # The adapter's own reference, for open_image.
    ref: Any = None


@dataclass(frozen=True)
class NotAResult:
    """An image the server sent that is not one of the results (a grid, an intermediate)."""

    index: int
    kind: str
    shown: str | None


@dataclass(frozen=True)
class Discarded:
    """Results the server took back (refused by its post-processing)."""

    indices: tuple[int, ...]


@dataclass(frozen=True)
class Notice:
    """Something the user should know that does not stop the run (a node the server skipped)."""

    text: str


@dataclass(frozen=True)
class Renewed:
    """Our work moved to a new handle (a stale SwarmUI session was replaced)."""

    handle: Handle


@dataclass(frozen=True)
class Tick:
    """Nothing new; the run is still going (lets the caller look at its clock and marks).

    ``look``: the run is about to send something; a cancel recorded meanwhile must be seen
    now (the caller then cancels the run, which sends nothing more).
    """

    look: bool = False


# How a run ended, as the server tells it.
DONE, INTERRUPTED, FAILED = "done", "interrupted", "failed"


@dataclass(frozen=True)
class Ended:
    """The server is done with the request: DONE, INTERRUPTED (someone cancelled) or FAILED.

    DONE with fewer images than expected is the server ending short without a word.
    """

    how: str
    text: str | None = None
    # How many result images the run comes to, when the server says (ComfyUI announces each
    # one; a prompt of it that vanished counts what it did not make); the run is then
    # complete when every one of them was saved.
    images: int | None = None


Event = (
    Accepted
    | Waiting
    | Progress
    | ImageReady
    | NotAResult
    | Discarded
    | Notice
    | Renewed
    | Tick
    | Ended
)


# -- what the registry lends an adapter --------------------------------------------------------


class LedgerView(Protocol):
    """The registry as one adapter sees it, for one server and credential."""

    # The adapter's own memory (sessions, route flags, version), kept in the registry file.
    cache: dict[str, Any]
    # Our generation records on this server (GenerationRecord), newest first.
    records: list[Any]

    def add(self, record: Any) -> None: ...


class Ledger(Protocol):
    def read(self) -> LedgerView: ...

    def change(self) -> AbstractContextManager[LedgerView]: ...


class Claimer(Protocol):
    """Hands out where our next generation runs and records it there, in one step.

    ``record(handle)`` builds the GenerationRecord; ``claim`` adds it to the registry in the
    same transaction that picks the handle, so two processes never take the same one.
    """

    def claim(
        self, ledger: Ledger, record: Callable[[Handle], Any], prepared: Prepared
    ) -> Handle: ...

    def release(self, handle: Handle, *, cancelled: bool) -> None: ...


class Run(Protocol):
    """One generation on the server, from the request to its end."""

    handle: Handle

    def events(self) -> Iterator[Event]:
        """The run's events; a Tick at least every quarter second while nothing happens."""
        ...

    def cancel(self, timeout: float) -> bool:
        """Stop our work on the server (bounded); False when the server did not confirm it."""
        ...

    def open_image(self, image: ImageReady) -> AbstractContextManager[Iterator[bytes]]: ...


@dataclass(frozen=True)
class Reach:
    """What ``cancel --all`` reached: ``scope`` "user" (SwarmUI) or "server" (ComfyUI).

    ``others``: other clients' work it stopped, as handles ``job_states`` reads (what
    ``--wait`` waits for besides ours), where the server shows it; ``stopped``: whether it
    stopped anything at all (None: unknown).
    """

    scope: str
    text: str
    others: tuple[Handle, ...] = ()
    stopped: bool | None = None


@dataclass
class FactTable:
    """A table of server facts for `status` (SwarmUI's backends, ComfyUI's devices)."""

    name: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    # The column that gives way on a narrow terminal (cut with "…").
    elastic: str | None = None
    empty: str = "none"
    # Why the table could not be had (a permission), shown instead of it.
    unavailable: str | None = None


@dataclass
class Facts:
    """What `status` shows of the server, beyond our own work."""

    # The `status --format json` keys the adapter owns (server, version, devices, ...).
    document: dict[str, Any]
    # (label, value) lines of the table view, in order.
    rows: list[tuple[str, str]]
    tables: list[FactTable] = field(default_factory=list)
    # Plain lines shown after the tables (the queue, say).
    lines: list[str] = field(default_factory=list)
    response_ms: float = 0.0
    # The labels of ``rows`` a short terminal still shows (`status --watch` in a small pane).
    brief: tuple[str, ...] = ("version",)


@dataclass(frozen=True)
class Model:
    """One model file the server offers; ``raw`` is the server's own object."""

    name: str
    title: str | None = None
    architecture: str | None = None
    resolution: str | None = None
    loaded: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict)


# The model types `models list --subtype` takes: SwarmUI's sub-types and its pseudo-type
# Wildcards (swarmui-protocol.md §7), which SwarmUI matches case-sensitively; ComfyUI's adapter
# maps them to its folders.
MODEL_KINDS = (
    "Stable-Diffusion",
    "VAE",
    "LoRA",
    "Embedding",
    "ControlNet",
    "Clip",
    "ClipVision",
    "Wildcards",
)
# How deep `models list --depth` may look into a model folder.
MAX_MODEL_DEPTH = 20


@dataclass(frozen=True)
class ModelListing:
    """A model listing: the kind as the server names it, its folders and files."""

    kind: str
    folders: tuple[str, ...]
    models: tuple[Model, ...]
    # The listing covers every model of the kind (so the completion cache is replaced).
    complete: bool = True
    # The server describes its models (title, architecture, resolution, loaded); False where
    # it knows only their file names (ComfyUI), so a table shows no empty columns.
    described: bool = True


class Server(Protocol):
    """One image server, through its adapter."""

    # "swarmui" / "comfyui" and how messages name it.
    type: str
    label: str
    # The server as shown to the user (no credentials).
    name: str
    # Words for a record whose work the server no longer knows.
    gone_text: str
    # One queue that runs requests in the order they arrive (ComfyUI): a pipeline then sends
    # its assets in the spec's order, not as its threads happen to get there.
    one_queue: bool

    def probe(self) -> bool:
        """Is this server of the adapter's type? (identification, cli-contract §7)"""
        ...

    def prepare(self, request: Request) -> Prepared: ...

    def claimer(self) -> Claimer: ...

    def pool(self) -> Claimer:
        """The claimer a pipeline's workers share."""
        ...

    def start(self, handle: Handle, prepared: Prepared) -> Run: ...

    def job_states(self, handles: list[Handle]) -> list[str]: ...

    def cancel(self, handles: list[Handle], *, timeout: float | None = None) -> list[bool]: ...

    def cancel_all(self, ours: list[Handle]) -> Reach: ...

    def facts(self) -> Facts: ...

    def parallelism(self) -> tuple[int, bool]: ...

    def models(self, kind: str | None, folder: str, depth: int) -> ModelListing: ...

    def read_seed(self, path: Path) -> tuple[int | None, dict[str, Any] | None]: ...

    def close(self) -> None: ...
