"""What ComfyUI's front end reads on every start, at scale: job pages over a long history, /object_info over
many model files. An in-process server (worker not started) on a temporary base, timed over HTTP.

    .venv/bin/python benchmarks/frontend.py [--history 10000] [--models 3000] [--reps 30] [--json OUT.json]

Scenarios (median and max of `--reps` requests over one keep-alive connection, after one warm-up request):
  jobs      GET /api/jobs pages over `--history` finished entries (each with the editor workflow of
            tests/fixtures/txt2img_ui.json in its extra_data and one image output, as the front end leaves
            them) plus 20 pending: the front end's two start-up requests (the queue: in_progress,pending
            limit 200; the history: completed,failed,cancelled limit 64), a page deep in the history, the
            last page, and a page sorted by duration. Target: ≤ 50 ms per page.
  objects   GET /api/object_info with `--models` model files spread over checkpoints, loras, vae and
            embeddings (in subfolders), after the folders have settled (older than the listing cache's
            2-second "racy" window): the first request walks them, later ones reuse each folder's listing
            until a directory's mtime changes. Target: ≤ 50 ms. Also reported: the first (walking) request,
            and a request right after adding one checkpoint (that folder is walked again, and lists it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TARGET_MS = 50.0


def fill_history(db: Path, count: int) -> float:
    """`count` finished items (one in 20 failed, one in 50 interrupted) and 20 pending; seconds taken."""
    from executor.queue import PromptStore, State

    workflow = json.loads((REPO / "tests" / "fixtures" / "txt2img_ui.json").read_text())
    prompt = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    store = PromptStore(db, history_cap=count)
    started = time.perf_counter()
    for i in range(count):
        pid = f"job-{i:05}"
        store.enqueue(pid, i, prompt, {"client_id": "bench", "extra_pnginfo": {"workflow": {**workflow,
                                                                                           "id": f"wf-{i % 7}"}}},
                      ["9"])
        store.claim_next()
        state = State.ERROR if i % 20 == 0 else State.INTERRUPTED if i % 50 == 0 else State.SUCCESS
        outputs = {"9": {"images": [{"filename": f"ComfyUI_{i:05}_.png", "subfolder": "", "type": "output"}]}}
        messages = [["execution_start", {"prompt_id": pid, "timestamp": i}],
                    ["execution_success" if state is State.SUCCESS else "execution_error",
                     {"prompt_id": pid, "node_id": "3", "node_type": "KSampler", "exception_message": "x",
                      "exception_type": "RuntimeError", "traceback": [], "timestamp": i}]]
        store.finish(pid, state, outputs if state is State.SUCCESS else {}, messages, {"9": {"node_id": "9"}})
    for i in range(20):
        store.enqueue(f"wait-{i}", count + i, prompt, {"client_id": "bench"}, ["9"])
    store.close()
    return time.perf_counter() - started


def make_models(base: Path, count: int) -> None:
    kinds = ("checkpoints", "loras", "vae", "embeddings")
    for i in range(count):
        folder = base / "models" / kinds[i % len(kinds)] / f"set{i % 25:02}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"model_{i:05}.safetensors").write_bytes(b"")
    past = time.time() - 60
    for dirpath, _, _ in os.walk(base / "models"):
        os.utime(dirpath, (past, past))


async def timed(session: Any, url: str, reps: int) -> dict[str, float]:
    async def once() -> float:
        t0 = time.perf_counter()
        async with session.get(url) as r:
            assert r.status == 200, (url, r.status)
            await r.read()
        return (time.perf_counter() - t0) * 1000

    await once()  # warm-up
    samples = [await once() for _ in range(reps)]
    return {"median_ms": statistics.median(samples), "max_ms": max(samples)}


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import aiohttp
    from aiohttp.test_utils import TestServer

    from executor.dispatch import LocalDispatcher
    from executor.queue import PromptStore
    from executor.runner import Executor
    from nodes import build_registry, paths
    from web import ServerConfig, create_app

    paths.configure(work)
    make_models(work, args.models)
    fill_seconds = fill_history(work / "user" / "sumi.db", args.history)
    registry = build_registry()
    store = PromptStore(work / "user" / "sumi.db", history_cap=args.history)
    app = create_app(LocalDispatcher(store, Executor(registry)), registry, ServerConfig(start_worker=False))
    server = TestServer(app)
    await server.start_server()
    base = str(server.make_url(""))
    rows: dict[str, Any] = {"fill_seconds": fill_seconds}
    history = "status=completed,failed,cancelled"
    pages = {
        "jobs: queue (in_progress,pending, 200)": "/api/jobs?status=in_progress,pending&limit=200&offset=0",
        "jobs: history first page (64)": f"/api/jobs?{history}&limit=64&offset=0",
        "jobs: history page at 5000 (64)": f"/api/jobs?{history}&limit=64&offset=5000",
        "jobs: history last page (64)": f"/api/jobs?{history}&limit=64&offset={args.history - 64}",
        "jobs: by duration, first page (64)": f"/api/jobs?{history}&sort_by=execution_duration&limit=64&offset=0",
    }
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(base.rstrip("/") + "/api/jobs?limit=1") as r:
                total = (await r.json())["pagination"]["total"]
            assert total == args.history + 20, total
            for label, path in pages.items():
                rows[label] = await timed(session, base.rstrip("/") + path, args.reps)
            object_info = base.rstrip("/") + "/api/object_info"
            t0 = time.perf_counter()
            async with session.get(object_info) as r:
                info = await r.json()
            rows["objects: first request (walks the folders)"] = {"median_ms": (time.perf_counter() - t0) * 1000,
                                                                   "max_ms": (time.perf_counter() - t0) * 1000}
            listed = len(info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0])
            rows["objects: cached (folders unchanged)"] = await timed(session, object_info, args.reps)
            real_check = paths._still_valid
            paths._still_valid = lambda mtimes, scanned_at: False  # what every request cost before the cache
            rows["objects: listing cache off (walks every time)"] = await timed(session, object_info, args.reps)
            paths._still_valid = real_check
            (work / "models" / "checkpoints" / "set00" / "new.safetensors").write_bytes(b"")
            t0 = time.perf_counter()
            async with session.get(object_info) as r:
                info = await r.json()
            rows["objects: after adding one checkpoint"] = {"median_ms": (time.perf_counter() - t0) * 1000,
                                                            "max_ms": (time.perf_counter() - t0) * 1000}
            assert "set00/new.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
            rows["checkpoints listed"] = listed
    finally:
        await server.close()
        store.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="sumi-frontend-bench-") as tmp:
        rows = asyncio.run(run(args, Path(tmp)))
    print(f"history: {args.history} entries (+20 pending), filled in {rows['fill_seconds']:.1f} s; "
          f"{args.models} model files ({rows['checkpoints listed']} checkpoints)")
    print(f"{'scenario':48} {'median':>9} {'max':>9}  target")
    for label, row in rows.items():
        if isinstance(row, dict):
            verdict = "PASS" if row["median_ms"] <= TARGET_MS else "FAIL"
            if "first request" in label or "after adding" in label or "cache off" in label:
                verdict = "(info)"
            print(f"{label:48} {row['median_ms']:7.1f}ms {row['max_ms']:7.1f}ms  <= {TARGET_MS:.0f} ms  {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
