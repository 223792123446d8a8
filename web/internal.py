"""ComfyUI's front-end helpers under `/internal`: the server log (whole, raw, and live over the websocket),
the model folder paths, and the newest files of output/input/temp.

    GET /internal/logs → the recent log as one string ("time - message" lines)
    GET /internal/logs/raw → {entries: [{t, m}], size: {cols, rows}}
    PATCH /internal/logs/subscribe {clientId, enabled} → that websocket gets `logs` events {entries, size}
    GET /internal/folder_paths → {model folder key: [paths]}
    GET /internal/files/{output|input|temp} → file names in that folder, newest first
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from executor.runner import Event
from nodes import paths

from .files import FOLDER_TYPES, error, folder_of
from .userdata import Refused, read_body

MAX_ENTRIES = 1000  # log lines kept in memory
MAX_SUBSCRIBERS = 64


class LogBuffer(logging.Handler):
    """The last MAX_ENTRIES log records as ComfyUI's `{t, m}` entries; `on_entry` sees each new one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.entries: collections.deque[dict[str, str]] = collections.deque(maxlen=MAX_ENTRIES)
        self.on_entry: Callable[[dict[str, str]], None] | None = None
        self._guard = threading.local()
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._guard, "busy", False):
            return  # a record logged while forwarding one: never loop
        self._guard.busy = True
        try:
            entry = {"t": datetime.datetime.fromtimestamp(record.created).isoformat(),
                     "m": self.format(record) + "\n"}
            self.entries.append(entry)
            if self.on_entry is not None:
                self.on_entry(entry)
        except Exception:
            self.handleError(record)
        finally:
            self._guard.busy = False


def terminal_size() -> dict[str, int]:
    size = shutil.get_terminal_size()
    return {"cols": size.columns, "rows": size.lines}


class Internal:
    def __init__(self, post: Callable[[Event, str | None], None]) -> None:
        self.post = post  # the hub's thread-safe send
        self.buffer = LogBuffer()
        self.subscribers: set[str] = set()

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("GET", "/internal/logs", self.logs), ("GET", "/internal/logs/raw", self.logs_raw),
                ("PATCH", "/internal/logs/subscribe", self.subscribe),
                ("GET", "/internal/folder_paths", self.folder_paths),
                ("GET", "/internal/files/{directory_type}", self.files)]

    async def on_startup(self, app: web.Application) -> None:
        self.buffer.on_entry = self._forward
        logging.getLogger().addHandler(self.buffer)

    async def on_cleanup(self, app: web.Application) -> None:
        logging.getLogger().removeHandler(self.buffer)
        self.buffer.on_entry = None

    def _forward(self, entry: dict[str, str]) -> None:
        for sid in list(self.subscribers):
            self.post(Event("logs", {"entries": [entry], "size": terminal_size()}), sid)

    async def logs(self, request: web.Request) -> web.Response:
        return web.json_response("".join(f"{e['t']} - {e['m']}" for e in list(self.buffer.entries)))

    async def logs_raw(self, request: web.Request) -> web.Response:
        return web.json_response({"entries": list(self.buffer.entries), "size": terminal_size()})

    async def subscribe(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await read_body(request, 64 * 1024) or b"{}")
        except Refused as refused:
            return refused.response
        except ValueError:
            return error(400, "invalid_json", "body must be JSON {clientId, enabled}")
        client = body.get("clientId") if isinstance(body, dict) else None
        if not isinstance(client, str) or not client:
            return error(400, "invalid_request", "clientId is required")
        if body.get("enabled"):
            if client not in self.subscribers and len(self.subscribers) >= MAX_SUBSCRIBERS:
                return error(429, "too_many_subscribers", f"at most {MAX_SUBSCRIBERS} clients follow the log")
            self.subscribers.add(client)
        else:
            self.subscribers.discard(client)
        return web.Response()

    async def folder_paths(self, request: web.Request) -> web.Response:
        return web.json_response({key: [str(p) for p in dirs] for key, dirs in paths.FOLDERS.models.items()})

    async def files(self, request: web.Request) -> web.Response:
        kind = request.match_info["directory_type"]
        folder = folder_of(kind)
        if folder is None:
            return error(400, "invalid_type", f"type must be one of {', '.join(FOLDER_TYPES)}")

        def newest_first() -> list[str]:
            if not folder.is_dir():
                return []
            entries = [e for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
            return [e.name for e in sorted(entries, key=lambda e: (-e.stat().st_mtime, e.name))]

        return web.json_response(await asyncio.to_thread(newest_first))
