"""The emulated model folders: names, sub-types and the ``T2IModel.ToNetObject`` shape."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# Sub-types SwarmUI registers (src/Core/Program.cs); "Wildcards" is a pseudo-type of ListModels.
SUBTYPES = ("Stable-Diffusion", "VAE", "LoRA", "Embedding", "ControlNet", "Clip", "ClipVision")
SORT_MODES = ("Name", "Title", "DateCreated", "DateModified")

_SDXL = ("stable-diffusion-xl-v1-base", "Stable Diffusion XL 1.0-Base", "stable-diffusion-xl-v1")
_SD1 = ("stable-diffusion-v1", "Stable Diffusion v1", "stable-diffusion-v1")
# substring of the file name → (architecture id, class display name, compat class), side
_ARCHITECTURES = [
    ("sd_xl", _SDXL, 1024),
    ("sdxl", _SDXL, 1024),
    ("flux", ("Flux.1-dev", "Flux.1 Dev", "flux-1"), 1024),
    ("v1-5", _SD1, 512),
    ("sd15", _SD1, 512),
]


@dataclass(frozen=True)
class Model:
    """One model file as the emulator lists it."""

    name: str
    subtype: str
    time_created: int
    time_modified: int

    @property
    def title(self) -> str:
        base = self.name.rsplit("/", 1)[-1]
        return base[: -len(".safetensors")] if base.endswith(".safetensors") else base

    def architecture(self) -> tuple[str | None, str | None, str | None, int]:
        lowered = self.name.lower()
        for needle, (arch, display, compat), side in _ARCHITECTURES:
            if needle in lowered:
                if self.subtype == "LoRA":
                    return f"{arch}/lora", f"{display} LoRA", compat, side
                return arch, display, compat, side
        return None, None, None, 0

    def to_net(self, loaded: bool) -> dict[str, Any]:
        """The field set of ``T2IModel.ToNetObject`` (src/Text2Image/T2IModel.cs)."""
        arch, display, compat, side = self.architecture()
        return {
            "name": self.name,
            "title": self.title,
            "author": None,
            "description": "",
            "preview_image": "imgs/model_placeholder.jpg",
            "loaded": loaded,
            "architecture": arch,
            "class": display,
            "compat_class": compat,
            "resolution": f"{side}x{side}",
            "standard_width": side,
            "standard_height": side,
            "license": None,
            "date": None,
            "prediction_type": None,
            "usage_hint": None,
            "trigger_phrase": None,
            "merged_from": None,
            "tags": None,
            "is_supported_model_format": True,
            "is_negative_embedding": False,
            "lora_default_weight": "",
            "lora_default_confinement": "",
            "local": True,
            "time_created": self.time_created,
            "time_modified": self.time_modified,
            "hash": "",
            "hash_sha256": "",
            "special_format": "",
        }


class ModelCatalog:
    """Model names per sub-type, fixed for the life of the emulator."""

    def __init__(self, models: list[str], loras: list[str]) -> None:
        now = int(time.time())
        self._by_subtype: dict[str, list[Model]] = {subtype: [] for subtype in SUBTYPES}
        for subtype, names in (("Stable-Diffusion", models), ("LoRA", loras)):
            for index, name in enumerate(names):
                # Distinct, stable times so date sorts are deterministic: first listed = oldest.
                stamp = now - 86400 * (len(names) - index)
                self._by_subtype[subtype].append(Model(name, subtype, stamp, stamp + 60))

    def names(self, subtype: str) -> list[str]:
        """Every model name of a sub-type (``[]`` for an empty or unknown sub-type)."""
        return [model.name for model in self._by_subtype.get(subtype, [])]

    def models(self, subtype: str) -> list[Model]:
        return list(self._by_subtype.get(subtype, []))

    def find(self, subtype: str, name: str) -> Model | None:
        """Exact lookup by name, with or without ``.safetensors`` (as ``DescribeModel``)."""
        for model in self._by_subtype.get(subtype, []):
            if model.name in (name, name + ".safetensors"):
                return model
        return None

    @property
    def default_model(self) -> str | None:
        names = self.names("Stable-Diffusion")
        return names[0] if names else None
