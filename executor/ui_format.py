"""The editor's graph format (ComfyUI's litegraph "workflow" JSON) converted to API format with the node schemas.

Only the schemas know which inputs are widgets and in which order their values are stored, so the
conversion lives here, on the server side, not only in a browser. Handled: schema 0.4 (links as arrays)
and 1 (links as objects), subgraphs (`definitions.subgraphs`, expanded into colon-path ids by
`executor/ui_graph.py`), muted nodes (mode 2) dropped, bypassed nodes (mode 4) routed through to an
input of the same type, the frontend-only Reroute, PrimitiveNode and Note nodes, converted widgets, and
the extra `control_after_generate` value that follows a seed widget.
"""
from __future__ import annotations

import re
from typing import Any

from .errors import NodeError
from .schema import Node, Registry
from .ui_graph import BYPASS, MUTED, VIRTUAL, Flattened, GraphError

__all__ = ["BYPASS", "MUTED", "VIRTUAL", "is_ui_format", "ui_to_api"]
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def is_ui_format(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def widget_values(node: dict[str, Any], cls: type[Node]) -> dict[str, Any]:
    """A node's widgets_values (positional in schema widget order, or a name → value object) by input name."""
    values = node.get("widgets_values")
    if isinstance(values, dict):
        return {k: v for k, v in values.items() if cls.input(k)}
    out: dict[str, Any] = {}
    queue = list(values or [])
    # The editor builds widgets from /object_info: required inputs first, then optional ones.
    for inp in [i for i in cls.inputs if not i.optional] + [i for i in cls.inputs if i.optional]:
        if not inp.is_widget or not queue:
            continue
        out[inp.name] = queue.pop(0)
        # A seed widget is followed by the editor's "control after generate" choice: the editor adds one when
        # the input asks for it, and to any INT named seed or noise_seed that does not say otherwise.
        control = inp.extra.get("control_after_generate", inp.type == "INT" and inp.name in ("seed", "noise_seed"))
        if control and queue and queue[0] in CONTROL_VALUES:
            queue.pop(0)
    return out


def _wrap(value: Any) -> Any:
    """A list constant travels as {"__value__": [...]} so it is not read as a link, as the front end sends it."""
    return {"__value__": value} if isinstance(value, list) else value


def ui_to_api(data: dict[str, Any], registry: Registry) -> tuple[dict[str, Any], list[NodeError]]:
    """Convert; problems the conversion itself finds come back as errors (validation finds the rest)."""
    try:
        graph = Flattened(data)
        api = _convert(graph, registry)
    except GraphError as exc:
        return {}, [NodeError("invalid_prompt", str(exc), exc.node_id, hint=exc.hint)]
    lost = [NodeError("invalid_prompt", f"Node {nid} is an instance of subgraph {node['class_type']}, whose "
                      "definition is not in the workflow", nid, node["class_type"],
                      hint="the file lost its definitions.subgraphs entry: save it again from the editor")
            for nid, node in api.items() if UUID.fullmatch(node["class_type"]) and registry.get(node["class_type"])
            is None]
    return api, lost


def _convert(graph: Flattened, registry: Registry) -> dict[str, Any]:
    api: dict[str, Any] = {}
    for dto in graph.executable():
        kind = str(dto.node.get("type"))
        cls = registry.get(kind)
        entry: dict[str, Any] = {"class_type": kind, "inputs": {}, "_meta": {"title": dto.node.get("title") or kind}}
        api[dto.id] = entry
        if cls is None:
            continue  # validation reports the unknown type with suggestions
        inputs = entry["inputs"]
        inputs.update({k: _wrap(v) for k, v in widget_values(dto.node, cls).items()})
        inputs.update({k: _wrap(v) for k, v in graph.widget_overrides(dto).items() if cls.input(k)})
        for index, slot in enumerate(dto.input_slots()):
            name = slot.get("name")
            if slot.get("link") is None or not name:
                continue
            resolved = graph.resolve_input(dto, index)
            declared = cls.input(name)
            if resolved is None:
                if not (declared and declared.is_widget):
                    # Fed only by a muted node or a dangling reroute; a widget fed by a PrimitiveNode keeps
                    # the value the editor stored in widgets_values.
                    inputs.pop(name, None)
            elif resolved[0] == "value":
                inputs[name] = _wrap(resolved[1])
            elif resolved[0] == "input":
                inputs[name] = {"__input__": graph.open_input_name(resolved[1])}
            else:
                origin, out_slot = resolved[1]
                inputs[name] = [origin, out_slot]
    # As the front end does: a link to a node that is not in the prompt is dropped.
    for entry in api.values():
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in api:
                del entry["inputs"][name]
    return api


def subgraph_body(data: dict[str, Any], ref: str, registry: Registry) -> tuple[Any, dict[str, Any], Any]:
    """(definition, API body, flattened graph) of one subgraph definition alone, its inputs left open as
    `{"__input__": name}` and body ids relative to the definition (`"5"`, `"10:3"` for a nested instance)."""
    from .ui_graph import Graph, hoist

    defs = hoist(list((data.get("definitions") or {}).get("subgraphs") or []))
    hits = [d for d in defs if str(d.get("id")) == ref] or [d for d in defs if d.get("name") == ref] \
        or [d for d in defs if str(d.get("id")).startswith(ref)]
    if len(hits) != 1:
        names = ", ".join(f"{d.get('name')!r} ({str(d.get('id'))[:8]})" for d in defs) or "none"
        raise GraphError(f"{len(hits) or 'no'} subgraph(s) match {ref!r}; the workflow has: {names}")
    host = "999999999"  # the one instance, under an id no inner node has
    synthetic = {"version": 0.4, "last_node_id": 0, "links": [], "definitions": data.get("definitions"),
                 "nodes": [{"id": int(host), "type": hits[0]["id"], "mode": 0, "inputs": [], "outputs": []}]}
    graph = Flattened(synthetic)
    graph.open_instance = host
    body = _convert(graph, registry)
    strip = len(host) + 1

    def rel(value: Any) -> Any:
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0].startswith(host):
            return [value[0][strip:], value[1]]
        return value
    body = {nid[strip:]: {**node, "inputs": {k: rel(v) for k, v in node["inputs"].items()}}
            for nid, node in body.items()}
    definition: Graph = graph.definitions[str(hits[0]["id"])]
    return definition, body, graph


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
