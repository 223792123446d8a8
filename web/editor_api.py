"""Routes only Sumi's editor uses (ComfyUI has no equivalent): validating a graph while it is edited, and the
default workflow a fresh canvas opens with. Everything else the editor reads is ComfyUI's own API.

`POST /sumi/validate` answers with exactly what `POST /prompt` answers for the same graph when it is invalid
(`{error, node_errors}`, the same validator and the same records), and `{"error": null, "node_errors": {}}`
when it would be queued; nothing is queued.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from executor.errors import NodeError, ValidationFailed
from executor.schema import Registry
from executor.ui_format import is_ui_format, ui_to_api
from executor.validate import validate
from executor.workflow import parse_api
from nodes import paths

from .files import error

DEFAULT_WORKFLOW = "txt2img.json"


def check(prompt: Any, registry: Registry) -> tuple[dict[str, Any], list[NodeError]]:
    """The API prompt and every error `/prompt` would report for `prompt` (either format)."""
    if is_ui_format(prompt):
        prompt, errors = ui_to_api(prompt, registry)
        if errors:
            return prompt, errors
    wf, errors = parse_api(prompt)
    _, more = validate(wf, registry)
    return prompt, errors + more


def routes(registry: Registry) -> list[tuple[str, str, Any]]:
    from .server import validation_response

    async def post_validate(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            return error(400, "invalid_json", f"request body is not JSON: {exc}")
        if not isinstance(body, dict) or "prompt" not in body:
            return error(400, "invalid_request", "expected a JSON object with a `prompt`")
        prompt, errors = await asyncio.to_thread(check, body["prompt"], registry)
        if not errors:
            return web.json_response({"error": None, "node_errors": {}})
        return web.json_response(validation_response(prompt, ValidationFailed(errors), registry))

    async def default_workflow(request: web.Request) -> web.Response:
        path = paths.REPO_ROOT / "workflows" / DEFAULT_WORKFLOW
        data = await asyncio.to_thread(lambda: json.loads(path.read_text()))
        return web.json_response({"name": DEFAULT_WORKFLOW, "prompt": data})

    return [("POST", "/sumi/validate", post_validate), ("GET", "/sumi/default_workflow", default_workflow)]
