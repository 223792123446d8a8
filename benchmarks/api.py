"""The HTTP/websocket API under load: a real `main.py serve` child on the tiny checkpoint.

    .venv/bin/python benchmarks/api.py [--reps 200] [--prompts 200] [--clients 20] [--idle 50] [--json OUT.json]
    .venv/bin/python benchmarks/api.py --profile            # also time the server's own functions (see below)

Scenarios:
  cached   round trip of a fully cached prompt: POST /prompt → the `executing {node: null}` websocket message
           for that prompt, over one keep-alive HTTP connection and one websocket; one warm-up run first (it
           loads the model and fills the cache), then `--reps` identical submissions. Median and p90.
           Target: median ≤ 5 ms (ComfyUI measured 5.4 ms on this machine).
  load     `--prompts` tiny prompts (64 px, 1 step, distinct seeds so KSampler, VAEDecode and SaveImage really
           run) from `--clients` concurrent clients, each with its own websocket, submitting and waiting in a
           loop, while `--idle` more websockets stay connected and only listen. Every prompt must reach
           history as a success with an image. Reports prompts/s and the server's peak RSS (VmHWM of the child:
           its whole life, model included), plus the RSS high-water mark sampled (psutil) during the load.

The client side uses ComfyUI's documented API only (client-chosen `prompt_id` in the POST body, so a done
message that overtakes the POST reply is still recognised).

`--profile` starts the server through this file (`--child`), which wraps the server's functions on the
prompt path (web.server, web.hub, executor.dispatch, executor.queue, executor.runner) with wall-clock
timers, and prints, for the cached scenario, the mean time per prompt each one takes and the gaps between
them (thread hand-offs). It slows the server slightly; the headline numbers come from a run without it.
`--what-if sqlite-normal` (also through `--child`) runs the shipped server with its queue database switched
to PRAGMA synchronous=NORMAL, to measure that change without editing the server.
The table also reports what one fsync'd SQLite commit costs on this disk (before and after): the queue pays
it on each write, and on shared virtual disks it varies widely, so compare runs whose probe agrees.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CKPT = "sumi_tiny_sd15.safetensors"
TARGET_CACHED_MS = 5.0
COMFY_CACHED_MS = 5.4


def workflow(seed: int, size: int = 64, steps: int = 1, prefix: str = "api_bench") -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dawn", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ------------------------------------------------------------------------------------------------ the server


def make_base(work: Path) -> Path:
    """A base directory whose models/checkpoints holds the tiny checkpoint (linked, or built by a child)."""
    folder = work / "base" / "models" / "checkpoints"
    folder.mkdir(parents=True)
    shipped = REPO / "models" / "checkpoints" / CKPT
    if shipped.is_file():
        (folder / CKPT).symlink_to(shipped)
    else:
        subprocess.run([sys.executable, "-c", "import sys; from nodes import paths, models; "
                        "paths.configure(sys.argv[1]); models.ensure_default_checkpoint()", str(work / "base")],
                       cwd=REPO, check=True)
    return work / "base"


def fsync_commit_ms(folder: Path, n: int = 50) -> float:
    """Median time of one tiny SQLite commit in WAL mode with synchronous=FULL (an fsync) on this disk: the
    queue pays it on every write, and it varies a lot between machines and over time on shared disks."""
    import sqlite3

    db = sqlite3.connect(folder / "fsync_probe.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("DROP TABLE IF EXISTS t")
    db.execute("CREATE TABLE t (x)")
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", (i,))
        db.execute("COMMIT")
        times.append((time.perf_counter() - t0) * 1000)
    db.close()
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, base: Path, threads: int, profile_out: Path | None, what_if: str | None, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--port", str(self.port), "--base-directory", str(base), "--threads", str(threads)]
        env = dict(os.environ)
        if profile_out is not None or what_if:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
            env.update(SUMI_BENCH_PROFILE=str(profile_out or ""), SUMI_BENCH_WHAT_IF=what_if or "")
        else:
            cmd = [sys.executable, str(REPO / "main.py"), *args]
        self.log = log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited ({self.proc.returncode}); see {log}")
            try:
                opener.open(f"{self.url}/system_stats", timeout=5).read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"server did not start; see {log}") from None
                time.sleep(0.2)

    def vm_hwm(self) -> int:
        """The child's peak resident set size in bytes (Linux VmHWM), 0 if unknown."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class RssSampler(threading.Thread):
    """psutil RSS of the child every 20 ms; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except Exception:
                return
            self.done.wait(0.02)


# ------------------------------------------------------------------------------------------------ scenarios


async def wait_done(ws: Any, prompt_id: str) -> dict[str, Any]:
    """Read this client's websocket up to `executing {node: null}` for prompt_id; returns what it saw."""
    import aiohttp

    seen: dict[str, Any] = {"interrupted": False, "error": None}
    while True:
        msg = await ws.receive(timeout=300)
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
            raise ConnectionError("websocket closed")
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        message = json.loads(msg.data)
        data = message.get("data") or {}
        if data.get("prompt_id") != prompt_id:
            continue
        if message["type"] == "execution_error":
            seen["error"] = data.get("exception_message")
        if message["type"] == "executing" and data.get("node") is None:
            return seen


async def post_prompt(session: Any, url: str, prompt: dict[str, Any], client_id: str, prompt_id: str) -> None:
    async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id,
                                                   "prompt_id": prompt_id}) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /prompt {response.status}: {body[:500]!r}")


async def cached_round_trip(url: str, reps: int) -> dict[str, Any]:
    import aiohttp

    client_id = "bench-cached"
    prompt = workflow(seed=1)
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
        await ws.receive_json(timeout=10)  # status
        t0 = time.perf_counter()
        pid = f"warm-{uuid.uuid4()}"
        await post_prompt(session, url, prompt, client_id, pid)
        await wait_done(ws, pid)
        warm_s = time.perf_counter() - t0
        measured_from = time.perf_counter()
        totals, posts = [], []
        for _ in range(reps):
            pid = str(uuid.uuid4())
            t0 = time.perf_counter()
            await post_prompt(session, url, prompt, client_id, pid)
            t1 = time.perf_counter()
            await wait_done(ws, pid)
            t2 = time.perf_counter()
            totals.append((t2 - t0) * 1000)
            posts.append((t1 - t0) * 1000)
        async with session.get(f"{url}/history/{pid}") as r:
            entry = (await r.json())[pid]
    cached = next((m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"), [])
    return {"warmup_s": warm_s, "measured_from": measured_from, "reps": reps,
            "median_ms": statistics.median(totals), "p90_ms": pct(totals, 0.9),
            "min_ms": min(totals), "max_ms": max(totals), "post_median_ms": statistics.median(posts),
            "post_p90_ms": pct(posts, 0.9), "last_cached_nodes": sorted(cached), "samples_ms": totals}


async def load(url: str, prompts: int, clients: int, idle: int) -> dict[str, Any]:
    import aiohttp

    per_client = [list(range(c, prompts, clients)) for c in range(clients)]
    run = uuid.uuid4().hex[:8]
    ids = {i: f"load-{run}-{i}" for i in range(prompts)}
    latencies: list[float] = []
    errors: list[str] = []
    idle_counts = [0] * idle

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        listeners = [await session.ws_connect(f"{url}/ws?clientId=idle-{run}-{i}") for i in range(idle)]

        async def drain(i: int, ws: Any) -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    idle_counts[i] += 1

        drains = [asyncio.create_task(drain(i, ws)) for i, ws in enumerate(listeners)]

        async def client(c: int) -> None:
            client_id = f"load-{run}-client-{c}"
            async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
                await ws.receive_json(timeout=10)
                for i in per_client[c]:
                    t0 = time.perf_counter()
                    await post_prompt(session, url, workflow(seed=1000 + i, prefix=f"load_{run}"), client_id,
                                      ids[i])
                    seen = await wait_done(ws, ids[i])
                    latencies.append(time.perf_counter() - t0)
                    if seen["error"]:
                        errors.append(f"{ids[i]}: {seen['error']}")

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed = time.perf_counter() - t0
        still_open = sum(not ws.closed for ws in listeners)

        complete = 0
        for i in range(prompts):
            async with session.get(f"{url}/history/{ids[i]}") as r:
                entry = (await r.json()).get(ids[i])
            images = ((entry or {}).get("outputs", {}).get("9") or {}).get("images") or []
            if entry and entry["status"]["status_str"] == "success" and entry["status"]["completed"] and images:
                complete += 1
        for ws in listeners:
            await ws.close()
        for task in drains:
            task.cancel()
    return {"prompts": prompts, "clients": clients, "idle": idle, "elapsed_s": elapsed,
            "prompts_per_s": prompts / elapsed, "complete_in_history": complete, "errors": errors[:5],
            "latency_median_s": statistics.median(latencies), "latency_p90_s": pct(latencies, 0.9),
            "idle_still_open": still_open, "idle_messages_min": min(idle_counts, default=0)}


# ------------------------------------------------------------------------------------------------ profiling


PROFILED = {
    "web.server": {"Api": ["post_prompt"]},
    "web.hub": {"Hub": ["post", "deliver"]},
    "executor.dispatch": {"LocalDispatcher": ["submit", "_run", "_queue_changed", "_publish", "queue_remaining"]},
    "executor.queue": {"PromptStore": ["next_number", "enqueue", "claim_next", "finish", "queue_remaining"]},
    "executor.runner": {"Executor": ["prepare", "execute", "signatures"], "": ["plan"]},
    "executor.workflow": {"": ["parse_api"]},
    "executor.validate": {"": ["validate"]},
}


def child(argv: list[str]) -> int:
    """Run `main.py ARGV` with the timers ($SUMI_BENCH_PROFILE) or a what-if change ($SUMI_BENCH_WHAT_IF)."""
    import importlib

    sys.path.insert(0, str(REPO))
    what_if = os.environ.get("SUMI_BENCH_WHAT_IF", "")
    if what_if == "sqlite-normal":
        # What the queue would cost with PRAGMA synchronous=NORMAL (WAL): commits are not fsync'd, which still
        # survives a killed process (the OS has the WAL pages); only an OS crash / power cut can lose the last ones.
        queue = importlib.import_module("executor.queue")
        original_init = queue.PromptStore.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            self._db.execute("PRAGMA synchronous=NORMAL")

        queue.PromptStore.__init__ = init
    elif what_if:
        raise SystemExit(f"unknown what-if {what_if!r}")
    if os.environ.get("SUMI_BENCH_PROFILE"):
        install_timers(os.environ["SUMI_BENCH_PROFILE"])
    import main as sumi_main

    sys.argv = ["main.py", *argv]
    return int(sumi_main.main(argv))


def install_timers(out: str) -> None:
    """Wrap the prompt path's functions with wall-clock timers; write the calls to OUT at exit."""
    import atexit
    import functools
    import importlib
    import inspect

    calls: list[tuple[str, str, float, float, str]] = []  # (name, thread, start, end, first str argument)

    def tag(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        for value in (*args, *kwargs.values()):
            if isinstance(value, str):
                return value
            data = getattr(value, "data", None)  # an Event: note its type
            if isinstance(data, dict) and hasattr(value, "type"):
                return f"{value.type}:{data.get('node', '')}"
        return ""

    def wrap(name: str, fn: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    calls.append((name, threading.current_thread().name, start, time.perf_counter(),
                                  tag(args[1:], kwargs)))
            return timed_async

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                calls.append((name, threading.current_thread().name, start, time.perf_counter(),
                              tag(args[1:], kwargs)))
        return timed

    for module_name, owners in PROFILED.items():
        module = importlib.import_module(module_name)
        for owner_name, names in owners.items():
            owner = getattr(module, owner_name) if owner_name else module
            for fn_name in names:
                setattr(owner, fn_name, wrap(f"{module_name}.{owner_name + '.' if owner_name else ''}{fn_name}",
                                             getattr(owner, fn_name)))
    # Modules that imported these names directly must see the wrapped ones.
    runner = importlib.import_module("executor.runner")
    server = importlib.import_module("web.server")
    runner.parse_api = sys.modules["executor.workflow"].parse_api
    runner.validate = sys.modules["executor.validate"].validate
    server.parse_api = sys.modules["executor.workflow"].parse_api

    def dump() -> None:
        Path(out).write_text(json.dumps(calls))

    atexit.register(dump)


def profile_report(calls: list[list[Any]], start: float, end: float, prompts: int) -> list[str]:
    """Mean ms per prompt spent in each timed function, and the hand-off gaps, for calls inside [start, end]."""
    window = [c for c in calls if start <= c[2] <= end]
    per_fn: dict[str, list[float]] = {}
    for name, thread, t0, t1, _ in window:
        per_fn.setdefault(f"{name} [{'worker' if thread == 'sumi-worker' else thread}]", []).append(t1 - t0)
    lines = [f"  {'function [thread]':<62} {'calls/prompt':>12} {'ms/prompt':>10} {'median ms/call':>14}"]
    for key, values in sorted(per_fn.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"  {key:<62} {len(values) / prompts:>12.2f} {sum(values) * 1000 / prompts:>10.3f} "
                     f"{statistics.median(values) * 1000:>14.3f}")
    # Hand-offs: POST handler → worker claims it; worker publishes done → the loop delivers it.
    posts = sorted(c for c in window if c[0] == "web.server.Api.post_prompt")
    submits = sorted(c for c in window if c[0].endswith("LocalDispatcher.submit"))
    claims = sorted(c for c in window if c[0].endswith("PromptStore.claim_next") and c[1] == "sumi-worker")
    done_posts = sorted(c for c in window if c[0] == "web.hub.Hub.post" and c[4] == "executing:None")
    delivers = sorted(c for c in window if c[0] == "web.hub.Hub.deliver" and c[4] == "executing:None")
    gaps = []
    for label, before, after, use_end in (
            ("to_thread hop into submit (POST handler start → submit start)", posts, submits, False),
            ("worker wake-up (submit end → claim_next start)", submits, claims, True),
            ("loop hop (Hub.post of done starts → deliver starts)", done_posts, delivers, False)):
        deltas = []
        for b in before:
            ref = b[3] if use_end else b[2]
            nxt = next((a for a in after if a[2] >= ref), None)
            if nxt is not None:
                deltas.append((nxt[2] - ref) * 1000)
        if deltas:
            gaps.append(f"  {label:<62} median {statistics.median(deltas):.3f} ms")
    return [*lines, "", *gaps]


# ------------------------------------------------------------------------------------------------ main


def table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = []
    for n, row in enumerate(rows):
        out.append("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200, help="cached round trips measured (after one warm-up)")
    parser.add_argument("--prompts", type=int, default=200, help="prompts in the load scenario")
    parser.add_argument("--clients", type=int, default=20, help="concurrent submitting clients")
    parser.add_argument("--idle", type=int, default=50, help="idle websocket listeners during the load")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch CPU threads")
    parser.add_argument("--profile", action="store_true", help="time the server's functions (slower; see doc)")
    parser.add_argument("--what-if", choices=["sqlite-normal"],
                        help="measure a server change without editing it: sqlite-normal = PRAGMA synchronous=NORMAL")
    parser.add_argument("--json", metavar="FILE", help="write settings, results and raw samples here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server log, outputs)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sumi_api_bench_"))
    profile_out = work / "profile.json" if args.profile else None
    base = make_base(work)
    t_start = time.perf_counter()
    server = Server(base, args.threads, profile_out, args.what_if, work / "server.log")
    startup_s = time.perf_counter() - t_start
    results: dict[str, Any] = {"settings": vars(args), "startup_s": startup_s}
    try:
        results["fsync_commit_ms_before"] = fsync_commit_ms(work)
        window = [time.perf_counter()]
        results["cached"] = asyncio.run(cached_round_trip(server.url, args.reps))
        window.append(time.perf_counter())
        sampler = RssSampler(server.proc.pid)
        sampler.start()
        results["load"] = asyncio.run(load(server.url, args.prompts, args.clients, args.idle))
        sampler.done.set()
        sampler.join()
        results["load"]["rss_peak_sampled_bytes"] = sampler.peak
        results["server_vm_hwm_bytes"] = server.vm_hwm()
        results["fsync_commit_ms_after"] = fsync_commit_ms(work)
    finally:
        server.stop()

    cached, loaded = results["cached"], results["load"]
    mib = 1024 * 1024
    rows = [("metric", "value", "target", "result"),
            ("cached round trip, median", f"{cached['median_ms']:.2f} ms", f"≤ {TARGET_CACHED_MS:g} ms "
             f"(ComfyUI {COMFY_CACHED_MS} ms)", "PASS" if cached["median_ms"] <= TARGET_CACHED_MS else "MISS"),
            ("cached round trip, p90", f"{cached['p90_ms']:.2f} ms", f"≤ {TARGET_CACHED_MS:g} ms",
             "PASS" if cached["p90_ms"] <= TARGET_CACHED_MS else "MISS"),
            ("  of which POST /prompt reply (median)", f"{cached['post_median_ms']:.2f} ms", "", "info"),
            ("  nodes cached on the last rep", f"{len(cached['last_cached_nodes'])} of 7", "7 of 7",
             "PASS" if len(cached["last_cached_nodes"]) == 7 else "MISS"),
            (f"load: {loaded['prompts']} prompts, {loaded['clients']} clients + {loaded['idle']} idle ws",
             f"{loaded['complete_in_history']}/{loaded['prompts']} in history", "all succeed",
             "PASS" if loaded["complete_in_history"] == loaded["prompts"] and not loaded["errors"] else "MISS"),
            ("  throughput", f"{loaded['prompts_per_s']:.2f} prompts/s", "", "info"),
            ("  per-prompt latency under load (median / p90)",
             f"{loaded['latency_median_s']:.2f} / {loaded['latency_p90_s']:.2f} s", "", "info"),
            ("  idle listeners still open", f"{loaded['idle_still_open']}/{loaded['idle']}", "all",
             "PASS" if loaded["idle_still_open"] == loaded["idle"] else "MISS"),
            ("this disk: one fsync'd SQLite commit (before / after)",
             f"{results['fsync_commit_ms_before']:.2f} / {results['fsync_commit_ms_after']:.2f} ms", "", "info"),
            ("server peak RSS (VmHWM, whole life)", f"{results['server_vm_hwm_bytes'] / mib:.0f} MiB", "", "info"),
            ("  RSS high-water sampled during load", f"{loaded['rss_peak_sampled_bytes'] / mib:.0f} MiB", "",
             "info")]
    print(f"server start → /system_stats answers: {startup_s:.1f} s; warm-up run {cached['warmup_s']:.2f} s; "
          f"torch threads {args.threads}{'; PROFILED (timers on)' if args.profile else ''}"
          f"{f'; WHAT-IF {args.what_if} (not the shipped server)' if args.what_if else ''}")
    print(table(rows))
    if loaded["errors"]:
        print("errors:", *loaded["errors"], sep="\n  ")
    if profile_out is not None and profile_out.is_file():
        calls = json.loads(profile_out.read_text())
        results["profile_cached"] = profile_report(calls, cached["measured_from"], window[1], args.reps)
        print(f"\nserver time per cached prompt (the {args.reps} measured round trips):")
        print("\n".join(results["profile_cached"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.keep:
        print(f"work folder: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
