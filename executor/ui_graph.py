"""The editor's graph, subgraphs included, flattened into executable nodes the way ComfyUI's front end does it.

A subgraph instance is a node whose `type` is the id of a definition in `definitions.subgraphs` (nested
definitions are hoisted into one list, as the front end does on load). Expanding an instance gives its inner
nodes execution ids that are colon-joined paths: node 5 inside instance 12 is `"12:5"`, node 3 inside instance
10 inside instance 11 is `"11:10:3"`. Inside a definition, links from node id -10 come from the subgraph's
inputs (slot = the input's index) and links to -20 feed its outputs.

Resolution follows an input back to a real output: through reroutes, bypassed nodes (their input of a matching
type), subgraph boundaries in both directions, stopping at muted nodes. A subgraph input that nothing outside
feeds takes the instance's promoted widget value, if it has one (the instance's `widgets_values`, in the order
of its inputs that feed widgets; or the legacy `properties.proxyWidgets` pairs).

Where this deliberately differs from the front end: a muted or bypassed instance nested inside another subgraph
keeps its inner nodes out of the prompt, as a muted top-level instance does (the front end applies an instance's
mode only at the top level and still runs nested muted contents; its own maintainers call that unintended).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

MUTED, BYPASS = 2, 4
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = "-10", "-20"
# Frontend-only nodes: they never reach the prompt. Reroute passes its input through.
VIRTUAL = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})


class GraphError(Exception):
    """A graph that cannot be flattened (a subgraph containing itself, a link cycle): reported, not raised."""

    def __init__(self, message: str, node_id: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.node_id = node_id
        self.hint = hint


@dataclass(frozen=True)
class LinkRec:
    id: int
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: str


@dataclass
class Graph:
    """The root graph or one subgraph definition."""

    id: str
    name: str
    nodes: dict[str, dict[str, Any]]
    links: dict[int, LinkRec]
    inputs: list[dict[str, Any]] = field(default_factory=list)  # a definition's inputs, in slot order
    outputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Dto:
    """One node as the executor will see it: its execution id and the instance that contains it."""

    id: str
    path: tuple[str, ...]  # the instance ids from the root to the containing instance
    node: dict[str, Any]
    graph: Graph
    instance: Dto | None = None

    @property
    def node_id(self) -> str:
        return str(self.node["id"])

    @property
    def mode(self) -> int:
        return self.node.get("mode") or 0

    def input_slots(self) -> list[dict[str, Any]]:
        return [i if isinstance(i, dict) else {} for i in self.node.get("inputs") or []]


def parse_links(raw: Any) -> dict[int, LinkRec]:
    """Links of either schema: 0.4 arrays `[id, origin, origin_slot, target, target_slot, type]` or v1 objects."""
    out: dict[int, LinkRec] = {}
    for link in raw or []:
        try:
            if isinstance(link, dict):
                rec = LinkRec(int(link["id"]), str(link["origin_id"]), int(link["origin_slot"]),
                              str(link["target_id"]), int(link["target_slot"]), str(link.get("type", "*")))
            elif isinstance(link, list) and len(link) >= 5:
                rec = LinkRec(int(link[0]), str(link[1]), int(link[2]), str(link[3]), int(link[4]),
                              str(link[5]) if len(link) > 5 else "*")
            else:
                continue
        except (KeyError, TypeError, ValueError):
            continue  # a malformed link is as good as none: the input reads as unconnected
        out.setdefault(rec.id, rec)
    return out


def _nodes(raw: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for node in raw or []:
        if isinstance(node, dict) and "id" in node:
            out.setdefault(str(node["id"]), node)  # the front end keeps the first of duplicate ids
    return out


def hoist(definitions: list[Any]) -> list[dict[str, Any]]:
    """Every definition, nested ones after their parent, first of each id kept."""
    flat: list[dict[str, Any]] = []
    for sub in definitions:
        if not isinstance(sub, dict):
            continue
        flat.append(sub)
        nested = (sub.get("definitions") or {}).get("subgraphs") or []
        flat.extend(hoist(nested))
    seen: set[str] = set()
    return [s for s in flat if not (str(s.get("id")) in seen or seen.add(str(s.get("id"))))]


def _dedupe_node_ids(root: dict[str, Any], defs: list[dict[str, Any]], graphs: dict[str, Graph]) -> None:
    """Renumber inner node ids that collide with root ids or an earlier definition's, as the front end does on
    load (so the execution ids match the ones it sends): the next id after the graph's last node id."""
    state = root.get("state") or {}
    last = max([int(x) for x in (root.get("last_node_id"), state.get("lastNodeId"))
                if isinstance(x, int) or (isinstance(x, str) and x.isdigit())] or [0])
    used = {str(n["id"]) for n in root.get("nodes") or [] if isinstance(n, dict) and "id" in n}
    used_numbers = {int(x) for x in used if x.lstrip("-").isdigit()}
    for sub in defs:
        graph = graphs[str(sub.get("id"))]
        remap: dict[str, str] = {}
        for old in list(graph.nodes):
            if old in used:
                new = last + 1
                while new in used_numbers:
                    new += 1
                last = new
                remap[old] = str(new)
                used.add(str(new))
                used_numbers.add(new)
            else:
                used.add(old)
                if old.isdigit():
                    used_numbers.add(int(old))
                    last = max(last, int(old))
        if not remap:
            continue
        graph.nodes = {remap.get(k, k): ({**n, "id": int(remap[k])} if k in remap else n)
                       for k, n in graph.nodes.items()}
        graph.links = {i: LinkRec(r.id, remap.get(r.origin, r.origin), r.origin_slot, remap.get(r.target, r.target),
                                  r.target_slot, r.type) for i, r in graph.links.items()}
        # Instances of this definition name inner nodes in their legacy proxyWidgets: follow the renumbering.
        for owner in [root.get("nodes") or [], *(g.nodes.values() for g in graphs.values())]:
            for node in owner:
                if isinstance(node, dict) and str(node.get("type")) == graph.id:
                    proxies = (node.get("properties") or {}).get("proxyWidgets")
                    if isinstance(proxies, list):
                        node["properties"] = {**node["properties"], "proxyWidgets": [
                            [remap.get(str(p[0]), str(p[0])), *p[1:]] if isinstance(p, list) and p else p
                            for p in proxies]}


def _types_connect(a: Any, b: Any) -> bool:
    """LiteGraph's isValidConnection: equal, any (`*`, empty, 0), or comma-separated lists that share a type."""
    if a in ("*", "", 0, None) or b in ("*", "", 0, None):
        return True
    sa, sb = str(a).upper(), str(b).upper()
    return sa == sb or bool(set(sa.split(",")) & set(sb.split(",")))


class Flattened:
    """The editor graph expanded into DTOs keyed by execution id, with the front end's link resolution."""

    def __init__(self, data: dict[str, Any]) -> None:
        data = copy.deepcopy(data)  # renumbering rewrites ids: the caller's graph (kept as the PNG's) stays as sent
        defs = hoist(list((data.get("definitions") or {}).get("subgraphs") or []))
        self.definitions: dict[str, Graph] = {}
        for sub in defs:
            sid = str(sub.get("id"))
            self.definitions[sid] = Graph(sid, str(sub.get("name") or sid), _nodes(sub.get("nodes")),
                                          parse_links(sub.get("links")),
                                          [i for i in sub.get("inputs") or [] if isinstance(i, dict)],
                                          [o for o in sub.get("outputs") or [] if isinstance(o, dict)])
        _dedupe_node_ids(data, defs, self.definitions)
        self.root = Graph("root", "root", _nodes(data.get("nodes")), parse_links(data.get("links")))
        self.dtos: dict[str, Dto] = {}
        self.open_instance: str | None = None  # an instance whose unfed inputs resolve to ("input", index)
        self._promoted: dict[str, tuple[dict[int, Any], dict[tuple[str, str], Any]]] = {}
        for nid, node in self.root.nodes.items():
            dto = Dto(nid, (), node, self.root)
            self.dtos[dto.id] = dto
            if self.is_instance(node) and dto.mode not in (MUTED, BYPASS):
                self._expand(dto, (self.definition_of(node).id,))

    # -- structure -------------------------------------------------------------------------------------------

    def is_instance(self, node: dict[str, Any]) -> bool:
        return str(node.get("type")) in self.definitions

    def definition_of(self, node: dict[str, Any]) -> Graph:
        return self.definitions[str(node.get("type"))]

    def _expand(self, instance: Dto, chain: tuple[str, ...]) -> None:
        sub = self.definition_of(instance.node)
        path = (*instance.path, instance.node_id)
        for nid, node in sub.nodes.items():
            dto = Dto(":".join((*path, nid)), path, node, sub, instance)
            self.dtos[dto.id] = dto
            if self.is_instance(node) and dto.mode not in (MUTED, BYPASS):
                inner = self.definition_of(node).id
                if inner in chain:
                    raise GraphError(f"Subgraph {sub.name!r} contains itself (through node {dto.id})", dto.id,
                                     "a subgraph cannot contain an instance of itself")
                self._expand(dto, (*chain, inner))

    def executable(self) -> list[Dto]:
        """The nodes that reach the prompt: not frontend-only, not a subgraph instance, not muted or bypassed."""
        return [d for d in self.dtos.values() if str(d.node.get("type")) not in VIRTUAL
                and not self.is_instance(d.node) and d.mode not in (MUTED, BYPASS)]

    def instance_input_slot(self, instance: Dto, index: int) -> int | None:
        """Which of the instance node's input slots carries the definition's input `index` (matched by name)."""
        sub = self.definition_of(instance.node)
        if not 0 <= index < len(sub.inputs):
            return None
        name = sub.inputs[index].get("name")
        slots = instance.input_slots()
        # By name, as the front end rebinds them: a saved instance lists only the inputs it shows.
        return next((i for i, slot in enumerate(slots) if slot.get("name") == name), None)

    def open_input_name(self, index: int) -> str:
        instance = self.dtos[self.open_instance or ""]
        return str(self.definition_of(instance.node).inputs[index].get("name"))

    # -- promoted widgets ------------------------------------------------------------------------------------

    def _feeds_widget(self, sub: Graph, index: int, depth: int = 0) -> bool:
        """Whether a definition input reaches a widget (directly, or a nested instance's promoted input)."""
        if depth > 32:
            return False
        for link_id in sub.inputs[index].get("linkIds") or []:
            link = sub.links.get(link_id)
            target = sub.nodes.get(link.target) if link else None
            if target is None:
                continue
            slots = target.get("inputs") or []
            slot = slots[link.target_slot] if 0 <= link.target_slot < len(slots) else None
            if not isinstance(slot, dict):
                continue
            if slot.get("widget"):
                return True
            if self.is_instance(target):
                nested = self.definition_of(target)
                names = [i.get("name") for i in nested.inputs]
                if slot.get("name") in names and self._feeds_widget(nested, names.index(slot.get("name")),
                                                                     depth + 1):
                    return True
        return False

    def promoted(self, instance: Dto) -> tuple[dict[int, Any], dict[tuple[str, str], Any]]:
        """(definition input index → value, (inner node id, widget name) → value) set on this instance."""
        if instance.id in self._promoted:
            return self._promoted[instance.id]
        sub = self.definition_of(instance.node)
        values = instance.node.get("widgets_values")
        values = values if isinstance(values, list) else []
        by_input: dict[int, Any] = {}
        by_widget: dict[tuple[str, str], Any] = {}
        proxies = (instance.node.get("properties") or {}).get("proxyWidgets")
        names = [str(i.get("name")) for i in sub.inputs]
        if isinstance(proxies, list) and proxies:
            # Legacy: proxyWidgets[i] = [inner node id ("-1": a subgraph input), widget name], value i alike.
            for i, entry in enumerate(proxies):
                if not (isinstance(entry, list) and len(entry) >= 2) or i >= len(values) or values[i] is None:
                    continue
                source, name = str(entry[0]), str(entry[1])
                linked = self._input_feeding(sub, source, name)
                if source == "-1" and name in names:
                    by_input[names.index(name)] = values[i]
                elif linked is not None:
                    by_input[linked] = values[i]
                else:
                    by_widget[(source, name)] = values[i]
        else:
            widget_inputs = [k for k in range(len(sub.inputs)) if self._feeds_widget(sub, k)]
            for k, value in zip(widget_inputs, values, strict=False):
                if value is not None:
                    by_input[k] = value
        # A legacy proxy on the enclosing instance may set this nested instance's input.
        if instance.instance is not None:
            outer = self.promoted(instance.instance)[1]
            for k, name in enumerate(names):
                if (instance.node_id, name) in outer:
                    by_input[k] = outer[(instance.node_id, name)]
        self._promoted[instance.id] = (by_input, by_widget)
        return by_input, by_widget

    @staticmethod
    def _input_feeding(sub: Graph, node_id: str, widget: str) -> int | None:
        """The definition input linked to this inner node's widget, if one is."""
        node = sub.nodes.get(node_id)
        if node is None:
            return None
        for k, inp in enumerate(sub.inputs):
            for link_id in inp.get("linkIds") or []:
                link = sub.links.get(link_id)
                if link is None or link.target != node_id:
                    continue
                slots = node.get("inputs") or []
                slot = slots[link.target_slot] if 0 <= link.target_slot < len(slots) else {}
                if isinstance(slot, dict) and (slot.get("name") == widget
                                               or (slot.get("widget") or {}).get("name") == widget):
                    return k
        return None

    def widget_overrides(self, dto: Dto) -> dict[str, Any]:
        """Widget values a legacy proxy on the containing instance sets for this node."""
        if dto.instance is None:
            return {}
        by_widget = self.promoted(dto.instance)[1]
        return {name: v for (nid, name), v in by_widget.items() if nid == dto.node_id}

    # -- resolution ------------------------------------------------------------------------------------------

    def resolve_input(self, dto: Dto, slot: int, visited: set[str] | None = None,
                      want: Any = None) -> tuple[str, Any] | None:
        """("link", (execution id, slot)) or ("value", widget value) feeding input `slot`, or None."""
        visited = set() if visited is None else visited
        key = f"{dto.graph.id}:{dto.node_id}[I]{slot}@{dto.id}"
        if key in visited:
            raise GraphError(f"Links loop back on themselves at input {slot} of node {dto.id}", dto.id)
        visited.add(key)
        slots = dto.input_slots()
        if not 0 <= slot < len(slots):
            return None
        link = dto.graph.links.get(slots[slot].get("link")) if slots[slot].get("link") is not None else None
        if link is None:
            return None
        if dto.instance is not None and link.origin == SUBGRAPH_INPUT:
            return self._through_instance_input(dto.instance, link.origin_slot, visited)
        origin = dto.graph.nodes.get(link.origin)
        if origin is None:
            return None
        source = self.dtos.get(":".join((*dto.path, link.origin)))
        if source is None:
            return None
        return self.resolve_output(source, link.origin_slot, want or slots[slot].get("type", "*"), visited)

    def _through_instance_input(self, instance: Dto, index: int, visited: set[str]) -> tuple[str, Any] | None:
        """Leave a subgraph by its input `index`: what feeds the instance there, else its promoted value."""
        slot = self.instance_input_slot(instance, index)
        slots = instance.input_slots()
        if slot is not None and slots[slot].get("link") is not None:
            return self.resolve_input(instance, slot, visited)
        value = self.promoted(instance)[0].get(index, _NONE)
        if value is _NONE and instance.id == self.open_instance:
            return ("input", index)  # turning a subgraph into a component: its inputs stay open
        return None if value is _NONE else ("value", value)

    def resolve_output(self, dto: Dto, slot: int, want: Any, visited: set[str]) -> tuple[str, Any] | None:
        key = f"{dto.graph.id}:{dto.node_id}[O]{slot}@{dto.id}"
        if key in visited:
            raise GraphError(f"Links loop back on themselves at output {slot} of node {dto.id}", dto.id)
        visited.add(key)
        if dto.mode == MUTED:
            return None  # muted nodes produce nothing
        if dto.mode == BYPASS:
            index = self._bypass_slot(dto, slot, want)
            return None if index < 0 else self.resolve_input(dto, index, visited)
        kind = str(dto.node.get("type"))
        if self.is_instance(dto.node):
            sub = self.definition_of(dto.node)
            if not 0 <= slot < len(sub.outputs):
                return None
            link_ids = sub.outputs[slot].get("linkIds") or []
            link = sub.links.get(link_ids[0]) if link_ids else None
            if link is None:
                return None
            if link.origin == SUBGRAPH_INPUT:  # an input wired straight to an output
                return self._through_instance_input(dto, link.origin_slot, visited)
            inner = self.dtos.get(":".join((*dto.path, dto.node_id, link.origin)))
            return None if inner is None else self.resolve_output(inner, link.origin_slot, want, visited)
        if kind == "Reroute":
            return self.resolve_input(dto, 0, visited, want)
        if kind in VIRTUAL:
            return None  # a PrimitiveNode's value is already in its targets' widgets_values
        return ("link", (dto.id, slot))

    @staticmethod
    def _bypass_slot(dto: Dto, slot: int, want: Any) -> int:
        """Which input a bypassed node passes to output `slot`: the front end's choice, in its order."""
        inputs = dto.input_slots()
        outputs = [o if isinstance(o, dict) else {} for o in dto.node.get("outputs") or []]
        out_type = outputs[slot].get("type", want) if 0 <= slot < len(outputs) else want
        if want in ("*", ""):
            return slot if len(inputs) > slot else (0 if inputs else -1)
        if slot < len(inputs) and _types_connect(inputs[slot].get("type"), out_type) \
                and _types_connect(inputs[slot].get("type"), want):
            return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == want:
                return i
        for i, inp in enumerate(inputs):
            if _types_connect(inp.get("type"), out_type) and _types_connect(inp.get("type"), want):
                return i
        return -1


_NONE = object()
