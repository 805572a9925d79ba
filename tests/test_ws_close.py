"""How a generation's WebSocket ends: early, without waiting out SwarmUI's close grace, and
without an error in SwarmUI's log (protocol §4.5, §9 pitfall 18).

After ``socket_intention: close`` SwarmUI idles 2 s for another request on the socket, sends a
last status and closes (T2IAPI.cs). A client that waits for that Close makes every one-shot
`generate` last 2 s longer than its work; one that hangs up without a Close frame makes
SwarmUI log errors for every generation. The emulator logs what SwarmUI would (API.cs,
Utilities.RunCheckedTask, .NET's ManagedWebSocket), so both halves are checked here.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import pytest
from conftest import Runner, read_registry, wait_for
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from asset_generator.emulator import Emulator

# Much longer than any generation here: a client that waited for it would time the test out.
LONG_GRACE = 20.0


def test_generate_exits_before_the_close_grace_and_swarmui_logs_nothing(
    cli: Runner, emulator_factory, state_dir
) -> None:
    emu = emulator_factory(step_seconds=0.05, default_steps=80, ws_close_grace_seconds=LONG_GRACE)
    cli.url = emu.url
    process = cli.start("generate", "image", "-p", "a lighthouse", "-o", "out")

    # While it runs, another shell's `status` shows its progress: the live WebSocket stays.
    def progressing() -> bool:
        rows = cli("status", "-f", "json").json()["generations"]
        return any(r["status"] == "running" and 0 < r["progress"] < 100 for r in rows)

    assert wait_for(progressing, timeout=20), "status never showed the generation's progress"
    out, err = process.communicate(timeout=LONG_GRACE / 2)
    assert process.returncode == 0, err
    assert out.strip().startswith("out/")
    (record,) = read_registry(state_dir)["generations"].values()
    assert record["status"] == "succeeded"
    # The socket ended with our Close frame, inside the grace: nothing for SwarmUI to log.
    assert emu.server_errors() == []
    assert len(emu.calls("GenerateText2ImageWS")) == 1


def test_a_loop_of_generates_reuses_one_session(cli: Runner, emulator_factory) -> None:
    # Leaving early must not leave sessions behind: a session nobody cancelled serves the
    # next run at once (protocol §9 pitfall 3).
    emu = emulator_factory(step_seconds=0.01, default_steps=2)
    cli.url = emu.url
    for _ in range(4):
        result = cli("generate", "image", "-p", "again", "-o", "out", "--overwrite", "-q")
        assert result.code == 0, result.stderr
    assert emu.sessions_created == 1
    assert emu.server_errors() == []


# -- the emulator logs what SwarmUI logs --------------------------------------------------------


def _generate_on_raw_socket(emu: Emulator, session_id: str) -> tuple[socket.socket, WSConnection]:
    """Open GenerateText2ImageWS by hand and read until ``socket_intention: close``."""
    url = urlsplit(emu.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=url.netloc, target="/API/GenerateText2ImageWS")))
    body = {"session_id": session_id, "prompt": "raw", "images": 1, "steps": 1}
    sent = False
    while True:
        ws.receive_data(sock.recv(65536))
        for event in ws.events():
            if isinstance(event, AcceptConnection) and not sent:
                sock.sendall(ws.send(TextMessage(data=json.dumps(body))))
                sent = True
            if isinstance(event, TextMessage) and "socket_intention" in json.loads(event.data):
                return sock, ws


def _new_session(emu: Emulator) -> str:
    import httpx

    return httpx.post(f"{emu.url}/API/GetNewSession", json={}).json()["session_id"]


@pytest.mark.parametrize("how", ["close_frame", "hang_up"])
def test_the_emulator_logs_a_hang_up_inside_the_grace_as_swarmui_does(
    emulator_factory, how: str
) -> None:
    emu = emulator_factory(step_seconds=0.01, ws_close_grace_seconds=0.3)
    sock, ws = _generate_on_raw_socket(emu, _new_session(emu))
    if how == "close_frame":
        sock.sendall(ws.send(CloseConnection(code=1000)))
    sock.close()
    time.sleep(0.8)
    errors = emu.server_errors()
    if how == "close_frame":
        # ManagedWebSocket takes the Close as a normal receive; the last sends go nowhere.
        assert errors == []
    else:
        # The extra-request reader meets the end of the connection (RunCheckedTask logs it),
        # the socket is aborted, and the last status send fails in API.cs.
        assert len(errors) == 3, errors
        assert errors[0].startswith("Internal error in async task (unlabeled): ")
        assert "without completing the close handshake" in errors[0]
        assert errors[1].startswith(
            "[WebAPI] Error handling API request '/API/GenerateText2ImageWS' for user 'local': "
            "Internal exception: "
        )
        assert errors[2].startswith("Failing while yielding JSON output: ")


def test_a_client_gone_before_its_request_is_a_disconnect(emulator_factory) -> None:
    emu = emulator_factory()
    url = urlsplit(emu.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=url.netloc, target="/API/GenerateText2ImageWS")))
    ws.receive_data(sock.recv(65536))
    assert any(isinstance(e, AcceptConnection) for e in ws.events())
    sock.close()
    assert wait_for(lambda: emu.server_errors() != [], timeout=5)
    assert emu.server_errors() == [
        "[WebAPI] Error handling API request '/API/GenerateText2ImageWS': Remote WebSocket "
        "disconnected unexpectedly (ConnectionClosedPrematurely). Did your browser crash while "
        "generating?"
    ]
