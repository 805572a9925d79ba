"""ComfyUI's UI ("Save") workflow format, converted to the API format that ``POST /prompt`` takes.

The conversion is the one the web UI itself performs when it queues a prompt or exports the API
format: ComfyUI_frontend 1.27 (the frontend ComfyUI 0.3.64 requires), ``graphToPrompt`` in
``src/utils/executionUtil.ts``, ``ExecutableNodeDTO`` and ``SubgraphNode`` in
``src/lib/litegraph/src/subgraph/``, the node construction and ``configure`` of
``src/services/litegraphService.ts``, and the core extensions that add widgets or rewrite values
(``widgetInputs.ts`` for primitive nodes, ``uploadImage.ts``, ``dynamicPrompts.ts``,
``saveImageExtraOutput.ts``). Widgets are laid out from the server's ``/object_info``, as the web UI
lays them out from the same document. Pure: no network, no terminal.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "FRONTEND_ONLY_NODES",
    "InvalidWorkflow",
    "MissingNodeClasses",
    "UIFormatError",
    "UnsupportedWorkflow",
    "is_ui_format",
    "needed_classes",
    "to_api",
]

#: Node types the web UI implements itself: they never reach the server.
FRONTEND_ONLY_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})

# LGraphEventMode: 2 is "never" (muted), 4 is "bypass". 0, 1 and 3 all execute.
_MUTED = 2
_BYPASSED = 4
# The id litegraph gives a subgraph's input node inside its definition.
_SUBGRAPH_INPUT_NODE = -10

# Node types the web UI renames on load (app.ts loadGraphData).
_RENAMED_TYPES = {
    "T2IAdapterLoader": "ControlNetLoader",
    "ConditioningAverage ": "ConditioningAverage",
    "SDV_img2vid_Conditioning": "SVD_img2vid_Conditioning",
}
# Save nodes whose filename_prefix goes through text replacement (saveImageExtraOutput.ts).
_SAVE_NODE_TYPES = frozenset(
    {
        "SaveImage",
        "SaveAnimatedWEBP",
        "SaveWEBM",
        "SaveAudio",
        "SaveGLB",
        "SaveAnimatedPNG",
        "CLIPSave",
        "VAESave",
        "ModelSave",
        "LoraSave",
        "SaveLatent",
    }
)
# Nodes that get an audio player widget (uploadAudio.ts).
_AUDIO_UI_NODES = frozenset(
    {"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus"}
)
_VALUE_WIDGET_TYPES = frozenset({"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"})
# Widget types the web UI builds with code of its own whose place and value in widgets_values this
# module does not reproduce; a node that executes with one of them is refused, never guessed.
_UNMODELLED_WIDGET_TYPES = frozenset(
    {
        "MARKDOWN",
        "FILEUPLOAD",
        "COLOR",
        "IMAGECOMPARE",
        "TREESELECT",
        "MULTISELECT",
        "CHART",
        "GALLERIA",
        "SELECTBUTTON",
        "TEXTAREA",
        "WEBCAM",
        "LOAD_3D",
        "LOAD_3D_ANIMATION",
    }
)
_WIDGET_CONSTRUCTORS = (
    _VALUE_WIDGET_TYPES | _UNMODELLED_WIDGET_TYPES | {"IMAGEUPLOAD", "AUDIOUPLOAD", "AUDIO_UI"}
)
_PRIMITIVE_REPLACE_PROPERTY = "Run widget replace on values"
_SR_NAME_PROPERTY = "Node name for S&R"


class _Undefined:
    """JavaScript's ``undefined``: a widget with it is left out of the JSON the web UI sends."""

    def __repr__(self) -> str:
        return "undefined"


_UNDEFINED = _Undefined()


class UIFormatError(Exception):
    """Base of every failure to convert a UI-format workflow."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidWorkflow(UIFormatError):
    """The document is not a well-formed UI-format workflow (a missing key, a dangling link)."""


class UnsupportedWorkflow(UIFormatError):
    """The workflow uses a construct this converter cannot reproduce faithfully.

    ``feature`` names the construct; the converter refuses rather than send a different graph.
    """

    def __init__(self, feature: str, detail: str = "") -> None:
        message = f"unsupported in a UI-format workflow: {feature}"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.feature = feature
        self.detail = detail


class MissingNodeClasses(UIFormatError):
    """Node classes the workflow executes that the server's /object_info does not declare.

    ``missing`` maps each class to the nodes that use it, as ``'Title' (#id)`` strings; the message
    names them all, like the web UI's "missing nodes" dialog.
    """

    def __init__(self, missing: Mapping[str, list[str]]) -> None:
        self.missing = {cls: list(users) for cls, users in sorted(missing.items())}
        parts = [f"{cls} (used by {', '.join(users)})" for cls, users in self.missing.items()]
        noun = "class" if len(parts) == 1 else "classes"
        super().__init__(f"the server has no node {noun} " + "; ".join(parts))


def is_ui_format(doc: Any) -> bool:
    """True for a workflow as the web UI's "Save" writes it (it has a ``nodes`` list)."""
    return isinstance(doc, Mapping) and isinstance(doc.get("nodes"), list)


def needed_classes(doc: Mapping[str, Any]) -> set[str]:
    """The server node classes that converting ``doc`` needs in /object_info (muted and bypassed
    nodes, frontend-only nodes and subgraph instances excluded)."""
    if not is_ui_format(doc):
        raise InvalidWorkflow("not a UI-format workflow: it has no 'nodes' list")
    subgraph_ids = {str(d.get("id")) for d in _subgraph_definitions(doc)}
    classes: set[str] = set()
    for raw in itertools.chain(
        doc["nodes"], *(d.get("nodes") or [] for d in _subgraph_definitions(doc))
    ):
        if not isinstance(raw, Mapping):
            continue
        node_type = _node_type(raw)
        if (
            node_type in FRONTEND_ONLY_NODES
            or node_type in subgraph_ids
            or _mode(raw) in (_MUTED, _BYPASSED)
        ):
            continue
        classes.add(node_type)
    return classes


def to_api(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Mapping[str, Any]],
    *,
    rng: random.Random | None = None,
    now: datetime | None = None,
) -> dict[str, dict[str, Any]]:
    """Convert a UI-format workflow to the API format, as the web UI's "Export (API)" does.

    ``object_info`` is the server's ``GET /object_info`` (or the part of it for the classes
    :func:`needed_classes` names). ``rng`` picks the ``{a|b}`` choices of dynamic prompts and
    ``now`` fills ``%date:…%`` in file-name prefixes; both default to fresh ones, as in the web UI.
    Raises :class:`MissingNodeClasses`, :class:`UnsupportedWorkflow` or :class:`InvalidWorkflow`.
    """
    if not is_ui_format(workflow):
        raise InvalidWorkflow("not a UI-format workflow: it has no 'nodes' list")
    return _Converter(workflow, object_info, rng or random.Random(), now or datetime.now()).run()


# --------------------------------------------------------------------------------------------
# The document


def _subgraph_definitions(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    definitions = doc.get("definitions")
    if not isinstance(definitions, Mapping):
        return []
    subgraphs = definitions.get("subgraphs")
    if not isinstance(subgraphs, list):
        return []
    return [d for d in subgraphs if isinstance(d, Mapping)]


def _node_type(raw: Mapping[str, Any]) -> str:
    node_type = str(raw.get("type", ""))
    return _RENAMED_TYPES.get(node_type, node_type)


def _mode(raw: Mapping[str, Any]) -> int:
    mode = raw.get("mode", 0)
    return mode if isinstance(mode, int) else 0


@dataclass(frozen=True)
class _Link:
    id: int
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: Any


def _parse_links(links: Any, where: str) -> dict[int, _Link]:
    """Links in either form: ``[id, from, from_slot, to, to_slot, type]`` or an object."""
    if links is None:
        return {}
    if not isinstance(links, list):
        raise InvalidWorkflow(f"'links' of {where} is not a list")
    parsed: dict[int, _Link] = {}
    for entry in links:
        try:
            if isinstance(entry, list):
                link_id, origin, origin_slot, target, target_slot, *rest = entry
                link_type = rest[0] if rest else None
            elif isinstance(entry, Mapping):
                link_id, origin, origin_slot = entry["id"], entry["origin_id"], entry["origin_slot"]
                target, target_slot = entry["target_id"], entry["target_slot"]
                link_type = entry.get("type")
            else:
                raise TypeError(entry)
            link = _Link(
                int(link_id),
                str(origin),
                int(origin_slot),
                str(target),
                int(target_slot),
                link_type,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidWorkflow(f"a link of {where} is malformed: {entry!r}") from err
        if link.origin_slot < 0 or link.target_slot < 0:
            raise InvalidWorkflow(f"link {link.id} of {where} has a negative slot")
        parsed[link.id] = link
    return parsed


@dataclass
class _Graph:
    """The root graph or one subgraph definition (whose nodes all instances share)."""

    key: str
    name: str
    nodes: list[Mapping[str, Any]]
    links: dict[int, _Link]
    definition: Mapping[str, Any] | None = None

    def node(self, node_id: str) -> Mapping[str, Any] | None:
        for raw in self.nodes:
            if str(raw.get("id")) == node_id:
                return raw
        return None


# --------------------------------------------------------------------------------------------
# Widgets: where each value of widgets_values goes


@dataclass
class _WidgetSpec:
    name: str
    in_prompt: bool  # widget.options.serialize !== false: sent to the server
    stored: bool  # widget.serialize !== false: takes a place when widgets_values is loaded
    default: Any
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _Widget:
    spec: _WidgetSpec
    value: Any

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class _InputSpec:
    name: str
    type: str
    options: Mapping[str, Any]
    optional: bool


@dataclass
class _Layout:
    """How the web UI builds one node class: its input slots and its widgets, in order."""

    sockets: list[_InputSpec]
    widget_inputs: list[_InputSpec]
    widgets: list[_WidgetSpec]
    declared: list[_InputSpec]  # nodeData.inputs, for the widgets_values migration
    problem: str | None = None


def _spec_parts(spec: Any) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(spec, list | tuple) or not spec:
        return "*", {}
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if isinstance(kind, list | tuple):
        # A V1 combo: [[option, ...], {...}].
        return "COMBO", {**options, "options": list(kind)}
    return str(kind), options


def _is_media_upload_combo(kind: str, options: Mapping[str, Any]) -> bool:
    uploads = ("image_upload", "video_upload", "animated_image_upload")
    return kind == "COMBO" and any(options.get(flag) is True for flag in uploads)


def _class_layout(class_type: str, info: Mapping[str, Any]) -> _Layout:
    inputs = info.get("input") if isinstance(info.get("input"), Mapping) else {}
    required = dict(inputs.get("required") or {})
    optional = dict(inputs.get("optional") or {})
    # What the core extensions add to the declaration before the node is registered.
    for name, spec in list(required.items()):
        kind, options = _spec_parts(spec)
        if _is_media_upload_combo(kind, options):
            required["upload"] = ["IMAGEUPLOAD", {**options, "imageInputName": name}]
            break
    if class_type in _AUDIO_UI_NODES:
        required["audioUI"] = ["AUDIO_UI", {}]
    audio = required.get("audio")
    if audio is not None and _spec_parts(audio)[1].get("audio_upload") is True:
        required["upload"] = ["AUDIOUPLOAD", {}]

    declared: dict[str, _InputSpec] = {}
    for section, is_optional in ((required, False), (optional, True)):
        for name, spec in section.items():
            kind, options = _spec_parts(spec)
            kind = str(options.get("widgetType") or kind)
            declared[name] = _InputSpec(str(name), kind, options, is_optional)

    problem = None
    sockets: list[_InputSpec] = []
    widget_inputs: list[_InputSpec] = []
    widgets: list[_WidgetSpec] = []
    # litegraphService.ts #addInputs: every input without a widget constructor (or forced to be
    # a socket) first, then the widget inputs, each with its widgets, in declaration order.
    for spec in _ordered_inputs(declared, info.get("input_order")):
        if spec.type not in _WIDGET_CONSTRUCTORS or spec.options.get("forceInput"):
            sockets.append(spec)
            continue
        if spec.options.get("file_upload") is True:
            problem = problem or f"a file upload widget ('{spec.name}')"
        elif spec.type in _UNMODELLED_WIDGET_TYPES:
            problem = problem or f"a {spec.type} widget ('{spec.name}')"
        widget_inputs.append(spec)
        widgets.extend(_widgets_for(spec))
    return _Layout(sockets, widget_inputs, widgets, list(declared.values()), problem)


def _ordered_inputs(declared: dict[str, _InputSpec], input_order: Any) -> list[_InputSpec]:
    # nodeDefOrderingUtil.ts: input_order's required names, then its optional ones, then the rest.
    if not isinstance(input_order, Mapping):
        return list(declared.values())
    ordered: list[_InputSpec] = []
    for section, is_optional in (("required", False), ("optional", True)):
        for name in input_order.get(section) or []:
            spec = declared.get(name)
            if spec is not None and spec.optional == is_optional and spec not in ordered:
                ordered.append(spec)
    ordered.extend(spec for spec in declared.values() if spec not in ordered)
    return ordered


def _widgets_for(spec: _InputSpec) -> list[_WidgetSpec]:
    options = spec.options
    if spec.type == "IMAGEUPLOAD":
        return [_WidgetSpec("upload", in_prompt=False, stored=True, default="image")]
    if spec.type == "AUDIOUPLOAD":
        return [_WidgetSpec("upload", in_prompt=False, stored=True, default=_UNDEFINED)]
    if spec.type == "AUDIO_UI":
        return [_WidgetSpec(spec.name, in_prompt=False, stored=False, default=_UNDEFINED)]
    if spec.type not in _VALUE_WIDGET_TYPES:
        return [
            _WidgetSpec(spec.name, in_prompt=True, stored=True, default=_UNDEFINED, options=options)
        ]
    main = _WidgetSpec(spec.name, True, True, _widget_default(spec), options)
    extra: list[_WidgetSpec] = []
    control = options.get("control_after_generate")
    if spec.type == "INT":
        # useIntWidget.ts: a seed or noise_seed input gets the control even without the flag.
        if control if control is not None else spec.name in ("seed", "noise_seed"):
            extra.append(_control_widget(control))
    elif spec.type == "COMBO":
        remote = options.get("remote")
        if isinstance(remote, Mapping) and remote.get("refresh_button"):
            # useRemoteWidget.ts: an auto-refresh toggle and a refresh button.
            extra.append(_WidgetSpec("Auto-refresh after generation", False, True, False))
            extra.append(_WidgetSpec("refresh", True, True, _UNDEFINED))
        if control:
            extra.append(_control_widget(control))
            extra.append(_WidgetSpec("control_filter_list", False, True, ""))
    return [main, *extra]


def _control_widget(control: Any) -> _WidgetSpec:
    # scripts/widgets.ts addValueControlWidgets: kept in widgets_values, never sent.
    name = control if isinstance(control, str) else "control_after_generate"
    return _WidgetSpec(name, in_prompt=False, stored=True, default="randomize")


def _widget_default(spec: _InputSpec) -> Any:
    options = spec.options
    default = options.get("default")
    if spec.type == "COMBO":
        if default:
            return default
        choices = options.get("options")
        if isinstance(choices, list) and choices:
            return choices[0]
        return "Loading..." if options.get("remote") else _UNDEFINED
    if default is not None:
        return default
    return {"INT": 0, "FLOAT": 0, "STRING": "", "BOOLEAN": False}[spec.type]


def _migrate_widget_values(layout: _Layout, values: list[Any]) -> list[Any]:
    # litegraphUtil.ts migrateWidgetsValues: files from before 1.16 kept a value for each
    # forceInput input; when the count says so, those values are dropped.
    names = {w.name for w in layout.widgets}
    original = [s for s in layout.declared if s.name in names or s.options.get("forceInput")]
    expected = sum(
        2 if s.options.get("control_after_generate") or s.name in ("seed", "noise_seed") else 1
        for s in original
    )
    if expected != len(values) or not any(s.options.get("forceInput") for s in original):
        return values
    pairs = itertools.zip_longest(original, values)
    return [value for spec, value in pairs if spec is None or not spec.options.get("forceInput")]


# --------------------------------------------------------------------------------------------
# Executable nodes (ExecutableNodeDTO): one per node per subgraph instance


@dataclass
class _Input:
    name: str
    type: Any
    link: int | None
    widget: str | None  # the widget this input slot belongs to, if any


@dataclass
class _Node:
    id: str  # the execution id: subgraph instance ids and the node's own, joined by ':'
    local_id: str
    raw: Mapping[str, Any]
    graph: _Graph
    path: tuple[str, ...]
    instance: _Node | None  # the subgraph instance this node is inside
    type: str
    kind: str  # "class", "virtual", "subgraph" or "unknown"
    mode: int
    title: str
    inputs: list[_Input]
    output_types: list[Any]
    widgets: list[_Widget]
    layout: _Layout | None = None
    subgraph: _Graph | None = None

    @property
    def label(self) -> str:
        return f"'{self.title}' (#{self.id})"

    def widget(self, name: str) -> _Widget | None:
        return next((w for w in self.widgets if w.name == name), None)

    @property
    def executes(self) -> bool:
        return self.kind in ("class", "unknown") and self.mode not in (_MUTED, _BYPASSED)


@dataclass(frozen=True)
class _Resolved:
    origin_id: str | None = None
    origin_slot: int = -1
    value: Any = _UNDEFINED  # a promoted subgraph widget's value instead of a link


class _Converter:
    def __init__(
        self,
        workflow: Mapping[str, Any],
        object_info: Mapping[str, Mapping[str, Any]],
        rng: random.Random,
        now: datetime,
    ) -> None:
        self.workflow = workflow
        self.object_info = object_info
        self.rng = rng
        self.now = now
        self.layouts: dict[str, _Layout] = {}
        self.nodes: dict[str, _Node] = {}
        self.shared_widgets: dict[tuple[str, str], list[_Widget]] = {}
        self.definitions: dict[str, _Graph] = {}
        for definition in _subgraph_definitions(workflow):
            key = str(definition.get("id"))
            name = str(definition.get("name") or key)
            nodes = definition.get("nodes") or []
            if not isinstance(nodes, list):
                raise InvalidWorkflow(f"'nodes' of subgraph '{name}' is not a list")
            where = f"subgraph '{name}'"
            self.definitions[key] = _Graph(
                key, name, nodes, _parse_links(definition.get("links"), where), definition
            )
        self.root = _Graph(
            "", "", workflow["nodes"], _parse_links(workflow.get("links"), "the workflow")
        )

    def run(self) -> dict[str, dict[str, Any]]:
        self._refuse_group_nodes()
        self._add_graph(self.root, (), None, ())
        missing: dict[str, list[str]] = {}
        for node in self.nodes.values():
            if node.kind == "unknown" and node.executes:
                missing.setdefault(node.type, []).append(node.label)
        if missing:
            raise MissingNodeClasses(missing)
        for node in self.nodes.values():
            if node.executes and node.layout is not None and node.layout.problem:
                raise UnsupportedWorkflow(
                    f"node class {node.type}",
                    f"{node.label} has {node.layout.problem}, which the web UI lays out with code "
                    "of its own; export the API format from the web UI instead",
                )
        self._apply_primitive_nodes()
        output: dict[str, dict[str, Any]] = {}
        for node in self._output_order():
            if not node.executes:
                continue
            output[node.id] = {
                "inputs": self._inputs_of(node),
                "class_type": node.type,
                "_meta": {"title": node.title},
            }
        # Inputs whose link leads to a node that is not sent (a muted one) are dropped.
        for entry in output.values():
            inputs = entry["inputs"]
            for name, value in list(inputs.items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                    del inputs[name]
        return output

    # ---- building the nodes

    def _refuse_group_nodes(self) -> None:
        extra = self.workflow.get("extra")
        group_nodes = extra.get("groupNodes") if isinstance(extra, Mapping) else None
        all_nodes = itertools.chain(self.root.nodes, *(g.nodes for g in self.definitions.values()))
        for raw in all_nodes:
            node_type = _node_type(raw) if isinstance(raw, Mapping) else ""
            if node_type.startswith(("workflow>", "workflow/")) and (
                group_nodes or node_type not in self.object_info
            ):
                raise UnsupportedWorkflow(
                    "group nodes",
                    f"node #{raw.get('id')} is the group node '{node_type}'; "
                    "convert it to a subgraph or ungroup it in the web UI",
                )

    def _add_graph(
        self,
        graph: _Graph,
        path: tuple[str, ...],
        instance: _Node | None,
        open_defs: tuple[str, ...],
    ) -> None:
        for raw in graph.nodes:
            if not isinstance(raw, Mapping) or "id" not in raw:
                raise InvalidWorkflow(f"a node of {graph.name or 'the workflow'} has no id")
            node = self._make_node(raw, graph, path, instance)
            if node.id in self.nodes:
                raise InvalidWorkflow(f"two nodes have the id {node.id}")
            self.nodes[node.id] = node
            if node.subgraph is not None:
                if node.subgraph.key in open_defs:
                    raise InvalidWorkflow(f"subgraph '{node.subgraph.name}' contains itself")
                inner_path = (*path, node.local_id)
                self._add_graph(node.subgraph, inner_path, node, (*open_defs, node.subgraph.key))
                self._promote_widgets(node)

    def _make_node(
        self, raw: Mapping[str, Any], graph: _Graph, path: tuple[str, ...], instance: _Node | None
    ) -> _Node:
        local_id = str(raw["id"])
        node_type = _node_type(raw)
        saved_inputs = _mappings(raw.get("inputs"))
        saved_outputs = _mappings(raw.get("outputs"))
        # LGraphNode.configure: a node without a title of its own shows its class's.
        title = raw.get("title") if isinstance(raw.get("title"), str) else ""
        node = _Node(
            id=":".join((*path, local_id)),
            local_id=local_id,
            raw=raw,
            graph=graph,
            path=path,
            instance=instance,
            type=node_type,
            kind="unknown",
            mode=_mode(raw),
            title=title or node_type,
            inputs=[_saved_input(i) for i in saved_inputs],
            output_types=[o.get("type") for o in saved_outputs],
            widgets=[],
        )
        if node_type in self.definitions:
            self._make_subgraph_instance(node, saved_inputs)
        elif node_type in FRONTEND_ONLY_NODES:
            node.kind = "virtual"
            node.title = title or {
                "PrimitiveNode": "Primitive",
                "MarkdownNote": "Markdown Note",
            }.get(node_type, node_type)
            linked = _ids(next(iter(saved_outputs), {}).get("links"))
            if node_type == "PrimitiveNode" and graph is not self.root and linked:
                raise UnsupportedWorkflow(
                    "a primitive node inside a subgraph",
                    f"#{node.id} in subgraph '{graph.name}': the web UI applies it to the wrong "
                    "graph",
                )
        elif node_type in self.object_info:
            self._make_class_node(node, saved_inputs, saved_outputs)
        return node

    def _make_class_node(
        self,
        node: _Node,
        saved_inputs: list[Mapping[str, Any]],
        saved_outputs: list[Mapping[str, Any]],
    ) -> None:
        info = self.object_info[node.type]
        node.kind = "class"
        if not node.raw.get("title"):
            node.title = str(info.get("display_name") or info.get("name") or node.type)
        layout = self.layouts.get(node.type)
        if layout is None:
            layout = self.layouts[node.type] = _class_layout(node.type, info)
        node.layout = layout
        # litegraphService.ts configure: the slots follow the declaration (sockets, then widget
        # inputs), each taking its saved link by name; saved slots the class does not declare
        # (added by custom node code) follow.
        by_name = {str(i.get("name")): i for i in saved_inputs}
        node.inputs = []
        for spec in layout.sockets + layout.widget_inputs:
            saved = by_name.get(spec.name)
            widget = spec.name if spec in layout.widget_inputs else None
            node.inputs.append(_Input(spec.name, spec.type, _link_id(saved), widget))
        declared = {s.name for s in layout.sockets + layout.widget_inputs}
        node.inputs.extend(
            _saved_input(i) for i in saved_inputs if str(i.get("name")) not in declared
        )
        declared_outputs = [str(t) for t in info.get("output") or []]
        node.output_types = declared_outputs + [
            o.get("type") for o in saved_outputs[len(declared_outputs) :]
        ]
        # A subgraph definition's nodes are one set of objects that all its instances share.
        key = (node.graph.key, node.local_id)
        if node.graph is not self.root and key in self.shared_widgets:
            node.widgets = self.shared_widgets[key]
            return
        node.widgets = self._load_widgets(node, layout)
        self.shared_widgets[key] = node.widgets

    def _load_widgets(self, node: _Node, layout: _Layout) -> list[_Widget]:
        widgets = [_Widget(spec, spec.default) for spec in layout.widgets]
        values = node.raw.get("widgets_values")
        if isinstance(values, Mapping):
            # Newer custom nodes save {widget name: value}.
            for widget in widgets:
                if widget.name in values:
                    widget.value = values[widget.name]
        elif isinstance(values, list):
            stored = [w for w in widgets if w.spec.stored]
            for widget, value in zip(stored, _migrate_widget_values(layout, values), strict=False):
                widget.value = value
        if node.type in ("KSampler", "KSamplerAdvanced"):
            # app.ts loadGraphData: sampler names of old files lose their "sample_" prefix.
            sampler = next((w for w in widgets if w.name == "sampler_name"), None)
            if sampler and isinstance(sampler.value, str) and sampler.value.startswith("sample_"):
                sampler.value = sampler.value[len("sample_") :]
        return widgets

    def _make_subgraph_instance(self, node: _Node, saved_inputs: list[Mapping[str, Any]]) -> None:
        graph = self.definitions[node.type]
        definition = graph.definition or {}
        node.kind = "subgraph"
        node.subgraph = graph
        if not node.raw.get("title"):
            node.title = graph.name
        properties = node.raw.get("properties")
        if isinstance(properties, Mapping) and properties.get("proxyWidgets"):
            raise UnsupportedWorkflow(
                "promoted widgets of a newer web UI (proxyWidgets)",
                f"subgraph node {node.label}; ComfyUI 0.3.64's web UI does not read them",
            )
        slots = _mappings(definition.get("inputs"))
        # litegraphService.ts configure, as for any node: the definition's slots, each taking its
        # saved link by name (unlinked widget slots are not saved), then saved slots it lacks.
        by_name = {str(i.get("name")): i for i in saved_inputs}
        inputs = [
            _Input(
                str(s.get("name")), s.get("type"), _link_id(by_name.get(str(s.get("name")))), None
            )
            for s in slots
        ]
        declared = {entry.name for entry in inputs}
        inputs.extend(_saved_input(i) for i in saved_inputs if str(i.get("name")) not in declared)
        node.inputs = inputs
        outputs = _mappings(definition.get("outputs"))
        node.output_types = [s.get("type") for s in outputs]

    def _promote_widgets(self, instance: _Node) -> None:
        # SubgraphNode._internalConfigureAfterSlots: each input gets a copy of the widget its first
        # widget-bearing link inside reaches; then the instance's widgets_values fill the copies.
        graph = instance.subgraph
        assert graph is not None and graph.definition is not None
        slots = {str(s.get("name")): s for s in _mappings(graph.definition.get("inputs"))}
        for slot_input in instance.inputs:
            slot = slots.get(slot_input.name)
            if slot is None:
                continue
            for link_id in _ids(slot.get("linkIds")):
                link = graph.links.get(link_id)
                if link is None:
                    continue
                inner = self.nodes.get(
                    ":".join((*instance.path, instance.local_id, link.target_id))
                )
                target = _input_holding(inner, link) if inner else None
                widget = inner.widget(target.widget) if inner and target and target.widget else None
                if widget is None:
                    continue
                spec = _WidgetSpec(
                    slot_input.name,
                    widget.spec.in_prompt,
                    widget.spec.stored,
                    None,
                    widget.spec.options,
                )
                instance.widgets.append(_Widget(spec, widget.value))
                slot_input.widget = slot_input.name
                break
        values = instance.raw.get("widgets_values")
        if isinstance(values, Mapping):
            for widget in instance.widgets:
                if widget.name in values:
                    widget.value = values[widget.name]
        elif isinstance(values, list):
            stored = [w for w in instance.widgets if w.spec.stored]
            for widget, value in zip(stored, values, strict=False):
                widget.value = value

    # ---- primitive nodes

    def _apply_primitive_nodes(self) -> None:
        # widgetInputs.ts PrimitiveNode.applyToGraph: the primitive's value replaces the widget
        # value of every input it is linked to (the link itself then resolves to nothing).
        for node in self.nodes.values():
            if node.type != "PrimitiveNode" or node.instance is not None:
                continue
            link_ids = next(iter(_mappings(node.raw.get("outputs"))), {}).get("links")
            targets = []
            for link_id in _ids(link_ids):
                link = self.root.links.get(link_id)
                target = self.nodes.get(link.target_id) if link else None
                slot = _input_holding(target, link) if target and link else None
                targets.append((target, slot))
            if not targets:
                continue
            values = node.raw.get("widgets_values")
            if isinstance(values, list) and values:
                value = values[0]
            else:
                # Without a saved value the primitive takes its first target's.
                first, slot = targets[0]
                widget = first.widget(slot.widget) if first and slot and slot.widget else None
                if widget is None:
                    continue
                value = widget.value
            properties = node.raw.get("properties")
            if (
                value
                and isinstance(properties, Mapping)
                and properties.get(_PRIMITIVE_REPLACE_PROPERTY)
            ):
                value = self._replace_text(str(value))
            for target, slot in targets:
                widget = target.widget(slot.widget) if target and slot and slot.widget else None
                if widget is not None:
                    widget.value = value

    # ---- link resolution (ExecutableNodeDTO.resolveInput / resolveOutput)

    def _resolve_input(
        self, node: _Node, slot: int, seen: set[tuple[str, str, int]], target_type: Any = None
    ) -> _Resolved | None:
        _visit(seen, node, "input", slot)
        if slot >= len(node.inputs):
            raise InvalidWorkflow(f"{node.label} has no input slot {slot}")
        entry = node.inputs[slot]
        if entry.link is None:
            return None
        link = node.graph.links.get(entry.link)
        if link is None:
            raise InvalidWorkflow(
                f"input '{entry.name}' of {node.label} names link {entry.link}, which is missing"
            )
        if link.target_id != node.local_id:
            # The web UI would repair this on load (linkFixer.ts); which end is right is a guess.
            raise InvalidWorkflow(
                f"link {link.id} into {node.label} says it ends at node {link.target_id}"
            )
        if link.origin_id == str(_SUBGRAPH_INPUT_NODE) and node.instance is not None:
            instance = node.instance
            if link.origin_slot >= len(instance.inputs):
                raise InvalidWorkflow(
                    f"subgraph node {instance.label} has no input slot {link.origin_slot}"
                )
            outer = instance.inputs[link.origin_slot]
            if outer.link is None:
                promoted = instance.widget(outer.widget) if outer.widget else None
                return _Resolved(value=promoted.value) if promoted is not None else None
            return self._resolve_input(instance, link.origin_slot, seen)
        origin = self.nodes.get(":".join((*node.path, link.origin_id)))
        if origin is None:
            raise InvalidWorkflow(
                f"link {link.id} into {node.label} starts at node {link.origin_id}: no such node"
            )
        return self._resolve_output(origin, link.origin_slot, target_type or entry.type, seen)

    def _resolve_output(
        self, node: _Node, slot: int, target_type: Any, seen: set[tuple[str, str, int]]
    ) -> _Resolved | None:
        _visit(seen, node, "output", slot)
        if node.mode == _BYPASSED:
            index = _bypass_slot(node, slot, target_type)
            return None if index < 0 else self._resolve_input(node, index, seen)
        if node.kind == "subgraph":
            return self._resolve_subgraph_output(node, slot, target_type, seen)
        if node.kind == "virtual":
            if slot < len(node.inputs):
                return self._resolve_input(node, slot, seen, target_type)
            return None
        return _Resolved(node.id, slot)

    def _resolve_subgraph_output(
        self, instance: _Node, slot: int, target_type: Any, seen: set[tuple[str, str, int]]
    ) -> _Resolved | None:
        graph = instance.subgraph
        assert graph is not None and graph.definition is not None
        outputs = _mappings(graph.definition.get("outputs"))
        if slot >= len(outputs):
            raise InvalidWorkflow(f"subgraph node {instance.label} has no output slot {slot}")
        links = [graph.links[i] for i in _ids(outputs[slot].get("linkIds")) if i in graph.links]
        if not links:
            return None
        link = links[0]
        if link.origin_id == str(_SUBGRAPH_INPUT_NODE):
            raise UnsupportedWorkflow(
                "a subgraph output wired straight to a subgraph input",
                f"output {slot} of {instance.label}; the web UI cannot resolve it",
            )
        inner = self.nodes.get(":".join((*instance.path, instance.local_id, link.origin_id)))
        if inner is None:
            raise InvalidWorkflow(
                f"subgraph '{graph.name}' links from node {link.origin_id}, which it lacks"
            )
        return self._resolve_output(inner, link.origin_slot, target_type, seen)

    # ---- what is sent

    def _output_order(self) -> list[_Node]:
        def order_key(node: _Node) -> tuple[int, int, str]:
            # Integer-like keys first, ascending, as a JavaScript object orders them.
            return (0, int(node.id), "") if node.id.isdigit() else (1, 0, "")

        return sorted(self.nodes.values(), key=order_key)

    def _inputs_of(self, node: _Node) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        for widget in node.widgets:
            if not widget.name or not widget.spec.in_prompt:
                continue
            value = self._serialize_widget(node, widget)
            if value is not _UNDEFINED:
                inputs[widget.name] = _wrap(value)
        for slot, entry in enumerate(node.inputs):
            resolved = self._resolve_input(node, slot, set())
            if resolved is None:
                continue
            if resolved.origin_id is None:
                if resolved.value is not _UNDEFINED:
                    inputs[entry.name] = _wrap(resolved.value)
                continue
            inputs[entry.name] = [resolved.origin_id, resolved.origin_slot]
        return inputs

    def _serialize_widget(self, node: _Node, widget: _Widget) -> Any:
        value = widget.value
        if widget.spec.options.get("dynamicPrompts") is True and isinstance(value, str):
            return _process_dynamic_prompt(value, self.rng)
        if (
            node.type in _SAVE_NODE_TYPES
            and widget.name == "filename_prefix"
            and isinstance(value, str)
        ):
            return self._replace_text(value)
        return value

    def _replace_text(self, value: str) -> str:
        # searchAndReplace.ts: %date:FORMAT% and %Node name or title.widget%.
        def replace(match: re.Match[str]) -> str:
            text = match.group(1)
            parts = text.split(".")
            if len(parts) != 2:
                return (
                    _format_date(parts[0][5:], self.now)
                    if parts[0].startswith("date:")
                    else match.group(0)
                )
            node_name, widget_name = parts
            candidates = [n for n in self._nodes_for_replacement() if n[0] == node_name]
            if not candidates:
                candidates = [n for n in self._nodes_for_replacement() if n[1].title == node_name]
            if not candidates:
                return match.group(0)
            widget = candidates[0][1].widget(widget_name)
            if widget is None:
                return match.group(0)
            shown = (
                ""
                if widget.value is None or widget.value is _UNDEFINED
                else _js_string(widget.value)
            )
            return re.sub(r'[/?<>\\:*|"\x00-\x1f\x7f]', "_", shown)

        return re.sub(r"%([^%]+)%", replace, value)

    def _nodes_for_replacement(self) -> Iterable[tuple[str | None, _Node]]:
        seen: set[tuple[str, str]] = set()
        for node in self.nodes.values():
            key = (node.graph.key, node.local_id)
            if key in seen:
                continue
            seen.add(key)
            properties = node.raw.get("properties")
            name = properties.get(_SR_NAME_PROPERTY) if isinstance(properties, Mapping) else None
            if name is None and node.kind == "class" and node.type not in _SAVE_NODE_TYPES:
                name = node.type
            yield name, node


# --------------------------------------------------------------------------------------------
# Small pieces


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    return (
        [entry for entry in value if isinstance(entry, Mapping)] if isinstance(value, list) else []
    )


def _ids(value: Any) -> list[int]:
    if not isinstance(value, list):
        return []
    return [entry for entry in value if isinstance(entry, int) and not isinstance(entry, bool)]


def _saved_input(saved: Mapping[str, Any]) -> _Input:
    widget = saved.get("widget")
    widget_name = (
        str(widget.get("name")) if isinstance(widget, Mapping) and widget.get("name") else None
    )
    return _Input(str(saved.get("name")), saved.get("type"), _link_id(saved), widget_name)


def _link_id(saved: Mapping[str, Any] | None) -> int | None:
    link = saved.get("link") if saved else None
    return link if isinstance(link, int) and not isinstance(link, bool) else None


def _input_holding(node: _Node, link: _Link) -> _Input | None:
    """The input slot of ``node`` that holds ``link`` (slots move on load; the link id does not)."""
    for entry in node.inputs:
        if entry.link == link.id:
            return entry
    if 0 <= link.target_slot < len(node.inputs):
        return node.inputs[link.target_slot]
    return None


def _visit(seen: set[tuple[str, str, int]], node: _Node, side: str, slot: int) -> None:
    key = (node.id, side, slot)
    if key in seen:
        raise InvalidWorkflow(f"links form a loop through {side} {slot} of {node.label}")
    seen.add(key)


def _valid_connection(a: Any, b: Any) -> bool:
    # litegraph LiteGraph.isValidConnection.
    a = 0 if a in ("", "*") else a
    b = 0 if b in ("", "*") else b
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return bool(set(a.split(",")) & set(b.split(",")))


def _bypass_slot(node: _Node, slot: int, target_type: Any) -> int:
    # ExecutableNodeDTO #getBypassSlotIndex: which input a bypassed node passes to output ``slot``.
    inputs = node.inputs
    if target_type in ("*", ""):
        return slot if len(inputs) > slot else 0
    output_type = node.output_types[slot] if slot < len(node.output_types) else None
    if (
        slot < len(inputs)
        and _valid_connection(inputs[slot].type, output_type)
        and _valid_connection(inputs[slot].type, target_type)
    ):
        return slot
    for index, entry in enumerate(inputs):
        if entry.type == target_type:
            return index
    for index, entry in enumerate(inputs):
        if _valid_connection(entry.type, output_type) and _valid_connection(
            entry.type, target_type
        ):
            return index
    return -1


def _wrap(value: Any) -> Any:
    # A list would read as a link: the web UI sends literal lists as {"__value__": [...]}.
    return {"__value__": value} if isinstance(value, list) else value


def _js_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_DATE_TOKEN = re.compile(r"dd?|MM?|hh?|mm?|ss?|yyy?y?")


def _format_date(text: str, now: datetime) -> str:
    # formatUtil.ts formatDate.
    parts = {"d": now.day, "M": now.month, "h": now.hour, "m": now.minute, "s": now.second}

    def token(match: re.Match[str]) -> str:
        found = match.group(0)
        if found == "yy":
            return str(now.year)[2:]
        if found == "yyyy":
            return str(now.year)
        if found[0] in parts:
            return str(parts[found[0]]).rjust(len(found), "0")
        return found

    return _DATE_TOKEN.sub(token, text)


_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//.*")


def _process_dynamic_prompt(text: str, rng: random.Random) -> str:
    """formatUtil.ts processDynamicPrompt: comments removed, each ``{a|b|c}`` one choice."""
    text = _COMMENTS.sub("", text)
    position = 0

    def escape() -> str:
        nonlocal position
        following = text[position] if position < len(text) else "undefined"
        position += 1
        return "\\" + following

    def choice_block() -> str:
        nonlocal position
        options: list[str] = []
        choice = ""
        depth = 0
        while position < len(text):
            char = text[position]
            position += 1
            if char == "\\":
                choice += escape()
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if not depth:
                    break
                depth -= 1
            elif char == "|" and not depth:
                options.append(choice)
                choice = ""
                continue
            choice += char
        options.append(choice)
        return _process_dynamic_prompt(options[int(rng.random() * len(options))], rng)

    result = ""
    while position < len(text):
        char = text[position]
        position += 1
        if char == "\\":
            result += escape()
        elif char == "{":
            result += choice_block()
        else:
            result += char
    return result
