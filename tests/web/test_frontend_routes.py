"""The routes ComfyUI's front end reads besides the API proper, against a worker-less app on a temporary base.

Proves: templates (index in the templates-package shape, every shipped workflow served as an editor graph that
converts back to exactly that workflow, a PNG thumbnail, every locale's index, refusals); the model browser
(folders without `configs`, files with pathIndex and size, a preview converted to WebP, safetensors metadata,
404s and traversal refusals); the internal helpers (the log whole, raw and live to a subscribed websocket,
folder paths, a folder's files newest first); the empty catalogues (custom templates, blueprints, node
replacements); and the model listing cache (one walk while nothing changes, a new or removed file seen).
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from safetensors.torch import save_file
from yarl import URL

from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore
from executor.runner import Executor
from executor.ui_format import ui_to_api
from nodes import build_registry, paths
from web import ServerConfig, create_app

from .conftest import REPO


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    saved = paths.FOLDERS
    root = tmp_path_factory.mktemp("frontend-routes")
    paths.configure(root)
    ckpts = paths.FOLDERS.models["checkpoints"][0]
    (ckpts / "sub").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, ckpts / "meta.safetensors", metadata={"modelspec.title": "Tiny", "k": "v"})
    save_file({"w": torch.zeros(2)}, ckpts / "sub" / "plain.safetensors")
    (ckpts / "old.ckpt").write_bytes(b"not really")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(ckpts / "meta.png")
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
def client(registry: Any, tmp_path: Path) -> Iterator[Any]:
    """`client()`: a TestClient over a worker-less app (made inside the test's event loop)."""
    store = PromptStore(tmp_path / "q.db")

    def make() -> TestClient:
        app = create_app(LocalDispatcher(store, Executor(registry)), registry,
                         ServerConfig(start_worker=False, user_directory=tmp_path / "user"))
        return TestClient(TestServer(app))

    yield make
    store.close()


def test_shipped_workflows_are_the_templates(client: Any, registry: Any) -> None:
    shipped = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))

    async def scenario() -> None:
        async with client() as c:
            r = await c.get("/templates/index.json")
            assert r.status == 200 and r.content_type == "application/json"
            index = await r.json()
            assert [m["moduleName"] for m in index] == ["default"]
            templates = index[0]["templates"]
            assert [t["name"] for t in templates] == shipped
            assert all(t["mediaType"] == "image" and t["mediaSubtype"] == "png" and t["description"]
                       for t in templates)
            assert await (await c.get("/templates/index.fr.json")).json() == index
            assert await (await c.get("/templates/index_logo.json")).json() == {}
            for name in shipped:
                r = await c.get(f"/templates/{name}.json")
                assert r.status == 200, name
                graph = await r.json()
                shipped_file = json.loads((REPO / "workflows" / f"{name}.json").read_text())
                if "nodes" in shipped_file:  # shipped in the editor format: served as it is
                    assert graph == shipped_file, name
                else:
                    back, errors = ui_to_api(graph, registry)
                    assert errors == [] and back == shipped_file, name
                r = await c.get(f"/templates/{name}-1.png")
                assert r.status == 200 and r.content_type == "image/png"
                with Image.open(io.BytesIO(await r.read())) as img:
                    assert img.size == (384, 256)
            for bad in ("nope.json", "nope-1.png", "..%2Fworkflows%2Ftxt2img.json", "txt2img.txt",
                        "%2Fetc%2Fpasswd.json", "inputs.json"):
                assert (await c.get(URL(f"/templates/{bad}", encoded=True))).status == 404, bad
            assert await (await c.get("/api/workflow_templates")).json() == {}
            assert await (await c.get("/api/global_subgraphs")).json() == {}
            assert (await c.get("/api/global_subgraphs/abc")).status == 404
            assert await (await c.get("/api/node_replacements")).json() == {}
    asyncio.run(scenario())


def test_model_browser(client: Any, base: Path) -> None:
    ckpts = paths.FOLDERS.models["checkpoints"][0]

    async def scenario() -> None:
        async with client() as c:
            folders = await (await c.get("/api/experiment/models")).json()
            names = [f["name"] for f in folders]
            assert "checkpoints" in names and "loras" in names and "configs" not in names
            assert next(f for f in folders if f["name"] == "checkpoints")["folders"] == [str(ckpts)]
            files = await (await c.get("/api/experiment/models/checkpoints")).json()
            assert [(f["name"], f["pathIndex"]) for f in files] == \
                [("meta.safetensors", 0), ("old.ckpt", 0), ("sub/plain.safetensors", 0)]
            assert files[1]["size"] == len(b"not really") and isinstance(files[1]["modified"], float)
            assert (await c.get("/api/experiment/models/nonsense")).status == 404
            r = await c.get("/api/experiment/models/preview/checkpoints/0/meta.safetensors")
            assert r.status == 200 and r.content_type == "image/webp"
            with Image.open(io.BytesIO(await r.read())) as img:
                assert img.format == "WEBP" and img.size == (8, 8)
            assert (await c.get("/api/experiment/models/preview/checkpoints/0/sub/plain.safetensors")).status \
                == 404
            assert (await c.get("/api/experiment/models/preview/checkpoints/5/meta.safetensors")).status == 404
            assert (await c.get(URL("/api/experiment/models/preview/checkpoints/0/..%2F..%2Fx.png",
                                    encoded=True))).status == 400

            r = await c.get("/api/view_metadata/checkpoints?filename=meta.safetensors")
            assert r.status == 200 and await r.json() == {"modelspec.title": "Tiny", "k": "v"}
            assert (await c.get("/view_metadata/checkpoints?filename=sub/plain.safetensors")).status == 404
            assert (await c.get("/view_metadata/checkpoints?filename=old.ckpt")).status == 404
            assert (await c.get("/view_metadata/checkpoints?filename=missing.safetensors")).status == 404
            assert (await c.get("/view_metadata/nonsense?filename=meta.safetensors")).status == 404
            for bad in ("../meta.safetensors", "/etc/x.safetensors", "a\x00.safetensors"):
                assert (await c.get("/view_metadata/checkpoints", params={"filename": bad})).status == 400, bad
    asyncio.run(scenario())


def test_internal_helpers(client: Any, base: Path) -> None:
    out = paths.FOLDERS.output
    for i, name in enumerate(("first.png", "second.png", "third.png")):
        (out / name).write_bytes(b"x")
        os.utime(out / name, (1000 + i, 1000 + i))
    (out / "sub").mkdir(exist_ok=True)

    async def scenario() -> None:
        async with client() as c:
            logging.getLogger("sumi.test").warning("a line for the log panel")
            text = await (await c.get("/internal/logs")).json()
            assert isinstance(text, str) and "sumi.test WARNING a line for the log panel" in text
            raw = await (await c.get("/internal/logs/raw")).json()
            assert raw["entries"][-1]["m"].endswith("a line for the log panel\n")
            assert set(raw["size"]) == {"cols", "rows"} and "t" in raw["entries"][-1]

            ws = await c.ws_connect("/ws?clientId=logger")
            assert (await ws.receive_json(timeout=5))["type"] == "status"
            r = await c.patch("/internal/logs/subscribe", json={"clientId": "logger", "enabled": True})
            assert r.status == 200
            logging.getLogger("sumi.test").warning("live line")
            message = await ws.receive_json(timeout=5)
            assert message["type"] == "logs" and message["data"]["entries"][0]["m"].endswith("live line\n")
            await c.patch("/internal/logs/subscribe", json={"clientId": "logger", "enabled": False})
            logging.getLogger("sumi.test").warning("not sent")
            with pytest.raises(asyncio.TimeoutError):
                await ws.receive_json(timeout=0.5)
            await ws.close()
            assert (await c.patch("/internal/logs/subscribe", json={"enabled": True})).status == 400
            assert (await c.patch("/internal/logs/subscribe", data=b"{")).status == 400

            folders = await (await c.get("/internal/folder_paths")).json()
            assert folders["checkpoints"] == [str(paths.FOLDERS.models["checkpoints"][0])]
            assert await (await c.get("/internal/files/output")).json() == ["third.png", "second.png", "first.png"]
            assert await (await c.get("/api/internal/files/temp")).json() == []
            assert (await c.get("/internal/files/models")).status == 400
    asyncio.run(scenario())


def test_model_listing_is_cached_until_a_folder_changes(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loras = paths.FOLDERS.models["loras"][0]
    (loras / "style").mkdir(parents=True)
    for i in range(3):
        (loras / "style" / f"l{i}.safetensors").write_bytes(b"")
    past = time.time() - 60
    for folder in (loras, loras / "style"):  # settled folders: older than the racy window
        os.utime(folder, (past, past))
    walks: list[Path] = []
    real_scan = paths._scan
    monkeypatch.setattr(paths, "_scan", lambda folder, ext: walks.append(folder) or real_scan(folder, ext))
    expected = ["style/l0.safetensors", "style/l1.safetensors", "style/l2.safetensors"]
    assert paths.list_models("loras") == expected
    assert paths.list_models("loras") == expected and paths.list_models("loras") == expected
    assert len(walks) == 1  # one walk, then stats of the two folders only
    (loras / "style" / "l3.safetensors").write_bytes(b"")  # changes style/'s mtime
    assert paths.list_models("loras") == [*expected, "style/l3.safetensors"]
    os.remove(loras / "style" / "l0.safetensors")
    assert paths.list_models("loras")[0] == "style/l1.safetensors"
    assert len(walks) == 3
