"""A real Sumi server on a free port, driven by an independent aiohttp client.

The server runs in a background thread with its own event loop (as `main.py serve` runs it, worker thread
included); each test drives it from `asyncio.run` with its own ClientSession, over TCP.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore
from executor.runner import Executor
from nodes import build_registry, models, paths
from web import ServerConfig, create_app

REPO = Path(__file__).resolve().parents[2]
CKPT = models.DEFAULT_CHECKPOINT


def make_base(root: Path, checkpoint: Path) -> Path:
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "checkpoints" / CKPT).symlink_to(checkpoint)
    return root


def txt2img(seed: int = 42, text: str = "a lighthouse at dawn", steps: int = 2) -> dict[str, Any]:
    """The shipped txt2img workflow, shrunk to 64×64 and a few steps."""
    prompt = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["3"]["inputs"].update(seed=seed, steps=steps)
    prompt["6"]["inputs"]["text"] = text
    return prompt


@dataclass
class Running:
    url: str
    base: Path
    dispatcher: LocalDispatcher
    loop: asyncio.AbstractEventLoop
    runner: web.AppRunner
    thread: threading.Thread

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_server(app: web.Application, dispatcher: LocalDispatcher, base: Path, port_number: int = 0) -> Running:
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    ready = threading.Event()
    port: list[int] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def up() -> None:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", port_number)
            await site.start()
            port.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        loop.run_until_complete(up())
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=serve, name="sumi-test-server", daemon=True)
    thread.start()
    assert ready.wait(60), "server did not start"
    return Running(f"http://127.0.0.1:{port[0]}", base, dispatcher, loop, runner, thread)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Running]:
    """One server per test module, on a fresh base directory; the process-wide folders are restored after."""
    saved = paths.FOLDERS
    base = make_base(tmp_path_factory.mktemp("serve"), tiny_checkpoint)
    paths.configure(base)
    for folder in (paths.FOLDERS.input, paths.FOLDERS.output):
        folder.mkdir(parents=True, exist_ok=True)
    registry = build_registry()
    dispatcher = LocalDispatcher(PromptStore(base / "user" / "sumi.db"), Executor(registry))
    running = start_server(create_app(dispatcher, registry, ServerConfig()), dispatcher, base)
    try:
        yield running
    finally:
        running.stop()
        dispatcher.store.close()
        paths.FOLDERS = saved


async def run_prompt(session: aiohttp.ClientSession, url: str, prompt: dict[str, Any], client_id: str,
                     **body: Any) -> tuple[str, list[dict[str, Any]]]:
    """Listen on /ws, POST the prompt, collect its messages up to `executing {node: null}`."""
    async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
        hello = await ws.receive_json(timeout=10)
        assert hello["type"] == "status" and hello["data"]["sid"] == client_id
        async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id, **body}) as r:
            assert r.status == 200, await r.text()
            prompt_id = (await r.json())["prompt_id"]
        messages: list[dict[str, Any]] = []
        while True:
            msg = await ws.receive(timeout=120)
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            if message["type"] != "status" and message["data"].get("prompt_id") != prompt_id:
                continue
            messages.append(message)
            if message["type"] == "executing" and message["data"]["node"] is None:
                return prompt_id, messages
