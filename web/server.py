"""ComfyUI's HTTP API over a Dispatcher: scripts written for ComfyUI work against Sumi unchanged.

Every route is served at `/path` and `/api/path`. Differences from ComfyUI, all on the side of losing
nothing and exposing nothing: the queue and history are durable (see `executor.queue`), credentials in
extra_data are never returned (GET /queue included), cross-origin requests are refused unless allowed, and a
non-loopback address requires a token.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import platform
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
from aiohttp import web

from executor.dispatch import Dispatcher
from executor.errors import ValidationFailed
from executor.queue import DuplicatePromptId
from executor.schema import Registry
from executor.ui_format import is_ui_format, ui_to_api
from executor.validate import graph_of
from executor.workflow import parse_api
from nodes import devices, paths

from . import editor_api, files, models, models_check, run_route
from .catalog import Catalog
from .extensions import Extensions
from .files import error
from .hub import PREVIEW_METHODS, Hub
from .internal import Internal
from .jobs import Jobs
from .security import allowed_hosts, is_loopback, origin_middleware, token_middleware
from .static import add_front_end
from .userdata import UserData

log = logging.getLogger("sumi.web")
MiB = 1024 * 1024
COMFY_API_VERSION = "0.3.64"  # the ComfyUI release whose API this server follows
API_KEY: web.AppKey[Api] = web.AppKey("sumi.api")


@dataclass
class ServerConfig:
    listen: str = "127.0.0.1"
    port: int = 8188
    token: str | None = None
    cors_origin: str | None = None  # --enable-cors-header: the one origin allowed besides the server's own
    max_upload_size: int = 100 * MiB
    start_worker: bool = True
    front_end_root: Path | None = None  # the static front end at `/` (None: Sumi's editor)
    user_directory: Path | None = None  # settings, workflows, blueprints (default: BASE/user)
    preview_method: str | None = None  # --preview-method when given; None: previews only for clients that ask


def create_app(dispatcher: Dispatcher, registry: Registry, config: ServerConfig | None = None) -> web.Application:
    """The aiohttp application; it starts the dispatcher's worker on startup and stops it on cleanup."""
    config = config or ServerConfig()
    if not is_loopback(config.listen) and not config.token:
        raise ValueError(f"listening on {config.listen} (not loopback) requires a token")
    # Without a token the server is loopback-only, and only loopback names may reach it (DNS rebinding).
    hosts = None if config.token else allowed_hosts(config.listen)
    middlewares = [origin_middleware(config.cors_origin, hosts)]
    if config.token:
        middlewares.append(token_middleware(config.token))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_upload_size)
    api = Api(dispatcher, registry, config)
    app[API_KEY] = api
    app[files.UPLOAD_LIMIT] = config.max_upload_size
    userdata = UserData(config.user_directory or paths.FOLDERS.user)
    extensions = Extensions(config.front_end_root)
    catalog = Catalog(registry)
    internal = Internal(api.hub.post)
    routes = api.routes() + files.routes() + editor_api.routes(registry) + userdata.routes() + \
        extensions.routes() + Jobs(dispatcher).routes() + catalog.routes() + models.routes() + internal.routes() + \
        run_route.routes(api)
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    for method, path, handler in extensions.static_routes() + catalog.static_routes():
        app.router.add_route(method, path, handler)
    add_front_end(app, config.front_end_root)  # last: a front-end file never shadows a route
    app.on_startup.extend([userdata.on_startup, api.on_startup, internal.on_startup])
    app.on_shutdown.append(lambda _: api.hub.close_sockets())
    app.on_cleanup.extend([internal.on_cleanup, api.on_cleanup])
    return app


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object; an empty body is `{}` (ComfyUI clients post bare /interrupt)."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        return error(400, "invalid_json", f"request body is not JSON: {exc}")
    if not isinstance(body, dict):
        return error(400, "invalid_json", "request body must be a JSON object")
    return body


class Api:
    def __init__(self, dispatcher: Dispatcher, registry: Registry, config: ServerConfig) -> None:
        self.dispatcher = dispatcher
        self.registry = registry
        self.config = config
        self.hub = Hub(dispatcher, self.features_data(), preview_method=config.preview_method)
        self._unsubscribe: Any = None
        if getattr(dispatcher, "preview_policy", False) is None:  # a local worker: previews only when asked
            dispatcher.preview_policy = lambda item: self.hub.preview_choice(item.extra_data)  # type: ignore

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", "/ws", self.hub.handle),
            ("GET", "/prompt", self.get_prompt), ("POST", "/prompt", self.post_prompt),
            ("GET", "/queue", self.get_queue), ("POST", "/queue", self.post_queue),
            ("POST", "/interrupt", self.interrupt), ("POST", "/free", self.free),
            ("GET", "/history", self.get_history), ("POST", "/history", self.post_history),
            ("GET", "/history/{prompt_id}", self.get_history_item),
            ("GET", "/object_info", self.object_info), ("GET", "/object_info/{node_class}", self.object_info_one),
            ("GET", "/system_stats", self.system_stats), ("GET", "/features", self.features),
            ("GET", "/embeddings", self.embeddings),
            ("GET", "/models", self.model_folders), ("GET", "/models/{folder}", self.models),
        ]

    async def on_startup(self, app: web.Application) -> None:
        await self.hub.start()
        self._unsubscribe = self.dispatcher.subscribe(self.hub.post)
        if self.config.start_worker:
            self.dispatcher.start()

    async def on_cleanup(self, app: web.Application) -> None:
        if self.config.start_worker:
            await asyncio.to_thread(self.dispatcher.stop)
        if self._unsubscribe:
            self._unsubscribe()
        await self.hub.stop()

    # -- prompts and queue -------------------------------------------------------------------------------

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        if "prompt" not in body:
            return web.json_response({"error": {"type": "no_prompt", "message": "No prompt provided",
                                                "details": "No prompt provided", "extra_info": {}},
                                      "node_errors": {}}, status=400)
        extra = body.get("extra_data") or {}
        targets = body.get("partial_execution_targets")
        if not isinstance(extra, dict) or (targets is not None and not isinstance(targets, list)):
            return error(400, "invalid_request", "extra_data must be an object, partial_execution_targets a list")
        if "client_id" in body:
            extra = {**extra, "client_id": body["client_id"]}
        method = extra.get("preview_method")
        if method is not None and method not in (*PREVIEW_METHODS, "default"):
            return error(400, "invalid_request", f"extra_data.preview_method must be one of "
                                                 f"{', '.join((*PREVIEW_METHODS, 'default'))}")
        number = None
        if body.get("number") is not None:
            try:
                number = float(body["number"])
            except (TypeError, ValueError, OverflowError):
                return error(400, "invalid_request", "number must be a number")
            if not math.isfinite(number):
                return error(400, "invalid_request", "number must be a finite number")
        prompt_id = body.get("prompt_id")
        if prompt_id is not None and not valid_prompt_id(prompt_id):
            return error(400, "invalid_prompt_id", "prompt_id must be a string of 1 to 128 visible characters "
                                                   "(clients send a UUID)")
        prompt = body["prompt"]
        if is_ui_format(prompt):
            # The editor's graph format is converted here, with the node schemas, and kept as the PNG's workflow.
            prompt, problems = ui_to_api(prompt, self.registry)
            if problems:
                failed = ValidationFailed(problems)
                return web.json_response(validation_response(prompt, failed, self.registry), status=400)
            pnginfo = {"workflow": body["prompt"], **(extra.get("extra_pnginfo") or {})}
            extra = {**extra, "extra_pnginfo": pnginfo}
        missing = await asyncio.to_thread(models_check.check, prompt, models_check.manifest_of(body["prompt"], extra))
        if missing:
            return web.json_response(validation_response(prompt, ValidationFailed(missing), self.registry), status=400)
        try:
            submitted = await asyncio.to_thread(
                self.dispatcher.submit, prompt, prompt_id=prompt_id,
                number=number, front=bool(body.get("front")), extra_data=extra,
                targets=[str(t) for t in targets] if targets is not None else None)
        except ValidationFailed as failed:
            return web.json_response(validation_response(prompt, failed, self.registry), status=400)
        except DuplicatePromptId:
            return error(400, "duplicate_prompt_id", f"prompt_id {prompt_id!r} is already queued or in history: "
                                                     "send a new UUID for each prompt")
        number_out = int(submitted.number) if float(submitted.number).is_integer() else submitted.number
        return web.json_response({"prompt_id": submitted.prompt_id, "number": number_out, "node_errors": {}})

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.hub.status_data()["status"])

    async def get_queue(self, request: web.Request) -> web.Response:
        status = await asyncio.to_thread(self.dispatcher.status)
        return web.json_response({"queue_running": [i.as_comfy() for i in status.running],
                                  "queue_pending": [i.as_comfy() for i in status.pending]})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        if body.get("clear"):
            await asyncio.to_thread(self.dispatcher.cancel, None)
        if isinstance(body.get("delete"), list):
            await asyncio.to_thread(self.dispatcher.cancel, [str(p) for p in body["delete"]])
        return web.Response()

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        prompt_id = body.get("prompt_id")
        self.dispatcher.interrupt(str(prompt_id) if prompt_id else None)
        return web.Response()

    async def free(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        self.dispatcher.free(bool(body.get("unload_models")), bool(body.get("free_memory")))
        return web.Response()

    # -- history -----------------------------------------------------------------------------------------

    async def get_history(self, request: web.Request) -> web.Response:
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query.get("offset", -1))
        except ValueError:
            return error(400, "invalid_request", "max_items and offset must be integers")
        store = self.dispatcher.store
        return web.json_response(await asyncio.to_thread(store.history, max_items, offset))

    async def get_history_item(self, request: web.Request) -> web.Response:
        store = self.dispatcher.store
        return web.json_response(await asyncio.to_thread(store.history_item, request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        store = self.dispatcher.store
        if body.get("clear"):
            await asyncio.to_thread(store.clear_history)
        if isinstance(body.get("delete"), list):
            await asyncio.to_thread(store.delete_history, [str(p) for p in body["delete"]])
        return web.Response()

    # -- information -------------------------------------------------------------------------------------

    async def object_info(self, request: web.Request) -> web.Response:
        # File combos are re-listed on every request, so new checkpoints and uploads show up at once.
        return web.json_response(await asyncio.to_thread(self.registry.object_info))

    async def object_info_one(self, request: web.Request) -> web.Response:
        cls = self.registry.get(request.match_info["node_class"])
        return web.json_response({cls.type: await asyncio.to_thread(cls.object_info)} if cls else {})

    def features_data(self) -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": self.config.max_upload_size}

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(self.features_data())

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(system_stats))

    async def embeddings(self, request: web.Request) -> web.Response:
        from nodes.models import TINY_EMBEDDINGS  # the embedded tiny ones, built on first use

        names = await asyncio.to_thread(paths.list_models, "embeddings")
        found = [os.path.splitext(n)[0] for n in names]
        return web.json_response([*found, *(n for n in TINY_EMBEDDINGS if n not in found)])

    async def model_folders(self, request: web.Request) -> web.Response:
        return web.json_response(list(paths.FOLDERS.models))

    async def models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in paths.FOLDERS.models and folder not in paths.ALIASES:
            return error(404, "unknown_folder", f"no model folder {folder!r}")
        return web.json_response(await asyncio.to_thread(paths.list_models, folder))


def valid_prompt_id(value: Any) -> bool:
    """A client's prompt_id: a non-empty string of visible characters (a UUID in practice), at most 128 long."""
    return isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable() and not any(
        c.isspace() for c in value)


def bindable_hosts(hosts: list[str]) -> list[str]:
    """The --listen addresses to bind: the IPv6 wildcard `::` is dropped, with a warning, where this machine has
    no IPv6, so bare `--listen` (`0.0.0.0,::`) falls back to 0.0.0.0. Other addresses are kept as given, so
    one that cannot be bound fails loudly, as does `::` when it is the only one."""
    keep = []
    for host in hosts:
        if host.strip("[]") == "::" and not _can_bind_v6("::"):
            log.warning("IPv6 is not available here: not listening on ::")
            continue
        keep.append(host)
    return keep or hosts


def _can_bind_v6(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
        return True
    except OSError:
        return False


def validation_response(prompt: Any, failed: ValidationFailed, registry: Registry) -> dict[str, Any]:
    """ComfyUI's 400 body: one top-level error and every node's errors, each with the outputs it blocks."""
    node_errors = failed.by_node()
    wf, _ = parse_api(prompt)
    outputs = [nid for nid, spec in wf.nodes.items()
               if (cls := registry.get(spec.class_type)) is not None and cls.output_node]
    # One walk per output, not one per (error, output) pair: a large broken graph stays fast to report on.
    graph = graph_of(wf)
    feeds = {out: nx.ancestors(graph, out) | {out} for out in outputs}
    for nid, entry in node_errors.items():
        entry["dependent_outputs"] = [out for out in outputs if nid in feeds[out]]
    general = [e for e in failed.errors if e.node_id is None or e.type == "invalid_prompt"]
    if general:
        top = general[0].to_comfy()
    else:
        top = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
               "details": "\n".join(f"{e.message}: {e.details()}" for e in failed.errors), "extra_info": {}}
    return {"error": top, "node_errors": node_errors}


def system_stats() -> dict[str, Any]:
    import psutil
    import torch

    memory = psutil.virtual_memory()
    device = devices.POLICY.device
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        name = f"{device} {torch.cuda.get_device_name(device)}"
    else:
        free, total, name = memory.available, memory.total, str(device)
    return {
        "system": {"os": os.name, "ram_total": memory.total, "ram_free": memory.available,
                   "comfyui_version": COMFY_API_VERSION, "sumi_version": _sumi_version(),
                   "python_version": sys.version, "pytorch_version": torch.__version__, "embedded_python": False,
                   "argv": sys.argv, "platform": platform.platform()},
        "devices": [{"name": name, "type": device.type, "index": device.index or 0, "vram_total": total,
                     "vram_free": free, "torch_vram_total": total, "torch_vram_free": free}],
    }


def _sumi_version() -> str:
    import tomllib

    try:
        with open(paths.REPO_ROOT / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"
