"""Property tests: whatever a hostile server or a damaged disk hands us, we fail in our own words.

The cache loader, the parsers of server answers and the file-name sanitiser each get
arbitrary input; the only acceptable outcomes are a valid result or the module's own error
type. (Arbitrary *bytes* in the cache file and arbitrary prompt text for the sanitiser are in
test_local_unit.py; these extend them to structured JSON, server answers and whole paths.)
"""

from __future__ import annotations

import json
import math
import os
import string
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from asset_generator.downloads import (
    KNOWN_EXTENSIONS,
    TEMPLATE_FIELDS,
    DownloadError,
    NameFields,
    check_template,
    decode_data_url,
    extension_of,
    inside,
    target_name,
)
from asset_generator.registry import FILE_NAME, Registry, State
from asset_generator.swarm.client import (
    Counters,
    CurrentStatus,
    DiscardEvent,
    ErrorEvent,
    ImageEvent,
    ProgressEvent,
    StatusEvent,
    check_answer,
    parse_event,
)
from asset_generator.swarm.errors import SwarmError
from asset_generator.swarm.http import Transport
from asset_generator.swarm.metadata import png_text_metadata, seed_from_metadata

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


# -- the cache loader -------------------------------------------------------------------------


def valid_record(record_id: str) -> dict[str, Any]:
    return {
        "id": record_id,
        "server": "http://127.0.0.1:7801",
        "server_key": "0123456789abcdef",
        "session_id": "A" * 40,
        "pid": 4242,
        "host": "elsewhere",
        "prompt": "a cat",
        "created": 1_700_000_000.0,
        "status": "running",
        "progress": 12.5,
        "images": ["out/a cat-1.png"],
        "error": None,
        "finished": None,
    }


def valid_document() -> dict[str, Any]:
    return {
        "schema": 1,
        "generations": {"gen_0001": valid_record("gen_0001")},
        "servers": {
            "0123456789abcdef": {
                "sessions": [
                    {
                        "id": "A" * 40,
                        "user_id": "local",
                        "version": "0.9",
                        "server_id": None,
                        "created": 1_700_000_000.0,
                    }
                ],
                "interrupt_generation": False,
                "models": {"Stable-Diffusion": ["flux/flux1-dev.safetensors"]},
            }
        },
    }


# Paths to every leaf of a valid document, so one of them can be replaced by anything.
def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += _leaf_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths += _leaf_paths(value, (*prefix, index))
    return paths


DOCUMENT_PATHS = _leaf_paths(valid_document())


@st.composite
def damaged_documents(draw: st.DrawFn) -> Any:
    """A valid registry document with one part replaced by arbitrary JSON, or dropped."""
    document = valid_document()
    path = draw(st.sampled_from(DOCUMENT_PATHS))
    node = document
    for step in path[:-1]:
        node = node[step]
    if draw(st.booleans()) and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = draw(json_values)
    return document


def assert_usable(state: State) -> None:
    """What every command does with a loaded state must work."""
    assert isinstance(state, State)
    for key, record in state.generations.items():
        assert key == record.id
        json.dumps(record.public(), allow_nan=False)
        record.is_final  # noqa: B018 - must not raise
        record.process_alive()
        state.records_for(record.server_key)
    document = state.to_json()
    text = json.dumps(document, allow_nan=False)
    assert State.from_json(json.loads(text)).to_json() == document
    state.prune()


def load(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> tuple[Registry, list[str]]:
    directory = tmp_path_factory.mktemp("cache")
    warnings: list[str] = []
    registry = Registry(directory, warn=warnings.append)
    registry.path.write_bytes(raw)
    return registry, warnings


def test_the_valid_document_itself_loads(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.path.write_text(json.dumps(valid_document()))
    state = registry.read()
    assert list(state.generations) == ["gen_0001"]
    assert_usable(state)


@FUZZ
@given(document=damaged_documents() | json_values)
@example(document={"schema": 1, "generations": {"gen_1": {**valid_record("gen_2")}}})
@example(document={"schema": 1, "generations": {"gen_1": {**valid_record("gen_1"), "pid": -1}}})
@example(document={"schema": 1, "generations": {"gen_1": {**valid_record("gen_1"), "pid": 0}}})
@example(
    document={"schema": 1, "generations": {"gen_1": {**valid_record("gen_1"), "created": 1e300}}}
)
@example(
    document={"schema": 1, "generations": {"gen_1": {**valid_record("gen_1"), "status": ["x"]}}}
)
@example(
    document={
        "schema": 1,
        "generations": {"gen_1": {**valid_record("gen_1"), "progress": math.nan}},
    }
)
@example(document={"schema": 1, "generations": {}, "servers": {"k": {"sessions": math.inf}}})
def test_any_json_in_the_cache_loads_or_is_set_aside(
    tmp_path_factory: pytest.TempPathFactory, document: Any
) -> None:
    raw = json.dumps(document).encode()
    registry, warnings = load(tmp_path_factory, raw)
    snapshot = registry.read()
    assert_usable(snapshot)
    with registry.transaction() as state:
        assert_usable(state)
        kept = dict(state.generations)
    aside = sorted(p.name for p in registry.directory.iterdir() if ".corrupt-" in p.name)
    if aside:
        # Set aside whole, with a warning naming the file, and an empty cache in its place.
        assert kept == {} and any("corrupt" in w and FILE_NAME in w for w in warnings)
        assert (registry.directory / aside[0]).read_bytes() == raw
    else:
        assert warnings == []
    assert_usable(registry.read())


def test_deeply_nested_cache_is_set_aside(tmp_path_factory: pytest.TempPathFactory) -> None:
    registry, warnings = load(tmp_path_factory, b"[" * 100_000)
    assert registry.read().generations == {}
    with registry.transaction() as state:
        assert state.generations == {}
    # The read set it aside (one warning); the transaction then found a good file.
    assert len(warnings) == 1 and "corrupt" in warnings[0]


# -- server answers ---------------------------------------------------------------------------

EVENT_TYPES = (StatusEvent, ProgressEvent, ImageEvent, ErrorEvent, DiscardEvent, type(None))
PROGRESS_KEYS = ["batch_index", "request_id", "overall_percent", "current_percent"]
# Objects shaped like the real messages, with arbitrary values where the server puts values.
event_like = st.one_of(
    st.fixed_dictionaries({"status": json_objects}, optional={"backend_status": json_values}),
    st.fixed_dictionaries(
        {"gen_progress": st.dictionaries(st.sampled_from(PROGRESS_KEYS), json_values)}
    ),
    st.fixed_dictionaries(
        {"image": st.text(max_size=30)},
        optional={"batch_index": json_values, "metadata": json_values | st.text(max_size=40)},
    ),
    st.fixed_dictionaries({"error": json_values}, optional={"error_id": json_values}),
    st.fixed_dictionaries({"discard_indices": st.lists(json_values, max_size=4)}),
    json_objects,
)


@FUZZ
@given(message=event_like)
def test_any_websocket_message_parses_to_an_event_or_none(message: dict[str, Any]) -> None:
    event = parse_event(message)
    assert isinstance(event, EVENT_TYPES)
    if isinstance(event, ProgressEvent):
        assert isinstance(event.overall, float) and isinstance(event.current, float)
    if isinstance(event, ImageEvent):
        assert event.metadata is None or isinstance(event.metadata, dict)


@FUZZ
@given(document=json_objects | st.fixed_dictionaries({"status": json_objects}))
def test_any_status_answer_gives_counters(document: dict[str, Any]) -> None:
    status = CurrentStatus.from_json(document)
    assert isinstance(status.counters, Counters)
    assert all(isinstance(getattr(status.counters, n), int) for n in Counters.__dataclass_fields__)
    assert isinstance(status.counters.busy, bool)
    assert isinstance(status.backend_status, dict)


@FUZZ
@given(
    document=json_objects
    | st.fixed_dictionaries({"error": json_values}, optional={"error_id": json_values}),
    status=st.integers(100, 599),
)
def test_any_answer_is_accepted_or_a_typed_error(document: dict[str, Any], status: int) -> None:
    try:
        check_answer(document, status, "GetCurrentStatus", "http://127.0.0.1:7801")
    except SwarmError as exc:
        assert "error" in document
        assert exc.message.startswith("GetCurrentStatus on http://127.0.0.1:7801: ")
    else:
        assert document.get("error") is None


def transport_answering(status: int, body: bytes, content_type: str) -> Transport:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": content_type} if content_type else {}
        return httpx.Response(status, content=body, headers=headers)

    return Transport("http://127.0.0.1:7801", transport=httpx.MockTransport(answer))


answer_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_objects.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=100).map(lambda t: f"<html><body>{t}</body></html>".encode()),
)


@FUZZ
@given(
    status=st.sampled_from([200, 301, 302, 400, 401, 404, 500, 502, 504]),
    body=answer_bodies,
    content_type=st.sampled_from(["", "application/json", "text/html; charset=utf-8"]),
)
def test_any_http_answer_is_a_json_object_or_a_typed_error(
    status: int, body: bytes, content_type: str
) -> None:
    with transport_answering(status, body, content_type) as transport:
        try:
            got_status, document = transport.post_json("GetCurrentStatus", {})
        except SwarmError as exc:
            assert exc.message and "\n" not in exc.message
        else:
            assert got_status == status and isinstance(document, dict)


# JSON that the stdlib parser refuses with something other than JSONDecodeError.
HOSTILE_JSON = {
    "deeply nested": b"[" * 100_000,
    "huge integer": b'{"status": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("body", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_hostile_json_answer_is_a_typed_error(body: bytes) -> None:
    with (
        transport_answering(200, body, "application/json") as transport,
        pytest.raises(SwarmError),
    ):
        transport.post_json("GetCurrentStatus", {})


@pytest.mark.parametrize("body", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_hostile_image_metadata_is_ignored(body: bytes) -> None:
    event = parse_event({"image": "View/local/raw/x.png", "metadata": body.decode()})
    assert isinstance(event, ImageEvent) and event.metadata is None


@FUZZ
@given(metadata=json_values | st.fixed_dictionaries({"sui_image_params": json_values}))
@example(metadata={"sui_image_params": {"seed": "²"}})
@example(metadata={"sui_image_params": {"seed": "--5"}})
@example(metadata={"sui_image_params": {"seed": "9" * 5000}})
def test_any_image_metadata_gives_a_seed_or_none(metadata: Any) -> None:
    seed = seed_from_metadata(metadata if isinstance(metadata, dict) else None)
    assert seed is None or (isinstance(seed, int) and not isinstance(seed, bool))


def png(*chunks: tuple[bytes, bytes]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, data in chunks:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        out += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    return out


@FUZZ
@given(
    payload=st.binary(max_size=200)
    | json_values.map(lambda v: b"parameters\x00" + json.dumps(v).encode()),
    kind=st.sampled_from([b"tEXt", b"iTXt", b"zTXt"]),
    tail=st.binary(max_size=40),
)
@example(payload=b"parameters\x00" + b"[" * 100_000, kind=b"tEXt", tail=b"")
def test_any_image_bytes_give_metadata_or_none(
    tmp_path_factory: pytest.TempPathFactory, payload: bytes, kind: bytes, tail: bytes
) -> None:
    path = tmp_path_factory.mktemp("png") / "image.png"
    path.write_bytes(png((kind, payload)) + tail)
    found = png_text_metadata(path)
    assert found is None or isinstance(found, dict)


@FUZZ
@given(url=st.text(max_size=60) | st.text(max_size=40).map(lambda t: "data:image/png;base64," + t))
def test_any_inline_image_decodes_or_is_a_download_error(url: str) -> None:
    try:
        assert isinstance(decode_data_url(url), bytes)
    except DownloadError as exc:
        assert str(exc)


# -- file names -------------------------------------------------------------------------------

hostile_text = st.lists(
    st.characters(codec="utf-8", exclude_categories=["Cs"])
    | st.sampled_from(["/", "\\", "..", ".", "\x00", "~", "$HOME", "%2e%2e", ":", "\u202e"]),
    max_size=40,
).map("".join)
templates = st.lists(
    st.sampled_from([f"{{{name}}}" for name in TEMPLATE_FIELDS]) | hostile_text, max_size=5
).map("".join)


@FUZZ
@given(
    template=templates,
    prompt=hostile_text,
    model=st.none() | hostile_text,
    server_path=hostile_text | hostile_text.map(lambda t: "View/local/raw/" + t),
    seed=st.none() | st.integers(-(2**63), 2**64),
    index=st.integers(0, 10_000),
)
@example(
    template="{prompt}", prompt="../../etc/passwd", model=None, server_path="x.png", seed=1, index=0
)
@example(template="..", prompt="", model="/abs/model", server_path="/etc/x", seed=None, index=0)
@example(template="{model}", prompt="", model="..\\..\\x", server_path="a\x00b", seed=0, index=0)
def test_any_file_name_stays_in_the_output_directory(
    tmp_path_factory: pytest.TempPathFactory,
    template: str,
    prompt: str,
    model: str | None,
    server_path: str,
    seed: int | None,
    index: int,
) -> None:
    try:
        check_template(template)
    except ValueError:
        assume(False)
    fields = NameFields(index, seed, prompt, model, "gen_0001", 1_700_000_000.0)
    name = target_name(template, fields, server_path)
    assert name == os.path.basename(name) and "\x00" not in name and "/" not in name
    assert not name.startswith(".") and name.rsplit(".", 1)[-1] in KNOWN_EXTENSIONS
    assert len(name.encode()) <= 255
    directory = tmp_path_factory.mktemp("out")
    path = inside(directory, name)
    assert path.resolve().parent == directory.resolve()


@FUZZ
@given(name=hostile_text)
@example(name="..")
@example(name="a/../../b")
@example(name="/etc/passwd")
def test_inside_returns_a_child_or_refuses(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    directory = tmp_path_factory.mktemp("out")
    try:
        path = inside(directory, name)
    except DownloadError:
        return
    assert path.resolve().parent == directory.resolve()


@FUZZ
@given(template=st.text(string.printable, max_size=30))
def test_any_template_is_accepted_or_a_value_error(template: str) -> None:
    try:
        check_template(template)
    except ValueError:
        return
    target_name(template, NameFields(0, 1, "p", None, "gen_1", 0.0), "x.png")


def test_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "escape.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(DownloadError):
        inside(out, "escape.png")


def test_extension_is_always_known() -> None:
    assert extension_of("View/x.PNG") == "png"
    assert extension_of("View/x.exe") == "png"
    assert extension_of("data:image/jpeg;base64,AA") == "jpg"
