"""The jobs API (ComfyUI's queue and history panels) over Sumi's store.

Proves: every state maps to ComfyUI's job status; the list filters by status and workflow, sorts by creation
time or duration both ways, pages with limit/offset and an exact `pagination` (total, has_more); a job's detail
carries its prompt, extra_data, outputs and status messages; a finished job reports its error, its output count
and its preview image, and lists its files as assets (paged); cancelling removes a pending job, interrupts the
running one (it ends "cancelled"), refuses a finished one (409) and an unknown one (404); the history is still
there after a restart; bad parameters are 400s. Against the real server: a txt2img run is a completed job whose
preview is its image, and its asset's URL serves that image.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore, State
from executor.runner import Executor
from nodes import build_registry, paths
from web import ServerConfig, create_app

from .conftest import Running, txt2img

PROMPT = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}}
IMAGE = {"filename": "a_00001_.png", "subfolder": "", "type": "output"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    saved = paths.FOLDERS
    paths.configure(tmp_path_factory.mktemp("jobs-base"))
    try:
        yield build_registry()
    finally:
        paths.FOLDERS = saved


def fill(store: PromptStore, clock: list[float]) -> None:
    """Items in every state, queued one second apart; durations: ok 5 s, bad 1 s, stop 3 s."""
    def enqueue(pid: str, workflow: str | None = None) -> None:
        extra = {"extra_pnginfo": {"workflow": {"id": workflow, "nodes": []}}} if workflow else {}
        store.enqueue(pid, len(clock), PROMPT, extra, ["2"])
        clock.append(clock[-1] + 1)

    def run(pid: str, seconds: float, state: State, **kw: Any) -> None:
        store.claim_next()
        clock.append(clock[-1] + seconds)
        store.finish(pid, state, **kw)

    enqueue("ok", "wf-1")
    run("ok", 5, State.SUCCESS, outputs_ui={"9": {"images": [IMAGE, {**IMAGE, "filename": "b.png"}]},
                                            "7": {"text": ["hello"]}},
        status_messages=[["execution_start", {"prompt_id": "ok"}], ["execution_success", {"prompt_id": "ok"}]],
        meta={"9": {"node_id": "9"}})
    enqueue("bad", "wf-2")
    run("bad", 1, State.ERROR, status_messages=[["execution_error", {
        "prompt_id": "bad", "node_id": "2", "node_type": "SaveLatent", "exception_message": "disk full",
        "exception_type": "OSError", "traceback": ["line"], "executed": ["1"]}]])
    enqueue("stop", "wf-1")
    run("stop", 3, State.INTERRUPTED, status_messages=[["execution_interrupted", {
        "prompt_id": "stop", "node_id": "1", "node_type": "EmptyLatentImage", "executed": []}]])
    enqueue("run")
    store.claim_next()
    enqueue("wait1")
    enqueue("wait2")


@pytest.fixture
def filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[-1])
    db = tmp_path / "jobs.db"
    store = PromptStore(db)
    fill(store, clock)
    store.close()
    monkeypatch.undo()
    return db


def client_over(db: Path, registry: Any) -> tuple[TestClient, PromptStore]:
    store = PromptStore(db)
    app = create_app(LocalDispatcher(store, Executor(registry)), registry, ServerConfig(start_worker=False))
    return TestClient(TestServer(app)), store


def test_list_shapes_filters_sorting_and_pages(filled: Path, registry: Any) -> None:
    async def scenario() -> None:
        client, store = client_over(filled, registry)
        async with client as c:
            async def jobs(query: str) -> dict[str, Any]:
                r = await c.get(f"/api/jobs?{query}")
                assert r.status == 200, (query, await r.text())
                return await r.json()

            every = await jobs("")
            assert [j["id"] for j in every["jobs"]] == ["wait2", "wait1", "run", "stop", "bad", "ok"]
            assert every["pagination"] == {"offset": 0, "limit": 6, "total": 6, "has_more": False}
            assert {j["id"]: j["status"] for j in every["jobs"]} == {
                "ok": "completed", "bad": "failed", "stop": "cancelled", "run": "in_progress", "wait1": "pending",
                "wait2": "pending"}
            ok = next(j for j in every["jobs"] if j["id"] == "ok")
            assert ok["create_time"] == 1_000_000_000 and ok["execution_start_time"] == 1_000_001_000
            assert ok["execution_end_time"] == 1_000_006_000 and ok["priority"] == 1
            assert ok["outputs_count"] == 2 and ok["previewable_outputs_count"] == 2
            assert ok["preview_output"] == {**IMAGE, "nodeId": "9", "mediaType": "images"}
            assert ok["execution_error"] is None and ok["workflow_id"] == "wf-1"
            assert "workflow" not in ok and "outputs" not in ok  # a list stays small
            bad = next(j for j in every["jobs"] if j["id"] == "bad")
            assert bad["execution_error"]["exception_message"] == "disk full"
            assert bad["execution_error"]["node_id"] == "2" and bad["preview_output"] is None
            stop = next(j for j in every["jobs"] if j["id"] == "stop")
            assert stop["execution_error"]["exception_type"] == "InterruptProcessingException"
            pending = next(j for j in every["jobs"] if j["id"] == "wait1")
            assert pending["execution_start_time"] is None and pending["outputs_count"] is None

            queue = await jobs("status=in_progress,pending&limit=200&offset=0")
            assert [j["id"] for j in queue["jobs"]] == ["wait2", "wait1", "run"]
            history = await jobs("status=completed,failed,cancelled&limit=2&offset=0")
            assert [j["id"] for j in history["jobs"]] == ["stop", "bad"]
            assert history["pagination"] == {"offset": 0, "limit": 2, "total": 3, "has_more": True}
            rest = await jobs("status=completed,failed,cancelled&limit=2&offset=2")
            assert [j["id"] for j in rest["jobs"]] == ["ok"]
            assert rest["pagination"] == {"offset": 2, "limit": 2, "total": 3, "has_more": False}
            assert [j["id"] for j in (await jobs("status=completed,failed,cancelled&sort_order=asc"))["jobs"]] \
                == ["ok", "bad", "stop"]
            by_time = await jobs("status=completed,failed,cancelled&sort_by=execution_duration")
            assert [j["id"] for j in by_time["jobs"]] == ["ok", "stop", "bad"]  # 5 s, 3 s, 1 s
            asc = await jobs("status=completed,failed,cancelled&sort_by=execution_duration&sort_order=asc")
            assert [j["id"] for j in asc["jobs"]] == ["bad", "stop", "ok"]
            assert [j["id"] for j in (await jobs("workflow_id=wf-1"))["jobs"]] == ["stop", "ok"]

            for query in ("status=done", "sort_by=name", "sort_order=up", "limit=x", "offset=-1", "limit=-5"):
                r = await c.get(f"/jobs?{query}")
                assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request", query
        store.close()
    asyncio.run(scenario())


def test_detail_cancel_and_restart(filled: Path, registry: Any) -> None:
    async def scenario() -> None:
        client, store = client_over(filled, registry)
        async with client as c:
            detail = await (await c.get("/jobs/ok")).json()
            assert detail["id"] == "ok" and detail["status"] == "completed"
            assert detail["workflow"] == {"prompt": PROMPT, "extra_data": {"extra_pnginfo": {
                "workflow": {"id": "wf-1", "nodes": []}}}}
            assert detail["outputs"]["9"]["images"][1]["filename"] == "b.png"
            assert detail["execution_status"]["status_str"] == "success"
            assert [m[0] for m in detail["execution_status"]["messages"]] == ["execution_start", "execution_success"]
            assert detail["execution_meta"] == {"9": {"node_id": "9"}} and detail["update_time"] == 1_000_006_000
            assert (await c.get("/api/jobs/nope")).status == 404
            assets = await (await c.get("/api/jobs/ok/assets")).json()
            assert [(a["name"], a["node_id"], a["output_key"], a["output_index"]) for a in assets["assets"]] == \
                [("a_00001_.png", "9", "images", 0), ("b.png", "9", "images", 1)]
            first = assets["assets"][0]
            assert first["id"] == "ok:9:images:0" and first["mime_type"] == "image/png" and first["size"] is None
            assert first["preview_url"] == "/api/view?filename=a_00001_.png&subfolder=&type=output"
            assert first["created_at"] == "1970-01-12T13:46:46Z"  # finished at 1,000,006 s
            page = await (await c.get("/api/jobs/ok/assets?limit=1&offset=1")).json()
            assert [a["name"] for a in page["assets"]] == ["b.png"]
            assert page["pagination"] == {"offset": 1, "limit": 1, "total": 2, "has_more": False}
            assert (await (await c.get("/api/jobs/bad/assets")).json())["assets"] == []
            assert (await c.get("/api/jobs/nope/assets")).status == 404
            assert (await c.get("/api/jobs/ok/assets?limit=-1")).status == 400

            r = await c.post("/api/jobs/wait1/cancel")
            assert r.status == 200 and await r.json() == {"cancelled": ["wait1"]}
            assert [i.prompt_id for i in store.pending()] == ["wait2"]
            assert (await c.post("/jobs/ok/cancel")).status == 409
            assert (await c.post("/jobs/nope/cancel")).status == 404
            r = await c.post("/jobs/cancel", json={"job_ids": ["wait2", "ok", "nope", "wait2"]})
            assert r.status == 200 and await r.json() == {"cancelled": ["wait2"]}
            assert store.pending() == []
            for body in ({}, {"job_ids": []}, {"job_ids": "wait2"}, {"job_ids": [1]},
                         {"job_ids": ["x"] * 101}):
                assert (await c.post("/jobs/cancel", json=body)).status == 400, body
            assert (await c.post("/jobs/cancel", data=b"{")).status == 400
        store.close()
        client, store = client_over(filled, registry)  # a restart: the history is all still there
        async with client as c:
            history = await (await c.get("/jobs?status=completed,failed,cancelled")).json()
            assert [j["id"] for j in history["jobs"]] == ["stop", "bad", "ok"]
        store.close()
    asyncio.run(scenario())


def test_real_run_is_a_completed_job_and_cancel_interrupts(server: Running) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"{server.url}/ws?clientId=jobs") as ws:
                await ws.receive_json(timeout=10)
                async with s.post(f"{server.url}/prompt",
                                  json={"prompt": txt2img(seed=7, text="jobs"), "client_id": "jobs"}) as r:
                    done_id = (await r.json())["prompt_id"]
                long = txt2img(seed=8, text="long", steps=400)
                async with s.post(f"{server.url}/prompt", json={"prompt": long, "client_id": "jobs"}) as r:
                    long_id = (await r.json())["prompt_id"]
                finished: set[str] = set()
                cancelled = False
                while len(finished) < 2:
                    message = await ws.receive_json(timeout=120)
                    data = message["data"]
                    if message["type"] == "progress" and data["prompt_id"] == long_id and not cancelled:
                        async with s.post(f"{server.url}/api/jobs/{long_id}/cancel") as r:
                            assert r.status == 200 and await r.json() == {"cancelled": [long_id]}
                        cancelled = True
                    if message["type"] == "executing" and data["node"] is None:
                        finished.add(data["prompt_id"])
            async with s.get(f"{server.url}/api/jobs?status=completed,failed,cancelled&limit=64&offset=0") as r:
                listed = {j["id"]: j for j in (await r.json())["jobs"]}
            done, stopped = listed[done_id], listed[long_id]
            assert done["status"] == "completed" and stopped["status"] == "cancelled"
            assert done["create_time"] <= done["execution_start_time"] <= done["execution_end_time"]
            async with s.get(f"{server.url}/history/{done_id}") as r:
                image = (await r.json())[done_id]["outputs"]["9"]["images"][0]
            assert done["preview_output"] == {**image, "nodeId": "9", "mediaType": "images"}
            assert done["outputs_count"] == 1
            async with s.get(f"{server.url}/jobs/{done_id}") as r:
                detail = await r.json()
            assert detail["workflow"]["prompt"]["3"]["inputs"]["seed"] == 7
            assert detail["outputs"]["9"]["images"] == [image]
            async with s.get(f"{server.url}/jobs/{done_id}/assets") as r:
                (asset,) = (await r.json())["assets"]
            async with s.get(server.url + asset["preview_url"]) as r:
                assert r.status == 200 and r.content_type == "image/png"
                assert len(await r.read()) == asset["size"] > 0
    asyncio.run(scenario())
