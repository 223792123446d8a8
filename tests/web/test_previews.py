"""Sampling previews, output frames and progress_state over the websocket, on real servers with the tiny model.

Proves: with `--preview-method auto` every KSampler step sends a binary PREVIEW_IMAGE frame (type 1, format 1
JPEG, an image that decodes) after that step's `progress`; a client that announced `supports_preview_metadata`
in its first `feature_flags` message gets type 4 frames with the node/prompt metadata JSON instead (and the
server's feature_flags reply and /features say it supports them); `--preview-method none` sends no frames
unless the prompt's `extra_data.preview_method` asks; progress_state follows the sampler from running through
every step to finished. Without --preview-method (the default) only a client that asked gets previews: a
client collecting binary frames as its outputs (ComfyUI's SaveImageWebsocket pattern) gets exactly its images,
PNGs equal to what SaveImage wrote, and nothing else; one that asked (feature flags or extra_data) gets the
previews too, and `preview_method: none` turns them off for that prompt.
"""
from __future__ import annotations

import asyncio
import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

import main
from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore
from nodes import build_registry, paths
from web import ServerConfig, create_app

from .conftest import Running, make_base, start_server, txt2img

STEPS = 3


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[dict[str, Running]]:
    """Two servers on one base directory, built as `main.py serve --preview-method auto|none` builds them."""
    saved = paths.FOLDERS
    base = make_base(tmp_path_factory.mktemp("previews"), tiny_checkpoint)
    paths.configure(base)
    for folder in (paths.FOLDERS.input, paths.FOLDERS.output):
        folder.mkdir(parents=True, exist_ok=True)
    running: dict[str, Running] = {}
    try:
        for method in ("auto", "none", "default"):
            argv = ["serve"] if method == "default" else ["serve", "--preview-method", method]
            args = main.build_parser().parse_args(argv)
            registry = build_registry()
            dispatcher = LocalDispatcher(PromptStore(base / "user" / f"{method}.db"),
                                         main.serve_executor(args, registry))
            config = ServerConfig(preview_method=args.preview_method)
            running[method] = start_server(create_app(dispatcher, registry, config), dispatcher, base)
        yield running
    finally:
        for server in running.values():
            server.stop()
            server.dispatcher.store.close()
        paths.FOLDERS = saved


async def run_collecting(session: aiohttp.ClientSession, url: str, client_id: str, seed: int,
                         features: dict[str, Any] | None = None, prompt: dict[str, Any] | None = None,
                         **body: Any) -> tuple[str, list[Any], dict[str, Any] | None]:
    """(prompt_id, this prompt's text messages and binary frames in arrival order, the feature_flags reply)."""
    async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "status"
        reply = None
        if features is not None:
            await ws.send_json({"type": "feature_flags", "data": features})
            while reply is None:
                message = await ws.receive_json(timeout=10)
                reply = message["data"] if message["type"] == "feature_flags" else None
        prompt = prompt or txt2img(seed=seed, text=f"preview {client_id}", steps=STEPS)
        async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id, **body}) as r:
            assert r.status == 200, await r.text()
            prompt_id = (await r.json())["prompt_id"]
        received: list[Any] = []
        while True:
            msg = await ws.receive(timeout=120)
            if msg.type == aiohttp.WSMsgType.BINARY:
                received.append(msg.data)
                continue
            message = json.loads(msg.data)
            if message["data"].get("prompt_id") != prompt_id:
                continue
            received.append(message)
            if message["type"] == "executing" and message["data"]["node"] is None:
                return prompt_id, received, reply


def frames_of(received: list[Any]) -> list[bytes]:
    return [m for m in received if isinstance(m, bytes)]


def decode_jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "JPEG" and image.mode == "RGB"
    return image


def test_each_sampler_step_sends_a_jpeg_preview_frame(servers: dict[str, Running]) -> None:
    async def scenario() -> tuple[str, list[Any]]:
        async with aiohttp.ClientSession() as s:
            prompt_id, received, _ = await run_collecting(s, servers["auto"].url, "plain", seed=21)
            return prompt_id, received

    prompt_id, received = asyncio.run(scenario())
    frames = frames_of(received)
    assert len(frames) == STEPS
    for frame in frames:
        assert struct.unpack(">II", frame[:8]) == (1, 1)  # PREVIEW_IMAGE, JPEG
        assert decode_jpeg(frame[8:]).size == (8, 8)  # the 64×64 image's latent: one preview pixel per 8×8
    # Each step: progress_state, progress, then that step's preview.
    kinds = ["frame" if isinstance(m, bytes) else (m["type"], m["data"].get("node")) for m in received]
    sampler, decode = kinds.index(("executing", "3")), kinds.index(("executing", "8"))
    steps = [k for k in kinds[sampler:decode] if k in (("progress", "3"), "frame")]
    assert steps == [("progress", "3"), "frame"] * STEPS
    assert all(sampler < i < decode for i, k in enumerate(kinds) if k == "frame")
    progress = [m["data"] for m in received if isinstance(m, dict) and m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"], p["prompt_id"]) for p in progress] == \
        [(i, STEPS, "3", prompt_id) for i in range(1, STEPS + 1)]


def test_progress_state_follows_the_sampler_over_the_websocket(servers: dict[str, Running]) -> None:
    async def scenario() -> tuple[str, list[Any]]:
        async with aiohttp.ClientSession() as s:
            prompt_id, received, _ = await run_collecting(s, servers["auto"].url, "states", seed=22)
            return prompt_id, received

    prompt_id, received = asyncio.run(scenario())
    messages = [m for m in received if isinstance(m, dict)]
    states = [m["data"] for m in messages if m["type"] == "progress_state"]
    assert all(s["prompt_id"] == prompt_id for s in states)
    sampler = [(s["nodes"]["3"]["state"], s["nodes"]["3"]["value"], s["nodes"]["3"]["max"])
               for s in states if "3" in s["nodes"]]
    assert sampler[:STEPS + 2] == [("running", 0.0, 1.0), *[("running", i, STEPS) for i in range(1, STEPS + 1)],
                                   ("finished", STEPS, STEPS)]
    assert set(sampler[STEPS + 2:]) == {("finished", STEPS, STEPS)}
    entry = next(s["nodes"]["3"] for s in states if "3" in s["nodes"])
    assert entry == {"value": 0.0, "max": 1.0, "state": "running", "node_id": "3", "prompt_id": prompt_id,
                     "display_node_id": "3", "parent_node_id": None, "real_node_id": "3"}
    # The running state comes before the sampler's executing message, finished after its last step.
    kinds = [(m["type"], m["data"].get("node")) for m in messages]
    first = next(i for i, m in enumerate(messages) if m["type"] == "progress_state"
                 and m["data"]["nodes"].get("3", {}).get("state") == "running")
    assert kinds[first + 1] == ("executing", "3")
    done = next(i for i, m in enumerate(messages) if m["type"] == "progress_state"
                and m["data"]["nodes"].get("3", {}).get("state") == "finished")
    assert kinds[done - 1] == ("progress", "3") and messages[done - 1]["data"]["value"] == STEPS
    ran = [node for kind, node in kinds if kind == "executing" and node]
    assert "3" in ran and {n: v["state"] for n, v in states[-1]["nodes"].items()} == dict.fromkeys(ran, "finished")


def test_preview_metadata_frames_after_feature_flags(servers: dict[str, Running]) -> None:
    async def scenario() -> tuple[str, list[Any], dict[str, Any] | None, dict[str, Any]]:
        async with aiohttp.ClientSession() as s:
            prompt_id, received, reply = await run_collecting(
                s, servers["auto"].url, "meta", seed=23, features={"supports_preview_metadata": True})
            async with s.get(f"{servers['auto'].url}/features") as r:
                features = await r.json()
            return prompt_id, received, reply, features

    prompt_id, received, reply, features = asyncio.run(scenario())
    assert reply is not None and reply["supports_preview_metadata"] is True
    assert features["supports_preview_metadata"] is True
    frames = frames_of(received)
    assert len(frames) == STEPS
    for frame in frames:
        kind, length = struct.unpack(">II", frame[:8])
        assert kind == 4  # PREVIEW_IMAGE_WITH_METADATA
        metadata = json.loads(frame[8:8 + length])
        assert metadata == {"node_id": "3", "prompt_id": prompt_id, "display_node_id": "3", "parent_node_id": None,
                            "real_node_id": "3", "image_type": "image/jpeg"}
        assert decode_jpeg(frame[8 + length:]).size == (8, 8)


def test_preview_method_none_sends_no_frames_unless_the_prompt_asks(servers: dict[str, Running]) -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        async with aiohttp.ClientSession() as s:
            _, quiet, _ = await run_collecting(s, servers["none"].url, "quiet", seed=24,
                                               features={"supports_preview_metadata": True})
            _, asked, _ = await run_collecting(s, servers["none"].url, "asks", seed=25,
                                               extra_data={"preview_method": "auto"})
            return quiet, asked

    quiet, asked = asyncio.run(scenario())
    assert frames_of(quiet) == []
    assert [m["data"]["value"] for m in quiet if m["type"] == "progress"] == list(range(1, STEPS + 1))
    assert [struct.unpack(">II", f[:8]) for f in frames_of(asked)] == [(1, 1)] * STEPS


def websocket_outputs(seed: int, batch: int = 2) -> dict[str, Any]:
    """txt2img whose images go to the websocket (node "20") and to a file (node "9")."""
    prompt = txt2img(seed=seed, text="websocket outputs", steps=STEPS)
    prompt["5"]["inputs"]["batch_size"] = batch
    prompt["20"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}}
    return prompt


def output_frames(received: list[Any], node: str) -> list[bytes]:
    """The binary frames received while `node` was executing: how ComfyUI's websocket examples read outputs."""
    current, frames = None, []
    for message in received:
        if isinstance(message, bytes):
            if current == node:
                frames.append(message)
        elif message["type"] == "executing":
            current = message["data"]["node"]
    return frames


def test_default_sends_outputs_but_previews_only_to_clients_that_ask(servers: dict[str, Running]) -> None:
    url = servers["default"].url

    async def scenario() -> dict[str, tuple[str, list[Any]]]:
        out = {}
        async with aiohttp.ClientSession() as s:
            for name, features, extra in (("script", None, None), ("flags", {"supports_preview_metadata": True}, None),
                                          ("extra", None, {"preview_method": "auto"}),
                                          ("off", {"supports_preview_metadata": True}, {"preview_method": "none"})):
                body = {"extra_data": extra} if extra else {}
                prompt_id, received, _ = await run_collecting(s, url, name, seed=30 + len(out), features=features,
                                                              prompt=websocket_outputs(30 + len(out)), **body)
                out[name] = (prompt_id, received)
            async with s.get(f"{url}/history/{out['script'][0]}") as r:
                saved = (await r.json())[out["script"][0]]["outputs"]["9"]["images"]
        out["saved"] = ("", saved)
        return out

    runs = asyncio.run(scenario())
    script = runs["script"][1]
    frames = frames_of(script)
    assert len(frames) == 2 and output_frames(script, "20") == frames  # exactly its two images, nothing else
    for frame, record in zip(frames, runs["saved"][1], strict=True):
        assert struct.unpack(">II", frame[:8]) == (1, 2)  # PREVIEW_IMAGE, PNG
        with Image.open(io.BytesIO(frame[8:])) as sent, \
                Image.open(paths.FOLDERS.output / record["subfolder"] / record["filename"]) as written:
            assert sent.format == "PNG" and sent.size == (64, 64)
            assert sent.convert("RGB").tobytes() == written.convert("RGB").tobytes()

    flags = frames_of(runs["flags"][1])
    heads = [struct.unpack(">II", f[:8]) for f in flags]
    assert [h[0] for h in heads] == [4] * (STEPS + 2)  # the previews, then its two images, all with metadata
    images = flags[STEPS:]
    for frame in images:
        length = struct.unpack(">I", frame[4:8])[0]
        assert json.loads(frame[8:8 + length])["image_type"] == "image/png"
        assert json.loads(frame[8:8 + length])["node_id"] == "20"
    assert output_frames(runs["flags"][1], "20") == images

    extra = frames_of(runs["extra"][1])
    assert [struct.unpack(">II", f[:8]) for f in extra] == [(1, 1)] * STEPS + [(1, 2)] * 2
    off = frames_of(runs["off"][1])
    assert [struct.unpack(">II", f[:8])[0] for f in off] == [4, 4]  # its images only: no previews


@pytest.mark.parametrize(("server", "extra", "want"), [
    (None, {"preview_method": "taesd"}, "taesd"),  # a prompt's own kind reaches the nodes
    (None, {"preview_method": "latent2rgb"}, "latent2rgb"),
    ("taesd", {"preview_method": "none"}, False),
    ("latent2rgb", {"preview_method": "default"}, True),  # "default": the server's kind
    ("none", {}, False),
    (None, {}, False),  # a script that asked for nothing
])
def test_a_prompt_names_its_preview_kind_or_takes_the_servers(server: str | None, extra: dict[str, Any],
                                                              want: bool | str) -> None:
    from web.hub import Hub

    hub = Hub(None, {}, preview_method=server)
    assert hub.preview_choice(extra) == want
