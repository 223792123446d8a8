"""Subgraph workflows over /prompt: the editor graph ComfyUI's front end saves (three nested subgraphs, the seed
promoted to the outermost one) runs to the same pixels as the flat workflow, its events name colon paths, and
the API prompt the front end itself sent for it is served entirely from the cache (same signatures)."""
from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from .conftest import Running, run_prompt, txt2img

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "subgraphs" / "frontend_nested3.json"


def flat_equivalent() -> dict[str, Any]:
    prompt = txt2img(seed=7, steps=3, text="a watercolor painting of a lighthouse at dawn, (soft light:1.2)")
    prompt["9"]["inputs"]["filename_prefix"] = "sg"
    return prompt


async def pixels(session: aiohttp.ClientSession, url: str, messages: list[dict[str, Any]]) -> np.ndarray:
    image = next(m["data"] for m in messages if m["type"] == "executed")["output"]["images"][0]
    async with session.get(f"{url}/view", params=image) as r:
        assert r.status == 200
        with Image.open(io.BytesIO(await r.read())) as img:
            return np.asarray(img.convert("RGB"))


def test_subgraph_workflow_runs_to_the_flat_pixels(server: Running) -> None:
    fixture = json.loads(FIXTURE.read_text())

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            _, flat_messages = await run_prompt(s, server.url, flat_equivalent(), "flat")
            flat = await pixels(s, server.url, flat_messages)
            async with s.post(f"{server.url}/free", json={"free_memory": True}) as r:
                assert r.status == 200
            _, messages = await run_prompt(s, server.url, fixture["workflow"], "nested")
            assert np.array_equal(await pixels(s, server.url, messages), flat)
            ran = [m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]]
            assert ran == ["4", "12:11:5", "12:11:10:6", "12:11:10:7", "12:11:3", "12:8", "9"]  # by path
            states = [m["data"]["nodes"] for m in messages if m["type"] == "progress_state"][-1]
            assert states["12:11:3"]["display_node_id"] == "12:11:3"
            assert states["12:11:3"]["parent_node_id"] == "12:11"
            # What the front end itself sends for this graph: every node already cached under its signature.
            _, again = await run_prompt(s, server.url, fixture["output"], "api")
            cached = next(m["data"]["nodes"] for m in again if m["type"] == "execution_cached")
            assert set(cached) == set(fixture["output"])
            assert not [m for m in again if m["type"] == "executing" and m["data"]["node"]]
    asyncio.run(scenario())
