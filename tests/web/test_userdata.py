"""The user-data routes as ComfyUI's front end uses them, against a worker-less app on a temporary user folder.

Proves: `/users`, `/settings` (merge, one id, JSON only) and `/userdata` (store with overwrite and full_info,
read, list with dir/recurse/full_info/split, `/v2/userdata`, move, delete) answer in ComfyUI's shapes, also
under /api; files land in `USER/default/` and survive a server restart; every traversal (`..` plain and
encoded, absolute, NUL, over-long, a symlink out of the user folder, in the file, the destination and the
listed folder) and every over-size body is refused and writes nothing; cross-origin writes are refused;
`/extensions` lists Sumi's front-end extension, which is served, and `/i18n` answers.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore
from executor.runner import Executor
from nodes import build_registry, paths
from web import ServerConfig, create_app
from web import userdata as userdata_module


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    saved = paths.FOLDERS
    paths.configure(tmp_path_factory.mktemp("userdata-base"))
    try:
        yield build_registry()
    finally:
        paths.FOLDERS = saved


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    return tmp_path / "user"


@pytest.fixture
def client(registry: Any, user_dir: Path, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """`client()`: a fresh server over the same user folder each call (a restart), its own queue database."""
    stores: list[PromptStore] = []

    def make(**config: Any) -> TestClient:
        store = PromptStore(tmp_path / f"q{len(stores)}.db")
        stores.append(store)
        app = create_app(LocalDispatcher(store, Executor(registry)), registry,
                         ServerConfig(start_worker=False, user_directory=user_dir, **config))
        return TestClient(TestServer(app))

    yield make
    for store in stores:
        store.close()


def raw(path: str) -> URL:
    """A URL sent exactly as written (its %2F and %2e%2e reach the server encoded, as a browser sends them)."""
    return URL(path, encoded=True)


def test_users_and_settings_persist_across_restart(client: Callable[..., TestClient], user_dir: Path) -> None:
    async def scenario() -> None:
        async with client() as c:
            r = await c.get("/api/users")
            assert r.status == 200 and await r.json() == {"storage": "server", "migrated": True}
            assert sorted(p.name for p in (user_dir / "default").iterdir()) == ["subgraphs", "workflows"]
            assert await (await c.get("/api/settings")).json() == {}
            assert await (await c.get("/api/settings/Comfy.Missing")).json() is None
            r = await c.post(raw("/api/settings/Comfy.InstalledVersion"), data=json.dumps("1.58.1"))
            assert r.status == 200
            assert (await c.post("/settings", data=json.dumps({"Comfy.A": 1, "Comfy.B": {"x": [1, 2]}}))).status \
                == 200
            assert (await c.post("/settings", data=json.dumps({"Comfy.A": 2}))).status == 200  # merges
            assert (await c.post("/users", json={"username": "x"})).status == 400  # single-user
        async with client() as c:  # a restart: the same user folder, a new server
            assert await (await c.get("/api/users")).json() == {"storage": "server", "migrated": True}
            assert await (await c.get("/settings")).json() == {"Comfy.InstalledVersion": "1.58.1", "Comfy.A": 2,
                                                               "Comfy.B": {"x": [1, 2]}}
            assert await (await c.get("/api/settings/Comfy.B")).json() == {"x": [1, 2]}
        stored = json.loads((user_dir / "default" / "comfy.settings.json").read_text())
        assert stored["Comfy.A"] == 2
    asyncio.run(scenario())


def test_settings_must_be_json_and_bounded(client: Callable[..., TestClient], user_dir: Path) -> None:
    async def scenario() -> None:
        async with client() as c:
            await c.post("/settings/Comfy.Keep", data="true")
            for path, body in (("/settings/Comfy.X", "not json"), ("/settings", "{"), ("/settings", "[1, 2]"),
                               ("/settings", '"a string"')):
                r = await c.post(path, data=body)
                assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_json", (path, body)
            big = json.dumps("x" * (userdata_module.SETTINGS_LIMIT + 1))
            r = await c.post("/settings/Comfy.Big", data=big)
            assert r.status == 413 and (await r.json())["error"]["type"] == "too_large"
            assert await (await c.get("/settings")).json() == {"Comfy.Keep": True}  # nothing else was written
    asyncio.run(scenario())


def test_userdata_store_read_list_move_delete(client: Callable[..., TestClient], user_dir: Path) -> None:
    async def scenario() -> None:
        async with client() as c:
            r = await c.post(raw("/api/userdata/workflows%2Fa.json?overwrite=false&full_info=false"), data=b'{"a":1}')
            assert r.status == 200 and await r.json() == "workflows/a.json"
            r = await c.post(raw("/api/userdata/workflows%2Fa.json?overwrite=false"), data=b'{"a":2}')
            assert r.status == 409
            r = await c.post(raw("/userdata/workflows%2Fa.json?overwrite=true&full_info=true"), data=b'{"a":3}')
            info = await r.json()
            assert r.status == 200 and info["path"] == "workflows/a.json" and info["size"] == 7
            assert isinstance(info["modified"], float)
            await c.post(raw("/userdata/workflows%2Fdeep%2Fb.json"), data=b"[]")
            await c.post(raw("/userdata/workflows%2F.hidden.json"), data=b"[]")
            r = await c.get(raw("/api/userdata/workflows%2Fa.json"))
            assert r.status == 200 and await r.read() == b'{"a":3}' and r.content_type == "application/json"
            assert (await c.get(raw("/api/userdata/user.css"))).status == 404  # as ComfyUI, when absent

            listing = "/api/userdata?dir=workflows"
            assert await (await c.get(listing)).json() == ["a.json"]
            assert await (await c.get(listing + "&recurse=true")).json() == ["a.json", "deep/b.json"]
            assert await (await c.get(listing + "&recurse=true&split=true")).json() == \
                [["a.json", "a.json"], ["deep/b.json", "deep", "b.json"]]
            full = await (await c.get(listing + "&recurse=true&split=false&full_info=true")).json()
            assert [(f["path"], f["size"]) for f in full] == [("a.json", 7), ("deep/b.json", 2)]
            assert set(full[0]) >= {"path", "size", "modified"}
            assert (await c.get("/userdata")).status == 400  # dir is required
            assert await (await c.get("/userdata?dir=subgraphs&recurse=true")).json() == []  # made at start
            assert (await c.get("/userdata?dir=nothing&recurse=true")).status == 404

            v2 = await (await c.get("/api/v2/userdata?path=workflows")).json()
            assert [(e["name"], e["path"], e["type"]) for e in v2] == \
                [("deep", "workflows/deep", "directory"), ("a.json", "workflows/a.json", "file")]
            assert v2[1]["size"] == 7
            root = await (await c.get("/v2/userdata")).json()
            assert [e["name"] for e in root] == ["subgraphs", "workflows"]

            r = await c.post(raw("/api/userdata/workflows%2Fa.json/move/workflows%2Fdeep%2Fb.json?overwrite=false"))
            assert r.status == 409
            r = await c.post(raw("/api/userdata/workflows%2Fa.json/move/workflows%2Fc.json?full_info=true"))
            assert r.status == 200 and (await r.json())["path"] == "workflows/c.json"
            assert (await c.get(raw("/userdata/workflows%2Fa.json"))).status == 404
            assert (await c.post(raw("/userdata/workflows%2Fnone.json/move/workflows%2Fz.json"))).status == 404
            assert (await c.delete(raw("/api/userdata/workflows%2Fc.json"))).status == 204
            assert (await c.delete(raw("/api/userdata/workflows%2Fc.json"))).status == 404
        async with client() as c:  # after a restart the remaining file is still there
            assert await (await c.get("/userdata?dir=workflows&recurse=true")).json() == ["deep/b.json"]
        assert (user_dir / "default" / "workflows" / "deep" / "b.json").read_bytes() == b"[]"
    asyncio.run(scenario())


def test_every_traversal_is_refused(client: Callable[..., TestClient], user_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text('{"secret": true}')
    (user_dir / "default" / "workflows").mkdir(parents=True)
    (user_dir / "default" / "out").symlink_to(outside)
    (user_dir / "default" / "workflows" / "leak.json").symlink_to(outside / "secret.json")
    (user_dir / "sumi-private.json").write_text("{}")  # beside default/: never reachable
    long_name = "a" * 256 + ".json"

    async def scenario() -> None:
        async with client() as c:
            bad_names = {
                "%2e%2e%2fsumi-private.json": 400, "..%2Fsumi-private.json": 400,
                "workflows%2F..%2F..%2Fsumi-private.json": 400, "%2Fetc%2Fpasswd": 400, "C:%5Cx.json": 400,
                "a%00.json": 400, long_name: 400, "x%2F" * 520 + "y.json": 400, "%5C..%5Cx.json": 400,
                "out%2Fsecret.json": 403, "workflows%2Fleak.json": 403, "out%2Fnew.json": 403,
            }
            for name, status in bad_names.items():
                for method in ("GET", "POST", "DELETE"):
                    r = await c.request(method, raw(f"/api/userdata/{name}"), data=b"{}")
                    assert r.status == status, (method, name, r.status)
                    assert (await r.json())["error"]["type"] in ("invalid_path", "forbidden_path")
                r = await c.post(raw(f"/api/userdata/ok.json/move/{name}"))
                assert r.status == status, ("move to", name)
                r = await c.post(raw(f"/api/userdata/{name}/move/ok2.json"))
                assert r.status == status, ("move from", name)
            for query in ("dir=..", "dir=out", "dir=%2Fetc", "dir=workflows%2F..%2F..", "dir=a%00"):
                assert (await c.get(raw(f"/userdata?{query}"))).status in (400, 403), query
            for query in ("path=..", "path=out", "path=%2Fetc"):
                assert (await c.get(raw(f"/v2/userdata?{query}"))).status in (400, 403), query
            # A symlinked file that leads out is not listed, nor is a linked folder that leads out.
            assert await (await c.get("/userdata?dir=workflows&recurse=true")).json() == []
            assert [e["name"] for e in await (await c.get("/v2/userdata")).json()] == ["subgraphs", "workflows"]
        assert (outside / "secret.json").read_text() == '{"secret": true}'
        assert sorted(p.name for p in outside.iterdir()) == ["secret.json"]
        assert (user_dir / "sumi-private.json").read_text() == "{}"
        assert not (user_dir / "default" / "ok.json").exists() and not (user_dir / "default" / "ok2.json").exists()
    asyncio.run(scenario())


def test_bodies_are_bounded_and_origin_checked(client: Callable[..., TestClient], user_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userdata_module, "USERDATA_LIMIT", 1000)

    async def scenario() -> None:
        async with client() as c:
            r = await c.post(raw("/userdata/workflows%2Fbig.json"), data=b"x" * 1001)
            assert r.status == 413 and (await r.json())["error"]["type"] == "too_large"

            async def chunks() -> Any:  # no Content-Length: the server counts what arrives
                for _ in range(11):
                    yield b"y" * 100
            r = await c.post(raw("/userdata/workflows%2Fstream.json"), data=chunks())
            assert r.status == 413
            assert (await c.post(raw("/userdata/workflows%2Ffits.json"), data=b"z" * 1000)).status == 200
            foreign = {"Origin": "http://evil.example"}
            for method, path in (("POST", "/userdata/workflows%2Fx.json"), ("POST", "/settings/Comfy.X"),
                                 ("GET", "/settings"), ("DELETE", "/userdata/workflows%2Ffits.json")):
                r = await c.request(method, raw(path), data=b"1", headers=foreign)
                assert r.status == 403, (method, path)
        assert sorted(p.name for p in (user_dir / "default" / "workflows").iterdir()) == ["fits.json"]
        async with client(token="s3cret") as c:
            assert (await c.get("/settings")).status == 401
            assert (await c.get("/settings", headers={"Authorization": "Bearer s3cret"})).status == 200
    asyncio.run(scenario())


def test_extensions_and_i18n(client: Callable[..., TestClient]) -> None:
    async def scenario() -> None:
        async with client() as c:
            urls = await (await c.get("/api/extensions")).json()
            assert "/extensions/sumi/runReasons.js" in urls
            r = await c.get("/extensions/sumi/runReasons.js")
            assert r.status == 200 and r.content_type == "text/javascript"
            assert "registerExtension" in await r.text()
            assert (await c.get(raw("/extensions/sumi/..%2F..%2Fserver.py"))).status in (400, 404)
            assert (await c.get("/extensions/sumi/missing.js")).status == 404
            assert await (await c.get("/api/i18n")).json() == {}
    asyncio.run(scenario())
