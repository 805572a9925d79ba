"""Value coercion as SwarmUI does it: route arguments and generation parameters.

Route arguments follow ``src/WebAPI/APICallReflectBuilder.cs`` (stringify the JSON token, then
``TryParse``); generation parameters follow ``T2IParamTypes.ApplyParameter``/``ValidateParam``
(``src/Text2Image/T2IParamTypes.cs``). Error texts are copied from those files.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
LIST_SEPARATOR = "\n|||\n"
_INTEGER_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")
_DECIMAL_TEXT = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


class ParamError(Exception):
    """A readable parameter error; its text is sent to the client as ``{"error": text}``."""


class UnreadableParamError(Exception):
    """A non-readable failure while parsing parameters (HTTP 400 ``internal_error``)."""


def dotnet_double(value: float) -> str:
    """Format a float like .NET's ``double.ToString()`` (shortest round-trip, ``E+`` exponent)."""
    value = float(value)
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        sign = "-" if exponent.startswith("-") else "+"
        text = f"{mantissa}E{sign}{exponent.lstrip('+-').zfill(2)}"
    return text


def token_text(value: Any) -> str:
    """A JSON value as Newtonsoft's ``JToken.ToString()`` renders it (``$"{token}"``)."""
    if value is None:
        return ""
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return dotnet_double(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False)


# -- route arguments ---------------------------------------------------------------------------

REQUIRED = object()


@dataclass(frozen=True)
class Arg:
    """One declared C# route parameter: exact JSON key, .NET type name, default."""

    name: str
    kind: str  # "Int32" | "Int64" | "Boolean" | "Double" | "Single" | "String"
    default: Any = REQUIRED


def _parse_int(text: str, bounds: tuple[int, int]) -> int | None:
    if not _INTEGER_TEXT.match(text):
        return None
    number = int(text)
    return number if bounds[0] <= number <= bounds[1] else None


def coerce_arg(arg: Arg, body: dict[str, Any]) -> tuple[str | None, Any]:
    """``(error, value)`` for one route argument, as ``APICallReflectBuilder.BuildFor`` does."""
    if arg.name not in body:
        if arg.default is REQUIRED:
            return f"Missing required parameter '{arg.name}'", None
        return None, arg.default
    raw = body[arg.name]
    text = token_text(raw)
    value: Any = None
    if arg.kind == "String":
        value = text
    elif arg.kind == "Int32":
        value = _parse_int(text, INT32)
    elif arg.kind == "Int64":
        value = _parse_int(text, INT64)
    elif arg.kind in ("Double", "Single"):
        value = float(text) if _DECIMAL_TEXT.match(text) else None
    elif arg.kind == "Boolean":
        lowered = text.strip().lower()
        value = {"true": True, "false": False}.get(lowered)
    if value is None:
        return f"Invalid value '{text}' for parameter '{arg.name}', must be type '{arg.kind}'", None
    return None, value


# -- generation parameters ---------------------------------------------------------------------


def clean_type_name(name: str) -> str:
    """``T2IParamTypes.CleanTypeName``: lower-case, keep only ``a``–``z``."""
    return "".join(c for c in name.lower().strip() if "a" <= c <= "z")


def clean_name_generic(name: str) -> str:
    return name.lower().replace(" ", "").replace("[", "").replace("]", "").strip()


def clean_model_name(name: str) -> str:
    return name[: -len(".safetensors")] if name.endswith(".safetensors") else name


def best_in_list(
    name: str, candidates: Iterable[str], clean: Callable[[str], str] = clean_name_generic
) -> str | None:
    """``GetBestInList``: exact (cleaned) match, else the shortest candidate containing it."""
    wanted = clean(name)
    backup: str | None = None
    best_len = 999
    for candidate in candidates:
        cleaned = clean(candidate)
        if cleaned == wanted:
            return candidate
        if wanted in cleaned and len(cleaned) < best_len:
            backup, best_len = candidate, len(cleaned)
    return backup


def best_model_in_list(name: str, candidates: Iterable[str]) -> str | None:
    """``GetBestModelInList``: like best_in_list, ignoring a trailing ``.safetensors``."""
    return best_in_list(name, candidates, lambda s: clean_name_generic(clean_model_name(s)))


def _words(text: str) -> list[str]:
    return text.split()


SAMPLERS = _words(
    "euler euler_ancestral heun heunpp2 dpm_2 dpm_2_ancestral lms dpm_fast dpm_adaptive "
    "dpmpp_2s_ancestral dpmpp_sde dpmpp_sde_gpu dpmpp_2m dpmpp_2m_sde dpmpp_2m_sde_gpu "
    "dpmpp_3m_sde dpmpp_3m_sde_gpu ddim ddpm lcm uni_pc uni_pc_bh2 res_multistep "
    "res_multistep_ancestral ipndm ipndm_v deis gradient_estimation er_sde seeds_2 seeds_3 "
    "sa_solver sa_solver_pece euler_cfg_pp euler_ancestral_cfg_pp dpmpp_2m_cfg_pp"
)
SCHEDULERS = _words(
    "normal karras exponential simple ddim_uniform sgm_uniform turbo align_your_steps beta "
    "linear_quadratic ltxv kl_optimal"
)
ASPECT_RATIOS = _words("1:1 4:3 3:2 8:5 16:9 21:9 3:4 2:3 5:8 9:16 9:21 Custom")
IMAGE_FORMATS = ["PNG", "JPG", "WEBP_LOSSLESS", "WEBP"]


@dataclass(frozen=True)
class ParamType:
    """A registered generation parameter (subset of ``T2IParamTypes.RegisterDefaults``)."""

    name: str
    kind: str  # integer | decimal | boolean | text | dropdown | list | model | image
    default: str = ""
    ignore_if: str | None = None
    min: float = 0
    max: float = 0
    permission: str | None = None
    values: Callable[[Any], list[str]] | None = None
    subtype: str | None = None
    feature_flag: str | None = None

    @property
    def id(self) -> str:
        return clean_type_name(self.name)


def _fixed(values: list[str]) -> Callable[[Any], list[str]]:
    return lambda _catalog: values


PARAM_TYPES: dict[str, ParamType] = {
    p.id: p
    for p in [
        ParamType("Prompt", "text"),
        ParamType("Negative Prompt", "text", ignore_if=""),
        ParamType("Images", "integer", "1", ignore_if="1", min=1, max=10000),
        ParamType("Seed", "integer", "-1", min=-1, max=float(2**63 - 1)),
        ParamType("Steps", "integer", "20", min=0, max=500),
        ParamType("CFG Scale", "decimal", "7", min=0, max=100),
        ParamType("Aspect Ratio", "dropdown", "1:1", values=_fixed(ASPECT_RATIOS)),
        ParamType("Width", "integer", "512", min=64, max=16384),
        ParamType("Height", "integer", "512", min=64, max=16384),
        ParamType("Side Length", "integer", "1024", min=64, max=16384),
        ParamType("Raw Resolution", "text", "1024x1024"),
        ParamType("Batch Size", "integer", "1", ignore_if="1", min=1, max=100),
        ParamType("Sampler", "dropdown", "euler", values=_fixed(SAMPLERS), feature_flag="comfyui"),
        ParamType(
            "Scheduler", "dropdown", "normal", values=_fixed(SCHEDULERS), feature_flag="comfyui"
        ),
        ParamType("Model", "model", permission="model_params", subtype="Stable-Diffusion"),
        ParamType(
            "VAE", "model", "None", ignore_if="None", permission="model_params", subtype="VAE"
        ),
        ParamType(
            "LoRAs",
            "list",
            ignore_if="",
            values=lambda catalog: [clean_model_name(n) for n in catalog.names("LoRA")],
            subtype="LoRA",
        ),
        ParamType("LoRA Weights", "list", ignore_if="", min=-10, max=10),
        ParamType("Init Image", "image"),
        ParamType("Mask Image", "image"),
        ParamType("Init Image Creativity", "decimal", "0.6", min=0, max=1),
        ParamType("Variation Seed", "integer", "-1", min=-1, max=float(2**63 - 1)),
        ParamType("Variation Seed Strength", "decimal", "0", min=0, max=1),
        ParamType("Do Not Save", "boolean", "false", ignore_if="false"),
        ParamType("Do Not Save Intermediates", "boolean", "false", ignore_if="false"),
        ParamType("Output Intermediate Images", "boolean", "false", ignore_if="false"),
        ParamType("No Previews", "boolean", "false", ignore_if="false"),
        ParamType("No Seed Increment", "boolean", "false", ignore_if="false"),
        ParamType("Continue After Errors", "boolean", "false", ignore_if="false"),
        ParamType("Image Format", "dropdown", "PNG", values=_fixed(IMAGE_FORMATS)),
        ParamType("Forward Raw Backend Data", "boolean", "false", ignore_if="false"),
        ParamType("Forward Swarm Data", "boolean", "false", ignore_if="false"),
        ParamType("Personal Note", "text", ignore_if=""),
        ParamType("Wildcard Seed", "integer", "-1", min=-1, max=float(2**31 - 1)),
        ParamType("CLIP Stop At Layer", "integer", "-1", min=-24, max=-1),
    ]
}
# Retired ids SwarmUI still accepts (T2IParamTypes.ParameterRemaps).
PARAM_REMAPS = {"saveintermediateimages": "outputintermediateimages"}


def param_type_for(key: str) -> ParamType | None:
    """The parameter a request key names after SwarmUI's name normalisation, if any."""
    cleaned = clean_type_name(key)
    found = PARAM_TYPES.get(cleaned)
    if found is None and cleaned in PARAM_REMAPS:
        found = PARAM_TYPES.get(PARAM_REMAPS[cleaned])
    return found


_BASE64 = re.compile(r"^[A-Za-z0-9+/=]+$")


def validate_param(ptype: ParamType, text: str, catalog: Any) -> str:
    """``ValidateParam``: the normalised text value, or ParamError with SwarmUI's detail text."""
    name, original = ptype.name, text
    if ptype.kind == "integer":
        number = _parse_int(text, INT64)
        if number is None:
            raise ParamError(
                f"Invalid integer value for param {name} - '{original}' - must be a valid "
                "integer (eg '0', '3', '-5', etc)"
            )
        if (ptype.min != 0 or ptype.max != 0) and not ptype.min <= number <= ptype.max:
            raise ParamError(
                f"Invalid integer value for param {name} - '{original}' - must be between "
                f"{dotnet_double(ptype.min)} and {dotnet_double(ptype.max)}"
            )
        return str(number)
    if ptype.kind == "decimal":
        if not _DECIMAL_TEXT.match(text):
            raise ParamError(
                f"Invalid decimal value for param {name} - '{original}' - must be a valid "
                "decimal (eg '0.0', '3.5', '-5.2', etc)"
            )
        decimal = float(text)
        if (ptype.min != 0 or ptype.max != 0) and not ptype.min <= decimal <= ptype.max:
            raise ParamError(
                f"Invalid decimal value for param {name} - '{original}' - must be between "
                f"{dotnet_double(ptype.min)} and {dotnet_double(ptype.max)}"
            )
        return dotnet_double(decimal)
    if ptype.kind == "boolean":
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise ParamError(
                f"Invalid boolean value for param {name} - '{original}' - must be exactly "
                "'true' or 'false'"
            )
        return lowered
    if ptype.kind in ("text", "dropdown"):
        if ptype.values is None:
            return text
        options = ptype.values(catalog)
        found = best_in_list(text, options)
        if found is None:
            raise ParamError(
                f"Invalid value for param {name} - '{original}' - must be one of: "
                f"`{'`, `'.join(options)}`"
            )
        return found
    if ptype.kind == "list":
        splitter = LIST_SEPARATOR if LIST_SEPARATOR in text else ","
        items = [item.strip() for item in text.split(splitter) if item.strip()]
        if not items:
            return ""
        if ptype.values is None:
            return text
        options = ptype.values(catalog)
        resolved = []
        for item in items:
            match = best_in_list(item, options) or best_model_in_list(
                clean_model_name(item), options
            )
            if match is None:
                if len(options) < 10:
                    detail = f"must be one of: `{'`, `'.join(options)}`"
                else:
                    detail = "option does not exist. Has it been deleted?"
                raise ParamError(f"Invalid value for param {name} - '{original}' - {detail}")
            resolved.append(match)
        return LIST_SEPARATOR.join(resolved)
    if ptype.kind == "image":
        value = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
        if not value.strip():
            return ""
        if value.startswith(("inputs/", "raw/", "Starred/")):
            return text
        if len(value) < 10 or not _BASE64.match(value):
            short = value[:10] + "..." if len(value) > 10 else value
            raise ParamError(
                f"Invalid IMAGE value for param {name} - '{original}' - must be a valid base64 "
                f"string - got '{short}'"
            )
        return text
    if ptype.kind == "model":
        match = best_model_in_list(text, catalog.names(ptype.subtype or "Stable-Diffusion"))
        if match is None:
            raise ParamError(
                f"Invalid model value for param {name} - '{original}' - are you sure that model "
                "name is correct?"
            )
        return match
    return text


@dataclass
class GenParams:
    """Parsed generation parameters: ``values`` keyed by parameter id, as validated text."""

    values: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def get_int(self, key: str, default: int) -> int:
        return int(self.values[key]) if key in self.values else default

    def get_float(self, key: str, default: float) -> float:
        return float(self.values[key]) if key in self.values else default

    def get_bool(self, key: str) -> bool:
        return self.values.get(key) == "true"

    def get_list(self, key: str) -> list[str]:
        text = self.values.get(key, "")
        splitter = LIST_SEPARATOR if LIST_SEPARATOR in text else ","
        return [item.strip() for item in text.split(splitter) if item.strip()]


def parse_generation_params(
    raw: dict[str, Any], has_permission: Callable[[str], bool], catalog: Any
) -> GenParams:
    """``T2IAPI.RequestToParams``: normalise keys, drop unknown ones, validate the rest."""
    params = GenParams()
    for key, value in raw.items():
        if key in ("session_id", "presets", "extra_metadata"):
            continue
        ptype = param_type_for(key)
        if ptype is None:
            params.unknown.append(key)
            continue
        if isinstance(value, list):
            text = LIST_SEPARATOR.join(token_text(v) for v in value)
        else:
            text = token_text(value)
        if ptype.ignore_if is not None and text == ptype.ignore_if:
            params.values.pop(ptype.id, None)
            continue
        if ptype.permission is not None and not has_permission(ptype.permission):
            raise ParamError(f"You do not have permission to use parameter {ptype.name}.")
        try:
            validated = validate_param(ptype, text, catalog)
        except ParamError as exc:
            raise ParamError(f"Invalid value for parameter {ptype.name}: {exc}") from None
        if ptype.id == "rawresolution":
            validated = _check_raw_resolution(validated)
        params.values[ptype.id] = validated
    return params


def _check_raw_resolution(text: str) -> str:
    # The Clean hook of RawResolution uses int.Parse, so garbage is a non-readable exception.
    width_text, _, height_text = text.partition("x")
    if not _INTEGER_TEXT.match(width_text) or not _INTEGER_TEXT.match(height_text):
        raise UnreadableParamError(f"bad raw resolution {text!r}")
    width, height = int(width_text), int(height_text)
    if not (64 <= width <= 16384 and 64 <= height <= 16384):
        raise ParamError(
            "Invalid value for parameter Raw Resolution: Invalid resolution: "
            f"{width}x{height} (must be between 64x64 and 16384x16384)"
        )
    return text
