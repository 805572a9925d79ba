"""Standard streams (cli-contract §3) and the output directory (issue 10 items 5, 10, 3).

A full stdout (`> /dev/full`) or a closed one (`>&-`): one stderr line, exit 1, no traceback.
A reader that goes away (`| head -1`): quiet, non-zero. In every case the images already saved
stay complete and our work on the server is interrupted. The subprocesses get real fds.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import PROGRAM, Runner, read_registry, session_id_of, wait_for
from test_disk import make_read_only, read_only, run  # noqa: F401

from asset_generator.emulator import Emulator

COMMANDS = [
    ["status"],
    ["-f", "json", "status"],
    ["models", "list"],
    ["-f", "json", "models", "list"],
    ["config", "view"],
    ["generate", "image", "-p", "x", "--steps", "2"],
    ["generate", "image", "-p", "x", "--steps", "2", "-f", "json"],
    ["--help"],
]


def launch(cli: Runner, args: list[str], **streams: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*PROGRAM, *args],
        cwd=cli.cwd,
        env=cli.env(),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **streams,  # type: ignore[arg-type]
    )


def close_stdout() -> None:
    os.close(1)


def records(state_dir: Path) -> list[dict]:
    return list(read_registry(state_dir)["generations"].values())


def images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_full_stdout_is_one_line_and_exit_1(cli: Runner, emulator: Emulator, args) -> None:
    with open("/dev/full", "wb") as full:
        process = launch(cli, args, stdout=full)
        _, err = process.communicate(timeout=60)
    text = err.decode()
    assert process.returncode == 1, text
    assert "Traceback" not in text and "Exception ignored" not in text
    assert text.strip().splitlines()[-1] == ("cannot write to standard output: the disk is full"), (
        text
    )


@pytest.mark.parametrize("args", [*COMMANDS, ["--version"]], ids=" ".join)
def test_a_closed_stdout_is_one_line_and_exit_1(
    cli: Runner, emulator: Emulator, workdir: Path, args
) -> None:
    process = launch(cli, args, preexec_fn=close_stdout)
    _, err = process.communicate(timeout=60)
    text = err.decode()
    assert process.returncode == 1, text
    assert "Traceback" not in text and "Exception ignored" not in text
    assert text.strip().splitlines()[-1] == "cannot write to standard output: it is closed"
    if args[0] == "generate":
        # Known before anything is sent: no work to interrupt, no image without a path.
        assert emulator.calls("GenerateText2ImageWS") == []
        assert images_in(workdir) == []


def test_stdout_filling_up_mid_run_stops_the_server_work(
    cli: Runner, emulator_factory, workdir: Path, state_dir: Path
) -> None:
    emu = emulator_factory(backends=1, step_seconds=0.02)
    cli.url = emu.url
    args = ["generate", "image", "-p", "full", "-n", "3", "--steps", "10", "-o", "out"]
    with open("/dev/full", "wb") as full:
        process = launch(cli, args, stdout=full)
        _, err = process.communicate(timeout=60)
    text = err.decode()
    assert process.returncode == 1 and "Traceback" not in text
    assert text.strip().splitlines()[-1].startswith("cannot write to standard output")
    (record,) = records(state_dir)
    assert record["status"] == "failed"
    assert wait_for(lambda: session_id_of(record) in emu.interrupted_sessions())
    # The image whose path could not be printed is saved whole, and the record names it.
    (saved,) = images_in(workdir / "out")
    assert saved.read_bytes().startswith(b"\x89PNG") and saved.read_bytes().endswith(
        b"IEND\xaeB`\x82"
    )
    assert record["images"] == [f"out/{saved.name}"]


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_full_stdout_after_the_last_image_leaves_the_generation_succeeded(
    cli: Runner, emulator: Emulator, workdir: Path, state_dir: Path, fmt: str
) -> None:
    # Issue 19 item 6: only printing the path failed; the generation itself succeeded.
    args = ["-f", fmt, "generate", "image", "-p", "printed", "--steps", "2", "-o", "out"]
    with open("/dev/full", "wb") as full:
        process = launch(cli, args, stdout=full)
        _, err = process.communicate(timeout=60)
    text = err.decode()
    assert process.returncode == 1 and "Traceback" not in text
    assert text.strip().splitlines()[-1] == "cannot write to standard output: the disk is full"
    (saved,) = images_in(workdir / "out")
    assert saved.read_bytes().endswith(b"IEND\xaeB`\x82")
    (record,) = records(state_dir)
    assert record["status"] == "succeeded" and record["error"] is None, record
    assert record["images"] == [f"out/{saved.name}"] and record["progress"] == 100
    assert record["cancel_unconfirmed"] is None


def test_a_reader_that_goes_away_ends_it_quietly_and_stops_the_server(
    cli: Runner, emulator_factory, workdir: Path, state_dir: Path
) -> None:
    # `generate -n 4 --no-progress | head -1`
    emu = emulator_factory(backends=1, step_seconds=0.02)
    cli.url = emu.url
    args = ["generate", "image", "-p", "head", "-n", "4", "--steps", "10", "--no-progress"]
    process = launch(cli, [*args, "-o", "out"], stdout=subprocess.PIPE)
    assert process.stdout is not None
    first = process.stdout.readline()
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    assert first.startswith(b"out/head-")
    assert process.returncode != 0
    assert err == b""
    (record,) = records(state_dir)
    assert record["status"] == "cancelled"
    assert wait_for(lambda: session_id_of(record) in emu.interrupted_sessions())
    saved = images_in(workdir / "out")
    assert 1 <= len(saved) < 4
    assert all(p.read_bytes().endswith(b"IEND\xaeB`\x82") for p in saved)


def test_status_into_head_is_fine(cli: Runner, emulator: Emulator) -> None:
    done = subprocess.run(
        " ".join(PROGRAM) + " status | head -1",
        shell=True,
        cwd=cli.cwd,
        env=cli.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("server")


# -- the output directory ---------------------------------------------------------------------


def test_a_dead_server_leaves_no_output_directory(cli: Runner, workdir: Path) -> None:
    cli.url = "http://127.0.0.1:9"
    result = cli("generate", "image", "-p", "x", "-o", "made/for/nothing")
    assert result.code == 1 and "Traceback" not in result.stderr
    assert not (workdir / "made").exists()


def test_the_output_directory_is_made_when_the_first_image_arrives(
    cli: Runner, emulator: Emulator, workdir: Path
) -> None:
    result = cli("generate", "image", "-p", "x", "--steps", "1", "-o", "new/dir")
    assert result.code == 0, result.stderr
    assert [p.name for p in images_in(workdir / "new" / "dir")] == [
        Path(result.stdout.strip()).name
    ]
    assert [p.name for p in (workdir / "new").iterdir()] == ["dir"]


def test_a_read_only_output_directory_is_refused_before_sending(
    cli: Runner,
    emulator: Emulator,
    workdir: Path,
    obeying_permissions: list[str],
    read_only: list[Path],  # noqa: F811
) -> None:
    out = workdir / "ro2"
    out.mkdir()
    make_read_only(read_only, out)
    for target in ("ro2", "ro2/sub"):
        result = run(
            cli, obeying_permissions, "generate", "image", "-p", "x", "--steps", "200", "-o", target
        )
        assert result.code == 1, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"cannot save an image in {target}: Permission denied"
        ]
    # Refused before the GPU work, not after it.
    assert emulator.calls("GenerateText2ImageWS") == []
    assert emulator.calls("GetNewSession") == []
    assert list(out.iterdir()) == []


# -- a cancel is not a network failure ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_cancel_from_elsewhere_reads_cancelled(
    cli: Runner, emulator: Emulator, state_dir: Path, fmt: str
) -> None:
    process = cli.start("-f", fmt, "generate", "image", "-p", "cancel me", "--steps", "400")

    def running() -> bool:
        return state_dir.joinpath("generations.json").exists() and any(
            r["status"] == "running" for r in records(state_dir)
        )

    assert wait_for(running)
    assert cli("cancel").code == 0
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1, err
    assert "Traceback" not in err and "request failed" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cancelled: gen_"), last
    # Our `cancel` marked it: the message names it (not "the web UI or another client").
    assert "by `asset-generator cancel` (0 of 1 saved)" in last
    if fmt == "json":
        document = json.loads(out)
        assert document["ok"] is False and document["error"]["code"] == "cancelled"
        assert document["error"]["message"] == last
