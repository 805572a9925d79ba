"""`generate image` end to end: what the server receives, what lands on disk, how it ends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
from conftest import Runner, read_registry, session_id_of

from asset_generator.emulator import Emulator


def sent_body(emu: Emulator) -> dict:
    calls = [c for c in emu.calls("GenerateText2ImageWS") if c.body is not None]
    assert len(calls) == 1
    body = dict(calls[0].body)
    body.pop("session_id", None)
    return body


def server_bytes(emu: Emulator, server_path: str) -> bytes:
    from urllib.parse import quote

    return httpx.get(f"{emu.url}/{quote(server_path, safe='/')}").content


def test_sends_exactly_what_was_set(cli: Runner, emulator: Emulator) -> None:
    result = cli(
        "generate",
        "image",
        "--prompt",
        "a cat [tag] (word:1.2)",
        "--steps",
        "3",
        "--cfg-scale",
        "6.5",
        "--lora",
        "style/pixel-art:0.7",
        "--lora",
        "detail-tweaker",
        "--param",
        "seed=1234",
    )
    assert result.code == 0, result.stderr
    assert sent_body(emulator) == {
        "prompt": "a cat [tag] (word:1.2)",
        "steps": 3,
        "cfgscale": 6.5,
        "seed": 1234,
        "loras": ["style/pixel-art", "detail-tweaker"],
        "loraweights": ["0.7", "1"],
        "images": 1,
    }


def test_config_defaults_are_sent_and_flags_win(
    cli: Runner, emulator: Emulator, config_dir: Path
) -> None:
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text("[generate]\nsteps = 4\nwidth = 640\n")
    result = cli("generate", "image", "--prompt", "x", "--width", "768")
    assert result.code == 0, result.stderr
    body = sent_body(emulator)
    assert body["steps"] == 4 and body["width"] == 768 and "height" not in body


def test_files_match_the_server_byte_for_byte_and_use_the_real_seed(
    cli: Runner, emulator: Emulator, workdir: Path
) -> None:
    result = cli(
        "generate",
        "image",
        "--prompt",
        "two pics",
        "--images",
        "2",
        "--steps",
        "2",
        "-o",
        "out",
        "--filename-template",
        "{index}-{seed}",
        "-f",
        "json",
    )
    assert result.code == 0, result.stderr
    document = result.json()
    assert document["ok"] is True and document["status"] == "succeeded"
    assert len(document["images"]) == 2
    for image in document["images"]:
        path = Path(image["path"])
        if not path.is_absolute():
            path = workdir / path
        assert path.parent == (workdir / "out").resolve() or path.parent == workdir / "out"
        assert path.name == f"{image['batch_index']}-{image['seed']}.png"
        assert isinstance(image["seed"], int)
        expected = server_bytes(emulator, image["server_path"])
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(expected).digest()
    record = next(iter(read_registry(Path(_state(cli)))["generations"].values()))
    assert record["status"] == "succeeded" and len(record["images"]) == 2


def _state(cli: Runner) -> str:
    import os

    return os.path.join(os.environ["XDG_STATE_HOME"], "asset-generator")


def test_plain_output_is_paths_on_stdout_and_no_escape_codes(
    cli: Runner, emulator: Emulator, workdir: Path
) -> None:
    # -v: outside a terminal the state lines are shown only on request.
    result = cli("generate", "image", "--prompt", "plain", "--steps", "2", "-v")
    assert result.code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and (workdir / lines[0]).is_file()
    assert "\x1b[" not in result.stderr and "\x1b[" not in result.stdout
    assert "running" in result.stderr


def test_existing_files_are_never_overwritten(
    cli: Runner, emulator: Emulator, workdir: Path
) -> None:
    (workdir / "fixed.png").write_bytes(b"mine")
    args = ["generate", "image", "--prompt", "x", "--steps", "1", "--filename-template", "fixed"]
    first = cli(*args)
    assert first.code == 0 and first.stdout.strip() == "fixed-1.png"
    assert (workdir / "fixed.png").read_bytes() == b"mine"
    forced = cli(*args, "--overwrite")
    assert forced.code == 0 and forced.stdout.strip() == "fixed.png"
    assert (workdir / "fixed.png").read_bytes().startswith(b"\x89PNG")


def test_no_save_decodes_inline_images(cli: Runner, emulator: Emulator, workdir: Path) -> None:
    result = cli("generate", "image", "--prompt", "inline", "--steps", "1", "--no-save")
    assert result.code == 0, result.stderr
    assert sent_body(emulator)["donotsave"] is True
    assert (workdir / result.stdout.strip()).read_bytes().startswith(b"\x89PNG")


def test_no_download_prints_server_paths(cli: Runner, emulator: Emulator, workdir: Path) -> None:
    result = cli("generate", "image", "--prompt", "remote", "--steps", "1", "--no-download")
    assert result.code == 0
    assert result.stdout.startswith("View/")
    assert list(workdir.iterdir()) == []


def test_server_error_is_exit_1_with_the_server_text(cli: Runner, emulator: Emulator) -> None:
    result = cli("generate", "image", "--prompt", "x", "--model", "no-such-model-zzz")
    assert result.code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("request failed: ")
    assert "are you sure that model name is correct?" in result.stderr
    as_json = cli("generate", "image", "--prompt", "x", "--model", "nope-zzz", "-f", "json")
    document = json.loads(as_json.stdout)
    assert document["ok"] is False and document["status"] == "failed"


def test_no_backends(cli: Runner, emulator_factory) -> None:
    emu = emulator_factory(backends=0)
    cli.url = emu.url
    result = cli("generate", "image", "--prompt", "x")
    assert result.code == 1
    assert "No backends available!" in result.stderr


def test_deadline_interrupts_our_session(cli: Runner, emulator_factory, workdir: Path) -> None:
    emu = emulator_factory(step_seconds=0.05)
    cli.url = emu.url
    result = cli("generate", "image", "--prompt", "slow", "--steps", "400", "--deadline", "1")
    assert result.code == 1
    assert "deadline" in result.stderr
    record = next(iter(read_registry(Path(_state(cli)))["generations"].values()))
    assert record["status"] == "cancelled"
    assert session_id_of(record) in emu.interrupted_sessions()
    assert [p for p in workdir.iterdir()] == []


def test_bad_options_are_usage_errors(cli: Runner) -> None:
    assert cli("generate", "image").code == 2
    assert cli("generate", "image", "--prompt", "x", "--steps", "-1").code == 2
    bad = cli("generate", "image", "--prompt", "x", "--filename-template", "{oops}")
    assert bad.code == 2 and "oops" in bad.stderr
    assert cli("generate", "image", "--prompt", "x", "--param", "novalue").code == 2


def test_keepalive_pongs_from_the_server_do_not_stall_the_socket(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    # Kestrel sends unsolicited empty Pong frames; a client that chokes on them hangs on
    # every generation longer than the keep-alive interval.
    emu = emulator_factory(step_seconds=0.03, ws_keepalive_seconds=0.02)
    cli.url = emu.url
    result = cli("generate", "image", "--prompt", "long", "--steps", "20", timeout=30)
    assert result.code == 0, result.stderr
    assert len(list(workdir.iterdir())) == 1


def test_a_percent_sign_in_the_prompt_still_downloads(
    cli: Runner, emulator: Emulator, workdir: Path
) -> None:
    # Prompts end up in SwarmUI's file names, and its /View decodes the path twice.
    result = cli("generate", "image", "--prompt", "50%ab cat, 100% sure", "--steps", "1")
    assert result.code == 0, result.stderr
    saved = workdir / result.stdout.strip()
    served = [c.path for c in emulator.requests if c.path.lower().startswith("/view/")]
    assert saved.read_bytes() == httpx.get(emulator.url + served[-1]).content


def test_a_request_the_server_drops_silently_is_failed_not_cancelled(
    cli: Runner, emulator: Emulator
) -> None:
    # An unreadable parameter makes SwarmUI end the request with no image and no error
    # (protocol §9 pitfall 19); nobody cancelled it.
    result = cli("generate", "image", "--prompt", "x", "--param", "rawresolution=12x")
    assert result.code == 1
    assert "without an error message" in result.stderr
    record = next(iter(read_registry(Path(_state(cli)))["generations"].values()))
    assert record["status"] == "failed"


def test_keepalive_pongs_count_as_signs_of_life(emulator_factory) -> None:
    # SwarmUI sends no keep_alive message while it is still launching a large batch, only
    # Kestrel's Pongs; a client that ignored them would give up on a healthy generation.
    import contextlib
    import time

    from asset_generator.swarm.errors import RequestTimeout
    from asset_generator.swarm.http import Transport

    emu = emulator_factory(step_seconds=0.05, ws_keepalive_seconds=0.05)
    session = httpx.post(f"{emu.url}/API/GetNewSession", json={}).json()["session_id"]
    with Transport(emu.url) as transport, transport.websocket("GenerateText2ImageWS") as ws:
        ws.send({"session_id": session, "prompt": "x", "images": 1, "steps": 10})
        assert ws.last_heard == 0.0
        deadline = time.monotonic() + 10
        while ws.last_heard == 0.0 and time.monotonic() < deadline:
            with contextlib.suppress(RequestTimeout):
                ws.receive(timeout=0.1)
        assert 0.0 < ws.last_heard <= time.monotonic()
