"""Sumi's command line: run, validate and list nodes.

    python main.py run WORKFLOW.json [--set NODE.INPUT=VALUE[,VALUE…]]… [--output-dir DIR] [--json]
    python main.py validate WORKFLOW.json [--json]
    python main.py nodes [--json]
    python main.py models hash [--json]
    python main.py components list | save NAME WORKFLOW --input NAME=NODE.INPUT … --output NAME=NODE[.SLOT] …
    python main.py run COMPONENT.json|component/NAME --input NAME=VALUE …
    python main.py run IMAGE.png --verify
    python main.py serve [--listen 127.0.0.1] [--port 8188] [--token T] [--enable-cors-header ORIGIN]
                         [--preview-method auto|latent2rgb|taesd|none] [--front-end sumi|comfyui]
                         [--front-end-root DIR]

Exit status: 0 success, 1 a run-time error, 2 an invalid workflow or command line.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_RUNTIME, EXIT_INVALID = 0, 1, 2


class UsageError(Exception):
    """A command-line problem (bad --set, unreadable workflow): exit 2 with one clear line."""


@dataclass
class Loaded:
    """A workflow file as opened: the API prompt, the editor graph (if any), its model manifest (ComfyUI's
    `models` list) and, for a PNG Sumi wrote, the provenance record of that image."""

    prompt: dict[str, Any]
    graph: dict[str, Any] | None = None
    models: list[dict[str, Any]] | None = None
    provenance: dict[str, Any] | None = None


def load_workflow(path: str, registry: Any) -> Loaded:
    """API-format JSON, the editor's graph JSON, a saved POST /prompt body, or a PNG written by Sumi or ComfyUI
    (its `prompt`/`workflow` text chunks, and Sumi's `sumi` record). Old Sumi files are migrated first."""
    from executor.errors import NodeError, ValidationFailed
    from executor.ui_format import is_ui_format, ui_to_api
    from nodes import formats

    file = Path(path)
    if path.startswith("component/") and not file.is_file():
        return Loaded(component_prompt(registry, registry.get(path), path))
    if not file.is_file():
        raise UsageError(f"workflow file not found: {path}")
    graph = record = None
    models = None
    if file.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(file) as img:
            chunks = {k: img.info.get(k) for k in ("prompt", "workflow", "sumi")}
        if not (chunks["prompt"] or chunks["workflow"]):
            raise UsageError(f"{path} carries no `prompt` or `workflow` metadata")
        graph = json.loads(chunks["workflow"]) if chunks["workflow"] else None
        record = json.loads(chunks["sumi"]) if chunks["sumi"] else None
        data = json.loads(chunks["prompt"]) if chunks["prompt"] else graph
        models = (record or {}).get("models")
    else:
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not valid JSON: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("component"), str):
            return Loaded(component_prompt(registry, component_file(file, registry), path))
        if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
            data = _migrated(data, formats)
            models = data.get("models")
            graph = ((data.get("extra_data") or {}).get("extra_pnginfo") or {}).get("workflow")
            data = data["prompt"]  # a saved POST /prompt body
    if isinstance(graph, dict):
        graph = _migrated(graph, formats)
        if models is None and isinstance(graph.get("models"), list):
            models = graph["models"]
    if is_ui_format(data):
        graph = data = _migrated(data, formats)
        models = models if models is not None else data.get("models")
        data, errors = ui_to_api(data, registry)
        if errors:
            raise ValidationFailed(errors)
    if not isinstance(data, dict):
        raise ValidationFailed([NodeError("invalid_prompt", "A workflow must be a JSON object of nodes keyed by id",
                                          expected="object", received=type(data).__name__)])
    return Loaded(data, graph, models if isinstance(models, list) else None, record)


def component_file(file: Path, registry: Any) -> Any:
    """The node class of a component document (registered now if it is not one of the known files)."""
    from executor.components import ComponentError, register
    from nodes import components

    try:
        spec = components.read(file)
    except ComponentError as exc:
        raise UsageError(str(exc)) from exc
    pinned = f"component/{spec.name}@{spec.version}"
    if registry.get(pinned) is None:
        register(registry, [spec])
    return registry.get(pinned)


def component_prompt(registry: Any, cls: Any, ref: str) -> dict[str, Any]:
    """A prompt that runs one component as a function (node "1"); `--input` fills it in."""
    from nodes import components

    if cls is None or not hasattr(cls, "spec"):
        raise UsageError(f"no component {ref!r}; `main.py components list` shows them")
    return components.function_prompt(cls, {})


def apply_inputs(prompt: dict[str, Any], items: list[str], registry: Any) -> None:
    """`--input NAME=VALUE` on the component instance "1"; an IMAGE input takes a file (loaded by LoadImage)."""
    import shutil

    from nodes import paths

    node = prompt.get("1")
    cls = registry.get(node.get("class_type")) if isinstance(node, dict) else None
    if cls is None or not hasattr(cls, "spec"):
        raise UsageError("--input applies to a component (a file with declared inputs, or component/NAME)")
    for item in items:
        name, eq, raw = item.partition("=")
        inp = cls.input(name)
        if not eq or inp is None:
            raise UsageError(f"--input {item!r}: {cls.type} has the inputs "
                             + ", ".join(f"{i.name} ({i.type})" for i in cls.inputs))
        if inp.type == "IMAGE":
            source = Path(raw)
            if source.is_file():  # a file anywhere: copied into the input folder, where LoadImage reads
                paths.FOLDERS.input.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, paths.FOLDERS.input / source.name)
                raw = source.name
            prompt[f"load_{name}"] = {"class_type": "LoadImage", "inputs": {"image": raw}}
            node["inputs"][name] = [f"load_{name}", 0]
        else:
            node["inputs"][name] = raw if inp.type == "STRING" else _literal(raw)


def _migrated(data: dict[str, Any], formats: Any) -> dict[str, Any]:
    try:
        return formats.migrate(data)
    except formats.NewerFormat as exc:
        raise UsageError(str(exc)) from exc


def resolve_node(prompt: dict[str, Any], ref: str) -> str:
    """A node id, or a title or class_type that names exactly one node."""
    if ref in prompt:
        return ref
    for field in ("title", "class_type"):
        hits = [nid for nid, node in prompt.items() if isinstance(node, dict)
                and (node.get("_meta", {}).get("title") if field == "title" else node.get("class_type")) == ref]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UsageError(f"--set: {ref!r} names {len(hits)} nodes ({', '.join(hits)}); use a node id")
    raise UsageError(f"--set: no node with id, title or class_type {ref!r}")


def parse_sets(prompt: dict[str, Any], sets: list[str], registry: Any) -> list[tuple[str, str, list[Any]]]:
    """--set NODE.INPUT=V1,V2 → [(node_id, input, [values])]; repeating a key adds values (for text)."""
    merged: dict[tuple[str, str], list[Any]] = {}
    for item in sets:
        key, eq, raw = item.partition("=")
        node_ref, dot, name = key.rpartition(".")
        if not eq or not dot or not name:
            raise UsageError(f"--set {item!r}: expected NODE.INPUT=VALUE")
        nid = resolve_node(prompt, node_ref)
        cls = registry.get(prompt[nid].get("class_type"))
        inp = cls.input(name) if cls else None
        if cls and inp is None:
            raise UsageError(f"--set {item!r}: {cls.type} has no input {name!r}; it has "
                             + ", ".join(i.name for i in cls.inputs))
        if inp is not None and inp.type == "STRING":
            values = [raw]  # prompts contain commas: text sweeps repeat --set instead
        else:
            values = [_literal(v) for v in raw.split(",")]
        merged.setdefault((nid, name), []).extend(values)
    return [(nid, name, values) for (nid, name), values in merged.items()]


def _literal(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (int, float, bool)) else text


def variants(prompt: dict[str, Any], sets: list[tuple[str, str, list[Any]]]) -> list[tuple[dict[str, Any], str]]:
    """Every combination of the swept values, with a label such as `5.seed=2 6.text='a cat'`."""
    combos = itertools.product(*(values for _, _, values in sets)) if sets else [()]
    out = []
    for combo in combos:
        p = json.loads(json.dumps(prompt))
        for (nid, name, _), value in zip(sets, combo, strict=True):
            p[nid].setdefault("inputs", {})[name] = value
        out.append((p, " ".join(f"{nid}.{name}={value!r}" for (nid, name, _), value in zip(sets, combo,
                                                                                             strict=True))))
    return out


def configure(args: argparse.Namespace) -> None:
    from nodes import paths

    paths.configure(args.base_directory, output_dir=args.output_dir,
                    extra_model_paths=args.extra_model_paths_config or [])
    paths.ensure_example_inputs()


class Progress:
    """One status line on a terminal's stderr; silent when stderr is not a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.node = ""

    def __call__(self, event: Any) -> None:
        if not self.enabled:
            return
        if event.type == "executing" and event.data.get("node"):
            self.node = f"node {event.data['node']}"
            self._show(f"{self.node} …")
        elif event.type == "progress":
            v, m = event.data["value"], event.data["max"]
            bar = "#" * int(20 * v / m)
            self._show(f"{self.node} [{bar:<20}] {v}/{m}")
        elif event.type == "executing":
            sys.stderr.write("\r\033[K")

    def _show(self, text: str) -> None:
        sys.stderr.write(f"\r\033[K{self.label}{text}"[:200])
        sys.stderr.flush()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def cmd_run(args: argparse.Namespace) -> int:
    configure(args)
    from executor.errors import ValidationFailed
    from executor.runner import Executor
    from nodes import build_registry, devices, paths

    devices.configure(args.device, args.precision, args.threads)
    registry = build_registry()
    try:
        loaded = load_workflow(args.workflow, registry)
    except ValidationFailed as failed:
        return report_invalid(failed, args.json)
    missing = check_models(loaded, args.json)
    if missing is not None:
        return missing
    prompt, graph = loaded.prompt, loaded.graph
    if args.input:
        apply_inputs(prompt, args.input, registry)
    if args.verify:
        return verify(args, loaded, registry)
    extra_data = {"extra_pnginfo": {"workflow": graph}} if graph else None
    runs = variants(prompt, parse_sets(prompt, args.set or [], registry))
    if args.save_workflow:
        print(f"saved {save_workflow(Path(args.save_workflow), loaded, runs[0][0])}", file=sys.stderr)
    executor = Executor(registry)
    prepared = []
    for p, label in runs:
        try:
            prepared.append((executor.prepare(p), p, label))
        except ValidationFailed as failed:
            return report_invalid(failed, args.json, label)
    status = EXIT_OK
    started = time.perf_counter()
    for index, (valid, p, label) in enumerate(prepared):
        tag = f"[{index + 1}/{len(prepared)}] " if len(prepared) > 1 else ""
        progress = Progress(tag)

        def on_event(event: Any, progress: Progress = progress) -> None:
            if event.type in ("preview", "binary_image"):  # images for a websocket client, not for a terminal
                return
            if args.json:
                print(json.dumps(_jsonable(event.to_dict())), flush=True)
            else:
                progress(event)

        t0 = time.perf_counter()
        result = executor.execute(valid, p, extra_data=extra_data, on_event=on_event)
        if result.status != "success":
            status = EXIT_RUNTIME
            if not args.json:
                err = result.error or {}
                print(f"{tag}{label} {result.status} in node {err.get('node_id')} ({err.get('node_type')}): "
                      f"{err.get('exception_message', 'interrupted')}", file=sys.stderr)
            continue
        if not args.json:
            for ui in result.outputs.values():
                for item in ui.get("images", []) + ui.get("latents", []):
                    root = paths.FOLDERS.output if item["type"] == "output" else paths.FOLDERS.temp
                    print(root / item["subfolder"] / item["filename"])
            print(f"{tag}{label + ': ' if label else ''}ran {len(result.ran)} node(s), "
                  f"{len(result.cached)} cached, {time.perf_counter() - t0:.2f}s", file=sys.stderr)
    if not args.json and len(prepared) > 1:
        print(f"{len(prepared)} runs in {time.perf_counter() - started:.2f}s", file=sys.stderr)
    return status


def check_models(loaded: Loaded, as_json: bool) -> int | None:
    """Resolve the workflow's model manifest by hash (renamed files are substituted in the prompt); report
    every model still missing in one list and return exit 2, before anything runs."""
    from nodes import manifest

    found = manifest.resolve(loaded.prompt, loaded.models)
    for item in found.renamed:
        note = f"model {item['directory']}/{item['name']} found by its hash as {item['found']}"
        print(json.dumps({"type": "model_renamed", "data": item}) if as_json else note,
              file=sys.stdout if as_json else sys.stderr)
    for item in found.mismatched:
        print(f"warning: {item['directory']}/{item['name']} is not the file the workflow was saved with "
              f"(sha256 {item['hash'][:12]}…, expected {item['expected_hash'][:12]}…)", file=sys.stderr)
    if not found.missing:
        return None
    if as_json:
        print(json.dumps({"type": "missing_models", "data": {"models": found.missing}}))
    else:
        print(f"missing models: {len(found.missing)}", file=sys.stderr)
        for item in found.missing:
            print(f"  {item['directory']}/{item['name']} (node {item['node_id']} {item['class_type']}."
                  f"{item['input_name']})\n    sha256: {item['expected_hash']}\n    searched: "
                  f"{', '.join(item['searched']) or '(no folders)'}"
                  + (f"\n    download: {item['url']}" if item.get("url") else ""), file=sys.stderr)
    return EXIT_INVALID


def save_workflow(target: Path, loaded: Loaded, prompt: dict[str, Any]) -> Path:
    """The editor graph (or the API prompt, as a POST /prompt body) with its model manifest and format version."""
    from nodes import formats, manifest

    models = manifest.manifest(prompt, loaded.models)
    if loaded.graph is not None:
        document = formats.stamp({**loaded.graph, "models": models})
    else:
        document = formats.stamp({"prompt": prompt, "models": models})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=1))
    return target


def verify(args: argparse.Namespace, loaded: Loaded, registry: Any) -> int:
    """Re-run the prompt of a PNG Sumi wrote; compare the pixels and the recorded environment."""
    import tempfile

    import numpy as np
    from PIL import Image

    from executor.errors import ValidationFailed
    from executor.runner import Executor
    from nodes import paths, provenance

    recorded = loaded.provenance
    if not recorded or "node" not in recorded:
        raise UsageError(f"--verify needs a PNG written by Sumi's SaveImage; {args.workflow} has no `sumi` record")
    with Image.open(args.workflow) as img:
        original = np.asarray(img.convert("RGB"))
    extra_data = {"extra_pnginfo": {"workflow": loaded.graph}} if loaded.graph else None
    with tempfile.TemporaryDirectory(prefix="sumi-verify-") as scratch:
        paths.FOLDERS.output = Path(scratch)  # the re-run's files are thrown away
        try:
            result = Executor(registry).run(loaded.prompt, extra_data=extra_data)
        except ValidationFailed as failed:
            return report_invalid(failed, args.json)
        if result.status != "success":
            err = result.error or {}
            print(f"re-run {result.status} in node {err.get('node_id')}: {err.get('exception_message')}",
                  file=sys.stderr)
            return EXIT_RUNTIME
        images = result.outputs.get(recorded["node"], {}).get("images", [])
        index = int(recorded.get("batch_index", 0))
        if index >= len(images):
            raise UsageError(f"the re-run of node {recorded['node']} wrote no image {index}")
        with Image.open(Path(scratch) / images[index]["subfolder"] / images[index]["filename"]) as img:
            again = np.asarray(img.convert("RGB"))
    current = provenance.record(loaded.prompt, loaded.models)
    differences = provenance.differences(recorded, current)
    same_shape = again.shape == original.shape
    delta = np.abs(again.astype(int) - original.astype(int)) if same_shape else None
    report = {"identical": bool(same_shape and not delta.any()), "shape": [list(original.shape), list(again.shape)],
              "differing_values": int((delta != 0).sum()) if same_shape else None,
              "max_abs_difference": int(delta.max()) if same_shape else None,
              "environment_differences": differences}
    if args.json:
        print(json.dumps({"type": "verify", "data": report}))
    else:
        if report["identical"]:
            print(f"{args.workflow}: identical: the re-run gives the same pixels")
        else:
            detail = (f"{report['differing_values']} of {original.size} values differ, by up to "
                      f"{report['max_abs_difference']}" if same_shape else f"size {again.shape} vs {original.shape}")
            print(f"{args.workflow}: DIFFERENT: {detail}")
        if differences:
            print("what differs from the recorded environment:\n  " + "\n  ".join(differences))
        elif not report["identical"]:
            print("the recorded environment is the same (models, versions, device, precision)")
    return EXIT_OK if report["identical"] else EXIT_RUNTIME


def cmd_models(args: argparse.Namespace) -> int:
    """`models hash`: fill the persistent hash index for every model file, with a progress bar."""
    configure(args)
    from nodes import manifest

    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc="hashing")

    def progress(name: str, done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.set_postfix_str(name[-40:], refresh=False)
            bar.update(done - bar.n)

    started = time.perf_counter()
    summary = manifest.fill_index(progress)
    seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    summary["seconds"] = round(seconds, 3)
    summary["index"] = str(manifest.index().path)
    if args.json:
        print(json.dumps({"type": "models_hashed", "data": summary}))
    else:
        speed = f", {summary['bytes'] / max(seconds, 1e-9) / 1e6:.0f} MB/s" if summary["bytes"] else ""
        print(f"{summary['files']} model file(s), {summary['hashed']} hashed now "
              f"({summary['bytes'] / 1e6:.1f} MB in {seconds:.2f}s{speed}); index {summary['index']}")
    return EXIT_OK


def cmd_components(args: argparse.Namespace) -> int:
    """`components list`; `components save NAME WORKFLOW --input NAME=NODE.INPUT … --output NAME=NODE[.SLOT] …`
    or `components save NAME EDITOR_GRAPH --subgraph ID_OR_NAME`."""
    configure(args)
    from executor.components import ComponentError
    from nodes import build_registry, components

    registry = build_registry()
    if args.action == "list":
        listed = [{"type": cls.type, "version": cls.version, "inputs": [i.name for i in cls.inputs],
                   "outputs": [o.name for o in cls.outputs], "file": cls.spec.source}
                  for cls in registry.nodes.values() if hasattr(cls, "spec") and "@" not in cls.type]
        if args.json:
            print(json.dumps({"type": "components", "data": listed}))
        for item in [] if args.json else listed:
            print(f"{item['type']:32} v{item['version']:<3} in: {', '.join(item['inputs']) or '-'}; "
                  f"out: {', '.join(item['outputs']) or '-'}")
        return EXIT_OK
    if not args.name or not args.workflow:
        raise UsageError("components save NAME WORKFLOW --input NAME=NODE.INPUT … --output NAME=NODE[.SLOT] …")
    from executor.errors import ValidationFailed

    try:
        loaded = load_workflow(args.workflow, registry)
    except ValidationFailed as failed:
        return report_invalid(failed, args.json)
    pairs = {}
    for kind, items in (("input", args.input or []), ("output", args.output or [])):
        for item in items:
            key, eq, value = item.partition("=")
            if not eq:
                raise UsageError(f"--{kind} {item!r}: expected NAME=NODE.{'INPUT' if kind == 'input' else 'SLOT'}")
            pairs.setdefault(kind, {})[key] = value
    try:
        if args.subgraph:
            if loaded.graph is None:
                raise UsageError("--subgraph needs an editor graph (a workflow saved by the editor)")
            spec = components.from_subgraph(args.name, loaded.graph, args.subgraph, registry, args.description or "")
        else:
            spec = components.from_workflow(args.name, loaded.prompt, registry, pairs.get("input", {}),
                                            pairs.get("output", {}), args.description or "")
        path, spec, new = components.save(spec)
    except ComponentError as exc:
        raise UsageError(str(exc)) from exc
    note = "saved" if new else "unchanged, kept"
    print(json.dumps({"type": "component_saved", "data": {"type": f"component/{spec.name}", "version":
                                                           spec.version, "file": str(path), "new": new}})
          if args.json else f"{note} component/{spec.name} version {spec.version}: {path}")
    return EXIT_OK


def report_invalid(failed: Any, as_json: bool, label: str = "") -> int:
    if as_json:
        print(json.dumps({"type": "validation_error", "data": {
            "variant": label, "errors": [_jsonable(e.to_dict()) for e in failed.errors],
            "node_errors": _jsonable(failed.by_node())}}))
    else:
        head = f"invalid workflow{' (' + label + ')' if label else ''}: {len(failed.errors)} error(s)"
        print(head, file=sys.stderr)
        for err in failed.errors:
            print("  " + err.render().replace("\n", "\n  "), file=sys.stderr)
    return EXIT_INVALID


def cmd_validate(args: argparse.Namespace) -> int:
    configure(args)
    from executor.errors import ValidationFailed
    from executor.runner import Executor
    from nodes import build_registry

    registry = build_registry()
    try:
        loaded = load_workflow(args.workflow, registry)
        missing = check_models(loaded, args.json)
        if missing is not None:
            return missing
        prompt = loaded.prompt
        Executor(registry).prepare(prompt)
    except ValidationFailed as failed:
        return report_invalid(failed, args.json)
    print(json.dumps({"type": "valid", "data": {"nodes": len(prompt)}}) if args.json else f"{args.workflow}: valid")
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    configure(args)
    from nodes import build_registry

    registry = build_registry()
    for module, error in registry.failed.items():
        print(f"warning: node module {module} failed to load:\n{error}", file=sys.stderr)
    info = registry.object_info()
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for name, node in info.items():
            print(f"{name:28} {node['category']:14} {node['display_name']}")
    return EXIT_OK


def serve_executor(args: argparse.Namespace, registry: Any) -> Any:
    """The server's Executor: it may compute previews unless --preview-method none (the CLI's never does); the
    server decides per prompt whether its client asked for them."""
    from executor.runner import Executor
    from nodes import preview

    preview.configure(args.preview_method or "auto")
    return Executor(registry, previews=preview.enabled(preview.METHOD))


class FrontEndMissing(Exception):
    pass


def front_end_folder(front_end: str, root: str | None) -> Path | None:
    """The folder served at / (None: Sumi's editor): --front-end-root wins; `comfyui` is the static folder of
    the installed comfyui-frontend-package."""
    if root:
        folder = Path(root).expanduser().resolve()
        if not (folder / "index.html").is_file():
            raise FrontEndMissing(f"--front-end-root {root}: no index.html in {folder}")
        return folder
    if front_end != "comfyui":
        return None
    import importlib.util

    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        raise FrontEndMissing("ComfyUI's front end is not installed: `pip install "
                              "comfyui-frontend-package==1.58.1` (the version requirements.txt pins and the tests "
                              "use), or pass --front-end-root DIR")
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    if not (folder / "index.html").is_file():
        raise FrontEndMissing(f"comfyui-frontend-package is installed but has no static/index.html in {folder}")
    return folder


def cmd_serve(args: argparse.Namespace) -> int:
    """ComfyUI's HTTP/websocket API over a durable queue (`<base>/user/sumi.db`)."""
    import logging
    import secrets

    configure(args)
    from aiohttp import web

    from executor.dispatch import LocalDispatcher
    from executor.queue import PromptStore, StoreInUse
    from nodes import build_registry, devices, paths
    from web import ServerConfig, create_app
    from web.security import is_loopback
    from web.server import bindable_hosts

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    devices.configure(args.device, args.precision, args.threads)
    user_dir = Path(args.user_directory) if args.user_directory else paths.FOLDERS.user
    try:
        store = PromptStore(args.database or user_dir / "sumi.db")
    except StoreInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    token = args.token
    if token is None and not is_loopback(args.listen):
        token = secrets.token_urlsafe(24)
        print(f"listening on {args.listen} needs a token; this run's token: {token}", flush=True)
    try:
        front_end_root = front_end_folder(args.front_end, args.front_end_root)
    except FrontEndMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        store.close()
        return EXIT_INVALID
    registry = build_registry()
    for module, error in registry.failed.items():
        print(f"warning: node module {module} failed to load:\n{error}", file=sys.stderr)
    if not args.no_default_model:
        from nodes import models

        models.ensure_default_checkpoint()  # so a fresh machine's default workflow validates and runs at once
    dispatcher = LocalDispatcher(store, serve_executor(args, registry))
    config = ServerConfig(listen=args.listen, port=args.port, token=token, cors_origin=args.enable_cors_header,
                          max_upload_size=int(args.max_upload_size * 1024 * 1024), user_directory=user_dir,
                          preview_method=args.preview_method, front_end_root=front_end_root)
    app = create_app(dispatcher, registry, config)
    hosts = bindable_hosts([h.strip() for h in args.listen.split(",") if h.strip()])
    shown = ", ".join(f"http://{'[' + h + ']' if ':' in h else h}:{args.port}" for h in hosts)
    web.run_app(app, host=hosts, port=args.port, print=lambda _: print(f"Sumi serving on {shown}\n"
                                                                           f"Open the editor: {shown.split(', ')[0]}/",
                                                                           flush=True), access_log=None)
    store.close()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="Sumi: run Stable Diffusion node workflows.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-directory", help="folder holding models/, input/, output/ (default: this repo)")
    common.add_argument("--extra-model-paths-config", action="append", metavar="YAML",
                        help="an extra_model_paths.yaml (ComfyUI's format); repeatable")
    common.add_argument("--output-dir", help="where SaveImage writes (default: BASE/output)")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run a workflow (API-format JSON or a PNG from SaveImage)")
    run.add_argument("workflow")
    run.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE[,VALUE…]",
                     help="override an input; NODE is an id, a title or a unique class_type; comma-separated "
                          "values sweep (text inputs: repeat --set instead)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                     help="model dtype (auto: fp16/bf16 on capable GPUs, fp32 on CPU)")
    run.add_argument("--threads", type=int, help="torch CPU threads")
    run.add_argument("--save-workflow", metavar="FILE", help="also save the workflow with its model manifest "
                     "(name, folder, sha256 of every model file) and Sumi's format version")
    run.add_argument("--input", action="append", metavar="NAME=VALUE",
                     help="a component's declared input (run a component file or component/NAME); an IMAGE "
                          "input takes an image file")
    run.add_argument("--verify", action="store_true", help="re-run a PNG Sumi wrote and say whether the pixels "
                     "are identical and, if not, what differs in the recorded environment")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", parents=[common], help="check a workflow without running it")
    validate.add_argument("workflow")
    validate.set_defaults(func=cmd_validate)

    comps = sub.add_parser("components", parents=[common], help="components: `list`, or `save NAME WORKFLOW "
                           "--input NAME=NODE.INPUT … --output NAME=NODE[.SLOT] …` (a change bumps the version)")
    comps.add_argument("action", choices=["list", "save"])
    comps.add_argument("name", nargs="?")
    comps.add_argument("workflow", nargs="?")
    comps.add_argument("--input", action="append", metavar="NAME=NODE.INPUT")
    comps.add_argument("--output", action="append", metavar="NAME=NODE[.SLOT]")
    comps.add_argument("--description")
    comps.add_argument("--subgraph", metavar="ID_OR_NAME", help="make the component from this subgraph of an "
                       "editor graph: its inputs and outputs become the component's")
    comps.set_defaults(func=cmd_components)

    models = sub.add_parser("models", parents=[common], help="model files: `models hash` fills the hash index")
    models.add_argument("action", choices=["hash"])
    models.set_defaults(func=cmd_models)

    nodes = sub.add_parser("nodes", parents=[common], help="list node types (--json: /object_info shape)")
    nodes.set_defaults(func=cmd_nodes)

    serve = sub.add_parser("serve", parents=[common], help="serve ComfyUI's HTTP/websocket API (durable queue)")
    serve.add_argument("--listen", nargs="?", const="0.0.0.0,::", default="127.0.0.1",
                       help="address(es) to bind, comma-separated (bare: 0.0.0.0,::, IPv4 only where there is no "
                            "IPv6); off loopback a token is needed")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--token", help="bearer token every request must carry (generated and printed when "
                                       "--listen is not loopback and none is given)")
    serve.add_argument("--enable-cors-header", nargs="?", const="*", metavar="ORIGIN",
                       help="allow cross-origin requests from ORIGIN (bare: any origin)")
    serve.add_argument("--max-upload-size", type=float, default=100, help="largest request body, in MB")
    serve.add_argument("--user-directory", help="where sumi.db, settings and saved workflows live "
                       "(default: BASE/user)")
    serve.add_argument("--database", help="the queue/history SQLite file (default: USER_DIRECTORY/sumi.db)")
    serve.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    serve.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    serve.add_argument("--threads", type=int, help="torch CPU threads")
    serve.add_argument("--preview-method", default=None, choices=["none", "auto", "latent2rgb", "taesd"],
                       help="sampling previews for every client (auto: taesd where models/vae_approx has the "
                            "family's taesd_decoder / taesdxl_decoder file, else latent2rgb; none: never); by "
                            "default only clients that ask get them (extra_data.preview_method, or "
                            "supports_preview_metadata in their feature flags)")
    serve.add_argument("--front-end", choices=["sumi", "comfyui"], default="sumi",
                       help="the front end served at / (comfyui: ComfyUI's own, from the installed "
                            "comfyui-frontend-package)")
    serve.add_argument("--front-end-root", metavar="DIR",
                       help="serve this folder's index.html and files at / instead (any static front end)")
    serve.add_argument("--no-default-model", action="store_true",
                       help="do not build the embedded tiny checkpoint when it is missing")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the network
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _exit_now(status: int) -> None:
    """End a finished `run` without interpreter teardown: freeing gigabytes of weights tensor by tensor and
    stopping torch's thread pools took over a second, after every file was written and closed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    status = main()
    if sys.argv[1:2] == ["run"]:
        _exit_now(status)
    sys.exit(status)
