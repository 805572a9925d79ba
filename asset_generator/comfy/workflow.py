"""ComfyUI workflows in the API format: the built-in graph, options placed by meaning, ``--set``.

An API-format workflow maps node ids to ``{"class_type", "inputs"}``; an input is a literal or a
link ``[node_id, output_index]`` (comfyui-protocol.md §3). The options of ``generate image`` find
their node by what it does, not by its id: ``--prompt`` is the ``text`` of the encoder whose
output reaches a sampler's ``positive`` input, ``--width`` the latent source's, ``--model`` the
checkpoint loader's. No place, or two, is a RequestError naming the option and ``--set``. Pure: no
network.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from asset_generator.server.errors import RequestError
from asset_generator.server.types import Lora, SetInput

Graph = dict[str, dict[str, Any]]

# What the built-in text-to-image graph uses for what the user does not set (protocol §10,
# ComfyUI's own default workflow).
BUILTIN_DEFAULTS: dict[str, Any] = {
    "width": 512,
    "height": 512,
    "steps": 20,
    "cfg_scale": 7.0,
    "sampler": "euler",
    "scheduler": "normal",
    "negative_prompt": "",
}
FILENAME_PREFIX = "asset-generator"
# A seed as ComfyUI takes it: INT 0 … 2^64 − 1 (KSampler's declaration, protocol §8).
MAX_SEED = 2**64 - 1

# Which input of a sampler each option sets (KSamplerAdvanced calls the seed noise_seed).
SAMPLER_INPUTS = {
    "seed": ("seed", "noise_seed"),
    "steps": ("steps",),
    "cfg_scale": ("cfg",),
    "sampler": ("sampler_name",),
    "scheduler": ("scheduler",),
}
FLAGS = {
    "prompt": "--prompt",
    "negative_prompt": "--negative-prompt",
    "model": "--model",
    "width": "--width",
    "height": "--height",
    "steps": "--steps",
    "cfg_scale": "--cfg-scale",
    "seed": "--seed",
    "sampler": "--sampler",
    "scheduler": "--scheduler",
    "lora": "--lora",
    "images": "--images",
}


class WorkflowShapeError(Exception):
    """A document that is not an API-format workflow (exit 1, ``file_error``)."""


def is_link(value: Any) -> bool:
    """An input that is a link ``[node_id, output_index]`` rather than a literal."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def check_api_format(document: Mapping[str, Any], where: str) -> Graph:
    """The document as an API graph; WorkflowShapeError naming what is wrong."""
    if not document:
        raise WorkflowShapeError(f"{where} has no nodes")
    graph: Graph = {}
    for node_id, node in document.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowShapeError(
                f"{where} is not a ComfyUI workflow in the API format: node {node_id!r} has "
                "no class_type (in ComfyUI: Workflow → Export (API))"
            )
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise WorkflowShapeError(f"{where}: the inputs of node {node_id!r} are not an object")
        graph[str(node_id)] = {**node, "inputs": dict(inputs)}
    return graph


def builtin_graph(model: str, prompt: str) -> Graph:
    """ComfyUI's default text-to-image workflow (protocol §10), before options are placed."""
    d = BUILTIN_DEFAULTS
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": d["negative_prompt"], "clip": ["4", 1]},
        },
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": d["width"], "height": d["height"], "batch_size": 1},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 0,
                "steps": d["steps"],
                "cfg": d["cfg_scale"],
                "sampler_name": d["sampler"],
                "scheduler": d["scheduler"],
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": FILENAME_PREFIX, "images": ["8", 0]},
        },
    }


@dataclass
class Place:
    """Where one option goes: these nodes' ``input`` (one node, when the option is usable)."""

    option: str
    input: str
    nodes: list[str] = field(default_factory=list)
    # Why there is no place, for the message.
    missing: str = ""


@dataclass
class Places:
    """Where every option of ``generate image`` would go in one graph."""

    samplers: list[str]
    options: dict[str, Place]
    checkpoint: list[str]
    # The latent source's batch size (images per prompt), when there is one source.
    batch: int = 1

    def node_of(self, option: str, flag: str | None = None) -> str:
        """The one node ``option`` sets; RequestError when there is none or more than one,
        naming ``flag`` (the option the user gave, when it needs another's place)."""
        place = self.options[option]
        flag = flag or FLAGS[option]
        if len(place.nodes) == 1:
            return place.nodes[0]
        if not place.nodes:
            raise RequestError(
                f"{flag}: this workflow has no place for it ({place.missing}); "
                "set the input you mean with --set NODE.INPUT=VALUE",
                flag,
            )
        shown = ", ".join(place.nodes)
        raise RequestError(
            f"{flag}: this workflow has {len(place.nodes)} places for it (nodes {shown}); "
            "choose with --set NODE.INPUT=VALUE",
            flag,
        )


def find_places(graph: Graph) -> Places:
    """Where each option would go in ``graph``, by what the nodes do."""
    samplers = [
        node_id
        for node_id, node in graph.items()
        if is_link(node["inputs"].get("positive")) and is_link(node["inputs"].get("negative"))
    ]
    places: dict[str, Place] = {}
    for option, names in SAMPLER_INPUTS.items():
        nodes = [
            node_id for node_id in samplers if any(_literal(graph[node_id], name) for name in names)
        ]
        name = next(
            (n for n in names for node_id in nodes if _literal(graph[node_id], n)), names[0]
        )
        places[option] = Place(option, name, nodes, missing=f"no sampler with a {names[0]} input")
    for option, link in (("prompt", "positive"), ("negative_prompt", "negative")):
        nodes = _sources(graph, [graph[s]["inputs"][link] for s in samplers], "text")
        places[option] = Place(
            option, "text", nodes, missing=f"no text encoder reaching a sampler's {link}"
        )
    latent_links = [
        graph[s]["inputs"]["latent_image"]
        for s in samplers
        if is_link(graph[s]["inputs"].get("latent_image"))
    ]
    latent = _sources(graph, latent_links, "batch_size", also=("width", "height"))
    for option in ("width", "height"):
        places[option] = Place(option, option, list(latent), missing="no empty latent image")
    checkpoint = [n for n, node in graph.items() if _literal(node, "ckpt_name")]
    places["model"] = Place(
        "model", "ckpt_name", checkpoint, missing="no checkpoint loader with a ckpt_name input"
    )
    batch = 1
    if len(latent) == 1:
        value = graph[latent[0]]["inputs"].get("batch_size")
        batch = value if isinstance(value, int) and not isinstance(value, bool) else 1
    return Places(samplers, places, checkpoint, max(batch, 1))


def _literal(node: Mapping[str, Any], name: str) -> bool:
    inputs = node.get("inputs", {})
    return name in inputs and not is_link(inputs[name])


def _sources(
    graph: Graph, links: Iterable[Any], wanted: str, *, also: tuple[str, ...] = ()
) -> list[str]:
    """The nodes with a literal ``wanted`` (and ``also``) input that ``links`` reach, walking
    back through the nodes in between (conditioning combiners, upscalers, reroutes)."""
    found: list[str] = []
    seen: set[str] = set()
    stack = [link[0] for link in links if is_link(link)]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in graph:
            continue
        seen.add(node_id)
        node = graph[node_id]
        if _literal(node, wanted) and all(_literal(node, name) for name in also):
            if node_id not in found:
                found.append(node_id)
            continue
        stack.extend(value[0] for value in node["inputs"].values() if is_link(value))
    return sorted(found, key=_id_order)


def _id_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def place_options(graph: Graph, values: Mapping[str, Any]) -> Places:
    """Set ``values`` (option name → value; None is left alone) where they belong, in place."""
    places = find_places(graph)
    for option, value in values.items():
        if value is None:
            continue
        place = places.options[option]
        node_id = places.node_of(option)
        node = graph[node_id]
        name = next(
            (n for n in SAMPLER_INPUTS.get(option, (place.input,)) if _literal(node, n)),
            place.input,
        )
        node["inputs"][name] = value
    return places


def insert_loras(graph: Graph, loras: Iterable[Lora], places: Places) -> None:
    """A LoraLoader per LoRA, chained after the checkpoint loader (weight for model and clip);
    everything that used the loader's MODEL and CLIP uses the last LoRA's (protocol §10)."""
    loras = list(loras)
    if not loras:
        return
    if len(places.checkpoint) != 1:
        places.node_of("model", "--lora")  # raises: the loader is missing or doubled
    loader = places.checkpoint[0]
    consumers = [
        (node_id, name, value)
        for node_id, node in graph.items()
        for name, value in node["inputs"].items()
        if is_link(value) and value[0] == loader and value[1] in (0, 1)
    ]
    model, clip = [loader, 0], [loader, 1]
    next_id = max((int(n) for n in graph if n.isdigit()), default=0) + 1
    for lora in loras:
        node_id = str(next_id)
        next_id += 1
        graph[node_id] = {
            "class_type": "LoraLoader",
            "inputs": {
                "lora_name": lora.name,
                "strength_model": lora.strength,
                "strength_clip": lora.strength,
                "model": model,
                "clip": clip,
            },
            "_meta": {"title": f"LoRA {lora.name}"},
        }
        model, clip = [node_id, 0], [node_id, 1]
    for node_id, name, value in consumers:
        graph[node_id]["inputs"][name] = list(model if value[1] == 0 else clip)


def find_node(graph: Graph, name: str) -> str:
    """A node by id, title (``_meta.title``) or class_type; RequestError unless exactly one."""
    if name in graph:
        return name
    for what, key in (("title", lambda n: n.get("_meta", {}).get("title")), ("class", None)):
        if key is None:
            matches = [i for i, node in graph.items() if node["class_type"] == name]
        else:
            matches = [i for i, node in graph.items() if key(node) == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise RequestError(
                f"--set {name}: {len(matches)} nodes have that {what} "
                f"({', '.join(sorted(matches, key=_id_order))}); use a node id",
                "--set",
            )
    known = ", ".join(f"{i} ({_label(graph[i])})" for i in sorted(graph, key=_id_order))
    raise RequestError(
        f"--set {name}: no node with that id, title or class; nodes: {known}", "--set"
    )


def _label(node: Mapping[str, Any]) -> str:
    title = node.get("_meta", {}).get("title")
    return (
        f"{node['class_type']} {title!r}"
        if title and title != node["class_type"]
        else (node["class_type"])
    )


def apply_sets(
    graph: Graph,
    sets: Iterable[SetInput],
    declared: Callable[[str], Collection[str]] = lambda class_type: (),
) -> None:
    """``--set NODE.INPUT=VALUE``, in order (each wins over the options and earlier sets).

    An input the workflow leaves out (an optional one, say) can be set when ``declared``
    (the server's inputs of a node class) has it.
    """
    for item in sets:
        node_id = find_node(graph, item.node)
        node = graph[node_id]
        inputs = node["inputs"]
        if item.input not in inputs and item.input not in declared(node["class_type"]):
            names = ", ".join(sorted(set(inputs) | set(declared(node["class_type"])))) or "none"
            raise RequestError(
                f"--set {item.text}: node {node_id} ({_label(node)}) has no input "
                f"{item.input!r}; its inputs: {names}",
                "--set",
            )
        if is_link(inputs.get(item.input)):
            raise RequestError(
                f"--set {item.text}: input {item.input!r} of node {node_id} ({_label(node)}) "
                f"is a link from node {inputs[item.input][0]}; --set replaces values, not links",
                "--set",
            )
        inputs[item.input] = item.value


def seed_set(graph: Graph, places: Places, sets: Iterable[SetInput]) -> int | None:
    """The seed the last ``--set`` gave the one sampler, if any: it wins over ``--seed``, and
    ``-n`` counts up from it."""
    nodes = places.options["seed"].nodes
    if len(nodes) != 1:
        return None
    found = None
    for item in sets:
        value = item.value
        if (
            item.input in SAMPLER_INPUTS["seed"]
            and isinstance(value, int)
            and not isinstance(value, bool)
            and find_node(graph, item.node) == nodes[0]
        ):
            found = value
    return found


def with_seed(graph: Graph, places: Places, seed: int) -> Graph:
    """A copy of ``graph`` whose one sampler seed is ``seed``."""
    copied = copy.deepcopy(graph)
    node_id = places.node_of("seed")
    node = copied[node_id]
    name = next((n for n in SAMPLER_INPUTS["seed"] if _literal(node, n)), "seed")
    node["inputs"][name] = seed
    return copied


def seed_in(graph: Graph, places: Places) -> int | None:
    """The seed the graph's one sampler holds, if it holds an integer."""
    if len(places.options["seed"].nodes) != 1:
        return None
    node = graph[places.options["seed"].nodes[0]]
    for name in SAMPLER_INPUTS["seed"]:
        value = node["inputs"].get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def describe_places(graph: Graph, places: Places) -> dict[str, Any]:
    """Which node each option would set (for `workflow show`): id, class, title, input."""
    shown: dict[str, Any] = {}
    for option, place in places.options.items():
        nodes = [
            {
                "id": node_id,
                "class_type": graph[node_id]["class_type"],
                "title": graph[node_id].get("_meta", {}).get("title"),
                "input": next(
                    (
                        n
                        for n in SAMPLER_INPUTS.get(option, (place.input,))
                        if _literal(graph[node_id], n)
                    ),
                    place.input,
                ),
            }
            for node_id in place.nodes
        ]
        shown[FLAGS[option]] = {
            "nodes": nodes,
            "usable": len(nodes) == 1,
            "why": ""
            if len(nodes) == 1
            else (place.missing if not nodes else "more than one place"),
        }
    return shown
