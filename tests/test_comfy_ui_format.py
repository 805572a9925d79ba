"""The UI-format ("Save") to API-format converter: each construct on small hand-written graphs, the
templates ComfyUI ships, and (when ASSET_GENERATOR_TEST_COMFYUI_URL names one) a real ComfyUI."""

from __future__ import annotations

import copy
import json
import os
import random
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import asset_generator
from asset_generator.comfy.ui_format import (
    InvalidWorkflow,
    MissingNodeClasses,
    UnsupportedWorkflow,
    is_ui_format,
    needed_classes,
    to_api,
)

# The node declarations the emulator serves: a real ComfyUI 0.3.64's /object_info for 24 classes.
CATALOGUE: dict[str, Any] = json.loads(
    (Path(asset_generator.__file__).parent / "emulator/comfy/object_info.json").read_text()
)
DATA = Path(__file__).parent / "data" / "comfy"


# ---------------------------------------------------------------------------------------------
# Building UI-format graphs


def node(
    node_id: int,
    node_type: str,
    widgets: Any = None,
    *,
    inputs: list[tuple[str, str, int | None]] | None = None,
    outputs: list[tuple[str, str, list[int]]] | None = None,
    mode: int = 0,
    title: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One node as the web UI saves it; ``inputs`` are (name, type, link id) and an input named
    like a widget carries the ``widget`` marker, as a converted widget does."""
    raw: dict[str, Any] = {
        "id": node_id,
        "type": node_type,
        "pos": [0, 0],
        "size": [100, 100],
        "flags": {},
        "order": 0,
        "mode": mode,
        "inputs": [
            {"name": name, "type": kind, "link": link}
            | ({"widget": {"name": name}} if kind in ("INT", "FLOAT", "STRING", "COMBO") else {})
            for name, kind, link in inputs or []
        ],
        "outputs": [
            {"name": name, "type": kind, "links": links} for name, kind, links in outputs or []
        ],
        "properties": {},
    }
    if widgets is not None:
        raw["widgets_values"] = widgets
    if title is not None:
        raw["title"] = title
    raw.update(extra)
    return raw


def workflow(nodes: list[dict[str, Any]], links: list[list[Any]], **extra: Any) -> dict[str, Any]:
    return {
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": max((link[0] for link in links), default=0),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
        "version": 0.4,
        **extra,
    }


def txt2img(*, lora_mode: int | None = None, text: str = "a red fox") -> dict[str, Any]:
    """The default text-to-image graph; with ``lora_mode``, a LoraLoader between checkpoint and
    sampler/encoders in that mode."""
    lora = lora_mode is not None
    source = 10 if lora else 4
    links = [
        [1, source, 0, 3, 0, "MODEL"],
        [2, 6, 0, 3, 1, "CONDITIONING"],
        [3, 7, 0, 3, 2, "CONDITIONING"],
        [4, 5, 0, 3, 3, "LATENT"],
        [5, source, 1, 6, 0, "CLIP"],
        [6, source, 1, 7, 0, "CLIP"],
        [7, 3, 0, 8, 0, "LATENT"],
        [8, 4, 2, 8, 1, "VAE"],
        [9, 8, 0, 9, 0, "IMAGE"],
    ]
    nodes = [
        node(
            4,
            "CheckpointLoaderSimple",
            ["random-sd15.safetensors"],
            outputs=[
                ("MODEL", "MODEL", [11] if lora else [1]),
                ("CLIP", "CLIP", [12] if lora else [5, 6]),
                ("VAE", "VAE", [8]),
            ],
        ),
        node(6, "CLIPTextEncode", [text], inputs=[("clip", "CLIP", 5)]),
        node(7, "CLIPTextEncode", ["blurry"], inputs=[("clip", "CLIP", 6)]),
        node(5, "EmptyLatentImage", [64, 64, 1]),
        node(
            3,
            "KSampler",
            [42, "randomize", 2, 7.5, "euler", "normal", 1],
            inputs=[
                ("model", "MODEL", 1),
                ("positive", "CONDITIONING", 2),
                ("negative", "CONDITIONING", 3),
                ("latent_image", "LATENT", 4),
            ],
        ),
        node(8, "VAEDecode", inputs=[("samples", "LATENT", 7), ("vae", "VAE", 8)]),
        node(9, "SaveImage", ["ComfyUI"], inputs=[("images", "IMAGE", 9)]),
    ]
    if lora:
        links += [[11, 4, 0, 10, 0, "MODEL"], [12, 4, 1, 10, 1, "CLIP"]]
        nodes.append(
            node(
                10,
                "LoraLoader",
                ["random-lora.safetensors", 0.8, 0.6],
                inputs=[("model", "MODEL", 11), ("clip", "CLIP", 12)],
                outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [5, 6])],
                mode=lora_mode,
            )
        )
    return workflow(nodes, links)


TXT2IMG_API = {
    "3": {
        "inputs": {
            "seed": 42,
            "steps": 2,
            "cfg": 7.5,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
        "class_type": "KSampler",
        "_meta": {"title": "KSampler"},
    },
    "4": {
        "inputs": {"ckpt_name": "random-sd15.safetensors"},
        "class_type": "CheckpointLoaderSimple",
        "_meta": {"title": "Load Checkpoint"},
    },
    "5": {
        "inputs": {"width": 64, "height": 64, "batch_size": 1},
        "class_type": "EmptyLatentImage",
        "_meta": {"title": "Empty Latent Image"},
    },
    "6": {
        "inputs": {"text": "a red fox", "clip": ["4", 1]},
        "class_type": "CLIPTextEncode",
        "_meta": {"title": "CLIP Text Encode (Prompt)"},
    },
    "7": {
        "inputs": {"text": "blurry", "clip": ["4", 1]},
        "class_type": "CLIPTextEncode",
        "_meta": {"title": "CLIP Text Encode (Prompt)"},
    },
    "8": {
        "inputs": {"samples": ["3", 0], "vae": ["4", 2]},
        "class_type": "VAEDecode",
        "_meta": {"title": "VAE Decode"},
    },
    "9": {
        "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
        "class_type": "SaveImage",
        "_meta": {"title": "Save Image"},
    },
}


def catalogue(**extra: dict[str, Any]) -> dict[str, Any]:
    return {**CATALOGUE, **extra}


def declared(required: dict[str, Any], optional: dict[str, Any] | None = None, **info: Any):
    """A node class declaration as /object_info gives it."""
    inputs = {"required": required} | ({"optional": optional} if optional else {})
    return {
        "input": inputs,
        "input_order": {"required": list(required)}
        | ({"optional": list(optional)} if optional else {}),
        "output": info.pop("output", []),
        "name": info.pop("name", "Test"),
        "display_name": info.pop("display_name", None),
        **info,
    }


# ---------------------------------------------------------------------------------------------
# Recognising the format


def test_the_ui_format_is_recognised_by_its_node_list():
    assert is_ui_format(txt2img())
    assert not is_ui_format(TXT2IMG_API)
    assert not is_ui_format([1, 2])
    assert not is_ui_format({"nodes": {"1": {}}})


# ---------------------------------------------------------------------------------------------
# Widgets onto input names


def test_widget_values_map_onto_input_names_and_the_seed_control_value_is_skipped():
    assert to_api(txt2img(), CATALOGUE) == TXT2IMG_API


def test_widget_values_saved_as_a_mapping_map_by_name():
    doc = txt2img()
    sampler = next(n for n in doc["nodes"] if n["type"] == "KSampler")
    sampler["widgets_values"] = {
        "seed": 7,
        "steps": 3,
        "cfg": 2,
        "sampler_name": "ddim",
        "scheduler": "karras",
        "denoise": 0.5,
        "videopreview": {},
    }
    api = to_api(doc, CATALOGUE)
    assert api["3"]["inputs"] | {} == TXT2IMG_API["3"]["inputs"] | {
        "seed": 7,
        "steps": 3,
        "cfg": 2,
        "sampler_name": "ddim",
        "scheduler": "karras",
        "denoise": 0.5,
    }


def test_both_combo_encodings_and_input_order_decide_the_places():
    # input_order (not the dict order) is the declared order; required before optional.
    info = declared(
        {
            "mode": ["COMBO", {"options": ["fast", "slow"]}],
            "flag": ["BOOLEAN", {"default": False}],
            "image": ["IMAGE"],
            "label": ["STRING", {"default": ""}],
        },
        {"scale": ["FLOAT", {"default": 1.0}], "shape": [["round", "square"], {}]},
    )
    info["input_order"]["required"] = ["label", "image", "mode", "flag"]
    doc = workflow([node(1, "Test", ["hello", "slow", True, 2.5, "square"])], [])
    assert to_api(doc, catalogue(Test=info))["1"]["inputs"] == {
        "label": "hello",
        "mode": "slow",
        "flag": True,
        "scale": 2.5,
        "shape": "square",
    }


def test_force_input_is_a_socket_and_old_files_lose_its_saved_value():
    info = declared(
        {"count": ["INT", {"forceInput": True}], "seed": ["INT", {}], "text": ["STRING", {}]}
    )
    current = workflow([node(1, "Test", [5, "fixed", "abc"])], [])
    assert to_api(current, catalogue(Test=info))["1"]["inputs"] == {"seed": 5, "text": "abc"}
    # Before frontend 1.16 a forceInput input still kept a value in widgets_values.
    legacy = workflow([node(1, "Test", [99, 5, "fixed", "abc"])], [])
    assert to_api(legacy, catalogue(Test=info))["1"]["inputs"] == {"seed": 5, "text": "abc"}


def test_controls_after_generate_are_skipped_for_ints_and_combos():
    info = declared(
        {
            "value": ["INT", {"control_after_generate": True}],
            "noise_seed": ["INT", {}],
            "not_a_seed": ["INT", {"control_after_generate": False}],
            "choice": [["a", "b", "c"], {"control_after_generate": True}],
            "last": ["FLOAT", {}],
        }
    )
    values = [1, "fixed", 2, "increment", 3, "c", "randomize", "", 0.25]
    doc = workflow([node(1, "Test", values)], [])
    assert to_api(doc, catalogue(Test=info))["1"]["inputs"] == {
        "value": 1,
        "noise_seed": 2,
        "not_a_seed": 3,
        "choice": "c",
        "last": 0.25,
    }


def test_the_load_image_upload_value_is_not_an_input():
    doc = workflow([node(1, "LoadImage", ["cat.png", "image"])], [])
    assert to_api(doc, CATALOGUE)["1"]["inputs"] == {"image": "cat.png"}


def test_missing_trailing_values_take_the_declared_defaults_and_extra_ones_are_ignored():
    doc = workflow([node(1, "EmptyLatentImage", [256]), node(2, "SaveImage", ["x", "y"])], [])
    api = to_api(doc, CATALOGUE)
    assert api["1"]["inputs"] == {"width": 256, "height": 512, "batch_size": 1}
    assert api["2"]["inputs"] == {"filename_prefix": "x"}


def test_a_converted_widget_with_a_link_takes_the_link():
    info = declared({"number": ["INT", {}]}, output=["INT"], name="Seeder")
    doc = txt2img()
    doc["nodes"].append(node(20, "Seeder", [1234], outputs=[("INT", "INT", [20])]))
    sampler = next(n for n in doc["nodes"] if n["type"] == "KSampler")
    sampler["inputs"].append(
        {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 20}
    )
    doc["links"].append([20, 20, 0, 3, 4, "INT"])
    api = to_api(doc, catalogue(Seeder=info))
    assert api["3"]["inputs"]["seed"] == ["20", 0]
    assert api["20"]["inputs"] == {"number": 1234}


def test_list_values_are_wrapped_so_they_do_not_read_as_links():
    info = declared({"names": ["STRING", {}]})
    doc = workflow([node(1, "Test", [["a", "b"]])], [])
    assert to_api(doc, catalogue(Test=info))["1"]["inputs"] == {"names": {"__value__": ["a", "b"]}}


# ---------------------------------------------------------------------------------------------
# Links


def test_links_in_object_form_convert_like_the_array_form():
    # The version 1 schema of newer web UIs keeps its links as objects.
    doc = txt2img()
    fields = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    doc["links"] = [dict(zip(fields, link, strict=True)) for link in doc["links"]]
    doc["version"] = 1
    doc["state"] = {"lastGroupId": 0, "lastNodeId": 9, "lastLinkId": 9, "lastRerouteId": 0}
    for key in ("last_node_id", "last_link_id"):
        del doc[key]
    assert to_api(doc, CATALOGUE) == TXT2IMG_API


def test_a_link_that_is_not_in_the_link_table_is_an_invalid_workflow():
    doc = txt2img()
    doc["links"] = [link for link in doc["links"] if link[0] != 7]
    with pytest.raises(InvalidWorkflow, match="link 7"):
        to_api(doc, CATALOGUE)


def test_a_link_whose_ends_disagree_with_the_nodes_is_an_invalid_workflow():
    doc = txt2img()
    doc["links"][0][3] = 8  # says it ends at the decoder, the sampler says it holds it
    with pytest.raises(InvalidWorkflow, match="link 1"):
        to_api(doc, CATALOGUE)


# ---------------------------------------------------------------------------------------------
# What does not execute


def test_notes_markdown_notes_and_groups_are_dropped():
    doc = txt2img()
    doc["nodes"] += [node(30, "Note", ["remember"]), node(31, "MarkdownNote", ["# hi"])]
    doc["groups"] = [{"title": "Sampling", "bounding": [0, 0, 10, 10]}]
    doc["extra"]["reroutes"] = []
    assert to_api(doc, CATALOGUE) == TXT2IMG_API


def test_a_muted_node_is_dropped_with_the_inputs_that_read_it():
    doc = txt2img()
    decoder = next(n for n in doc["nodes"] if n["type"] == "VAEDecode")
    decoder["mode"] = 2
    api = to_api(doc, CATALOGUE)
    assert "8" not in api
    assert api["9"]["inputs"] == {"filename_prefix": "ComfyUI"}


def test_a_muted_node_of_a_class_the_server_lacks_is_no_error():
    doc = txt2img()
    doc["nodes"].append(node(40, "SomeCustomNode", [1], mode=2))
    assert to_api(doc, CATALOGUE) == TXT2IMG_API


@pytest.mark.parametrize("mode", [0, 1, 3])
def test_other_modes_execute(mode):
    doc = txt2img()
    doc["nodes"][0]["mode"] = mode
    assert to_api(doc, CATALOGUE) == TXT2IMG_API


# ---------------------------------------------------------------------------------------------
# Bypassed nodes and reroutes


def test_a_bypassed_node_passes_its_matching_inputs_through():
    api = to_api(txt2img(lora_mode=4), CATALOGUE)
    assert "10" not in api
    assert api == TXT2IMG_API


def test_bypassing_is_followed_through_a_chain():
    doc = txt2img(lora_mode=4)
    # A second bypassed LoRA between the first and the sampler's model input.
    doc["nodes"].append(
        node(
            11,
            "LoraLoaderModelOnly",
            ["random-lora.safetensors", 1.0],
            inputs=[("model", "MODEL", 30)],
            outputs=[("MODEL", "MODEL", [1])],
            mode=4,
        )
    )
    doc["links"][0] = [1, 11, 0, 3, 0, "MODEL"]
    doc["links"].append([30, 10, 0, 11, 0, "MODEL"])
    assert to_api(doc, CATALOGUE) == TXT2IMG_API


def test_an_enabled_lora_stays_in_the_graph():
    api = to_api(txt2img(lora_mode=0), CATALOGUE)
    assert api["10"]["inputs"] == {
        "lora_name": "random-lora.safetensors",
        "strength_model": 0.8,
        "strength_clip": 0.6,
        "model": ["4", 0],
        "clip": ["4", 1],
    }
    assert api["3"]["inputs"]["model"] == ["10", 0]
    assert api["6"]["inputs"]["clip"] == api["7"]["inputs"]["clip"] == ["10", 1]


def test_a_bypassed_node_without_an_input_of_the_type_leaves_the_input_unset():
    doc = txt2img()
    # The empty latent bypassed: it has no LATENT input to pass through.
    next(n for n in doc["nodes"] if n["type"] == "EmptyLatentImage")["mode"] = 4
    api = to_api(doc, CATALOGUE)
    assert "latent_image" not in api["3"]["inputs"]
    assert "5" not in api


def test_reroutes_are_passed_through():
    doc = txt2img()
    doc["nodes"] += [
        node(20, "Reroute", inputs=[("", "*", 30)], outputs=[("", "MODEL", [31])]),
        node(21, "Reroute", inputs=[("", "*", 31)], outputs=[("", "MODEL", [1])]),
    ]
    doc["links"][0] = [1, 21, 0, 3, 0, "MODEL"]
    doc["links"] += [[30, 4, 0, 20, 0, "MODEL"], [31, 20, 0, 21, 0, "MODEL"]]
    assert to_api(doc, CATALOGUE) == TXT2IMG_API


def test_a_loop_of_reroutes_is_an_invalid_workflow():
    doc = txt2img()
    doc["nodes"] += [
        node(20, "Reroute", inputs=[("", "*", 31)], outputs=[("", "MODEL", [30, 1])]),
        node(21, "Reroute", inputs=[("", "*", 30)], outputs=[("", "MODEL", [31])]),
    ]
    doc["links"][0] = [1, 20, 0, 3, 0, "MODEL"]
    doc["links"] += [[30, 20, 0, 21, 0, "MODEL"], [31, 21, 0, 20, 0, "MODEL"]]
    with pytest.raises(InvalidWorkflow, match="loop"):
        to_api(doc, CATALOGUE)


# ---------------------------------------------------------------------------------------------
# Primitive nodes


def with_size_primitive(widgets: Any = None, **properties: Any) -> dict[str, Any]:
    doc = txt2img()
    latent = next(n for n in doc["nodes"] if n["type"] == "EmptyLatentImage")
    latent["inputs"] = [
        {"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 40},
        {"name": "height", "type": "INT", "widget": {"name": "height"}, "link": 41},
    ]
    primitive = node(50, "PrimitiveNode", widgets, outputs=[("INT", "INT", [40, 41])])
    primitive["properties"] = {"Run widget replace on values": False, **properties}
    doc["nodes"].append(primitive)
    doc["links"] += [[40, 50, 0, 5, 0, "INT"], [41, 50, 0, 5, 1, "INT"]]
    return doc


def test_a_primitive_nodes_value_goes_into_every_input_it_feeds():
    api = to_api(with_size_primitive([128, "fixed"]), CATALOGUE)
    assert api["5"]["inputs"] == {"width": 128, "height": 128, "batch_size": 1}
    assert "50" not in api


def test_a_primitive_node_without_saved_values_takes_its_first_targets_value():
    api = to_api(with_size_primitive(), CATALOGUE)
    assert api["5"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1}


def test_a_primitive_node_can_run_text_replacement_on_its_value():
    doc = txt2img()
    encoder = next(n for n in doc["nodes"] if n["id"] == 6)
    encoder["inputs"].append(
        {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 40}
    )
    primitive = node(
        50,
        "PrimitiveNode",
        ["seed %KSampler.seed% on %date:yyyy-MM-dd%"],
        outputs=[("STRING", "STRING", [40])],
    )
    primitive["properties"] = {"Run widget replace on values": True}
    doc["nodes"].append(primitive)
    doc["links"].append([40, 50, 0, 6, 1, "STRING"])
    api = to_api(doc, CATALOGUE, now=datetime(2025, 3, 4, 5, 6, 7))
    assert api["6"]["inputs"]["text"] == "seed 42 on 2025-03-04"


# ---------------------------------------------------------------------------------------------
# Values the web UI rewrites when it queues


def test_dynamic_prompts_lose_comments_and_pick_one_choice():
    text = "a {red|green {light|dark}|blue} fox // not this\n/* nor this */\\{kept\\}"
    api = to_api(txt2img(text=text), CATALOGUE, rng=random.Random(3))
    result = api["6"]["inputs"]["text"]
    assert result.startswith("a ") and result.endswith(" fox \n\\{kept\\}")
    assert result[2 : -len(" fox \n\\{kept\\}")] in {"red", "green light", "green dark", "blue"}
    picks = {
        to_api(txt2img(text="{a|b|c}"), CATALOGUE, rng=random.Random(i))["6"]["inputs"]["text"]
        for i in range(40)
    }
    assert picks == {"a", "b", "c"}


def test_file_name_prefixes_get_dates_and_widget_values():
    doc = txt2img()
    save = next(n for n in doc["nodes"] if n["type"] == "SaveImage")
    save["widgets_values"] = [
        "%date:yyyy-MM-dd_hh%/%KSampler.sampler_name%_%Empty Latent Image.width%_%nope.x%"
    ]
    api = to_api(doc, CATALOGUE, now=datetime(2025, 3, 4, 5, 6, 7))
    assert api["9"]["inputs"]["filename_prefix"] == "2025-03-04_05/euler_64_%nope.x%"


def test_old_files_lose_the_sample_prefix_of_sampler_names_and_old_class_names():
    doc = txt2img()
    next(n for n in doc["nodes"] if n["type"] == "KSampler")["widgets_values"][4] = "sample_euler"
    assert to_api(doc, CATALOGUE)["3"]["inputs"]["sampler_name"] == "euler"
    renamed = workflow([node(1, "T2IAdapterLoader", ["adapter.pth"])], [])
    info = declared({"control_net_name": [["adapter.pth"], {}]}, output=["CONTROL_NET"])
    assert (
        to_api(renamed, catalogue(ControlNetLoader=info))["1"]["class_type"] == "ControlNetLoader"
    )


# ---------------------------------------------------------------------------------------------
# Titles


def test_the_title_is_the_nodes_own_else_the_classs_display_name():
    doc = txt2img()
    next(n for n in doc["nodes"] if n["id"] == 6)["title"] = "Positive"
    api = to_api(doc, CATALOGUE)
    assert api["6"]["_meta"]["title"] == "Positive"
    assert api["7"]["_meta"]["title"] == "CLIP Text Encode (Prompt)"
    info = declared({"x": ["INT", {}]}, name="NoDisplayName")
    plain = workflow([node(1, "NoDisplayName", [1])], [])
    assert to_api(plain, catalogue(NoDisplayName=info))["1"]["_meta"]["title"] == "NoDisplayName"


# ---------------------------------------------------------------------------------------------
# Subgraphs


def definition(
    def_id: str,
    name: str,
    nodes: list[dict[str, Any]],
    links: list[list[Any]],
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
) -> dict[str, Any]:
    """A subgraph definition as the web UI saves it; its links are objects, and -10 and -20 are
    its input and output nodes."""
    fields = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    return {
        "id": def_id,
        "version": 1,
        "state": {"lastGroupId": 0, "lastNodeId": 99, "lastLinkId": 999, "lastRerouteId": 0},
        "revision": 0,
        "config": {},
        "name": name,
        "inputNode": {"id": -10, "bounding": [0, 0, 120, 100]},
        "outputNode": {"id": -20, "bounding": [500, 0, 120, 60]},
        "inputs": [
            {"id": f"in-{slot_name}", "name": slot_name, "type": kind, "linkIds": ids}
            for slot_name, kind, ids in inputs
        ],
        "outputs": [
            {"id": f"out-{slot_name}", "name": slot_name, "type": kind, "linkIds": ids}
            for slot_name, kind, ids in outputs
        ],
        "widgets": [],
        "nodes": nodes,
        "groups": [],
        "links": [dict(zip(fields, link, strict=True)) for link in links],
        "extra": {},
    }


def subgraph_workflow(instance_widgets: list[Any], *, nested: bool = False) -> dict[str, Any]:
    """The sampler and its empty latent inside a subgraph; the model, prompts and steps come in,
    the latent goes out. With ``nested``, the empty latent sits in a subgraph of its own."""
    inner_links = [
        [101, -10, 0, 3, 0, "MODEL"],
        [102, -10, 1, 3, 1, "CONDITIONING"],
        [103, -10, 2, 3, 2, "CONDITIONING"],
        [104, 5, 0, 3, 3, "LATENT"],
        [105, -10, 3, 3, 4, "INT"],
        [106, 3, 0, -20, 0, "LATENT"],
    ]
    sampler = node(
        3,
        "KSampler",
        [42, "randomize", 20, 7.5, "euler", "normal", 1],
        inputs=[
            ("model", "MODEL", 101),
            ("positive", "CONDITIONING", 102),
            ("negative", "CONDITIONING", 103),
            ("latent_image", "LATENT", 104),
            ("steps", "INT", 105),
        ],
        outputs=[("LATENT", "LATENT", [106])],
    )
    latent = node(5, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT", [104])])
    definitions = []
    if nested:
        latent = {**latent, "type": "latent-def", "widgets_values": []}
        inner = node(1, "EmptyLatentImage", [96, 64, 1], outputs=[("LATENT", "LATENT", [201])])
        definitions.append(
            definition(
                "latent-def",
                "Latent",
                [inner],
                [[201, 1, 0, -20, 0, "LATENT"]],
                [],
                [("LATENT", "LATENT", [201])],
            )
        )
    definitions.append(
        definition(
            "sampler-def",
            "Sampling",
            [sampler, latent],
            inner_links,
            [
                ("model", "MODEL", [101]),
                ("positive", "CONDITIONING", [102]),
                ("negative", "CONDITIONING", [103]),
                ("steps", "INT", [105]),
            ],
            [("LATENT", "LATENT", [106])],
        )
    )
    doc = txt2img()
    doc["nodes"] = [n for n in doc["nodes"] if n["type"] not in ("KSampler", "EmptyLatentImage")]
    doc["nodes"].append(
        node(
            12,
            "sampler-def",
            instance_widgets,
            inputs=[
                ("model", "MODEL", 1),
                ("positive", "CONDITIONING", 2),
                ("negative", "CONDITIONING", 3),
            ],
            outputs=[("LATENT", "LATENT", [7])],
        )
    )
    doc["links"] = [link for link in doc["links"] if link[0] != 4]
    for link in doc["links"]:
        if link[3] == 3:
            link[3] = 12
        if link[1] == 3:
            link[1] = 12
    doc["definitions"] = {"subgraphs": definitions}
    return doc


def test_a_subgraph_is_flattened_with_outer_colon_inner_ids():
    api = to_api(subgraph_workflow([9]), CATALOGUE)
    assert sorted(api) == ["12:3", "12:5", "4", "6", "7", "8", "9"]
    assert api["12:3"]["inputs"] == {
        "seed": 42,
        "steps": 9,  # the subgraph node's promoted widget wins over the inner value
        "cfg": 7.5,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 1,
        "model": ["4", 0],
        "positive": ["6", 0],
        "negative": ["7", 0],
        "latent_image": ["12:5", 0],
    }
    assert api["8"]["inputs"]["samples"] == ["12:3", 0]
    assert api["12:5"]["_meta"]["title"] == "Empty Latent Image"


def test_nested_subgraphs_get_one_id_segment_per_level():
    api = to_api(subgraph_workflow([9], nested=True), CATALOGUE)
    assert api["12:5:1"]["inputs"] == {"width": 96, "height": 64, "batch_size": 1}
    assert api["12:3"]["inputs"]["latent_image"] == ["12:5:1", 0]


def test_needed_classes_looks_inside_subgraphs_and_skips_what_does_not_execute():
    doc = subgraph_workflow([9], nested=True)
    doc["nodes"].append(node(40, "MutedCustom", mode=2))
    doc["nodes"].append(node(41, "Note", ["x"]))
    assert needed_classes(doc) == {
        "CheckpointLoaderSimple",
        "CLIPTextEncode",
        "VAEDecode",
        "SaveImage",
        "KSampler",
        "EmptyLatentImage",
    }


def test_a_subgraph_output_wired_straight_from_its_input_is_refused_by_name():
    doc = subgraph_workflow([9])
    definition = doc["definitions"]["subgraphs"][0]
    definition["links"][-1] = {
        "id": 106,
        "origin_id": -10,
        "origin_slot": 0,
        "target_id": -20,
        "target_slot": 0,
        "type": "MODEL",
    }
    with pytest.raises(UnsupportedWorkflow, match="subgraph output wired straight"):
        to_api(doc, CATALOGUE)


def test_promoted_widgets_of_a_newer_web_ui_are_refused_by_name():
    doc = subgraph_workflow([9])
    doc["nodes"][-1]["properties"] = {"proxyWidgets": [["3", "seed"]]}
    with pytest.raises(UnsupportedWorkflow, match="proxyWidgets"):
        to_api(doc, CATALOGUE)


def test_legacy_group_nodes_are_refused_by_name():
    doc = txt2img()
    doc["nodes"].append(node(60, "workflow>My group", [1, 2]))
    doc["extra"]["groupNodes"] = {"My group": {"nodes": []}}
    with pytest.raises(UnsupportedWorkflow, match="group nodes"):
        to_api(doc, CATALOGUE)


def test_widgets_the_web_ui_builds_with_code_of_its_own_are_refused_by_name():
    info = declared({"image": ["WEBCAM", {}], "width": ["INT", {}]}, name="WebcamCapture")
    doc = workflow([node(1, "WebcamCapture", ["", 640, "waiting"])], [])
    with pytest.raises(UnsupportedWorkflow, match="WebcamCapture") as caught:
        to_api(doc, catalogue(WebcamCapture=info))
    assert "WEBCAM" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Missing node classes


def test_missing_classes_are_named_with_every_node_using_them():
    doc = txt2img()
    doc["nodes"] += [
        node(70, "FancyUpscaler", [2], title="Make it big"),
        node(71, "FancyUpscaler", [4]),
        node(72, "OtherThing"),
    ]
    with pytest.raises(MissingNodeClasses) as caught:
        to_api(doc, CATALOGUE)
    assert caught.value.missing == {
        "FancyUpscaler": ["'Make it big' (#70)", "'FancyUpscaler' (#71)"],
        "OtherThing": ["'OtherThing' (#72)"],
    }
    assert str(caught.value) == (
        "the server has no node classes FancyUpscaler (used by 'Make it big' (#70), "
        "'FancyUpscaler' (#71)); OtherThing (used by 'OtherThing' (#72))"
    )


def test_missing_classes_inside_a_subgraph_carry_their_flattened_id():
    doc = subgraph_workflow([9])
    doc["definitions"]["subgraphs"][0]["nodes"][0]["type"] = "CustomSampler"
    with pytest.raises(
        MissingNodeClasses, match=r"CustomSampler \(used by 'CustomSampler' \(#12:3\)\)"
    ):
        to_api(doc, CATALOGUE)


# ---------------------------------------------------------------------------------------------
# The templates ComfyUI ships (the comfyui-workflow-templates package, 0.1.95 for ComfyUI 0.3.64)


def template(name: str) -> dict[str, Any]:
    templates = pytest.importorskip("comfyui_workflow_templates")
    path = Path(templates.__file__).parent / "templates" / f"{name}.json"
    return json.loads(path.read_text())


def test_template_default_converts_exactly():
    api = to_api(template("default"), CATALOGUE)
    expected = copy.deepcopy(TXT2IMG_API)
    expected["3"]["inputs"].update(seed=156680208700286, steps=20, cfg=8)
    expected["4"]["inputs"]["ckpt_name"] = "v1-5-pruned-emaonly-fp16.safetensors"
    expected["5"]["inputs"].update(width=512, height=512)
    expected["6"]["inputs"]["text"] = (
        "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"
    )
    expected["7"]["inputs"]["text"] = "text, watermark"
    assert api == expected


def test_template_lora_converts_exactly():
    doc = template("lora")
    api = to_api(doc, CATALOGUE)
    # The template also holds a bypassed, unconnected second LoraLoader (#13) and a note.
    assert {n["id"]: n.get("mode") for n in doc["nodes"] if n["type"] == "LoraLoader"} == {
        13: 4,
        11: 0,
    }
    positive = (
        "upperbody shot, 1girl,solo,chibi,long hairs, happy, laugh, hugging a teddy bear, looking "
        "at viewers, dancing stand, cute, soft color, flowers in background, many flowers, among "
        "flowers, best quality, highres, delicate details,"
    )
    negative = (
        "(worst quality, low quality:1.4), (bad anatomy), text, error, missing fingers, extra "
        "digit, fewer digits, cropped, jpeg artifacts, signature, watermark, username, blurry, "
        "deformed face"
    )
    expected = copy.deepcopy(TXT2IMG_API)
    expected["3"]["inputs"].update(
        seed=261660645921551,
        steps=30,
        cfg=7,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        model=["11", 0],
    )
    expected["4"]["inputs"]["ckpt_name"] = "dreamshaper_8.safetensors"
    expected["5"]["inputs"].update(width=768, height=768)
    expected["6"]["inputs"] = {"text": positive, "clip": ["11", 1]}
    expected["7"]["inputs"] = {"text": negative, "clip": ["11", 1]}
    expected["9"]["inputs"]["filename_prefix"] = "2loras_test_"
    expected["11"] = {
        "inputs": {
            "lora_name": "blindbox_v1_mix.safetensors",
            "strength_model": 0.75,
            "strength_clip": 1,
            "model": ["4", 0],
            "clip": ["4", 1],
        },
        "class_type": "LoraLoader",
        "_meta": {"title": "Load LoRA"},
    }
    assert api == expected


def links_into(api: dict[str, Any], node_id: str) -> dict[str, list[Any]]:
    return {k: v for k, v in api[node_id]["inputs"].items() if isinstance(v, list)}


def of_class(api: dict[str, Any], class_type: str) -> list[str]:
    return sorted((k for k, v in api.items() if v["class_type"] == class_type), key=int)


def test_template_lora_multiple_chains_the_loras():
    api = to_api(template("lora_multiple"), CATALOGUE)
    loras = of_class(api, "LoraLoader")
    assert len(loras) >= 2
    # Each LoRA is fed by the checkpoint or by another LoRA; the sampler reads the last one.
    sources = {links_into(api, lora)["model"][0] for lora in loras}
    checkpoint = of_class(api, "CheckpointLoaderSimple")
    assert sources <= set(loras) | set(checkpoint)
    sampler_model = links_into(api, of_class(api, "KSampler")[0])["model"][0]
    assert sampler_model in loras and sampler_model not in sources
    assert all(v["class_type"] != "MarkdownNote" for v in api.values())


def test_template_hiresfix_samples_twice_through_a_latent_upscale():
    api = to_api(template("hiresfix_latent_workflow"), CATALOGUE)
    samplers = of_class(api, "KSampler")
    assert len(samplers) == 2
    first, second = samplers
    upscale = links_into(api, second)["latent_image"][0]
    assert api[upscale]["class_type"] in ("LatentUpscale", "LatentUpscaleBy")
    assert links_into(api, upscale)["samples"] == [first, 0]
    assert api[second]["inputs"]["denoise"] < 1
    assert len(of_class(api, "SaveImage")) >= 1


def test_template_latent_upscale_with_a_different_prompt_and_model():
    api = to_api(template("latent_upscale_different_prompt_model"), CATALOGUE)
    samplers = of_class(api, "KSampler")
    assert len(of_class(api, "CheckpointLoaderSimple")) == 2
    assert len(samplers) == 2
    models = {links_into(api, s)["model"][0] for s in samplers}
    positives = {links_into(api, s)["positive"][0] for s in samplers}
    assert len(models) == 2 and len(positives) == 2


def test_template_sdxl_takes_the_primitive_nodes_values():
    doc = template("sdxl_simple_example")
    api = to_api(doc, CATALOGUE)
    primitives = [n for n in doc["nodes"] if n["type"] == "PrimitiveNode"]
    assert primitives
    links = {link[0]: link for link in doc["links"]}
    checked = 0
    for primitive in primitives:
        for link_id in primitive["outputs"][0]["links"] or []:
            target = links[link_id][3]
            name = next(i["name"] for i in api_node_inputs(doc, target) if i.get("link") == link_id)
            assert api[str(target)]["inputs"][name] == primitive["widgets_values"][0]
            checked += 1
    assert checked >= 4
    assert not {"PrimitiveNode", "Note", "MarkdownNote"} & {v["class_type"] for v in api.values()}
    assert len(of_class(api, "KSamplerAdvanced")) == 2


def api_node_inputs(doc: dict[str, Any], node_id: int) -> list[dict[str, Any]]:
    return next(n for n in doc["nodes"] if n["id"] == node_id)["inputs"]


def test_template_with_a_subgraph_is_flattened():
    doc = template("image_flux.1_fill_dev_OneReward")
    extra = json.loads((DATA / "object_info_flux_fill.json").read_text())
    instance = next(n for n in doc["nodes"] if n["id"] == 48)
    assert instance["type"] in {d["id"] for d in doc["definitions"]["subgraphs"]}
    instance["widgets_values"] = [5, 9]  # the "Grow and Blur Mask" subgraph's expand, blur_radius
    api = to_api(doc, catalogue(**extra))
    inner = sorted(k for k in api if k.startswith("48:"))
    assert inner == ["48:199", "48:251", "48:252", "48:253"]
    assert api["48:199"]["class_type"] == "GrowMask"
    assert api["48:199"]["inputs"] == {"expand": 5, "tapered_corners": True, "mask": ["17", 1]}
    assert api["48:252"]["inputs"] == {"blur_radius": 9, "sigma": 1, "image": ["48:251", 0]}
    assert api["49"]["inputs"] == {"mask": ["48:253", 0]}
    # The template's bypassed alternative branch is not sent.
    assert not any(
        doc_node["mode"] == 4 and str(doc_node["id"]) in api for doc_node in doc["nodes"]
    )


def test_template_with_a_subgraph_against_the_emulator_names_the_missing_classes():
    with pytest.raises(MissingNodeClasses) as caught:
        to_api(template("image_flux.1_fill_dev_OneReward"), CATALOGUE)
    assert caught.value.missing["GrowMask"] == ["'GrowMask' (#48:199)"]
    assert "UNETLoader" in caught.value.missing


# ---------------------------------------------------------------------------------------------
# A real ComfyUI (comfyui-peer.md): the converted templates validate, and default and lora run


REAL = os.environ.get("ASSET_GENERATOR_TEST_COMFYUI_URL", "").rstrip("/")
real_server = pytest.mark.skipif(not REAL, reason="ASSET_GENERATOR_TEST_COMFYUI_URL is not set")


def small_and_local(api: dict[str, Any], checkpoint: str, lora: str) -> dict[str, Any]:
    """The template's models replaced by the server's, 64x64, two steps, a seed of our own."""
    api = copy.deepcopy(api)
    for entry in api.values():
        inputs = entry["inputs"]
        if "ckpt_name" in inputs:
            inputs["ckpt_name"] = checkpoint
        if "lora_name" in inputs:
            inputs["lora_name"] = lora
        for key in ("width", "height"):
            if isinstance(inputs.get(key), int) and entry["class_type"] != "ImageScale":
                inputs[key] = 64
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = 2
        for key in ("start_at_step", "end_at_step"):
            if isinstance(inputs.get(key), int):
                inputs[key] = min(inputs[key], 2)
        for key in ("seed", "noise_seed"):
            if isinstance(inputs.get(key), int):
                inputs[key] = random.randrange(2**48)
    return api


@pytest.fixture(scope="module")
def comfy():
    import httpx

    with httpx.Client(base_url=REAL, timeout=30) as client:
        yield client


@real_server
@pytest.mark.parametrize(
    ("name", "run"),
    [
        ("default", True),
        ("lora", True),
        ("lora_multiple", False),
        ("hiresfix_latent_workflow", False),
        ("latent_upscale_different_prompt_model", False),
        ("sdxl_simple_example", False),
    ],
)
def test_real_comfyui_accepts_converted_templates(comfy, name, run):
    info = comfy.get("/object_info").json()
    checkpoint = comfy.get("/models/checkpoints").json()[0]
    lora = comfy.get("/models/loras").json()[0]
    api = small_and_local(to_api(template(name), info), checkpoint, lora)
    prompt_id = str(uuid.uuid4())
    answer = comfy.post(
        "/prompt", json={"prompt": api, "prompt_id": prompt_id, "client_id": str(uuid.uuid4())}
    )
    finished = False
    try:
        assert answer.status_code == 200, answer.text
        assert answer.json()["node_errors"] == {}
        if not run:
            return
        entry = wait_for_history(comfy, prompt_id, timeout=300)
        finished = True
        assert entry["status"]["status_str"] == "success", entry["status"]
        saved = [
            image
            for output in entry["outputs"].values()
            for image in output.get("images", [])
            if image.get("type") == "output"
        ]
        assert saved
    finally:
        if not finished:
            # Only what we queued: out of the queue, or interrupted by id if already running.
            comfy.post("/queue", json={"delete": [prompt_id]})
            comfy.post("/interrupt", json={"prompt_id": prompt_id})


def wait_for_history(comfy, prompt_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = comfy.get(f"/history/{prompt_id}").json()
        if prompt_id in history:
            return history[prompt_id]
        time.sleep(1)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")
