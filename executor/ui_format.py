"""The editor's graph format (ComfyUI's litegraph "workflow" JSON) converted to API format with the node schemas.

Only the schemas know which inputs are widgets and in which order their values are stored, so the
conversion lives here, on the server side, not only in a browser. Handled: schema 0.4 (links as arrays)
and 1 (links as objects), muted nodes (mode 2) dropped, bypassed nodes (mode 4) routed through to an
input of the same type, the frontend-only Reroute, PrimitiveNode and Note nodes, converted widgets, and
the extra `control_after_generate` value that follows a seed widget.
"""
from __future__ import annotations

from typing import Any

from .errors import NodeError
from .schema import Registry

MUTED, BYPASS = 2, 4
VIRTUAL = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


def is_ui_format(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def _links(data: dict[str, Any]) -> dict[int, tuple[str, int, str]]:
    """link id → (origin node id, origin slot, type), for both schema versions."""
    out = {}
    for link in data.get("links") or []:
        if isinstance(link, dict):
            out[link["id"]] = (str(link["origin_id"]), int(link["origin_slot"]), str(link.get("type", "*")))
        elif isinstance(link, list) and len(link) >= 5:
            out[link[0]] = (str(link[1]), int(link[2]), str(link[5]) if len(link) > 5 else "*")
    return out


def ui_to_api(data: dict[str, Any], registry: Registry) -> tuple[dict[str, Any], list[NodeError]]:
    """Convert; problems the conversion itself finds come back as errors (validation finds the rest)."""
    errors: list[NodeError] = []
    if (data.get("definitions") or {}).get("subgraphs"):
        errors.append(NodeError("invalid_prompt", "Workflows with subgraphs are not supported yet",
                                hint="convert the subgraphs back to nodes in the editor and save again"))
        return {}, errors
    nodes = {str(n["id"]): n for n in data["nodes"] if isinstance(n, dict) and "id" in n}
    links = _links(data)

    def source(link_id: int | None, want_type: str, seen: frozenset[str] = frozenset()) -> list[Any] | None:
        """Follow a link back through reroutes and bypassed nodes to a real output."""
        if link_id is None or link_id not in links:
            return None
        origin, slot, link_type = links[link_id]
        node = nodes.get(origin)
        if node is None or origin in seen:
            return None
        kind, mode = node.get("type"), node.get("mode", 0)
        if kind == "Reroute":
            inputs = node.get("inputs") or [{}]
            return source(inputs[0].get("link"), want_type, seen | {origin})
        if kind == "PrimitiveNode" or mode == MUTED:
            return None
        if mode == BYPASS:
            # A bypassed node passes through its first input of the same type as the output asked for.
            for inp in node.get("inputs") or []:
                if inp.get("link") is not None and inp.get("type") in (link_type, want_type, "*"):
                    return source(inp["link"], want_type, seen | {origin})
            return None
        return [origin, slot]

    api: dict[str, Any] = {}
    for nid, node in nodes.items():
        kind = node.get("type")
        if kind in VIRTUAL or node.get("mode", 0) in (MUTED, BYPASS):
            continue
        cls = registry.get(kind)
        entry: dict[str, Any] = {"class_type": kind, "inputs": {}, "_meta": {"title": node.get("title") or kind}}
        api[nid] = entry
        linked = {i.get("name"): i for i in node.get("inputs") or [] if isinstance(i, dict)}
        if cls is None:
            continue  # validation reports the unknown type with suggestions
        values = node.get("widgets_values")
        if isinstance(values, dict):
            entry["inputs"].update({k: v for k, v in values.items() if cls.input(k)})
        else:
            queue = list(values or [])
            for inp in cls.inputs:
                if not inp.is_widget:
                    continue
                if queue:
                    entry["inputs"][inp.name] = queue.pop(0)
                    # The seed widget is followed by the editor's "control after generate" choice.
                    if inp.extra.get("control_after_generate") and queue and queue[0] in CONTROL_VALUES:
                        queue.pop(0)
        for name, slot in linked.items():
            if slot.get("link") is None:
                continue
            src = source(slot["link"], str(slot.get("type", "*")))
            declared = cls.input(name)
            if src is not None:
                entry["inputs"][name] = src
            elif not (declared and declared.is_widget):
                # Fed only by a muted node or a dangling reroute; a widget fed by a PrimitiveNode keeps
                # the value the editor stored in widgets_values.
                entry["inputs"].pop(name, None)
    return api, errors
