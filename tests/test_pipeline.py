"""`pipeline` end to end: the real program against an emulator with several backends."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Runner, read_registry, session_id_of, wait_for

from asset_generator.emulator import Emulator, Fault, FaultPoint

# A game-assets-like spec: nested subgroups, inherited metadata and params.
GAME = """\
params:
  steps: 3
assets:
  - name: Characters
    output_dir: characters
    seed_offset: 0
    metadata:
      style: "pixel art"
    params:
      width: 512
    assets:
      - id: hero
        name: Hero
        prompt: "a brave hero"
      - id: mage
        name: Mage
        prompt: "a fire mage"
        metadata:
          element: "fire"
        params:
          cfg_scale: 6.5
      - id: rogue
        prompt: "a sneaky rogue"
  - name: World
    output_dir: world
    seed_offset: 100
    metadata:
      style: "painterly"
      mood: "calm"
    subgroups:
      - name: Forest
        output_dir: forest
        seed_offset: 10
        metadata:
          mood: "misty"
        assets:
          - {id: tree, prompt: "an old oak"}
          - {id: path, prompt: "a winding path", filename: "path-{seed}.png"}
      - name: Cave
        output_dir: cave
        seed_offset: 20
        params:
          height: 256
        assets:
          - {id: entrance, prompt: "a cave entrance"}
"""
EXPECTED = {
    # path: (prompt, seed, params beyond prompt/seed/images)
    "characters/hero.png": ("a brave hero, pixel art", 50, {"steps": 3, "width": 512}),
    "characters/mage.png": (
        "a fire mage, pixel art, fire",
        51,
        {"steps": 3, "width": 512, "cfgscale": 6.5},
    ),
    "characters/rogue.png": ("a sneaky rogue, pixel art", 52, {"steps": 3, "width": 512}),
    "world/forest/tree.png": ("an old oak, painterly, misty", 60, {"steps": 3}),
    "world/forest/path-61.png": ("a winding path, painterly, misty", 61, {"steps": 3}),
    "world/cave/entrance.png": (
        "a cave entrance, painterly, calm",
        70,
        {"steps": 3, "height": 256},
    ),
}


def spec(workdir: Path, text: str = GAME, name: str = "game.yaml") -> str:
    (workdir / name).write_text(text)
    return name


def many(count: int, prompt: str = "card") -> str:
    items = "\n".join(f"      - {{id: c{i:02d}, prompt: '{prompt} {i}'}}" for i in range(count))
    return f"assets:\n  - name: Deck\n    output_dir: deck\n    assets:\n{items}\n"


def sent(emu: Emulator) -> list[dict]:
    return [c.body for c in emu.calls("GenerateText2ImageWS") if c.body and "prompt" in c.body]


def state(workdir: Path) -> dict:
    home = workdir.parent / "home" / "xdg_state_home" / "asset-generator"
    return read_registry(home)


def fail_prompts(word: str):
    """A faults hook: requests whose prompt contains ``word`` fail on the backend."""

    def hook(point: FaultPoint) -> Fault | None:
        body = point.request_body or {}
        image = point.transport == "ws" and "image" in (point.message or {})
        if image and word in str(body.get("prompt", "")):
            return Fault(replace_message={"error": "Something went wrong while generating"})
        return None

    return hook


def test_nested_spec_runs_every_asset_on_every_backend(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    # Steps long enough that three assets overlap even on a loaded machine.
    emu = emulator_factory(backends=3, step_seconds=0.1)
    cli.url = emu.url
    result = cli("pipeline", spec(workdir), "--base-seed", "50", "-o", "out")
    assert result.code == 0, result.stderr
    expected_paths = {f"out/{p}" for p in EXPECTED}
    assert set(result.stdout.split()) == expected_paths
    assert all((workdir / p).stat().st_size > 0 for p in expected_paths)
    bodies = {b["prompt"]: b for b in sent(emu)}
    assert len(bodies) == len(EXPECTED)
    for prompt, seed, params in EXPECTED.values():
        body = bodies[prompt]
        assert body["seed"] == seed and body["images"] == 1
        assert {k: v for k, v in body.items() if k not in ("prompt", "seed", "images",
                                                            "session_id")} == params  # fmt: skip
    # Every backend was busy at once.
    assert emu.backend_usage()["peak_busy"] == 3
    registry = state(workdir)
    (pipe,) = registry["pipelines"].values()
    assert pipe["status"] == "succeeded" and pipe["base_seed"] == 50
    assert pipe["counts"] == {"succeeded": 6}
    gens = [g for g in registry["generations"].values() if g["pipeline_id"] == pipe["id"]]
    assert len(gens) == 6 and {g["status"] for g in gens} == {"succeeded"}
    manifest = json.loads((workdir / "out" / "asset-generator-manifest.json").read_text())
    assert manifest["base_seed"] == 50
    assert set(manifest["assets"]) == set(EXPECTED)
    assert {e["status"] for e in manifest["assets"].values()} == {"succeeded"}


def test_the_command_line_wins_over_the_spec_and_the_config_stays_below_it(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=3)
    cli.url = emu.url
    assert cli("config", "set", "generate.steps", "9").code == 0
    assert cli("config", "set", "generate.sampler", "euler").code == 0
    result = cli("pipeline", spec(workdir), "--steps", "7", "--dry-run", "-f", "json")
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "command line" in line]
    assert warnings == [
        "warning: the command line (--steps) overrides the spec's params for 6 of 6 assets"
    ]
    assert {a["params"]["steps"] for a in result.json()["assets"]} == {7}
    ran = cli("pipeline", spec(workdir), "--steps", "7", "-q")
    assert ran.code == 0, ran.stderr
    assert {b["steps"] for b in sent(emu)} == {7}
    assert {b["sampler"] for b in sent(emu)} == {"euler"}
    emu.reset_log()
    # Without the option the spec's steps: 3 stands over the config's 9.
    again = cli("pipeline", spec(workdir), "--force", "-q")
    assert again.code == 0, again.stderr
    assert {b["steps"] for b in sent(emu)} == {3}


def test_sessions_are_a_small_pool_reused_across_assets(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=2)
    cli.url = emu.url
    result = cli("pipeline", spec(workdir, many(14)), "-q")
    assert result.code == 0, result.stderr
    sessions = [c.session_id for c in emu.calls("GenerateText2ImageWS") if c.body]
    assert len(sessions) == 14
    # A slot each, plus the next asset of each slot queued ahead: never a session per asset.
    assert len(set(sessions)) <= 5 and emu.sessions_created <= 5
    registry = state(workdir)
    assert len(registry["servers"][next(iter(registry["servers"]))]["adapter"]["sessions"]) <= 5


def test_rerun_skips_then_one_deleted_file_is_regenerated_then_force(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=2)
    cli.url = emu.url
    name = spec(workdir)
    first = cli("pipeline", name, "-f", "json")
    assert first.code == 0, first.stderr
    base = first.json()["pipeline"]["base_seed"]
    assert f"base seed {base} (random" in first.stderr
    emu.reset_log()

    again = cli("pipeline", name, "-f", "json")
    assert again.code == 0, again.stderr
    document = again.json()
    # Without --base-seed the manifest's base seed is reused, so the rerun matches.
    assert document["pipeline"]["base_seed"] == base
    assert document["summary"] == {"total": 6, "succeeded": 0, "skipped": 6, "failed": 0,
                                   "cancelled": 0, "not_started": 0}  # fmt: skip
    # Nothing to generate: no request at all (not even a session or ListBackends).
    assert emu.requests == []

    (workdir / "pipeline-output/characters/mage.png").unlink()
    one = cli("pipeline", name)
    assert one.code == 0, one.stderr
    assert one.stdout.split() == ["pipeline-output/characters/mage.png"]
    assert [b["prompt"] for b in sent(emu)] == ["a fire mage, pixel art, fire"]
    emu.reset_log()

    forced = cli("pipeline", name, "--force", "-q")
    assert forced.code == 0, forced.stderr
    assert forced.stderr == ""
    assert len(forced.stdout.split()) == 6 and len(sent(emu)) == 6


def test_changed_prompt_regenerates_only_that_asset(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=2)
    cli.url = emu.url
    assert cli("pipeline", spec(workdir), "--base-seed", "1").code == 0
    emu.reset_log()
    spec(workdir, GAME.replace("an old oak", "a young birch"))
    result = cli("pipeline", "--file", "game.yaml", "--base-seed", "1")
    assert result.code == 0, result.stderr
    assert [b["prompt"] for b in sent(emu)] == ["a young birch, painterly, misty"]


def test_a_rerun_says_why_it_regenerates_and_the_dry_run_shows_it_first(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=2)
    cli.url = emu.url
    first = cli("pipeline", spec(workdir), "--base-seed", "1")
    assert first.code == 0, first.stderr
    # A first run into an empty directory has nothing to explain.
    assert "regenerat" not in first.stderr
    spec(workdir, GAME.replace("an old oak", "a young birch").replace("height: 256", "height: 384"))
    out = workdir / "pipeline-output"
    (out / "characters/mage.png").unlink()
    (out / "characters/hero.png").write_bytes(b"touched up by hand")
    emu.reset_log()

    dry = cli("pipeline", "game.yaml", "--dry-run")
    assert dry.code == 0, dry.stderr
    reasons = [line for line in dry.stderr.splitlines() if line.startswith("would ")]
    assert reasons == [
        "would regenerate 1 asset: file missing: mage",
        "would regenerate 1 asset: prompt changed: tree",
        "would regenerate 1 asset: parameters changed (height): entrance",
        "would fail 1 asset: file altered since it was made; --overwrite replaces it: hero",
        "would skip 2 assets: done with the same prompt, seed and parameters: rogue, path",
    ]
    assert "world/forest/tree.png  [generate: prompt changed]" in dry.stdout
    assert "characters/rogue.png  [skip]" in dry.stdout
    as_json = cli("pipeline", "game.yaml", "--dry-run", "-f", "json").json()
    actions = {a["id"]: (a["action"], a["reasons"]) for a in as_json["assets"]}
    assert actions["mage"] == ("generate", ["missing"])
    assert actions["entrance"] == ("generate", ["params"])
    assert actions["hero"] == ("blocked", ["altered"])
    assert actions["rogue"] == ("skip", [])
    assert emu.requests == []

    run = cli("pipeline", "game.yaml", "--continue-on-error")
    assert run.code == 1
    assert "regenerating 1 asset: prompt changed: tree" in run.stderr.splitlines()
    assert "failing 1 asset: file altered since it was made; --overwrite replaces it: hero" in (
        run.stderr.splitlines()
    )
    assert not any(line.startswith("would ") for line in run.stderr.splitlines())
    assert sorted(b["prompt"] for b in sent(emu)) == [
        "a cave entrance, painterly, calm",
        "a fire mage, pixel art, fire",
        "a young birch, painterly, misty",
    ]

    # An asset added to the spec is new, not regenerated.
    spec(
        workdir,
        GAME.replace(
            "      - id: rogue\n", "      - {id: bard, prompt: a bard}\n      - id: rogue\n"
        ),
    )
    added = cli("pipeline", "game.yaml", "--dry-run")
    assert "would make 1 asset: new in the spec (not in the manifest): bard" in added.stderr


def test_a_foreign_file_in_the_way_is_never_overwritten(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=2)
    cli.url = emu.url
    foreign = workdir / "pipeline-output/characters/hero.png"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"my own drawing")
    result = cli("pipeline", spec(workdir), "--continue-on-error", "-f", "json")
    assert result.code == 1
    document = result.json()
    assert document["ok"] is False and document["error"]["code"] == "partial"
    hero = next(a for a in document["assets"] if a["id"] == "hero")
    assert hero["status"] == "failed" and "--overwrite" in hero["error"]
    assert document["summary"]["succeeded"] == 5
    assert foreign.read_bytes() == b"my own drawing"
    assert "a brave hero, pixel art" not in [b["prompt"] for b in sent(emu)]

    replaced = cli("pipeline", "game.yaml", "--overwrite")
    assert replaced.code == 0, replaced.stderr
    assert replaced.stdout.split() == ["pipeline-output/characters/hero.png"]
    assert foreign.read_bytes() != b"my own drawing"


def test_first_failure_stops_the_run_without_continue_on_error(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    # --parallel below the backends' count: nothing is queued ahead, so the rest never start.
    emu = emulator_factory(backends=2, faults=fail_prompts("card 2"))
    cli.url = emu.url
    result = cli("pipeline", spec(workdir, many(5)), "--parallel", "1", "-f", "json")
    assert result.code == 1
    document = result.json()
    assert document["error"]["code"] == "partial"
    statuses = [a["status"] for a in document["assets"]]
    assert statuses == ["succeeded", "succeeded", "failed", "not_started", "not_started"]
    assert "Something went wrong" in document["assets"][2]["error"]
    assert len(sent(emu)) == 3


def test_continue_on_error_runs_the_rest_and_still_exits_1(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=2, faults=fail_prompts("card 2"))
    cli.url = emu.url
    result = cli("pipeline", spec(workdir, many(5)), "--continue-on-error")
    assert result.code == 1
    assert "1 failed" in result.stderr and "first failure: c02" in result.stderr
    assert len(result.stdout.split()) == 4
    assert "Traceback" not in result.stderr


def start_long(cli: Runner, workdir: Path, *extra: str) -> subprocess.Popen[str]:
    return cli.start("pipeline", spec(workdir, many(6)), "--parallel", "2", *extra)


def wait_running(workdir: Path, count: int = 1) -> list[dict]:
    def running() -> list[dict]:
        try:
            gens = state(workdir)["generations"].values()
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        return [g for g in gens if g["status"] == "running" and g["pipeline_id"]]

    assert wait_for(lambda: len(running()) >= count), "no asset started running"
    return running()


@pytest.mark.parametrize("how", ["newest", "by_id"])
def test_cancel_from_another_process_stops_the_whole_pipeline(
    cli: Runner, emulator_factory, workdir: Path, how: str
) -> None:
    emu = emulator_factory(backends=2, step_seconds=0.1, default_steps=100)
    cli.url = emu.url
    process = start_long(cli, workdir, "-f", "json")
    flying = wait_running(workdir, 2)
    status = cli("status", "-f", "json")
    (row,) = status.json()["pipelines"]
    assert row["status"] == "running" and row["total"] == 6
    assert {a["id"] for a in row["in_flight"]} >= {g["id"] for g in flying}
    target = [] if how == "newest" else [row["id"]]
    cancelled = cli("cancel", *target)
    assert cancelled.code == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"cancelled {row['id']}")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1, err
    assert "cancelled:" in err and "Traceback" not in err
    # Only a cancel of ours marks the pipeline: the message names it (cli-contract §7).
    assert f"cancelled: {row['id']} was cancelled by `asset-generator cancel`;" in err
    document = json.loads(out)
    assert document["error"]["code"] == "cancelled"
    assert document["summary"]["not_started"] >= 2
    assert document["summary"]["succeeded"] == 0
    for g in flying:
        assert session_id_of(g) in emu.interrupted_sessions()
    assert state(workdir)["pipelines"][row["id"]]["status"] == "cancelled"
    manifest = json.loads((workdir / "pipeline-output/asset-generator-manifest.json").read_text())
    assert {e["status"] for e in manifest["assets"].values()} == {"cancelled"}


def test_cancel_one_asset_and_the_pipeline_goes_on(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=2, step_seconds=0.02, default_steps=40)
    cli.url = emu.url
    process = start_long(cli, workdir, "-f", "json")
    victim = wait_running(workdir)[0]
    assert cli("cancel", victim["id"]).code == 0
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    document = json.loads(out)
    assert document["ok"] is False
    assert document["error"]["code"] == "cancelled"
    assert document["error"]["message"].startswith("cancelled: ")
    assert "by `asset-generator cancel`;" in document["error"]["message"]
    by_generation = {a["generation_id"]: a for a in document["assets"]}
    assert by_generation[victim["id"]]["status"] == "cancelled"
    assert document["summary"]["succeeded"] == 5
    assert session_id_of(victim) in emu.interrupted_sessions()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_interrupts_every_in_flight_asset(
    cli: Runner, emulator_factory, workdir: Path, sig: signal.Signals
) -> None:
    emu = emulator_factory(backends=2, step_seconds=0.1, default_steps=100)
    cli.url = emu.url
    process = start_long(cli, workdir)
    flying = wait_running(workdir, 2)
    process.send_signal(sig)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
    assert "Traceback" not in err
    for g in flying:
        assert session_id_of(g) in emu.interrupted_sessions()
    registry = state(workdir)
    assert {registry["generations"][g["id"]]["status"] for g in flying} == {"cancelled"}
    (pipe,) = registry["pipelines"].values()
    assert pipe["status"] == "cancelled"
    manifest = json.loads((workdir / "pipeline-output/asset-generator-manifest.json").read_text())
    assert {e["status"] for e in manifest["assets"].values()} == {"cancelled"}
    assert not list((workdir / "pipeline-output").rglob("*.part"))


def slow_interrupts(point: FaultPoint) -> Fault | None:
    """A faults hook: InterruptAll answers after 3 s, so a stop takes its time."""
    if point.transport == "http" and (point.route or "").lower() == "interruptall":
        return Fault(delay_seconds=3.0)
    return None


def test_a_second_ctrl_c_records_the_same_states_as_one(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    # One cause, one state: a Ctrl-C pressed twice (the second while the first still waits
    # for the server) leaves the pipeline and its assets cancelled, as one Ctrl-C does, never
    # failed as a process that died without a word.
    import time

    emu = emulator_factory(backends=2, step_seconds=0.1, default_steps=100, faults=slow_interrupts)
    cli.url = emu.url
    process = start_long(cli, workdir)
    flying = wait_running(workdir, 2)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted again" in err and "Traceback" not in err
    # `status` settles what a dead process left unfinished: nothing may be left to it.
    status = cli("status", "-f", "json")
    (row,) = status.json()["pipelines"]
    assert row["status"] == "cancelled", row
    # The assets sent (running, or queued ahead at the server) are cancelled, the rest not
    # started; none is done.
    assert row["done"] == row["failed"] == 0, row
    assert row["cancelled"] >= 2 and row["cancelled"] + row["not_started"] == 6, row
    registry = state(workdir)
    gens = [g for g in registry["generations"].values() if g["pipeline_id"] == row["id"]]
    assert {g["id"] for g in flying} <= {g["id"] for g in gens}
    assert {g["status"] for g in gens} == {"cancelled"}
    manifest = json.loads((workdir / "pipeline-output/asset-generator-manifest.json").read_text())
    assert {e["status"] for e in manifest["assets"].values()} == {"cancelled"}
    assert len(manifest["assets"]) == row["cancelled"]


def test_failed_assets_are_never_counted_as_done(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=2, faults=fail_prompts("card 2"))
    cli.url = emu.url
    result = cli("pipeline", spec(workdir, many(5)), "--parallel", "1")
    assert result.code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert lines[0].startswith("[1/5 done] succeeded c00")
    assert lines[2].startswith("[2/5 done, 1 failed] failed c02")
    assert not any("3/5 done" in line for line in lines), lines
    (row,) = cli("status", "-f", "json").json()["pipelines"]
    assert row["status"] == "failed"
    assert (row["done"], row["failed"], row["cancelled"], row["not_started"]) == (2, 1, 0, 2)
    assert row["counts"] == {"succeeded": 2, "skipped": 0, "failed": 1, "cancelled": 0,
                             "in_flight": 0, "not_started": 2}  # fmt: skip


BAD_SPECS = {
    "yaml error": "assets:\n  - name: [unclosed\n",
    "no assets": "groups: []\n",
    "wrong type": "assets:\n  - {name: g, seed_offset: ten, assets: [{id: a, prompt: p}]}\n",
    "leaves output dir": "assets:\n  - {name: g, output_dir: ../x, assets: [{id: a, prompt: p}]}\n",
    "absolute path": "assets:\n  - {name: g, assets: [{id: a, prompt: p, filename: /tmp/x.png}]}\n",
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_fails_before_any_request_or_directory(
    cli: Runner, emulator: Emulator, workdir: Path, case: str
) -> None:
    name = spec(workdir, BAD_SPECS[case], "bad.yaml")
    result = cli("pipeline", name)
    assert result.code == 1
    assert result.stderr.startswith("bad spec: bad.yaml"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    as_json = cli("pipeline", name, "-f", "json")
    assert as_json.code == 1
    assert as_json.json()["error"]["code"] == "bad_spec"
    assert emulator.requests == []
    assert not (workdir / "pipeline-output").exists()


def test_yaml_error_names_the_line(cli: Runner, emulator: Emulator, workdir: Path) -> None:
    result = cli("pipeline", spec(workdir, "assets:\n  - name: g\n    assets: [\n", "b.yaml"))
    assert result.code == 1 and "line " in result.stderr


def test_missing_spec_file_is_a_file_error(cli: Runner, emulator: Emulator) -> None:
    result = cli("pipeline", "nope.yaml", "-f", "json")
    assert result.code == 1 and result.json()["error"]["code"] == "file_error"


def test_dry_run_sends_nothing_and_creates_nothing(
    cli: Runner, emulator: Emulator, workdir: Path
) -> None:
    unknown = GAME.replace("    seed_offset: 0\n", "    seed_offset: 0\n    colour: x\n")
    name = spec(workdir, unknown)
    result = cli("pipeline", name, "--dry-run", "--base-seed", "50", "--style-prefix", "art")
    assert result.code == 0, result.stderr
    assert "Characters  hero  seed 50  pipeline-output/characters/hero.png" in result.stdout
    assert "    art, a brave hero, pixel art" in result.stdout
    assert "line 7" in result.stderr and "assets[0].colour" in result.stderr
    assert "6 assets" in result.stderr
    as_json = cli("pipeline", name, "--dry-run", "-f", "json")
    document = as_json.json()
    assert document["ok"] is True and document["dry_run"] is True
    assert isinstance(document["base_seed"], int)
    assert len(document["assets"]) == 6
    assert {"id", "group", "seed", "path", "prompt"} <= set(document["assets"][0])
    assert emulator.requests == []
    assert sorted(p.name for p in workdir.iterdir()) == ["game.yaml"]


def test_parallel_defaults_to_one_without_backend_permission(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    emu = emulator_factory(backends=3, deny_permissions={"view_backends_list"})
    cli.url = emu.url
    result = cli("pipeline", spec(workdir, many(3)), "-f", "json")
    assert result.code == 0, result.stderr
    assert result.json()["pipeline"]["parallel"] == 1
    assert emu.backend_usage()["peak_busy"] == 1


def test_terminal_shows_bars_and_prints_each_path_on_a_line_of_its_own(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    import os
    import select

    import pyte
    from conftest import PROGRAM

    emu = emulator_factory(backends=2, step_seconds=0.03, default_steps=8)
    cli.url = emu.url
    name = spec(workdir, many(6))
    primary, secondary = os.openpty()
    env = {k: v for k, v in cli.env({"COLUMNS": "90", "TERM": "xterm"}).items() if k != "NO_COLOR"}
    process = subprocess.Popen(
        [*PROGRAM, "pipeline", name], cwd=cli.cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=secondary, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    shown = bytearray()
    try:
        while True:
            ready = select.select([primary], [], [], 30)[0]
            if not ready:
                break
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown.extend(chunk)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    assert process.returncode == 0
    # A live display was drawn (cursor movement), then cleared away at the end.
    assert b"\x1b[" in shown
    screen = pyte.Screen(90, 60)
    pyte.ByteStream(screen).feed(bytes(shown))
    lines = [line.rstrip() for line in screen.display]
    paths = [line for line in lines if line.startswith("pipeline-output/")]
    assert sorted(paths) == [f"pipeline-output/deck/c{i:02d}.png" for i in range(6)]
    assert any(": 6 succeeded in " in line for line in lines)
    # The overall bar was drawn while the assets ran.
    assert b"assets" in shown and b"/6" in shown


def test_cancel_of_an_unknown_pipeline_is_not_found(cli: Runner, emulator: Emulator) -> None:
    result = cli("cancel", "pipe_0badcafe", "-f", "json")
    assert result.code == 1
    assert result.json()["error"]["code"] == "not_found"
    assert emulator.requests == []


POSTPROCESSED = """\
assets:
  - name: Tiles
    output_dir: tiles
    assets:
      - {id: wide, prompt: "a wide tile", params: {width: 1024, height: 512}}
      - {id: tiny, prompt: "a tiny tile", params: {width: 256, height: 256}}
"""


def test_post_processing_options_apply_to_every_asset_and_a_failure_fails_that_asset(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    from PIL import Image

    emu = emulator_factory(backends=2)
    cli.url = emu.url
    name = spec(workdir, POSTPROCESSED)
    options = ("--downscale-width", "64", "--strip-metadata", "--continue-on-error")
    first = cli("pipeline", name, "--base-seed", "5", *options, "-f", "json")
    assert first.code == 1, first.stderr
    document = first.json()
    assert document["error"]["code"] == "partial"
    by_id = {a["id"]: a for a in document["assets"]}
    assert by_id["wide"]["status"] == "succeeded" and by_id["wide"]["error"] is None
    # The emulator draws at 1/8 scale: 128x64, downscaled to 64 wide, text chunks gone.
    wide = workdir / "pipeline-output/tiles/wide.png"
    with Image.open(wide) as image:
        assert image.size == (64, 32)
        assert "parameters" not in image.info
    # 32x32 cannot be downscaled to 64 wide: that asset fails, its full-size file stays.
    tiny = workdir / "pipeline-output/tiles/tiny.png"
    assert by_id["tiny"]["status"] == "failed"
    error = by_id["tiny"]["error"]
    assert error.startswith("post-processing failed") and "tiles/tiny.png" in error
    with Image.open(tiny) as image:
        assert image.size == (32, 32)
    manifest = json.loads((workdir / "pipeline-output/asset-generator-manifest.json").read_text())
    entry = manifest["assets"]["tiles/wide.png"]
    assert entry["sha256"] == hashlib.sha256(wide.read_bytes()).hexdigest()
    assert manifest["assets"]["tiles/tiny.png"]["status"] == "failed"
    emu.reset_log()

    # The rerun skips the post-processed asset (its hash is of the final file) and makes the
    # failed one again: the kept full-size file is ours, not a foreign file in the way.
    again = cli("pipeline", name, *options, "-f", "json")
    assert again.code == 1, again.stderr
    statuses = {a["id"]: a["status"] for a in again.json()["assets"]}
    assert statuses == {"wide": "skipped", "tiny": "failed"}
    assert [b["prompt"] for b in sent(emu)] == ["a tiny tile"]
    emu.reset_log()

    # Other post-processing is other output: the asset is made again.
    other = cli("pipeline", name, "--downscale-width", "32", "-q")
    assert other.code == 0, other.stderr
    assert sorted(other.stdout.split()) == [
        "pipeline-output/tiles/tiny.png",
        "pipeline-output/tiles/wide.png",
    ]
    with Image.open(wide) as image:
        assert image.size == (32, 16)


def on_glibc() -> bool:
    import os

    try:
        return "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")
    except (AttributeError, ValueError, OSError):
        return False


@pytest.mark.skipif(not on_glibc(), reason="the C allocator's arenas are glibc's")
def test_a_pipeline_keeps_the_c_allocator_to_one_arena(
    cli: Runner, emulator_factory, workdir: Path
) -> None:
    # Each asset's threads would otherwise allocate from arenas of their own, which keep what
    # they once held: peak memory grew with the number of assets (PERFORMANCE.md, issue 19).
    import os
    import sys

    emu = emulator_factory(backends=3)
    name = spec(workdir, many(9))
    code = (
        "import atexit, ctypes, sys\n"
        "atexit.register(lambda: ctypes.CDLL(None).malloc_stats())\n"
        "from asset_generator.cli import main\n"
        "sys.argv = ['asset-generator', *sys.argv[1:]]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "pipeline", name, "-q"],
        cwd=workdir, env={**os.environ, "ASSET_GENERATOR_API_URL": emu.url},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 9
    arenas = [line for line in done.stderr.splitlines() if line.startswith("Arena ")]
    assert arenas == ["Arena 0:"], done.stderr
