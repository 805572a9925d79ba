"""The plan of a pipeline run: per asset its prompt, seed, path and request.

One function, ``make_plan``, serves both ``--dry-run`` and the real run, so what a dry run
prints is what the run sends. The plan speaks the user's words (``server.types.Request``);
the server's adapter translates each asset's request when it runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from asset_generator.pipeline.spec import Asset, Group, Spec, SpecError
from asset_generator.server.types import RUN_OPTIONS, Lora, Request, SetInput, Workflow

MANIFEST_NAME = "asset-generator-manifest.json"
MAX_SEED = 2**63 - 1
_INTEGER_PARAMS = {"width", "height", "steps"}
_NUMBER_PARAMS = {"cfg_scale"}
_TEXT_PARAMS = {"negative_prompt", "model", "sampler", "scheduler"}
# Set by the pipeline itself: one image per asset, the planned seed, the planned prompt.
_OWN_PARAMS = {"images", "seed", "prompt"}
# ComfyUI's: a workflow file (relative to the spec) and `--set` values, NODE.INPUT: value.
_WORKFLOW, _SET = "workflow", "set"
_UNSAFE_PART = re.compile(r"[\x00-\x1f\x7f\\]")
_NOT_LETTERS = re.compile(r"[^a-z]")
# A key's letters, lower-cased, name the same option however it is spelt (cfg_scale, CFGScale).
_BY_LETTERS = {
    _NOT_LETTERS.sub("", name): name
    for name in (*RUN_OPTIONS, *_OWN_PARAMS, "loras", "loraweights", _WORKFLOW, _SET)
}


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
    request: Request
    # Where the asset is written (``line 12 (assets[0].assets[1])``), for messages.
    where: str = ""
    # The options (as flags: ``--set``, ``--param``) the spec's params and the command line
    # gave this asset: a request the server cannot take is then the spec's fault or the user's.
    spec_options: frozenset[str] = frozenset()
    command_options: frozenset[str] = frozenset()

    def spec_at_fault(self, option: str | None) -> bool:
        """Whether a request refused for ``option`` is the spec's doing (``bad_spec``), not
        the command line's (a usage error): the option came from the spec's params alone.
        The prompt and seed are the pipeline's own, so for them the workflow that has no
        single place for them is what counts."""
        if option in ("--prompt", "--seed"):
            option = "--workflow"
        return option in self.spec_options and option not in self.command_options

    @property
    def params(self) -> dict[str, Any]:
        """The request without prompt and seed: what the manifest compares besides them."""
        return self.request.describe()

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
    defaults: Iterable[tuple[str, Any]] = (),
    overrides: Iterable[tuple[str, Any]] = (),
    when: float | None = None,
) -> Plan:
    """Plan every asset; SpecError for paths outside ``output_dir`` or impossible seeds.

    ``defaults``: (name, value) pairs from the config's ``[generate]`` table, below every
    level of the spec's ``params:``. ``overrides``: the command line's (``--steps``,
    ``--param``, ``--lora``, ``--workflow``, ``--set``), above them all: the command line
    wins, as ``helm --set`` over a values file, and one warning says for how many assets it
    replaced a value the spec set. Names are option names (``cfg_scale``), ``loras``,
    ``workflow``, ``set``, or free server parameters.
    """
    when = time.time() if when is None else when
    warnings = list(spec.warnings)
    assets: list[PlannedAsset] = []
    cwd = Path.cwd()
    below = _params_level(
        _latest(defaults), "the config file", spec.file, warnings, checked=False, base=cwd
    )
    above = _params_level(
        _latest(overrides), "the command line", spec.file, warnings, checked=False, base=cwd
    )
    top = _params_level(spec.params, "params", spec.file, warnings)
    config, command_line = _merge([below]), _merge([above])
    # The command-line options that replaced a spec value, and for how many assets.
    replaced: dict[str, None] = {}
    overridden: list[str] = []

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
                spec_params = _merge([*levels, own])
                names = _replaced(spec_params, above)
                replaced.update(dict.fromkeys(names))
                if names:
                    overridden.append(asset.id)
                planned = _plan_asset(
                    spec, asset, len(assets), seed, directory, metadata,
                    config | spec_params, command_line, " / ".join(path),
                    output_dir, style_prefix, style_suffix, when,
                )  # fmt: skip
                planned.spec_options = frozenset(map(_option_of, spec_params))
                planned.command_options = frozenset(map(_option_of, command_line))
                assets.append(planned)
            walk(group.subgroups, directory, metadata, levels, path)

    walk(spec.groups, PurePosixPath(), {}, [top], [])
    _check_paths(spec, assets)
    _warn_shared_seeds(assets, warnings)
    if overridden:
        # In the order the command line gave them.
        names = [name for name in command_line if name in replaced]
        flags = ", ".join(_flag(name, above) for name in names)
        warnings.append(
            f"warning: the command line ({flags}) overrides the spec's params for "
            f"{len(overridden)} of {len(assets)} asset{'s' if len(assets) != 1 else ''}"
        )
    return Plan(base_seed, output_dir, assets, warnings)


def _latest(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """(name, value) pairs as one level: the last of two spellings of the same option wins."""
    latest: dict[str, tuple[str, Any]] = {}
    for key, value in pairs:
        latest[_canonical(key)] = (key, value)
    return dict(latest.values())


def _merge(levels: list[dict[str, Any]]) -> dict[str, tuple[str, Any]]:
    """Levels outermost first, by canonical name: the nearer level's value wins.

    ``set:`` maps merge across levels, as metadata does: a nearer level's NODE.INPUT wins.
    """
    merged: dict[str, tuple[str, Any]] = {}
    for level in levels:
        for key, value in level.items():
            name = _canonical(key)
            if name == _SET and name in merged:
                value = _merged_sets([merged[name][1], value])
            merged[name] = (key, value)
    return merged


def _merged_sets(lists: list[list[SetInput]]) -> list[SetInput]:
    """``set`` inputs of several levels, outermost first: one per NODE.INPUT, the last wins."""
    sets: dict[tuple[str, str], SetInput] = {}
    for items in lists:
        sets.update({(item.node, item.input): item for item in items})
    return list(sets.values())


def _replaced(spec_params: dict[str, tuple[str, Any]], above: dict[str, Any]) -> list[str]:
    """The command-line options that replace a different value the spec set for an asset."""
    names = []
    for key, value in above.items():
        name = _canonical(key)
        if name not in spec_params:
            continue
        spec_value = spec_params[name][1]
        if name == _SET:
            ours = {(s.node, s.input): s.value for s in spec_value}
            if any(ours.get((s.node, s.input), s.value) != s.value for s in value):
                names.append(name)
        elif spec_value != value:
            names.append(name)
    return names


def _flag(name: str, above: dict[str, Any]) -> str:
    """How the user typed an option on the command line (``--cfg-scale``, ``--param X``)."""
    if name in RUN_OPTIONS or name in (_WORKFLOW, _SET):
        return "--" + name.replace("_", "-")
    if name == "loras":
        return "--lora"
    key = next((k for k in above if _canonical(k) == name), name)
    return f"--param {key}"


def _option_of(name: str) -> str:
    """The flag a server's refusal names for a canonical params name (``RequestError.option``)."""
    if name in RUN_OPTIONS or name in (_WORKFLOW, _SET):
        return "--" + name.replace("_", "-")
    if name in ("loras", "loraweights"):
        return "--lora"
    return "--param"


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
    params: dict[str, tuple[str, Any]],
    above: dict[str, tuple[str, Any]],
    group_path: str,
    output_dir: Path,
    prefix: str | None,
    suffix: str | None,
    when: float,
) -> PlannedAsset:
    """One asset; ``params`` the config's and the spec's values, ``above`` the command
    line's, which win (``--set`` inputs are applied after the spec's, so theirs win)."""
    prompt = compose_prompt(asset.prompt, {**metadata, **asset.metadata}, prefix, suffix)
    merged = dict(params)
    for name, (key, value) in above.items():
        if name == _SET and _SET in merged:
            # Applied after the spec's, input by input: the command line's NODE.INPUT wins.
            value = _merged_sets([merged[_SET][1], value])
        merged[name] = (key, value)
    loras = merged.pop("loras", (None, None))[1]
    merged.pop("loraweights", None)
    workflow = merged.pop(_WORKFLOW, (None, None))[1]
    sets = merged.pop(_SET, (None, None))[1]
    options = {name: merged.pop(name)[1] for name in RUN_OPTIONS if name in merged}
    request = Request(
        prompt=prompt,
        seed=seed,
        loras=tuple(Lora.parse(item) for item in loras or ()),
        params=tuple(merged.values()),
        workflow=workflow,
        sets=tuple(sets or ()),
        **options,
    )
    filename = asset.filename or default_filename(asset.id)
    if not filename:
        raise SpecError(f"{spec.file} line {asset.line} ({asset.place}): empty file name")
    if "{" in filename:
        filename = _render(spec, asset, filename, seed, prompt, request, when)
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
        request=request,
        where=f"line {asset.line} ({asset.place})",
    )


def _canonical(key: str) -> str:
    """The option a ``params:`` key names however it is spelt; a free parameter as it is."""
    return _BY_LETTERS.get(_NOT_LETTERS.sub("", key.lower()), key)


def _render(
    spec: Spec,
    asset: Asset,
    filename: str,
    seed: int,
    prompt: str,
    request: Request,
    when: float,
) -> str:
    """``filename`` with ``--filename-template`` fields; ``{id}`` is the asset id here."""
    from asset_generator.downloads import NameFields, check_template

    try:
        check_template(filename)
    except ValueError as exc:
        raise SpecError(f"{spec.file} line {asset.line} ({asset.place}.filename): {exc}") from None
    model = request.option("model")
    fields = NameFields(0, seed, prompt, model if isinstance(model, str) else None, asset.id, when)
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
    params: dict[str, Any],
    place: str,
    file: str,
    warnings: list[str],
    *,
    checked: bool = True,
    base: Path | None = None,
) -> dict[str, Any]:
    """One ``params:`` map, types checked; SpecError for a wrong type.

    ``base``: the directory a ``workflow`` path is relative to (the spec file's).
    """
    level: dict[str, Any] = {}
    for key, value in params.items():
        name = _canonical(key)
        where = f"{file} ({place}.{key})"
        if name in _OWN_PARAMS and checked:
            warnings.append(
                f"warning: {where}: ignored; the pipeline sets {name} itself "
                "(one image per asset, seeds from --base-seed and seed_offset)"
            )
            continue
        if name == "loras":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise SpecError(f"{where}: expected a list of NAME[:WEIGHT] texts")
            level["loras"] = list(items)
            continue
        if name == _WORKFLOW:
            level[_WORKFLOW] = (
                value
                if isinstance(value, Workflow)
                else _workflow(value, where, base if base is not None else Path(file).parent)
            )
            continue
        if name == _SET:
            level[_SET] = _sets(value, where)
            continue
        if name in _INTEGER_PARAMS and (isinstance(value, bool) or not isinstance(value, int)):
            raise SpecError(f"{where}: expected a whole number, found {value!r}")
        if name in _NUMBER_PARAMS and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise SpecError(f"{where}: expected a number, found {value!r}")
        if name in _TEXT_PARAMS and not isinstance(value, str):
            raise SpecError(f"{where}: expected text, found {value!r}")
        if isinstance(value, dict) or value is None:
            raise SpecError(f"{where}: expected a value or a list, found {value!r}")
        level[name if name in RUN_OPTIONS else key] = value
    return level


def _workflow(value: Any, where: str, base: Path) -> Workflow:
    """A ``workflow:`` file (relative to the spec), read and parsed once for every asset."""
    from asset_generator.workflows import WorkflowFileError, read_workflow

    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}: expected the path of a workflow file")
    try:
        return read_workflow(base / Path(value).expanduser())
    except WorkflowFileError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _sets(value: Any, where: str) -> list[SetInput]:
    """A ``set:`` map of ``"NODE.INPUT": value``, as `--set` takes them."""
    from asset_generator.workflows import parse_set

    if isinstance(value, list) and all(isinstance(item, SetInput) for item in value):
        return list(value)  # --set on the command line, already parsed
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a map of NODE.INPUT: value")
    sets = []
    for target, item in value.items():
        if isinstance(item, dict | list) or item is None:
            raise SpecError(f"{where}.{target}: expected a value, found {item!r}")
        try:
            sets.append(parse_set(f"{target}={item}", typed=item))
        except ValueError as exc:
            raise SpecError(f"{where}: {exc}") from None
    return sets


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
