"""`POST /prompt` checks the workflow's model manifest before queueing: renamed model files are found by hash
(and the prompt pointed at them), missing ones become `missing_model` errors on the nodes that use them."""
from __future__ import annotations

from typing import Any

from executor.errors import NodeError
from nodes import manifest


def manifest_of(body_prompt: Any, extra_data: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The `models` list of the editor graph sent with the prompt (or sent as the prompt)."""
    graph = (extra_data.get("extra_pnginfo") or {}).get("workflow")
    for source in (graph, body_prompt):
        if isinstance(source, dict) and isinstance(source.get("models"), list):
            return source["models"]
    return None


def check(prompt: dict[str, Any], models: list[dict[str, Any]] | None) -> list[NodeError]:
    """Resolve by hash (substituting renamed files in `prompt`); one error per model still missing."""
    if not models:
        return []
    found = manifest.resolve(prompt, models)
    return [NodeError("missing_model", f"Model file {m['directory']}/{m['name']} is missing", m["node_id"],
                      m["class_type"], m["input_name"],
                      expected={"name": m["name"], "directory": m["directory"], "sha256": m["expected_hash"],
                                "url": m["url"]},
                      hint="searched: " + (", ".join(m["searched"]) or "(no folders)")
                      + (f"; download it from {m['url']}" if m.get("url") else ""))
            for m in found.missing]
