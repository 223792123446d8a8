"""Files over HTTP: /view, /upload/image and /upload/mask, every path through `resolve_within`.

Nothing outside the output, input and temp folders is ever read or written: `..`, absolute paths and NUL
are refused with 400, a path that leaves its folder through a symlink with 403.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import mimetypes
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image, ImageOps, PngImagePlugin

from nodes import paths
from nodes.paths import UnsafePath, resolve_within

FOLDER_TYPES = ("output", "input", "temp")
# aiohttp's client_max_size does not cover streamed multipart bodies, so uploads count their own bytes.
UPLOAD_LIMIT = web.AppKey("sumi.upload_limit", int)


class TooLarge(Exception):
    pass
# Served as downloads, never rendered: a saved .html or .js must not run in the server's origin.
UNSAFE_MIME = ("text/html", "application/xhtml+xml", "text/javascript", "application/javascript", "text/css")


def error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message, "details": "", "extra_info": {}}},
                             status=status)


def folder_of(kind: str) -> Path | None:
    folders = paths.FOLDERS
    return {"output": folders.output, "input": folders.input, "temp": folders.temp}.get(kind)


def safe_target(kind: str, subfolder: str, filename: str) -> Path | web.Response:
    """The file a request names, or the error response that refuses it."""
    root = folder_of(kind)
    if root is None:
        return error(400, "invalid_type", f"type must be one of {', '.join(FOLDER_TYPES)}")
    if not filename:
        return error(400, "invalid_filename", "no filename given")
    for part in (subfolder, filename):
        if "\x00" in part or part.startswith(("/", "\\")) or ".." in Path(part.replace("\\", "/")).parts:
            return error(400, "invalid_path", "refused path: '..', absolute paths and NUL are not allowed")
    try:
        return resolve_within(root, f"{subfolder}/{filename}" if subfolder else filename)
    except UnsafePath as exc:
        return error(403, "forbidden_path", str(exc))


async def view(request: web.Request) -> web.StreamResponse:
    q = request.query
    filename, kind = q.get("filename", ""), q.get("type", "output") or "output"
    for candidate in FOLDER_TYPES:  # ComfyUI's annotated names: "x.png [output]"
        if filename.endswith(f" [{candidate}]"):
            filename, kind = filename[: -len(candidate) - 3], candidate
    target = safe_target(kind, q.get("subfolder", ""), filename)
    if isinstance(target, web.Response):
        return target
    if not target.is_file():
        return error(404, "not_found", f"{filename} not found")
    preview, channel = q.get("preview"), q.get("channel", "")
    if preview or channel in ("rgb", "a"):
        try:
            body, content_type = await asyncio.to_thread(_reencode, target, preview, channel)
        except (OSError, ValueError) as exc:
            return error(400, "not_an_image", f"cannot convert {filename}: {exc}")
        return web.Response(body=body, content_type=content_type,
                            headers={"Content-Disposition": f'filename="{target.name}"'})
    content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if content_type in UNSAFE_MIME:
        content_type = "application/octet-stream"
    return web.FileResponse(target, headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff",
                                             "Content-Disposition": f'filename="{target.name}"'})


def _reencode(path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
    """`preview=fmt;quality` → webp or jpeg; `channel=rgb|a` → PNG of those channels (as ComfyUI)."""
    out = io.BytesIO()
    with Image.open(path) as img:
        img.load()
        if preview:
            fmt, _, quality = preview.partition(";")
            fmt = fmt.lower() if fmt.lower() in ("webp", "jpeg") and "a" not in channel else "webp"
            has_alpha = "A" in img.getbands() and channel != "rgb" and fmt == "webp"
            image = img.convert("RGBA" if has_alpha else "RGB")
            image.save(out, format=fmt, quality=int(quality) if quality.isdigit() else 90)
            return out.getvalue(), f"image/{fmt}"
        image = img.convert("RGB") if channel == "rgb" else _alpha_only(img)
        image.save(out, format="PNG")
        return out.getvalue(), "image/png"


def _alpha_only(img: Image.Image) -> Image.Image:
    alpha = img.getchannel("A") if "A" in img.getbands() else Image.new("L", img.size, 255)
    out = Image.new("RGBA", img.size)
    out.putalpha(alpha)
    return out


async def _read_upload(request: web.Request) -> tuple[dict[str, str], str | None, bytes | None]:
    limit = request.app.get(UPLOAD_LIMIT, 100 * 1024 * 1024)
    if (request.content_length or 0) > limit:
        raise TooLarge()
    fields: dict[str, str] = {}
    name, data, total = None, None, 0
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        chunks = []
        while chunk := await part.read_chunk():  # type: ignore[union-attr]
            total += len(chunk)
            if total > limit:
                raise TooLarge()
            chunks.append(chunk)
        if part.name == "image" and part.filename is not None:  # type: ignore[union-attr]
            name, data = part.filename, b"".join(chunks)  # type: ignore[union-attr]
        elif part.name:
            fields[part.name] = b"".join(chunks).decode("utf-8", "replace")
    return fields, name, data


def _store(root_kind: str, subfolder: str, name: str, data: bytes, overwrite: bool) -> dict[str, str] | web.Response:
    """Write an upload with ComfyUI's naming: same bytes reuse the file, other bytes get ` (1)`, ` (2)`…"""
    name = Path(name.replace("\\", "/")).name
    target = safe_target(root_kind, subfolder, name)
    if isinstance(target, web.Response):
        return target
    if target.exists() and not overwrite:
        digest = hashlib.sha256(data).digest()
        stem, suffix, i = target.stem, target.suffix, 1
        while target.exists() and hashlib.sha256(target.read_bytes()).digest() != digest:
            target = target.with_name(f"{stem} ({i}){suffix}")
            i += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or overwrite:
        tmp = target.with_name(f".{target.name}.upload")
        tmp.write_bytes(data)
        tmp.replace(target)  # readers never see half a file
    return {"name": target.name, "subfolder": subfolder, "type": root_kind}


def _check_image(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as exc:
        return f"not a readable image: {exc}"
    return None


async def _upload(request: web.Request, mask: bool) -> web.Response:
    try:
        fields, name, data = await _read_upload(request)
    except TooLarge:
        return error(413, "too_large", f"uploads are limited to {request.app.get(UPLOAD_LIMIT)} bytes")
    except (ValueError, AssertionError) as exc:
        return error(400, "bad_upload", f"not a multipart form: {exc}")
    if not name or data is None:
        return error(400, "no_image", "multipart field `image` with a filename is required")
    problem = await asyncio.to_thread(_check_image, data)
    if problem:
        return error(400, "not_an_image", problem)
    kind = fields.get("type") or "input"
    overwrite = fields.get("overwrite", "").lower() in ("true", "1")
    if mask:
        try:
            ref = json.loads(fields.get("original_ref", ""))
            original = safe_target(ref.get("type") or "output", ref.get("subfolder", ""), ref["filename"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return error(400, "bad_original_ref", "original_ref must be JSON {filename, subfolder, type}")
        if isinstance(original, web.Response):
            return original
        if not original.is_file():
            return error(404, "not_found", "original image not found")
        data = await asyncio.to_thread(_apply_mask, original, data)
    saved = await asyncio.to_thread(_store, kind, fields.get("subfolder", ""), name, data, overwrite)
    return saved if isinstance(saved, web.Response) else web.json_response(saved)


def _apply_mask(original: Path, mask_bytes: bytes) -> bytes:
    """The original image with its alpha replaced by the mask's alpha; its PNG text chunks kept."""
    with Image.open(original) as img, Image.open(io.BytesIO(mask_bytes)) as mask:
        info = PngImagePlugin.PngInfo()
        for key, value in getattr(img, "text", {}).items():
            info.add_text(key, value)
        out = ImageOps.exif_transpose(img).convert("RGBA")
        alpha = mask.getchannel("A") if "A" in mask.getbands() else mask.convert("L")
        out.putalpha(alpha.resize(out.size, Image.Resampling.LANCZOS))
        buffer = io.BytesIO()
        out.save(buffer, format="PNG", pnginfo=info, compress_level=4)
        return buffer.getvalue()


async def upload_image(request: web.Request) -> web.Response:
    return await _upload(request, mask=False)


async def upload_mask(request: web.Request) -> web.Response:
    return await _upload(request, mask=True)


def routes() -> list[tuple[str, str, Any]]:
    return [("GET", "/view", view), ("POST", "/upload/image", upload_image), ("POST", "/upload/mask", upload_mask)]
