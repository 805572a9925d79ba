"""The servers every adapter is held to: SwarmUI's emulator, ComfyUI's, and a real ComfyUI.

Each ``Backend`` knows how to ask its server for a short or a long generation and how to
look, from the server's side, whether a generation of ours is still there. The scenarios in
``test_contract.py`` run the installed program against every backend unchanged; the real
ComfyUI (``ASSET_GENERATOR_TEST_COMFYUI_URL``, comfyui-peer.md) is skipped when unset.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Runner, read_registry, session_id_of, wait_for

REAL_COMFYUI = os.environ.get("ASSET_GENERATOR_TEST_COMFYUI_URL", "").rstrip("/")


@dataclass
class Backend:
    """One server under test, as the contract scenarios see it."""

    kind: str
    url: str
    emulator: Any
    workdir: Path
    # Seconds the scenarios may wait for the server (a real CPU-only server is slow).
    patience: float = 20.0
    started: list[str] = field(default_factory=list)

    def quick(self, prompt: str) -> list[str]:
        """``generate image`` arguments for a short generation whose record shows ``prompt``."""
        return self._generate(prompt, steps=2)

    def slow(self, prompt: str) -> list[str]:
        """A generation long enough to be seen running and cancelled (25 s or more if left)."""
        return self._generate(prompt, steps=500)

    def _generate(self, prompt: str, *, steps: int) -> list[str]:
        if self.kind == "swarmui":
            return ["generate", "image", "-p", prompt, "--steps", str(steps)]
        # ComfyUI: the SlowSolidImage test node (comfyui-peer/slow_node.py) in a workflow
        # named after the prompt, so the record (and status) shows it.
        path = self.workdir / f"{prompt}.json"
        path.write_text(json.dumps(self._graph(steps)))
        return ["generate", "image", "--workflow", str(path)]

    @staticmethod
    def _graph(steps: int, step_seconds: float = 0.05) -> dict[str, Any]:
        """SlowSolidImage -> SaveImage: ``steps`` x ``step_seconds``, then a 16x16 image."""
        return {
            "1": {
                "class_type": "SlowSolidImage",
                "inputs": {
                    "steps": steps,
                    "step_seconds": step_seconds,
                    "width": 16,
                    "height": 16,
                    "red": 0.2,
                    "green": 0.4,
                    "blue": 0.6,
                },
            },
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": f"ag_{uuid.uuid4().hex[:8]}"},
            },
        }

    def on_server(self, record: dict[str, Any]) -> bool:
        """The server still holds the record's work (queued or running)."""
        if self.kind == "swarmui":
            return self.emulator.session_status(session_id_of(record))["waiting_gens"] > 0
        queue = httpx.get(f"{self.url}/queue", timeout=10).json()
        held = {item[1] for item in queue["queue_running"] + queue["queue_pending"]}
        return any(p in held for p in record["handle"]["prompt_ids"])

    def running_on_server(self, record: dict[str, Any]) -> bool:
        if self.kind == "swarmui":
            return self.emulator.session_status(session_id_of(record))["live_gens"] > 0
        queue = httpx.get(f"{self.url}/queue", timeout=10).json()
        running = {item[1] for item in queue["queue_running"]}
        return any(p in running for p in record["handle"]["prompt_ids"])

    def cleanup(self, state_dir: Path) -> None:
        """On a shared real server: stop every prompt our records hold, by id, nothing else."""
        if self.emulator is not None:
            return
        try:
            records = read_registry(state_dir)["generations"].values()
        except OSError:
            records = []
        ids = [p for r in records for p in r.get("handle", {}).get("prompt_ids", [])]
        ids += self.started  # the prompts a scenario queued as another client
        if ids:
            httpx.post(f"{self.url}/queue", json={"delete": ids}, timeout=10)
            for prompt_id in ids:
                httpx.post(f"{self.url}/interrupt", json={"prompt_id": prompt_id}, timeout=10)

    def foreign(self, steps: int, step_seconds: float = 0.05) -> str:
        """ComfyUI: queue a prompt as another client would (its own client id); its id."""
        graph = json.loads(json.dumps(self._graph(steps, step_seconds)))
        answer = httpx.post(
            f"{self.url}/prompt",
            json={"prompt": graph, "client_id": f"someone-else-{uuid.uuid4().hex[:8]}"},
            timeout=30,
        )
        answer.raise_for_status()
        prompt_id = answer.json()["prompt_id"]
        self.started.append(prompt_id)
        return prompt_id

    def outcome(self, prompt_id: str) -> str | None:
        """ComfyUI: how a prompt ended (its history's status_str), None while it has none."""
        entry = httpx.get(f"{self.url}/history/{prompt_id}", timeout=10).json().get(prompt_id)
        return entry["status"].get("status_str") if entry else None

    def queued(self, prompt_id: str) -> bool:
        queue = httpx.get(f"{self.url}/queue", timeout=10).json()
        return prompt_id in {i[1] for i in queue["queue_running"] + queue["queue_pending"]}


def _params(kinds: tuple[str, ...] = ("swarmui", "comfyui", "comfyui-real")) -> list[Any]:
    marks = {
        "comfyui-real": pytest.mark.skipif(
            not REAL_COMFYUI, reason="set ASSET_GENERATOR_TEST_COMFYUI_URL to a real ComfyUI"
        )
    }
    return [pytest.param(kind, id=kind, marks=marks.get(kind, ())) for kind in kinds]


@pytest.fixture(params=_params())
def backend(
    request: pytest.FixtureRequest,
    emulator_factory: Callable[..., Any],
    cli: Runner,
    workdir: Path,
    state_dir: Path,
    tmp_path: Path,
) -> Iterator[Backend]:
    yield from _backend(request.param, emulator_factory, cli, workdir, state_dir, tmp_path)


@pytest.fixture(params=_params(("comfyui", "comfyui-real")))
def comfy_backend(
    request: pytest.FixtureRequest,
    emulator_factory: Callable[..., Any],
    cli: Runner,
    workdir: Path,
    state_dir: Path,
    tmp_path: Path,
) -> Iterator[Backend]:
    """ComfyUI only: its emulator and the real server (scenarios with other clients' prompts)."""
    yield from _backend(request.param, emulator_factory, cli, workdir, state_dir, tmp_path)


def _backend(
    kind: str,
    emulator_factory: Callable[..., Any],
    cli: Runner,
    workdir: Path,
    state_dir: Path,
    tmp_path: Path,
) -> Iterator[Backend]:
    if kind == "swarmui":
        emulator = emulator_factory(backends=1, step_seconds=0.05)
        found = Backend("swarmui", emulator.url, emulator, workdir)
    elif kind == "comfyui":
        from asset_generator.emulator import ComfyEmulator

        emulator = ComfyEmulator(base_dir=tmp_path / "comfy").start()
        found = Backend("comfyui", emulator.url, emulator, workdir)
    else:
        emulator = None
        found = Backend("comfyui", REAL_COMFYUI, None, workdir, patience=600.0)
    cli.url = found.url
    try:
        yield found
    finally:
        found.cleanup(state_dir)
        if kind == "comfyui" and emulator is not None:
            emulator.stop()


def record_of(state_dir: Path, prompt: str) -> dict[str, Any] | None:
    try:
        records = read_registry(state_dir)["generations"].values()
    except (OSError, ValueError):
        return None
    return next((r for r in records if r["prompt"] == prompt), None)


def wait_record(
    state_dir: Path, prompt: str, predicate: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    assert wait_for(
        lambda: (r := record_of(state_dir, prompt)) is not None and predicate(r), timeout=timeout
    ), record_of(state_dir, prompt)
    found = record_of(state_dir, prompt)
    assert found is not None
    return found
