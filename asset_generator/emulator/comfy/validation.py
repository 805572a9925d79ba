"""``POST /prompt`` validation, after ``execution.py`` ``validate_prompt`` / ``validate_inputs``.

The checks, their order, the error dictionaries and even the exceptions that escape (a link to
a node that does not exist is a ``KeyError`` caught as ``exception_during_validation``) follow
ComfyUI 0.3.64 line by line; what a class accepts comes from its declaration in the catalog.
As on the real server, validation converts constant inputs in place (``"4"`` becomes ``4`` for
an INT), and that converted prompt is what runs and what ``/queue`` and ``/history`` show.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from asset_generator.emulator.comfy.catalog import Catalog
from asset_generator.emulator.comfy.files import Folders
from asset_generator.emulator.comfy.nodes import NODE_CLASSES

Reason = dict[str, Any]


def full_type_name(klass: type) -> str:
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__


def get_input_info(
    inputs: dict[str, dict[str, Any]], input_name: str
) -> tuple[Any, str | None, Any]:
    """``comfy_execution.graph.get_input_info``: (type, category, extra info)."""
    input_info = None
    category = None
    for section in ("required", "optional", "hidden"):
        if section in inputs and input_name in inputs[section]:
            category, input_info = section, inputs[section][input_name]
            break
    if input_info is None:
        return None, None, None
    extra_info = input_info[1] if len(input_info) > 1 else {}
    return input_info[0], category, extra_info


def validate_node_input(received_type: Any, input_type: Any) -> bool:
    """``comfy_execution.validation.validate_node_input`` (not strict)."""
    if not received_type != input_type:  # noqa: SIM202 (__ne__ overrides decide, as upstream)
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    wanted = {t.strip() for t in input_type.split(",")}
    return len(received & wanted) > 0


class Validator:
    """Validates one prompt against the catalog."""

    def __init__(self, catalog: Catalog, folders: Folders) -> None:
        self.catalog = catalog
        self.folders = folders

    def validate_prompt(
        self, prompt: Any, partial_execution_list: Any
    ) -> tuple[bool, Reason | None, list[str], dict[str, Any]]:
        """(valid, error, outputs to run, node_errors), as ``execution.validate_prompt``."""
        outputs: list[str] = []
        for x in prompt:
            if "class_type" not in prompt[x]:
                error = {
                    "type": "invalid_prompt",
                    "message": "Cannot execute because a node is missing the class_type property.",
                    "details": f"Node ID '#{x}'",
                    "extra_info": {},
                }
                return (False, error, [], {})
            class_type = prompt[x]["class_type"]
            if not self.catalog.has(class_type):
                error = {
                    "type": "invalid_prompt",
                    "message": f"Cannot execute because node {class_type} does not exist.",
                    "details": f"Node ID '#{x}'",
                    "extra_info": {},
                }
                return (False, error, [], {})
            if self.catalog.is_output_node(class_type) and (
                partial_execution_list is None or x in partial_execution_list
            ):
                outputs.append(x)

        if len(outputs) == 0:
            error = {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            }
            return (False, error, [], {})

        good_outputs: list[str] = []
        errors: list[tuple[str, list[Reason]]] = []
        node_errors: dict[str, Any] = {}
        validated: dict[str, tuple[bool, list[Reason], str]] = {}
        for o in outputs:
            try:
                m = self.validate_inputs(prompt, o, validated)
                valid, reasons = m[0], m[1]
            except Exception as ex:
                typ, _, tb = sys.exc_info()
                assert typ is not None
                valid = False
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(ex),
                        "extra_info": {
                            "exception_type": full_type_name(typ),
                            "traceback": traceback.format_tb(tb),
                        },
                    }
                ]
                validated[o] = (False, reasons, o)

            if valid is True:
                good_outputs.append(o)
                continue
            errors.append((o, reasons))
            for node_id, result in validated.items():
                # Nodes downstream of a failing node fail without reasons of their own:
                # only nodes with reasons are reported.
                if result[0] is not True and len(result[1]) > 0:
                    if node_id not in node_errors:
                        node_errors[node_id] = {
                            "errors": result[1],
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        }
                    node_errors[node_id]["dependent_outputs"].append(o)

        if len(good_outputs) == 0:
            lines = [f"{e['message']}: {e['details']}" for _, found in errors for e in found]
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "\n".join(lines),
                "extra_info": {},
            }
            return (False, error, good_outputs, node_errors)
        return (True, None, good_outputs, node_errors)

    def validate_inputs(
        self, prompt: dict[str, Any], unique_id: str, validated: dict[str, Any]
    ) -> tuple[bool, list[Reason], str]:
        if unique_id in validated:
            return validated[unique_id]
        inputs = prompt[unique_id]["inputs"]
        class_type = prompt[unique_id]["class_type"]
        class_inputs = self.catalog.input_types(class_type)
        required = class_inputs.get("required", {})
        optional = [n for n in class_inputs.get("optional", {}) if n not in required]
        valid_inputs = [*required, *optional]
        node_class = NODE_CLASSES[class_type]
        validate_function_inputs = node_class.validate_args
        errors: list[Reason] = []
        valid = True

        for x in valid_inputs:
            input_type, input_category, extra_info = get_input_info(class_inputs, x)
            if x not in inputs:
                if input_category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{x}",
                            "extra_info": {"input_name": x},
                        }
                    )
                continue

            val = inputs[x]
            info = (input_type, extra_info)
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Bad linked input, must be a length-2 list of "
                            "[node_id, slot_index]",
                            "details": f"{x}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": info,
                                "received_value": val,
                            },
                        }
                    )
                    continue
                o_id = val[0]
                o_class_type = prompt[o_id]["class_type"]
                received_type = self.catalog.return_types(o_class_type)[val[1]]
                if not validate_node_input(received_type, input_type):
                    details = (
                        f"{x}, received_type({received_type}) mismatch input_type({input_type})"
                    )
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": details,
                            "extra_info": {
                                "input_name": x,
                                "input_config": info,
                                "received_type": received_type,
                                "linked_node": val,
                            },
                        }
                    )
                    continue
                try:
                    r = self.validate_inputs(prompt, o_id, validated)
                    if r[0] is False:
                        valid = False
                        continue
                except Exception as ex:
                    typ, _, tb = sys.exc_info()
                    assert typ is not None
                    valid = False
                    validated[o_id] = (
                        False,
                        [
                            {
                                "type": "exception_during_inner_validation",
                                "message": "Exception when validating inner node",
                                "details": str(ex),
                                "extra_info": {
                                    "input_name": x,
                                    "input_config": info,
                                    "exception_message": str(ex),
                                    "exception_type": full_type_name(typ),
                                    "traceback": traceback.format_tb(tb),
                                    "linked_node": val,
                                },
                            }
                        ],
                        o_id,
                    )
                    continue
            else:
                try:
                    # {"__value__": [...]} carries a literal list (a bare list is a link).
                    if isinstance(val, dict) and "__value__" in val:
                        val = val["__value__"]
                        inputs[x] = val
                    if input_type == "INT":
                        val = int(val)
                        inputs[x] = val
                    if input_type == "FLOAT":
                        val = float(val)
                        inputs[x] = val
                    if input_type == "STRING":
                        val = str(val)
                        inputs[x] = val
                    if input_type == "BOOLEAN":
                        val = bool(val)
                        inputs[x] = val
                except Exception as ex:
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": f"Failed to convert an input value to a {input_type} value",
                            "details": f"{x}, {val}, {ex}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": info,
                                "received_value": val,
                                "exception_message": str(ex),
                            },
                        }
                    )
                    continue

                if x not in validate_function_inputs:
                    if "min" in extra_info and val < extra_info["min"]:
                        errors.append(
                            {
                                "type": "value_smaller_than_min",
                                "message": f"Value {val} smaller than min of {extra_info['min']}",
                                "details": f"{x}",
                                "extra_info": {
                                    "input_name": x,
                                    "input_config": info,
                                    "received_value": val,
                                },
                            }
                        )
                        continue
                    if "max" in extra_info and val > extra_info["max"]:
                        errors.append(
                            {
                                "type": "value_bigger_than_max",
                                "message": f"Value {val} bigger than max of {extra_info['max']}",
                                "details": f"{x}",
                                "extra_info": {
                                    "input_name": x,
                                    "input_config": info,
                                    "received_value": val,
                                },
                            }
                        )
                        continue
                    if isinstance(input_type, list):
                        combo_options = input_type
                        if val not in combo_options:
                            input_config: Any = info
                            # Long lists (many model files) are not sent back.
                            if len(combo_options) > 20:
                                list_info = f"(list of length {len(combo_options)})"
                                input_config = None
                            else:
                                list_info = str(combo_options)
                            errors.append(
                                {
                                    "type": "value_not_in_list",
                                    "message": "Value not in list",
                                    "details": f"{x}: '{val}' not in {list_info}",
                                    "extra_info": {
                                        "input_name": x,
                                        "input_config": input_config,
                                        "received_value": val,
                                    },
                                }
                            )
                            continue

        if node_class.validate is not None:
            arguments = {x: inputs[x] for x in validate_function_inputs if x in inputs}
            result = node_class.validate(self.folders, **arguments)
            if result is not True:
                for x in arguments:
                    details = f"{x}"
                    if result is not False:
                        details += f" - {result}"
                    errors.append(
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": details,
                            "extra_info": {"input_name": x},
                        }
                    )

        ret = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        validated[unique_id] = ret
        return ret
