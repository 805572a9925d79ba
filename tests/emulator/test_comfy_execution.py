"""Running graphs (protocol §4.3, §7.1, §10): caching, file names, images, every node class."""

from __future__ import annotations

from typing import Any

from comfy_helpers import Socket, Target, png_size_and_pixel, sd_graph, slow_graph, unique


def empty_image_graph(prefix: str, batch: int = 1, color: int = 0x336699) -> dict[str, Any]:
    """A deterministic graph: EmptyImage has no IS_CHANGED, so it can be cached."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 24, "height": 16, "batch_size": batch, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def _images(comfy: Target, prompt_id: str, node: str = "2") -> list[dict[str, str]]:
    return comfy.history(prompt_id)[prompt_id]["outputs"][node]["images"]


def _types(sock: Socket, prompt_id: str) -> list[str]:
    return [f.type for f in sock.of(prompt_id)]


def test_an_identical_resubmission_is_served_from_the_cache(comfy: Target) -> None:
    sock = comfy.socket()
    prefix = unique("cached")
    # Submitted back to back behind a run of ours, so nobody else's prompt runs between them
    # on a shared server (the cache keeps only the last prompt's nodes).
    blocker = comfy.submit(slow_graph(3, comfy.step), client_id=sock.client_id)
    first = comfy.submit(empty_image_graph(prefix), client_id=sock.client_id)
    again = comfy.submit(empty_image_graph(prefix), client_id=sock.client_id)
    renamed = comfy.submit(empty_image_graph(prefix + "_b"), client_id=sock.client_id)
    for prompt_id in (blocker, first, again, renamed):
        sock.wait_end(prompt_id)

    cached = next(f for f in sock.of(again) if f.type == "execution_cached")
    assert cached.data["nodes"] == ["1", "2"]
    assert _types(sock, again) == [
        "execution_start",
        "execution_cached",
        "executed",
        "progress_state",
        "execution_success",
        "executing",
    ]
    states = next(f for f in sock.of(again) if f.type == "progress_state").data["nodes"]
    assert {n: (s["state"], s["value"], s["max"]) for n, s in states.items()} == {
        "2": ("finished", 1, 1)
    }
    old = _images(comfy, first)
    assert _images(comfy, again) == old  # the old file, no new one
    assert old[0]["filename"].endswith("_00001_.png")
    entry = comfy.history(again)[again]
    assert entry["status"]["status_str"] == "success"

    # Only filename_prefix changed: the image comes from the cache, SaveImage runs again.
    cached = next(f for f in sock.of(renamed) if f.type == "execution_cached")
    assert cached.data["nodes"] == ["1"]
    executing = [f.data["node"] for f in sock.of(renamed) if f.type == "executing"]
    assert executing == ["2", None]
    new = _images(comfy, renamed)
    assert new[0]["filename"] != old[0]["filename"]
    assert comfy.view(new[0]).content != b""


def test_slow_solid_image_is_never_cached(comfy: Target) -> None:
    sock = comfy.socket()
    graph = slow_graph(1, 0.0, prefix=unique("uncached"))
    ids = [comfy.submit(graph, client_id=sock.client_id) for _ in range(2)]
    for prompt_id in ids:
        sock.wait_end(prompt_id)
    cached = next(f for f in sock.of(ids[1]) if f.type == "execution_cached")
    assert cached.data["nodes"] == []
    names = [_images(comfy, p)[0]["filename"] for p in ids]
    assert names[0] != names[1]


def test_file_names_batches_and_substitutions(comfy: Target) -> None:
    sock = comfy.socket()
    stem = unique("names")
    prompt_id = comfy.submit(
        empty_image_graph(f"{stem}/f_%width%x%height%_b%batch_num%", batch=3),
        client_id=sock.client_id,
    )
    sock.wait_end(prompt_id)
    images = _images(comfy, prompt_id)
    assert [i["filename"] for i in images] == [
        "f_24x16_b0_00001_.png",
        "f_24x16_b1_00002_.png",
        "f_24x16_b2_00003_.png",
    ]
    assert {i["subfolder"] for i in images} == {stem}
    size, pixel = png_size_and_pixel(comfy.view(images[0]).content)
    assert size == (24, 16)
    # 0x33/0xFF etc. as float32, times 255, truncated (SaveImage's numpy arithmetic).
    assert pixel == (51, 102, 153) or pixel == (50, 101, 152)


def test_the_counter_continues_from_the_files_on_disk(emulator_only) -> None:
    target = emulator_only()
    emulator = target.require_emulator()
    (emulator.output_dir / "f_cnt_00041_.png").write_bytes(b"")
    sock = target.socket()
    prompt_id = target.submit(empty_image_graph("f_cnt"), client_id=sock.client_id)
    sock.wait_end(prompt_id)
    assert _images(target, prompt_id)[0]["filename"] == "f_cnt_00042_.png"
    assert "f_cnt_00042_.png" in emulator.saved_outputs()


def test_preview_image_writes_a_temp_file(comfy: Target) -> None:
    sock = comfy.socket()
    graph = slow_graph(1, 0.0)
    graph["2"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    prompt_id = comfy.submit(graph, client_id=sock.client_id)
    sock.wait_end(prompt_id)
    (image,) = _images(comfy, prompt_id)
    assert image["type"] == "temp" and image["subfolder"] == ""
    assert image["filename"].startswith("ComfyUI_temp_") and image["filename"].endswith(
        "_00001_.png"
    )
    assert len(image["filename"]) == len("ComfyUI_temp_abcde_00001_.png")
    assert comfy.view(image).status_code == 200


def test_a_failed_run_keeps_what_finished_before(comfy: Target) -> None:
    sock = comfy.socket()
    graph = slow_graph(1, 0.0, prefix=unique("kept"))
    graph["4"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["1", 0], "filename_prefix": "../x"},
    }
    prompt_id = comfy.submit(graph, client_id=sock.client_id)
    sock.wait_end(prompt_id)
    entry = comfy.history(prompt_id)[prompt_id]
    assert entry["status"]["messages"][-1][0] == "execution_error"
    error = entry["status"]["messages"][-1][1]
    assert error["node_id"] == "4" and "1" in error["executed"]
    # Which of two ready output nodes runs first follows a set's order on the real server
    # (string hashes differ per process); whatever ran before the error keeps its output.
    assert set(entry["outputs"]) == {"2"} & set(error["executed"])


def test_a_missing_upscale_model_fails_when_it_runs(comfy: Target) -> None:
    """V3 combos (["COMBO", {...}]) are not checked by 0.3.64's validation."""
    sock = comfy.socket()
    graph = slow_graph(1, 0.0)
    graph["3"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "nope-4x.pth"}}
    graph["4"] = {
        "class_type": "ImageUpscaleWithModel",
        "inputs": {"upscale_model": ["3", 0], "image": ["1", 0]},
    }
    graph["2"]["inputs"]["images"] = ["4", 0]
    answer = comfy.post_prompt(graph, client_id=sock.client_id)
    assert answer.status_code == 200 and answer.json()["node_errors"] == {}
    prompt_id = answer.json()["prompt_id"]
    sock.wait_end(prompt_id)
    error = next(f for f in sock.of(prompt_id) if f.type == "execution_error").data
    assert error["node_id"] == "3"
    assert error["exception_type"] == "FileNotFoundError"
    assert "nope-4x.pth" in error["exception_message"]


def _pixels(comfy: Target, image: dict[str, str]) -> bytes:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(comfy.view(image).content)) as opened:
        return opened.convert("RGB").tobytes()


def test_text_to_image_seeds_batches_and_determinism(comfy: Target) -> None:
    """The built-in graph (protocol §10) really runs; the same seed gives the same pixels."""
    sock = comfy.socket()
    seeded = sd_graph(**{"5.batch_size": 2, "3.steps": 1})
    other = sd_graph(**{"3.seed": 43, "3.steps": 1})
    repeat = sd_graph(**{"5.batch_size": 2, "3.steps": 1})  # a new prefix: re-runs
    ids = [comfy.submit(g, client_id=sock.client_id) for g in (seeded, other, repeat)]
    for prompt_id in ids:
        sock.wait_end(prompt_id)
    first, second, third = (_images(comfy, p, "9") for p in ids)
    assert len(first) == 2 and len(second) == 1 and len(third) == 2
    assert png_size_and_pixel(comfy.view(first[0]).content)[0] == (64, 64)
    assert _pixels(comfy, first[0]) == _pixels(comfy, third[0])
    assert _pixels(comfy, first[1]) == _pixels(comfy, third[1])
    assert _pixels(comfy, first[0]) != _pixels(comfy, first[1])
    assert _pixels(comfy, first[0]) != _pixels(comfy, second[0])
    progress = [f.data for f in sock.of(ids[0]) if f.type == "progress"]
    assert [(p["node"], p["value"], p["max"]) for p in progress] == [("3", 1, 1)]
    cached = next(f for f in sock.of(ids[2]) if f.type == "execution_cached").data["nodes"]
    assert set(cached) == {"4", "10", "6", "7"}  # loaders and encoders stay cached


def test_ksampler_takes_its_steps_and_stops_at_a_step_boundary(emulator_only) -> None:
    # 0.2 s a step: the interrupt sent after step 2 has 1.6 s to land before step 10, even on a
    # loaded machine (at 0.02 s it had 0.16 s).
    target = emulator_only(step_seconds=0.2)
    sock = target.socket()
    prompt_id = target.submit(sd_graph(**{"3.steps": 200}), client_id=sock.client_id)
    sock.wait_for(lambda f: f.type == "progress" and f.data["value"] == 2)
    target.http.post("/interrupt", json={"prompt_id": prompt_id})
    sock.wait_end(prompt_id)
    interrupted = next(f for f in sock.of(prompt_id) if f.type == "execution_interrupted")
    assert (interrupted.data["node_id"], interrupted.data["node_type"]) == ("3", "KSampler")
    values = [f.data["value"] for f in sock.of(prompt_id) if f.type == "progress"]
    assert values == list(range(1, len(values) + 1)) and len(values) < 10


def test_free_memory_empties_the_cache(emulator_only) -> None:
    target = emulator_only()
    sock = target.socket()
    first = target.submit(empty_image_graph("freed"), client_id=sock.client_id)
    sock.wait_end(first)
    assert target.http.post("/free", json={"free_memory": True}).status_code == 200
    again = target.submit(empty_image_graph("freed"), client_id=sock.client_id)
    sock.wait_end(again)
    cached = next(f for f in sock.of(again) if f.type == "execution_cached")
    assert cached.data["nodes"] == []


def test_every_declared_class_runs(emulator_only) -> None:
    target = emulator_only(upscale_models=["RealESRGAN_x2.pth"], vaes=["vae-ft.safetensors"])
    sock = target.socket()
    graph: dict[str, Any] = {
        "ck": {"class_type": "CheckpointLoaderSimple",
               "inputs": {"ckpt_name": "sd15/v1-5-pruned-emaonly.safetensors"}},
        "cl": {"class_type": "CLIPSetLastLayer",
               "inputs": {"clip": ["ck", 1], "stop_at_clip_layer": -2}},
        "lo": {"class_type": "LoraLoaderModelOnly",
               "inputs": {"model": ["ck", 0], "lora_name": "sub/fake_lora.safetensors",
                          "strength_model": 0.5}},
        "ll": {"class_type": "LoraLoader",
               "inputs": {"model": ["lo", 0], "clip": ["cl", 0],
                          "lora_name": "random-lora.safetensors", "strength_model": 1.0,
                          "strength_clip": 1.0}},
        "p1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["ll", 1]}},
        "p2": {"class_type": "CLIPTextEncode", "inputs": {"text": "b", "clip": ["ll", 1]}},
        "ar": {"class_type": "ConditioningSetArea",
               "inputs": {"conditioning": ["p2", 0], "width": 64, "height": 64, "x": 0, "y": 0,
                          "strength": 1.0}},
        "co": {"class_type": "ConditioningCombine",
               "inputs": {"conditioning_1": ["p1", 0], "conditioning_2": ["ar", 0]}},
        "im": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "va": {"class_type": "VAELoader", "inputs": {"vae_name": "vae-ft.safetensors"}},
        "en": {"class_type": "VAEEncode", "inputs": {"pixels": ["im", 0], "vae": ["va", 0]}},
        "up": {"class_type": "LatentUpscaleBy",
               "inputs": {"samples": ["en", 0], "upscale_method": "bislerp", "scale_by": 1.5}},
        "ks": {"class_type": "KSamplerAdvanced",
               "inputs": {"model": ["ll", 0], "add_noise": "enable", "noise_seed": 1,
                          "steps": 4, "cfg": 5.0, "sampler_name": "euler",
                          "scheduler": "karras", "positive": ["co", 0], "negative": ["p2", 0],
                          "latent_image": ["up", 0], "start_at_step": 1, "end_at_step": 3,
                          "return_with_leftover_noise": "disable"}},
        "lu": {"class_type": "LatentUpscale",
               "inputs": {"samples": ["ks", 0], "upscale_method": "nearest-exact",
                          "width": 128, "height": 0, "crop": "disabled"}},
        "de": {"class_type": "VAEDecode", "inputs": {"samples": ["lu", 0], "vae": ["ck", 2]}},
        "sc": {"class_type": "ImageScale",
               "inputs": {"image": ["de", 0], "upscale_method": "bilinear", "width": 100,
                          "height": 50, "crop": "disabled"}},
        "sb": {"class_type": "ImageScaleBy",
               "inputs": {"image": ["sc", 0], "upscale_method": "area", "scale_by": 0.5}},
        "um": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "RealESRGAN_x2.pth"}},
        "uw": {"class_type": "ImageUpscaleWithModel",
               "inputs": {"upscale_model": ["um", 0], "image": ["sb", 0]}},
        "sv": {"class_type": "SaveImage",
               "inputs": {"images": ["uw", 0], "filename_prefix": "all"}},
        "ei": {"class_type": "EmptyImage",
               "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "pv": {"class_type": "PreviewImage", "inputs": {"images": ["ei", 0]}},
        "el": {"class_type": "EmptyLatentImage",
               "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k2": {"class_type": "KSampler",
               "inputs": {"seed": 3, "steps": 1, "cfg": 7.0, "sampler_name": "euler",
                          "scheduler": "normal", "denoise": 1.0, "model": ["ck", 0],
                          "positive": ["p1", 0], "negative": ["p2", 0],
                          "latent_image": ["el", 0]}},
        "d2": {"class_type": "VAEDecode", "inputs": {"samples": ["k2", 0], "vae": ["ck", 2]}},
        "s2": {"class_type": "SlowSolidImage",
               "inputs": {"steps": 1, "step_seconds": 0.0, "width": 8, "height": 8,
                          "red": 0.0, "green": 1.0, "blue": 0.0}},
        "s3": {"class_type": "SaveImage", "inputs": {"images": ["d2", 0], "filename_prefix": "k2"}},
        "s4": {"class_type": "SaveImage", "inputs": {"images": ["s2", 0], "filename_prefix": "s2"}},
    }  # fmt: skip
    answer = target.post_prompt(graph, client_id=sock.client_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["node_errors"] == {}
    prompt_id = answer.json()["prompt_id"]
    sock.wait_end(prompt_id)
    entry = target.history(prompt_id)[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
    assert set(entry["outputs"]) == {"sv", "pv", "s3", "s4"}
    # example.png is 64×64: encode 8×8 latent, ×1.5 → 12×12, upscale to 128 wide → 16×16
    # latent, decode 128×128, scale to 100×50, halve to 50×25, upscale ×2 → 100×50.
    size, _ = png_size_and_pixel(target.view(entry["outputs"]["sv"]["images"][0]).content)
    assert size == (100, 50)
    steps = [f.data["max"] for f in sock.of(prompt_id) if f.type == "progress"]
    assert 2 in steps  # KSamplerAdvanced from step 1 to 3
