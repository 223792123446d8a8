"""`POST /run/{name}`: run a component as a function. The body is a JSON object of its typed inputs (an IMAGE
input names a file in the input folder, e.g. one sent to /upload/image first); the answer waits for the run
and gives each output's files with their /view URLs, or with `Accept: image/png` the first image's bytes.
Bad inputs are ComfyUI's 400 validation body, naming the component input."""
from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from executor.components import ComponentError
from executor.errors import ValidationFailed
from nodes import components, paths

from .files import error

RUN_TIMEOUT_S = 3600


def routes(api: Any) -> list[tuple[str, str, Any]]:
    async def run(request: web.Request) -> web.StreamResponse:
        from .server import _json_body, validation_response

        name = request.match_info["name"]
        cls = api.registry.get(f"component/{name}")
        if cls is None or not hasattr(cls, "spec"):
            return error(404, "unknown_component", f"no component {name!r}")
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            prompt = components.function_prompt(cls, body)
        except ComponentError as exc:
            return error(400, "invalid_input", str(exc))
        prompt_id = str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def listener(event: Any, client_id: str | None) -> None:
            if event.type == "executing" and event.data.get("node") is None \
                    and event.data.get("prompt_id") == prompt_id:
                loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

        unsubscribe = api.dispatcher.subscribe(listener)
        try:
            try:
                await asyncio.to_thread(api.dispatcher.submit, prompt, prompt_id=prompt_id)
            except ValidationFailed as failed:
                return web.json_response(validation_response(prompt, failed, api.registry), status=400)
            await asyncio.wait_for(finished, RUN_TIMEOUT_S)
        finally:
            unsubscribe()
        entry = (await asyncio.to_thread(api.dispatcher.store.history_item, prompt_id)).get(prompt_id) or {}
        status = (entry.get("status") or {}).get("status_str")
        if status != "success":
            messages = (entry.get("status") or {}).get("messages") or []
            return web.json_response({"prompt_id": prompt_id, "status": status, "messages": messages}, status=500)
        outputs: dict[str, list[dict[str, Any]]] = {}
        for out in cls.outputs:
            ui = (entry.get("outputs") or {}).get(f"save_{out.name}") or {}
            files = ui.get("images") or ui.get("latents") or []
            outputs[out.name] = [{**f, "url": "/view?" + urlencode(f)} for f in files]
        if "image/png" in request.headers.get("Accept", ""):
            first = next((f for files in outputs.values() for f in files if f["filename"].endswith(".png")), None)
            if first is None:
                return error(406, "no_image", f"component {name!r} produced no PNG")
            root = paths.FOLDERS.output if first["type"] == "output" else paths.FOLDERS.temp
            return web.FileResponse(root / first["subfolder"] / first["filename"],
                                    headers={"Content-Type": "image/png"})
        return web.json_response({"prompt_id": prompt_id, "outputs": outputs})

    return [("POST", "/run/{name}", run)]
