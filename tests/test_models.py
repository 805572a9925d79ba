"""`models list` end to end: what the server is asked, what the user sees, what is cached."""

from __future__ import annotations

from pathlib import Path

from conftest import Runner

from asset_generator.emulator import Emulator
from asset_generator.emulator.config import DEFAULT_LORAS, DEFAULT_MODELS
from asset_generator.registry import Registry, cached_model_names


def cached(state_dir: Path, subtype: str) -> list[str]:
    state = Registry(state_dir).read()
    (key,) = state.servers
    return cached_model_names(state, key, subtype)


def listed_body(emu: Emulator) -> dict:
    body = dict(emu.calls("ListModels")[-1].body or {})
    body.pop("session_id")
    return body


def test_table_lists_models_and_caches_their_names(
    cli: Runner, emulator: Emulator, state_dir: Path
) -> None:
    result = cli("models", "list")
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "TITLE", "ARCHITECTURE", "RESOLUTION", "LOADED"]
    by_name = {row.split()[0]: row.split()[1:] for row in rows}
    assert sorted(by_name) == sorted(DEFAULT_MODELS)
    assert by_name["OfficialStableDiffusion/sd_xl_base_1.0.safetensors"] == [
        "sd_xl_base_1.0",
        "stable-diffusion-xl-v1-base",
        "1024x1024",
        "yes",
    ]
    assert by_name["sd15/v1-5-pruned-emaonly.safetensors"] == [
        "v1-5-pruned-emaonly",
        "stable-diffusion-v1",
        "512x512",
    ]
    assert listed_body(emulator) == {
        "path": "",
        "depth": 20,
        "subtype": "Stable-Diffusion",
        "dataImages": False,
    }
    assert cached(state_dir, "Stable-Diffusion") == sorted(DEFAULT_MODELS)
    assert cached(state_dir, "LoRA") == []
    assert emulator.sessions_created == 1

    # -q keeps the data, the names one a line, and drops the decorations (issue 19 item 11).
    quiet = cli("models", "list", "-q")
    assert (quiet.code, quiet.stderr) == (0, "")
    assert quiet.stdout.splitlines() == [row.split()[0] for row in rows]
    loras = cli("models", "list", "--subtype", "LoRA", "-q")
    assert sorted(loras.stdout.splitlines()) == sorted(DEFAULT_LORAS)
    empty = cli("models", "list", "--path", "no-such-folder", "-q")
    assert (empty.code, empty.stdout, empty.stderr) == (0, "", "")
    assert emulator.sessions_created == 1


def test_json_and_lora_subtype(cli: Runner, emulator: Emulator, state_dir: Path) -> None:
    result = cli("models", "list", "--subtype", "lora", "-f", "json")
    assert result.code == 0, result.stderr
    document = result.json()
    assert document["ok"] is True
    assert document["subtype"] == "LoRA"
    assert sorted(m["name"] for m in document["models"]) == sorted(DEFAULT_LORAS)
    for model in document["models"]:
        assert {"name", "title", "architecture", "resolution", "loaded"} <= set(model)
    assert listed_body(emulator)["subtype"] == "LoRA"
    assert cached(state_dir, "LoRA") == sorted(DEFAULT_LORAS)

    models = cli("models", "list", "--format", "json").json()
    loaded = [m["name"] for m in models["models"] if m["loaded"]]
    assert loaded == ["OfficialStableDiffusion/sd_xl_base_1.0.safetensors"]
    # Each sub-type is cached on its own.
    assert cached(state_dir, "LoRA") == sorted(DEFAULT_LORAS)
    assert cached(state_dir, "Stable-Diffusion") == sorted(DEFAULT_MODELS)


def test_path_and_depth_narrow_the_listing_without_shrinking_the_cache(
    cli: Runner, emulator: Emulator, state_dir: Path
) -> None:
    assert cli("models", "list", "-q").code == 0
    result = cli("models", "list", "--path", "flux", "--depth", "1", "-f", "json")
    assert result.code == 0, result.stderr
    document = result.json()
    assert [m["name"] for m in document["models"]] == ["flux/flux1-dev.safetensors"]
    assert (document["path"], document["depth"]) == ("flux", 1)
    assert listed_body(emulator)["path"] == "flux" and listed_body(emulator)["depth"] == 1
    assert cached(state_dir, "Stable-Diffusion") == sorted(DEFAULT_MODELS)

    root = cli("models", "list", "--depth", "1", "-f", "json").json()
    assert root["models"] == []
    assert sorted(root["folders"]) == ["OfficialStableDiffusion", "flux", "sd15"]


def test_bad_values_exit_with_a_message(cli: Runner, emulator: Emulator) -> None:
    unknown = cli("models", "list", "--subtype", "Nope")
    assert unknown.code == 2
    assert unknown.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--subtype': 'Nope' is not a model type; the types are: "
        "Stable-Diffusion, VAE, LoRA, Embedding, ControlNet, Clip, ClipVision, Wildcards."
    )
    assert unknown.stdout == ""
    assert cli("-f", "json", "models", "list", "--subtype", "x").json()["error"]["code"] == (
        "usage_error"
    )

    depth = cli("models", "list", "--depth", "0")
    assert depth.code == 2 and "--depth" in depth.stderr
    assert emulator.calls("ListModels") == []


def test_loras_show_no_resolution_and_an_empty_folder_is_named(
    cli: Runner, emulator: Emulator
) -> None:
    loras = cli("models", "list", "--subtype", "LoRA")
    assert loras.code == 0, loras.stderr
    assert "0x0" not in loras.stdout
    rows = loras.stdout.splitlines()[1:]
    assert sorted(row.split() for row in rows) == sorted(
        [name, name.rsplit("/", 1)[-1].removesuffix(".safetensors")] for name in DEFAULT_LORAS
    )
    # The raw answer is still there for scripts.
    raw = cli("models", "list", "--subtype", "LoRA", "-f", "json").json()["models"]
    assert {m["resolution"] for m in raw} == {"0x0"}

    empty = cli("models", "list", "--path", "nope")
    assert (empty.code, empty.stdout) == (0, "")
    assert empty.stderr == f"no Stable-Diffusion models in folder 'nope' on {emulator.url}\n"


def test_hostile_model_names_cannot_drive_the_terminal(cli: Runner, emulator_factory) -> None:
    emu = emulator_factory(models=["evil\x1b[2J\x07/clear.safetensors"])
    cli.url = emu.url
    result = cli("models", "list")
    assert result.code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "evil[2J/clear.safetensors" in result.stdout
    document = cli("models", "list", "-f", "json").json()
    assert [m["name"] for m in document["models"]] == ["evil\x1b[2J\x07/clear.safetensors"]
