"""The HTTP/websocket API as a ComfyUI script sees it, against a real server on the tiny model.

Proves: a txt2img round trip (ComfyUI's event order on the websocket, the history entry shape, a 64×64 PNG
from /view); the signature cache across prompts (identical → everything cached, nothing executes; a new
seed → only KSampler, VAEDecode, SaveImage run); every validation error at once in ComfyUI's 400 shape; a
node failing at run time is an execution_error and the next prompt still runs; /view and uploads refuse
traversal (`..`, absolute, encoded, NUL, symlinks out); cross-origin and `Origin: null` requests are
refused; upload de-duplication and LoadImage of an upload; credentials never come back from /queue or
/history; queue editing and priority; the information routes, also under /api.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from yarl import URL

from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore
from executor.runner import Executor
from nodes import build_registry, paths
from web import ServerConfig, create_app

from .conftest import Running, run_prompt, txt2img

ALL_NODES = ["3", "4", "5", "6", "7", "8", "9"]


def png_bytes(size: tuple[int, int] = (40, 24), color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def types_of(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


def test_txt2img_round_trip(server: Running) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            prompt_id, messages = await run_prompt(s, server.url, txt2img(seed=1, text="round trip"), "client-a")
            kinds = [t for t in types_of(messages) if t != "status"]
            assert kinds[:2] == ["execution_start", "execution_cached"]
            assert kinds[-4:] == ["executed", "progress_state", "execution_success", "executing"]
            last_state = [m for m in messages if m["type"] == "progress_state"][-1]["data"]
            assert last_state["prompt_id"] == prompt_id and last_state["nodes"]["9"]["state"] == "finished"
            ran = [m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]]
            assert ran[-3:] == ["3", "8", "9"]  # sampler, decode, save run last, in order
            progress = [m["data"] for m in messages if m["type"] == "progress"]
            assert [(p["value"], p["max"], p["node"]) for p in progress] == [(1, 2, "3"), (2, 2, "3")]
            assert kinds.index("progress") > kinds.index("executing")
            executed = next(m["data"] for m in messages if m["type"] == "executed")
            image = executed["output"]["images"][0]
            assert executed["node"] == "9" and image["type"] == "output"

            async with s.get(f"{server.url}/history/{prompt_id}") as r:
                history = await r.json()
            entry = history[prompt_id]
            assert set(entry) == {"prompt", "outputs", "status", "meta"}
            number, pid, stored_prompt, extra, outputs = entry["prompt"]
            assert pid == prompt_id and isinstance(number, int) and outputs == ["9"]
            assert stored_prompt["3"]["inputs"]["seed"] == 1 and extra == {"client_id": "client-a"}
            assert entry["outputs"] == {"9": executed["output"]}
            assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
            assert [m[0] for m in entry["status"]["messages"]] == \
                ["execution_start", "execution_cached", "execution_success"]
            assert entry["meta"]["9"]["node_id"] == "9"

            async with s.get(f"{server.url}/view", params={**image, "type": "output"}) as r:
                assert r.status == 200 and r.content_type == "image/png"
                data = await r.read()
            with Image.open(io.BytesIO(data)) as img:
                assert img.format == "PNG" and img.size == (64, 64)
                assert json.loads(img.info["prompt"])["3"]["inputs"]["seed"] == 1
            async with s.get(f"{server.url}/api/view", params={**image, "preview": "jpeg;80"}) as r:
                assert r.content_type == "image/jpeg"
                assert Image.open(io.BytesIO(await r.read())).size == (64, 64)
            async with s.get(f"{server.url}/view", params={**image, "channel": "a"}) as r:
                assert Image.open(io.BytesIO(await r.read())).getchannel("A").getextrema() == (255, 255)
    asyncio.run(scenario())


def test_cache_lives_across_prompts(server: Running) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            prompt = txt2img(seed=7, text="cache check")
            await run_prompt(s, server.url, prompt, "client-b")
            _, again = await run_prompt(s, server.url, prompt, "client-b")
            cached = next(m["data"]["nodes"] for m in again if m["type"] == "execution_cached")
            assert sorted(cached) == ALL_NODES
            assert [m for m in again if m["type"] == "executing" and m["data"]["node"]] == []
            assert [m["data"]["node"] for m in again if m["type"] == "executed"] == ["9"]  # re-sent from cache

            prompt["3"]["inputs"]["seed"] = 8
            _, reseeded = await run_prompt(s, server.url, prompt, "client-b")
            ran = [m["data"]["node"] for m in reseeded if m["type"] == "executing" and m["data"]["node"]]
            assert ran == ["3", "8", "9"]
            cached = next(m["data"]["nodes"] for m in reseeded if m["type"] == "execution_cached")
            assert sorted(cached) == ["4", "5", "6", "7"]
    asyncio.run(scenario())


def test_events_go_only_to_the_submitting_client(server: Running) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{server.url}/ws?clientId=bystander") as other:
            await other.receive_json(timeout=10)
            await run_prompt(s, server.url, txt2img(seed=11, text="private"), "owner")
            seen = []
            while True:
                try:
                    seen.append((await other.receive_json(timeout=0.5))["type"])
                except TimeoutError:
                    break
            assert seen and set(seen) == {"status"}  # queue changes are broadcast, execution events are not
    asyncio.run(scenario())


def test_validation_errors_all_at_once(server: Running) -> None:
    prompt = txt2img()
    prompt["3"]["inputs"].update(steps=0, sampler_name="no_such_sampler")
    del prompt["6"]["inputs"]["text"]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{server.url}/prompt", json={"prompt": prompt}) as r:
                assert r.status == 400
                body = await r.json()
            assert body["error"]["type"] == "prompt_outputs_failed_validation"
            assert set(body["error"]) == {"type", "message", "details", "extra_info"}
            errors = body["node_errors"]
            assert set(errors) == {"3", "6"}
            assert {e["type"] for e in errors["3"]["errors"]} == {"value_smaller_than_min", "value_not_in_list"}
            assert errors["6"]["errors"][0]["type"] == "required_input_missing"
            assert errors["6"]["errors"][0]["extra_info"]["input_name"] == "text"
            for entry in errors.values():
                assert entry["dependent_outputs"] == ["9"]
                for err in entry["errors"]:
                    assert set(err) == {"type", "message", "details", "extra_info"}
            assert errors["3"]["class_type"] == "KSampler"

            async with s.post(f"{server.url}/prompt", json={"client_id": "x"}) as r:
                assert r.status == 400
                assert await r.json() == {"error": {"type": "no_prompt", "message": "No prompt provided",
                                                    "details": "No prompt provided", "extra_info": {}},
                                          "node_errors": {}}
            async with s.post(f"{server.url}/prompt", data=b"{not json") as r:
                assert r.status == 400
            async with s.post(f"{server.url}/prompt", json={"prompt": {"1": {"class_type": "Nope"}}}) as r:
                assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_prompt"
    asyncio.run(scenario())


def test_node_error_then_next_prompt_runs(server: Running) -> None:
    (paths.FOLDERS.input / "broken.png").write_bytes(b"not really a png")
    broken = {"1": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            prompt_id, messages = await run_prompt(s, server.url, broken, "client-c")
            error = next(m["data"] for m in messages if m["type"] == "execution_error")
            assert error["node_id"] == "1" and error["node_type"] == "LoadImage"
            assert error["exception_type"].endswith("UnidentifiedImageError") and error["traceback"]
            async with s.get(f"{server.url}/history/{prompt_id}") as r:
                status = (await r.json())[prompt_id]["status"]
            assert status["status_str"] == "error" and status["completed"] is False
            assert status["messages"][-1][0] == "execution_error"
            _, after = await run_prompt(s, server.url, txt2img(seed=12, text="after the error"), "client-c")
            assert "execution_success" in types_of(after)
    asyncio.run(scenario())


def test_view_refuses_traversal(server: Running, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    out = paths.FOLDERS.output
    out.mkdir(parents=True, exist_ok=True)
    (out / "leak.txt").symlink_to(secret)
    (out / "leakdir").symlink_to(tmp_path, target_is_directory=True)
    (out / "fine.txt").write_text("fine")
    raw = ["filename=../secret.txt", "filename=%2e%2e%2fsecret.txt", "filename=%2Fetc%2Fpasswd",
           "filename=x&subfolder=..", "filename=passwd&subfolder=%2Fetc", "filename=fine.txt%00.png",
           "filename=secret.txt&subfolder=leakdir", "filename=leak.txt", "filename=fine.txt&type=elsewhere",
           "filename=..%5C..%5Csecret.txt", "filename=fine.txt&subfolder=%2e%2e%2F..%2F"]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            for query in raw:
                async with s.get(URL(f"{server.url}/view?{query}", encoded=True)) as r:
                    body = await r.text()
                    assert r.status in (400, 403), (query, r.status)
                    assert "TOP-SECRET" not in body and "root:" not in body
            async with s.get(f"{server.url}/view?filename=fine.txt") as r:
                assert r.status == 200 and await r.text() == "fine"
            async with s.get(f"{server.url}/view?filename=missing.png") as r:
                assert r.status == 404
    asyncio.run(scenario())


def test_cross_origin_refused(server: Running) -> None:
    port = URL(server.url).port

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port + 1}", "http://localhost.evil"):
                async with s.post(f"{server.url}/prompt", json={"prompt": txt2img()},
                                  headers={"Origin": origin}) as r:
                    assert r.status == 403, origin
                async with s.get(f"{server.url}/queue", headers={"Origin": origin}) as r:
                    assert r.status == 403, origin
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await s.ws_connect(f"{server.url}/ws", headers={"Origin": "http://evil.example"})
            async with s.get(f"{server.url}/prompt", headers={"Origin": f"http://127.0.0.1:{port}"}) as r:
                assert r.status == 200
    asyncio.run(scenario())


def test_upload_dedupe_and_load_image(server: Running) -> None:
    first, other = png_bytes(), png_bytes(color=(10, 200, 10))

    def form(data: bytes, name: str = "upload.png", **fields: str) -> aiohttp.FormData:
        f = aiohttp.FormData()
        f.add_field("image", data, filename=name, content_type="image/png")
        for key, value in fields.items():
            f.add_field(key, value)
        return f

    async def upload(s: aiohttp.ClientSession, data: bytes, **kw: Any) -> tuple[int, Any]:
        async with s.post(f"{server.url}/upload/image", data=form(data, **kw)) as r:
            return r.status, await (r.json() if r.content_type == "application/json" else r.text())

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            assert await upload(s, first) == (200, {"name": "upload.png", "subfolder": "", "type": "input"})
            assert (await upload(s, first))[1]["name"] == "upload.png"  # same bytes: reused
            assert (await upload(s, other))[1]["name"] == "upload (1).png"  # other bytes: a new name
            assert (await upload(s, other))[1]["name"] == "upload (1).png"
            assert (await upload(s, other, overwrite="true"))[1]["name"] == "upload.png"
            assert (paths.FOLDERS.input / "upload.png").read_bytes() == other
            assert (await upload(s, b"hello, not an image"))[0] == 400
            boundary = "sumi-test-boundary"  # written by hand: aiohttp's client would percent-encode the name
            raw = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="../../escape.png"'
                   f'\r\nContent-Type: image/png\r\n\r\n').encode() + first + f"\r\n--{boundary}--\r\n".encode()
            async with s.post(f"{server.url}/upload/image", data=raw,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}) as r:
                assert (await r.json())["name"] == "escape.png"
            assert (paths.FOLDERS.input / "escape.png").exists() and not (server.base / "escape.png").exists()
            assert (await upload(s, first, subfolder="../..", name="x.png"))[0] == 400
            assert (await upload(s, first, subfolder="pets", name="cat.png"))[1] == \
                {"name": "cat.png", "subfolder": "pets", "type": "input"}

            mask = png_bytes(size=(40, 24), color=(0, 0, 0, 77), mode="RGBA")
            ref = json.dumps({"filename": "upload.png", "subfolder": "", "type": "input"})
            f = form(mask, name="masked.png", original_ref=ref)
            async with s.post(f"{server.url}/upload/mask", data=f) as r:
                assert r.status == 200 and (await r.json())["name"] == "masked.png"
            with Image.open(paths.FOLDERS.input / "masked.png") as img:
                assert img.mode == "RGBA" and img.getchannel("A").getextrema() == (77, 77)
                assert img.getpixel((0, 0))[:3] == (10, 200, 10)

            prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "pets/cat.png"}},
                      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "up"}}}
            _, messages = await run_prompt(s, server.url, prompt, "client-d")
            saved = next(m["data"]["output"]["images"][0] for m in messages if m["type"] == "executed")
            async with s.get(f"{server.url}/view", params=saved) as r:
                img = Image.open(io.BytesIO(await r.read()))
                assert img.size == (40, 24) and img.getpixel((0, 0)) == (200, 30, 30)
    asyncio.run(scenario())


def test_information_routes(server: Running) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            async def get(path: str) -> Any:
                async with s.get(server.url + path) as r:
                    assert r.status == 200, path
                    return await r.json()

            info = await get("/object_info")
            assert "KSampler" in info and info["KSampler"]["input"]["required"]["seed"][0] == "INT"
            assert "sumi_tiny_sd15.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"][
                "ckpt_name"][0]
            assert set(await get("/api/object_info/SaveImage")) == {"SaveImage"}
            assert await get("/object_info/NoSuchNode") == {}
            stats = await get("/system_stats")
            assert stats["system"]["ram_total"] > 0 and stats["devices"][0]["type"] == "cpu"
            assert "checkpoints" in await get("/models")
            assert await get("/models/checkpoints") == ["sumi_tiny_sd15.safetensors"]
            async with s.get(f"{server.url}/models/nonsense") as r:
                assert r.status == 404
            (paths.FOLDERS.models["embeddings"][0]).mkdir(parents=True, exist_ok=True)
            (paths.FOLDERS.models["embeddings"][0] / "easyneg.safetensors").write_bytes(b"")
            assert await get("/embeddings") == ["easyneg", "sumi_tiny_sd15_embedding", "sumi_tiny_sdxl_embedding"]
            assert (await get("/features"))["max_upload_size"] == 100 * 1024 * 1024
            # The count is what the queue holds: nothing here, as every earlier prompt in this module finished
            # (test_queue_editing_and_secrets sees 4 on a server whose worker never starts).
            queue = await get("/queue")
            assert await get("/api/prompt") == await get("/prompt") == {"exec_info": {"queue_remaining": 0}}
            assert queue == {"queue_running": [], "queue_pending": []}
    asyncio.run(scenario())


@pytest.fixture
def idle(server: Running, tmp_path: Path) -> Any:
    """A second app on the same folders whose worker never starts: queued items stay put."""
    registry = build_registry()
    dispatcher = LocalDispatcher(PromptStore(tmp_path / "idle.db"), Executor(registry))
    return dispatcher, registry


def client_for(app: Any) -> Any:
    from aiohttp.test_utils import TestClient, TestServer

    return TestClient(TestServer(app))


def test_queue_editing_and_secrets(idle: Any) -> None:
    dispatcher, registry = idle
    secrets = {"auth_token_comfy_org": "TOK-1", "api_key_comfy_org": "KEY-1", "github_token": "TOK-2",
               "password": "PW-1"}

    async def scenario() -> None:
        async with client_for(create_app(dispatcher, registry, ServerConfig(start_worker=False))) as c:
            ids = []
            for i, extra in enumerate([{"extra_data": secrets}, {}, {"front": True}, {"number": 0.5}]):
                r = await c.post("/prompt", json={"prompt": txt2img(seed=i), "client_id": "q", **extra})
                assert r.status == 200
                ids.append((await r.json())["prompt_id"])
            queue = await (await c.get("/queue")).json()
            pending = queue["queue_pending"]
            assert queue["queue_running"] == []
            # numbers: 0, 1, front → -2, explicit 0.5
            assert [item[1] for item in pending] == [ids[2], ids[0], ids[3], ids[1]]
            text = json.dumps(queue)
            for value in secrets.values():
                assert value not in text
            assert pending[[item[1] for item in pending].index(ids[0])][3] == {"client_id": "q"}
            assert (await (await c.get("/prompt")).json())["exec_info"]["queue_remaining"] == 4

            r = await c.post("/prompt", json={"prompt": txt2img(), "prompt_id": ids[0]})
            assert r.status == 400 and (await r.json())["error"]["type"] == "duplicate_prompt_id"
            await c.post("/queue", json={"delete": [ids[1]]})
            assert [i[1] for i in (await (await c.get("/queue")).json())["queue_pending"]] == \
                [i for i in [item[1] for item in pending] if i != ids[1]]
            assert (await c.post("/interrupt", json={"prompt_id": ids[0]})).status == 200  # not running: no-op
            assert not dispatcher.executor.interrupt_flag.is_set()
            await c.post("/queue", json={"clear": True})
            assert (await (await c.get("/queue")).json())["queue_pending"] == []
            assert (await c.post("/free", json={"unload_models": True})).status == 200
            assert (await c.post("/history", json={"clear": True})).status == 200
    asyncio.run(scenario())


def test_secrets_absent_from_history(server: Running) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            extra = {"extra_data": {"api_key_comfy_org": "KEY-9", "auth_token_comfy_org": "TOK-9"}}
            prompt_id, _ = await run_prompt(s, server.url, txt2img(seed=9, text="secret"), "client-e", **extra)
            async with s.get(f"{server.url}/history") as r:
                text = await r.text()
            assert prompt_id in text and "KEY-9" not in text and "TOK-9" not in text
            db = server.base / "user" / "sumi.db"
            stored = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith("sumi.db"))
            assert b"KEY-9" not in stored and b"TOK-9" not in stored
    asyncio.run(scenario())


def test_token_required_off_loopback(idle: Any) -> None:
    dispatcher, registry = idle
    with pytest.raises(ValueError, match="token"):
        create_app(dispatcher, registry, ServerConfig(listen="0.0.0.0"))
    config = ServerConfig(listen="0.0.0.0", token="s3cret", start_worker=False)

    async def scenario() -> None:
        async with client_for(create_app(dispatcher, registry, config)) as c:
            for path in ("/prompt", "/queue", "/history", "/object_info", "/view?filename=x.png", "/api/prompt"):
                assert (await c.get(path)).status == 401, path
            assert (await c.post("/prompt", json={"prompt": txt2img()})).status == 401
            assert (await c.get("/prompt", headers={"Authorization": "Bearer wrong"})).status == 401
            assert (await c.get("/prompt", headers={"Authorization": "Bearer s3cret"})).status == 200
            assert (await c.get("/prompt?token=s3cret")).status == 200
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await c.ws_connect("/ws?clientId=x")
            ws = await c.ws_connect("/ws?clientId=x&token=s3cret")
            assert (await ws.receive_json(timeout=5))["type"] == "status"
            await ws.close()
    asyncio.run(scenario())


def test_cors_origin_allowed_when_configured(idle: Any) -> None:
    dispatcher, registry = idle
    config = ServerConfig(cors_origin="http://editor.example", start_worker=False)

    async def scenario() -> None:
        async with client_for(create_app(dispatcher, registry, config)) as c:
            r = await c.get("/prompt", headers={"Origin": "http://editor.example"})
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "http://editor.example"
            assert (await c.get("/prompt", headers={"Origin": "http://evil.example"})).status == 403
            assert (await c.options("/prompt", headers={"Origin": "http://editor.example"})).status == 200
    asyncio.run(scenario())


def test_loopback_detection() -> None:
    from web.security import is_loopback, same_origin

    assert ServerConfig().listen == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1,localhost") and not is_loopback("0.0.0.0")
    assert not is_loopback("127.0.0.1,192.168.1.5") and not is_loopback("myhost.lan")
    assert same_origin("http://127.0.0.1:8188", "127.0.0.1:8188") and same_origin("http://localhost", "localhost")
    assert not same_origin("http://localhost", "localhost:1")  # a missing port is the default one, 80
    assert not same_origin("null", "127.0.0.1:8188") and not same_origin("http://a.b:1", "a.bc:1")


def test_upload_size_limit(idle: Any) -> None:
    dispatcher, registry = idle
    config = ServerConfig(max_upload_size=2000, start_worker=False)

    async def scenario() -> None:
        async with client_for(create_app(dispatcher, registry, config)) as c:
            small = aiohttp.FormData()
            small.add_field("image", png_bytes(size=(4, 4)), filename="small.png", content_type="image/png")
            assert (await c.post("/upload/image", data=small)).status == 200
            big = aiohttp.FormData()
            noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
            buffer = io.BytesIO()
            noise.save(buffer, format="PNG")
            big.add_field("image", buffer.getvalue(), filename="big.png", content_type="image/png")
            assert (await c.post("/upload/image", data=big)).status == 413
            assert not (paths.FOLDERS.input / "big.png").exists()
            assert (await c.post("/upload/image", data=b"plain")).status == 400
            assert (await c.post("/prompt", json={"prompt": txt2img(), "pad": "x" * 3000})).status == 413
    asyncio.run(scenario())


def test_preview_frames_are_comfyui_binary() -> None:
    import struct

    import torch

    from web.hub import preview_frame

    frame = preview_frame(torch.rand(1, 600, 300, 3))
    assert frame is not None and struct.unpack(">II", frame[:8]) == (1, 1)  # PREVIEW_IMAGE, JPEG
    with Image.open(io.BytesIO(frame[8:])) as img:
        assert img.format == "JPEG" and img.size == (256, 512)  # fitted into 512 px


def test_editor_graph_format_is_accepted_and_kept_as_the_png_workflow(server: Running) -> None:
    ui = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "txt2img_ui.json").read_text())
    for node in ui["nodes"]:  # the shipped editor save, made tiny for the test
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"] = [64, 64, 1]
        if node["type"] == "KSampler":
            node["widgets_values"] = [5, "fixed", 2, 7.0, "euler", "normal", 1.0]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            prompt_id, messages = await run_prompt(s, server.url, ui, "client-ui")
            executed = next(m["data"] for m in messages if m["type"] == "executed")
            image = executed["output"]["images"][0]
            async with s.get(f"{server.url}/history/{prompt_id}") as r:
                stored_prompt = (await r.json())[prompt_id]["prompt"][2]
            assert stored_prompt["3"]["inputs"]["seed"] == 5 and stored_prompt["3"]["inputs"]["steps"] == 2
            async with s.get(f"{server.url}/view", params=image) as r:
                with Image.open(io.BytesIO(await r.read())) as img:
                    assert img.size == (64, 64)
                    assert json.loads(img.info["workflow"])["nodes"] == ui["nodes"]
                    assert json.loads(img.info["prompt"])["3"]["class_type"] == "KSampler"
    asyncio.run(scenario())
