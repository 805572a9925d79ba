"""Shared fixtures: isolated XDG dirs for every test, the emulator, and the real program."""

from __future__ import annotations

import compileall
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asset_generator.emulator import ComfyEmulator, Emulator, EmulatorConfig

# A real ComfyUI for the ComfyUI protocol tests (tests/emulator/test_comfy_*.py); read here,
# at import, because the isolation fixture removes every ASSET_GENERATOR_* variable.
COMFYUI_URL = os.environ.get("ASSET_GENERATOR_TEST_COMFYUI_URL", "").rstrip("/")


def _program() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("asset-generator")
    if script.exists():
        return [str(script)]
    found = shutil.which("asset-generator")
    return [found] if found else [sys.executable, "-m", "asset_generator"]


PROGRAM = _program()

# The suite starts the program as a subprocess hundreds of times, and every xdist worker
# imports every test module. Where PYTHONDONTWRITEBYTECODE is set (some CI images set it),
# each of those would compile the package and rewrite the tests' asserts from source again:
# about 40 ms of CPU per run of the program, 4 s per worker. The caches go to the
# (git-ignored) __pycache__ directories, as a plain `python -m pytest` would write them.
sys.dont_write_bytecode = False

# A runner started in the background by a non-interactive shell (`pytest &`, nohup, some CI
# wrappers) ignores SIGINT, and every program a test starts would inherit that: the tests
# that press Ctrl-C would then wait on a program that cannot hear it, and leave it running.
# The program is meant to meet SIGINT as a terminal delivers it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # once, in the controller (or the only process)
        import asset_generator

        compileall.compile_dir(Path(asset_generator.__file__).parent, quiet=1)


def _on_real_comfyui(item: pytest.Item) -> bool:
    """The test runs against the real ComfyUI (it is skipped without one)."""
    reasons = (str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif"))
    return bool(COMFYUI_URL) and any("ASSET_GENERATOR_TEST_COMFYUI_URL" in r for r in reasons)


@pytest.fixture(autouse=True)
def one_real_comfyui_test_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Tests on the real ComfyUI take turns, across xdist workers: the server is shared, so
    one test's `cancel --all` (global on ComfyUI) or its queue broadcasts would reach the
    prompts and sockets of a test running beside it. (xdist's loadgroup would say this, but
    it does not group under pytest 9.)"""
    if not _on_real_comfyui(request.node):
        yield
        return
    import fcntl

    # The parent of a worker's base directory is the run's, shared by every worker.
    lock = tmp_path_factory.getbasetemp().parent / "real-comfyui.lock"
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own config/state dirs and a plain, colourless terminal."""
    home = tmp_path / "home"
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        path = home / name.lower()
        path.mkdir(parents=True)
        monkeypatch.setenv(name, str(path))
    for name in list(os.environ):
        if name.startswith("ASSET_GENERATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "80")
    return home


@pytest.fixture
def state_dir(isolated: Path) -> Path:
    return isolated / "xdg_state_home" / "asset-generator"


@pytest.fixture
def config_dir(isolated: Path) -> Path:
    return isolated / "xdg_config_home" / "asset-generator"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@dataclass
class Result:
    """What a run of the program did, as a user would see it."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Runner:
    """Runs ``asset-generator`` as a subprocess against a given server URL."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.url: str | None = None

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        if self.url:
            env.setdefault("ASSET_GENERATOR_API_URL", self.url)
        env.update(extra or {})
        return env

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> Result:
        done = subprocess.run(
            [*PROGRAM, *args],
            cwd=self.cwd,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start the program in the background (e.g. a generation to cancel)."""
        return subprocess.Popen(
            [*PROGRAM, *args],
            cwd=self.cwd,
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )


def run_prefixed(cli: Runner, prefix: list[str], *args: str) -> Result:
    """Run the program under a command ``prefix`` (a dropped capability, a file-size limit)."""
    done = subprocess.run(
        [*prefix, *PROGRAM, *args],
        cwd=cli.cwd,
        env=cli.env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(workdir: Path) -> Runner:
    return Runner(workdir)


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(**overrides: Any) -> Emulator:
        overrides.setdefault("step_seconds", 0.02)
        overrides.setdefault("ws_close_grace_seconds", 0.05)
        emulator = Emulator(EmulatorConfig(**overrides)).start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(emulator_factory: Callable[..., Emulator], cli: Runner) -> Emulator:
    """A default emulator; the ``cli`` fixture points at it."""
    emu = emulator_factory()
    cli.url = emu.url
    return emu


def assert_install_hint(line: str, extra: str) -> None:
    """``line`` ends with a command that installs ``extra`` into this checkout's virtualenv.

    The package is not on PyPI: ``pip install 'asset-generator[mcp]'`` would find nothing.
    """
    import shlex

    command = shlex.split(line.rsplit(": ", 1)[1])
    root = Path(__file__).resolve().parents[1]
    assert command[1:] == ["-m", "pip", "install", "-e", f"{root}[{extra}]"], line
    assert Path(command[0]).parent == Path(sys.executable).parent, line


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.02) -> bool:
    """Poll until ``predicate()`` is true; False on timeout (tests then assert on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def read_registry(state_dir: Path) -> dict[str, Any]:
    return json.loads((state_dir / "generations.json").read_text())


def session_id_of(record: dict[str, Any]) -> str:
    """The SwarmUI session a registry record (as read from the file) runs in."""
    return record["handle"]["session_id"]


# Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set (PR_CAPBSET_DROP = 24),
# then become the program: root then obeys file permissions like anyone else.
OBEY_PERMISSIONS = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2):
    if libc.prctl(24, capability, 0, 0, 0) != 0:
        sys.exit(99)
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.fixture(scope="module")
def obeying_permissions(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A command prefix under which chmod 0500 really makes a directory read-only."""
    prefix = [] if os.geteuid() != 0 else [sys.executable, "-c", OBEY_PERMISSIONS]
    probe = tmp_path_factory.mktemp("probe")
    probe.chmod(0o500)
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", f"open({str(probe / 'x')!r}, 'w')"],
            capture_output=True,
        )
    finally:
        probe.chmod(0o700)
    if b"PermissionError" not in done.stderr:
        pytest.skip(
            "cannot make a directory read-only here (root that cannot drop CAP_DAC_OVERRIDE, "
            "or a filesystem that ignores modes)"
        )
    return prefix


# -- the ComfyUI server under test (helpers in tests/emulator/comfy_helpers.py) ---------------


def _comfy_params() -> list[Any]:
    return [
        pytest.param("emulator", id="emulator"),
        pytest.param(
            "real",
            id="real",
            marks=pytest.mark.skipif(
                not COMFYUI_URL, reason="set ASSET_GENERATOR_TEST_COMFYUI_URL to a real ComfyUI"
            ),
        ),
    ]


@pytest.fixture(params=_comfy_params())
def comfy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The server under test: a fresh emulator, or the real server named by the variable."""
    from comfy_helpers import Target

    if request.param == "emulator":
        emulator = ComfyEmulator(base_dir=tmp_path / "comfy").start()
        target = Target(emulator.url, emulator, timeout=10.0, timing=1.0)
        try:
            yield target
        finally:
            target.cleanup()
            emulator.stop()
    else:
        target = Target(COMFYUI_URL, None, timeout=300.0, timing=4.0, step=0.1)
        try:
            yield target
        finally:
            target.cleanup()


@pytest.fixture
def emulator_only(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start emulators with options (versions, previews, auth) for emulator-only tests."""
    from comfy_helpers import Target

    started: list[tuple[ComfyEmulator, Target]] = []

    def start(**overrides: Any) -> Any:
        overrides.setdefault("base_dir", tmp_path / f"comfy{len(started)}")
        emulator = ComfyEmulator(**overrides).start()
        headers = {}
        if overrides.get("required_authorization"):
            headers["Authorization"] = overrides["required_authorization"]
        target = Target(emulator.url, emulator, timeout=10.0, timing=1.0, headers=headers)
        started.append((emulator, target))
        return target

    yield start
    for emulator, target in started:
        target.cleanup()
        emulator.stop()
