"""Transport-level behaviour of the emulator over real loopback sockets (protocol §1)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_ws import WebSocketUpgradeError, connect_ws
from swarm_helpers import call, new_session, raw_http, ws_transcript
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Pong, Request, TextMessage

from asset_generator.emulator import Emulator, Fault, FaultPoint


def api_error(error_id: str, message: str) -> bytes:
    return json.dumps({"error_id": error_id, "error": message}, separators=(",", ":")).encode()


def handler_error(message: str) -> bytes:
    return json.dumps({"error": message}, separators=(",", ":")).encode()


INVALID_SESSION = (
    b'{"error":"Invalid session ID. You may need to refresh the page.",'
    b'"error_id":"invalid_session_id"}'
)


@pytest.fixture
def emu(emulator_factory) -> Emulator:
    return emulator_factory(deny_permissions={"view_backends_list"})


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url) as http_client:
        yield http_client


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
def test_non_post_is_a_redirect_with_empty_body(client: httpx.Client, method: str) -> None:
    answer = client.request(method, "/API/GetNewSession")
    assert answer.status_code == 302
    assert answer.headers["location"] == "/Error/NoGetAPI"
    assert answer.content == b""


def test_transport_error_table(client: httpx.Client, emu: Emulator) -> None:
    sid = new_session(client)
    post = client.post

    def check(answer: httpx.Response, status: int, body: bytes) -> None:
        assert (answer.status_code, answer.content) == (status, body)

    wrong_type = b'{"error_id":"basic_api","error":"Wrong content type"}'
    check(post("/API/GetNewSession", content=b"{}"), 400, wrong_type)
    check(post("/API/GetNewSession", content=b"{}", headers={"content-type": "text/json"}),
          400, wrong_type)  # fmt: skip
    ok_type = {"content-type": "application/vnd.swarm+json; charset=utf-8"}
    assert post("/API/GetNewSession", content=b"{}", headers=ok_type).status_code == 200

    bad_length = b'{"error_id":"basic_api","error":"bad content length"}'
    json_type = {"content-type": "application/json"}
    check(post("/API/GetNewSession", content=b"", headers=json_type), 400, bad_length)
    chunked = post("/API/GetNewSession", content=iter([b"{", b"}"]), headers=json_type)
    check(chunked, 400, bad_length)

    internal = b'{"error_id":"internal_error","error":"An internal error occurred"}'
    for body in (b"[1]", b"null", b"{nope", b'{"a":1} trailing'):
        check(post("/API/GetNewSession", content=body, headers=json_type), 400, internal)

    missing = b'{"error_id":"basic_api","error":"missing session id"}'
    check(call(client, "GetCurrentStatus", None), 400, missing)
    check(call(client, "GetCurrentStatus", "0" * 40), 401, INVALID_SESSION)
    by_header = post("/API/GetCurrentStatus", json={}, headers={"X-Session-ID": sid})
    assert by_header.status_code == 200 and "status" in by_header.json()

    bad_route = b'{"error_id":"bad_route","error":"Unknown API route"}'
    # The session is checked before the route, so an unknown route can answer three ways.
    check(call(client, "InterruptGeneration", None), 400, missing)
    check(call(client, "InterruptGeneration", "f" * 40), 401, INVALID_SESSION)
    check(call(client, "InterruptGeneration", sid), 400, bad_route)
    check(post("/API/GetNewSession/", json={}), 400, missing)
    check(call(client, "GetCurrentStatus/", sid), 400, bad_route)

    needs_ws = api_error("bad_request_method", "API route needs websocket, request is HTTP")
    check(call(client, "GenerateText2ImageWS", sid, images=1), 400, needs_ws)
    no_perm = api_error("bad_permissions", "You lack permissions for this route.")
    check(call(client, "ListBackends", sid), 400, no_perm)

    # Route-argument problems are handler output: HTTP 200 with an error.
    not_bool = "Invalid value '1' for parameter 'other_sessions', must be type 'Boolean'"
    check(call(client, "InterruptAll", sid, other_sessions=1), 200, handler_error(not_bool))
    assert call(client, "InterruptAll", sid, other_sessions="True").json() == {"success": True}
    no_images = "Missing required parameter 'images'"
    check(call(client, "GenerateText2Image", sid, prompt="x"), 200, handler_error(no_images))
    no_depth = "Missing required parameter 'depth'"
    check(call(client, "ListModels", sid, path=""), 200, handler_error(no_depth))
    not_int = "Invalid value '2.5' for parameter 'depth', must be type 'Int32'"
    check(call(client, "ListModels", sid, path="", depth=2.5), 200, handler_error(not_int))
    assert "files" in call(client, "ListModels", sid, path="", depth="2").json()


def test_route_names_are_case_insensitive_and_query_is_ignored(client: httpx.Client) -> None:
    answer = client.post("/api/getnewsession?x=1&session_id=zzz", json={})
    assert answer.status_code == 200 and len(answer.json()["session_id"]) == 40


def test_json_answers_are_compact_with_the_swarm_headers(client: httpx.Client) -> None:
    answer = client.post("/API/GetNewSession", json={}, headers={"Accept-Encoding": "identity"})
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert b": " not in answer.content and b", " not in answer.content


def test_json_is_gzipped_for_clients_that_accept_it(client: httpx.Client) -> None:
    answer = client.post("/API/GetNewSession", json={}, headers={"Accept-Encoding": "gzip"})
    assert answer.headers["content-encoding"] == "gzip"
    assert answer.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in answer.headers
    assert answer.json()["user_id"] == "local"
    refused = client.post("/API/GetNewSession", json={}, headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


def test_keep_alive_connections_serve_many_requests(emu: Emulator) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    try:
        sockets = set()
        for _ in range(3):
            connection.request(
                "POST", "/API/GetNewSession", b"{}", {"Content-Type": "application/json"}
            )
            answer = connection.getresponse()
            assert answer.status == 200 and not answer.will_close
            answer.read()
            sockets.add(id(connection.sock))
        assert len(sockets) == 1
    finally:
        connection.close()


def test_unread_oversize_body_closes_the_connection(emulator_factory) -> None:
    emu = emulator_factory(max_receive_bytes=64)
    reply = raw_http(
        emu.port,
        b"POST /API/GetNewSession HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 64\r\n\r\n" + b" " * 62 + b"{}",
    )
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert reply.endswith(b'{"error_id":"basic_api","error":"bad content length"}')


def test_too_many_headers_is_431(emu: Emulator) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(201))
    reply = raw_http(emu.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_pages_redirect_like_swarm(client: httpx.Client) -> None:
    assert client.get("/").headers["location"] == "Text2Image"
    assert client.get("/nowhere").headers["location"] == "/Error/404"
    assert client.get("/Text2Image").status_code == 200


def test_shared_secret_gate_covers_every_path(emulator_factory) -> None:
    emu = emulator_factory(required_authorization="Bearer s3cret")
    with httpx.Client(base_url=emu.url) as bare:
        for answer in (
            bare.post("/API/GetNewSession", json={}),
            bare.get("/View/local/raw/x.png"),
            bare.get("/"),
        ):
            assert answer.status_code == 401
            assert answer.content == b"Unauthorized"
            assert "content-type" not in answer.headers
        with (
            pytest.raises(WebSocketUpgradeError) as refused,
            connect_ws("/API/GenerateText2ImageWS", bare),
        ):
            pass
        assert refused.value.response.status_code == 401
        wrong = bare.post("/API/GetNewSession", json={}, headers={"Authorization": "s3cret"})
        assert wrong.status_code == 401
    with httpx.Client(base_url=emu.url, headers={"Authorization": "Bearer s3cret"}) as good:
        sid = new_session(good)
        assert call(good, "GetCurrentStatus", sid).status_code == 200
        transcript = ws_transcript(good, "GenerateText2ImageWS", {"session_id": sid})
        assert transcript.messages == [{"error": "Missing required parameter 'images'"}]


def test_interrupt_generation_is_served_only_when_asked(emulator_factory) -> None:
    emu = emulator_factory(serve_interrupt_generation=True)
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        assert call(client, "InterruptGeneration", sid).json() == {"success": True}
    assert emu.interrupted_sessions() == [sid]
    assert [c.status for c in emu.calls("interruptgeneration")] == [200]


def test_routes_swarm_has_but_the_emulator_lacks_say_so(client: httpx.Client) -> None:
    sid = new_session(client)
    answer = call(client, "ListImages", sid)
    assert answer.status_code == 200
    assert answer.json() == {"error": "The SwarmUI emulator does not implement ListImages."}


def test_websocket_transport_errors_are_one_message_then_close(client: httpx.Client) -> None:
    sid = new_session(client)
    cases = {
        "NoSuchRouteWS": {"error": "Unknown API route.", "error_id": "bad_route"},
        "GetCurrentStatus": {
            "error_id": "bad_request_method",
            "error": "API route needs HTTP, request is websocket",
        },
    }
    for route, expected in cases.items():
        transcript = ws_transcript(client, route, {"session_id": sid})
        assert (transcript.messages, transcript.close_code) == ([expected], 1000)
    stale = ws_transcript(client, "GenerateText2ImageWS", {"session_id": "0" * 40, "images": 1})
    assert stale.messages == [json.loads(INVALID_SESSION)]
    missing = ws_transcript(client, "GenerateText2ImageWS", {"images": 1})
    assert missing.messages == [{"error_id": "basic_api", "error": "missing session id"}]
    garbage = ws_transcript(client, "GenerateText2ImageWS", "not json")
    assert garbage.messages == [
        {"error_id": "internal_error", "error": "An internal error occurred"}
    ]


def test_latency_is_added_before_every_answer(emulator_factory) -> None:
    emu = emulator_factory(latency_seconds=0.15)
    with httpx.Client(base_url=emu.url) as client:
        started = time.monotonic()
        new_session(client)
        client.get("/")
        assert time.monotonic() - started >= 0.3


def test_fault_hook_can_replace_truncate_and_reset(emulator_factory) -> None:
    def faults(point: FaultPoint) -> Fault | None:
        if point.route == "getcurrentstatus":
            return Fault(status=502, body=b"<html>Bad Gateway</html>",
                         headers=[("Content-Type", "text/html")])  # fmt: skip
        if point.route == "listmodels":
            return Fault(truncate_to=5)
        if point.route == "getglobalstatus":
            return Fault(reset=True)
        if point.transport == "ws" and point.message and "image" in point.message:
            return Fault(replace_message={**point.message, "image": "View/local/../../etc/passwd"})
        return None

    emu = emulator_factory(faults=faults)
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        proxy = call(client, "GetCurrentStatus", sid)
        assert (proxy.status_code, proxy.headers["content-type"]) == (502, "text/html")
        with pytest.raises(httpx.RemoteProtocolError):
            call(client, "ListModels", sid, path="", depth=1)
        with pytest.raises(httpx.HTTPError):
            call(client, "GetGlobalStatus", sid)
        transcript = ws_transcript(
            client, "GenerateText2ImageWS", {"session_id": sid, "images": 1, "steps": 1}
        )
        assert transcript.of("image")[0]["image"] == "View/local/../../etc/passwd"


def test_fault_hook_can_stall_after_headers_and_refuse_the_upgrade(emulator_factory) -> None:
    def faults(point: FaultPoint) -> Fault | None:
        if point.route == "getcurrentstatus":
            return Fault(stall_after_headers_seconds=5)
        if point.transport == "upgrade":
            return Fault(status=502, body=b"<html>no websockets here</html>")
        return None

    emu = emulator_factory(faults=faults)
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        with client.stream(
            "POST", "/API/GetCurrentStatus", json={"session_id": sid}, timeout=0.5
        ) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                response.read()
        with pytest.raises(WebSocketUpgradeError) as refused:  # noqa: SIM117
            with connect_ws("/API/GenerateText2ImageWS", client):
                pass
        assert refused.value.response.status_code == 502
    assert emu.wait_until(lambda: emu.calls("GenerateText2ImageWS")[0].status == 502)


def test_requests_are_recorded_and_logged(emulator_factory, tmp_path) -> None:
    log = tmp_path / "requests.jsonl"
    emu = emulator_factory(request_log=str(log))
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        client.post("/API/GetCurrentStatus", json={}, headers={"X-Session-ID": sid})
        client.get("/View/local/none.png")
        ws_transcript(client, "GenerateText2ImageWS", {"session_id": sid, "images": 1, "steps": 1})
    records = emu.requests
    assert [(r.route, r.transport, r.status) for r in records] == [
        ("getnewsession", "http", 200),
        ("getcurrentstatus", "http", 200),
        (None, "http", 404),
        ("generatetext2imagews", "ws", 101),
    ]
    assert records[1].session_id == sid and records[1].headers["x-session-id"] == sid
    assert records[3].body == {"session_id": sid, "images": 1, "steps": 1}
    assert emu.calls("GETNEWSESSION")[0].body == {}
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["route"] for line in lines] == [r.route for r in records]
    emu.reset_log()
    assert emu.requests == []


def _raw_websocket(port: int, path: str) -> tuple[socket.socket, WSConnection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="127.0.0.1", target=path)))
    return sock, ws


def _events_for(sock: socket.socket, ws: WSConnection, seconds: float) -> list[object]:
    events: list[object] = []
    deadline = time.monotonic() + seconds
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        ws.receive_data(data or None)
        events.extend(ws.events())
        if not data or any(isinstance(e, CloseConnection) for e in events):
            break
    return events


def test_websocket_keepalive_pongs_and_first_message_timeout(emulator_factory) -> None:
    # Kestrel sends unsolicited Pong frames every 30 s; SwarmUI waits 1 minute for the first
    # message and then answers internal_error. Both are shortened here.
    emu = emulator_factory(ws_keepalive_seconds=0.1, ws_first_message_timeout=0.45)
    sock, ws = _raw_websocket(emu.port, "/API/GenerateText2ImageWS")
    with sock:
        events = _events_for(sock, ws, 1.0)
    assert isinstance(events[0], AcceptConnection)
    assert sum(isinstance(e, Pong) and e.payload == b"" for e in events) >= 2
    texts = [json.loads(e.data) for e in events if isinstance(e, TextMessage)]
    assert texts == [{"error_id": "internal_error", "error": "An internal error occurred"}]
    assert any(isinstance(e, CloseConnection) and e.code == 1000 for e in events)
    assert [(r.route, r.body, r.status) for r in emu.requests] == [
        ("generatetext2imagews", None, 101)
    ]
