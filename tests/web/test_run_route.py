"""`POST /run/{name}`: a shipped component run as a function over HTTP: JSON inputs in, output files with /view
URLs out (or the PNG itself with `Accept: image/png`); bad inputs are a 400 naming the component input."""
from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
from PIL import Image

from .conftest import Running, run_prompt

EDITOR = Path(__file__).resolve().parents[1] / "fixtures" / "subgraphs" / "frontend_component.json"

INPUTS = {"prompt": "a red barn", "width": 64, "height": 64, "steps": 2, "seed": 3}


def test_run_a_component_as_a_function(server: Running) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{server.url}/run/txt2img_tiny", json=INPUTS) as r:
                assert r.status == 200, await r.text()
                answer = await r.json()
            (image,) = answer["outputs"]["image"]
            assert image["filename"].startswith("txt2img_tiny_image_") and image["type"] == "output"
            async with s.get(server.url + image["url"]) as r:
                with Image.open(io.BytesIO(await r.read())) as img:
                    assert img.size == (64, 64)
                    viewed = img.tobytes()
            async with s.post(f"{server.url}/api/run/txt2img_tiny@1", json=INPUTS,
                              headers={"Accept": "image/png"}) as r:
                assert r.status == 200 and r.content_type == "image/png"
                with Image.open(io.BytesIO(await r.read())) as img:
                    assert img.tobytes() == viewed  # same inputs, same pixels (and served from the cache)
            async with s.post(f"{server.url}/run/txt2img_tiny", json={**INPUTS, "steps": 0}) as r:
                assert r.status == 400
                (err,) = (await r.json())["node_errors"]["1"]["errors"]
                assert err["type"] == "value_smaller_than_min" and err["extra_info"]["input_name"] == "steps"
            async with s.post(f"{server.url}/run/txt2img_tiny", json={"colour": "red"}) as r:
                assert r.status == 400 and "has no input 'colour'" in (await r.json())["error"]["message"]
            async with s.post(f"{server.url}/run/nothing_here", json={}) as r:
                assert r.status == 404
            # The same component placed in ComfyUI's own editor and queued from there: the same computation.
            fixture = json.loads(EDITOR.read_text())
            _, messages = await run_prompt(s, server.url, fixture["workflow"], "editor")
            cached = next(m["data"]["nodes"] for m in messages if m["type"] == "execution_cached")
            assert {"1:3", "1:8"} <= set(cached)
            ran = [m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]]
            assert ran == ["2"]  # only the Save Image with its other prefix
    asyncio.run(scenario())
