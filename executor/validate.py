"""Validation before anything runs: every error at once, each a structured NodeError."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

import networkx as nx

from .errors import NodeError
from .schema import ANY, Input, Node, Registry
from .workflow import INVALID, Link, NodeSpec, Workflow

COMPONENT_PREFIX = "component/"  # node types of components (executor/components.py imports it from here)


@dataclass
class ValidPrompt:
    """A workflow that passed validation: constants coerced, outputs chosen."""

    workflow: Workflow
    outputs: list[str]
    classes: dict[str, type[Node]]


def _types_match(received: str, expected: str) -> bool:
    if received == expected or ANY in (received, expected):
        return True
    if expected == "COMBO" and received in ("STRING", "COMBO"):
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


def _coerce(inp: Input, value: Any) -> Any:
    """Coerce a constant to its input's type, as ComfyUI does; raises ValueError/TypeError on failure."""
    if inp.is_combo:
        return value
    t = inp.type
    if t == "INT":
        if isinstance(value, bool):
            raise TypeError("a boolean is not an integer")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not a whole number")
        return int(value)
    if t == "FLOAT":
        if isinstance(value, bool):
            raise TypeError("a boolean is not a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number
    if t == "STRING":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError("not a string")
        return str(value)
    if t == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise TypeError("not a boolean")
    return value


def _check_constant(spec: NodeSpec, inp: Input, value: Any, errors: list[NodeError]) -> Any:
    def err(kind: str, message: str, expected: Any, hint: str = "") -> None:
        errors.append(NodeError(kind, message, spec.id, spec.class_type, inp.name, expected, value, hint))

    if not inp.is_widget:
        err("invalid_input_type", f"Input {inp.name!r} takes a link from a {inp.type} output, not a constant",
            f"link to a {inp.type} output")
        return value
    try:
        value = _coerce(inp, value)
    except (TypeError, ValueError) as exc:
        err("invalid_input_type", f"Failed to convert an input value to a {inp.type} value ({exc})", inp.type)
        return value
    if inp.min is not None and value < inp.min:
        err("value_smaller_than_min", f"Value {value} smaller than min of {inp.min}", f">= {inp.min}")
    if inp.max is not None and value > inp.max:
        err("value_bigger_than_max", f"Value {value} bigger than max of {inp.max}", f"<= {inp.max}")
    if inp.is_combo:
        choices = inp.choices()
        if value not in choices:
            shown = choices if len(choices) <= 20 else [*choices[:20], "…"]
            hint = inp.missing_hint(value) if inp.missing_hint else ""
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
            if close and not hint:
                hint = "did you mean " + ", ".join(repr(c) for c in close) + "?"
            err("value_not_in_list", f"Value not in list: {inp.name}: {value!r} not in {len(choices)} choices",
                shown, hint)
    return value


def check_node(spec: NodeSpec, cls: type[Node], wf: Workflow, registry: Registry, errors: list[NodeError]) -> None:
    constants: dict[str, Any] = {}
    for inp in cls.inputs:
        if inp.name not in spec.inputs:
            if not inp.optional:
                errors.append(NodeError("required_input_missing", f"Required input is missing: {inp.name}",
                                        spec.id, spec.class_type, inp.name, inp.type, None,
                                        f"default is {inp.default!r}" if inp.default is not None else ""))
            continue
        value = spec.inputs[inp.name]
        if value is INVALID:
            continue
        if isinstance(value, Link):
            source = wf.nodes.get(value.node)
            if source is None:
                errors.append(NodeError("dangling_link", f"Input {inp.name!r} links to node {value.node}, "
                                        "which is not in the workflow", spec.id, spec.class_type, inp.name,
                                        "an existing node id", value.node))
                continue
            source_cls = registry.get(source.class_type)
            if source_cls is None:
                continue  # reported as an unknown node type
            if not 0 <= value.slot < len(source_cls.outputs):
                errors.append(NodeError("output_slot_out_of_range", f"Input {inp.name!r} links to output "
                                        f"{value.slot} of node {value.node} ({source.class_type}), which has "
                                        f"{len(source_cls.outputs)} output(s)", spec.id, spec.class_type, inp.name,
                                        f"0..{len(source_cls.outputs) - 1}", value.slot))
                continue
            received = source_cls.outputs[value.slot].type
            expected = "COMBO" if inp.is_combo else inp.type
            if not _types_match(received, expected):
                errors.append(NodeError("return_type_mismatch", "Return type mismatch between linked nodes",
                                        spec.id, spec.class_type, inp.name, expected, received,
                                        f"node {value.node} output {value.slot} is {received}"))
            continue
        spec.inputs[inp.name] = constants[inp.name] = _check_constant(spec, inp, value, errors)
    if constants and not any(e.node_id == spec.id for e in errors):
        try:
            problems = cls.check(**constants)
        except Exception as e:  # a node's own check must not take validation (or the server) down with it
            errors.append(NodeError("custom_validation_failed", f"{spec.class_type} could not check its inputs: "
                                    f"{type(e).__name__}: {e}", spec.id, spec.class_type, received=constants))
            return
        for name, problem in problems.items():
            errors.append(NodeError("custom_validation_failed", problem, spec.id, spec.class_type, name,
                                    received=constants.get(name)))


def graph_of(wf: Workflow, node_ids: Any = None) -> nx.DiGraph:
    """Dependency graph: an edge producer → consumer for every link between existing nodes."""
    g = nx.DiGraph()
    ids = set(wf.nodes) if node_ids is None else set(node_ids)
    g.add_nodes_from(ids)
    for nid in ids:
        for link in wf.nodes[nid].links().values():
            if link.node in wf.nodes:
                g.add_edge(link.node, nid)
    return g


def ancestors_of(wf: Workflow, outputs: list[str]) -> set[str]:
    g = graph_of(wf)
    keep = set(outputs)
    for out in outputs:
        keep |= nx.ancestors(g, out)
    return keep


def validate(wf: Workflow, registry: Registry, targets: list[str] | None = None) -> tuple[ValidPrompt, list[NodeError]]:
    """Check the whole workflow and return the prompt to run with every error found."""
    errors: list[NodeError] = []
    classes: dict[str, type[Node]] = {}
    for spec in wf.nodes.values():
        cls = registry.get(spec.class_type)
        if cls is None:
            close = difflib.get_close_matches(spec.class_type, list(registry.nodes), n=3, cutoff=0.5)
            hint = ("did you mean " + ", ".join(close) + "?") if close else "run `main.py nodes` to list node types"
            if spec.class_type in registry.failed:
                hint = "its module failed to load"
            elif spec.class_type.startswith(COMPONENT_PREFIX):
                hint = _component_hint(spec.class_type, registry)
            errors.append(NodeError("invalid_prompt", f"Cannot execute because node type {spec.class_type!r} "
                                    "does not exist", spec.id, spec.class_type, None, "a known node type",
                                    spec.class_type, hint))
        else:
            classes[spec.id] = cls
    outputs = [nid for nid, cls in classes.items() if cls.output_node]
    if targets is not None:
        missing = [t for t in targets if t not in wf.nodes]
        for t in missing:
            errors.append(NodeError("invalid_prompt", f"Requested output node {t} is not in the workflow",
                                    expected="a node id", received=t))
        outputs = [nid for nid in outputs if nid in targets]
    if not outputs:
        errors.append(NodeError("prompt_no_outputs", "Prompt has no outputs",
                                hint="add an output node such as SaveImage or PreviewImage"))
    reachable = ancestors_of(wf, outputs)
    for nid in sorted(reachable, key=id_order):
        if nid in classes:
            check_node(wf.nodes[nid], classes[nid], wf, registry, errors)
    g = graph_of(wf, reachable)
    for component in nx.strongly_connected_components(g):
        if len(component) > 1 or any(g.has_edge(n, n) for n in component):
            ring = sorted(component, key=id_order)
            for nid in ring:
                errors.append(NodeError("dependency_cycle", "Dependency cycle detected: nodes "
                                        + ", ".join(ring) + " depend on each other", nid,
                                        wf.nodes[nid].class_type, expected="an acyclic graph", received=ring))
    return ValidPrompt(wf, sorted(outputs, key=id_order), classes), errors


def _component_hint(class_type: str, registry: Registry) -> str:
    """A pinned component version that is gone says which versions there are."""
    base = class_type.partition("@")[0]
    versions = sorted(int(n.rpartition("@")[2]) for n in registry.nodes
                      if n.startswith(base + "@") and n.rpartition("@")[2].isdigit())
    if not versions:
        return f"no component {base[len(COMPONENT_PREFIX):]!r} is installed (user/components, workflows/components)"
    return (f"that version is gone; {base} has version(s) {', '.join(map(str, versions))}: pin one of them, "
            f"or use {base} for the latest")


def id_order(node_id: str) -> tuple[tuple[int, Any], ...]:
    """Ids compared segment by segment along their colon path: numeric segments numerically, others after them
    by text; a subgraph instance's nodes follow the instance's own id ("3" < "3:1" < "3:10" < "4" < "a")."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in node_id.split(":"))
