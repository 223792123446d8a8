"""`POST /prompt` with the editor's model manifest: a model renamed on this disk is found by its hash and the
prompt runs with it; a missing model is a 400 naming the loader node, the file, its hash and the folders
searched, before anything is queued."""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp

from .conftest import CKPT, Running, run_prompt, txt2img


def test_renamed_model_found_by_hash_and_missing_model_refused(server: Running, tiny_checkpoint: Path) -> None:
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    manifest = [{"name": "old_name.safetensors", "directory": "checkpoints", "hash": digest, "hash_type": "sha256",
                 "url": "https://example.org/tiny.safetensors"}]
    prompt = txt2img()
    prompt["4"]["inputs"]["ckpt_name"] = "old_name.safetensors"
    extra = {"extra_pnginfo": {"workflow": {"nodes": [], "links": [], "models": manifest}}}

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            prompt_id, messages = await run_prompt(s, server.url, prompt, "m", extra_data=extra)
            assert messages[-2]["type"] == "execution_success"
            async with s.get(f"{server.url}/history/{prompt_id}") as r:
                ran = (await r.json())[prompt_id]["prompt"][2]
            assert ran["4"]["inputs"]["ckpt_name"] == CKPT  # the file this disk has, found by its hash
            gone = [{**manifest[0], "hash": "0" * 64}]
            body = {"prompt": prompt, "extra_data": {"extra_pnginfo": {"workflow": {"models": gone}}}}
            async with s.post(f"{server.url}/prompt", json=body) as r:
                assert r.status == 400
                answer = await r.json()
            (error,) = answer["node_errors"]["4"]["errors"]
            assert error["type"] == "missing_model"
            assert error["extra_info"]["expected"] == {"name": "old_name.safetensors", "directory": "checkpoints",
                                                      "sha256": "0" * 64,
                                                      "url": "https://example.org/tiny.safetensors"}
            assert str(server.base / "models" / "checkpoints") in error["extra_info"]["hint"]
            assert answer["node_errors"]["4"]["dependent_outputs"] == ["9"]
    asyncio.run(scenario())
