"""Running a validated prompt: plan, look up signatures, run what is not cached, emit events.

Events carry ComfyUI's names and fields (execution_start, execution_cached, executing, progress,
progress_state, executed, execution_success, execution_error, execution_interrupted). Sumi adds `reason` to
`executing`: why the node ran rather than being served from the cache. `preview` events (a PIL image) come
only from an Executor whose host asked for them (`previews=True`: the server); the CLI never pays for them.

Per node that runs, in ComfyUI's order: progress_state (running, 0/1), executing, then per progress report
progress_state (running, value/max) and progress (and preview), executed if it has UI output, and
progress_state (finished, value = max). A cached output node re-sends executed, then progress_state (finished).
"""
from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .cache import Cache
from .components import expand as expand_components
from .errors import ValidationFailed
from .fingerprint import signature
from .schema import Determinism, Registry, Result
from .validate import ValidPrompt, ancestors_of, graph_of, id_order, validate
from .workflow import Link, Workflow, parent_id, parse_api


@dataclass
class Event:
    type: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "data": self.data}


class Interrupted(Exception):
    """Raised inside a node (between nodes or at a sampler step) when the run was interrupted."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class ProgressState:
    """ComfyUI's per-prompt progress registry: every node that started, sent whole as `progress_state`."""

    def __init__(self, prompt_id: str, emit: Callable[[Event], None]) -> None:
        self.prompt_id = prompt_id
        self.emit = emit
        self.nodes: dict[str, dict[str, Any]] = {}  # node id → {state, value, max}; insertion = start order

    def start(self, node_id: str) -> None:
        self.nodes[node_id] = {"state": "running", "value": 0.0, "max": 1.0}
        self._send()

    def update(self, node_id: str, value: float, maximum: float) -> None:
        entry = self.nodes.setdefault(node_id, {})
        entry.update(state="running", value=value, max=maximum)
        self._send()

    def finish(self, node_id: str) -> None:
        entry = self.nodes.setdefault(node_id, {"value": 1.0, "max": 1.0})
        entry.update(state="finished", value=entry["max"])
        self._send()

    def _send(self) -> None:
        # A fresh snapshot each time: listeners may deliver the event later, after more updates.
        nodes = {nid: {"value": e["value"], "max": e["max"], "state": e["state"], "node_id": nid,
                       "prompt_id": self.prompt_id, "display_node_id": nid, "parent_node_id": parent_id(nid),
                       "real_node_id": nid}
                 for nid, e in self.nodes.items()}
        self.emit(Event("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}))


@dataclass
class RunContext:
    """What a running node may use: progress, interrupt checks, previews, hidden values.

    `wants_previews` says whether the host shows previews: a node computes one only then (it costs time);
    `preview_method` is the kind the host asked for, when it named one (opaque here: the nodes read it)."""

    node_id: str
    prompt_id: str
    prompt: dict[str, Any]
    extra_pnginfo: dict[str, Any] | None
    emit: Callable[[Event], None]
    interrupt_flag: threading.Event
    wants_previews: bool = False
    progress_state: ProgressState | None = None
    preview_method: str | None = None

    def check_interrupt(self) -> None:
        if self.interrupt_flag.is_set():
            raise Interrupted()

    def progress(self, value: int, maximum: int, preview: Any = None) -> None:
        """Report progress (and optionally a preview image); also the place interrupts are noticed."""
        if self.progress_state is not None:
            self.progress_state.update(self.node_id, value, maximum)
        self.emit(Event("progress", {"value": value, "max": maximum, "prompt_id": self.prompt_id,
                                     "node": self.node_id}))
        if preview is not None and self.wants_previews:
            self.emit(Event("preview", {"image": preview, "prompt_id": self.prompt_id, "node": self.node_id,
                                        "display_node": self.node_id, "parent_node": parent_id(self.node_id)}))
        self.check_interrupt()

    def send_image(self, image: Any, image_format: str = "PNG") -> None:
        """Send an image (PIL) to the submitting client as a binary frame: an output (ComfyUI's
        SaveImageWebsocket), sent whether or not the client asked for previews."""
        self.emit(Event("binary_image", {"image": image, "format": image_format, "prompt_id": self.prompt_id,
                                         "node": self.node_id, "display_node": self.node_id}))


@dataclass
class RunResult:
    prompt_id: str
    status: str  # success | error | interrupted
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id → ui dict
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    values: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # node id → outputs of the nodes touched


class Executor:
    """Runs prompts against one registry and one long-lived cache.

    `previews`: whether nodes should compute preview images while they run (a server showing them sets it;
    off by default so command-line runs spend nothing on them)."""

    def __init__(self, registry: Registry, cache: Cache | None = None,
                 on_oom: Callable[[], None] | None = None, previews: bool = False) -> None:
        self.registry = registry
        self.previews = previews
        self.cache = cache or Cache()
        self.interrupt_flag = threading.Event()
        self.on_oom = on_oom
        self._last_sigs: dict[str, tuple[str, dict[str, Any]]] = {}  # node id → (signature, constants)

    def prepare(self, prompt: dict[str, Any], targets: list[str] | None = None) -> ValidPrompt:
        """Parse and validate; raises ValidationFailed with every error."""
        wf, errors = parse_api(prompt)
        wf, expanded = expand_components(wf, self.registry)
        valid, more = validate(wf, self.registry, targets)
        errors += expanded + more
        if errors:
            # A component instance whose inputs are wrong is checked twice (before and during validation).
            unique = {(e.type, e.node_id, e.input_name, e.message): e for e in errors}
            raise ValidationFailed(list(unique.values()))
        return valid

    def signatures(self, valid: ValidPrompt, order: list[str]) -> dict[str, str | None]:
        sigs: dict[str, str | None] = {}
        for nid in order:
            spec, cls = valid.workflow.nodes[nid], valid.classes[nid]
            links = spec.links()
            constants = {k: v for k, v in spec.inputs.items() if k not in links and cls.input(k)}
            upstream_sigs = {k: sigs.get(link.node) for k, link in links.items() if cls.input(k)}
            if any(s is None for s in upstream_sigs.values()):
                sigs[nid] = None  # downstream of something uncacheable
                continue
            try:
                fp = cls.fingerprint(**constants) if cls.determinism is Determinism.VOLATILE else None
                upstream = {k: (upstream_sigs[k], link.slot) for k, link in links.items() if k in upstream_sigs}
                sigs[nid] = signature(cls.type, cls.version, constants, upstream, fp)
            except Exception:  # no fingerprint (e.g. a file gone): run it and let it fail itself
                sigs[nid] = None
        return sigs

    def _reason(self, nid: str, sig: str | None, constants: dict[str, Any], changed_upstream: list[str]) -> str:
        if sig is None:
            return "not cacheable"
        if sig in self.cache.evicted:
            return "evicted from the cache"
        last = self._last_sigs.get(nid)
        if last is not None:
            changed = sorted(k for k in set(constants) | set(last[1]) if constants.get(k) != last[1].get(k))
            if changed:
                return "inputs changed: " + ", ".join(changed)
        if changed_upstream:
            return "upstream changed: " + ", ".join(changed_upstream)
        return "not cached"

    def run(self, prompt: dict[str, Any], *, prompt_id: str | None = None, extra_data: dict[str, Any] | None = None,
            targets: list[str] | None = None, on_event: Callable[[Event], None] | None = None) -> RunResult:
        """Validate then run a prompt. Raises ValidationFailed before running anything if it is invalid."""
        valid = self.prepare(prompt, targets)
        return self.execute(valid, prompt, prompt_id=prompt_id, extra_data=extra_data, on_event=on_event)

    def execute(self, valid: ValidPrompt, prompt: dict[str, Any], *, prompt_id: str | None = None,
                extra_data: dict[str, Any] | None = None,
                on_event: Callable[[Event], None] | None = None, previews: bool | str | None = None) -> RunResult:
        """Run a validated prompt. `previews` overrides the executor's setting for this run (None keeps it): a
        bool, or the name of the kind of preview wanted (nodes get it as `ctx.preview_method`)."""
        prompt_id = prompt_id or uuid.uuid4().hex
        wants_previews = self.previews if previews is None else previews
        emit = on_event or (lambda event: None)
        self.interrupt_flag.clear()
        wf: Workflow = valid.workflow
        result = RunResult(prompt_id, "success")
        order = plan(valid)
        sigs = self.signatures(valid, order)
        emit(Event("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()}))
        result.cached = [nid for nid in order if sigs[nid] is not None and sigs[nid] in self.cache]
        emit(Event("execution_cached", {"nodes": result.cached, "prompt_id": prompt_id, "timestamp": _now_ms()}))

        # Take what we need from the cache now, so eviction during the run cannot take it away.
        values: dict[str, tuple[Any, ...]] = {}
        cached_ui: dict[str, dict[str, Any] | None] = {}
        to_run: set[str] = set()

        def need(nid: str) -> None:
            if nid in values or nid in to_run:
                return
            entry = self.cache.get(sigs[nid]) if sigs[nid] is not None else None
            if entry is not None:
                values[nid] = entry.outputs
                cached_ui[nid] = entry.ui
                return
            to_run.add(nid)
            for link in wf.nodes[nid].links().values():
                need(link.node)

        for out in valid.outputs:
            need(out)
        protect = {s for s in sigs.values() if s is not None}
        states = ProgressState(prompt_id, emit)
        current = None
        try:
            for nid in [n for n in order if n in to_run]:
                current = nid
                spec, cls = wf.nodes[nid], valid.classes[nid]
                if self.interrupt_flag.is_set():
                    raise Interrupted()
                # An identical node earlier in this run (a second copy of one subgraph) already made this value.
                entry = self.cache.get(sigs[nid]) if sigs[nid] is not None and not cls.output_node else None
                if entry is not None:
                    values[nid] = entry.outputs
                    result.cached.append(nid)
                    continue
                links = spec.links()
                constants = {k: v for k, v in spec.inputs.items() if k not in links}
                changed_up = [link.node for link in links.values() if link.node in to_run]
                states.start(nid)
                emit(Event("executing", {"node": nid, "display_node": nid, "prompt_id": prompt_id,
                                         "reason": self._reason(nid, sigs[nid], constants, changed_up)}))
                kwargs = {k: v for k, v in constants.items() if cls.input(k)}
                kwargs.update({k: values[link.node][link.slot] for k, link in links.items() if cls.input(k)})
                ctx = RunContext(nid, prompt_id, prompt, (extra_data or {}).get("extra_pnginfo"), emit,
                                 self.interrupt_flag, bool(wants_previews), states,
                                 wants_previews if isinstance(wants_previews, str) else None)
                out = cls().run(ctx, **kwargs)
                ui = None
                if isinstance(out, Result):
                    out, ui = out.outputs, out.ui
                if not isinstance(out, tuple) or len(out) != len(cls.outputs):
                    raise TypeError(f"{cls.type}.run returned {type(out).__name__} of length "
                                    f"{len(out) if isinstance(out, tuple) else '?'}; expected a tuple of "
                                    f"{len(cls.outputs)} output(s)")
                values[nid] = out
                result.ran.append(nid)
                self._last_sigs[nid] = (sigs[nid] or "", constants)
                if sigs[nid] is not None:
                    self.cache.put(sigs[nid], out, ui, cls.cache_pool, protect)
                if ui is not None:
                    result.outputs[nid] = ui
                    emit(Event("executed", {"node": nid, "display_node": nid, "output": ui,
                                            "prompt_id": prompt_id}))
                states.finish(nid)
            current = None
            for nid in valid.outputs:
                if nid in to_run:
                    continue
                if cached_ui.get(nid) is not None:
                    result.outputs[nid] = cached_ui[nid]
                    emit(Event("executed", {"node": nid, "display_node": nid, "output": cached_ui[nid],
                                            "prompt_id": prompt_id}))
                states.finish(nid)
            emit(Event("execution_success", {"prompt_id": prompt_id, "timestamp": _now_ms()}))
        except Interrupted:
            result.status = "interrupted"
            result.error = {"prompt_id": prompt_id, "node_id": current,
                            "node_type": wf.nodes[current].class_type if current else None,
                            "executed": list(result.ran), "timestamp": _now_ms()}
            emit(Event("execution_interrupted", result.error))
        except BaseException as exc:  # a node's SystemExit or KeyboardInterrupt fails the prompt only
            if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
                raise  # Ctrl-C in the command line: stop the program (signals only ever reach the main thread)
            result.status = "error"
            message = str(exc)
            if _is_oom(exc):
                self.cache.clear()
                if self.on_oom:
                    self.on_oom()
                message += " (out of memory: Sumi emptied its cache; try a smaller size or batch)"
            spec = wf.nodes[current] if current else None
            result.error = {
                "prompt_id": prompt_id, "node_id": current, "node_type": spec.class_type if spec else None,
                "executed": list(result.ran), "exception_message": message,
                "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "traceback": traceback.format_exception(exc),
                "current_inputs": {k: [_short(v)] for k, v in (spec.inputs.items() if spec else [])},
                "current_outputs": list(values), "timestamp": _now_ms(),
            }
            emit(Event("execution_error", result.error))
        result.values = values
        emit(Event("executing", {"node": None, "prompt_id": prompt_id}))
        return result


def plan(valid: ValidPrompt) -> list[str]:
    """The ancestors of the requested outputs, in a stable topological order."""
    keep = ancestors_of(valid.workflow, valid.outputs)
    return list(nx.lexicographical_topological_sort(graph_of(valid.workflow, keep), key=id_order))


def _short(value: Any) -> str:
    if isinstance(value, Link):
        return f"link to node {value.node} output {value.slot}"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()
