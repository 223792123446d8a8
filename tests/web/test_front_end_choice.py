"""Choosing the front end: `main.py serve --front-end comfyui` and `--front-end-root DIR`.

Proves: Sumi's editor is the default; `comfyui` finds the installed comfyui-frontend-package's static folder,
and a missing package is a clear error naming the pip command (exit status 2, nothing served); a root without
index.html is refused; served in front of the API, ComfyUI's index, its scripts and Sumi's extension load,
`/extensions` lists both, and the API routes still win over the front end's files.
"""
from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

import main
from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore
from executor.runner import Executor
from nodes import build_registry, paths
from web import ServerConfig, create_app

from .conftest import REPO


def test_front_end_folder_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = main.build_parser().parse_args(["serve"])
    assert (args.front_end, args.front_end_root) == ("sumi", None)
    assert main.front_end_folder("sumi", None) is None
    comfy = main.front_end_folder("comfyui", None)
    assert comfy is not None and comfy.name == "static" and (comfy / "index.html").is_file()
    assert comfy.parent.name == "comfyui_frontend_package"
    (tmp_path / "site").mkdir()
    with pytest.raises(main.FrontEndMissing, match=r"no index\.html"):
        main.front_end_folder("sumi", str(tmp_path / "site"))
    (tmp_path / "site" / "index.html").write_text("<p>mine</p>")
    assert main.front_end_folder("comfyui", str(tmp_path / "site")) == (tmp_path / "site").resolve()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "comfyui_frontend_package" else real(name, *a))
    with pytest.raises(main.FrontEndMissing, match=r"pip install comfyui-frontend-package==1\.58\.1"):
        main.front_end_folder("comfyui", None)


def test_serve_refuses_a_front_end_root_without_index(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "serve", "--front-end-root", str(tmp_path),
                             "--database", str(tmp_path / "q.db"), "--port", "1"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert f"--front-end-root {tmp_path}: no index.html" in result.stderr


@pytest.fixture
def comfy_app(tmp_path: Path) -> Iterator[Any]:
    saved = paths.FOLDERS
    paths.configure(tmp_path / "base")
    registry = build_registry()
    store = PromptStore(tmp_path / "q.db")
    root = main.front_end_folder("comfyui", None)

    def make() -> TestClient:
        app = create_app(LocalDispatcher(store, Executor(registry)), registry,
                         ServerConfig(start_worker=False, front_end_root=root, user_directory=tmp_path / "user"))
        return TestClient(TestServer(app))

    yield make
    store.close()
    paths.FOLDERS = saved


def test_comfyui_front_end_is_served_with_sumis_extension(comfy_app: Any) -> None:
    async def scenario() -> None:
        async with comfy_app() as c:
            r = await c.get("/")
            assert r.status == 200 and "<html" in (await r.text()).lower()
            assert (await c.get("/scripts/app.js")).status == 200  # the shim extensions import
            extensions = await (await c.get("/api/extensions")).json()
            assert "/extensions/sumi/runReasons.js" in extensions
            assert "/extensions/core/widgetInputs.js" in extensions  # the package's own, as ComfyUI lists them
            for url in [*extensions[:3], "/extensions/sumi/runReasons.js"]:
                assert (await c.get(url)).status == 200, url
            assert (await c.get("/api/users")).status == 200  # API routes win over front-end files
            assert isinstance(await (await c.get("/templates/index.json")).json(), list)
    asyncio.run(scenario())
