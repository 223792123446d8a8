"""What a ComfyUI front end offers besides nodes: templates, subgraph blueprints, node replacements.

Sumi's shipped workflows (`workflows/*.json`) are the front end's core templates: `/templates/index.json`
lists them (ComfyUI's templates-package index shape, one category), `/templates/NAME.json` serves each as an
editor graph (an API-format file is converted with the node schemas and laid out by dependency), and
`/templates/NAME-1.png` is its thumbnail: `workflows/thumbnails/NAME.png` when Sumi ships one, else a card
drawn from the workflow's nodes. `/workflow_templates` lists templates of custom node packs (Sumi has none).
`/global_subgraphs` (blueprints from node packs) and `/node_replacements` are empty: Sumi ships neither.
"""
from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from executor.schema import Registry
from executor.ui_format import api_to_ui, is_ui_format
from nodes.paths import REPO_ROOT

from .files import error

WORKFLOWS = REPO_ROOT / "workflows"
NAME = re.compile(r"^[A-Za-z0-9_\-]+$")  # template names are plain file stems: nothing to traverse with
DESCRIPTIONS = {  # what each shipped workflow shows; others get one made from their nodes
    "txt2img": "Text to image: a prompt, a sampler and the default checkpoint.",
    "img2img": "Image to image: repaint the example input image from a prompt.",
    "hires_fix": "Two-pass text to image: sample small, upscale the latent, refine.",
}


class Catalog:
    def __init__(self, registry: Registry, folder: Path = WORKFLOWS) -> None:
        self.registry = registry
        self.folder = folder
        self._thumbnails: dict[tuple[str, float], bytes] = {}

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("GET", "/workflow_templates", self.workflow_templates),
                ("GET", "/global_subgraphs", self.global_subgraphs),
                ("GET", "/global_subgraphs/{id}", self.global_subgraph),
                ("GET", "/node_replacements", self.node_replacements)]

    def static_routes(self) -> list[tuple[str, str, Any]]:
        """Served at their path only: the front end reads them as files, not under /api."""
        return [("GET", "/templates/{file}", self.template_file)]

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json") if NAME.match(p.stem))

    def _load(self, name: str) -> dict[str, Any] | None:
        path = self.folder / f"{name}.json"
        if not NAME.match(name) or not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def index(self) -> list[dict[str, Any]]:
        templates = []
        for name in self.names():
            data = self._load(name) or {}
            templates.append({"name": name, "title": name.replace("_", " "), "mediaType": "image",
                              "mediaSubtype": "png", "description": DESCRIPTIONS.get(name) or self._summary(data),
                              "tags": ["Sumi"]})
        return [{"moduleName": "default", "title": "Sumi", "type": "image", "category": "Sumi",
                 "templates": templates}]

    def _summary(self, data: dict[str, Any]) -> str:
        kinds = [n.get("type") for n in data["nodes"]] if is_ui_format(data) else \
            [n.get("class_type") for n in data.values() if isinstance(n, dict)]
        return "Nodes: " + ", ".join(sorted({str(k) for k in kinds if k}))

    def graph(self, name: str) -> dict[str, Any] | None:
        data = self._load(name)
        if data is None:
            return None
        return data if is_ui_format(data) else api_to_ui(data, self.registry)

    def thumbnail(self, name: str) -> bytes | None:
        shipped = self.folder / "thumbnails" / f"{name}.png"
        if shipped.is_file():
            return shipped.read_bytes()
        source = self.folder / f"{name}.json"
        if not NAME.match(name) or not source.is_file():
            return None
        key = (name, source.stat().st_mtime)
        if key not in self._thumbnails:
            self._thumbnails[key] = _card(name, self._summary(self._load(name) or {}))
        return self._thumbnails[key]

    async def template_file(self, request: web.Request) -> web.StreamResponse:
        file = request.match_info["file"]
        if file == "index_logo.json":
            return web.json_response({})
        if re.fullmatch(r"index(\.[A-Za-z\-]+)?\.json", file):  # every locale gets the one English index
            return web.json_response(await asyncio.to_thread(self.index))
        if file.endswith("-1.png"):
            image = await asyncio.to_thread(self.thumbnail, file[: -len("-1.png")])
            if image is not None:
                return web.Response(body=image, content_type="image/png")
        elif file.endswith(".json"):
            graph = await asyncio.to_thread(self.graph, file[: -len(".json")])
            if graph is not None:
                return web.json_response(graph)
        return error(404, "not_found", f"no template file {file!r}")

    async def workflow_templates(self, request: web.Request) -> web.Response:
        return web.json_response({})  # ComfyUI: {custom node pack: [template names]}; Sumi loads no packs

    async def global_subgraphs(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def global_subgraph(self, request: web.Request) -> web.Response:
        return error(404, "not_found", f"no global subgraph {request.match_info['id']!r}")

    async def node_replacements(self, request: web.Request) -> web.Response:
        return web.json_response({})


def _card(title: str, text: str, size: tuple[int, int] = (384, 256)) -> bytes:
    """A plain thumbnail: the template's name and its nodes on a dark card."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (32, 34, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size[0], 36), fill=(70, 96, 140))
    draw.text((12, 10), title, fill=(255, 255, 255))
    words, line, y = text.split(" "), "", 52
    for word in words:  # wrap at roughly the card's width
        if len(line) + len(word) > 52:
            draw.text((12, y), line, fill=(200, 200, 210))
            line, y = "", y + 16
        line = f"{line} {word}".strip()
    draw.text((12, y), line, fill=(200, 200, 210))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
