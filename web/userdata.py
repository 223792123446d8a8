"""The user's own files in ComfyUI's shapes: `/users`, `/settings`, `/userdata`, `/v2/userdata`.

Everything lives under `USER_DIRECTORY/default/` (ComfyUI's single-user layout), so workflows, settings and
subgraph blueprints saved here are the same files any ComfyUI-compatible front end reads. Every name a request
carries goes through `safe_user_path`: NUL, absolute paths, `..`, over-long names and symlinks that lead out of
the user's folder are refused, as on `/view`; nothing outside that folder is ever read, listed or written.
Bodies have size limits; settings values must be JSON.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from nodes.paths import UnsafePath, resolve_within

from .files import error

log = logging.getLogger("sumi.web")
MiB = 1024 * 1024
USER = "default"  # ComfyUI's single-user id
SETTINGS_FILE = "comfy.settings.json"
STANDARD_FOLDERS = ("workflows", "subgraphs")  # saved workflows and subgraph blueprints
SETTINGS_LIMIT = 4 * MiB  # a settings body; the whole settings file is kept under this too
USERDATA_LIMIT = 64 * MiB  # one user-data file (workflows with embedded data can be large)
MAX_PATH = 1024  # characters in a relative user-data path
MAX_NAME = 255  # bytes in one path component (the common file-system limit)
# What GET /userdata/{file} may show inline; anything else is a download, so no stored file runs script here.
SERVE_TYPES = {".json": "application/json", ".css": "text/css", ".txt": "text/plain"}
SERVE_HEADERS = {"Content-Security-Policy": "sandbox; default-src 'none'", "X-Content-Type-Options": "nosniff"}
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def check_relative(relative: str) -> None:
    """Raise Refused (400) for a name that may not even be tried: NUL, absolute, `..`, over-long."""
    if not relative:
        raise Refused(error(400, "invalid_path", "no file name given"))
    if "\x00" in relative or relative.startswith(("/", "\\")) or os.path.isabs(relative) or \
            (len(relative) > 1 and relative[1] == ":"):
        raise Refused(error(400, "invalid_path", "refused path: absolute paths and NUL are not allowed"))
    parts = Path(relative.replace("\\", "/")).parts
    if ".." in parts:
        raise Refused(error(400, "invalid_path", "refused path: '..' is not allowed"))
    if len(relative) > MAX_PATH or any(len(p.encode("utf-8", "surrogatepass")) > MAX_NAME for p in parts):
        raise Refused(error(400, "invalid_path", f"refused path: longer than {MAX_PATH} characters or a name "
                                                 f"longer than {MAX_NAME} bytes"))


def safe_user_path(root: Path, relative: str) -> Path:
    """`root/relative` resolved, or Refused: 400 for a bad name, 403 for one that leaves root by a symlink."""
    check_relative(relative)
    try:
        return resolve_within(root, relative)
    except UnsafePath as exc:
        raise Refused(error(403, "forbidden_path", str(exc))) from exc


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or Refused (413) once it passes `limit` bytes (counted, whatever Content-Length says)."""
    if (request.content_length or 0) > limit:
        raise Refused(error(413, "too_large", f"request bodies here are limited to {limit} bytes"))
    chunks, total = [], 0
    while chunk := await request.content.read(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise Refused(error(413, "too_large", f"request bodies here are limited to {limit} bytes"))
        chunks.append(chunk)
    return b"".join(chunks)


def write_atomic(target: Path, data: bytes) -> None:
    """Write through a temporary file and rename it over the target: readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".sumi-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_info(path: Path, root: Path) -> dict[str, Any]:
    """ComfyUI's file info: path relative to the listed folder with '/', size in bytes, mtime in seconds."""
    stat = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": stat.st_size, "modified": stat.st_mtime,
            "created": stat.st_ctime}


def _flag(request: web.Request, name: str, default: bool) -> bool:
    """A boolean query flag; only an explicit true/1 or false/0 moves it off its default (as ComfyUI's)."""
    value = (request.query.get(name) or "").lower()
    return True if value in ("true", "1") else False if value in ("false", "0") else default


class UserData:
    """The routes; `root` is the user directory (`BASE/user`), the files are in `root/default`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._settings_lock = threading.Lock()

    @property
    def user_dir(self) -> Path:
        return self.root / USER

    def _user_dir(self, create: bool = True) -> Path:
        folder = self.user_dir
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder.resolve()

    async def on_startup(self, app: web.Application) -> None:
        """Create the folders ComfyUI's front end lists at start, so a fresh install answers [] not 404."""
        for name in STANDARD_FOLDERS:
            (self._user_dir() / name).mkdir(exist_ok=True)

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", "/users", self.get_users), ("POST", "/users", self.post_users),
            ("GET", "/settings", self.get_settings), ("POST", "/settings", self.post_settings),
            ("GET", "/settings/{id}", self.get_setting), ("POST", "/settings/{id}", self.post_setting),
            ("GET", "/userdata", self.list_userdata), ("GET", "/v2/userdata", self.list_userdata_v2),
            ("GET", "/userdata/{file}", self.get_file), ("POST", "/userdata/{file}", self.post_file),
            ("DELETE", "/userdata/{file}", self.delete_file),
            ("POST", "/userdata/{file}/move/{dest}", self.move_file),
        ]

    # -- users ---------------------------------------------------------------------------------------------

    async def get_users(self, request: web.Request) -> web.Response:
        # Single-user, as ComfyUI without --multi-user: "migrated" says the user's folder already exists.
        return web.json_response({"storage": "server", "migrated": self.user_dir.is_dir()})

    async def post_users(self, request: web.Request) -> web.Response:
        return error(400, "single_user", "Sumi serves one user (ComfyUI's default user); users cannot be added")

    # -- settings ------------------------------------------------------------------------------------------

    def _settings_path(self) -> Path:
        return self._user_dir() / SETTINGS_FILE

    def read_settings(self) -> dict[str, Any]:
        path = self._settings_path()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s): starting from empty settings", path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _update_settings(self, changes: dict[str, Any]) -> None:
        with self._settings_lock:  # read-modify-write of one file: one writer at a time
            settings = {**self.read_settings(), **changes}
            data = json.dumps(settings, indent=4).encode()
            if len(data) > SETTINGS_LIMIT:
                raise Refused(error(413, "too_large", f"settings are limited to {SETTINGS_LIMIT} bytes"))
            write_atomic(self._settings_path(), data)

    async def _json(self, request: web.Request) -> Any:
        body = await read_body(request, SETTINGS_LIMIT)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise Refused(error(400, "invalid_json", f"a setting must be JSON: {exc}")) from exc

    async def get_settings(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self.read_settings))

    async def get_setting(self, request: web.Request) -> web.Response:
        settings = await asyncio.to_thread(self.read_settings)
        return web.json_response(settings.get(request.match_info["id"]))

    async def post_settings(self, request: web.Request) -> web.Response:
        try:
            changes = await self._json(request)
            if not isinstance(changes, dict):
                raise Refused(error(400, "invalid_json", "POST /settings takes a JSON object of settings"))
            await asyncio.to_thread(self._update_settings, changes)
        except Refused as refused:
            return refused.response
        return web.Response()

    async def post_setting(self, request: web.Request) -> web.Response:
        try:
            value = await self._json(request)
            await asyncio.to_thread(self._update_settings, {request.match_info["id"]: value})
        except Refused as refused:
            return refused.response
        return web.Response()

    # -- listing -------------------------------------------------------------------------------------------

    async def list_userdata(self, request: web.Request) -> web.Response:
        """`?dir=D` required; `recurse`, `full_info` (objects), `split` ([path, *parts]) as ComfyUI."""
        directory = request.query.get("dir", "")
        if not directory:
            return error(400, "invalid_path", "query parameter `dir` is required")
        try:
            folder = safe_user_path(self._user_dir(), directory.rstrip("/") or ".")
        except Refused as refused:
            return refused.response
        if not folder.is_dir():
            return error(404, "not_found", f"directory {directory!r} not found")
        recurse, full_info = _flag(request, "recurse", False), _flag(request, "full_info", False)
        split = _flag(request, "split", False)
        files = await asyncio.to_thread(self._walk, folder, recurse)
        if full_info:
            return web.json_response([file_info(f, folder) for f in files])
        names = [f.relative_to(folder).as_posix() for f in files]
        return web.json_response([[n, *n.split("/")] for n in names] if split else names)

    def _walk(self, folder: Path, recurse: bool) -> list[Path]:
        """Files under `folder` (hidden names skipped, as ComfyUI's glob), sorted; never through a symlink out."""
        root = self._user_dir()
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recurse else []
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                real = path.resolve()
                if (real == root or root in real.parents) and real.is_file():
                    found.append(path)
        return sorted(found, key=lambda p: p.relative_to(folder).as_posix())

    async def list_userdata_v2(self, request: web.Request) -> web.Response:
        """One folder's entries `{name, path, type, size?, modified}`, folders first, paths from the user root."""
        relative = request.query.get("path", "").rstrip("/")
        root = self._user_dir()
        try:
            folder = safe_user_path(root, relative) if relative else root
        except Refused as refused:
            return refused.response
        if not folder.is_dir():
            return error(404, "not_found", f"directory {relative!r} not found")

        def entries() -> list[dict[str, Any]]:
            out = []
            for entry in sorted(folder.iterdir(), key=lambda p: p.name):
                if entry.name.startswith("."):
                    continue
                real = entry.resolve()
                if real != root and root not in real.parents:
                    continue  # a symlink out of the user's folder is not shown
                rel = f"{relative}/{entry.name}" if relative else entry.name
                stat = real.stat()
                if real.is_dir():
                    out.append({"name": entry.name, "path": rel, "type": "directory", "modified": stat.st_mtime})
                elif real.is_file():
                    out.append({"name": entry.name, "path": rel, "type": "file", "size": stat.st_size,
                                "modified": stat.st_mtime})
            return sorted(out, key=lambda e: (e["type"] != "directory", e["name"]))

        return web.json_response(await asyncio.to_thread(entries))

    # -- one file ------------------------------------------------------------------------------------------

    def _target(self, request: web.Request, key: str = "file") -> Path:
        return safe_user_path(self._user_dir(), request.match_info[key])

    def _answer(self, target: Path, full_info: bool) -> web.Response:
        root = self._user_dir()
        return web.json_response(file_info(target, root) if full_info else target.relative_to(root).as_posix())

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        try:
            target = self._target(request)
        except Refused as refused:
            return refused.response
        if not target.is_file():
            return error(404, "not_found", f"{request.match_info['file']} not found")
        content_type = SERVE_TYPES.get(target.suffix.lower())
        disposition = f'filename="{target.name}"' if content_type else f'attachment; filename="{target.name}"'
        return web.FileResponse(target, headers={**SERVE_HEADERS, "Content-Disposition": disposition,
                                                 "Content-Type": content_type or "application/octet-stream",
                                                 "Cache-Control": "no-cache"})

    async def post_file(self, request: web.Request) -> web.Response:
        """Store the raw body; `overwrite=false` refuses an existing file (409); answers its path or info."""
        try:
            target = self._target(request)
            body = await read_body(request, USERDATA_LIMIT)
        except Refused as refused:
            return refused.response
        if target == self._user_dir() or target.is_dir():
            return error(400, "invalid_path", "a folder cannot be overwritten by a file")
        if target.exists() and not _flag(request, "overwrite", True):
            return error(409, "file_exists", f"{request.match_info['file']} already exists")
        await asyncio.to_thread(write_atomic, target, body)
        return self._answer(target, _flag(request, "full_info", False))

    async def delete_file(self, request: web.Request) -> web.Response:
        try:
            target = self._target(request)
        except Refused as refused:
            return refused.response
        if not target.is_file():
            return error(404, "not_found", f"{request.match_info['file']} not found")
        target.unlink()
        return web.Response(status=204)

    async def move_file(self, request: web.Request) -> web.Response:
        try:
            source, dest = self._target(request, "file"), self._target(request, "dest")
        except Refused as refused:
            return refused.response
        if not source.is_file():
            return error(404, "not_found", f"{request.match_info['file']} not found")
        if dest == self._user_dir() or dest.is_dir():
            return error(400, "invalid_path", "the destination is a folder")
        if dest.exists() and not _flag(request, "overwrite", True):
            return error(409, "file_exists", f"{request.match_info['dest']} already exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)
        return self._answer(dest, _flag(request, "full_info", False))
