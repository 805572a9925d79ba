"""What a ComfyUI user sees when other clients share the server, on the emulator and on a
real ComfyUI (``ASSET_GENERATOR_TEST_COMFYUI_URL``): our stops reach our prompts only, by id;
the built-in graph and a pipeline run there as they do on the emulator.

The other client is the test itself, queueing SlowSolidImage prompts under its own client
id; on a real server the clean-up stops those too, by id, and nothing else.
"""

from __future__ import annotations

import signal
from pathlib import Path

import backends
from backends import Backend, record_of, wait_record
from conftest import Runner, wait_for

comfy_backend = backends.comfy_backend


def test_ctrl_c_stops_our_prompt_and_a_foreign_one_behind_it_runs_to_its_end(
    comfy_backend: Backend, cli: Runner, state_dir: Path
) -> None:
    backend = comfy_backend
    process = cli.start(*backend.slow("scenario ctrl-c"), "-o", "out")
    record = wait_record(state_dir, "scenario ctrl-c", lambda r: r["progress"] > 0, 600)
    theirs = backend.foreign(steps=10)
    assert backend.queued(theirs)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=backend.patience)
    assert process.returncode == 130, err
    assert record_of(state_dir, "scenario ctrl-c")["status"] == "cancelled"
    # Ours left the server before the command exited; theirs then ran to its end.
    assert not backend.on_server(record)
    (ours,) = record["handle"]["prompt_ids"]
    assert wait_for(lambda: backend.outcome(ours) is not None, timeout=30)
    assert backend.outcome(ours) == "error"  # interrupted
    assert wait_for(lambda: backend.outcome(theirs) == "success", timeout=backend.patience)


def test_cancel_of_ours_queued_behind_a_foreign_prompt_deletes_ours_only(
    comfy_backend: Backend, cli: Runner, state_dir: Path
) -> None:
    backend = comfy_backend
    theirs = backend.foreign(steps=60)  # 3 s: ours waits behind it
    assert wait_for(lambda: backend.queued(theirs))
    process = cli.start(*backend.quick("scenario pending"), "-o", "out")
    record = wait_record(state_dir, "scenario pending", lambda r: True, 600)
    assert wait_for(lambda: backend.on_server(record), timeout=backend.patience)
    assert backend.outcome(theirs) is None  # still running: ours is pending behind it
    result = cli("cancel", record["id"], "-f", "json", timeout=backend.patience)
    assert result.code == 0, result.stderr
    assert [r["id"] for r in result.json()["cancelled"]] == [record["id"]]
    _, err = process.communicate(timeout=backend.patience)
    assert process.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith(f"cancelled: {record['id']} ")
    (ours,) = record["handle"]["prompt_ids"]
    # Deleted before it ran: no history of it; theirs was never interrupted.
    assert not backend.queued(ours) and backend.outcome(ours) is None
    assert wait_for(lambda: backend.outcome(theirs) == "success", timeout=backend.patience)


def test_the_built_in_graph_runs_with_the_servers_checkpoint(
    comfy_backend: Backend, cli: Runner, state_dir: Path
) -> None:
    result = cli(
        "generate", "image", "-p", "a red fox", "-m", "random-sd15",
        "--steps", "1", "--width", "64", "--height", "64", "--seed", "7", "-o", "out",
        timeout=comfy_backend.patience,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    (path,) = result.stdout.splitlines()
    assert path == "out/a red fox-7.png"
    assert Path(cli.cwd, path).read_bytes().startswith(b"\x89PNG")
    assert record_of(state_dir, "a red fox")["status"] == "succeeded"


def test_a_pipeline_runs_every_asset_and_a_rerun_sends_nothing(
    comfy_backend: Backend, cli: Runner, workdir: Path
) -> None:
    spec = workdir / "spec.yaml"
    spec.write_text(
        "assets:\n  - name: Icons\n    output_dir: icons\n    assets:\n"
        + "".join(f"      - {{id: icon{i}, prompt: 'icon {i}'}}\n" for i in range(3))
    )
    run = ("pipeline", str(spec), "-m", "random-sd15", "--steps", "1", "--width", "64",
           "--height", "64", "--base-seed", "11", "-o", "out")  # fmt: skip
    first = cli(*run, timeout=comfy_backend.patience)
    assert first.code == 0, first.stderr
    assert sorted(first.stdout.split()) == [f"out/icons/icon{i}.png" for i in range(3)]
    again = cli(*run, "-f", "json", timeout=comfy_backend.patience)
    assert again.code == 0, again.stderr
    summary = again.json()["summary"]
    assert (summary["skipped"], summary["succeeded"], summary["failed"]) == (3, 0, 0)


def test_sigterm_stops_all_n_of_our_prompts_and_a_foreign_one_behind_them_runs(
    comfy_backend: Backend, cli: Runner, state_dir: Path
) -> None:
    # -n 3 of a workflow without a seed: three copies, one running and two pending.
    backend = comfy_backend
    process = cli.start(*backend.slow("scenario sigterm"), "-n", "3", "-o", "out")
    record = wait_record(state_dir, "scenario sigterm", lambda r: r["progress"] > 0, 600)
    assert len(record["handle"]["prompt_ids"]) == 3
    theirs = backend.foreign(steps=10)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=backend.patience)
    assert process.returncode == 143, err
    assert record_of(state_dir, "scenario sigterm")["status"] == "cancelled"
    assert wait_for(lambda: not backend.on_server(record), timeout=30)
    first, *rest = record["handle"]["prompt_ids"]
    assert wait_for(lambda: backend.outcome(first) == "error", timeout=30)  # interrupted
    assert all(backend.outcome(p) is None for p in rest)  # deleted before they ran
    assert wait_for(lambda: backend.outcome(theirs) == "success", timeout=backend.patience)


def test_set_adds_the_optional_input_the_probe_workflow_leaves_out(
    comfy_backend: Backend, cli: Runner
) -> None:
    # protocol §0.3: fail_at_step is optional, so an exported probe workflow may lack it.
    result = cli(*comfy_backend.quick("scenario fail"), "--set", "SlowSolidImage.fail_at_step=1",
                 "-f", "json", timeout=comfy_backend.patience)  # fmt: skip
    assert result.code == 1, result.stderr
    error = result.json()["error"]
    assert error["code"] == "server_error"
    assert "node 1 (SlowSolidImage)" in error["message"]
    assert "requested failure at step 1" in error["message"]
