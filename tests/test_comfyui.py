"""ComfyUI behind every command (issue 18): the installed program against the ComfyUI emulator.

Each test checks what a user would notice — exit code, stdout, stderr, files — and what the
server received, and that other clients' prompts were left alone.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Runner, read_registry, wait_for

from asset_generator.emulator import ComfyEmulator, Fault, FaultPoint

TEMPLATES = "comfyui_workflow_templates"


@pytest.fixture
def comfy_factory(tmp_path: Path, cli: Runner) -> Iterator[Callable[..., ComfyEmulator]]:
    started: list[ComfyEmulator] = []

    def start(**overrides: Any) -> ComfyEmulator:
        overrides.setdefault("base_dir", tmp_path / f"comfy{len(started)}")
        emulator = ComfyEmulator(**overrides).start()
        started.append(emulator)
        cli.url = emulator.url
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def comfy(comfy_factory: Callable[..., ComfyEmulator]) -> ComfyEmulator:
    return comfy_factory()


def slow(
    workdir: Path,
    name: str,
    *,
    steps: int = 2,
    step_seconds: float = 0.02,
    **extra: Any,
) -> str:
    """A SlowSolidImage → SaveImage workflow file named ``name.json`` (the record's prompt)."""
    graph = {
        "1": {
            "class_type": "SlowSolidImage",
            "_meta": {"title": "Colour"},
            "inputs": {
                "steps": steps,
                "step_seconds": step_seconds,
                "width": 16,
                "height": 16,
                "red": 1.0,
                "green": 0.5,
                "blue": 0.0,
                **extra,
            },
        },
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": f"t_{name.replace(' ', '_')}"},
        },
    }
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(graph))
    return str(path)


def t2i(**changes: Any) -> dict[str, Any]:
    """An API-format text-to-image workflow as ComfyUI exports it (protocol §10)."""
    graph: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "random-sd15.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive"},
              "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "_meta": {"title": "Negative"},
              "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler",
              "inputs": {"seed": 42, "steps": 3, "cfg": 7.0, "sampler_name": "euler",
                         "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                         "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage",
              "inputs": {"filename_prefix": "wf", "images": ["8", 0]}},
    }  # fmt: skip
    for path, value in changes.items():
        node, name = path.split(".")
        graph[node]["inputs"][name] = value
    return graph


def write(workdir: Path, name: str, document: dict[str, Any]) -> str:
    path = workdir / name
    path.write_text(json.dumps(document))
    return str(path)


def sent(emu: ComfyEmulator) -> list[dict[str, Any]]:
    """The graphs POST /prompt received, in order."""
    return [call.body["prompt"] for call in emu.calls("/prompt") if isinstance(call.body, dict)]


def foreign(emu: ComfyEmulator, *, steps: int = 400, step_seconds: float = 0.02) -> str:
    """Another client's prompt (its own client id), as the web UI would queue it."""
    prompt_id = str(uuid.uuid4())
    graph = {
        "1": {"class_type": "SlowSolidImage",
              "inputs": {"steps": steps, "step_seconds": step_seconds, "width": 8, "height": 8,
                         "red": 0.0, "green": 0.0, "blue": 1.0}},
        "2": {"class_type": "SaveImage",
              "inputs": {"images": ["1", 0], "filename_prefix": "other"}},
    }  # fmt: skip
    answer = httpx.post(
        f"{emu.url}/prompt",
        json={"prompt": graph, "client_id": "someone-else", "prompt_id": prompt_id},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return prompt_id


def queue_ids(emu: ComfyEmulator) -> tuple[list[str], list[str]]:
    running, pending = emu.queue()
    return [item[1] for item in running], [item[1] for item in pending]


def history_of(emu: ComfyEmulator, prompt_id: str) -> dict[str, Any] | None:
    return emu.history().get(prompt_id)


def record_named(state_dir: Path, prompt: str) -> dict[str, Any] | None:
    try:
        records = read_registry(state_dir)["generations"].values()
    except OSError:
        return None
    return next((r for r in records if r["prompt"] == prompt), None)


def wait_record(state_dir: Path, prompt: str, status: str | None = None) -> dict[str, Any]:
    def found() -> bool:
        record = record_named(state_dir, prompt)
        return record is not None and (status is None or record["status"] == status)

    assert wait_for(found), record_named(state_dir, prompt)
    record = record_named(state_dir, prompt)
    assert record is not None
    return record


def ours(call: Any) -> bool:
    """A request asset-generator sent (the tests' own foreign client sends none like it)."""
    return call.headers.get("user-agent", "").startswith("asset-generator/")


def interrupts(emu: ComfyEmulator) -> list[Any]:
    """The bodies of the interrupts asset-generator sent."""
    return [call.body for call in emu.calls("/interrupt") if ours(call)]


def finish(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


# -- identification and the built-in graph -------------------------------------------------


def test_the_built_in_graph_runs_with_a_lora_and_reports_the_drawn_seed(
    comfy: ComfyEmulator, cli: Runner, state_dir: Path
) -> None:
    result = cli(
        "generate", "image", "-p", "a red fox", "--model", "random-sd15", "--lora",
        "random-lora:0.6", "--width", "64", "--height", "96", "--steps", "3", "-n", "2", "-o",
        "out",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    paths = result.stdout.splitlines()
    assert len(paths) == 2
    seeds = [int(Path(p).stem.rsplit("-", 1)[1]) for p in paths]
    assert seeds[1] == seeds[0] + 1
    assert f"seed {seeds[0]} (drawn by the client; --seed {seeds[0]} repeats it)" in result.stderr
    for path in paths:
        assert (cli.cwd / path).read_bytes().startswith(b"\x89PNG")
    first, second = sent(comfy)
    # The extension was found from the server's list; one LoraLoader after the checkpoint.
    assert first["4"]["inputs"]["ckpt_name"] == "random-sd15.safetensors"
    (lora_id,) = [i for i, n in first.items() if n["class_type"] == "LoraLoader"]
    lora = first[lora_id]["inputs"]
    assert lora["lora_name"] == "random-lora.safetensors" and lora["strength_model"] == 0.6
    assert lora["model"] == ["4", 0] and lora["clip"] == ["4", 1]
    assert first["3"]["inputs"]["model"] == [lora_id, 0]
    assert first["6"]["inputs"]["clip"] == [lora_id, 1]
    assert (first["5"]["inputs"]["width"], first["5"]["inputs"]["height"]) == (64, 96)
    assert [first["3"]["inputs"]["seed"], second["3"]["inputs"]["seed"]] == seeds
    # Each prompt was sent under the id recorded before it.
    record = wait_record(state_dir, "a red fox", "succeeded")
    ids = [call.body["prompt_id"] for call in comfy.calls("/prompt")]
    assert ids == record["handle"]["prompt_ids"]
    assert record["server_type"] == "comfyui"
    document = cli("generate", "image", "-p", "x", "--model", "random-sd15", "--seed", "7",
                   "--steps", "2", "-f", "json", "-o", "out").json()  # fmt: skip
    assert document["ok"] is True and document["images"][0]["seed"] == 7


def test_the_built_in_graph_needs_a_model_and_says_where_to_find_one(
    comfy: ComfyEmulator, cli: Runner
) -> None:
    result = cli("generate", "image", "-p", "x", "--server-type", "comfyui")
    assert result.code == 2
    assert "--model" in result.stderr and "models list" in result.stderr
    assert comfy.calls("/prompt") == []


def test_options_for_the_other_server_are_usage_errors(
    comfy_factory: Callable[..., ComfyEmulator], emulator, cli: Runner, workdir: Path
) -> None:
    comfy = comfy_factory()
    param = cli("generate", "image", "-p", "x", "--model", "m", "--param", "vae=none")
    assert param.code == 2
    assert "--param" in param.stderr and "ComfyUI" in param.stderr and "--set" in param.stderr
    assert comfy.calls("/prompt") == []
    # And --workflow on SwarmUI.
    workflow = slow(workdir, "w")
    swarm = cli("generate", "image", "-p", "x", "--workflow", workflow, "--api-url", emulator.url)
    assert swarm.code == 2
    assert "--workflow" in swarm.stderr and "SwarmUI" in swarm.stderr
    assert emulator.calls("GenerateText2ImageWS") == []
    # A pipeline's too, before anything is sent or made on disk.
    spec = workdir / "one.yaml"
    spec.write_text("assets:\n  - name: g\n    assets:\n      - {id: a, prompt: x}\n")
    out = workdir / "never"
    setting = cli("pipeline", str(spec), "--set", "KSampler.cfg=2", "--output-dir", str(out),
                  "--api-url", emulator.url)  # fmt: skip
    assert setting.code == 2
    assert "--set" in setting.stderr and "SwarmUI" in setting.stderr
    assert emulator.calls("GenerateText2ImageWS") == []
    assert not out.exists()
    # A workflow file that cannot be read is still an option SwarmUI has no use for; a dry
    # run asks no server, so there the missing file is what it says.
    for command in (["generate", "image", "-p", "x"], ["pipeline", str(spec)]):
        missing = cli(*command, "--workflow", "nowhere.json", "-f", "json",
                      "--api-url", emulator.url)  # fmt: skip
        assert missing.code == 2, missing.stderr
        assert missing.json()["error"]["code"] == "usage_error"
        assert "--workflow is a ComfyUI option" in missing.json()["error"]["message"]
    dry = cli("pipeline", str(spec), "--dry-run", "--workflow", "nowhere.json", "-f", "json",
              "--api-url", "http://127.0.0.1:9")  # fmt: skip
    assert dry.code == 1 and dry.json()["error"]["code"] == "file_error", dry.stderr
    assert emulator.calls("GenerateText2ImageWS") == [] and not out.exists()


def test_the_type_is_remembered_and_asked_again_when_another_server_listens_there(
    comfy_factory: Callable[..., ComfyEmulator], emulator_factory, cli: Runner, state_dir: Path
) -> None:
    swarm = emulator_factory()
    port = swarm.port
    cli.url = swarm.url
    assert cli("status", "-f", "json").json()["type"] == "swarmui"
    assert read_registry(state_dir)["kinds"][swarm.url] == "swarmui"
    swarm.stop()
    comfy = comfy_factory(port=port)
    assert comfy.url == swarm.url
    document = cli("status", "-f", "json").json()
    assert document["type"] == "comfyui" and document["server"]["type"] == "comfyui"
    assert read_registry(state_dir)["kinds"][comfy.url] == "comfyui"


def test_the_first_generate_after_swarmui_gave_way_to_comfyui_runs_and_leaves_one_record(
    comfy_factory: Callable[..., ComfyEmulator],
    emulator_factory,
    cli: Runner,
    state_dir: Path,
    workdir: Path,
) -> None:
    # A cached SwarmUI session let generate register before its first request, which
    # ComfyUI refused (405): the command failed once instead of asking the type again (§7).
    swarm = emulator_factory()
    cli.url = swarm.url
    assert cli("generate", "image", "-p", "before", "--steps", "2", "-o", "out").code == 0
    swarm.stop()
    comfy = comfy_factory(port=swarm.port)
    done = cli("generate", "image", "-p", "after", "--model", "random-sd15", "-o", "out")
    assert done.code == 0, done.stderr
    assert read_registry(state_dir)["kinds"][comfy.url] == "comfyui"
    assert len(comfy.calls("/prompt")) == 1
    records = read_registry(state_dir)["generations"].values()
    assert sorted((r["prompt"], r["status"]) for r in records) == [
        ("after", "succeeded"),
        ("before", "succeeded"),
    ]
    assert len(list((workdir / "out").glob("after-*.png"))) == 1


def test_a_remembered_comfyui_is_asked_again_when_swarmui_listens_there(
    comfy_factory: Callable[..., ComfyEmulator], emulator_factory, cli: Runner, state_dir: Path
) -> None:
    # The other way round: SwarmUI answers ComfyUI's GET routes with a redirect (to
    # /Error/404), not a 404, and that too means another server listens there now.
    comfy = comfy_factory()
    url, port = comfy.url, comfy.port
    assert cli("models", "list", "-q").code == 0
    assert read_registry(state_dir)["kinds"][url] == "comfyui"
    comfy.stop()
    swarm = emulator_factory(port=port)
    listed = cli("models", "list", "-f", "json")
    assert listed.code == 0, listed.stderr
    assert listed.json()["type"] == "swarmui"
    assert read_registry(state_dir)["kinds"][url] == "swarmui"
    assert swarm.calls("ListModels")
    swarm.stop()
    back = comfy_factory(port=port)
    status = cli("status", "-f", "json")
    assert status.code == 0, status.stderr
    assert status.json()["server"]["type"] == "comfyui"
    back.stop()
    swarm_again = emulator_factory(port=port)
    assert cli("status", "-f", "json").json()["server"]["type"] == "swarmui"
    assert swarm_again.calls("GetNewSession")


# -- user workflows ------------------------------------------------------------------------------


def test_options_find_their_nodes_by_meaning_and_set_wins(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    workflow = write(workdir, "t2i.json", t2i())
    result = cli(
        "generate", "image", "--workflow", workflow, "-p", "a heron", "--negative-prompt",
        "blurry", "--steps", "4", "--cfg-scale", "5.5", "--sampler", "dpmpp_2m", "--scheduler",
        "karras", "--width", "128", "--seed", "11",
        "--set", "Positive.text=overridden", "--set", "EmptyLatentImage.height=80",
        "--set", "3.denoise=0.9", "-o", "out",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    (graph,) = sent(comfy)
    sampler = graph["3"]["inputs"]
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"]) == (4, 5.5, "dpmpp_2m")
    assert (sampler["scheduler"], sampler["seed"], sampler["denoise"]) == ("karras", 11, 0.9)
    # --set is applied last, so it wins over --prompt.
    assert graph["6"]["inputs"]["text"] == "overridden"
    assert graph["7"]["inputs"]["text"] == "blurry"
    assert (graph["5"]["inputs"]["width"], graph["5"]["inputs"]["height"]) == (128, 80)


def test_the_workflow_s_own_values_stand_for_what_is_not_given(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    workflow = write(workdir, "t2i.json", t2i())
    result = cli("generate", "image", "--workflow", workflow, "-o", "out")
    assert result.code == 0, result.stderr
    (graph,) = sent(comfy)
    assert graph == t2i()
    assert result.stdout.strip() == "out/a cat-42.png"


def two_samplers() -> dict[str, Any]:
    """t2i() with a second KSampler after the first (a two-pass, "hires fix" shape)."""
    doubled = t2i()
    doubled["11"] = json.loads(json.dumps(doubled["3"]))
    doubled["11"]["inputs"]["latent_image"] = ["3", 0]
    doubled["8"]["inputs"]["samples"] = ["11", 0]
    return doubled


def test_two_places_or_none_are_refused_with_a_pointer_to_set(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    workflow = write(workdir, "two.json", two_samplers())
    result = cli("generate", "image", "--workflow", workflow, "--steps", "9")
    assert result.code == 2
    assert "--steps" in result.stderr and "2 places" in result.stderr
    assert "--set" in result.stderr
    none = cli("generate", "image", "--workflow", slow(workdir, "solid"), "--cfg-scale", "3")
    assert none.code == 2 and "--cfg-scale" in none.stderr and "no place" in none.stderr
    unknown = cli("generate", "image", "--workflow", workflow, "--set", "Nope.steps=3")
    assert unknown.code == 2 and "Nope" in unknown.stderr
    link = cli("generate", "image", "--workflow", workflow, "--set", "3.model=x")
    assert link.code == 2 and "link" in link.stderr
    ambiguous = cli("generate", "image", "--workflow", workflow, "--set", "KSampler.steps=3")
    assert ambiguous.code == 2 and "2 nodes" in ambiguous.stderr
    assert comfy.calls("/prompt") == []
    # By id it is fine, and the other sampler keeps its own value.
    fine = cli("generate", "image", "--workflow", workflow, "--set", "11.steps=5", "-o", "out")
    assert fine.code == 0, fine.stderr
    (graph,) = sent(comfy)
    assert (graph["3"]["inputs"]["steps"], graph["11"]["inputs"]["steps"]) == (3, 5)


def test_a_set_of_the_sampler_s_seed_wins_and_n_counts_up_from_it(
    comfy: ComfyEmulator, cli: Runner
) -> None:
    # --set is applied last, so it wins over --seed, and over the seed the client would draw.
    result = cli(
        "generate", "image", "-p", "x", "--model", "random-sd15", "--steps", "1",
        "--seed", "9", "--set", "3.seed=6", "-n", "2", "-o", "out",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert [g["3"]["inputs"]["seed"] for g in sent(comfy)] == [6, 7]
    assert result.stdout.splitlines() == ["out/x-6.png", "out/x-7.png"]
    drawn = cli("generate", "image", "-p", "y", "--model", "random-sd15", "--steps", "1",
                "--set", "KSampler.seed=5", "-o", "out")  # fmt: skip
    assert drawn.code == 0, drawn.stderr
    assert sent(comfy)[-1]["3"]["inputs"]["seed"] == 5
    assert "drawn by the client" not in drawn.stderr


def test_set_adds_an_input_the_workflow_leaves_out_that_the_node_has(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    # The probe workflow of protocol §0.3 has no fail_at_step; the node declares it (optional).
    workflow = slow(workdir, "probe", steps=4)
    result = cli("generate", "image", "--workflow", workflow, "--set", "Colour.fail_at_step=2",
                 "-f", "json")  # fmt: skip
    assert result.code == 1, result.stderr
    assert result.json()["error"]["code"] == "server_error"
    assert "requested failure at step 2" in result.json()["error"]["message"]
    assert sent(comfy)[0]["1"]["inputs"]["fail_at_step"] == 2
    typo = cli("generate", "image", "--workflow", workflow, "--set", "1.fail_at_stp=2")
    assert typo.code == 2
    assert "fail_at_stp" in typo.stderr and "fail_at_step" in typo.stderr
    assert len(sent(comfy)) == 1


def test_n_on_a_workflow_without_a_seed_queues_n_copies(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    # -n is not an option placed by meaning: it queues N prompts. The slow test node never
    # hits the cache, so each copy makes an image of its own.
    result = cli("generate", "image", "--workflow", slow(workdir, "solid"), "-n", "3", "-o",
                 "out", "-f", "json")  # fmt: skip
    assert result.code == 0, result.stderr
    assert len(sent(comfy)) == 3
    paths = [image["path"] for image in result.json()["images"]]
    assert len(set(paths)) == 3 and all((cli.cwd / p).is_file() for p in paths)


def test_options_needing_a_place_name_themselves_and_a_directory_is_a_file_error(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    # -n varies the one seed (two: which one is the user's to say); a LoRA goes after the
    # one checkpoint loader.
    images = cli("generate", "image", "--workflow", write(workdir, "two.json", two_samplers()),
                 "-n", "2")  # fmt: skip
    assert images.code == 2
    assert "Error: --images:" in images.stderr and "--seed" not in images.stderr
    lora = cli("generate", "image", "--workflow", slow(workdir, "solid"), "--lora", "x")
    assert lora.code == 2
    assert "Error: --lora:" in lora.stderr and "--model" not in lora.stderr
    (workdir / "folder").mkdir()
    folder = cli("generate", "image", "--workflow", str(workdir / "folder"), "-f", "json")
    assert folder.code == 1
    assert folder.json()["error"]["code"] == "file_error"
    assert "folder" in folder.json()["error"]["message"]
    assert comfy.calls("/prompt") == []


def test_config_seed_and_images_leave_a_two_sampler_workflow_alone(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    # A config value must not refuse every --workflow run: it applies where the workflow has
    # one place for it, else the workflow keeps its own values (the command line still asks).
    workflow = write(workdir, "two.json", two_samplers())
    for key, value in (("generate.seed", "7"), ("generate.images", "2")):
        assert cli("config", "set", key, value).code == 0
    result = cli("generate", "image", "--workflow", workflow, "-o", "out")
    assert result.code == 0, result.stderr
    (graph,) = sent(comfy)
    assert graph == two_samplers()
    asked = cli("generate", "image", "--workflow", workflow, "--seed", "3")
    assert asked.code == 2 and "--seed" in asked.stderr and "2 places" in asked.stderr
    # Where the workflow has one place, the config's seed and count apply.
    single = cli("generate", "image", "--workflow", write(workdir, "one.json", t2i()), "-o", "o")
    assert single.code == 0, single.stderr
    assert [g["3"]["inputs"]["seed"] for g in sent(comfy)[1:]] == [7, 8]


def test_the_config_model_is_resolved_in_a_workflow_as_model_is(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    workflow = write(workdir, "t2i.json", t2i(**{"4.ckpt_name": "sd15/v1-5-pruned-emaonly"}))
    assert cli("config", "set", "generate.model", "random-sd15").code == 0
    result = cli("generate", "image", "--workflow", workflow, "-o", "out")
    assert result.code == 0, result.stderr
    (graph,) = sent(comfy)
    assert graph["4"]["inputs"]["ckpt_name"] == "random-sd15.safetensors"


def test_files_that_are_not_workflows_are_file_errors(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    broken = workdir / "broken.json"
    broken.write_text("{ nope")
    result = cli("generate", "image", "--workflow", str(broken), "-f", "json")
    assert result.code == 1
    assert result.json()["error"]["code"] == "file_error"
    assert "broken.json" in result.json()["error"]["message"]
    missing = cli("generate", "image", "--workflow", str(workdir / "absent.json"))
    assert missing.code == 1 and "absent.json" in missing.stderr
    odd = write(workdir, "odd.json", {"1": {"inputs": {}}})
    shape = cli("generate", "image", "--workflow", odd)
    assert shape.code == 1 and "Export (API)" in shape.stderr
    assert comfy.calls("/prompt") == []


def test_a_ui_format_template_runs_as_it_is_and_set_reaches_nodes_by_title(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    templates = pytest.importorskip(TEMPLATES)
    source = Path(templates.__file__).parent / "templates" / "default.json"
    result = cli(
        "generate", "image", "--workflow", str(source), "-p", "a lighthouse", "--model",
        "random-sd15", "--width", "64", "--height", "64", "--steps", "2",
        "--set", "KSampler.cfg=6", "-o", "out",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    (graph,) = sent(comfy)
    assert graph["6"]["inputs"]["text"] == "a lighthouse"
    assert graph["3"]["inputs"]["cfg"] == 6 and graph["3"]["inputs"]["steps"] == 2
    assert graph["4"]["inputs"]["ckpt_name"] == "random-sd15.safetensors"
    assert [call.path for call in comfy.calls("/object_info")] == ["/object_info"]
    # The catalogue is cached: a second run does not fetch it again.
    again = cli("generate", "image", "--workflow", str(source), "--model", "random-sd15",
                "--steps", "1", "-o", "out")  # fmt: skip
    assert again.code == 0, again.stderr
    assert len(comfy.calls("/object_info")) == 1


def test_a_node_class_the_server_lacks_is_named_before_anything_is_sent(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    ui = {
        "nodes": [
            {"id": 1, "type": "FancyUpscaler", "title": "Magic", "mode": 0, "inputs": [],
             "outputs": [], "widgets_values": []},
        ],
        "links": [],
    }  # fmt: skip
    path = write(workdir, "ui.json", ui)
    result = cli("generate", "image", "--workflow", path, "-f", "json")
    assert result.code == 1
    error = result.json()["error"]
    assert error["code"] == "server_error"
    assert "FancyUpscaler" in error["message"] and "Magic" in error["message"]
    assert comfy.calls("/prompt") == []


# -- how a generation ends ---------------------------------------------------------------------


def test_a_failing_node_is_one_line_naming_node_class_and_message(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    workflow = slow(workdir, "boom", steps=4, fail_at_step=2)
    result = cli("generate", "image", "--workflow", workflow, "-f", "json")
    assert result.code == 1
    error = result.json()["error"]
    assert error["code"] == "server_error"
    assert error["message"].startswith("request failed: ")
    assert "node 1 (SlowSolidImage)" in error["message"]
    assert "requested failure at step 2" in error["message"]
    assert len(result.stderr.strip().splitlines()) == 1
    assert wait_record(state_dir, "boom")["status"] == "failed"


def test_a_rejected_workflow_names_node_input_and_reason(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    workflow = write(workdir, "bad.json", t2i(**{"4.ckpt_name": "nope.safetensors"}))
    result = cli("generate", "image", "--workflow", workflow, "-o", "out")
    assert result.code == 1
    line = result.stderr.strip()
    assert line.startswith("request failed: ")
    assert "node 4 (CheckpointLoaderSimple)" in line and "ckpt_name" in line
    assert "'nope.safetensors'" in line and "random-sd15.safetensors" in line
    assert not (workdir / "out").exists() or list((workdir / "out").iterdir()) == []
    # A long list of allowed values is shortened to its length; no input named twice.
    sampler = cli("generate", "image", "--workflow", write(workdir, "s.json", t2i()),
                  "--sampler", "bogus", "--steps", "1", "--set", "3.steps=-5")  # fmt: skip
    assert sampler.code == 1
    assert "sampler_name: 'bogus' is not one of its " in sampler.stderr
    assert "steps: Value -5 smaller than min of 1" in sampler.stderr
    assert "min of 1: steps" not in sampler.stderr


def test_a_cached_prompt_still_yields_its_image(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    workflow = write(workdir, "t2i.json", t2i())
    first = cli("generate", "image", "--workflow", workflow, "-o", "one")
    second = cli("generate", "image", "--workflow", workflow, "-o", "two")
    assert first.code == 0 and second.code == 0, second.stderr
    assert (workdir / first.stdout.strip()).read_bytes() == (
        workdir / second.stdout.strip()
    ).read_bytes()


def test_a_dropped_websocket_loses_no_image(
    comfy_factory: Callable[..., ComfyEmulator], cli: Runner, workdir: Path, state_dir: Path
) -> None:
    comfy = comfy_factory()
    workflow = slow(workdir, "dropped", steps=30, step_seconds=0.05)
    process = cli.start("generate", "image", "--workflow", workflow, "-n", "1", "-o", "out")
    record = wait_record(state_dir, "dropped")
    assert wait_for(lambda: queue_ids(comfy)[0] == record["handle"]["prompt_ids"])
    assert comfy.drop_websockets(record["handle"]["client_id"]) >= 1
    code, out, err = finish(process)
    assert code == 0, err
    assert (workdir / out.strip()).read_bytes().startswith(b"\x89PNG")
    assert wait_record(state_dir, "dropped")["status"] == "succeeded"


def two_saves(workdir: Path, name: str) -> str:
    """A quick image saved first, then a slow one: two SaveImage nodes, one prompt."""
    path = Path(slow(workdir, name, steps=1, step_seconds=0.01))
    graph = json.loads(path.read_text())
    graph["3"] = json.loads(json.dumps(graph["1"]))
    graph["3"]["inputs"].update(steps=40, step_seconds=0.05, red=0.0)
    graph["4"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["3", 0], "filename_prefix": f"t_{name}_slow"},
    }
    path.write_text(json.dumps(graph))
    return str(path)


def test_an_image_announced_while_the_websocket_was_down_is_still_saved(
    comfy_factory: Callable[..., ComfyEmulator], cli: Runner, workdir: Path, state_dir: Path
) -> None:
    # The socket drops as the first `executed` is sent; the prompt goes on and ends on the
    # new socket: the image announced into the gap comes from /history (cli-contract §7).
    dropped = []

    def drop_first_executed(point: FaultPoint) -> Fault | None:
        message = point.message or {}
        if point.transport == "ws" and message.get("type") == "executed" and not dropped:
            dropped.append(message)
            return Fault(reset=True)
        return None

    comfy = comfy_factory(faults=drop_first_executed)
    process = cli.start("generate", "image", "--workflow", two_saves(workdir, "gap"), "-o", "out")
    code, out, err = finish(process)
    assert code == 0, err
    assert dropped and len(comfy.websocket_connects()) == 2
    paths = out.splitlines()
    assert len(paths) == 2 and len(set(paths)) == 2
    for path in paths:
        assert (workdir / path).read_bytes().startswith(b"\x89PNG")
    assert len(wait_record(state_dir, "gap")["images"]) == 2


def test_a_websocket_that_drops_now_and_then_is_reconnected_every_time(
    comfy_factory: Callable[..., ComfyEmulator], cli: Runner, workdir: Path
) -> None:
    # Tries count the reconnects since the last message, not over the whole run: a fourth
    # drop long after the third is reconnected too.
    at = {5, 15, 25, 35}

    def drop_now_and_then(point: FaultPoint) -> Fault | None:
        message = point.message or {}
        if point.transport != "ws" or message.get("type") != "progress":
            return None
        if message["data"].get("value") not in at:
            return None
        at.discard(message["data"]["value"])
        return Fault(reset=True)

    comfy = comfy_factory(faults=drop_now_and_then)
    workflow = slow(workdir, "flaky", steps=45, step_seconds=0.05)
    result = cli("generate", "image", "--workflow", workflow, "-o", "out")
    assert result.code == 0, result.stderr
    assert not at and len(comfy.websocket_connects()) == 5


def test_without_a_websocket_the_queue_is_read_at_most_once_a_second(
    comfy_factory: Callable[..., ComfyEmulator], cli: Runner, workdir: Path
) -> None:
    # GET /queue carries every queued graph, anyone's: polling it 4 times a second loads the
    # server for nothing.
    def no_websocket(point: FaultPoint) -> Fault | None:
        return Fault(status=404, body=b"") if point.transport == "upgrade" else None

    comfy = comfy_factory(faults=no_websocket)
    workflow = slow(workdir, "polled", steps=35, step_seconds=0.1)
    result = cli("generate", "image", "--workflow", workflow, "-o", "out")
    assert result.code == 0, result.stderr
    (queued,) = comfy.calls("/prompt")
    looks = [c for c in comfy.calls("/queue") if c.method == "GET" and c.time >= queued.time]
    seconds = looks[-1].time - queued.time
    assert seconds >= 3 and len(looks) <= seconds + 2, (len(looks), seconds)


# -- cancel: exactly our work ---------------------------------------------------------------------


def test_cancel_interrupts_our_running_prompt_by_id_and_leaves_a_foreign_one(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    process = cli.start("generate", "image", "--workflow", slow(workdir, "ours", steps=400))
    record = wait_record(state_dir, "ours", "running")
    theirs = foreign(comfy, steps=3)
    result = cli("cancel", "-f", "json")
    assert result.code == 0, result.stderr
    assert result.json()["was_active"] is True
    code, _, err = finish(process)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    # Our cancel marked it, so the message names it (cli-contract §7).
    assert last.startswith(f"cancelled: {record['id']} was cancelled on "), last
    assert "by `asset-generator cancel` (0 of 1 saved)" in last and "web UI" not in last
    (ours,) = record["handle"]["prompt_ids"]
    assert interrupts(comfy) == [{"prompt_id": ours}]
    # The foreign prompt ran to its end.
    assert wait_for(lambda: (history_of(comfy, theirs) or {}).get("status", {}).get(
        "status_str") == "success")  # fmt: skip
    assert history_of(comfy, ours)["status"]["status_str"] == "error"


def test_an_interrupt_from_elsewhere_is_a_cancel_by_the_web_ui_or_another_client(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    process = cli.start("generate", "image", "--workflow", slow(workdir, "stopped", steps=400))
    record = wait_record(state_dir, "stopped", "running")
    assert wait_for(lambda: (record_named(state_dir, "stopped") or {}).get("progress", 0) > 0)
    # The web UI's Cancel button: a global interrupt, nothing of ours marked.
    httpx.post(f"{comfy.url}/interrupt", json={}, timeout=10)
    code, _, err = finish(process)
    last = err.strip().splitlines()[-1]
    assert code == 1, err
    assert last.startswith(f"cancelled: {record['id']} was cancelled on "), last
    assert "by the web UI or another client (0 of 1 saved)" in last
    assert "asset-generator cancel" not in last


def test_cancel_of_ours_pending_behind_a_foreign_prompt_only_deletes_ours(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    theirs = foreign(comfy, steps=400, step_seconds=0.05)
    assert wait_for(lambda: queue_ids(comfy)[0] == [theirs])
    process = cli.start("generate", "image", "--workflow", slow(workdir, "waiting"))
    record = wait_record(state_dir, "waiting")
    (ours,) = record["handle"]["prompt_ids"]
    assert wait_for(lambda: ours in queue_ids(comfy)[1])
    result = cli("cancel", record["id"])
    assert result.code == 0, result.stderr
    code, _, err = finish(process)
    assert code == 1 and "cancelled: " in err
    deletes = [call.body for call in comfy.calls("/queue") if call.method == "POST"]
    assert {"delete": [ours]} in deletes
    assert interrupts(comfy) == [] and queue_ids(comfy)[0] == [theirs]
    assert history_of(comfy, ours) is None
    assert wait_record(state_dir, "waiting")["status"] == "cancelled"


def test_a_prompt_removed_by_another_client_is_a_failure_not_a_cancel(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    # Nobody of ours cancelled it (cli-contract §3): a prompt that left the queue without a
    # word is the silent ending, whatever removed it (a restart, another client's delete).
    theirs = foreign(comfy, steps=400, step_seconds=0.05)
    assert wait_for(lambda: queue_ids(comfy)[0] == [theirs])
    process = cli.start("generate", "image", "--workflow", slow(workdir, "vanishing"), "-f", "json")
    record = wait_record(state_dir, "vanishing")
    (ours,) = record["handle"]["prompt_ids"]
    assert wait_for(lambda: ours in queue_ids(comfy)[1])
    httpx.post(f"{comfy.url}/queue", json={"delete": [ours]}, timeout=10)
    code, out, err = finish(process)
    assert code == 1, err
    assert err.strip().splitlines()[-1].startswith("request failed: ")
    assert "removed from the queue by another client" in err and "cancelled" not in err
    assert json.loads(out)["error"]["code"] == "server_error"
    assert wait_record(state_dir, "vanishing")["status"] == "failed"
    httpx.post(f"{comfy.url}/queue", json={"delete": [theirs]}, timeout=10)
    httpx.post(f"{comfy.url}/interrupt", json={"prompt_id": theirs}, timeout=10)


def test_nothing_of_ours_is_no_request(comfy: ComfyEmulator, cli: Runner) -> None:
    foreign(comfy, steps=50)
    before = len(comfy.requests)
    result = cli("cancel", "--server-type", "comfyui")
    assert result.code == 0
    assert result.stderr.startswith("no active generation")
    assert len(comfy.requests) == before


def test_cancel_all_clears_then_interrupts_and_says_whose(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    theirs = foreign(comfy, steps=400)
    assert wait_for(lambda: queue_ids(comfy)[0] == [theirs])
    process = cli.start("generate", "image", "--workflow", slow(workdir, "queued"))
    record = wait_record(state_dir, "queued")
    assert wait_for(lambda: record["handle"]["prompt_ids"][0] in queue_ids(comfy)[1])
    result = cli("cancel", "--all")
    assert result.code == 0, result.stderr
    assert "1 running and 1 pending prompt" in result.stdout and "1 of them ours" in result.stdout
    as_calls = [(c.route, c.body) for c in comfy.calls("/queue") + comfy.calls("/interrupt")
                if c.method == "POST"]  # fmt: skip
    assert ("/queue", {"clear": True}) in as_calls and ("/interrupt", {}) in as_calls
    clear_at = next(c.time for c in comfy.calls("/queue") if c.body == {"clear": True})
    assert all(c.time >= clear_at for c in comfy.calls("/interrupt"))
    code, _, _ = finish(process)
    assert code == 1
    assert wait_for(lambda: queue_ids(comfy) == ([], []))
    document = cli("cancel", "--all", "-f", "json").json()
    assert document["scope"] == "server"


def test_cancel_all_wait_waits_for_every_prompt_it_stopped_anyone_s(
    comfy: ComfyEmulator, cli: Runner
) -> None:
    # §7: --wait waits until none of the cancelled prompts is pending or running; with --all
    # those are anyone's. Nothing of ours here, yet a running prompt was stopped: active.
    theirs = foreign(comfy, steps=20, step_seconds=1.0)  # the interrupt lands at a step's end
    assert wait_for(lambda: queue_ids(comfy)[0] == [theirs])
    result = cli("cancel", "--all", "--wait", "-f", "json")
    assert result.code == 0, result.stderr
    assert queue_ids(comfy) == ([], [])
    assert result.json() == {"ok": True, "scope": "server", "cancelled": [], "was_active": True}
    # Nothing left to stop: not active.
    again = cli("cancel", "--all", "--wait", "-f", "json")
    assert again.json()["was_active"] is False


def test_a_server_before_0_3_57_gets_a_global_interrupt_only_while_ours_runs(
    comfy_factory: Callable[..., ComfyEmulator], cli: Runner, workdir: Path, state_dir: Path
) -> None:
    comfy = comfy_factory(comfy_version="0.3.40")
    theirs = foreign(comfy, steps=400, step_seconds=0.05)
    assert wait_for(lambda: queue_ids(comfy)[0] == [theirs])
    waiting = cli.start("generate", "image", "--workflow", slow(workdir, "old pending"))
    record = wait_record(state_dir, "old pending")
    assert wait_for(lambda: record["handle"]["prompt_ids"][0] in queue_ids(comfy)[1])
    result = cli("cancel", record["id"], "-v")
    assert result.code == 0, result.stderr
    finish(waiting)
    # Ours was pending: deleted, and no interrupt at all (it would have stopped theirs).
    assert interrupts(comfy) == [] and queue_ids(comfy)[0] == [theirs]
    httpx.post(f"{comfy.url}/queue", json={"delete": [theirs]}, timeout=5)
    httpx.post(f"{comfy.url}/interrupt", json={}, timeout=5)
    assert wait_for(lambda: queue_ids(comfy) == ([], []))
    running = cli.start("generate", "image", "--workflow", slow(workdir, "old running", steps=400))
    wait_record(state_dir, "old running", "running")
    result = cli("cancel", "-v")
    assert result.code == 0, result.stderr
    assert "older than 0.3.57" in result.stderr, result.stderr
    assert "global interrupt was sent" in result.stderr, result.stderr
    code, _, _ = finish(running)
    assert code == 1
    # The global interrupt (an old server reads no body at all).
    assert len(interrupts(comfy)) == 1


def test_a_server_with_the_jobs_api_cancels_through_it(
    comfy_factory: Callable[..., ComfyEmulator], cli: Runner, workdir: Path, state_dir: Path
) -> None:
    comfy = comfy_factory(comfy_version="0.28.1")
    process = cli.start("generate", "image", "--workflow", slow(workdir, "jobs", steps=400))
    record = wait_record(state_dir, "jobs", "running")
    assert cli("cancel").code == 0
    code, _, _ = finish(process)
    assert code == 1
    (ours,) = record["handle"]["prompt_ids"]
    assert [c.path for c in comfy.requests if "/jobs/" in c.path] == [f"/api/jobs/{ours}/cancel"]
    assert interrupts(comfy) == []


def test_ctrl_c_stops_exactly_our_prompts(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    process = cli.start("generate", "image", "--workflow", slow(workdir, "mine", steps=400),
                        "-n", "1")  # fmt: skip
    record = wait_record(state_dir, "mine", "running")
    theirs = foreign(comfy, steps=3)
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code == 130, err
    assert "interrupted: stopping" in err
    (ours,) = record["handle"]["prompt_ids"]
    assert interrupts(comfy) == [{"prompt_id": ours}]
    assert wait_for(lambda: (history_of(comfy, theirs) or {}).get("status", {}).get(
        "status_str") == "success")  # fmt: skip
    assert wait_record(state_dir, "mine")["status"] == "cancelled"


def test_ctrl_c_while_the_prompt_is_being_sent_stops_it_when_it_reaches_the_queue(
    comfy_factory: Callable[..., ComfyEmulator], cli: Runner, workdir: Path, state_dir: Path
) -> None:
    # A busy server: the prompt reaches the queue a second after POST /prompt arrived, its
    # answer later still. Ctrl-C comes in between: the id is ours, so the stop looks for it.
    def slow_answer(point: FaultPoint) -> Fault | None:
        if point.transport == "http" and point.route == "/prompt" and point.method == "POST":
            return Fault(delay_seconds=2.0)
        return None

    comfy = comfy_factory(faults=slow_answer)
    queue = comfy.server.prompt_queue
    put = queue.put

    def late_put(item: Any) -> None:
        asyncio.get_running_loop().call_later(1.0, put, item)

    queue.put = late_put  # type: ignore[method-assign]
    process = cli.start("generate", "image", "--workflow", slow(workdir, "sent", steps=40,
                        step_seconds=0.05))  # fmt: skip
    record = wait_record(state_dir, "sent")
    assert wait_for(lambda: comfy.calls("/prompt"))
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code == 130, err
    (ours,) = record["handle"]["prompt_ids"]
    time.sleep(1.5)  # past its arrival in the queue
    assert ours not in queue_ids(comfy)[0] + queue_ids(comfy)[1]
    assert (history_of(comfy, ours) or {}).get("status", {}).get("status_str") != "success"
    assert wait_record(state_dir, "sent")["status"] == "cancelled"


# -- status, models, auth -------------------------------------------------------------------


def test_status_counts_the_queue_and_ours(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    foreign(comfy, steps=400)
    process = cli.start("generate", "image", "--workflow", slow(workdir, "counted"))
    wait_record(state_dir, "counted")
    assert wait_for(lambda: len(queue_ids(comfy)[1]) == 1)
    document = cli("status", "-f", "json").json()
    assert document["queue"] == {"running": 1, "pending": 1, "ours_running": 0,
                                 "ours_pending": 1}  # fmt: skip
    server = document["server"]
    assert server["type"] == "comfyui" and server["version"] == "0.3.64"
    assert server["devices"] and {"name", "type", "vram_total", "vram_free"} <= set(
        server["devices"][0]
    )
    table = cli("status")
    assert "queue      1 running (0 ours), 1 pending (1 ours)" in table.stdout
    cli("cancel", "--all", "-q")
    finish(process)


def test_status_shows_a_restarted_servers_version_at_once(
    comfy_factory: Callable[..., ComfyEmulator], cli: Runner
) -> None:
    # Issue 19 item 7 on ComfyUI: /system_stats is asked on every run, nothing is cached.
    first = comfy_factory(comfy_version="0.3.60")
    assert cli("status", "-f", "json").json()["server"]["version"] == "0.3.60"
    port = first.port
    first.stop()
    assert cli("status", "-q").code == 1
    comfy_factory(comfy_version="0.3.64", port=port)
    document = cli("status", "-f", "json").json()
    assert document["version"] == document["server"]["version"] == "0.3.64"


def test_status_of_a_stopped_server_shows_our_work_as_recorded(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    made = cli("generate", "image", "--workflow", slow(workdir, "kept"), "-o", "out", "-q")
    assert made.code == 0, made.stderr
    comfy.stop()
    down = cli("status", "-f", "json")
    assert down.code == 1
    document = down.json()
    assert document["ok"] is False and document["error"]["code"] == "connection_failed"
    assert document["server"] == {"url": cli.url, "type": "comfyui", "reachable": False}
    assert [g["prompt"] for g in document["generations"]] == ["kept"]
    table = cli("status")
    assert table.code == 1 and "kept" in table.stdout
    assert table.stderr.startswith("request failed: ")


def test_models_map_swarmui_subtypes_to_folders(
    comfy: ComfyEmulator, cli: Runner, state_dir: Path
) -> None:
    loras = cli("models", "list", "--subtype", "LoRA", "-f", "json").json()
    assert loras["subtype"] == "loras"
    assert [m["name"] for m in loras["models"]] == ["random-lora.safetensors",
                                                    "sub/fake_lora.safetensors"]  # fmt: skip
    # ComfyUI knows only file names: the table has no empty columns beside them.
    table = cli("models", "list", "--subtype", "LoRA").stdout.splitlines()
    assert [line.rstrip() for line in table] == ["NAME", *(m["name"] for m in loras["models"])]
    folder = cli("models", "list", "--subtype", "loras", "--path", "sub", "-f", "json").json()
    assert [m["name"] for m in folder["models"]] == ["sub/fake_lora.safetensors"]
    unknown = cli("models", "list", "--subtype", "Bogus")
    assert unknown.code == 2 and "checkpoints" in unknown.stderr
    names = cli("models", "list", "-q")
    assert names.code == 0
    cached = read_registry(state_dir)["servers"]
    assert {"checkpoints", "loras"} <= {k for s in cached.values() for k in s["models"]}


def test_api_key_is_a_bearer_token_and_auth_header_wins(
    comfy_factory: Callable[..., ComfyEmulator], cli: Runner, workdir: Path
) -> None:
    comfy = comfy_factory(required_authorization="Bearer s3cret-token")
    refused = cli("status", "-f", "json", "--server-type", "comfyui")
    assert refused.code == 1 and refused.json()["error"]["code"] == "auth_failed"
    assert "--api-key" in refused.json()["error"]["message"]
    ok = cli("status", "--api-key", "s3cret-token", "-f", "json")
    assert ok.code == 0, ok.stderr
    wins = cli("status", "--api-key", "wrong", "--auth-header", "Bearer s3cret-token")
    assert wins.code == 0, wins.stderr
    run = cli("generate", "image", "--workflow", slow(workdir, "authed"), "--api-key",
              "s3cret-token", "-o", "out")  # fmt: skip
    assert run.code == 0, run.stderr
    assert all(c.headers.get("authorization") == "Bearer s3cret-token"
               for c in comfy.requests if c.status != 401)  # fmt: skip
    assert "s3cret-token" not in run.stdout + run.stderr


def test_api_key_goes_as_bearer_on_every_request_while_the_server_type_is_asked(
    comfy_factory: Callable[..., ComfyEmulator], cli: Runner, workdir: Path, state_dir: Path
) -> None:
    # Auto type, nothing remembered: SwarmUI's GetNewSession is asked first, and a ComfyUI (or
    # the proxy before it) must see the token on that request too (cli-contract §7).
    comfy = comfy_factory(required_authorization="Bearer s3cret-token")
    wrong = cli("status", "--api-key", "not-it")
    assert wrong.code == 1 and "--api-key" in wrong.stderr
    assert "none was sent" not in wrong.stderr and "not-it" not in wrong.stderr
    comfy.reset_log()
    run = cli("generate", "image", "--workflow", slow(workdir, "first"), "--api-key",
              "s3cret-token", "-o", "out", "-v")  # fmt: skip
    assert run.code == 0, run.stderr
    assert read_registry(state_dir)["kinds"][comfy.url] == "comfyui"
    assert comfy.requests[0].path == "/API/GetNewSession"
    assert [c.path for c in comfy.requests if c.status == 401] == []
    assert all(c.headers.get("authorization") == "Bearer s3cret-token" for c in comfy.requests)
    assert not any("origin" in c.headers for c in comfy.requests)
    assert "s3cret-token" not in run.stdout + run.stderr


# -- pipeline -------------------------------------------------------------------------------------


def test_a_pipeline_keeps_two_of_its_prompts_queued_and_takes_workflow_and_set_from_the_spec(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    write(workdir, "t2i.json", t2i())
    spec = workdir / "set.yaml"
    spec.write_text(
        "params:\n"
        "  workflow: t2i.json\n"
        '  set: {"KSampler.cfg": 5.0, "KSampler.steps": 30}\n'
        "assets:\n"
        "  - name: tiles\n"
        "    assets:\n"
        "      - {id: a, prompt: first}\n"
        '      - {id: b, prompt: second, params: {set: {"Negative.text": blurry}}}\n'
        "      - {id: c, prompt: third}\n"
        "      - {id: d, prompt: fourth}\n"
    )
    process = cli.start("pipeline", str(spec), "--base-seed", "100", "-f", "json")
    most = 0
    while process.poll() is None:
        running, pending = queue_ids(comfy)
        most = max(most, len(running) + len(pending))
        time.sleep(0.005)  # the emulator runs in this process: leave it the GIL
    code, out, err = finish(process)
    assert code == 0, err
    document = json.loads(out)
    # Two of the pipeline's prompts in ComfyUI's queue at once: never more, and at some point
    # the next one was already waiting while one ran.
    assert most == 2
    assert document["pipeline"]["parallel"] == 2
    assert document["summary"]["succeeded"] == 4
    graphs = {g["6"]["inputs"]["text"]: g for g in sent(comfy)}
    # ComfyUI runs its one queue in the order it was sent: the spec's order.
    assert list(graphs) == ["first", "second", "third", "fourth"]
    assert all(g["3"]["inputs"]["cfg"] == 5.0 for g in graphs.values())
    assert graphs["second"]["7"]["inputs"]["text"] == "blurry"
    assert graphs["first"]["7"]["inputs"]["text"] == ""
    assert [graphs[p]["3"]["inputs"]["seed"] for p in ("first", "second", "third")] == [
        100,
        101,
        102,
    ]
    for asset in document["assets"]:
        assert (workdir / asset["path"]).read_bytes().startswith(b"\x89PNG")
    rerun = cli("pipeline", str(spec), "-f", "json")
    assert rerun.code == 0 and rerun.json()["summary"]["skipped"] == 4
    assert len(sent(comfy)) == 4


def test_a_rerun_with_every_asset_skipped_reports_comfyui_s_default_parallel(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    write(workdir, "t2i.json", t2i())
    spec = workdir / "two.yaml"
    spec.write_text(
        "params: {workflow: t2i.json}\n"
        "assets:\n  - {name: g, assets: [{id: a, prompt: one}, {id: b, prompt: two}]}\n"
    )
    first = cli("pipeline", str(spec), "-f", "json")
    assert first.code == 0, first.stderr
    rerun = cli("pipeline", str(spec), "-f", "json")
    assert rerun.code == 0 and rerun.json()["summary"]["skipped"] == 2
    # Nothing was sent, and the document still says what --parallel is on ComfyUI (§7).
    assert rerun.json()["pipeline"]["parallel"] == 2
    assert "2 at once" in rerun.stderr
    assert len(sent(comfy)) == 2


def test_a_spec_whose_params_the_workflow_cannot_take_is_a_bad_spec(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    # A spec that cannot be used is bad_spec, exit 1 (§3); what the command line gave stays a
    # usage error, exit 2. Nothing is sent and no directory is made either way.
    write(workdir, "t2i.json", t2i())
    no_prompt = t2i()
    no_prompt["6"]["inputs"]["text"] = ["12", 0]
    no_prompt["12"] = {"class_type": "PrimitiveString", "inputs": {"value": "a cat"}}
    write(workdir, "no_prompt.json", no_prompt)
    assets = "assets:\n  - {name: g, assets: [{id: a, prompt: one}]}\n"
    (workdir / "unknown.yaml").write_text(
        'params: {workflow: t2i.json, set: {"Nope.steps": 3}}\n' + assets
    )
    (workdir / "promptless.yaml").write_text("params: {workflow: no_prompt.json}\n" + assets)
    (workdir / "plain.yaml").write_text("params: {workflow: t2i.json}\n" + assets)
    unknown = cli("pipeline", "unknown.yaml", "-f", "json")
    assert unknown.code == 1, unknown.stderr
    error = unknown.json()["error"]
    assert error["code"] == "bad_spec"
    assert error["message"].startswith("bad spec: unknown.yaml line 3 (assets[0].assets[0])")
    assert "Nope" in error["message"]
    promptless = cli("pipeline", "promptless.yaml")
    assert promptless.code == 1
    assert promptless.stderr.startswith("bad spec: promptless.yaml") and "no place" in (
        promptless.stderr
    )
    given = cli("pipeline", "plain.yaml", "--set", "Nope.steps=3", "-f", "json")
    assert given.code == 2 and given.json()["error"]["code"] == "usage_error"
    workflow = cli("pipeline", "plain.yaml", "--workflow", "no_prompt.json")
    assert workflow.code == 2 and "no place" in workflow.stderr
    assert comfy.calls("/prompt") == []
    assert not (workdir / "pipeline-output").exists()


def test_a_pipeline_asset_stopped_elsewhere_is_named_so_and_one_we_cancel_is_named_ours(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    # The pipeline's cancelled message says who stopped its assets, as generate's does (§7).
    write(workdir, "t2i.json", t2i())
    spec = workdir / "two.yaml"
    spec.write_text(
        "params: {workflow: t2i.json}\n"
        "assets:\n"
        "  - name: g\n"
        "    assets:\n"
        '      - {id: a, prompt: alpha, params: {set: {"KSampler.steps": 2000}}}\n'
        "      - {id: b, prompt: beta}\n"
    )
    process = cli.start("pipeline", str(spec), "--parallel", "1", "-f", "json")
    first = wait_record(state_dir, "alpha", "running")["id"]
    # The web UI's Cancel button: a global interrupt, nothing of ours marked.
    httpx.post(f"{comfy.url}/interrupt", json={}, timeout=10)
    code, out, err = finish(process)
    assert code == 1, err
    message = json.loads(out)["error"]["message"]
    assert message.startswith("cancelled: a of pipe_")
    assert "by the web UI or another client" in message and "asset-generator cancel" not in message

    again = cli.start("pipeline", str(spec), "--parallel", "1", "-f", "json")

    def rerun() -> list[str]:
        records = read_registry(state_dir)["generations"].values()
        return [r["id"] for r in records if r["id"] != first and r["status"] == "running"]

    assert wait_for(rerun)
    assert cli("cancel", rerun()[0]).code == 0
    code, out, err = finish(again)
    assert code == 1, err
    message = json.loads(out)["error"]["message"]
    assert message.startswith("cancelled: a of pipe_") and "by `asset-generator cancel`;" in message
    assert json.loads(out)["summary"]["skipped"] == 1


def test_a_pipeline_asks_each_model_folder_once_and_the_next_command_asks_again(
    comfy: ComfyEmulator, cli: Runner, workdir: Path
) -> None:
    """Every asset is prepared before the first is queued; the model and LoRA names are
    looked up once per command, not once per asset, and not kept for the next command."""
    spec = workdir / "five.yaml"
    items = "".join(f"      - {{id: a{i}, prompt: 'asset {i}'}}\n" for i in range(5))
    spec.write_text(f"assets:\n  - name: set\n    assets:\n{items}")
    options = ("--base-seed", "1", "--steps", "1", "--width", "64", "--height", "64", "-q")

    def asked(folder: str) -> int:
        return len([c for c in comfy.calls("/models/{folder}") if c.path == f"/models/{folder}"])

    result = cli("pipeline", str(spec), "--model", "random-sd15", "--lora", "random-lora:0.5",
                 *options)  # fmt: skip
    assert result.code == 0, result.stderr
    graphs = sent(comfy)
    assert len(graphs) == 5
    for graph in graphs:
        assert graph["4"]["inputs"]["ckpt_name"] == "random-sd15.safetensors"
        (lora,) = [n for n in graph.values() if n["class_type"] == "LoraLoader"]
        assert lora["inputs"]["lora_name"] == "random-lora.safetensors"
    assert (asked("checkpoints"), asked("loras")) == (1, 1)
    # A model added between two commands is found by the next one.
    comfy.config.checkpoints.append("added-later.safetensors")
    again = cli("pipeline", str(spec), "--model", "added-later", "--force", *options)
    assert again.code == 0, again.stderr
    assert {g["4"]["inputs"]["ckpt_name"] for g in sent(comfy)[5:]} == {"added-later.safetensors"}
    assert (asked("checkpoints"), asked("loras")) == (2, 1)


def test_a_pipeline_of_ui_format_assets_refreshes_a_stale_catalogue_once(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, tmp_path: Path
) -> None:
    """A cached catalogue without a class the workflow needs is fetched again (a new custom
    node), once for the whole pipeline; the next command takes the cached copy."""
    templates = pytest.importorskip(TEMPLATES)
    source = Path(templates.__file__).parent / "templates" / "default.json"
    first = cli("generate", "image", "--workflow", str(source), "--model", "random-sd15",
                "--steps", "1", "-o", "out")  # fmt: skip
    assert first.code == 0, first.stderr
    (cached,) = (tmp_path / "home" / "xdg_cache_home").rglob("*-object_info.json")
    stale = json.loads(cached.read_text())
    del stale["KSampler"]
    cached.write_text(json.dumps(stale))
    spec = workdir / "ui.yaml"
    items = "".join(f"      - {{id: a{i}, prompt: 'asset {i}'}}\n" for i in range(3))
    spec.write_text(f"assets:\n  - name: set\n    assets:\n{items}")
    options = ("--workflow", str(source), "--model", "random-sd15", "--steps", "1", "-q")
    result = cli("pipeline", str(spec), *options)
    assert result.code == 0, result.stderr
    assert len(comfy.calls("/object_info")) == 2
    assert "KSampler" in json.loads(cached.read_text())
    again = cli("pipeline", str(spec), "--force", *options)
    assert again.code == 0, again.stderr
    assert len(comfy.calls("/object_info")) == 2
    assert len(sent(comfy)) == 7


def test_a_cancel_goes_by_the_version_the_first_use_saw(
    comfy: ComfyEmulator, cli: Runner, workdir: Path, state_dir: Path
) -> None:
    """Whether an interrupt can target one prompt depends on the version: identification
    remembers it, so a cancel needs only the queue and the interrupt (issue 18 performance)."""
    assert cli("status", "-q").code == 0  # identifies the server: type and version remembered
    process = cli.start("generate", "image", "--workflow", slow(workdir, "versioned", steps=400))
    record = wait_record(state_dir, "versioned", "running")
    cli("cancel", "-q")  # the first one also learns that /api/jobs is not there
    finish(process)
    process = cli.start("generate", "image", "--workflow", slow(workdir, "again", steps=400))
    record = wait_record(state_dir, "again", "running")
    before = len(comfy.requests)
    result = cli("cancel", "-v")
    assert result.code == 0, result.stderr
    finish(process)
    asked = [line.split()[1:3] for line in result.stderr.splitlines() if line.startswith("> ")]
    assert asked == [["GET", "/queue"], ["POST", "/interrupt"]], result.stderr
    (prompt_id,) = record["handle"]["prompt_ids"]
    mine = [c for c in comfy.requests[before:] if ours(c) and c.route == "/interrupt"]
    assert [c.body for c in mine] == [{"prompt_id": prompt_id}]
