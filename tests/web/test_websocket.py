"""The websocket under a client that stops reading, measured on a real server over TCP.

Proves: a client that never reads (a raw socket with a tiny receive buffer, after the handshake) does not
delay a second client's events: their delivery latency, measured and printed, is no worse than while the
same 60 MB go to a client that reads them; the stalled client is disconnected once its send queue is full,
and can reconnect with the same client id; every event for the reading client arrives, in order.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore
from executor.runner import Event, Executor
from nodes import build_registry, paths
from web import ServerConfig, create_app
from web.server import API_KEY

from .conftest import Running, start_server

EVENTS = 3000  # for the stalled client, 20 KB each: 60 MB, past its 32 MiB queue limit
READER_EVERY = 10
PAD = "x" * 20_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    saved = paths.FOLDERS
    base = tmp_path_factory.mktemp("websocket")
    paths.configure(base)
    registry = build_registry()
    dispatcher = LocalDispatcher(PromptStore(base / "q.db"), Executor(registry))
    app = create_app(dispatcher, registry, ServerConfig(start_worker=False))
    running = start_server(app, dispatcher, base)
    running.app = app  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.stop()
        dispatcher.store.close()
        paths.FOLDERS = saved


def stalled_client(url: str, client_id: str) -> socket.socket:
    """A websocket client that completes the handshake and then never reads another byte."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def flood(hub: Any, stalled: str | None) -> None:
    """From another thread, as the worker posts: big events for the stalled client, small timed ones between."""
    for i in range(EVENTS):
        if stalled is not None:
            hub.post(Event("progress", {"prompt_id": "p", "value": i, "pad": PAD}), stalled)
        if i % READER_EVERY == 0:
            hub.post(Event("progress", {"prompt_id": "p", "value": i, "sent": time.perf_counter()}), "reader")


async def read_latencies(url: str, hub: Any, other: str) -> list[float]:
    """The reader's delivery latencies while `other` is sent the big events (and reads them, unless stalled)."""
    latencies: list[float] = []
    values: list[int] = []
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws?clientId=reader") as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "status"
        thread = threading.Thread(target=flood, args=(hub, other))
        thread.start()
        while len(values) < EVENTS // READER_EVERY:
            message = await ws.receive_json(timeout=30)
            if message["type"] == "progress":
                latencies.append(time.perf_counter() - message["data"]["sent"])
                values.append(message["data"]["value"])
        thread.join()
    assert values == list(range(0, EVENTS, READER_EVERY))  # all of them, in order
    return latencies


async def drain_reader(url: str, client_id: str, ready: threading.Event, count: int) -> int:
    """A second client that reads everything it is sent (the baseline's heavy client)."""
    got = 0
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws?clientId={client_id}", max_msg_size=0) as ws:
        await ws.receive_json(timeout=10)
        ready.set()
        while got < count:
            message = await ws.receive_json(timeout=30)
            got += message["type"] == "progress"
    return got


def test_a_stalled_reader_does_not_delay_other_clients(server: Running) -> None:
    hub = server.app[API_KEY].hub  # type: ignore[attr-defined]
    url = server.url
    # Baseline: the same 60 MB go to a client that reads them (limits raised: a burst this size would otherwise
    # outrun even a reading client in this process, which shares the interpreter with the server).
    limits = hub.max_queued, hub.max_queued_bytes
    hub.max_queued, hub.max_queued_bytes = 10 * EVENTS, 1 << 30
    ready, counted = threading.Event(), []
    heavy = threading.Thread(target=lambda: counted.append(asyncio.run(drain_reader(url, "heavy", ready, EVENTS))))
    heavy.start()
    assert ready.wait(10)
    beside_reader = asyncio.run(read_latencies(url, hub, "heavy"))
    heavy.join(60)
    hub.max_queued, hub.max_queued_bytes = limits
    assert counted == [EVENTS] and "heavy" not in hub.dropped
    sock = stalled_client(url, "stalled")
    try:
        for _ in range(100):
            if "stalled" in hub.clients:
                break
            time.sleep(0.01)
        assert "stalled" in hub.clients
        beside_stall = asyncio.run(read_latencies(url, hub, "stalled"))
        for _ in range(500):  # dropped once its queue overflowed, then its connection closed
            if "stalled" not in hub.clients:
                break
            time.sleep(0.01)
        assert "stalled" in hub.dropped and "stalled" not in hub.clients
    finally:
        sock.close()

    def summary(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"

    print(f"\nreader latency while 60 MB go to another client that reads: {summary(beside_reader)}; "
          f"to one that never reads: {summary(beside_stall)}")
    # Without per-client queues the reader waits forever behind the stalled socket; with them the stalled
    # client costs the reader no more than a client that reads the same volume (plus the machine's noise).
    assert max(beside_stall) < 2.0
    assert statistics.median(beside_stall) <= 1.5 * statistics.median(beside_reader) + 0.05

    async def reconnect() -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws?clientId=stalled") as ws:
            return json.loads((await ws.receive(timeout=10)).data)
    hello = asyncio.run(reconnect())
    assert hello["type"] == "status" and hello["data"]["sid"] == "stalled"
