"""The node declarations the emulator serves and validates against.

``object_info.json`` is what a real ComfyUI 0.3.64 answers on ``GET /object_info`` for the
classes the emulator can run. The lists that depend on the server's disk (checkpoints, LoRAs,
VAEs, upscale models, input images) and, on request, the sampler and scheduler lists are put
in at run time, so ``/object_info`` and validation always agree with ``/models/{folder}``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from asset_generator.emulator.comfy.config import ComfyConfig

# The order a real server registers these classes in (nodes.py, then comfy_extras, then the
# custom test node), which is the order of GET /object_info.
REGISTRATION_ORDER = (
    "KSampler", "CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "VAEDecode",
    "VAEEncode", "VAELoader", "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy",
    "SaveImage", "PreviewImage", "LoadImage", "ImageScale", "ImageScaleBy", "EmptyImage",
    "ConditioningCombine", "ConditioningSetArea", "KSamplerAdvanced", "LoraLoader",
    "LoraLoaderModelOnly", "UpscaleModelLoader", "ImageUpscaleWithModel", "SlowSolidImage",
)  # fmt: skip
# Key order of a node's info: V1 classes (server.py node_info) and V3 ones (GET_NODE_INFO_V1).
V1_KEYS = (
    "input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
    "description", "python_module", "category", "output_node", "output_tooltips", "deprecated",
    "experimental", "api_node",
)  # fmt: skip
V3_KEYS = (
    "input", "input_order", "output", "output_is_list", "output_name", "output_tooltips", "name",
    "display_name", "description", "python_module", "category", "output_node", "deprecated",
    "experimental", "api_node",
)  # fmt: skip
# folder_paths.supported_pt_extensions: what GET /models/{folder} lists.
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
# GET /models: folder_paths.folder_names_and_paths keys in registration order.
MODEL_FOLDERS = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
)  # fmt: skip


def _load_captured() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("object_info.json").read_text("utf-8")
    return json.loads(text)


def _ordered(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with its keys, and its inputs, in the order the real server writes them."""
    keys = V3_KEYS if info.get("python_module", "").startswith("comfy_extras") else V1_KEYS
    out = {key: info[key] for key in keys if key in info}
    out.update((key, value) for key, value in info.items() if key not in out)
    order = info.get("input_order", {})
    inputs = info.get("input", {})
    out["input"] = {
        section: {name: inputs[section][name] for name in order.get(section, inputs[section])}
        for section in sorted(inputs, key=lambda s: list(order).index(s) if s in order else 9)
    }
    return out


class Catalog:
    """Node declarations with the run-time lists filled in."""

    def __init__(self, config: ComfyConfig, input_images: Callable[[], list[str]]) -> None:
        self.config = config
        captured = _load_captured()
        order = {name: i for i, name in enumerate(REGISTRATION_ORDER)}
        names = sorted(captured, key=lambda n: (order.get(n, len(order)), n))
        self._infos = {name: _ordered(captured[name]) for name in names}
        self._input_images = input_images

    @property
    def class_names(self) -> list[str]:
        return list(self._infos)

    def has(self, class_type: Any) -> bool:
        return isinstance(class_type, str) and class_type in self._infos

    def model_files(self, folder: str) -> list[str] | None:
        """``GET /models/{folder}``: the files of a known folder, None for an unknown one."""
        if folder not in MODEL_FOLDERS:
            return None
        names = {
            "checkpoints": self.config.checkpoints,
            "loras": self.config.loras,
            "vae": self.config.vaes,
            "upscale_models": self.config.upscale_models,
            "embeddings": self.config.embeddings,
        }.get(folder, [])
        return sorted(n for n in names if n.lower().endswith(MODEL_EXTENSIONS))

    def _combos(self) -> dict[tuple[str, str], list[str]]:
        checkpoints = self.model_files("checkpoints") or []
        loras = self.model_files("loras") or []
        combos = {
            ("CheckpointLoaderSimple", "ckpt_name"): checkpoints,
            ("LoraLoader", "lora_name"): loras,
            ("LoraLoaderModelOnly", "lora_name"): loras,
            ("VAELoader", "vae_name"): [*(self.model_files("vae") or []), "pixel_space"],
            ("UpscaleModelLoader", "model_name"): self.model_files("upscale_models") or [],
            ("LoadImage", "image"): self._input_images(),
        }
        for sampler_class in ("KSampler", "KSamplerAdvanced"):
            if self.config.samplers is not None:
                combos[(sampler_class, "sampler_name")] = list(self.config.samplers)
            if self.config.schedulers is not None:
                combos[(sampler_class, "scheduler")] = list(self.config.schedulers)
        return combos

    def info(self, class_type: str) -> dict[str, Any]:
        """What ``GET /object_info/{class}`` says of ``class_type`` (a fresh copy)."""
        info = copy.deepcopy(self._infos[class_type])
        for (owner, name), options in self._combos().items():
            if owner != class_type:
                continue
            for section in info["input"].values():
                declared = section.get(name)
                if declared is None:
                    continue
                if declared[0] == "COMBO":  # the V3 encoding: options inside the dict
                    declared[1]["options"] = list(options)
                else:  # the V1 encoding: the options are the type
                    declared[0] = list(options)
        return info

    def all_info(self) -> dict[str, Any]:
        """``GET /object_info``."""
        return {name: self.info(name) for name in self._infos}

    def input_types(self, class_type: str) -> dict[str, dict[str, Any]]:
        """``INPUT_TYPES()`` of the class: section → input name → declaration."""
        return self.info(class_type)["input"]

    def return_types(self, class_type: str) -> tuple[str, ...]:
        return tuple(self._infos[class_type]["output"])

    def is_output_node(self, class_type: str) -> bool:
        return self._infos[class_type].get("output_node") is True
