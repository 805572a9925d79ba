"""Generation request bodies: only what the user set, in the shape SwarmUI reads.

SwarmUI normalises parameter names by lower-casing and dropping every non-letter
(``T2IParamTypes.CleanTypeName``), so ``cfg_scale``, ``CFGScale`` and ``cfgscale`` are one
parameter; we compare names the same way when deciding which source wins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from asset_generator.server.types import Lora, Request, parse_assignment, typed_value

_NOT_LETTERS = re.compile(r"[^a-z]")

# `generate image` options that are SwarmUI parameters: config name → the id SwarmUI reads.
# pipeline and the MCP tools pass on subsets of these.
OPTION_PARAMETERS = {
    "negative_prompt": "negativeprompt",
    "model": "model",
    "width": "width",
    "height": "height",
    "steps": "steps",
    "cfg_scale": "cfgscale",
    "seed": "seed",
    "sampler": "sampler",
    "scheduler": "scheduler",
    "images": "images",
}


def clean_name(name: str) -> str:
    """SwarmUI's parameter-name normalisation: lower-case letters only."""
    return _NOT_LETTERS.sub("", name.lower())


def parse_param_value(text: str) -> Any:
    """Type a ``--param KEY=VALUE`` value (``server.types.typed_value``)."""
    return typed_value(text)


def parse_param(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (key, typed value); raises ValueError on a malformed item."""
    key, value = parse_assignment(item)
    if not clean_name(key):
        raise ValueError(f"{item!r} is not KEY=VALUE")
    return key, value


def parse_lora(item: str) -> tuple[str, str]:
    """``NAME[:WEIGHT]`` → (name, weight text); ValueError for a name SwarmUI cannot take."""
    lora = Lora.parse(item)
    return check_lora_name(lora.name), lora.weight


def refuse_unsendable_loras(request: Request) -> None:
    """RequestError (exit 2) for a LoRA name SwarmUI cannot receive; nothing is sent."""
    from asset_generator.server.errors import RequestError

    for lora in request.loras:
        try:
            check_lora_name(lora.name)
        except ValueError as exc:
            raise RequestError(f"Invalid value for '--lora': {exc}", "--lora") from None


def check_lora_name(name: str) -> str:
    """The name, or ValueError if it holds a comma.

    SwarmUI splits a LoRA list on commas whenever the text lacks its own list separator
    (T2IAPI.cs:216, T2IParamTypes.cs:1080, T2IParamSet.cs:208), and the name passes through
    that split more than once, so no spelling of the request keeps such a name whole.
    """
    if "," in name:
        raise ValueError(
            f"LoRA name {name!r} contains a comma, which SwarmUI cannot take: it splits "
            "LoRA lists on commas, so the server would look for other LoRAs; rename the "
            "file on the server"
        )
    return name


def build_request(request: Request) -> dict[str, Any]:
    """One T2I body: config defaults < ``--param`` < explicit options (protocol §4.2).

    Unset options are not sent, so the model's own defaults apply. ``images`` is a required
    route argument (protocol §4.2), so it is always present.
    """
    body: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        cleaned = clean_name(key)
        for existing in [k for k in body if clean_name(k) == cleaned]:
            del body[existing]
        body[key] = value

    for name, swarm_id in OPTION_PARAMETERS.items():
        value = request.defaults.get(name)
        if value is not None:
            put(swarm_id, value)
    for key, value in request.params:
        put(key, value)
    for name, value in request.given().items():
        put(OPTION_PARAMETERS[name], value)
    put("prompt", request.prompt or "")
    if request.loras:
        # JSON arrays are joined with "\n|||\n" server-side (names with commas are refused).
        put("loras", [lora.name for lora in request.loras])
        put("loraweights", [lora.weight for lora in request.loras])
    if request.no_save:
        put("donotsave", True)
    # ``images`` is read as a route argument by its exact, case-sensitive key (protocol §1.6).
    counts = [k for k in body if clean_name(k) == "images"]
    body["images"] = body.pop(counts[-1]) if counts else 1
    return body


def expected_outputs(body: Mapping[str, Any]) -> int:
    """Images the request should produce: images × batchsize (protocol §4.3)."""
    values = {clean_name(k): v for k, v in body.items()}
    try:
        return max(1, int(values.get("images", 1))) * max(1, int(values.get("batchsize", 1)))
    except (TypeError, ValueError):
        return 1
