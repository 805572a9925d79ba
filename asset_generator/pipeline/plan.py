"""The plan of a pipeline run: per asset its prompt, seed, path and request body.

One function, ``make_plan``, serves both ``--dry-run`` and the real run, so what a dry run
prints is what the run sends.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from asset_generator.pipeline.spec import Asset, Group, Spec, SpecError
from asset_generator.swarm.params import OPTION_PARAMETERS

MANIFEST_NAME = "asset-generator-manifest.json"
MAX_SEED = 2**63 - 1
# `params:` keys that are `generate image` options by their config name, to SwarmUI ids.
CONFIG_NAMES = {k: v for k, v in OPTION_PARAMETERS.items() if k not in ("seed", "images")}
_INTEGER_PARAMS = {"width", "height", "steps"}
_NUMBER_PARAMS = {"cfgscale"}
_TEXT_PARAMS = {"negativeprompt", "model", "sampler", "scheduler"}
# Set by the pipeline itself: one image per asset, the planned seed, the planned prompt.
_OWN_PARAMS = {"images", "seed", "prompt"}
_UNSAFE_PART = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass
class PlannedAsset:
    """One asset as the run will make it."""

    index: int
    id: str
    name: str
    group: str
    prompt: str
    seed: int
    relative_path: str
    path: Path
    body: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        """The request without prompt and seed: what the manifest compares besides them."""
        return {k: v for k, v in self.body.items() if k not in ("prompt", "seed")}

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "group": self.group,
            "prompt": self.prompt,
            "seed": self.seed,
            "path": str(self.path),
            "params": self.params,
        }


@dataclass
class Plan:
    """Every asset in document order, the base seed, and the warnings worth printing."""

    base_seed: int
    output_dir: Path
    assets: list[PlannedAsset]
    warnings: list[str] = field(default_factory=list)


def make_plan(
    spec: Spec,
    *,
    output_dir: Path,
    base_seed: int,
    style_prefix: str | None = None,
    style_suffix: str | None = None,
    run_params: Iterable[tuple[str, Any]] = (),
    when: float | None = None,
) -> Plan:
    """Plan every asset; SpecError for paths outside ``output_dir`` or impossible seeds.

    ``run_params``: (SwarmUI id, value) pairs from the config and the command line, the
    outermost level of ``params:`` (the spec's own levels are nearer and win).
    """
    when = time.time() if when is None else when
    warnings = list(spec.warnings)
    assets: list[PlannedAsset] = []
    base = _params_level(dict(run_params), "the command line", spec.file, warnings, checked=False)
    top = _params_level(spec.params, "params", spec.file, warnings)

    def walk(
        groups: list[Group],
        parent_dir: PurePosixPath,
        parent_meta: dict[str, Any],
        parent_params: list[dict[str, Any]],
        parent_path: list[str],
    ) -> None:
        for group in groups:
            directory = parent_dir / _relative(group.output_dir, f"{group.place}.output_dir", spec)
            metadata = {**parent_meta, **group.metadata}
            group_level = _params_level(group.params, f"{group.place}.params", spec.file, warnings)
            levels = [*parent_params, group_level]
            path = [*parent_path, group.name or group.place]
            for position, asset in enumerate(group.assets):
                seed = base_seed + group.seed_offset + position
                if not 0 <= seed <= MAX_SEED:
                    raise SpecError(
                        f"{spec.file} line {asset.line} ({asset.place}): seed {seed} is outside "
                        f"0..{MAX_SEED} (base seed {base_seed} + seed_offset {group.seed_offset} "
                        f"+ index {position})"
                    )
                own = _params_level(asset.params, f"{asset.place}.params", spec.file, warnings)
                assets.append(
                    _plan_asset(
                        spec, asset, len(assets), seed, directory, metadata, [*levels, own],
                        " / ".join(path), output_dir, style_prefix, style_suffix, when,
                    )
                )  # fmt: skip
            walk(group.subgroups, directory, metadata, levels, path)

    walk(spec.groups, PurePosixPath(), {}, [base, top], [])
    _check_paths(spec, assets)
    _warn_shared_seeds(assets, warnings)
    return Plan(base_seed, output_dir, assets, warnings)


def compose_prompt(
    prompt: str, metadata: dict[str, Any], prefix: str | None, suffix: str | None
) -> str:
    """``[prefix, ]prompt[, metadata text values in order][, suffix]`` joined by ", "."""
    parts = [prefix] if prefix else []
    parts.append(prompt)
    parts += [v for v in metadata.values() if isinstance(v, str) and v]
    if suffix:
        parts.append(suffix)
    return ", ".join(parts)


def default_filename(asset_id: str) -> str:
    """The Go tool's rule: lower-case, spaces to ``_``, only ``[a-z0-9_-]``, plus ``.png``."""
    name = asset_id.lower().replace(" ", "_")
    return "".join(c for c in name if c in "abcdefghijklmnopqrstuvwxyz0123456789_-") + ".png"


def _plan_asset(
    spec: Spec,
    asset: Asset,
    index: int,
    seed: int,
    directory: PurePosixPath,
    metadata: dict[str, Any],
    levels: list[dict[str, Any]],
    group_path: str,
    output_dir: Path,
    prefix: str | None,
    suffix: str | None,
    when: float,
) -> PlannedAsset:
    from asset_generator.swarm.params import build_request, clean_name, parse_lora

    prompt = compose_prompt(asset.prompt, {**metadata, **asset.metadata}, prefix, suffix)
    merged: dict[str, tuple[str, Any]] = {}
    for level in levels:
        for key, value in level.items():
            merged[clean_name(key)] = (key, value)
    loras = merged.pop("loras", (None, None))[1]
    merged.pop("loraweights", None)
    body = build_request(
        prompt=prompt,
        options={"seed": seed},
        defaults={},
        extra=list(merged.values()),
        loras=[f"{name}:{weight}" for name, weight in map(parse_lora, loras or [])],
    )
    filename = asset.filename or default_filename(asset.id)
    if not filename:
        raise SpecError(f"{spec.file} line {asset.line} ({asset.place}): empty file name")
    if "{" in filename:
        filename = _render(spec, asset, filename, seed, prompt, body, when)
    relative = directory / _relative(filename, f"{asset.place}.filename", spec)
    if not relative.name or relative == PurePosixPath():
        raise SpecError(f"{spec.file} line {asset.line} ({asset.place}): no file name")
    return PlannedAsset(
        index=index,
        id=asset.id,
        name=asset.name,
        group=group_path,
        prompt=prompt,
        seed=seed,
        relative_path=relative.as_posix(),
        path=output_dir / relative,
        body=body,
    )


def _render(
    spec: Spec,
    asset: Asset,
    filename: str,
    seed: int,
    prompt: str,
    body: dict[str, Any],
    when: float,
) -> str:
    """``filename`` with ``--filename-template`` fields; ``{id}`` is the asset id here."""
    from asset_generator.downloads import NameFields, check_template

    try:
        check_template(filename)
    except ValueError as exc:
        raise SpecError(f"{spec.file} line {asset.line} ({asset.place}.filename): {exc}") from None
    model = body.get("model") if isinstance(body.get("model"), str) else None
    fields = NameFields(0, seed, prompt, model, asset.id, when)
    return fields.render(filename)


def _relative(text: str, place: str, spec: Spec) -> PurePosixPath:
    """A spec path that stays inside the output directory, else SpecError."""
    if not text:
        return PurePosixPath()
    path = PurePosixPath(text)
    if path.is_absolute() or text.startswith("~") or re.match(r"^[A-Za-z]:", text):
        raise SpecError(f"{spec.file} ({place}): {text!r} is absolute; paths stay in --output-dir")
    for part in path.parts:
        if part == "..":
            raise SpecError(f"{spec.file} ({place}): {text!r} leaves --output-dir (..)")
        if _UNSAFE_PART.search(part):
            raise SpecError(f"{spec.file} ({place}): {text!r} has control characters or \\")
    return PurePosixPath(*[p for p in path.parts if p != "."])


def _params_level(
    params: dict[str, Any], place: str, file: str, warnings: list[str], *, checked: bool = True
) -> dict[str, Any]:
    """One ``params:`` map in SwarmUI ids, types checked; SpecError for a wrong type."""
    from asset_generator.swarm.params import clean_name

    level: dict[str, Any] = {}
    for key, value in params.items():
        name = CONFIG_NAMES.get(key, key)
        cleaned = clean_name(name)
        where = f"{file} ({place}.{key})"
        if cleaned in _OWN_PARAMS and checked:
            warnings.append(
                f"warning: {where}: ignored; the pipeline sets {cleaned} itself "
                "(one image per asset, seeds from --base-seed and seed_offset)"
            )
            continue
        if cleaned == "loras":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise SpecError(f"{where}: expected a list of NAME[:WEIGHT] texts")
            level["loras"] = list(items)
            continue
        if cleaned in _INTEGER_PARAMS and (isinstance(value, bool) or not isinstance(value, int)):
            raise SpecError(f"{where}: expected a whole number, found {value!r}")
        if cleaned in _NUMBER_PARAMS and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise SpecError(f"{where}: expected a number, found {value!r}")
        if cleaned in _TEXT_PARAMS and not isinstance(value, str):
            raise SpecError(f"{where}: expected text, found {value!r}")
        if isinstance(value, dict) or value is None:
            raise SpecError(f"{where}: expected a value or a list, found {value!r}")
        level[name] = value
    return level


def _check_paths(spec: Spec, assets: list[PlannedAsset]) -> None:
    seen: dict[str, PlannedAsset] = {}
    for asset in assets:
        if asset.relative_path == MANIFEST_NAME:
            raise SpecError(f"{spec.file}: asset {asset.id} would overwrite the manifest")
        earlier = seen.get(asset.relative_path)
        if earlier is not None:
            raise SpecError(
                f"{spec.file}: assets {earlier.id} and {asset.id} would both write "
                f"{asset.relative_path}; set a different filename for one of them"
            )
        seen[asset.relative_path] = asset


def _warn_shared_seeds(assets: list[PlannedAsset], warnings: list[str]) -> None:
    by_seed: dict[int, list[str]] = {}
    for asset in assets:
        by_seed.setdefault(asset.seed, []).append(asset.id)
    for seed, ids in by_seed.items():
        if len(ids) > 1:
            warnings.append(
                f"warning: seed {seed} is shared by {', '.join(ids)}; "
                "give their groups seed_offset values further apart"
            )
