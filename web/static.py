"""The front end served at `/`: Sumi's own editor by default, or any folder of static files (ComfyUI's flag
`--front-end-root`). API routes are registered first and always win; the static route comes last, so a file in
the front end can never shadow `/prompt` or `/api/…`.

The editor's canvas library is served from `web/node_modules` (installed by `npm ci`, pinned by
`web/package-lock.json`): nothing is fetched from outside at run time.
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

EDITOR_ROOT = Path(__file__).resolve().parent / "editor"
LITEGRAPH_DIST = Path(__file__).resolve().parent / "node_modules" / "@comfyorg" / "litegraph" / "dist"
NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}
# An index page is not a file download: it may run scripts of its own origin and nothing else.
INDEX_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
             "connect-src 'self' ws: wss:; object-src 'none'; frame-ancestors 'self'")


def add_front_end(app: web.Application, root: Path | None) -> None:
    """Serve `root` (default: Sumi's editor) at `/`; call after every API route is registered."""
    root = (root or EDITOR_ROOT).resolve()
    editor = root == EDITOR_ROOT.resolve()
    index = root / "index.html"

    async def get_index(request: web.Request) -> web.StreamResponse:
        if editor and not (LITEGRAPH_DIST / "litegraph.es.js").is_file():
            return web.Response(status=503, content_type="text/plain", headers=NO_CACHE,
                                text="The editor's canvas library is not installed: run `make install` "
                                     "(or `npm ci` in web/) and reload.\n")
        if not index.is_file():
            return web.Response(status=404, content_type="text/plain", text=f"no index.html in {root}\n")
        headers = dict(NO_CACHE)
        if editor:
            headers["Content-Security-Policy"] = INDEX_CSP
        return web.FileResponse(index, headers=headers)

    app.router.add_get("/", get_index)
    if editor:
        app.router.add_static("/lib/litegraph/", LITEGRAPH_DIST, append_version=False)
    # follow_symlinks stays False: a link inside the front end cannot expose files outside it.
    app.router.add_static("/", root)
