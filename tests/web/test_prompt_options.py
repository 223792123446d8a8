"""POST /prompt's options as ComfyUI's front end and clients send them, against the real server.

Proves: a client-chosen prompt_id (a UUID) is the id of the run, its events and its history entry; sending it
again is refused clearly and queues nothing; malformed ids are refused; `partial_execution_targets` runs only
the named outputs and what they need (the other branch never executes and has no output), a target that is
not an output leaves nothing to run, an unknown target is named; an unknown `extra_data.preview_method` is
refused.
"""
from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp

from .conftest import Running, run_prompt

TWO_BRANCHES = {
    "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "left"}},
    "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 64, "batch_size": 1}},
    "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "right"}},
}


def test_client_prompt_id_and_duplicates(server: Running) -> None:
    chosen = str(uuid.uuid4())

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            prompt_id, messages = await run_prompt(s, server.url, TWO_BRANCHES, "ids", prompt_id=chosen)
            assert prompt_id == chosen
            assert {m["data"]["prompt_id"] for m in messages if m["type"] != "status"} == {chosen}
            async with s.get(f"{server.url}/history/{chosen}") as r:
                assert list(await r.json()) == [chosen]
            async with s.get(f"{server.url}/queue") as r:
                before = await r.json()
            async with s.post(f"{server.url}/prompt", json={"prompt": TWO_BRANCHES, "prompt_id": chosen}) as r:
                assert r.status == 400
                body = await r.json()
            assert body["error"]["type"] == "duplicate_prompt_id" and chosen in body["error"]["message"]
            async with s.get(f"{server.url}/queue") as r:
                assert await r.json() == before
            for bad in (17, "", "has space", "x" * 129, "tab\there", ["list"]):
                async with s.post(f"{server.url}/prompt", json={"prompt": TWO_BRANCHES, "prompt_id": bad}) as r:
                    assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_prompt_id", bad
            async with s.post(f"{server.url}/prompt", json={"prompt": TWO_BRANCHES,
                                                             "extra_data": {"preview_method": "fancy"}}) as r:
                assert r.status == 400 and "preview_method" in (await r.json())["error"]["message"]
    asyncio.run(scenario())


def test_partial_execution_targets_run_only_what_they_need(server: Running) -> None:
    fresh = {**TWO_BRANCHES, "1": {**TWO_BRANCHES["1"], "inputs": {"width": 192, "height": 64, "batch_size": 1}},
             "3": {**TWO_BRANCHES["3"], "inputs": {"width": 256, "height": 64, "batch_size": 1}}}  # not cached

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            prompt_id, messages = await run_prompt(s, server.url, fresh, "partial", partial_execution_targets=["4"])
            ran = [m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]]
            assert ran == ["3", "4"]
            executed = [m["data"]["node"] for m in messages if m["type"] == "executed"]
            assert executed == ["4"]
            async with s.get(f"{server.url}/history/{prompt_id}") as r:
                entry = (await r.json())[prompt_id]
            assert entry["prompt"][4] == ["4"] and list(entry["outputs"]) == ["4"]

            async def refused(targets: Any) -> dict[str, Any]:
                async with s.post(f"{server.url}/prompt", json={"prompt": TWO_BRANCHES,
                                                                 "partial_execution_targets": targets}) as r:
                    assert r.status == 400, targets
                    return await r.json()
            assert (await refused(["3"]))["error"]["type"] == "prompt_no_outputs"  # not an output node
            missing = await refused(["4", "99"])
            assert missing["error"]["type"] == "invalid_prompt" and "99" in missing["error"]["message"]
            assert (await refused("4"))["error"]["type"] == "invalid_request"
    asyncio.run(scenario())
