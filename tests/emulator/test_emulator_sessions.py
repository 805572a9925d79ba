"""Sessions, accounts and cookie identity (protocol §2, §3, §4.7)."""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx
from swarm_helpers import call, new_session

from asset_generator.emulator import Emulator


def test_get_new_session_shape(emulator_factory) -> None:
    first = emulator_factory()
    second = emulator_factory()
    with httpx.Client(base_url=first.url) as client:
        document = client.post("/API/GetNewSession", json={}).json()
        again = client.post("/API/GetNewSession", json={}).json()
    assert re.fullmatch(r"[0-9a-f]{40}", document["session_id"])
    assert document["session_id"] != again["session_id"]
    assert document["user_id"] == "local"
    assert document["output_append_user"] is True
    assert document["version"] == "0.9.8.2.GIT-emulator"
    assert document["permissions"][0] == "*" and "view_backends_list" in document["permissions"]
    assert document["server_id"] == again["server_id"]
    with httpx.Client(base_url=second.url) as client:
        assert (
            client.post("/API/GetNewSession", json={}).json()["server_id"] != document["server_id"]
        )
    assert first.sessions_created == 2


def test_invalidated_sessions_answer_401(emulator_factory) -> None:
    emu = emulator_factory()
    with httpx.Client(base_url=emu.url) as client:
        sid = new_session(client)
        assert call(client, "GetCurrentStatus", sid).status_code == 200
        emu.invalidate_sessions()
        stale = call(client, "GetCurrentStatus", sid)
        assert stale.status_code == 401
        assert stale.json()["error_id"] == "invalid_session_id"
        assert call(client, "GetCurrentStatus", new_session(client)).status_code == 200


def test_accounts_need_a_valid_cookie(emulator_factory) -> None:
    emu = emulator_factory(accounts=True)
    token = emu.add_user("alice")
    name_hex, token_id, secret = token.split(".")
    assert bytes.fromhex(name_hex) == b"alice" and token_id and secret
    with httpx.Client(base_url=emu.url) as client:
        for cookie in (None, "short", f"{name_hex}.{token_id}.wrong-secret", "a.b.c.d.eeeeeee"):
            headers = {"Cookie": f"swarm_token={cookie}"} if cookie else {}
            answer = client.post("/API/GetNewSession", json={}, headers=headers)
            assert (answer.status_code, answer.json()) == (
                200,
                {"error": "Invalid or unauthorized."},
            )
        answer = client.post(
            "/API/GetNewSession", json={}, headers={"Cookie": f"theme=dark; swarm_token={token}"}
        )
        document = answer.json()
        assert document["user_id"] == "alice"
        perms = set(document["permissions"])
        assert {"basic_image_generation", "model_params", "fundamental_model_access"} <= perms
        assert "view_backends_list" not in perms and "interrupt_others" not in perms
        # The session id alone authenticates later calls: no cookie needed.
        sid = document["session_id"]
        assert call(client, "GetCurrentStatus", sid).status_code == 200
        denied = call(client, "ListBackends", sid)
        assert (denied.status_code, denied.json()["error_id"]) == (400, "bad_permissions")
        admin_only = call(client, "GetServerResourceInfo", sid)
        assert admin_only.json()["error_id"] == "bad_permissions"
    assert emu.sessions_created == 1


def test_add_user_can_grant_more_permissions(emulator_factory) -> None:
    emu = emulator_factory(accounts=True)
    token = emu.add_user("power", {"view_backends_list"})
    with httpx.Client(base_url=emu.url, headers={"Cookie": f"swarm_token={token}"}) as client:
        backends = call(client, "ListBackends", new_session(client)).json()
    assert list(backends) == ["0"] and backends["0"]["status"] == "running"


def test_localhost_bypass_makes_loopback_the_local_owner(emulator_factory) -> None:
    emu = emulator_factory(accounts=True, localhost_bypass=True)
    with httpx.Client(base_url=emu.url) as client:
        assert client.post("/API/GetNewSession", json={}).json()["user_id"] == "local"
        forwarded = client.post(
            "/API/GetNewSession", json={}, headers={"X-Forwarded-For": "203.0.113.9"}
        )
        assert forwarded.json() == {"error": "Invalid or unauthorized."}


def test_impersonation_needs_manage_users(emulator_factory) -> None:
    emu = emulator_factory(accounts=True)
    token = emu.add_user("bob")
    with httpx.Client(base_url=emu.url, headers={"Cookie": f"swarm_token={token}"}) as client:
        answer = client.post("/API/GetNewSession", json={"impersonateUser": "local"})
    assert answer.json() == {
        "error": "You do not have permission to impersonate other users.",
        "error_id": "bad_impersonate",
    }


def _generate_one(client: httpx.Client, sid: str, prompt: str) -> str:
    answer = call(client, "GenerateText2Image", sid, images=1, steps=1, prompt=prompt)
    return answer.json()["images"][0]


def test_view_uses_the_cookie_not_the_session(emulator_factory) -> None:
    emu: Emulator = emulator_factory(accounts=True)
    alice = emu.add_user("alice")
    bob = emu.add_user("bob")
    with httpx.Client(base_url=emu.url) as client:
        sid = client.post(
            "/API/GetNewSession", json={}, headers={"Cookie": f"swarm_token={alice}"}
        ).json()["session_id"]
        path = _generate_one(client, sid, "alice's cat")
        assert path.startswith("View/alice/raw/")
        url = "/" + quote(path, safe="/")
        anonymous = client.get(url)
        assert (anonymous.status_code, anonymous.json()) == (
            400,
            {"error": "invalid or unauthorized", "error_id": "invalid_user"},
        )
        other = client.get(url, headers={"Cookie": f"swarm_token={bob}"})
        assert other.status_code == 400 and other.json()["error_id"] == "unauthorized"
        mine = client.get(url, headers={"Cookie": f"swarm_token={alice}"})
        assert mine.status_code == 200 and mine.content.startswith(b"\x89PNG")


def test_sessions_file_keeps_ids_across_a_restart(tmp_path) -> None:
    sessions_file = tmp_path / "sessions.json"
    with Emulator(sessions_file=sessions_file) as before, httpx.Client(base_url=before.url) as c:
        sid = new_session(c)
        first_server = c.post("/API/GetNewSession", json={}).json()["server_id"]
    with Emulator(sessions_file=sessions_file) as after, httpx.Client(base_url=after.url) as client:
        assert call(client, "GetCurrentStatus", sid).json()["status"]["waiting_gens"] == 0
        assert client.post("/API/GetNewSession", json={}).json()["server_id"] != first_server
        after.invalidate_sessions()
        assert call(client, "GetCurrentStatus", sid).status_code == 401
    with Emulator(sessions_file=sessions_file) as third, httpx.Client(base_url=third.url) as client:
        assert call(client, "GetCurrentStatus", sid).status_code == 401


def test_swarm_user_id_header_picks_the_user_when_accounts_are_off(emulator_factory) -> None:
    emu = emulator_factory()
    with httpx.Client(base_url=emu.url) as client:
        answer = client.post("/API/GetNewSession", json={}, headers={"X-SWARM-USER_ID": "bot"})
    assert answer.json()["user_id"] == "bot"
