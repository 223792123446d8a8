"""Front-end extensions and translations: `/extensions`, `/extensions/sumi/…`, `/i18n`.

`/extensions` lists the JavaScript files a ComfyUI front end imports at start-up, as ComfyUI lists them: those
in the served front end's own `extensions/` folder (its front end skips its `extensions/core` shims itself) and
Sumi's extension for that front end, served from `web/extensions/sumi/`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from nodes.paths import UnsafePath, resolve_within

from .files import error

EXTENSIONS_DIR = Path(__file__).resolve().parent / "extensions"
SUMI_PACK = "sumi"


def extension_urls(front_end_root: Path | None) -> list[str]:
    urls = []
    if front_end_root is not None and (front_end_root / "extensions").is_dir():
        urls += sorted("/" + p.relative_to(front_end_root).as_posix()
                       for p in (front_end_root / "extensions").rglob("*.js") if p.is_file())
    urls += sorted(f"/extensions/{p.relative_to(EXTENSIONS_DIR).as_posix()}"
                   for p in (EXTENSIONS_DIR / SUMI_PACK).rglob("*.js") if p.is_file())
    return urls


class Extensions:
    def __init__(self, front_end_root: Path | None = None) -> None:
        self.front_end_root = Path(front_end_root).resolve() if front_end_root else None

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("GET", "/extensions", self.list), ("GET", "/i18n", self.i18n)]

    def static_routes(self) -> list[tuple[str, str, Any]]:
        """Served once, at their path only (ComfyUI serves extension files outside /api too)."""
        return [("GET", f"/extensions/{SUMI_PACK}/{{path:.+}}", self.serve)]

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response(extension_urls(self.front_end_root))

    async def i18n(self, request: web.Request) -> web.Response:
        # ComfyUI merges node packs' locales/ here; Sumi ships none, and the front end has its own strings.
        return web.json_response({})

    async def serve(self, request: web.Request) -> web.StreamResponse:
        try:
            target = resolve_within(EXTENSIONS_DIR / SUMI_PACK, request.match_info["path"])
        except UnsafePath as exc:
            return error(400, "invalid_path", str(exc))
        if not target.is_file() or target.suffix not in (".js", ".css"):
            return error(404, "not_found", "no such extension file")
        content_type = "text/javascript" if target.suffix == ".js" else "text/css"
        return web.FileResponse(target, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
