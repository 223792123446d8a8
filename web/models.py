"""The model browser's routes, in ComfyUI's shapes: `/experiment/models…` and `/view_metadata/{folder}`.

    GET /experiment/models → [{name: folder key, folders: [paths]}]
    GET /experiment/models/{folder} → [{name: relative file, pathIndex: i, modified, size}]
    GET /experiment/models/preview/{folder}/{path_index}/{filename} → the model's preview image as WebP
        (a picture beside it: NAME.webp/.png/.jpg/.jpeg or NAME.preview.*), 404 when there is none
    GET /view_metadata/{folder}?filename=F → a .safetensors file's `__metadata__`, 404 when it has none

Names go through `resolve_within` (no `..`, no absolute paths; symlinks inside model folders are trusted,
as users link models kept elsewhere on purpose).
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import struct
from pathlib import Path
from typing import Any

from aiohttp import web

from nodes import paths
from nodes.paths import UnsafePath, resolve_within

from .files import error
from .userdata import Refused, check_relative

HIDDEN_FOLDERS = ("configs",)  # ComfyUI leaves these out of the model browser
PREVIEW_SUFFIXES = (".webp", ".png", ".jpg", ".jpeg", ".preview.webp", ".preview.png", ".preview.jpg",
                    ".preview.jpeg")
MAX_HEADER = 16 * 1024 * 1024  # a safetensors JSON header larger than this is not a model's


def _folder_key(folder: str) -> str | None:
    key = paths.ALIASES.get(folder, folder)
    return key if key in paths.FOLDERS.models else None


def model_folders() -> list[dict[str, Any]]:
    return [{"name": key, "folders": [str(p) for p in dirs]}
            for key, dirs in paths.FOLDERS.models.items() if key not in HIDDEN_FOLDERS]


def model_list(key: str) -> list[dict[str, Any]]:
    out = []
    dirs = paths.model_dirs(key)
    for index, rel in paths.model_files(key):
        try:
            stat = os.stat(dirs[index] / rel)
        except OSError:
            continue
        out.append({"name": rel, "pathIndex": index, "modified": stat.st_mtime, "size": stat.st_size})
    return out


def preview_of(model: Path) -> bytes | None:
    from PIL import Image

    stem = model.with_suffix("")
    for suffix in PREVIEW_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            buffer = io.BytesIO()
            with Image.open(candidate) as img:
                img.convert("RGBA" if "A" in img.getbands() else "RGB").save(buffer, format="WEBP", quality=90)
            return buffer.getvalue()
    return None


def safetensors_metadata(path: Path) -> dict[str, Any] | None:
    """The `__metadata__` of a .safetensors header (8-byte little-endian length, then JSON), or None."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER:
            return None
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


async def folders(request: web.Request) -> web.Response:
    return web.json_response(model_folders())


async def files(request: web.Request) -> web.Response:
    key = _folder_key(request.match_info["folder"])
    if key is None:
        return error(404, "unknown_folder", f"no model folder {request.match_info['folder']!r}")
    return web.json_response(await asyncio.to_thread(model_list, key))


async def preview(request: web.Request) -> web.Response:
    key = _folder_key(request.match_info["folder"])
    try:
        index = int(request.match_info["path_index"])
    except ValueError:
        return error(400, "invalid_request", "path_index must be an integer")
    dirs = paths.model_dirs(key) if key else []
    if key is None or not 0 <= index < len(dirs):
        return error(404, "unknown_folder", "no such model folder")
    try:
        model = resolve_within(dirs[index], request.match_info["filename"], trust_symlinks=True)
    except UnsafePath as exc:
        return error(400, "invalid_path", str(exc))
    image = await asyncio.to_thread(preview_of, model)
    if image is None:
        return error(404, "not_found", "this model has no preview image")
    return web.Response(body=image, content_type="image/webp")


async def view_metadata(request: web.Request) -> web.Response:
    key = _folder_key(request.match_info["folder"])
    filename = request.query.get("filename", "")
    if key is None:
        return error(404, "unknown_folder", f"no model folder {request.match_info['folder']!r}")
    if not filename.endswith(".safetensors"):
        return error(404, "not_found", "only .safetensors files carry metadata")
    try:
        check_relative(filename)
    except Refused as refused:
        return refused.response
    model = paths.find_model(key, filename)
    if model is None:
        return error(404, "not_found", f"{filename} not found in {key}")
    metadata = await asyncio.to_thread(safetensors_metadata, model)
    if metadata is None:
        return error(404, "not_found", f"{filename} has no metadata")
    return web.json_response(metadata)


def routes() -> list[tuple[str, str, Any]]:
    return [("GET", "/experiment/models", folders), ("GET", "/experiment/models/{folder}", files),
            ("GET", "/experiment/models/preview/{folder}/{path_index}/{filename:.+}", preview),
            ("GET", "/view_metadata/{folder}", view_metadata)]
