"""The queue, the history and the worker that runs one prompt at a time.

Ports of ComfyUI 0.3.64's ``PromptQueue``, ``PromptExecutor.execute_async``, ``execute``,
``ExecutionList`` (the order nodes run in), the classic output cache (keyed by input
signatures, so an identical resubmission is served from it and only the last prompt's nodes
are kept), the ``progress_state`` registry and ``main.py``'s ``prompt_worker``. Messages go
through ``Hub.send_sync`` with the prompt's ``client_id`` as the target, exactly where the
real server sends them, so routing and order match.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from asset_generator.emulator.comfy.catalog import Catalog
from asset_generator.emulator.comfy.config import ComfyConfig
from asset_generator.emulator.comfy.files import Folders
from asset_generator.emulator.comfy.nodes import (
    NODE_CLASSES,
    InterruptProcessingError,
    NodeContext,
    Preview,
)
from asset_generator.emulator.comfy.validation import full_type_name, get_input_info

MAXIMUM_HISTORY_SIZE = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


class Hub(Protocol):
    """The server side the worker talks to (``PromptServer`` in ComfyUI)."""

    client_id: Any
    last_node_id: str | None
    last_prompt_id: str | None

    def send_sync(self, event: Any, data: Any, sid: Any = None) -> None: ...

    def queue_updated(self) -> None: ...


def is_link(obj: Any) -> bool:
    """``comfy_execution.graph_utils.is_link``."""
    return (
        isinstance(obj, list)
        and len(obj) == 2
        and isinstance(obj[0], str)
        and isinstance(obj[1], int | float)
    )


def timestamp_ms() -> int:
    return int(time.time() * 1000)


# -- queue and history ------------------------------------------------------------------------


class ExecutionStatus(NamedTuple):
    status_str: str
    completed: bool
    messages: list[Any]


class PromptQueue:
    """``execution.PromptQueue``: a heap of (number, id, prompt, extra_data, outputs)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.task_counter = 0
        self.queue: list[Any] = []
        self.currently_running: dict[int, Any] = {}
        self.history: dict[Any, Any] = {}
        self.flags: dict[str, Any] = {}
        self.changed = asyncio.Event()

    def put(self, item: tuple[Any, ...]) -> None:
        heapq.heappush(self.queue, item)
        self.hub.queue_updated()
        self.changed.set()

    def get(self) -> tuple[Any, int] | None:
        if not self.queue:
            return None
        item = heapq.heappop(self.queue)
        i = self.task_counter
        self.currently_running[i] = copy.deepcopy(item)
        self.task_counter += 1
        self.hub.queue_updated()
        return item, i

    def task_done(
        self, item_id: int, history_result: dict[str, Any], status: ExecutionStatus | None
    ) -> None:
        prompt = self.currently_running.pop(item_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        status_dict = copy.deepcopy(status._asdict()) if status is not None else None
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            if isinstance(prompt[3], dict) and key in prompt[3]:
                prompt[3].pop(key)
        self.history[prompt[1]] = {"prompt": prompt, "outputs": {}, "status": status_dict}
        self.history[prompt[1]].update(history_result)
        self.hub.queue_updated()

    def get_current_queue(self) -> tuple[list[Any], list[Any]]:
        return list(self.currently_running.values()), list(self.queue)

    def get_tasks_remaining(self) -> int:
        return len(self.queue) + len(self.currently_running)

    def wipe_queue(self) -> None:
        self.queue = []
        self.hub.queue_updated()

    def delete_queue_item(self, function: Callable[[Any], bool]) -> bool:
        for x in range(len(self.queue)):
            if function(self.queue[x]):
                if len(self.queue) == 1:
                    self.wipe_queue()
                else:
                    self.queue.pop(x)
                    heapq.heapify(self.queue)
                self.hub.queue_updated()
                return True
        return False

    def get_history(
        self, prompt_id: Any = None, max_items: int | None = None, offset: int = -1
    ) -> dict[Any, Any]:
        if prompt_id is None:
            out = {}
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            for i, key in enumerate(self.history):
                if i >= offset:
                    out[key] = self.history[key]
                    if max_items is not None and len(out) >= max_items:
                        break
            return out
        if prompt_id in self.history:
            return {prompt_id: copy.deepcopy(self.history[prompt_id])}
        return {}

    def wipe_history(self) -> None:
        self.history = {}

    def delete_history_item(self, id_to_delete: Any) -> None:
        self.history.pop(id_to_delete, None)

    def set_flag(self, name: str, data: Any) -> None:
        self.flags[name] = data
        self.changed.set()

    def get_flags(self) -> dict[str, Any]:
        flags, self.flags = self.flags, {}
        return flags


# -- the output cache (CacheKeySetInputSignature + HierarchicalCache, no subgraphs) ----------


class _Unhashable:
    def __init__(self) -> None:
        self.value = float("nan")


def to_hashable(obj: Any) -> Any:
    if isinstance(obj, int | float | str | bool | type(None)):
        return obj
    if isinstance(obj, Mapping):
        return frozenset([(to_hashable(k), to_hashable(v)) for k, v in sorted(obj.items())])
    if isinstance(obj, Sequence):
        return frozenset(zip(itertools.count(), [to_hashable(i) for i in obj], strict=False))
    return _Unhashable()


class SignatureCache:
    """Values keyed by a node's input signature; only the current prompt's keys survive."""

    def __init__(self) -> None:
        self.cache: dict[Any, Any] = {}
        self.keys: dict[str, Any] = {}

    def set_prompt(self, keys: dict[str, Any]) -> None:
        self.keys = keys

    def clean_unused(self) -> None:
        preserve = set(self.keys.values())
        for key in [k for k in self.cache if k not in preserve]:
            del self.cache[key]

    def get(self, node_id: str) -> Any:
        key = self.keys.get(node_id)
        return self.cache.get(key) if key in self.cache else None

    def set(self, node_id: str, value: Any) -> None:
        self.cache[self.keys.get(node_id)] = value

    def all_node_ids(self) -> list[str]:
        return list(self.keys)


class Signatures:
    """``CacheKeySetInputSignature`` for one prompt."""

    def __init__(self, prompt: dict[str, Any], is_changed: Callable[[str], Any]) -> None:
        self.prompt = prompt
        self.is_changed = is_changed

    def keys(self, node_ids: Iterable[str]) -> dict[str, Any]:
        return {node_id: self.node_signature(node_id) for node_id in node_ids}

    def node_signature(self, node_id: str) -> Any:
        ancestors: list[str] = []
        order: dict[str, int] = {}
        self._ancestry(node_id, ancestors, order)
        signature = [self._immediate(node_id, order)]
        signature.extend(self._immediate(a, order) for a in ancestors)
        return to_hashable(signature)

    def _immediate(self, node_id: str, order: dict[str, int]) -> list[Any]:
        if node_id not in self.prompt:
            return [float("nan")]  # a missing node can never be cached
        node = self.prompt[node_id]
        signature: list[Any] = [node["class_type"], self.is_changed(node_id)]
        inputs = node["inputs"]
        for key in sorted(inputs):
            if is_link(inputs[key]):
                ancestor_id, socket = inputs[key]
                signature.append((key, ("ANCESTOR", order[ancestor_id], socket)))
            else:
                signature.append((key, inputs[key]))
        return signature

    def _ancestry(self, node_id: str, ancestors: list[str], order: dict[str, int]) -> None:
        if node_id not in self.prompt:
            return
        inputs = self.prompt[node_id]["inputs"]
        for key in sorted(inputs):
            if is_link(inputs[key]):
                ancestor_id = inputs[key][0]
                if ancestor_id not in order:
                    ancestors.append(ancestor_id)
                    order[ancestor_id] = len(ancestors) - 1
                    self._ancestry(ancestor_id, ancestors, order)


# -- execution order (comfy_execution.graph.ExecutionList) -----------------------------------


class DependencyCycleError(Exception):
    pass


class ExecutionList:
    """A topological dissolve of the graph from the output nodes, skipping cached nodes."""

    def __init__(self, prompt: dict[str, Any], catalog: Catalog, outputs: SignatureCache) -> None:
        self.prompt = prompt
        self.catalog = catalog
        self.outputs = outputs
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[Any, bool]]] = {}
        self.staged: str | None = None

    def is_cached(self, node_id: str) -> bool:
        return self.outputs.get(node_id) is not None

    def add_strong_link(self, from_node_id: str, from_socket: Any, to_node_id: str) -> None:
        if not self.is_cached(from_node_id):
            self.add_node(from_node_id)
            if to_node_id not in self.blocking[from_node_id]:
                self.blocking[from_node_id][to_node_id] = {}
                self.block_count[to_node_id] += 1
            self.blocking[from_node_id][to_node_id][from_socket] = True

    def add_node(self, node_unique_id: str) -> None:
        node_ids = [node_unique_id]
        links = []
        while node_ids:
            unique_id = node_ids.pop()
            if unique_id in self.pending:
                continue
            self.pending[unique_id] = True
            self.block_count[unique_id] = 0
            self.blocking[unique_id] = {}
            inputs = self.prompt[unique_id]["inputs"]
            class_inputs = self.catalog.input_types(self.prompt[unique_id]["class_type"])
            for input_name, value in inputs.items():
                if is_link(value):
                    from_node_id, from_socket = value
                    _, _, input_info = get_input_info(class_inputs, input_name)
                    is_lazy = isinstance(input_info, dict) and bool(input_info.get("lazy"))
                    if not is_lazy and not self.is_cached(from_node_id):
                        node_ids.append(from_node_id)
                        links.append((from_node_id, from_socket, unique_id))
        for link in links:
            self.add_strong_link(*link)

    def is_empty(self) -> bool:
        return not self.pending

    def stage_node_execution(self) -> tuple[str | None, dict[str, Any] | None, Exception | None]:
        if self.is_empty():
            return None, None, None
        available = [n for n in self.pending if self.block_count[n] == 0]
        if not available:
            ex = DependencyCycleError("Dependency cycle detected")
            details = {
                "node_id": next(iter(self.pending)),
                "exception_message": str(ex),
                "exception_type": "graph.DependencyCycleError",
                "traceback": [],
                "current_inputs": [],
            }
            return None, details, ex
        self.staged = self._ux_friendly_pick(available)
        return self.staged, None, None

    def _is_output(self, node_id: str) -> bool:
        return self.catalog.is_output_node(self.prompt[node_id]["class_type"])

    def _ux_friendly_pick(self, node_list: list[str]) -> str:
        # An output node first, then what unblocks one, then what unblocks that.
        for node_id in node_list:
            if self._is_output(node_id):
                return node_id
        for node_id in node_list:
            if any(self._is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in node_list:
            for blocked in self.blocking[node_id]:
                if any(self._is_output(b) for b in self.blocking[blocked]):
                    return node_id
        return node_list[0]

    def complete_node_execution(self) -> None:
        node_id = self.staged
        assert node_id is not None
        del self.pending[node_id]
        for blocked in self.blocking[node_id]:
            self.block_count[blocked] -= 1
        del self.blocking[node_id]
        self.staged = None


# -- progress_state (comfy_execution/progress.py) ---------------------------------------------


class ProgressRegistry:
    """Per-node state; every change sends ``progress_state`` with all non-pending nodes."""

    def __init__(self, prompt_id: str, hub: Hub, send_preview: Callable[[str, Preview], None]):
        self.prompt_id = prompt_id
        self.hub = hub
        self.nodes: dict[str, dict[str, Any]] = {}
        self.send_preview = send_preview

    def _entry(self, node_id: str) -> dict[str, Any]:
        if node_id not in self.nodes:
            self.nodes[node_id] = {"state": "pending", "value": 0, "max": 1}
        return self.nodes[node_id]

    def _send(self) -> None:
        active = {
            node_id: {
                "value": state["value"],
                "max": state["max"],
                "state": state["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, state in self.nodes.items()
            if state["state"] != "pending"
        }
        payload = {"prompt_id": self.prompt_id, "nodes": active}
        self.hub.send_sync("progress_state", payload, self.hub.client_id)

    def start(self, node_id: str) -> None:
        self._entry(node_id).update(state="running", value=0.0, max=1.0)
        self._send()

    def update(self, node_id: str, value: Any, max_value: Any, preview: Preview | None) -> None:
        self._entry(node_id).update(state="running", value=value, max=max_value)
        self._send()
        if preview is not None:
            self.send_preview(node_id, preview)

    def finish(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        self._send()


# -- the executor -----------------------------------------------------------------------------


@dataclass
class Failure:
    node_id: str
    exception: BaseException
    details: dict[str, Any] = field(default_factory=dict)


def format_value(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, int | float | bool | str):
        return x
    return str(x)


class Interrupt:
    """``comfy.model_management``'s global interrupt flag."""

    def __init__(self) -> None:
        self.requested = False

    def set(self, value: bool = True) -> None:
        self.requested = value

    def throw_if_requested(self) -> None:
        if self.requested:
            self.requested = False
            raise InterruptProcessingError()


class PromptExecutor:
    """``execution.PromptExecutor`` with the classic cache."""

    def __init__(
        self,
        hub: Hub,
        catalog: Catalog,
        folders: Folders,
        config: ComfyConfig,
        interrupt: Interrupt,
        preview_sender: Callable[[str, str, Preview], None],
    ) -> None:
        self.hub = hub
        self.catalog = catalog
        self.folders = folders
        self.config = config
        self.interrupt = interrupt
        self.preview_sender = preview_sender
        self.reset()

    def reset(self) -> None:
        self.outputs = SignatureCache()
        self.ui = SignatureCache()
        self.status_messages: list[Any] = []
        self.success = True
        self.history_result: dict[str, Any] = {}

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": timestamp_ms()}
        self.status_messages.append((event, data))
        if self.hub.client_id is not None or broadcast:
            self.hub.send_sync(event, data, self.hub.client_id)

    def _is_changed(self, prompt: dict[str, Any]) -> Callable[[str], Any]:
        results: dict[str, Any] = {}

        def get(node_id: str) -> Any:
            if node_id in results:
                return results[node_id]
            node = prompt[node_id]
            node_class = NODE_CLASSES[node["class_type"]]
            if node_class.is_changed is None:
                results[node_id] = False
                return False
            if "is_changed" in node:
                results[node_id] = node["is_changed"]
                return results[node_id]
            constants = {k: v for k, v in node["inputs"].items() if not is_link(v)}
            try:
                value: Any = [node_class.is_changed(self.folders, **constants)]
            except Exception:
                value = float("nan")
            # IsChangedCache writes the result into the prompt itself, so SaveImage's "prompt"
            # PNG chunk shows it (SlowSolidImage: "is_changed": [NaN]).
            node["is_changed"] = value
            results[node_id] = value
            return value

        return get

    async def execute_async(
        self, prompt: dict[str, Any], prompt_id: str, extra_data: Any, execute_outputs: list[str]
    ) -> None:
        self.interrupt.set(False)  # an interrupt sent while idle is lost here
        # extra_data may be any JSON value: `in` works on lists and strings, .get would not.
        has_client = "client_id" in extra_data
        self.hub.client_id = extra_data["client_id"] if has_client else None
        self.status_messages = []
        self.add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)

        progress = ProgressRegistry(
            prompt_id, self.hub, lambda node, p: self.preview_sender(prompt_id, node, p)
        )
        keys = Signatures(prompt, self._is_changed(prompt)).keys(prompt.keys())
        for cache in (self.outputs, self.ui):
            cache.set_prompt(keys)
            cache.clean_unused()
        cached_nodes = [node_id for node_id in prompt if self.outputs.get(node_id) is not None]
        self.add_message(
            "execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, broadcast=False
        )
        executed: list[str] = []
        execution_list = ExecutionList(prompt, self.catalog, self.outputs)
        current_outputs = self.outputs.all_node_ids()
        for node_id in list(execute_outputs):
            execution_list.add_node(node_id)

        failed = False
        while not execution_list.is_empty():
            node_id, error, ex = execution_list.stage_node_execution()
            if error is not None:
                assert ex is not None
                failure = Failure(str(error["node_id"]), ex, error)
                self._handle_error(prompt_id, prompt, current_outputs, executed, failure)
                failed = True
                break
            assert node_id is not None
            failure = await self._execute(
                prompt, prompt_id, node_id, extra_data, executed, progress
            )
            self.success = failure is None
            if failure is not None:
                self._handle_error(prompt_id, prompt, current_outputs, executed, failure)
                failed = True
                break
            execution_list.complete_node_execution()
        if not failed:
            self.add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)

        ui_outputs: dict[str, Any] = {}
        meta_outputs: dict[str, Any] = {}
        for node_id in self.ui.all_node_ids():
            ui_info = self.ui.get(node_id)
            if ui_info is not None:
                ui_outputs[node_id] = ui_info["output"]
                meta_outputs[node_id] = ui_info["meta"]
        self.history_result = {"outputs": ui_outputs, "meta": meta_outputs}
        self.hub.last_node_id = None

    def _handle_error(
        self,
        prompt_id: str,
        prompt: dict[str, Any],
        current_outputs: list[str],
        executed: list[str],
        failure: Failure,
    ) -> None:
        node_id = failure.node_id
        mes: dict[str, Any] = {
            "prompt_id": prompt_id,
            "node_id": node_id,
            "node_type": prompt[node_id]["class_type"],
            "executed": list(executed),
        }
        if isinstance(failure.exception, InterruptProcessingError):
            self.add_message("execution_interrupted", mes, broadcast=True)
            return
        mes.update(
            exception_message=failure.details["exception_message"],
            exception_type=failure.details["exception_type"],
            traceback=failure.details["traceback"],
            current_inputs=failure.details["current_inputs"],
            current_outputs=list(current_outputs),
        )
        self.add_message("execution_error", mes, broadcast=False)

    def _input_data(
        self, prompt: dict[str, Any], node_id: str, extra_data: Any
    ) -> dict[str, list[Any]]:
        """``get_input_data``: linked values from the cache, constants, hidden inputs."""
        node = prompt[node_id]
        class_inputs = self.catalog.input_types(node["class_type"])
        data: dict[str, list[Any]] = {}
        for name, value in node["inputs"].items():
            _, category, _ = get_input_info(class_inputs, name)
            if is_link(value):
                cached = self.outputs.get(value[0])
                if cached is None or value[1] >= len(cached):
                    data[name] = [None]
                    continue
                data[name] = cached[value[1]]
            elif category is not None:
                data[name] = [value]
        for name, kind in class_inputs.get("hidden", {}).items():
            if kind == "PROMPT":
                data[name] = [prompt]
            elif kind == "EXTRA_PNGINFO":
                data[name] = [extra_data.get("extra_pnginfo", None)]
            elif kind == "UNIQUE_ID":
                data[name] = [node_id]
        return data

    async def _execute(
        self,
        prompt: dict[str, Any],
        prompt_id: str,
        unique_id: str,
        extra_data: Any,
        executed: list[str],
        progress: ProgressRegistry,
    ) -> Failure | None:
        """``execution.execute`` for one node; a Failure when it raised or was interrupted."""
        hub = self.hub
        class_type = prompt[unique_id]["class_type"]
        if self.outputs.get(unique_id) is not None:
            if hub.client_id is not None:
                cached_ui = self.ui.get(unique_id) or {}
                hub.send_sync(
                    "executed",
                    {
                        "node": unique_id,
                        "display_node": unique_id,
                        "output": cached_ui.get("output", None),
                        "prompt_id": prompt_id,
                    },
                    hub.client_id,
                )
            progress.finish(unique_id)
            return None

        input_data_all: dict[str, list[Any]] | None = None
        try:
            progress.start(unique_id)
            input_data_all = self._input_data(prompt, unique_id, extra_data)
            if hub.client_id is not None:
                hub.last_node_id = unique_id
                hub.send_sync(
                    "executing",
                    {"node": unique_id, "display_node": unique_id, "prompt_id": prompt_id},
                    hub.client_id,
                )
            self.interrupt.throw_if_requested()  # nodes.before_node_execution

            def hook(value: int, total: int, preview: Preview | None) -> None:
                # main.py hijack_progress: the interrupt check comes before the report.
                self.interrupt.throw_if_requested()
                progress.update(unique_id, value, total, preview)
                payload = {"value": value, "max": total, "prompt_id": prompt_id, "node": unique_id}
                hub.send_sync("progress", payload, hub.client_id)
                if preview is not None:
                    self.preview_sender(prompt_id, unique_id, preview, legacy=True)

            context = NodeContext(
                unique_id=unique_id,
                prompt_id=prompt_id,
                config=self.config,
                folders=self.folders,
                progress=hook,
                check_interrupt=self.interrupt.throw_if_requested,
            )
            arguments = {name: values[0] for name, values in input_data_all.items()}
            result = await NODE_CLASSES[class_type].run(context, **arguments)
            output_ui: dict[str, Any] = {}
            if isinstance(result, dict):
                output_ui = result.get("ui", {})
                output_data = [[v] for v in result.get("result", ())]
            else:
                output_data = [[v] for v in result]
            if output_ui:
                self.ui.set(
                    unique_id,
                    {
                        "meta": {
                            "node_id": unique_id,
                            "display_node": unique_id,
                            "parent_node": None,
                            "real_node_id": unique_id,
                        },
                        "output": output_ui,
                    },
                )
                if hub.client_id is not None:
                    hub.send_sync(
                        "executed",
                        {
                            "node": unique_id,
                            "display_node": unique_id,
                            "output": output_ui,
                            "prompt_id": prompt_id,
                        },
                        hub.client_id,
                    )
            self.outputs.set(unique_id, output_data)
        except InterruptProcessingError as iex:
            return Failure(unique_id, iex)
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            assert typ is not None
            formatted: dict[str, Any] = {}
            if input_data_all is not None:
                formatted = {
                    name: [format_value(x) for x in values]
                    for name, values in input_data_all.items()
                }
            details = {
                "node_id": unique_id,
                "exception_message": f"{ex}\n",
                "exception_type": full_type_name(typ),
                "traceback": traceback.format_tb(tb),
                "current_inputs": formatted,
            }
            return Failure(unique_id, ex, details)
        progress.finish(unique_id)
        executed.append(unique_id)
        return None


async def prompt_worker(
    queue: PromptQueue, executor: PromptExecutor, hub: Hub, stopping: asyncio.Event
) -> None:
    """``main.py`` ``prompt_worker``: take, execute, record, announce the end; flags between."""
    while not stopping.is_set():
        queue_item = queue.get()
        if queue_item is not None:
            item, item_id = queue_item
            prompt_id = item[1]
            hub.last_prompt_id = prompt_id
            await executor.execute_async(item[2], prompt_id, item[3], item[4])
            queue.task_done(
                item_id,
                executor.history_result,
                status=ExecutionStatus(
                    status_str="success" if executor.success else "error",
                    completed=executor.success,
                    messages=executor.status_messages,
                ),
            )
            if hub.client_id is not None:
                hub.send_sync("executing", {"node": None, "prompt_id": prompt_id}, hub.client_id)
        flags = queue.get_flags()
        if flags.get("free_memory", False):
            executor.reset()  # POST /free {"free_memory": true} empties the cache
        if not queue.queue:
            queue.changed.clear()
            await queue.changed.wait()
