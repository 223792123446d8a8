"""ComfyUI's jobs API over Sumi's durable store: `GET /jobs`, `GET /jobs/{id}`, cancelling.

The shapes are those ComfyUI's front end reads for its queue and history panels. A job is every item of the
store, whatever its state: pending, in_progress (running), completed (success), failed (error), cancelled
(interrupted). Times are milliseconds since the epoch. Unlike ComfyUI's, this history survives restarts.

    GET /jobs?status=completed,failed&sort_by=created_at|execution_duration&sort_order=desc|asc
             &limit=N&offset=M&workflow_id=W
        → {jobs: [summary...], pagination: {offset, limit, total, has_more}}
    GET /jobs/{id} → summary + {workflow: {prompt, extra_data}, outputs, update_time, execution_status,
                     execution_meta}
    POST /jobs/{id}/cancel → {cancelled: [id]}: a pending job leaves the queue, a running one is interrupted
    POST /jobs/cancel {job_ids: [...]} → {cancelled: [the ids that were pending or running]}
    GET /jobs/{id}/assets?limit=N&offset=M → {job_id, assets: [{id, name, preview_url, mime_type, size, node_id,
                     output_key, output_index, created_at}], pagination}: the files its outputs list
"""
from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from executor.dispatch import Dispatcher
from executor.queue import JobRow, QueueItem, State

from . import files
from .files import error
from .userdata import Refused, read_body

STATUS = {State.PENDING: "pending", State.RUNNING: "in_progress", State.SUCCESS: "completed",
          State.ERROR: "failed", State.INTERRUPTED: "cancelled"}
STATES = {name: state for state, name in STATUS.items()}
SORTS = {"created_at": "created", "create_time": "created", "execution_duration": "duration",
         "duration": "duration"}
PREVIEWABLE = ("images", "video", "audio", "gifs")
MAX_CANCEL = 100  # job ids per POST /jobs/cancel, as ComfyUI's schema allows


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _files(outputs: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(node id, output key, file record) for every file a node's UI output lists, in node order."""
    found = []
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for key, values in ui.items():
            for value in values if isinstance(values, list) else []:
                if isinstance(value, dict) and "filename" in value:
                    found.append((str(node_id), key, value))
    return found


def _execution_error(row: JobRow) -> dict[str, Any] | None:
    """The recorded execution_error (or execution_interrupted) message, with the strings the schema requires."""
    for name, data in reversed(row.messages):
        if name in ("execution_error", "execution_interrupted") and isinstance(data, dict):
            out = dict(data)
            for key in ("node_id", "node_type", "exception_message", "exception_type"):
                out[key] = "" if out.get(key) is None else str(out[key])
            if name == "execution_interrupted":
                out["exception_type"] = out["exception_type"] or "InterruptProcessingException"
                out["exception_message"] = out["exception_message"] or "interrupted"
            out.setdefault("traceback", [])
            return out
    if row.state is State.ERROR:
        return {"node_id": "", "node_type": "", "exception_message": "the prompt failed", "exception_type": "Error",
                "traceback": []}
    return None


def summary(row: JobRow) -> dict[str, Any]:
    files = _files(row.outputs)
    previewable = [f for f in files if f[1] in PREVIEWABLE]
    preview = None
    if previewable:
        node_id, key, record = next((f for f in previewable if f[2].get("type") == "output"), previewable[0])
        preview = {**record, "nodeId": node_id, "mediaType": key}
    finished = row.state not in (State.PENDING, State.RUNNING)
    number = int(row.number) if float(row.number).is_integer() else row.number
    return {
        "id": row.prompt_id, "status": STATUS[row.state], "priority": number,
        "create_time": _ms(row.queued_at), "execution_start_time": _ms(row.started_at),
        "execution_end_time": _ms(row.finished_at),
        "outputs_count": len(files) if finished else None,
        "previewable_outputs_count": len(previewable) if finished else None,
        "preview_output": preview, "execution_error": _execution_error(row) if finished else None,
        "workflow_id": row.workflow_id,
    }


def detail(row: JobRow, item: QueueItem) -> dict[str, Any]:
    out = summary(row)
    finished = row.state not in (State.PENDING, State.RUNNING)
    out.update({
        "workflow": {"prompt": item.prompt, "extra_data": item.extra_data},
        "outputs": row.outputs,
        "update_time": _ms(row.finished_at or row.started_at or row.queued_at),
        "execution_status": {"status_str": "success" if row.state is State.SUCCESS else "error",
                             "completed": row.state is State.SUCCESS, "messages": row.messages}
        if finished else None,
        "execution_meta": row.meta,
    })
    return out


def job_assets(row: JobRow) -> list[dict[str, Any]]:
    """Every file a job's outputs list, with where to fetch it and, when it is still there, its size."""
    created = None if row.finished_at is None else \
        datetime.datetime.fromtimestamp(row.finished_at, datetime.UTC).isoformat().replace("+00:00", "Z")
    out, index_of = [], {}
    for node_id, key, record in _files(row.outputs):
        index = index_of[(node_id, key)] = index_of.get((node_id, key), -1) + 1
        name, subfolder, kind = str(record["filename"]), str(record.get("subfolder", "")), record.get("type", "output")
        path = files.safe_target(str(kind), subfolder, name)
        size = path.stat().st_size if isinstance(path, Path) and path.is_file() else None
        out.append({"id": f"{row.prompt_id}:{node_id}:{key}:{index}", "name": name,
                    "preview_url": "/api/view?" + urlencode({"filename": name, "subfolder": subfolder, "type": kind}),
                    "mime_type": files.INLINE_TYPES.get(Path(name).suffix.lower()), "size": size,
                    "node_id": node_id, "output_key": key, "output_index": index, "created_at": created})
    return out


class Jobs:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("GET", "/jobs", self.list), ("POST", "/jobs/cancel", self.cancel_many),
                ("GET", "/jobs/{job_id}", self.get), ("POST", "/jobs/{job_id}/cancel", self.cancel_one),
                ("GET", "/jobs/{job_id}/assets", self.assets)]

    async def list(self, request: web.Request) -> web.Response:
        q = request.query
        names = [s.strip() for s in q.get("status", "").split(",") if s.strip()] or list(STATES)
        unknown = [n for n in names if n not in STATES]
        if unknown:
            return error(400, "invalid_request", f"unknown job status {unknown[0]!r}; use {', '.join(STATES)}")
        order = SORTS.get(q.get("sort_by", "created_at"))
        if order is None:
            return error(400, "invalid_request", "sort_by must be created_at or execution_duration")
        if q.get("sort_order", "desc").lower() not in ("asc", "desc"):
            return error(400, "invalid_request", "sort_order must be asc or desc")
        try:
            limit = int(q["limit"]) if q.get("limit") else None
            offset = int(q.get("offset") or 0)
        except ValueError:
            return error(400, "invalid_request", "limit and offset must be integers")
        if (limit is not None and limit < 0) or offset < 0:
            return error(400, "invalid_request", "limit and offset must not be negative")
        rows, total = await asyncio.to_thread(
            self.dispatcher.store.jobs, [STATES[n] for n in names], order=order,
            descending=q.get("sort_order", "desc").lower() == "desc", limit=limit, offset=offset,
            workflow_id=q.get("workflow_id") or None)
        return web.json_response({"jobs": [summary(r) for r in rows], "pagination": {
            "offset": offset, "limit": limit if limit is not None else total, "total": total,
            "has_more": offset + len(rows) < total}})

    async def get(self, request: web.Request) -> web.Response:
        found = await asyncio.to_thread(self.dispatcher.store.job, request.match_info["job_id"])
        if found is None:
            return error(404, "not_found", f"no job {request.match_info['job_id']!r}")
        return web.json_response(detail(*found))

    async def assets(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        try:
            limit = int(request.query["limit"]) if request.query.get("limit") else None
            offset = int(request.query.get("offset") or 0)
        except ValueError:
            return error(400, "invalid_request", "limit and offset must be integers")
        if (limit is not None and limit < 0) or offset < 0:
            return error(400, "invalid_request", "limit and offset must not be negative")
        found = await asyncio.to_thread(self.dispatcher.store.job, job_id)
        if found is None:
            return error(404, "not_found", f"no job {job_id!r}")
        row = found[0]
        every = await asyncio.to_thread(job_assets, row)
        page = every[offset:] if limit is None else every[offset:offset + limit]
        return web.json_response({"job_id": job_id, "assets": page, "pagination": {
            "offset": offset, "limit": limit if limit is not None else len(every), "total": len(every),
            "has_more": offset + len(page) < len(every)}})

    def _cancel(self, job_id: str) -> bool | None:
        """True if cancelled, False if it had already finished, None if there is no such job."""
        found = self.dispatcher.store.job(job_id)
        if found is None:
            return None
        state = found[0].state
        if state is State.PENDING and self.dispatcher.cancel([job_id]):
            return True
        if state in (State.PENDING, State.RUNNING):  # a pending job may have just started: interrupt it
            return self.dispatcher.interrupt(job_id)
        return False

    async def cancel_one(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        done = await asyncio.to_thread(self._cancel, job_id)
        if done is None:
            return error(404, "not_found", f"no job {job_id!r}")
        if not done:
            return error(409, "job_finished", f"job {job_id!r} has already finished")
        return web.json_response({"cancelled": [job_id]})

    async def cancel_many(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await read_body(request, 64 * 1024))
        except Refused as refused:
            return refused.response
        except ValueError:
            return error(400, "invalid_json", "body must be JSON {job_ids: [...]}")
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_CANCEL or \
                not all(isinstance(i, str) for i in ids):
            return error(400, "invalid_request", f"job_ids must be a list of 1 to {MAX_CANCEL} job id strings")
        cancelled = [i for i in dict.fromkeys(ids) if await asyncio.to_thread(self._cancel, i)]
        return web.json_response({"cancelled": cancelled})
