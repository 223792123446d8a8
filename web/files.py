"""Files over HTTP: /view, /upload/image and /upload/mask, every path through `resolve_within`.

Nothing outside the output, input and temp folders is ever read or written: `..`, absolute paths and NUL
are refused with 400, a path that leaves its folder through a symlink with 403.

Nothing served runs in the server's origin: /view shows raster images, video and audio inline and sends
everything else as an `application/octet-stream` attachment, every response sandboxed by its CSP. Uploads are
images Pillow fully decodes (PNG, JPEG, WebP, GIF, BMP, TIFF), stored under an extension of that format.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tempfile
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


# The only types /view lets a browser render: raster images, video and audio. Anything else (.html, .svg, .js,
# .txt…) is a download, so a file an upload or a node wrote can never run script in the server's origin.
INLINE_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime",
    ".mkv": "video/x-matroska", ".ogv": "video/ogg",
    ".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
    ".opus": "audio/ogg", ".m4a": "audio/mp4", ".aac": "audio/aac",
}
VIEW_HEADERS = {"Content-Security-Policy": "sandbox; default-src 'none'", "X-Content-Type-Options": "nosniff"}
# Pillow format → the extension an upload of it is stored under (unless its own name already has one of that format).
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff"}
_UMASK = os.umask(0o022)  # read once, at import (before any server thread), to give uploads the usual mode
os.umask(_UMASK)


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
    response = await _view(request)
    response.headers.update(VIEW_HEADERS)  # every answer, errors included, is inert in a browser
    return response


async def _view(request: web.Request) -> web.StreamResponse:
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
    content_type = INLINE_TYPES.get(target.suffix.lower())
    disposition = f'filename="{target.name}"' if content_type else f'attachment; filename="{target.name}"'
    return web.FileResponse(target, headers={"Content-Type": content_type or "application/octet-stream",
                                             "Content-Disposition": disposition})


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


def _store(root_kind: str, subfolder: str, name: str, data: bytes, overwrite: bool,
           image_format: str = "PNG") -> dict[str, str] | web.Response:
    """Write an upload with ComfyUI's naming: same bytes reuse the file, other bytes get ` (1)`, ` (2)`…

    The name keeps the client's stem and gets an extension of `image_format` (what the bytes really are)."""
    name = _with_format_suffix(Path(name.replace("\\", "/")).name, image_format)
    target = safe_target(root_kind, subfolder, name)
    if isinstance(target, web.Response):
        return target
    digest = hashlib.sha256(data).digest()
    stem, suffix, i = target.stem, target.suffix, 1
    while _taken(target, digest, overwrite):
        target = target.with_name(f"{stem} ({i}){suffix}")
        i += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or overwrite:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_UMASK)  # as a plain write would (mkstemp makes it 0600)
            os.replace(tmp, target)  # readers never see half a file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return {"name": target.name, "subfolder": subfolder, "type": root_kind}


def _taken(target: Path, digest: bytes, overwrite: bool) -> bool:
    """Whether an upload must take another name: something other than a file is there (a directory), or a
    file with other bytes that it may not overwrite."""
    if not target.exists():
        return False
    if not target.is_file():
        return True
    return not overwrite and hashlib.sha256(target.read_bytes()).digest() != digest


def _with_format_suffix(name: str, image_format: str) -> str:
    """`name` if its extension is one of `image_format`'s (`.jpg`, `.jpeg`…), else its stem + that format's."""
    path = Path(name)
    if name in ("", ".", ".."):
        return name  # refused by safe_target
    if Image.registered_extensions().get(path.suffix.lower()) == image_format:
        return name
    return f"{path.stem if path.suffix else name}{UPLOAD_FORMATS[image_format]}"


def _check_image(data: bytes) -> tuple[str | None, str]:
    """(problem or None, Pillow format): the bytes must decode completely, as one of UPLOAD_FORMATS."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            image_format = img.format or ""
            if image_format not in UPLOAD_FORMATS:
                return f"unsupported image format {image_format or 'unknown'} (use PNG, JPEG, WebP, GIF, BMP " \
                       "or TIFF)", image_format
            img.load()
    except Exception as exc:
        return f"not a readable image: {exc}", ""
    return None, image_format


async def _upload(request: web.Request, mask: bool) -> web.Response:
    try:
        fields, name, data = await _read_upload(request)
    except TooLarge:
        return error(413, "too_large", f"uploads are limited to {request.app.get(UPLOAD_LIMIT)} bytes")
    except (ValueError, AssertionError) as exc:
        return error(400, "bad_upload", f"not a multipart form: {exc}")
    if not name or data is None:
        return error(400, "no_image", "multipart field `image` with a filename is required")
    problem, image_format = await asyncio.to_thread(_check_image, data)
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
        data, image_format = await asyncio.to_thread(_apply_mask, original, data), "PNG"
    saved = await asyncio.to_thread(_store, kind, fields.get("subfolder", ""), name, data, overwrite, image_format)
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
