"""Local building blocks: settings precedence, the registry file, request bodies, file names."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asset_generator import settings as config
from asset_generator.downloads import (
    DownloadError,
    NameFields,
    check_template,
    inside,
    sanitize_component,
    save_stream,
    target_name,
)
from asset_generator.registry import (
    CANCELLED,
    GenerationRecord,
    Registry,
    RegistryError,
    State,
    server_key,
)
from asset_generator.server.types import Lora, Request
from asset_generator.swarm.params import build_request, expected_outputs, parse_lora, parse_param

# -- settings -------------------------------------------------------------------------------


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_precedence_flag_env_profile_file_default(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "c.toml",
        'api_url = "http://file:1"\ntimeout = 5\n[profiles.lab]\napi_url = "http://profile:2"\n',
    )
    env = {"ASSET_GENERATOR_API_URL": "http://env:3"}
    flags = {"api_url": "http://flag:4"}
    assert config.resolve(flags, config_path=path, environ=env)["api_url"] == "http://flag:4"
    assert config.resolve({}, config_path=path, environ=env)["api_url"] == "http://env:3"
    resolved = config.resolve({}, config_path=path, profile="lab", environ={})
    assert resolved["api_url"] == "http://profile:2"
    assert resolved.sources["api_url"] == "profile lab"
    assert config.resolve({}, config_path=path, environ={})["api_url"] == "http://file:1"
    # No file at the default place: the defaults. A file the user named must exist.
    resolved = config.resolve({}, environ={})
    assert resolved["api_url"] == "http://localhost:7801"
    assert resolved["timeout"] == 30.0
    with pytest.raises(config.SettingsError, match="does not exist"):
        config.resolve({}, config_path=tmp_path / "none.toml", environ={})


def test_profile_from_environment_and_unknown_profile(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", '[profiles.lab]\nformat = "json"\n')
    env = {"ASSET_GENERATOR_PROFILE": "lab"}
    assert config.resolve({}, config_path=path, environ=env)["format"] == "json"
    with pytest.raises(config.SettingsError, match="profile 'nope'"):
        config.resolve({}, config_path=path, profile="nope", environ={})


def test_bad_values_name_the_key_and_where_they_came_from(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", "timeout = -3\n")
    with pytest.raises(config.SettingsError, match="timeout") as caught:
        config.resolve({}, config_path=path, environ={})
    assert str(path) in str(caught.value)
    with pytest.raises(config.SettingsError, match="ASSET_GENERATOR_API_URL"):
        config.resolve({}, config_path=path, environ={"ASSET_GENERATOR_API_URL": "ftp://x"})


def test_broken_toml_is_a_clear_error(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", "api_url = \n")
    with pytest.raises(config.SettingsError, match="not valid TOML") as caught:
        config.resolve({}, config_path=path, environ={})
    assert caught.value.exit_code == 1


# -- the registry ---------------------------------------------------------------------------


def record(record_id: str, **changes: object) -> GenerationRecord:
    base = dict(
        id=record_id,
        server="http://h:1",
        server_key="k",
        handle={"session_id": "s" * 40},
        pid=os.getpid(),
        host=os.uname().nodename,
        prompt="p",
        created=1000.0,
    )
    base.update(changes)
    return GenerationRecord(**base)  # type: ignore[arg-type]


def test_registry_round_trip_is_0600_and_atomic(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "state")
    with registry.transaction() as state:
        state.generations["gen_1"] = record("gen_1")
    mode = stat.S_IMODE(registry.path.stat().st_mode)
    assert mode == 0o600
    assert registry.read().generations["gen_1"].prompt == "p"
    leftovers = [p.name for p in registry.directory.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_corrupt_registry_is_set_aside_with_a_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    registry = Registry(tmp_path, warn=warnings.append)
    registry.path.write_text("{ not json")
    with registry.transaction() as state:
        assert state.generations == {}
        state.generations["gen_2"] = record("gen_2")
    assert warnings and "corrupt" in warnings[0]
    assert any(p.name.startswith("generations.json.corrupt-") for p in tmp_path.iterdir())
    assert "gen_2" in registry.read().generations


def test_full_disk_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    from asset_generator import registry as registry_module
    from asset_generator.registry import RegistryError

    registry = Registry(tmp_path / "state")
    with registry.transaction() as state:
        state.generations["gen_1"] = record("gen_1")
    before = registry.path.read_bytes()

    def full(handle: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_module.os, "write", full)
    with pytest.raises(RegistryError, match="disk is full"), registry.transaction() as state:
        state.generations["gen_9"] = record("gen_9")
    monkeypatch.undo()
    assert registry.path.read_bytes() == before
    assert [p.name for p in registry.directory.iterdir() if p.name.endswith(".tmp")] == []


def test_pruning_drops_old_finished_records_only() -> None:
    state = State()
    old = record("gen_old", status=CANCELLED, finished=1.0)
    live = record("gen_live", created=1.0)
    state.generations = {"gen_old": old, "gen_live": live}
    state.prune(now=30 * 24 * 3600.0)
    assert set(state.generations) == {"gen_live"}


def test_public_record_never_shows_the_session() -> None:
    shown = json.dumps(record("gen_1").public())
    assert "s" * 40 not in shown


def dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_an_unconfirmed_cancel_is_active_once_its_process_is_gone(tmp_path: Path) -> None:
    # Issue 19 item 3: the field has a default, is validated, and decides is_final.
    assert (
        GenerationRecord.from_dict(
            {k: v for k, v in vars(record("gen_1")).items() if k != "cancel_unconfirmed"}
        ).cancel_unconfirmed
        is None
    )
    mine = record("gen_1", status=CANCELLED, finished=2000.0, cancel_unconfirmed=2000.0)
    assert mine.ended and mine.is_final  # its (this) process finishes the job
    orphan = record("gen_2", status=CANCELLED, finished=2000.0, cancel_unconfirmed=2000.0)
    orphan.pid = dead_pid()
    assert orphan.ended and not orphan.is_final
    assert orphan.public()["cancel_unconfirmed"] is True and "s" * 40 not in str(orphan.public())
    for bad in ("soon", -1.0, float("nan"), True):
        with pytest.raises(ValueError):
            GenerationRecord.from_dict({**vars(orphan), "cancel_unconfirmed": bad})
    with pytest.raises(ValueError, match="no final status"):
        GenerationRecord.from_dict({**vars(orphan), "status": "running"})
    # Kept through the file, and never pruned while the work may still run.
    registry = Registry(tmp_path)
    with registry.transaction() as state:
        state.generations["gen_2"] = orphan
    state = registry.read()
    assert state.generations["gen_2"].cancel_unconfirmed == 2000.0
    state.prune(now=30 * 24 * 3600.0)
    assert "gen_2" in state.generations


def test_a_cancel_sent_again_keeps_the_status_and_is_taken_back_if_it_fails(
    tmp_path: Path,
) -> None:
    import time

    from asset_generator.jobs.stop import confirm, mark_cancelled, unmark
    from asset_generator.registry import FAILED

    registry = Registry(tmp_path)
    now = time.time()
    pending = record("gen_1", status=FAILED, error="boom", finished=now, cancel_unconfirmed=now)
    pending.pid = dead_pid()
    with registry.transaction() as state:
        state.generations["gen_1"] = pending
        state.generations["gen_2"] = record("gen_2", status="running")
    before = list(registry.read().generations.values())
    marked = mark_cancelled(registry, ["gen_1", "gen_2"])
    saved = registry.read().generations
    assert (saved["gen_1"].status, saved["gen_1"].error) == (FAILED, "boom")
    assert saved["gen_1"].cancel_unconfirmed > now
    assert saved["gen_2"].status == CANCELLED and saved["gen_2"].cancel_unconfirmed is not None
    unmark(registry, marked, before, gone=None)
    saved = registry.read().generations
    assert saved["gen_1"].cancel_unconfirmed == now and saved["gen_2"].status == "running"
    assert saved["gen_2"].cancel_unconfirmed is None
    marked = mark_cancelled(registry, ["gen_1", "gen_2"])
    confirm(registry, marked)
    assert all(r.is_final for r in registry.read().generations.values())
    assert registry.read().generations["gen_1"].status == FAILED


def test_server_key_hides_the_credential() -> None:
    key = server_key("http://h:1", "secret-token")
    assert "secret" not in key and key != server_key("http://h:1", "other")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_in_the_cache_file_never_crash(tmp_path_factory, data: bytes) -> None:
    directory = tmp_path_factory.mktemp("fuzz")
    registry = Registry(directory, warn=lambda message: None)
    registry.path.write_bytes(data)
    registry.read()
    with registry.transaction() as state:
        state.generations["gen_x"] = record("gen_x")
    assert "gen_x" in registry.read().generations


# -- request bodies -------------------------------------------------------------------------


def test_only_what_was_set_is_sent_and_images_is_always_present() -> None:
    body = build_request(Request(prompt="a cat", steps=None, width=None))
    assert body == {"prompt": "a cat", "images": 1}


def test_explicit_beats_param_beats_config_after_name_normalisation() -> None:
    body = build_request(
        Request(
            prompt="x",
            cfg_scale=9.0,
            defaults={"cfg_scale": 5.0, "steps": 30},
            params=(("CFG_Scale", 7), ("steps", 12)),
        )
    )
    assert body["cfgscale"] == 9.0 and "CFG_Scale" not in body
    assert body["steps"] == 12


def test_loras_arrive_as_parallel_lists() -> None:
    body = build_request(
        Request(prompt="x", loras=(Lora.parse("style/pixel-art:0.8"), Lora.parse("detail v2")))
    )
    assert body["loras"] == ["style/pixel-art", "detail v2"]
    assert body["loraweights"] == ["0.8", "1"]
    assert parse_lora("C:weird") == ("C:weird", "1")
    # SwarmUI re-splits LoRA lists on commas: such a name cannot be sent at all.
    with pytest.raises(ValueError, match="comma"):
        parse_lora("detail, v2:0.5")


def test_param_values_are_typed() -> None:
    assert parse_param("batchsize=2") == ("batchsize", 2)
    assert parse_param("initimagecreativity=0.5") == ("initimagecreativity", 0.5)
    assert parse_param("donotsave=true") == ("donotsave", True)
    assert parse_param("aspectratio=16:9") == ("aspectratio", "16:9")
    with pytest.raises(ValueError):
        parse_param("novalue")
    assert expected_outputs({"images": 3, "batchsize": 2}) == 6


def test_images_key_is_exact_even_from_param() -> None:
    body = build_request(Request(prompt="x", params=(("Images", 3),)))
    assert body["images"] == 3 and "Images" not in body


# -- file names -----------------------------------------------------------------------------


def fields(**changes: object) -> NameFields:
    base = dict(
        index=0, seed=42, prompt="a cat", model="sd/x.safetensors", generation_id="g", when=0
    )
    base.update(changes)
    return NameFields(**base)  # type: ignore[arg-type]


def test_template_uses_real_seed_and_server_extension() -> None:
    assert target_name("{prompt}-{seed}", fields(), "View/local/raw/a.png") == "a cat-42.png"
    assert target_name("{model}_{index}", fields(), "data:image/webp;base64,AA") == "x_0.webp"
    with pytest.raises(ValueError, match="unknown field"):
        check_template("{nope}")


@pytest.mark.parametrize("hostile", ["../../x", "/etc/passwd", "a\x00b", "..", "a/../../b", "\\x"])
def test_hostile_names_stay_inside(tmp_path: Path, hostile: str) -> None:
    name = target_name(hostile, fields(), "View/x.png")
    path = inside(tmp_path, name)
    assert path.resolve().parent == tmp_path.resolve()


def test_inside_refuses_separators(tmp_path: Path) -> None:
    with pytest.raises(DownloadError):
        inside(tmp_path, "../escape.png")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_sanitised_names_are_single_safe_components(text: str) -> None:
    name = sanitize_component(text)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert len(name.encode()) <= 180


def test_save_never_overwrites_and_leaves_no_partial_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    first = save_stream(out, "a.png", [b"one"], overwrite=False)
    second = save_stream(out, "a.png", [b"two"], overwrite=False)
    assert (first.name, second.name) == ("a.png", "a-1.png")
    assert first.read_bytes() == b"one"

    def broken():
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(DownloadError, match="disk is full"):
        save_stream(out, "b.png", broken(), overwrite=False)
    assert sorted(p.name for p in out.iterdir()) == ["a-1.png", "a.png"]
    replaced = save_stream(out, "a.png", [b"three"], overwrite=True)
    assert replaced.read_bytes() == b"three"


def test_a_lock_held_too_long_is_a_clear_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    import asset_generator.registry as registry_module

    monkeypatch.setattr(registry_module, "LOCK_WAIT_SECONDS", 0.2)
    registry = Registry(tmp_path / "state", warn=lambda message: None)
    with registry.transaction() as state:
        state.generations.clear()
    holder = os.open(tmp_path / "state" / "generations.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(RegistryError, match="locked by another process"):  # noqa: SIM117
            with registry.transaction():
                pass
    finally:
        os.close(holder)
    with registry.transaction():
        pass  # free again once the holder lets go


def test_saving_works_where_hard_links_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FAT, exFAT and some SMB mounts refuse link(); names must still never be overwritten.
    import errno

    def no_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "usb"
    out.mkdir()
    (out / "a.png").write_bytes(b"mine")
    saved = save_stream(out, "a.png", [b"new"], overwrite=False)
    assert saved.name == "a-1.png" and saved.read_bytes() == b"new"
    assert (out / "a.png").read_bytes() == b"mine"
    assert sorted(p.name for p in out.iterdir()) == ["a-1.png", "a.png"]


def test_refresh_confirms_a_lost_cancel_only_when_the_server_shows_the_work_gone(
    tmp_path: Path,
) -> None:
    import time

    from asset_generator.jobs.generations import Generations
    from asset_generator.server import jobstate

    now = time.time()
    answers = {"s-idle": jobstate.IDLE, "s-gone": jobstate.GONE, "s-busy": jobstate.RUNNING}

    class Server:
        type, label, name, gone_text = "swarmui", "SwarmUI", "http://h:1", "gone"

        def job_states(self, handles: list[dict]) -> list[str]:
            return [answers[h["session_id"]] for h in handles]

    registry = Registry(tmp_path)
    with registry.transaction() as state:
        for name in answers:
            pending = record(name, handle={"session_id": name}, status=CANCELLED, finished=now)
            pending.cancel_unconfirmed, pending.pid = now, dead_pid()
            state.generations[name] = pending
    generations = Generations(registry, "k", lambda: Server())  # type: ignore[arg-type,return-value]
    active = generations.refresh(list(registry.read().generations.values()))
    assert [r.id for r in active] == ["s-busy"]
    saved = registry.read().generations
    # The status stays cancelled throughout: the server running it does not make it "running".
    assert {r.id: r.status for r in saved.values()} == dict.fromkeys(answers, CANCELLED)
    assert {r.id for r in saved.values() if r.cancel_unconfirmed is None} == {"s-idle", "s-gone"}


def test_a_signal_inside_a_deferred_block_raises_once_the_block_is_over() -> None:
    # A line printed above a live display must stay whole: the first signal's exception waits
    # for the end of the write (a half-written redraw left a second copy of the bars).
    import signal

    from asset_generator.cli import signals

    previous = signals.install()
    try:
        finished = []
        with pytest.raises(signals.Signalled) as raised, signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler has run by now: it only took note
                pass
            finished.append(True)
        assert finished == [True] and raised.value.exit_code == 130
        # Outside a deferred block a signal raises at once, as before.
        signals.restore(previous)
        previous = signals.install()
        with pytest.raises(signals.Signalled):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
    finally:
        signals.restore(previous)
