"""Component files: where they live, how a workflow becomes one, and how saving a change bumps the version.

Shipped components are `workflows/components/*.json`; the user's are `USER_DIR/components/NAME@VERSION.json`
(every version kept, so a workflow that pins an old one keeps running it). `executor/components.py` defines
the document and turns each into node types `component/NAME` and `component/NAME@VERSION`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from executor.components import ComponentError, ComponentSpec, register
from executor.schema import Registry

from . import formats, paths

SHIPPED = paths.REPO_ROOT / "workflows" / "components"


def user_folder() -> Path:
    return paths.FOLDERS.user / "components"


def read(path: Path) -> ComponentSpec:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ComponentError(f"{path}: {exc}") from exc
    return ComponentSpec.from_document(formats.migrate(doc) if isinstance(doc, dict) else doc, str(path))


def discover() -> tuple[list[ComponentSpec], dict[str, str]]:
    """Every component file, shipped then the user's; unreadable ones come back as problems by file."""
    specs, problems = [], {}
    for folder in (SHIPPED, user_folder()):
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                specs.append(read(path))
            except ComponentError as exc:
                problems[f"component:{path.name}"] = str(exc)
    return specs, problems


def load_into(registry: Registry, extra: list[ComponentSpec] = ()) -> None:
    specs, problems = discover()
    for message in register(registry, [*specs, *extra]):
        problems[f"component:{message.split()[1]}"] = message
    registry.failed.update(problems)


def from_workflow(name: str, prompt: dict[str, Any], registry: Registry, inputs: dict[str, str],
                  outputs: dict[str, str], description: str = "") -> ComponentSpec:
    """A component from an API prompt: `inputs` maps a component input to `NODE.INPUT` (its declaration is that
    node input's: type, default, range, choices), `outputs` maps a component output to `NODE` or `NODE.SLOT`."""
    body = copy.deepcopy(prompt)
    declared = []
    for input_name, target in inputs.items():
        node_id, _, field = target.rpartition(".")
        node = body.get(node_id)
        cls = registry.get(node.get("class_type")) if isinstance(node, dict) else None
        inp = cls.input(field) if cls else None
        if inp is None:
            raise ComponentError(f"--input {input_name}={target}: no node {node_id!r} with an input {field!r}")
        item: dict[str, Any] = {"name": input_name, "type": "COMBO" if inp.is_combo else inp.type}
        current = (node.get("inputs") or {}).get(field)
        default = current if current is not None and not isinstance(current, list) else inp.default
        for key, value in (("default", default), ("min", inp.min), ("max", inp.max), ("step", inp.step),
                           ("tooltip", inp.tooltip), ("multiline", inp.multiline)):
            if value is not None and value != "" and value is not False:
                item[key] = value
        if inp.is_combo:
            item["options"] = inp.choices()
        if inp.extra:
            item["extra"] = dict(inp.extra)
        declared.append(item)
        node.setdefault("inputs", {})[field] = {"__input__": input_name}
    produced = []
    for output_name, source in outputs.items():
        node_id, dot, slot = source.partition(".")
        node = body.get(node_id)
        cls = registry.get(node.get("class_type")) if isinstance(node, dict) else None
        index = int(slot) if dot and slot.isdigit() else 0
        if cls is None or not 0 <= index < len(cls.outputs):
            raise ComponentError(f"--output {output_name}={source}: no node {node_id!r} with output {index}")
        produced.append({"name": output_name, "type": cls.outputs[index].type, "from": [node_id, index]})
    if produced:  # a function: only what its outputs need (a Save Image left in would save at every use)
        keep: set[str] = set()
        todo = [str(o["from"][0]) for o in produced]
        while todo:
            nid = todo.pop()
            if nid in keep or nid not in body:
                continue
            keep.add(nid)
            todo += [str(v[0]) for v in (body[nid].get("inputs") or {}).values()
                     if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)]
        dropped = [nid for nid in body if nid not in keep]
        lost = [i["name"] for i in declared if any(_uses(body[nid], i["name"]) for nid in dropped)]
        if lost:
            raise ComponentError(f"inputs {', '.join(lost)} feed nothing that the outputs need")
        body = {nid: node for nid, node in body.items() if nid in keep}
    return ComponentSpec(name, 1, declared, produced, body, description)


def _uses(node: dict[str, Any], input_name: str) -> bool:
    return {"__input__": input_name} in (node.get("inputs") or {}).values()


def save(spec: ComponentSpec) -> tuple[Path, ComponentSpec, bool]:
    """Write a component to the user folder as its next version; an unchanged body keeps its version.
    Returns (file, the spec as saved, whether a new version was written)."""
    folder = user_folder()
    folder.mkdir(parents=True, exist_ok=True)
    existing = [read(p) for p in sorted(folder.glob(f"{spec.name}@*.json"))]
    existing += [s for s in discover()[0] if s.name == spec.name and s not in existing]
    latest = max(existing, key=lambda s: s.version, default=None)
    if latest is not None and latest.same_body(spec):
        return Path(latest.source), latest, False
    spec = copy.copy(spec)
    spec.version = (latest.version + 1) if latest else 1
    target = folder / f"{spec.name}@{spec.version}.json"
    target.write_text(json.dumps(formats.stamp(spec.document()), indent=1))
    spec.source = str(target)
    return target, spec, True


SAVERS = {"IMAGE": ("SaveImage", "images"), "LATENT": ("SaveLatent", "samples")}


def function_prompt(cls: Any, values: dict[str, Any]) -> dict[str, Any]:
    """A prompt that runs one component as a function: its instance is node "1", given `values` (an IMAGE input
    takes a file name in the input folder, read by a LoadImage); each IMAGE output goes to a SaveImage and each
    LATENT one to a SaveLatent (`save_OUTPUT`), named after the component and output."""
    prompt: dict[str, Any] = {"1": {"class_type": cls.type, "inputs": {}, "_meta": {"title": cls.spec.name}}}
    for name, value in values.items():
        inp = cls.input(name)
        if inp is None:
            raise ComponentError(f"{cls.type} has no input {name!r}; it has "
                                 + ", ".join(f"{i.name} ({i.type})" for i in cls.inputs))
        if inp.type == "IMAGE":
            prompt[f"load_{name}"] = {"class_type": "LoadImage", "inputs": {"image": value}}
            value = [f"load_{name}", 0]
        prompt["1"]["inputs"][name] = value
    for slot, out in enumerate(cls.outputs):
        if out.type in SAVERS:
            kind, field = SAVERS[out.type]
            prompt[f"save_{out.name}"] = {"class_type": kind, "inputs": {
                field: ["1", slot], "filename_prefix": f"{cls.spec.name}_{out.name}"}}
    return prompt


def from_subgraph(name: str, graph: dict[str, Any], ref: str, registry: Registry,
                  description: str = "") -> ComponentSpec:
    """A component from a subgraph of an editor graph (`ref`: its id, a unique id prefix, or its name): the
    subgraph's inputs and outputs become the component's; an input that feeds a widget is declared like that
    widget (its type, range and choices; the value set inside as default)."""
    from executor.ui_format import subgraph_body, widget_values
    from executor.ui_graph import GraphError

    try:
        definition, body, flat = subgraph_body(graph, ref, registry)
    except GraphError as exc:
        raise ComponentError(str(exc)) from exc
    host = flat.open_instance
    declared = []
    for slot in definition.inputs:
        item: dict[str, Any] = {"name": str(slot.get("name")), "type": str(slot.get("type") or "*")}
        for nid, node in body.items():
            cls = registry.get(node["class_type"])
            field = next((k for k, v in node["inputs"].items() if v == {"__input__": item["name"]}), None)
            inp = cls.input(field) if cls and field else None
            if inp is None or not inp.is_widget:
                continue
            current = widget_values(flat.dtos[f"{host}:{nid}"].node, cls).get(field, inp.default)
            item.update({"type": "COMBO" if inp.is_combo else inp.type, "default": current})
            item.update({k: v for k, v in (("min", inp.min), ("max", inp.max), ("step", inp.step),
                                           ("tooltip", inp.tooltip)) if v is not None and v != ""})
            if inp.is_combo:
                item["options"] = inp.choices()
            if inp.extra:
                item["extra"] = dict(inp.extra)
            break
        declared.append(item)
    produced = []
    for index, slot in enumerate(definition.outputs):
        found = flat.resolve_output(flat.dtos[host], index, slot.get("type", "*"), set())
        if found is None or found[0] != "link":
            raise ComponentError(f"subgraph output {slot.get('name')!r} is not fed by a node")
        source, out_slot = found[1]
        produced.append({"name": str(slot.get("name")), "type": str(slot.get("type")),
                         "from": [source[len(host) + 1:], out_slot]})
    return ComponentSpec(name, 1, declared, produced, body, description or definition.name)
