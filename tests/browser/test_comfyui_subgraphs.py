"""Subgraphs and components in ComfyUI's own front end served by Sumi (`--front-end comfyui`), in Chromium.

Proves: the front end's editor graph with three nested subgraphs (tests/fixtures/subgraphs) loads with
`app.loadGraphData`, the prompt it builds for it is the one in the fixture, and its own Queue runs it on Sumi
to a completed job whose nodes carry colon-path ids; a subgraph made live with `convertToSubgraph` in the
served page runs too; Sumi's component node type can be placed from /object_info and queued.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodes import paths
from tests.web.conftest import REPO, make_base

from .test_comfyui_frontend import get_json, open_front_end, serve_comfyui, small_txt2img, wait_for_job

FIXTURE = REPO / "tests" / "fixtures" / "subgraphs" / "frontend_nested3.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Path]:
    saved = paths.FOLDERS
    root = make_base(tmp_path_factory.mktemp("comfyui-subgraphs"), tiny_checkpoint)
    paths.configure(root)
    for folder in (paths.FOLDERS.input, paths.FOLDERS.output):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        paths.FOLDERS = saved


def test_official_front_end_runs_subgraphs_and_components_on_sumi(browser: Any, base: Path) -> None:
    fixture = json.loads(FIXTURE.read_text())
    server, dispatcher = serve_comfyui(base)
    try:
        context, page, watch = open_front_end(browser, server.url)
        page.evaluate("graph => app.loadGraphData(graph, true, true, 'nested')", fixture["workflow"])
        page.wait_for_function("app.graph._nodes.length === 3")  # loader, the outer instance, Save Image
        built = page.evaluate("async () => (await app.graphToPrompt()).output")
        assert {k: (v["class_type"], v["inputs"]) for k, v in built.items()} == \
            {k: (v["class_type"], v["inputs"]) for k, v in fixture["output"].items()}
        page.evaluate("app.queuePrompt(0, 1)")
        job = wait_for_job(server.url, 1)[0]
        assert job["status"] == "completed", job
        detail = get_json(f"{server.url}/api/jobs/{job['id']}")
        assert "12:11:3" in json.dumps(detail)
        page.wait_for_function("window.sumiRunReasons && window.sumiRunReasons.has('12:11:3')", timeout=30_000)

        # A subgraph made in the served page itself, then a component placed as a node.
        page.evaluate("prompt => app.loadApiJson(prompt, 'txt2img.json')", small_txt2img())
        page.wait_for_function("app.graph._nodes.length === 7")
        page.evaluate("() => { app.graph.convertToSubgraph(new Set([6, 7].map(i => app.graph.getNodeById(i)))); }")
        page.wait_for_function("app.graph._nodes.length === 6")
        page.evaluate("app.queuePrompt(0, 1)")
        assert wait_for_job(server.url, 2)[0]["status"] == "completed"
        page.evaluate("""() => { app.graph.clear();
            const c = LiteGraph.createNode('component/txt2img_tiny'); app.graph.add(c);
            const s = LiteGraph.createNode('SaveImage'); app.graph.add(s); c.connect(0, s, 0);
            for (const [k, v] of [['width', 64], ['height', 64], ['steps', 2]])
                c.widgets.find(w => w.name === k).value = v; }""")
        page.evaluate("app.queuePrompt(0, 1)")
        jobs = wait_for_job(server.url, 3)
        assert all(j["status"] == "completed" for j in jobs) and len(jobs) == 3
        assert watch.errors == []
        context.close()
    finally:
        server.stop()
        dispatcher.store.close()
