"""Workflows in ComfyUI's API format: `{id: {class_type, inputs, _meta}}`.

Ids are strings; a two-element list `[node_id, slot]` is a link; `{"__value__": [...]}` is a
literal list; anything else is a constant. An id may be a colon path (`"11:10:3"`: node 3 inside subgraph
instance 10 inside instance 11), as ComfyUI's front end sends flattened subgraphs; it is an opaque key to the
executor, and only ordering, events and errors read its segments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import NodeError

# Stands in for an input whose value could not be parsed (its error is already reported).
INVALID = type("Invalid", (), {"__repr__": lambda self: "<invalid>"})()


def parent_id(node_id: str) -> str | None:
    """The subgraph instance path containing a node: "11:10:3" → "11:10"; None at the top level."""
    head, sep, _ = node_id.rpartition(":")
    return head if sep else None


@dataclass(frozen=True)
class Link:
    node: str
    slot: int


@dataclass
class NodeSpec:
    id: str
    class_type: str
    inputs: dict[str, Any]
    title: str | None = None

    def links(self) -> dict[str, Link]:
        return {name: v for name, v in self.inputs.items() if isinstance(v, Link)}


@dataclass
class Workflow:
    nodes: dict[str, NodeSpec] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        """Back to API-format JSON (links as [id, slot], lists wrapped in __value__)."""
        def enc(v: Any) -> Any:
            if isinstance(v, Link):
                return [v.node, v.slot]
            if isinstance(v, list):
                return {"__value__": v}
            return v
        out: dict[str, Any] = {}
        for spec in self.nodes.values():
            out[spec.id] = {"class_type": spec.class_type, "inputs": {k: enc(v) for k, v in spec.inputs.items()}}
            if spec.title:
                out[spec.id]["_meta"] = {"title": spec.title}
        return out


def _parse_value(node_id: str, class_type: str, name: str, value: Any, errors: list[NodeError]) -> Any:
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    if isinstance(value, list):
        if (len(value) == 2 and isinstance(value[0], (str, int)) and not isinstance(value[0], bool)
                and isinstance(value[1], int) and not isinstance(value[1], bool)):
            return Link(str(value[0]), value[1])
        errors.append(NodeError("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot]",
                                node_id, class_type, name, expected="[node_id, slot]", received=value,
                                hint='wrap a literal list as {"__value__": [...]}'))
        return INVALID
    return value


def parse_api(data: Any) -> tuple[Workflow, list[NodeError]]:
    """Parse API-format JSON; structural problems are returned as errors, never raised."""
    errors: list[NodeError] = []
    wf = Workflow()
    if not isinstance(data, dict):
        errors.append(NodeError("invalid_prompt", "A workflow must be a JSON object of nodes keyed by id",
                                expected="object", received=type(data).__name__))
        return wf, errors
    for raw_id, node in data.items():
        node_id = str(raw_id)
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            errors.append(NodeError("invalid_prompt", "Node has no class_type", node_id,
                                    expected="{class_type, inputs}", received=node if not isinstance(node, dict)
                                    else sorted(node)))
            continue
        class_type = node["class_type"]
        raw_inputs = node.get("inputs", {})
        if not isinstance(raw_inputs, dict):
            errors.append(NodeError("invalid_prompt", "Node inputs must be an object", node_id, class_type,
                                    expected="object", received=type(raw_inputs).__name__))
            raw_inputs = {}
        inputs = {name: _parse_value(node_id, class_type, name, v, errors) for name, v in raw_inputs.items()}
        meta = node.get("_meta") if isinstance(node.get("_meta"), dict) else {}
        wf.nodes[node_id] = NodeSpec(node_id, class_type, inputs, meta.get("title"))
    return wf, errors
