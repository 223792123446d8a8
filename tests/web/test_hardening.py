"""The server's defences, each against an app in-process (no worker, no model) or the Hub on fake sockets.

Proves: without a token only loopback Host names and the listen addresses are served, HTTP and websocket alike
(DNS rebinding), and origins compare with default ports; /view renders only raster images, video and audio,
everything else is an attachment, every answer sandboxed; uploads must decode fully as PNG/JPEG/WebP/GIF/
BMP/TIFF and are stored under that format's extension, through a unique temporary file, a directory in the
way being a name conflict; a non-finite `number` is invalid_request; execution_interrupted goes to the
submitter (to all only without a client_id); `status` carries the count at sending time; bare `--listen`
binds IPv4 and IPv6, or IPv4 alone without IPv6; a second server on one database refuses to start.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

import main
from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore
from executor.runner import Event, Executor
from nodes import build_registry, paths
from web import ServerConfig, create_app
from web import server as web_server
from web.hub import Client, Hub

from .conftest import REPO

LATENT = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}}
CSP = "sandbox; default-src 'none'"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    saved = paths.FOLDERS
    root = tmp_path_factory.mktemp("hardening")
    paths.configure(root)
    for folder in (paths.FOLDERS.input, paths.FOLDERS.output):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        paths.FOLDERS = saved


@pytest.fixture(scope="module")
def registry(base: Path) -> Any:
    return build_registry()


@pytest.fixture
def client(base: Path, registry: Any, tmp_path: Path) -> Any:
    """`client(**ServerConfig fields)`: an async context manager over a worker-less app."""
    stores: list[PromptStore] = []

    def make(**config: Any) -> TestClient:
        store = PromptStore(tmp_path / f"{len(stores)}.db")
        stores.append(store)
        app = create_app(LocalDispatcher(store, Executor(registry)), registry,
                         ServerConfig(start_worker=False, **config))
        return TestClient(TestServer(app))

    yield make
    for store in stores:
        store.close()


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (16, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, bytes(range(256)) * (size[0] * size[1] * 3 // 256 + 1)).save(buffer, format=fmt)
    return buffer.getvalue()


# -- who may connect ------------------------------------------------------------------------------------------

def test_dns_rebinding_refused_without_token(client: Any) -> None:
    async def scenario() -> None:
        async with client() as c:
            for host in ("evil.example", "evil.example:8188", "127.0.0.1.evil.example", "localhost@evil.example",
                         "192.168.1.5:8188", "[::2]:8188"):
                headers = {"Host": host}
                assert (await c.get("/prompt", headers=headers)).status == 403, host
                assert (await c.get("/queue", headers=headers)).status == 403, host
                assert (await c.post("/prompt", json={"prompt": LATENT}, headers=headers)).status == 403, host
                assert (await c.get("/view?filename=x.png", headers=headers)).status == 403, host
                assert (await c.options("/prompt", headers=headers)).status == 403, host
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await c.ws_connect("/ws?clientId=x", headers=headers)
                assert refused.value.status == 403
            for host in ("localhost:8188", "LOCALHOST", "127.0.0.1:1", "[::1]:8188", "[0:0::1]"):
                assert (await c.get("/prompt", headers={"Host": host})).status == 200, host
            ws = await c.ws_connect("/ws?clientId=x", headers={"Host": "localhost:8188"})
            assert (await ws.receive_json(timeout=5))["type"] == "status"
            await ws.close()
        async with client(listen="127.0.0.2") as c:  # its own listen address is a valid Host too
            assert (await c.get("/prompt", headers={"Host": "127.0.0.2:8188"})).status == 200
            assert (await c.get("/prompt", headers={"Host": "evil.example"})).status == 403
        async with client(listen="0.0.0.0", token="s3cret") as c:  # with a token the Host does not matter
            auth = {"Authorization": "Bearer s3cret", "Host": "sumi.lan:8188"}
            assert (await c.get("/prompt", headers=auth)).status == 200
    asyncio.run(scenario())


def test_origin_ports_default_to_the_scheme() -> None:
    from web.security import same_origin

    assert same_origin("http://localhost", "localhost") and same_origin("http://localhost:80", "localhost")
    assert same_origin("http://localhost", "localhost:80") and same_origin("https://a.b", "a.b:443")
    assert not same_origin("http://localhost", "localhost:8188")  # no longer "a missing port matches any"
    assert not same_origin("http://localhost:8188", "localhost") and not same_origin("https://a.b", "a.b")
    assert not same_origin("chrome-extension://abc", "abc") and not same_origin("http://[", "[")


def test_origin_without_port_refused_for_another_port(client: Any) -> None:
    async def scenario() -> None:
        async with client() as c:
            headers = {"Origin": "http://localhost", "Host": "localhost:8188"}
            assert (await c.post("/prompt", json={"prompt": LATENT}, headers=headers)).status == 403
            assert (await c.get("/prompt", headers={"Origin": "http://localhost", "Host": "localhost"})).status \
                == 200
    asyncio.run(scenario())


# -- /view and uploads -----------------------------------------------------------------------------------------

def test_view_renders_only_media(client: Any) -> None:
    out = paths.FOLDERS.output
    (out / "page.html").write_text("<script>alert(1)</script>")
    (out / "pic.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    (out / "notes.txt").write_text("fine")
    (out / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (out / "img.png").write_bytes(image_bytes())

    async def scenario() -> None:
        async with client() as c:
            for name in ("page.html", "pic.svg", "notes.txt"):
                r = await c.get(f"/view?filename={name}")
                assert r.status == 200 and r.headers["Content-Type"] == "application/octet-stream", name
                assert r.headers["Content-Disposition"] == f'attachment; filename="{name}"'
                assert r.headers["Content-Security-Policy"] == CSP
                assert r.headers["X-Content-Type-Options"] == "nosniff"
            for name, kind in (("img.png", "image/png"), ("clip.mp4", "video/mp4")):
                r = await c.get(f"/view?filename={name}")
                assert r.status == 200 and r.headers["Content-Type"] == kind
                assert not r.headers["Content-Disposition"].startswith("attachment")
                assert r.headers["Content-Security-Policy"] == CSP
            for query in ("filename=img.png&preview=webp;50", "filename=missing.png", "filename=../x.png"):
                r = await c.get(f"/view?{query}")
                assert r.headers["Content-Security-Policy"] == CSP and r.headers["X-Content-Type-Options"] == \
                    "nosniff", query
    asyncio.run(scenario())


def form(data: bytes, name: str, **fields: str) -> aiohttp.FormData:
    f = aiohttp.FormData()
    f.add_field("image", data, filename=name, content_type="application/octet-stream")
    for key, value in fields.items():
        f.add_field(key, value)
    return f


def test_uploads_must_decode_and_get_their_format_extension(client: Any) -> None:
    jpeg = image_bytes("JPEG", (64, 64))
    inputs = paths.FOLDERS.input

    async def upload(c: TestClient, data: bytes, name: str) -> tuple[int, Any]:
        r = await c.post("/upload/image", data=form(data, name))
        return r.status, await r.json()

    async def scenario() -> None:
        async with client() as c:
            assert (await upload(c, jpeg[:-200], "cut.jpg"))[0] == 400  # verify() passes, decoding fails
            assert (await upload(c, image_bytes("PPM"), "odd.png"))[0] == 400  # decodes, not an accepted format
            assert (await upload(c, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg"))[0] == 400
            assert await upload(c, image_bytes(), "evil.html") == (200, {"name": "evil.png", "subfolder": "",
                                                                         "type": "input"})
            assert (await upload(c, image_bytes(), "photo.jpg"))[1]["name"] == "photo.png"
            assert (await upload(c, jpeg, "photo.jpeg"))[1]["name"] == "photo.jpeg"
            assert (await upload(c, image_bytes("GIF"), "noext"))[1]["name"] == "noext.gif"
            for fmt, ext in (("WEBP", ".webp"), ("BMP", ".bmp"), ("TIFF", ".tiff")):
                assert (await upload(c, image_bytes(fmt), "any.png"))[1]["name"] == f"any{ext}"
            assert not (inputs / "evil.html").exists() and (inputs / "evil.png").is_file()
            with Image.open(inputs / "photo.png") as img:
                assert img.format == "PNG"
    asyncio.run(scenario())


def test_upload_name_conflicts_and_temporary_file(client: Any) -> None:
    inputs = paths.FOLDERS.input
    (inputs / "taken.png").mkdir()
    (inputs / ".blocked.png.upload").mkdir()  # the old fixed temporary name, now irrelevant

    async def scenario() -> None:
        async with client() as c:
            r = await c.post("/upload/image", data=form(image_bytes(), "taken.png"))
            assert r.status == 200 and (await r.json())["name"] == "taken (1).png"
            r = await c.post("/upload/image", data=form(image_bytes("PNG", (4, 4)), "taken.png", overwrite="true"))
            assert r.status == 200 and (await r.json())["name"] == "taken (1).png"
            r = await c.post("/upload/image", data=form(image_bytes(), "blocked.png"))
            assert r.status == 200 and (await r.json())["name"] == "blocked.png"
    asyncio.run(scenario())
    assert (inputs / "taken.png").is_dir() and (inputs / "blocked.png").is_file()
    assert not [p for p in inputs.iterdir() if p.name.startswith(".upload-")]  # no temporary file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert (inputs / "blocked.png").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


# -- /prompt ---------------------------------------------------------------------------------------------------

def test_non_finite_number_is_invalid_request(client: Any) -> None:
    async def scenario() -> None:
        async with client() as c:
            for number in ("nan", "inf", "-Infinity", 1e400):
                r = await c.post("/prompt", json={"prompt": LATENT, "number": number})
                assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request", number
            r = await c.post("/prompt", data=f'{{"prompt": {json.dumps(LATENT)}, "number": NaN}}',
                             headers={"Content-Type": "application/json"})
            assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request"
            r = await c.post("/prompt", json={"prompt": LATENT, "number": 3, "prompt_id": "p"})
            assert r.status == 200 and (await r.json())["number"] == 3
            r = await c.post("/prompt", json={"prompt": LATENT, "prompt_id": "p"})
            assert r.status == 400 and (await r.json())["error"]["type"] == "duplicate_prompt_id"
            assert len((await (await c.get("/queue")).json())["queue_pending"]) == 1
    asyncio.run(scenario())


# -- websocket routing -----------------------------------------------------------------------------------------

class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, **kwargs: Any) -> None:
        pass


class FakeDispatcher:
    remaining = 0

    def queue_remaining(self) -> int:
        return self.remaining


async def hub_with(*sids: str) -> tuple[Hub, FakeDispatcher, dict[str, FakeSocket]]:
    dispatcher = FakeDispatcher()
    hub = Hub(dispatcher, {})
    sockets = {sid: FakeSocket() for sid in sids}
    for sid, ws in sockets.items():
        await hub.attach(Client(sid, ws))  # type: ignore[arg-type]
    return hub, dispatcher, sockets


def test_execution_interrupted_goes_to_the_submitter_or_to_all() -> None:
    async def scenario() -> None:
        hub, _, sockets = await hub_with("a", "b")
        stopped = {"prompt_id": "p", "node_id": "3", "node_type": "KSampler", "executed": [], "timestamp": 1}
        await hub.deliver(Event("execution_interrupted", stopped), "a")
        await hub.drain()
        assert [len(s.sent) for s in sockets.values()] == [1, 0]
        await hub.deliver(Event("execution_interrupted", stopped), None)  # no client_id: everyone
        await hub.drain()
        assert [len(s.sent) for s in sockets.values()] == [2, 1]
        await hub.deliver(Event("execution_error", stopped), None)  # other execution events: nobody
        await hub.drain()
        assert [len(s.sent) for s in sockets.values()] == [2, 1]
        await hub.stop()
    asyncio.run(scenario())


def test_status_carries_the_count_when_sent() -> None:
    async def scenario() -> list[dict[str, Any]]:
        hub, dispatcher, sockets = await hub_with("a")
        await hub.start()
        dispatcher.remaining = 5
        hub.post(Event("status", {}), None)
        # an event posted with a count computed earlier, arriving after the queue emptied
        hub.post(Event("status", {"status": {"exec_info": {"queue_remaining": 5}}}), None)
        dispatcher.remaining = 0
        for _ in range(100):
            if len(sockets["a"].sent) == 2:
                break
            await asyncio.sleep(0.01)
        await hub.stop()
        return sockets["a"].sent

    sent = asyncio.run(scenario())
    assert [m["data"]["status"]["exec_info"]["queue_remaining"] for m in sent] == [0, 0]
    assert all(m["type"] == "status" for m in sent)


# -- starting ------------------------------------------------------------------------------------------------

def test_bare_listen_means_every_ipv4_and_ipv6_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert main.build_parser().parse_args(["serve", "--listen"]).listen == "0.0.0.0,::"
    assert main.build_parser().parse_args(["serve"]).listen == "127.0.0.1"
    real_socket = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real_socket(family, *args)

    monkeypatch.setattr(web_server.socket, "socket", no_ipv6)
    assert web_server.bindable_hosts(["0.0.0.0", "::"]) == ["0.0.0.0"]
    assert web_server.bindable_hosts(["::"]) == ["::"]  # nothing else to listen on: let it fail loudly
    assert web_server.bindable_hosts(["127.0.0.1", "::1"]) == ["127.0.0.1", "::1"]  # as given: fails loudly
    assert web_server.bindable_hosts(["localhost", "127.0.0.1"]) == ["localhost", "127.0.0.1"]


def test_ipv4_and_ipv6_wildcards_bind_together() -> None:
    if not web_server._can_bind_v6("::"):
        pytest.skip("no IPv6 on this host: runs wherever ::1 can be bound (CI has it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="ok"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            for host in web_server.bindable_hosts(["0.0.0.0", "::"]):  # as `main.py serve --listen` binds
                await web.TCPSite(runner, host, port).start()
            async with aiohttp.ClientSession() as s:
                for url in (f"http://127.0.0.1:{port}/", f"http://[::1]:{port}/"):
                    async with s.get(url) as r:
                        assert await r.text() == "ok", url
        finally:
            await runner.cleanup()
    asyncio.run(scenario())


def test_second_server_on_one_database_refuses_to_start(tmp_path: Path) -> None:
    db = tmp_path / "user" / "sumi.db"
    first = PromptStore(db)
    try:
        done = subprocess.run([sys.executable, "main.py", "serve", "--base-directory", str(tmp_path), "--database",
                               str(db), "--port", "1"], cwd=REPO, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        first.close()
    assert done.returncode == 1, done.stderr
    assert "in use by another Sumi server" in done.stderr and "Traceback" not in done.stderr
