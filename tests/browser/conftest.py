"""Browser tests: Playwright driving Debian's Chromium against a real Sumi server on a free port.

Playwright's own browser download does not work offline, so the tests use the system's `chromium`
(`make test` installs it when missing). A machine without it fails here with a message saying how to get
one: a browser test is never skipped silently.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.dispatch import LocalDispatcher
from executor.queue import PromptStore
from executor.runner import Executor
from nodes import build_registry, paths
from tests.web.conftest import Running, make_base, start_server
from web import ServerConfig, create_app
from web.static import LITEGRAPH_DIST

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("browser tests need Chromium: install Debian's package with `apt-get install chromium` "
                    "(make test does this when it can)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Per module: Playwright's sync API holds an event loop on this thread while it runs, and other tests
    call asyncio.run()."""
    from playwright.sync_api import sync_playwright

    if not (LITEGRAPH_DIST / "litegraph.es.js").is_file():
        pytest.fail("the editor's canvas library is missing: run `npm ci` in web/ (make test does)", pytrace=False)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def serve(base: Path, port: int = 0, **config: Any) -> tuple[Running, LocalDispatcher]:
    registry = build_registry()
    dispatcher = LocalDispatcher(PromptStore(base / "user" / "sumi.db"), Executor(registry, previews=True))
    app = create_app(dispatcher, registry, ServerConfig(**config))
    return start_server(app, dispatcher, base, port), dispatcher


@pytest.fixture(scope="module")
def editor_server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Running]:
    saved = paths.FOLDERS
    base = make_base(tmp_path_factory.mktemp("editor"), tiny_checkpoint)
    paths.configure(base)
    for folder in (paths.FOLDERS.input, paths.FOLDERS.output):
        folder.mkdir(parents=True, exist_ok=True)
    running, dispatcher = serve(base)
    try:
        yield running
    finally:
        running.stop()
        dispatcher.store.close()
        paths.FOLDERS = saved


@pytest.fixture()
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (empty localStorage), with clipboard access for copy/paste."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 850})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"])
    yield ctx
    ctx.close()


class EditorPage:
    """A page of the editor with helpers that read the model (`window.app`), not pixels."""

    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        # A 400 is the server refusing an invalid prompt, which tests provoke on purpose; anything else counts.
        if msg.type == "error" and "status of 400" not in msg.text:
            self.errors.append(msg.text)

    def open(self) -> EditorPage:
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready=true]", timeout=20000)
        return self

    def js(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def nodes(self) -> list[dict[str, Any]]:
        return self.js("() => app.graph._nodes.map(n => ({id: n.id, type: n.type, title: n.title, "
                       "pos: [...n.pos], mode: n.mode, widgets: Object.fromEntries((n.widgets || [])"
                       ".filter(w => w.serialize !== false).map(w => [w.name, w.value]))}))")

    def links(self) -> list[list[Any]]:
        return self.js("() => app.graph.serialize().links")

    def node_of(self, type_: str) -> dict[str, Any]:
        found = [n for n in self.nodes() if n["type"] == type_]
        assert len(found) == 1, f"expected one {type_}, found {len(found)}"
        return found[0]

    def set_widget(self, node_id: int, name: str, value: Any) -> None:
        self.js("([id, name, value]) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === name);"
                " w.value = value; app.changed(); }", [node_id, name, value])

    def shrink(self) -> None:
        """The default workflow at 64×64, 2 steps, a fixed seed: a run takes well under a second."""
        latent = self.node_of("EmptyLatentImage")["id"]
        sampler = self.node_of("KSampler")["id"]
        self.set_widget(latent, "width", 64)
        self.set_widget(latent, "height", 64)
        self.set_widget(sampler, "steps", 2)
        self.set_widget(sampler, "control_after_generate", "fixed")

    def screen_pos(self, graph_pos: list[float]) -> tuple[float, float]:
        """Page coordinates of a point in graph space."""
        x, y = self.js("(p) => { const c = app.canvas; const r = c.canvas.getBoundingClientRect();"
                       " const q = c.ds.convertOffsetToCanvas(p); return [q[0] + r.left, q[1] + r.top]; }", graph_pos)
        return x, y

    def slot_pos(self, node_id: int, slot: int, is_input: bool) -> tuple[float, float]:
        pos = self.js("([id, slot, input]) => app.graph.getNodeById(id).getConnectionPos(input, slot)",
                      [node_id, slot, is_input])
        return self.screen_pos(pos)

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        mouse = self.page.mouse
        mouse.move(*start)
        mouse.down()
        mouse.move(*end, steps=steps)
        mouse.up()

    def wait_for(self, script: str, arg: Any = None, timeout: float = 60000) -> Any:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            return self.page.wait_for_function(script, arg=arg, timeout=timeout).json_value()
        except PlaywrightTimeout:
            # What the user would have seen: the messages on screen say why a step did not happen.
            toasts = self.js("() => window.sumiToasts")
            raise AssertionError(f"timed out waiting for {script!r} ({arg!r}); toasts: {toasts}; "
                                 f"page errors: {self.errors}") from None


@pytest.fixture()
def editor(context: Any, editor_server: Running) -> Iterator[EditorPage]:
    page = EditorPage(context.new_page(), editor_server.url + "/")
    yield page.open()
    assert not page.errors, f"errors in the page: {page.errors}"
