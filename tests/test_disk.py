"""Disk trouble: a read-only or unusable state dir, a full disk, an unwritable output directory.

Each case must give one clear line on stderr and exit 1, never a traceback, and leave the
previous session cache and the previous images exactly as they were, with no temp or partial
file beside them. A full disk is simulated with a file-size limit (``RLIMIT_FSIZE``: writes
past it fail with EFBIG, as ENOSPC would), which works for root too. Read-only directories
use chmod; root ignores that unless it gives up CAP_DAC_OVERRIDE, which the runs below do.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Result, Runner, read_registry, session_id_of
from conftest import run_prefixed as run

from asset_generator.downloads import DownloadError, save_stream
from asset_generator.emulator import Emulator

# Lower the file-size limit, then become the program (Python ignores SIGXFSZ, so writes past
# the limit fail with EFBIG instead of killing the process).
LIMIT_FILE_SIZE = """
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), hard))
os.execv(sys.argv[2], sys.argv[2:])
"""


def with_file_size_limit(limit: int) -> list[str]:
    return [sys.executable, "-c", LIMIT_FILE_SIZE, str(limit)]


@pytest.fixture
def read_only() -> Iterator[list[Path]]:
    """Directories made read-only by a test; made writable again afterwards for cleanup."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        path.chmod(0o700)


def make_read_only(paths: list[Path], path: Path) -> None:
    path.chmod(0o500)
    paths.append(path)


def one_error_line(result: Result) -> str:
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def leftovers(directory: Path) -> list[str]:
    """Temp or partial files a failed write left behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".part")))


@pytest.fixture
def emu(emulator_factory, cli: Runner) -> Emulator:
    emulator = emulator_factory(backends=1)
    cli.url = emulator.url
    return emulator


def first_generation(cli: Runner, state_dir: Path) -> bytes:
    """Run one generation so there is a cache (with a record and a session) to protect."""
    result = cli("generate", "image", "--prompt", "before", "--steps", "2", "-q")
    assert result.code == 0, result.stderr
    return (state_dir / "generations.json").read_bytes()


# -- the session cache ----------------------------------------------------------------------


def test_read_only_state_dir_keeps_the_cache(
    cli: Runner,
    emu: Emulator,
    state_dir: Path,
    workdir: Path,
    obeying_permissions: list[str],
    read_only: list[Path],
) -> None:
    before = first_generation(cli, state_dir)
    images = sorted(workdir.iterdir())
    make_read_only(read_only, state_dir)

    result = run(cli, obeying_permissions, "generate", "image", "--prompt", "after", "-q")
    line = one_error_line(result)
    assert line.startswith(f"cannot write the session cache {state_dir / 'generations.json'}")
    assert line.endswith("Permission denied")
    assert result.stdout == ""
    as_json = run(cli, obeying_permissions, "generate", "image", "-p", "after", "-f", "json")
    assert as_json.code == 1
    assert as_json.json()["error"]["code"] == "file_error"

    assert (state_dir / "generations.json").read_bytes() == before
    assert leftovers(state_dir) == []
    assert sorted(workdir.iterdir()) == images
    # Nothing was sent: a generation the cache does not know of could never be cancelled.
    assert len(emu.calls("GenerateText2ImageWS")) == 1


def test_state_dir_that_is_a_file_is_one_clear_line(
    cli: Runner, emu: Emulator, isolated: Path
) -> None:
    blocker = isolated / "not-a-directory"
    blocker.write_text("someone else's file\n")
    env = {"XDG_STATE_HOME": str(blocker)}
    for args in (["generate", "image", "--prompt", "x", "-q"], ["cancel", "--all", "-q"]):
        result = cli(*args, env=env)
        line = one_error_line(result)
        assert line.startswith("cannot create the state directory "), line
        assert line.endswith("Not a directory")
    assert blocker.read_text() == "someone else's file\n"
    assert emu.calls("GenerateText2ImageWS") == []


def test_full_disk_while_writing_the_cache_keeps_it(
    cli: Runner, emu: Emulator, state_dir: Path
) -> None:
    before = first_generation(cli, state_dir)
    # The next write adds a record, so it cannot fit in the size of the current file.
    result = run(
        cli, with_file_size_limit(len(before)), "generate", "image", "--prompt", "after", "-q"
    )
    line = one_error_line(result)
    assert line.startswith("cannot write the session cache "), line
    assert (state_dir / "generations.json").read_bytes() == before
    assert leftovers(state_dir) == []


# -- images -----------------------------------------------------------------------------------


def test_full_disk_while_saving_an_image_keeps_previous_files_and_stops_the_server(
    cli: Runner, emulator_factory, state_dir: Path, workdir: Path
) -> None:
    emu = emulator_factory(backends=1, image_megabytes=1, step_seconds=0.02)
    cli.url = emu.url
    out = workdir / "out"
    out.mkdir()
    (out / "keep.png").write_bytes(b"previous image")
    args = ["generate", "image", "-p", "big", "--steps", "50", "--images", "2", "-o", "out"]
    args += ["--filename-template", "keep", "-q"]

    result = run(cli, with_file_size_limit(256 * 1024), *args)
    line = one_error_line(result)
    assert line.startswith("cannot save an image in out: the file is larger than"), line
    assert line.endswith("on the server")
    assert sorted(p.name for p in out.iterdir()) == ["keep.png"]
    assert (out / "keep.png").read_bytes() == b"previous image"

    record = next(iter(read_registry(state_dir)["generations"].values()))
    assert record["status"] == "failed" and "cannot save" in record["error"]
    # The second image was not generated for nobody: our session was interrupted.
    assert session_id_of(record) in emu.interrupted_sessions()
    assert len(emu.saved_outputs()) == 1


def test_full_disk_json_is_one_document(cli: Runner, emulator_factory, workdir: Path) -> None:
    emu = emulator_factory(backends=1, image_megabytes=1)
    cli.url = emu.url
    result = run(
        cli,
        with_file_size_limit(256 * 1024),
        *("generate", "image", "-p", "big", "--steps", "2", "-o", "out", "-f", "json"),
    )
    assert result.code == 1
    document = result.json()
    assert document["ok"] is False and document["status"] == "failed"
    assert document["error"]["code"] == "file_error"
    assert document["error"]["message"].startswith("cannot save an image in out")
    assert list((workdir / "out").iterdir()) == []


def test_output_dir_that_is_a_file(cli: Runner, emu: Emulator, workdir: Path) -> None:
    (workdir / "taken").write_bytes(b"not a directory")
    result = cli("generate", "image", "--prompt", "x", "--steps", "2", "-o", "taken", "-q")
    line = one_error_line(result)
    assert line.startswith("cannot save images in taken: it is not a directory"), line
    assert (workdir / "taken").read_bytes() == b"not a directory"


def test_read_only_output_dir_keeps_previous_files(
    cli: Runner,
    emu: Emulator,
    workdir: Path,
    obeying_permissions: list[str],
    read_only: list[Path],
) -> None:
    out = workdir / "out"
    out.mkdir()
    (out / "x-1.png").write_bytes(b"previous image")
    make_read_only(read_only, out)
    result = run(
        cli, obeying_permissions, "generate", "image", "-p", "x", "--steps", "2", "-o", "out", "-q"
    )
    line = one_error_line(result)
    assert line.startswith("cannot save an image in out: Permission denied"), line
    assert [p.name for p in out.iterdir()] == ["x-1.png"]
    assert (out / "x-1.png").read_bytes() == b"previous image"


# -- save_stream, where no real disk can be filled ----------------------------------------------


def chunks_then(error: BaseException) -> Iterator[bytes]:
    yield b"\x89PNG partial"
    raise error


def test_disk_full_while_overwriting_keeps_the_old_file(workdir: Path) -> None:
    (workdir / "a.png").write_bytes(b"old")
    with pytest.raises(DownloadError, match=r"^cannot save an image in .*: the disk is full$"):
        save_stream(
            workdir, "a.png", chunks_then(OSError(errno.ENOSPC, "no space")), overwrite=True
        )
    assert [p.name for p in workdir.iterdir()] == ["a.png"]
    assert (workdir / "a.png").read_bytes() == b"old"


def test_interrupted_download_leaves_no_partial_file(workdir: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        save_stream(workdir, "a.png", chunks_then(KeyboardInterrupt()), overwrite=False)
    assert list(workdir.iterdir()) == []
