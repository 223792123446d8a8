"""The node schema: what a node declares so that a UI, a validator and a cache need nothing else.

A node is one small class with declared, typed inputs and outputs, no instance state and one
`run`. Registration is explicit (`Registry.register`); `Registry.load_modules` imports node
modules and reports, rather than raises, the ones that fail.
"""
from __future__ import annotations

import enum
import importlib
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

# Types whose values are typed into widgets rather than arriving over links.
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
ANY = "*"


class Determinism(enum.StrEnum):
    PURE = "pure"  # same inputs, same outputs
    SEEDED = "seeded"  # pure given its seed input, which is part of its inputs
    VOLATILE = "volatile"  # depends on the world; `fingerprint` says when it changed


@dataclass(frozen=True)
class Input:
    """One declared input. `options` makes it a combo; a callable is re-read on every request."""

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | None = None
    options: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    tooltip: str = ""
    multiline: bool = False
    optional: bool = False
    # Frontend-only hints passed through to object_info unchanged (control_after_generate, image_upload, …).
    extra: dict[str, Any] = field(default_factory=dict)
    # For combos of files: turns a value that is not in the list into a hint (the folders searched, …).
    missing_hint: Callable[[Any], str] | None = None

    @property
    def is_combo(self) -> bool:
        return self.options is not None

    @property
    def is_widget(self) -> bool:
        return self.is_combo or self.type in WIDGET_TYPES

    def choices(self) -> list[Any]:
        opts = self.options() if callable(self.options) else self.options
        return list(opts or [])

    def object_info(self) -> list[Any]:
        """ComfyUI's `[TYPE, {options}]` pair (combos in the legacy `[[choices], {…}]` form)."""
        opts: dict[str, Any] = {}
        for key in ("default", "min", "max", "step", "round"):
            value = getattr(self, key)
            if value is not None:
                opts[key] = value
        if self.tooltip:
            opts["tooltip"] = self.tooltip
        if self.multiline:
            opts["multiline"] = True
        opts.update(self.extra)
        head: Any = self.choices() if self.is_combo else self.type
        return [head, opts] if opts else [head]


@dataclass(frozen=True)
class Output:
    type: str
    name: str | None = None
    tooltip: str = ""
    is_list: bool = False  # the value is a list of items of `type` (ComfyUI's OUTPUT_IS_LIST)


@dataclass
class Result:
    """What `run` returns when it has UI output (images written, …) besides its outputs."""

    outputs: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


class Node:
    """Base class of every node. Subclasses set the class attributes and implement `run`."""

    type: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    category: ClassVar[str] = "sd"
    description: ClassVar[str] = ""
    version: ClassVar[int] = 1
    inputs: ClassVar[tuple[Input, ...]] = ()
    outputs: ClassVar[tuple[Output, ...]] = ()
    output_node: ClassVar[bool] = False
    determinism: ClassVar[Determinism] = Determinism.PURE
    # Which cache budget holds this node's outputs: "outputs" (tensors) or "models" (weights).
    cache_pool: ClassVar[str] = "outputs"
    # Hidden values a node reads from its RunContext (shown in object_info): prompt, extra_pnginfo, unique_id.
    hidden: ClassVar[tuple[str, ...]] = ()
    python_module: ClassVar[str] = "nodes"

    @classmethod
    def fingerprint(cls, **constants: Any) -> str:
        """Volatile nodes: a string that changes whenever the result would (e.g. a file's hash)."""
        raise NotImplementedError

    @classmethod
    def check(cls, **constants: Any) -> dict[str, str]:
        """Extra validation of constant inputs; returns {input_name: problem} (empty when fine)."""
        return {}

    def run(self, ctx: Any, **inputs: Any) -> tuple[Any, ...] | Result:
        raise NotImplementedError

    @classmethod
    def input(cls, name: str) -> Input | None:
        return next((i for i in cls.inputs if i.name == name), None)

    @classmethod
    def object_info(cls) -> dict[str, Any]:
        required = {i.name: i.object_info() for i in cls.inputs if not i.optional}
        optional = {i.name: i.object_info() for i in cls.inputs if i.optional}
        hidden = {h: h.upper() if h != "unique_id" else "UNIQUE_ID" for h in cls.hidden}
        info: dict[str, Any] = {
            "input": {"required": required, **({"optional": optional} if optional else {}),
                      **({"hidden": hidden} if hidden else {})},
            "input_order": {"required": list(required), **({"optional": list(optional)} if optional else {}),
                            **({"hidden": list(hidden)} if hidden else {})},
            "output": [o.type for o in cls.outputs],
            "output_is_list": [o.is_list for o in cls.outputs],
            "output_name": [o.name or o.type for o in cls.outputs],
            "name": cls.type,
            "display_name": cls.display_name or cls.type,
            "description": cls.description,
            "python_module": cls.python_module,
            "category": cls.category,
            "output_node": cls.output_node,
        }
        if any(o.tooltip for o in cls.outputs):
            info["output_tooltips"] = [o.tooltip for o in cls.outputs]
        return info


class Registry:
    """The explicit set of known node classes, plus the modules that failed to load and why."""

    def __init__(self) -> None:
        self.nodes: dict[str, type[Node]] = {}
        self.failed: dict[str, str] = {}

    def register(self, *classes: type[Node]) -> None:
        for cls in classes:
            if not cls.type:
                raise ValueError(f"{cls.__qualname__} has no `type`")
            if cls.type in self.nodes and self.nodes[cls.type] is not cls:
                raise ValueError(f"node type {cls.type!r} registered twice")
            names = [i.name for i in cls.inputs]
            if len(set(names)) != len(names):
                raise ValueError(f"{cls.type}: duplicate input names")
            self.nodes[cls.type] = cls

    def load_modules(self, module_names: Sequence[str]) -> None:
        """Import each module and register its `NODES`; a module that fails is recorded, not fatal."""
        for name in module_names:
            try:
                module = importlib.import_module(name)
                self.register(*module.NODES)
            except Exception:
                self.failed[name] = traceback.format_exc(limit=3)

    def get(self, type_name: str) -> type[Node] | None:
        return self.nodes.get(type_name)

    def __contains__(self, type_name: str) -> bool:
        return type_name in self.nodes

    def object_info(self) -> dict[str, Any]:
        return {name: cls.object_info() for name, cls in sorted(self.nodes.items())}
