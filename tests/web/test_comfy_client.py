"""A ComfyUI API script, unchanged, against a real `main.py serve` process on the tiny model.

The client (`comfy_client.py`) knows only ComfyUI's documented API. Proves, over real TCP to a separate
process: the sampler list read from /object_info; txt2img via queue_prompt → websocket `executing {node:
null}` → /history → /view gives 64×64 PNGs; an uploaded image is listed by LoadImage and an img2img
workflow runs on it; a long prompt interrupted mid-run ends with `execution_interrupted` and a history entry
that did not complete, and /queue shows it running meanwhile in the `{queue_running, queue_pending}` shape.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from .comfy_client import ComfyClient, combo_options
from .conftest import CKPT, REPO, make_base

STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[str]:
    """`main.py serve` as a child process on a fresh base directory; killed at the end."""
    base = make_base(tmp_path_factory.mktemp("comfy_client"), tiny_checkpoint)
    port = free_port()
    log = (base / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), "serve", "--port", str(port),
                             "--base-directory", str(base), "--threads", "1"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{(base / 'server.log').read_text()}")
            try:
                ComfyClient(address).system_stats()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer /system_stats:\n{(base / 'server.log').read_text()}")
                time.sleep(0.2)
        yield address
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)
        log.close()


def workflow(object_info: dict[str, Any], *, size: int = 64, steps: int = 2, seed: int = 7,
             image: str | None = None, denoise: float = 1.0) -> dict[str, Any]:
    """txt2img (or img2img from an input image) in API format, checked against the server's /object_info."""
    sampler_inputs = object_info["KSampler"]["input"]["required"]
    assert "euler" in combo_options(sampler_inputs["sampler_name"])
    assert "normal" in combo_options(sampler_inputs["scheduler"])
    assert CKPT in combo_options(object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"])
    prompt: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dawn", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": denoise, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "client", "images": ["8", 0]}},
    }
    if image is None:
        prompt["5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}
    else:
        prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        prompt["5"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    return prompt


def assert_png(data: bytes, size: tuple[int, int]) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and img.size == size


def test_txt2img_images_from_history(address: str) -> None:
    client = ComfyClient(address)
    ws = client.connect()
    try:
        ws.settimeout(60)
        hello = json.loads(ws.recv())
        assert hello["type"] == "status" and hello["data"]["sid"] == client.client_id
        images = client.get_images(ws, workflow(client.get_object_info()))
    finally:
        ws.close()
    assert list(images) == ["9"] and len(images["9"]) == 1
    assert_png(images["9"][0], (64, 64))


def test_upload_then_img2img(address: str) -> None:
    client = ComfyClient(address)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buffer, format="PNG")
    uploaded = client.upload_image(buffer.getvalue(), "client_upload.png")
    assert uploaded == {"name": "client_upload.png", "subfolder": "", "type": "input"}
    info = client.get_object_info()
    assert "client_upload.png" in combo_options(info["LoadImage"]["input"]["required"]["image"])
    ws = client.connect()
    try:
        ws.settimeout(60)
        images = client.get_images(ws, workflow(info, image="client_upload.png", denoise=0.5))
    finally:
        ws.close()
    assert len(images["9"]) == 1
    assert_png(images["9"][0], (64, 64))


def test_interrupt_long_prompt(address: str) -> None:
    client = ComfyClient(address)
    ws = client.connect()
    try:
        ws.settimeout(60)
        prompt = workflow(client.get_object_info(), size=256, steps=200, seed=99)
        queued = client.queue_prompt(prompt)
        prompt_id = queued["prompt_id"]
        assert queued["node_errors"] == {}
        while True:  # wait until the sampler is stepping
            out = ws.recv()
            message = json.loads(out) if isinstance(out, str) else {}
            if message.get("type") == "progress" and message["data"].get("prompt_id") == prompt_id:
                break
        queue = client.get_queue()
        assert set(queue) == {"queue_running", "queue_pending"}
        assert [item[1] for item in queue["queue_running"]] == [prompt_id]
        assert queue["queue_pending"] == []
        client.interrupt()
        messages = client.wait_for(ws, prompt_id)
    finally:
        ws.close()
    kinds = [m["type"] for m in messages]
    assert "execution_interrupted" in kinds and "execution_success" not in kinds
    interrupted = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
    assert interrupted["node_id"] == "3"
    progress = [m["data"]["value"] for m in messages if m["type"] == "progress"]
    assert not progress or max(progress) < 200  # stopped mid-run
    entry = client.get_history(prompt_id)[prompt_id]
    assert entry["status"]["completed"] is False and entry["outputs"] == {}
    assert client.get_queue() == {"queue_running": [], "queue_pending": []}
