"""The seam between the commands and the servers: one interface, one adapter per server type.

Nothing here imports httpx or click. The commands speak ``types.Request`` and read
``types.Event``; each adapter (``swarm.server``, ``comfy.server``) translates them into its own
protocol. ``SERVER_TYPES`` names the adapters without importing them, so ``--help``, Tab
completion and an idle ``cancel`` load none.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerType:
    """What the commands may know of a server type without importing its adapter."""

    name: str
    # How messages name it: "SwarmUI", "ComfyUI".
    label: str
    # module:class of the adapter.
    adapter: str
    # The model kinds `models list` caches names under, for --model and --lora completion.
    model_kind: str
    lora_kind: str
    # module:function reading the seed a saved image of this server records (no network).
    seed_reader: str
    # A pipeline's default --parallel when the type fixes it (ComfyUI: 2 prompts in its one
    # queue); None when the server is asked (SwarmUI: its backends).
    parallel: int | None = None


SERVER_TYPES: dict[str, ServerType] = {
    "swarmui": ServerType(
        "swarmui",
        "SwarmUI",
        "asset_generator.swarm.server:SwarmServer",
        "Stable-Diffusion",
        "LoRA",
        "asset_generator.swarm.metadata:seed_of_file",
    ),
    "comfyui": ServerType(
        "comfyui",
        "ComfyUI",
        "asset_generator.comfy.server:ComfyServer",
        "checkpoints",
        "loras",
        "asset_generator.comfy.metadata:seed_of_file",
        parallel=2,
    ),
}
# The order `--server-type auto` asks in: SwarmUI's GetNewSession first, because on SwarmUI
# it is the very request the command needs next (its session is kept), and ComfyUI answers it
# with a bare 405 at once.
PROBE_ORDER = ("swarmui", "comfyui")
# A server that cannot be asked (down, refused) is taken for the historical default.
DEFAULT_TYPE = "swarmui"


def load(reference: str) -> object:
    """The object a ``module:name`` reference of SERVER_TYPES names, imported on first use."""
    import importlib

    module_name, _, name = reference.partition(":")
    return getattr(importlib.import_module(module_name), name)
