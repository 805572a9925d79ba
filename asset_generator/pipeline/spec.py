"""Pipeline spec files: the Go asset-generator's YAML format plus our ``params:`` maps.

Read with PyYAML's safe loader, node by node, so every warning and error can name its line.
Unknown keys are warned about (the Go tool ignores them silently); a spec that cannot be used
is a ``SpecError`` before anything is sent or created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP_KEYS = ("assets", "params")
GROUP_KEYS = ("name", "output_dir", "seed_offset", "metadata", "assets", "subgroups", "params")
ASSET_KEYS = ("id", "name", "prompt", "filename", "metadata", "params")
INT64 = 2**63
# YAML 1.1 (PyYAML) reads these as booleans; the Go tool's YAML 1.2 reads them as text, and
# a metadata value like `state: on` must reach the prompt as the Go tool sends it.
_YAML11_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n"}


class SpecError(Exception):
    """The spec cannot be used (cli-contract code ``bad_spec``)."""


class SpecFileError(Exception):
    """The spec file cannot be read (code ``file_error``)."""


@dataclass
class Asset:
    """One asset as written in the spec."""

    id: str
    name: str
    prompt: str
    filename: str | None
    metadata: dict[str, Any]
    params: dict[str, Any]
    place: str
    line: int


@dataclass
class Group:
    """One group (or subgroup) as written in the spec."""

    name: str
    output_dir: str
    seed_offset: int
    metadata: dict[str, Any]
    params: dict[str, Any]
    assets: list[Asset]
    subgroups: list[Group]
    place: str
    line: int


@dataclass
class Spec:
    """A loaded spec: its groups, top-level params, and what was worth a warning."""

    file: str
    groups: list[Group]
    params: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def count(self) -> int:
        def walk(groups: list[Group]) -> int:
            return sum(len(g.assets) + walk(g.subgroups) for g in groups)

        return walk(self.groups)


def load_spec(path: Path) -> Spec:
    """Read and check a spec file; SpecFileError if unreadable, SpecError if unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise SpecFileError(f"cannot read the spec {path}: {exc.strerror}") from None
    return parse_spec(text, str(path))


def parse_spec(text: str, file: str) -> Spec:
    """Parse spec text (``file`` names it in messages)."""
    import yaml

    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "not valid YAML"
        raise SpecError(f"{file}{where}: {problem} (YAML error)") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{file}: not valid YAML ({exc})") from None
    return _Reader(file).top(root)


class _Reader:
    """Turns the YAML node tree into groups and assets, collecting warnings."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.warnings: list[str] = []

    # -- helpers ------------------------------------------------------------------------------

    def fail(self, node: Any, place: str, problem: str) -> SpecError:
        line = f" line {node.start_mark.line + 1}" if node is not None else ""
        at = f" ({place})" if place else ""
        return SpecError(f"{self.file}{line}{at}: {problem}")

    def mapping(self, node: Any, place: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        """A mapping node's values by key; unknown keys are warned about with their place."""
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, place, f"expected a mapping, found {_kind(node)}")
        found: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{place}.{key}" if place else str(key)
            if key not in allowed:
                self.warnings.append(
                    f"warning: {self.file} line {key_node.start_mark.line + 1}: unknown key "
                    f"{where!s} ignored (known here: {', '.join(allowed)})"
                )
                continue
            if key in found:
                self.warnings.append(
                    f"warning: {self.file} line {key_node.start_mark.line + 1}: {where} "
                    "given twice; the last one counts"
                )
            found[key] = value_node
        return found

    def text(self, node: Any, place: str, *, required: bool = False) -> str | None:
        import yaml

        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
            if required:
                raise self.fail(node, place, "is required")
            return None
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, place, f"expected text, found {_kind(node)}")
        # The scalar as written: `id: 01` stays "01", as the Go tool reads it into a string.
        return str(node.value)

    def integer(self, node: Any, place: str) -> int:
        import yaml

        if node is None:
            return 0
        if not isinstance(node, yaml.ScalarNode) or not node.tag.endswith(":int"):
            raise self.fail(node, place, f"expected a whole number, found {_kind(node)}")
        value = yaml.SafeLoader("").construct_object(node)
        if not -INT64 <= value < INT64:
            raise self.fail(node, place, "is out of range")
        return int(value)

    def items(self, node: Any, place: str) -> list[Any]:
        import yaml

        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, place, f"expected a list, found {_kind(node)}")
        return list(node.value)

    def values(self, node: Any, place: str) -> dict[str, Any]:
        """A metadata or params map, values constructed by the safe loader."""
        import yaml

        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, place, f"expected a mapping, found {_kind(node)}")
        constructor = yaml.SafeLoader("")
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, place, "keys must be text")
            if (
                isinstance(value_node, yaml.ScalarNode)
                and value_node.tag.endswith(":bool")
                and value_node.value.lower() in _YAML11_BOOL_WORDS
            ):
                result[str(key_node.value)] = value_node.value
                continue
            result[str(key_node.value)] = constructor.construct_object(value_node, deep=True)
        return result

    # -- the document -------------------------------------------------------------------------

    def top(self, root: Any) -> Spec:
        import yaml

        if root is None:
            raise SpecError(f"{self.file}: the spec is empty; it needs a top-level assets: list")
        if not isinstance(root, yaml.MappingNode):
            raise self.fail(root, "", "the spec must be a mapping with a top-level assets: list")
        keys = self.mapping(root, "", TOP_KEYS)
        if "assets" not in keys:
            raise self.fail(root, "", "no top-level assets: list (the Go tool's format)")
        groups = [
            self.group(node, f"assets[{i}]")
            for i, node in enumerate(self.items(keys["assets"], "assets"))
        ]
        params = self.values(keys.get("params"), "params")
        spec = Spec(self.file, groups, params, self.warnings)
        if spec.count() == 0:
            raise self.fail(root, "assets", "the spec has no assets")
        return spec

    def group(self, node: Any, place: str) -> Group:
        keys = self.mapping(node, place, GROUP_KEYS)
        assets = [
            self.asset(item, f"{place}.assets[{i}]")
            for i, item in enumerate(self.items(keys.get("assets"), f"{place}.assets"))
        ]
        seen: dict[str, Asset] = {}
        for asset in assets:
            earlier = seen.setdefault(asset.id, asset)
            if earlier is not asset:
                # Reports, `status` and the JSON document tell a group's assets apart by id.
                raise SpecError(
                    f"{self.file} line {asset.line}: asset id {asset.id!r} is used twice in "
                    f"group {_group_label(keys, place)}, on lines {earlier.line} and "
                    f"{asset.line}; give each asset of a group its own id"
                )
        subgroups = [
            self.group(item, f"{place}.subgroups[{i}]")
            for i, item in enumerate(self.items(keys.get("subgroups"), f"{place}.subgroups"))
        ]
        return Group(
            name=self.text(keys.get("name"), f"{place}.name") or "",
            output_dir=self.text(keys.get("output_dir"), f"{place}.output_dir") or "",
            seed_offset=self.integer(keys.get("seed_offset"), f"{place}.seed_offset"),
            metadata=self.values(keys.get("metadata"), f"{place}.metadata"),
            params=self.values(keys.get("params"), f"{place}.params"),
            assets=assets,
            subgroups=subgroups,
            place=place,
            line=node.start_mark.line + 1,
        )

    def asset(self, node: Any, place: str) -> Asset:
        keys = self.mapping(node, place, ASSET_KEYS)
        if "id" not in keys:
            raise self.fail(node, place, "an asset needs an id")
        if "prompt" not in keys:
            raise self.fail(node, place, "an asset needs a prompt")
        asset_id = self.text(keys["id"], f"{place}.id", required=True) or ""
        return Asset(
            id=asset_id,
            name=self.text(keys.get("name"), f"{place}.name") or asset_id,
            prompt=self.text(keys["prompt"], f"{place}.prompt", required=True) or "",
            filename=self.text(keys.get("filename"), f"{place}.filename"),
            metadata=self.values(keys.get("metadata"), f"{place}.metadata"),
            params=self.values(keys.get("params"), f"{place}.params"),
            place=place,
            line=node.start_mark.line + 1,
        )


def _group_label(keys: dict[str, Any], place: str) -> str:
    """``'Characters' (assets[0])``: the name a person gave, and where it sits."""
    name = keys.get("name")
    value = getattr(name, "value", None)
    return f"{value!r} ({place})" if isinstance(value, str) and value else place


def _kind(node: Any) -> str:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node is None:
        return "nothing"
    return f"{node.value!r}"
