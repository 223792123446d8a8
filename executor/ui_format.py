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


def _numeric_first(nid: str) -> tuple[int, int | str]:
    return (0, int(nid)) if nid.isdigit() else (1, nid)


def api_to_ui(prompt: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """An API-format prompt as an editor graph (schema 0.4), laid out left to right by dependency depth.

    The inverse of `ui_to_api` for what the API format carries: `ui_to_api(api_to_ui(p))` gives `p` back
    (titles in `_meta` included). Widget values follow the schema's widget order, a seed widget gets the
    control value "fixed" (the value stays as written), and a widget fed by a link keeps its default."""
    ids = sorted(prompt, key=_numeric_first)
    numeric = {nid: int(nid) for nid in ids if nid.isdigit()}
    next_id = max(numeric.values(), default=0)
    ui_id: dict[str, int] = {}
    for nid in ids:
        if nid not in numeric:
            next_id += 1
        ui_id[nid] = numeric.get(nid, next_id)

    def link_of(value: Any) -> tuple[str, int] | None:
        if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt and isinstance(value[1], int):
            return str(value[0]), value[1]
        return None

    depth: dict[str, int] = {}

    def depth_of(nid: str, seen: frozenset[str] = frozenset()) -> int:
        if nid not in depth:
            sources = [link[0] for v in prompt[nid].get("inputs", {}).values() if (link := link_of(v))]
            depth[nid] = 1 + max((depth_of(s, seen | {nid}) for s in sources if s not in seen), default=-1)
        return depth[nid]

    nodes: dict[str, dict[str, Any]] = {}
    links: list[list[Any]] = []
    for nid in ids:
        spec = prompt[nid]
        kind = str(spec.get("class_type"))
        cls = registry.get(kind)
        inputs: dict[str, Any] = spec.get("inputs") or {}
        slots: list[dict[str, Any]] = []
        widgets: list[Any] = []
        declared = list(cls.inputs) if cls else []
        for inp in declared:
            value = inputs.get(inp.name)
            linked = link_of(value)
            if inp.is_widget:
                if linked is None and inp.name in inputs:
                    widgets.append(value)
                else:
                    widgets.append(inp.default if inp.default is not None or not inp.is_combo
                                   else (inp.choices() or [None])[0])
                if inp.extra.get("control_after_generate"):
                    widgets.append("fixed")
                if linked is not None:
                    slots.append({"name": inp.name, "type": inp.type if not inp.is_combo else "COMBO",
                                  "link": None, "widget": {"name": inp.name}})
            elif linked is not None or not inp.optional:
                slots.append({"name": inp.name, "type": inp.type, "link": None})
        if cls is None:  # unknown type: keep what the prompt says, so validation can still name it
            widgets = [v for v in inputs.values() if link_of(v) is None]
            slots = [{"name": k, "type": "*", "link": None} for k, v in inputs.items() if link_of(v)]
        outputs = [{"name": o.name or o.type, "type": o.type, "links": [], "slot_index": i}
                   for i, o in enumerate(cls.outputs if cls else [])]
        node: dict[str, Any] = {"id": ui_id[nid], "type": kind, "pos": [0, 0], "size": [320, 0], "flags": {},
                                "order": 0, "mode": 0, "inputs": slots, "outputs": outputs,
                                "properties": {"Node name for S&R": kind}, "widgets_values": widgets}
        title = (spec.get("_meta") or {}).get("title")
        if title:
            node["title"] = title
        nodes[nid] = node
    for nid in ids:
        for slot_index, slot in enumerate(nodes[nid]["inputs"]):
            linked = link_of((prompt[nid].get("inputs") or {}).get(slot["name"]))
            if linked is None:
                continue
            origin, origin_slot = linked
            outs = nodes[origin]["outputs"]
            while len(outs) <= origin_slot:  # an unknown origin type: give it the slot the link names
                outs.append({"name": f"out{len(outs)}", "type": "*", "links": [], "slot_index": len(outs)})
            link_type = outs[origin_slot]["type"] if slot["type"] == "*" else slot["type"]
            link_id = len(links) + 1
            links.append([link_id, ui_id[origin], origin_slot, ui_id[nid], slot_index, link_type])
            slot["link"] = link_id
            outs[origin_slot]["links"].append(link_id)
    # Layout: one column per dependency depth, nodes stacked in id order, heights from their rows.
    column_y: dict[int, float] = {}
    for order, nid in enumerate(sorted(ids, key=lambda n: (depth_of(n), _numeric_first(n)))):
        node, column = nodes[nid], depth_of(nid)
        rows = max(len(node["inputs"]), len(node["outputs"]))
        multiline = sum(1 for i in (registry.get(node["type"]).inputs if registry.get(node["type"]) else ())
                        if i.multiline)
        height = 30 + 22 * rows + 24 * len(node["widgets_values"]) + 60 * multiline
        node["size"] = [320, height]
        node["pos"] = [40 + 380 * column, column_y.get(column, 40.0)]
        node["order"] = order
        column_y[column] = column_y.get(column, 40.0) + height + 70
    return {"last_node_id": max(ui_id.values(), default=0), "last_link_id": len(links),
            "nodes": [nodes[nid] for nid in ids], "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}
