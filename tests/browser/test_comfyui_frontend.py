"""ComfyUI's own front end (comfyui-frontend-package 1.58.1, as `main.py serve --front-end comfyui` serves it)
against a real Sumi server, in Debian's Chromium.

Proves: it starts with no failed /api request and no page error; its templates dialog offers Sumi's shipped
workflows and opens one as a graph whose prompt is exactly that workflow; it loads Sumi's txt2img (`app.loadApiJson`),
queues it with its own `app.queuePrompt(0, 1)`, the image comes back (the node's output, fetched from /view)
and the job is completed in `/jobs`; Sumi's extension shows why each node ran and how long it took, and
"cached" on the identical second run; a setting written through the front end and a workflow saved through
its Save command are still there after the server restarts (a new server process state, a new origin, so
nothing comes from the browser's own storage), and the saved workflow is in its workflow list.
"""
from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import main
from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore
from executor.runner import Executor
from nodes import build_registry, paths
from tests.web.conftest import REPO, Running, make_base, start_server
from web import ServerConfig, create_app

# Files the front end asks for that a fresh install does not have: ComfyUI answers 404 for them too.
ABSENT_FILES = ("/api/userdata/user.css", "/api/userdata/comfy.templates.json")
READY = "window.app && window.app.graph && window.app.extensionManager && window.app.extensionManager.workflow"


class Watch:
    """Every /api response that failed, every request that got no response, every page error."""

    def __init__(self, page: Any, url: str) -> None:
        self.url = url
        self.failed: list[str] = []
        self.errors: list[str] = []
        self.views: list[tuple[str, int, str]] = []
        page.on("response", self.on_response)
        page.on("requestfailed", self.on_failed)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def on_response(self, response: Any) -> None:
        if not response.url.startswith(self.url):
            return
        path = response.url[len(self.url):]
        if path.startswith("/api/view"):
            self.views.append((path, response.status, response.headers.get("content-type", "")))
        if path.startswith("/api/") and response.status >= 400 and path.split("?")[0] not in ABSENT_FILES:
            self.failed.append(f"{response.status} {response.request.method} {path}")

    def on_failed(self, request: Any) -> None:
        # The front end drops the bodies of some answered requests (settings writes): a response came, so it
        # is not a failure. One that never got an answer is.
        if request.url.startswith(self.url + "/api/") and request.response() is None:
            self.failed.append(f"no answer: {request.method} {request.url[len(self.url):]} ({request.failure})")


def serve_comfyui(base: Path) -> tuple[Running, LocalDispatcher]:
    registry = build_registry()
    dispatcher = LocalDispatcher(PromptStore(base / "user" / "sumi.db"), Executor(registry, previews=True))
    config = ServerConfig(front_end_root=main.front_end_folder("comfyui", None), user_directory=base / "user")
    return start_server(create_app(dispatcher, registry, config), dispatcher, base), dispatcher


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Path]:
    saved = paths.FOLDERS
    root = make_base(tmp_path_factory.mktemp("comfyui-frontend"), tiny_checkpoint)
    paths.configure(root)
    for folder in (paths.FOLDERS.input, paths.FOLDERS.output):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        paths.FOLDERS = saved


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def open_front_end(browser: Any, url: str) -> tuple[Any, Any, Watch]:
    context = browser.new_context(viewport={"width": 1400, "height": 850})
    page = context.new_page()
    watch = Watch(page, url)
    page.goto(url + "/")
    page.wait_for_function(READY, timeout=60_000)
    page.wait_for_load_state("networkidle", timeout=60_000)
    return context, page, watch


def wait_for_job(url: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = get_json(f"{url}/api/jobs?status=completed,failed,cancelled")["jobs"]
        if len(jobs) >= count:
            return jobs
        time.sleep(0.2)
    raise AssertionError(f"no finished job after 120 s: {get_json(url + '/api/jobs')}")


def small_txt2img() -> dict[str, Any]:
    prompt = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["3"]["inputs"]["steps"] = 2
    return prompt


def test_official_front_end_runs_a_workflow_and_keeps_user_data(browser: Any, base: Path) -> None:
    server, dispatcher = serve_comfyui(base)
    try:
        context, page, watch = open_front_end(browser, server.url)
        assert watch.failed == [] and watch.errors == []
        assert page.evaluate("Object.keys(LiteGraph.registered_node_types).includes('KSampler')")

        # A first start opens the templates dialog: Sumi's shipped workflows are there, and one opens as a graph.
        card = page.get_by_text("hires fix", exact=True)
        card.wait_for(timeout=30_000)
        card.click()
        page.wait_for_function("app.graph._nodes.some(n => n.type === 'LatentUpscaleBy')", timeout=30_000)
        hires = json.loads((REPO / "workflows" / "hires_fix.json").read_text())
        assert sorted(page.evaluate("app.graph._nodes.map(n => n.type)")) == \
            sorted(n["class_type"] for n in hires.values())
        prompt = page.evaluate("app.graphToPrompt().then(p => p.output)")
        assert {k: v["inputs"] for k, v in prompt.items()} == {k: v["inputs"] for k, v in hires.items()}

        page.evaluate("prompt => app.loadApiJson(prompt, 'txt2img.json')", small_txt2img())
        page.wait_for_function("app.graph._nodes.length === 7")
        # The front end re-rolls the seed after each queue by default; fixed, the second run is all cached.
        page.evaluate("app.graph.getNodeById(3).widgets.find(w => w.name === 'control_after_generate').value = "
                      "'fixed'")
        page.evaluate("app.queuePrompt(0, 1)")
        job = wait_for_job(server.url, 1)[0]
        assert job["status"] == "completed" and job["outputs_count"] == 1
        image = job["preview_output"]
        page.wait_for_function("app.nodeOutputs && app.nodeOutputs['9']", timeout=30_000)
        assert page.evaluate("app.nodeOutputs['9'].images[0].filename") == image["filename"]
        name = image["filename"]
        page.wait_for_function(f"document.querySelector('img[src*=\"{name}\"]') !== null || "
                               f"(app.graph.getNodeById(9).imgs || []).some(i => i.src.includes('{name}'))",
                               timeout=30_000)
        page.wait_for_timeout(500)
        assert any(image["filename"] in path and status == 200 and kind == "image/png"
                   for path, status, kind in watch.views), watch.views
        detail = get_json(f"{server.url}/api/jobs/{job['id']}")
        assert detail["workflow"]["extra_data"]["extra_pnginfo"]["workflow"]["nodes"]  # the editor graph it sent

        # Sumi's extension: why each node ran and how long it took, then "cached" on the identical run.
        runs = dict(page.evaluate("Array.from(window.sumiRunReasons.entries())"))
        assert set(runs) == {"3", "4", "5", "6", "7", "8", "9"}
        assert runs["4"]["reason"] == "not cached" and runs["3"]["reason"].startswith("upstream changed")
        assert all(r["ms"] is not None and r["ms"] >= 0 and not r["cached"] for r in runs.values())
        assert page.evaluate("window.sumiRunLabel(window.sumiRunReasons.get('4'))").endswith(" s · not cached")
        page.evaluate("app.queuePrompt(0, 1)")
        wait_for_job(server.url, 2)
        page.wait_for_function("window.sumiRunReasons.size === 7 && "
                               "Array.from(window.sumiRunReasons.values()).every(r => r.cached)", timeout=30_000)

        # A setting and a saved workflow, written through the front end's own stores.
        page.evaluate("app.extensionManager.setting.set('Comfy.Sidebar.Location', 'right')")
        page.evaluate("() => { app.extensionManager.command.execute('Comfy.SaveWorkflow'); }")  # asks a name
        page.wait_for_function("document.activeElement && document.activeElement.value === 'txt2img'")
        page.keyboard.press("Control+A")
        page.keyboard.type("sumi saved")
        page.keyboard.press("Enter")
        page.wait_for_function("app.extensionManager.workflow.activeWorkflow.path === 'workflows/sumi saved.json' "
                               "&& app.extensionManager.workflow.activeWorkflow.isPersisted")
        page.wait_for_timeout(500)
        assert watch.failed == [] and watch.errors == []
        context.close()
    finally:
        server.stop()
        dispatcher.store.close()
    user = base / "user" / "default"
    assert json.loads((user / "comfy.settings.json").read_text())["Comfy.Sidebar.Location"] == "right"
    saved = json.loads((user / "workflows" / "sumi saved.json").read_text())
    assert {n["type"] for n in saved["nodes"]} >= {"KSampler", "SaveImage"}

    server, dispatcher = serve_comfyui(base)  # a restart: a new server on the same folders, a new origin
    try:
        context, page, watch = open_front_end(browser, server.url)
        assert page.evaluate("app.extensionManager.setting.get('Comfy.Sidebar.Location')") == "right"
        page.evaluate("app.extensionManager.workflow.syncWorkflows()")
        page.wait_for_function("app.extensionManager.workflow.persistedWorkflows.some("
                               "w => w.path === 'workflows/sumi saved.json')", timeout=30_000)
        assert len(get_json(f"{server.url}/api/jobs?status=completed")["jobs"]) == 2  # history kept too
        assert watch.failed == [] and watch.errors == []
        context.close()
    finally:
        server.stop()
        dispatcher.store.close()
