"""The protocol layer against scripted answers (httpx.MockTransport): what each reply becomes."""

from __future__ import annotations

import json

import httpx
import pytest

from asset_generator.swarm.client import (
    ErrorEvent,
    ImageEvent,
    ProgressEvent,
    StatusEvent,
    SwarmClient,
    parse_event,
)
from asset_generator.swarm.errors import (
    APIError,
    AuthFailed,
    BadResponse,
    ConnectionFailed,
    InvalidSession,
    PermissionDenied,
    RequestTimeout,
    SessionFailed,
    UnknownRoute,
)
from asset_generator.swarm.http import Credentials, Transport

URL = "http://swarm.test:7801"


def client_for(handler, credentials: Credentials | None = None) -> SwarmClient:
    transport = Transport(URL, credentials, transport=httpx.MockTransport(handler), timeout=5)
    return SwarmClient(transport)


def json_reply(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


def test_error_key_in_http_200_is_an_error() -> None:
    client = client_for(lambda request: json_reply(200, {"error": "Model not found."}))
    with pytest.raises(APIError) as caught:
        client.call("ListModels", "s1", {})
    assert caught.value.text == "Model not found."
    assert "ListModels" in caught.value.message and "swarm.test" in caught.value.message


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"error": "Invalid session ID.", "error_id": "invalid_session_id"}, InvalidSession),
        (400, {"error_id": "bad_route", "error": "Unknown API route"}, UnknownRoute),
        (400, {"error_id": "bad_permissions", "error": "You lack permissions."}, PermissionDenied),
    ],
)
def test_error_ids_become_typed_errors(status: int, body: dict, expected: type) -> None:
    client = client_for(lambda request: json_reply(status, body))
    with pytest.raises(expected):
        client.call("InterruptGeneration", "s1")


def test_html_from_a_proxy_is_a_bad_response() -> None:
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    client = client_for(
        lambda request: httpx.Response(502, text=page, headers={"content-type": "text/html"})
    )
    with pytest.raises(BadResponse) as caught:
        client.current_status("s1")
    assert "HTML" in caught.value.message and "502" in caught.value.message


def test_garbage_json_is_a_bad_response() -> None:
    client = client_for(lambda request: httpx.Response(200, content=b'{"status": {"waiting'))
    with pytest.raises(BadResponse):
        client.current_status("s1")


def test_plain_text_401_is_the_shared_secret_gate() -> None:
    client = client_for(lambda request: httpx.Response(401, text="Unauthorized"))
    with pytest.raises(SessionFailed) as caught:
        client.new_session()
    assert isinstance(caught.value.cause, AuthFailed)
    assert caught.value.code == "auth_failed"


def test_get_new_session_without_valid_cookie() -> None:
    client = client_for(lambda request: json_reply(200, {"error": "Invalid or unauthorized."}))
    with pytest.raises(SessionFailed) as caught:
        client.new_session()
    assert caught.value.code == "auth_failed"
    assert "--api-key" in caught.value.message


def test_redirect_is_never_followed_and_never_carries_credentials() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"location": "http://evil.test/steal"})

    client = client_for(handler, Credentials(api_key="tok.en.secret", auth_header="Bearer x"))
    with pytest.raises(BadResponse):
        client.current_status("s1")
    assert [r.url.host for r in seen] == ["swarm.test"]


def test_requests_carry_cookie_and_header_and_json_content_type() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_reply(200, {"success": True})

    client = client_for(handler, Credentials(api_key="abc.def.ghi", auth_header="Bearer zz"))
    client.interrupt_all("s1", other_sessions=True)
    request = seen[0]
    assert request.method == "POST"
    assert request.url.path == "/API/InterruptAll"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["cookie"] == "swarm_token=abc.def.ghi"
    assert request.headers["authorization"] == "Bearer zz"
    assert json.loads(request.content) == {"other_sessions": True, "session_id": "s1"}


def test_connection_refused_and_timeouts_are_typed() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(ConnectionFailed) as caught:
        client_for(refuse).current_status("s1")
    assert "connection refused" in caught.value.message

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    with pytest.raises(RequestTimeout):
        client_for(slow).current_status("s1")


def test_oversized_answer_is_refused() -> None:
    huge = b'{"x":"' + b"a" * (33 * 1024 * 1024) + b'"}'
    client = client_for(lambda request: httpx.Response(200, content=huge))
    with pytest.raises(BadResponse) as caught:
        client.current_status("s1")
    assert "MiB" in caught.value.message


def test_download_path_is_percent_encoded_per_segment() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, content=b"png")

    client = client_for(handler)
    with client.open_image("View/local/raw/2026-01-01/1200-a cat, 100% été.png") as chunks:
        assert b"".join(chunks) == b"png"
    assert seen == ["/View/local/raw/2026-01-01/1200-a%20cat%2C%20100%25%20%C3%A9t%C3%A9.png"]


def test_websocket_messages_are_classified_by_key() -> None:
    status = parse_event(
        {"status": {"waiting_gens": 1, "live_gens": 1}, "backend_status": {"status": "running"}}
    )
    assert isinstance(status, StatusEvent) and status.status.counters.live
    progress = parse_event(
        {"gen_progress": {"batch_index": 1, "overall_percent": 0.5, "current_percent": 0.25}}
    )
    assert isinstance(progress, ProgressEvent) and progress.batch_index == 1
    image = parse_event(
        {
            "image": "View/local/raw/x.png",
            "batch_index": "2",
            "request_id": "1001",
            "metadata": json.dumps({"sui_image_params": {"seed": 42}}),
        }
    )
    assert isinstance(image, ImageEvent) and image.batch_index == 2
    assert image.metadata == {"sui_image_params": {"seed": 42}}
    error = parse_event({"error": "Generation session interrupted."})
    assert isinstance(error, ErrorEvent) and error.interrupted
    assert parse_event({"keep_alive": True}) is None
    assert parse_event({"raw_swarm_data": {}}) is None


def test_cancel_all_marks_a_generation_registered_while_its_interrupt_was_in_flight(
    tmp_path,
) -> None:
    # Queued work hit by InterruptAll ends without a word (protocol §5.2); only the mark lets
    # its own process call that ending a cancel rather than a failure.
    import os
    import time

    from asset_generator import jobs
    from asset_generator.registry import GenerationRecord, Registry

    registry = Registry(tmp_path)

    def late_record() -> GenerationRecord:
        return GenerationRecord(
            id="gen_late0001",
            server=URL,
            server_key="k",
            handle={"session_id": "s" * 40},
            pid=os.getpid(),
            host=os.uname().nodename,
            prompt="registered during the cancel",
            created=time.time(),
        )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/API/InterruptAll"
        with registry.transaction() as state:
            state.generations["gen_late0001"] = late_record()
        return json_reply(200, {"success": True})

    from asset_generator.registry import ServerLedger
    from asset_generator.swarm.server import SwarmServer

    ledger = ServerLedger(registry, "k")
    with ledger.change() as view:
        # A cached control session, so the only request is the InterruptAll itself.
        view.cache["sessions"] = [{"id": "s" * 40, "user_id": "local", "created": time.time()}]
    server = SwarmServer(URL, ledger, transport=httpx.MockTransport(handler))
    generations = jobs.Generations(registry, "k", lambda: server)
    result = jobs.cancel_all(generations)
    assert registry.read().generations["gen_late0001"].status == "cancelled"
    assert [r.id for r in result.cancelled] == ["gen_late0001"]


def record_for(gen_id: str):
    """A claimer's record maker: a live SwarmUI record of this process named ``gen_id``."""
    import os
    import time

    from asset_generator.registry import GenerationRecord

    def record(handle):
        return GenerationRecord(
            id=gen_id,
            server=URL,
            server_key="k",
            server_type="swarmui",
            handle=dict(handle),
            pid=os.getpid(),
            host=os.uname().nodename,
            prompt=gen_id,
            created=time.time(),
        )

    return record


@pytest.mark.parametrize("claimer", ["generate", "pipeline"])
def test_a_new_session_is_never_seen_idle_before_its_record(tmp_path, claimer: str) -> None:
    # Two processes start a generation at once with no idle session cached. The session one
    # of them makes must not be cached before the record that holds it: the other would take
    # it as idle, and a cancel of either generation would stop both (cli-contract §5).
    import contextlib
    import itertools

    from asset_generator.registry import Registry, ServerLedger
    from asset_generator.swarm.server import SwarmServer

    numbers = itertools.count(1)
    answered: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/API/GetNewSession"
        answered.append(f"{next(numbers):040x}")
        return json_reply(200, {"session_id": answered[-1], "user_id": "local"})

    other_ledger = ServerLedger(Registry(tmp_path), "k")
    other = SwarmServer(URL, other_ledger, transport=httpx.MockTransport(handler))
    other_handles: list[dict] = []
    mine = Registry(tmp_path)
    original = mine.transaction

    @contextlib.contextmanager
    def transaction():
        with original() as state:
            yield state
        # The other process claims as soon as this one lets go of the lock after its
        # GetNewSession was answered.
        if answered and not other_handles:
            claim = other.claimer().claim
            other_handles.append(claim(other_ledger, record_for("gen_other"), None))  # type: ignore[arg-type]

    mine.transaction = transaction  # type: ignore[method-assign]
    ledger = ServerLedger(mine, "k")
    server = SwarmServer(URL, ledger, transport=httpx.MockTransport(handler))
    chooser = server.claimer() if claimer == "generate" else server.pool()
    handle = chooser.claim(ledger, record_for("gen_mine"), None)  # type: ignore[arg-type]
    assert other_handles, "the other process never got to claim"
    assert handle["session_id"] != other_handles[0]["session_id"]
    records = Registry(tmp_path).read().generations
    assert records["gen_mine"].handle == handle
    assert records["gen_other"].handle == other_handles[0]


def test_a_renewed_session_is_held_before_the_record_takes_it(tmp_path) -> None:
    # The server forgot a generation's session (a restart): the run gets a new one, which
    # its record takes a moment later (the Renewed event). Meanwhile it must not look idle.
    import time

    from asset_generator.registry import Registry, ServerLedger
    from asset_generator.server.types import Prepared, Renewed, Request
    from asset_generator.swarm.server import SwarmServer, _resting

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/API/GetNewSession"
        return json_reply(200, {"session_id": "n" * 40, "user_id": "local"})

    ledger = ServerLedger(Registry(tmp_path), "k")
    server = SwarmServer(URL, ledger, transport=httpx.MockTransport(handler))
    prepared = Prepared(Request(prompt="x"), 1, None, None, "x", {"prompt": "x", "images": 1})
    run = server.start({"session_id": "s" * 40}, prepared)
    renewed = run._renew()
    assert isinstance(renewed, Renewed) and renewed.handle == {"session_id": "n" * 40}
    assert "n" * 40 in _resting(ledger.read(), time.time())


def test_a_pipeline_session_another_process_took_is_not_handed_out_twice(tmp_path) -> None:
    # Between two assets a pipeline's session is free, and another process's `generate` may
    # take it (it is the newest idle session): the pipeline's next asset must not share it.
    import itertools

    from asset_generator.registry import Registry, ServerLedger
    from asset_generator.swarm.server import SwarmServer

    numbers = itertools.count(1)

    def handler(request: httpx.Request) -> httpx.Response:
        return json_reply(200, {"session_id": f"{next(numbers):040x}", "user_id": "local"})

    ledger = ServerLedger(Registry(tmp_path), "k")
    server = SwarmServer(URL, ledger, transport=httpx.MockTransport(handler))
    pool = server.pool()
    first = pool.claim(ledger, record_for("gen_asset1"), None)  # type: ignore[arg-type]
    with Registry(tmp_path).transaction() as state:
        state.generations["gen_asset1"].finish("succeeded")
    pool.release(first, cancelled=False)
    other_ledger = ServerLedger(Registry(tmp_path), "k")
    other = SwarmServer(URL, other_ledger, transport=httpx.MockTransport(handler))
    taken = other.claimer().claim(other_ledger, record_for("gen_other"), None)  # type: ignore[arg-type]
    assert taken == first
    second = pool.claim(ledger, record_for("gen_asset2"), None)  # type: ignore[arg-type]
    assert second != taken


def test_a_run_cancelled_as_it_succeeds_holds_its_session_until_it_rests(tmp_path) -> None:
    # `cancel` marked the run, then interrupts its session; the run saved its last image
    # meanwhile and ends succeeded. Its record must not free the session before the session
    # rests: a new generation taking it in between would be hit by that interrupt.
    import time
    from types import SimpleNamespace

    from asset_generator.generation import GenerationRun
    from asset_generator.jobs.stop import mark_cancelled
    from asset_generator.registry import LedgerView, Registry
    from asset_generator.saving import SavedImage, SaveOptions
    from asset_generator.server.types import Prepared, Request
    from asset_generator.swarm.server import _resting

    registry = Registry(tmp_path)
    seen_at_release: list[bool] = []

    class Claimer:
        def claim(self, ledger, record, prepared):
            handle = {"session_id": "s" * 40}
            with ledger.change() as view:
                view.add(record(handle))
            return handle

        def release(self, handle, *, cancelled):
            view = LedgerView(Registry(tmp_path).read(), "k")
            seen_at_release.append(handle["session_id"] in _resting(view, time.time()))
            assert cancelled

    server = SimpleNamespace(name=URL, type="swarmui", read_seed=lambda path: (None, None))
    run = GenerationRun(
        server,  # type: ignore[arg-type]
        registry,
        "k",
        view=SimpleNamespace(),  # type: ignore[arg-type]
        save=SaveOptions(output_dir=tmp_path, template="{id}"),
        claimer=Claimer(),
    )
    request = Request(prompt="x")
    run.register(Prepared(request, 1, None, None, "x", {}))
    mark_cancelled(registry, [run.record.id])
    run.images.append(SavedImage(0, "View/x.png", tmp_path / "x.png", None, None))
    run._conclude()
    assert seen_at_release == [True]
    final = registry.read().generations[run.record.id]
    assert final.status == "succeeded" and final.is_final


# -- ComfyUI -----------------------------------------------------------------------------------

COMFY_URL = "http://comfy.test:8188"


def comfy_server(tmp_path, handler):
    from asset_generator.comfy.server import ComfyServer
    from asset_generator.registry import Registry, ServerLedger

    ledger = ServerLedger(Registry(tmp_path), "k")
    with ledger.change() as view:
        view.cache["version"] = "0.3.64"
        view.cache["jobs_api"] = False
    return ComfyServer(COMFY_URL, ledger, transport=httpx.MockTransport(handler))


def test_an_empty_prompt_id_never_becomes_a_global_interrupt(tmp_path) -> None:
    # ComfyUI reads {"prompt_id": ""} (and {}) as "interrupt whatever runs" (protocol §11.5).
    sent: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200)

    client = comfy_server(tmp_path, handler).client
    with pytest.raises(ValueError):
        client.interrupt("")
    client.interrupt("p1")
    client.interrupt(None)
    assert sent == [{"prompt_id": "p1"}, {}]


def test_a_stop_that_happened_stands_when_the_second_queue_look_fails(tmp_path) -> None:
    # The pending prompt is deleted and the running one interrupted; the second /queue (for a
    # prompt that started in between) times out: what was stopped is still reported stopped.
    queue = {"queue_running": [[1, "run", {}, {}, []]], "queue_pending": [[2, "wait", {}, {}, []]]}
    looks: list[str] = []
    posted: list[tuple[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/queue" and request.method == "GET":
            looks.append("queue")
            if len(looks) > 1:
                raise httpx.ReadTimeout("slow", request=request)
            return json_reply(200, queue)
        posted.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200)

    server = comfy_server(tmp_path, handler)
    assert server.stop_prompts(["run", "wait"], timeout=1) == {"run", "wait"}
    assert posted == [("/queue", {"delete": ["wait"]}), ("/interrupt", {"prompt_id": "run"})]
    assert len(looks) == 2
