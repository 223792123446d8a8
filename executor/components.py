"""Components: a workflow with declared, typed inputs and outputs, used as one node type.

A component document (JSON) names itself and a version, declares its inputs (type, default, min, max,
options — the same fields as any node input; `extra` holds editor hints such as `control_after_generate`)
and outputs (type and the `[node, slot]` inside that produces it), and holds its body: an API-format prompt
in which `{"__input__": NAME}` stands for an input's value.

Registered as node type `component/NAME` (the highest version) and `component/NAME@VERSION` (each version
kept, so a prompt can pin one), it appears in /object_info and validates like any node: the instance's own
inputs are checked against the declarations first, so a bad value names the component input. Before the rest
of validation an instance is expanded into its body with colon-path ids (`"7:3"` is body node 3 of instance 7),
exactly like a flattened subgraph: the same cache signatures, events and error paths.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import NodeError
from .schema import Input, Node, Output, Registry
from .validate import COMPONENT_PREFIX
from .workflow import INVALID, Link, NodeSpec, Workflow, parse_api

PREFIX = COMPONENT_PREFIX
INPUT_FIELDS = ("default", "min", "max", "step", "tooltip", "optional", "multiline")


class ComponentError(ValueError):
    """A component document that cannot be used (reported with its file, never a crash)."""


@dataclass
class ComponentSpec:
    name: str
    version: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    body: dict[str, Any]
    description: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_document(cls, doc: Any, source: str = "") -> ComponentSpec:
        if not isinstance(doc, dict) or not isinstance(doc.get("component"), str) or not doc["component"]:
            raise ComponentError(f"{source or 'component'}: no `component` name")
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ComponentError(f"{source}: `version` must be a positive integer, not {version!r}")
        body = doc.get("prompt")
        if not isinstance(body, dict) or not body:
            raise ComponentError(f"{source}: `prompt` must be an API-format prompt")
        inputs, outputs = doc.get("inputs") or [], doc.get("outputs") or []
        for item in [*inputs, *outputs]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item.get("type"):
                raise ComponentError(f"{source}: every input and output needs a name and a type: {item!r}")
        for out in outputs:
            src = out.get("from")
            if not (isinstance(src, list) and len(src) == 2 and str(src[0]) in body and isinstance(src[1], int)):
                raise ComponentError(f"{source}: output {out['name']!r} needs `from: [body node id, slot]`")
        if "/" in doc["component"] or "@" in doc["component"]:
            raise ComponentError(f"{source}: a component name may not contain '/' or '@'")
        return cls(doc["component"], version, inputs, outputs, body, str(doc.get("description") or ""), source)

    def document(self) -> dict[str, Any]:
        return {"component": self.name, "version": self.version, "description": self.description,
                "inputs": self.inputs, "outputs": self.outputs, "prompt": self.body}

    def same_body(self, other: ComponentSpec) -> bool:
        """Whether two versions behave alike (everything but the version number and the description)."""
        a, b = self.document(), other.document()
        for doc in (a, b):
            doc.pop("version")
            doc.pop("description")
        return a == b


class Component(Node):
    """Base of the generated component node classes; never run: expanded before validation."""

    spec: ClassVar[ComponentSpec]

    def run(self, ctx: Any, **inputs: Any) -> tuple[Any, ...]:
        raise RuntimeError(f"{self.type} should have been expanded before running")


def component_class(spec: ComponentSpec, pinned: bool) -> type[Node]:
    inputs = []
    for item in spec.inputs:
        opts = {k: item[k] for k in INPUT_FIELDS if k in item}
        opts.setdefault("optional", "default" in item)  # an input with a default may be left out
        options = item.get("options") if item["type"] == "COMBO" or isinstance(item.get("options"), list) else None
        extra = item.get("extra") if isinstance(item.get("extra"), dict) else {}  # editor hints, as declared
        inputs.append(Input(item["name"], "COMBO" if options is not None else str(item["type"]), options=options,
                            extra=dict(extra), **opts))
    name = f"{PREFIX}{spec.name}@{spec.version}" if pinned else f"{PREFIX}{spec.name}"
    return type(f"Component_{spec.name}_{spec.version}", (Component,), {
        "type": name, "display_name": spec.name.replace("_", " ") + (f" (v{spec.version})" if pinned else ""),
        "category": "components", "description": spec.description or f"Component {spec.name}",
        "version": spec.version, "inputs": tuple(inputs),
        "outputs": tuple(Output(str(o["type"]), o["name"]) for o in spec.outputs), "spec": spec})


def register(registry: Registry, specs: list[ComponentSpec]) -> list[str]:
    """Register every version (pinned names) and the highest one (plain name); returns problems found."""
    problems = []
    by_name: dict[str, dict[int, ComponentSpec]] = {}
    for spec in specs:
        known = by_name.setdefault(spec.name, {})
        if spec.version in known and not known[spec.version].same_body(spec):
            problems.append(f"component {spec.name} version {spec.version} is defined twice, differently "
                            f"({known[spec.version].source}, {spec.source}); keeping the first")
            continue
        known.setdefault(spec.version, spec)
    for versions in by_name.values():
        for spec in versions.values():
            registry.register(component_class(spec, pinned=True))
        registry.register(component_class(versions[max(versions)], pinned=False))
    return problems


def _substitute(value: Any, bound: dict[str, Any]) -> Any:
    if isinstance(value, dict) and set(value) == {"__input__"}:
        return bound.get(str(value["__input__"]), _UNBOUND)
    return value


_UNBOUND = object()


def expand(wf: Workflow, registry: Registry, depth: int = 0,
           failed: frozenset[str] = frozenset()) -> tuple[Workflow, list[NodeError]]:
    """Replace component instances by their bodies (ids `"INSTANCE:BODY_ID"`), nested components included.

    The instance's inputs are validated against its declarations first; errors name the instance and the
    component input, and an instance with errors is left as it is for the rest of validation to skip."""
    from .validate import check_node

    errors: list[NodeError] = []
    instances = {nid: spec for nid, spec in wf.nodes.items() if nid not in failed
                 and isinstance(cls := registry.get(spec.class_type), type) and issubclass(cls, Component)}
    if not instances:
        return wf, errors
    if depth > 16:
        return wf, [NodeError("invalid_prompt", "Components nest more than 16 deep (one contains itself?)",
                              next(iter(instances)))]
    out = Workflow()
    outputs: dict[tuple[str, int], Link] = {}  # (instance id, output slot) → link into its expanded body
    for nid, spec in wf.nodes.items():
        if nid not in instances:
            out.nodes[nid] = spec
            continue
        cls = registry.get(spec.class_type)
        before = len(errors)
        check_node(spec, cls, wf, registry, errors)
        if len(errors) > before:
            out.nodes[nid] = spec
            failed |= {nid}
            continue
        comp: ComponentSpec = cls.spec
        bound = {i.name: spec.inputs[i.name] for i in cls.inputs if i.name in spec.inputs}
        for item in comp.inputs:  # an optional input left out takes its declared default
            if item["name"] not in bound and "default" in item:
                bound[item["name"]] = item["default"]
        body, problems = parse_api(copy.deepcopy(comp.body))
        errors += [NodeError(p.type, f"component {comp.name} v{comp.version}: {p.message}", nid,
                             spec.class_type, p.input_name, p.expected, p.received, p.hint) for p in problems]
        for inner_id, inner in body.nodes.items():
            inputs = {}
            for name, value in inner.inputs.items():
                value = _substitute(value, bound)
                if value is _UNBOUND:
                    continue  # an optional input nobody gave: the inner node's own default applies
                if isinstance(value, Link) and value.node in body.nodes and inner.inputs[name] is value:
                    value = Link(f"{nid}:{value.node}", value.slot)
                inputs[name] = value
            new_id = f"{nid}:{inner_id}"
            out.nodes[new_id] = NodeSpec(new_id, inner.class_type, inputs, inner.title)
        for slot, item in enumerate(comp.outputs):
            outputs[(nid, slot)] = Link(f"{nid}:{item['from'][0]}", int(item["from"][1]))
    for spec in out.nodes.values():
        for name, value in spec.inputs.items():
            if isinstance(value, Link) and (value.node, value.slot) in outputs:
                spec.inputs[name] = outputs[(value.node, value.slot)]
            elif value is INVALID:
                continue
    more_wf, more = expand(out, registry, depth + 1, failed)
    return more_wf, errors + more
