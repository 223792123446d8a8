"""Structured errors: data first, rendered alike by the CLI, the API and the editor."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class NodeError:
    """One problem with a workflow. `type` uses ComfyUI's error type strings where one exists.

    `path` is the node's place in the editor's graph: the subgraph instance ids from the top level down to the
    node itself (`"11:10:3"` → ["11", "10", "3"]), filled from the id."""

    type: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    input_name: str | None = None
    expected: Any = None
    received: Any = None
    hint: str = ""
    path: list[str] | None = None

    def __post_init__(self) -> None:
        if self.path is None and self.node_id:
            self.path = str(self.node_id).split(":")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def details(self) -> str:
        parts = []
        if self.input_name:
            parts.append(self.input_name)
        if self.expected is not None or self.received is not None:
            parts.append(f"expected {self.expected!r}, received {self.received!r}")
        if self.hint:
            parts.append(self.hint)
        return "; ".join(parts)

    def to_comfy(self) -> dict[str, Any]:
        """ComfyUI's `{type, message, details, extra_info}` record."""
        extra = {"input_name": self.input_name, "expected": self.expected, "received_value": self.received}
        if self.hint:
            extra["hint"] = self.hint
        return {"type": self.type, "message": self.message, "details": self.details(),
                "extra_info": {k: v for k, v in extra.items() if v is not None}}

    def render(self) -> str:
        where = f"node {self.node_id} ({self.class_type})" if self.node_id else "workflow"
        if self.path and len(self.path) > 1:
            where += " inside subgraph " + " › ".join(self.path[:-1])
        text = f"{where}: {self.message}"
        if self.input_name:
            text += f" [input {self.input_name!r}]"
        if self.expected is not None or self.received is not None:
            text += f"\n    expected: {self.expected!r}\n    received: {self.received!r}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class ValidationFailed(Exception):
    """A workflow that cannot run; carries every error found, not just the first."""

    def __init__(self, errors: list[NodeError]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors

    def by_node(self) -> dict[str, dict[str, Any]]:
        """ComfyUI's `node_errors` shape: {node_id: {errors, dependent_outputs, class_type}}."""
        out: dict[str, dict[str, Any]] = {}
        for err in self.errors:
            if err.node_id is None:
                continue
            entry = out.setdefault(err.node_id, {"errors": [], "dependent_outputs": [], "class_type": err.class_type})
            entry["errors"].append(err.to_comfy())
        return out
