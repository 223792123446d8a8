"""The editor in a real browser against a real server: what a user does, asserted on the model (`window.app`),
on the server's queue and history, and on what the page shows."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import requests

from .conftest import EditorPage

REPO = Path(__file__).resolve().parents[2]
EVENTS = ["execution_start", "execution_cached", "executing", "progress", "executed", "execution_success",
          "execution_error", "execution_interrupted"]


def record_events(editor: EditorPage) -> None:
    editor.js("(types) => { window.events = []; for (const t of types) app.api.addEventListener(t, "
              "(e) => window.events.push({type: t, ...e.detail})); "
              "app.api.addEventListener('preview', (e) => "
              "window.events.push({type: 'preview', node: e.detail.node})); }",
              EVENTS)


def queue_and_wait(editor: EditorPage) -> str:
    """Press Queue; return the prompt id once its run has finished (executing null)."""
    before = editor.js("() => window.events.length")
    editor.page.click("#queue-button")
    return editor.wait_for(
        "(n) => { const e = window.events.slice(n).find(e => e.type === 'executing' && e.node === null);"
        " return e && e.prompt_id; }", before)


def executed_nodes(editor: EditorPage, prompt_id: str) -> list[str]:
    return editor.js("(id) => window.events.filter(e => e.type === 'executing' && e.prompt_id === id && e.node)"
                     ".map(e => String(e.node))", prompt_id)


def test_default_workflow_queues_and_its_image_appears(editor: EditorPage, editor_server: Any) -> None:
    nodes = {n["type"] for n in editor.nodes()}
    assert nodes == {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
                     "SaveImage"}
    assert len(editor.links()) == 9
    # Laid out left to right by dependency: the loader is left of the sampler, the sampler left of the saver.
    x = {n["type"]: n["pos"][0] for n in editor.nodes()}
    assert x["CheckpointLoaderSimple"] < x["CLIPTextEncode"] < x["KSampler"] < x["VAEDecode"] < x["SaveImage"]
    editor.shrink()
    record_events(editor)
    prompt_id = queue_and_wait(editor)

    types = [e["type"] for e in editor.js("() => window.events")]
    assert types[0] == "execution_start" and "execution_success" in types
    # Each node's run state, reason and time are known to the page and drawn on the canvas.
    states = editor.js("() => Object.fromEntries([...app.runState.nodes].map(([k, v]) => [k, [v.state, v.reason]]))")
    assert states["3"][0] == "ran" and states["3"][1]
    # The image: in the Save Image node and in the history panel, both loaded from /view.
    save = editor.node_of("SaveImage")["id"]
    editor.wait_for("(id) => { const n = app.graph.getNodeById(id); return n.imgs?.[0]?.naturalWidth === 64; }", save)
    # ... and drawn on the canvas with nothing else happening (no pointer move to trigger a redraw): the middle of
    # the node's image area holds the picture's varied pixels, not the flat node background
    editor.wait_for("""(id) => {
        const c = app.canvas, n = app.graph.getNodeById(id), el = c.canvas;
        const q = c.ds.convertOffsetToCanvas([n.pos[0] + n.size[0] / 2, n.pos[1] + n.size[1] - 40]);
        const k = el.width / el.clientWidth;
        const px = el.getContext("2d").getImageData(q[0] * k - 8, q[1] * k - 8, 16, 16).data;
        const grey = []; for (let i = 0; i < px.length; i += 4) grey.push(px[i] + px[i + 1] + px[i + 2]);
        const mean = grey.reduce((a, b) => a + b) / grey.length;
        return grey.reduce((a, b) => a + (b - mean) ** 2, 0) / grey.length > 100; }""", save)
    thumb = editor.page.wait_for_selector(f"#history-list [data-prompt-id='{prompt_id}'] img.thumb")
    editor.wait_for("(el) => el.complete && el.naturalWidth === 64", thumb)
    history = requests.get(f"{editor_server.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    assert history["status"]["status_str"] == "success"
    # The editor sent its own graph: the server converted it and kept it as the PNG's workflow.
    assert history["prompt"][3]["extra_pnginfo"]["workflow"]["nodes"]


def test_a_second_run_shows_cached_nodes_and_why_the_sampler_ran(editor: EditorPage) -> None:
    editor.shrink()
    record_events(editor)
    queue_and_wait(editor)
    sampler = editor.node_of("KSampler")["id"]
    editor.set_widget(sampler, "seed", 12345)
    prompt_id = queue_and_wait(editor)
    assert sorted(executed_nodes(editor, prompt_id)) == ["3", "8", "9"]
    states = editor.js("() => Object.fromEntries([...app.runState.nodes].map(([k, v]) => [k, [v.state, v.reason]]))")
    assert states["4"][0] == "cached" and states["6"][0] == "cached"
    assert states["3"] == ["ran", "inputs changed: seed"]
    assert states["8"][1].startswith("upstream changed")


def test_search_adds_a_node(editor: EditorPage) -> None:
    before = len(editor.nodes())
    editor.page.click("#graph-canvas", position={"x": 600, "y": 700})
    editor.page.keyboard.press("/")
    box = editor.page.wait_for_selector(".litesearchbox input")
    box.type("upscale latent by")  # display name words, not the class name
    editor.page.wait_for_selector(".litesearchbox .lite-search-item:first-child[data-type='LatentUpscaleBy']")
    editor.page.keyboard.press("Enter")
    nodes = editor.nodes()
    assert len(nodes) == before + 1 and nodes[-1]["type"] == "LatentUpscaleBy"
    # The search also finds nodes by description.
    editor.page.wait_for_timeout(100)  # litegraph hands focus back to the canvas 20 ms after a search closes
    editor.page.keyboard.press("/")
    editor.page.wait_for_selector(".litesearchbox input").type("weighting")
    info = requests.get(editor.url + "api/object_info", timeout=10).json()
    expected = sorted(name for name in info if "weighting" in searchable(info[name]))
    assert "CLIPTextEncode" in expected and "weighting" in info["CLIPTextEncode"]["description"]
    # The list settles on exactly the nodes whose name, title, category or description has the word.
    editor.wait_for("(want) => { const got = [...document.querySelectorAll('.litesearchbox .lite-search-item')]"
                    ".map(e => e.dataset.type).sort(); return JSON.stringify(got) === JSON.stringify(want); }",
                    expected, timeout=10000)


def searchable(info: dict[str, Any]) -> str:
    return " ".join([info["name"], info["display_name"], info["category"], info["description"]]).lower()


def test_a_link_dropped_in_empty_space_offers_only_compatible_nodes(editor: EditorPage) -> None:
    vae = editor.node_of("VAEDecode")
    start = editor.slot_pos(vae["id"], 0, False)
    editor.drag(start, (start[0] + 30, start[1] + 300))
    editor.page.wait_for_selector(".litesearchbox .lite-search-item")
    offered = editor.page.eval_on_selector_all(".litesearchbox .lite-search-item",
                                               "els => els.map(e => e.dataset.type)")
    info = requests.get(editor.url + "api/object_info", timeout=10).json()
    assert "SaveImage" in offered and "VAEEncode" in offered
    assert "KSampler" not in offered  # takes no IMAGE
    for name in offered:
        inputs = {**info[name]["input"]["required"], **info[name]["input"].get("optional", {})}
        assert any(spec[0] == "IMAGE" for spec in inputs.values()), name
    editor.page.click(".litesearchbox .lite-search-item[data-type='SaveImage']")
    saves = [n for n in editor.nodes() if n["type"] == "SaveImage"]
    assert len(saves) == 2
    new = saves[-1]["id"]
    linked = [link for link in editor.links() if link[3] == new]
    assert linked and linked[0][1] == vae["id"] and linked[0][5] == "IMAGE"


def test_a_mismatched_link_is_refused_with_the_reason(editor: EditorPage) -> None:
    loader = editor.node_of("CheckpointLoaderSimple")["id"]
    negative = next(n for n in editor.nodes() if n["title"] == "Negative")["id"]
    before = editor.links()
    editor.drag(editor.slot_pos(loader, 0, False), editor.slot_pos(negative, 0, True))  # MODEL onto clip
    assert editor.links() == before
    toast = editor.page.wait_for_selector(".toast.error")
    assert "expects CLIP, got MODEL" in toast.text_content()


def test_a_widget_edit_reaches_the_server(editor: EditorPage, editor_server: Any) -> None:
    editor.shrink()
    sampler = editor.node_of("KSampler")["id"]
    # Click the right-hand arrow of the steps widget: 2 → 3.
    y = editor.js("(id) => { const n = app.graph.getNodeById(id); const w = n.widgets.find(w => w.name === 'steps');"
                  " return n.pos[1] + w.y + 10; }", sampler)
    x = editor.js("(id) => { const n = app.graph.getNodeById(id); return n.pos[0] + n.size[0] - 20; }", sampler)
    editor.page.mouse.click(*editor.screen_pos([x, y]))
    assert editor.node_of("KSampler")["widgets"]["steps"] == 3
    record_events(editor)
    prompt_id = queue_and_wait(editor)
    entry = requests.get(f"{editor_server.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    assert entry["prompt"][2][str(sampler)]["inputs"]["steps"] == 3


def test_undo_and_redo_a_move_and_a_delete(editor: EditorPage) -> None:
    node = editor.node_of("EmptyLatentImage")
    title = editor.screen_pos([node["pos"][0] + 60, node["pos"][1] - 15])
    editor.drag(title, (title[0] + 100, title[1] + 50))
    moved = editor.node_of("EmptyLatentImage")["pos"]
    assert moved != node["pos"]
    editor.page.keyboard.press("Delete")  # the dragged node is selected
    editor.page.wait_for_timeout(120)
    assert not [n for n in editor.nodes() if n["type"] == "EmptyLatentImage"]
    editor.page.keyboard.press("Control+z")
    assert editor.node_of("EmptyLatentImage")["pos"] == moved
    editor.page.keyboard.press("Control+z")
    assert editor.node_of("EmptyLatentImage")["pos"] == node["pos"]
    editor.page.keyboard.press("Control+y")
    assert editor.node_of("EmptyLatentImage")["pos"] == moved
    editor.page.click("#redo-button")
    assert not [n for n in editor.nodes() if n["type"] == "EmptyLatentImage"]


def test_copy_and_paste_within_and_between_tabs(editor: EditorPage, context: Any) -> None:
    node = editor.node_of("KSampler")
    editor.set_widget(node["id"], "cfg", 4.5)
    title = editor.screen_pos([node["pos"][0] + 60, node["pos"][1] - 15])
    editor.page.mouse.click(*title)
    editor.page.keyboard.press("Control+c")
    clipboard = json.loads(editor.js("() => navigator.clipboard.readText()"))
    assert clipboard["nodes"][0]["type"] == "KSampler"
    editor.page.mouse.move(title[0] + 300, title[1] + 300)
    editor.page.keyboard.press("Control+v")
    samplers = [n for n in editor.nodes() if n["type"] == "KSampler"]
    assert len(samplers) == 2 and samplers[1]["widgets"]["cfg"] == 4.5
    # Another browser tab of the editor pastes the same node from the system clipboard.
    other = EditorPage(context.new_page(), editor.url).open()
    before = {n["id"] for n in other.nodes()}  # the first tab's unsaved graph, restored from this browser
    other.page.click("#graph-canvas", position={"x": 500, "y": 650})
    other.page.keyboard.press("Control+v")
    pasted = [n for n in other.nodes() if n["id"] not in before]
    assert len(pasted) == 1 and pasted[0]["type"] == "KSampler" and pasted[0]["widgets"]["cfg"] == 4.5
    assert not other.errors


def test_mute_bypass_collapse_and_group_are_undoable_edits(editor: EditorPage, editor_server: Any) -> None:
    node = editor.node_of("VAEDecode")
    editor.page.mouse.click(*editor.screen_pos([node["pos"][0] + 40, node["pos"][1] - 15]))
    editor.page.keyboard.press("Control+b")
    assert editor.node_of("VAEDecode")["mode"] == 4
    editor.page.keyboard.press("Control+m")
    assert editor.node_of("VAEDecode")["mode"] == 2
    editor.page.keyboard.press("Control+g")
    assert editor.js("() => app.graph._groups.length") == 1
    editor.js("(id) => { app.graph.getNodeById(id).collapse(); app.tracker.check(); }", node["id"])
    assert editor.js("(id) => app.graph.getNodeById(id).flags.collapsed", node["id"])
    for _ in range(3):
        editor.page.keyboard.press("Control+z")
    assert editor.node_of("VAEDecode")["mode"] == 4 and editor.js("() => app.graph._groups.length") == 0
    editor.page.keyboard.press("Control+z")
    assert editor.node_of("VAEDecode")["mode"] == 0


def test_drop_a_png_with_its_workflow(editor: EditorPage, editor_server: Any) -> None:
    editor.shrink()
    editor.set_widget(editor.node_of("KSampler")["id"], "cfg", 3.5)
    record_events(editor)
    prompt_id = queue_and_wait(editor)
    entry = requests.get(f"{editor_server.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    image = next(iter(entry["outputs"].values()))["images"][0]
    png = requests.get(f"{editor_server.url}/view", params=image, timeout=10).content
    sent = editor.js("() => app.lastPrompt")
    editor.js("() => app.workflows.newTab()")
    assert editor.nodes() == []
    drop_file(editor, "result.png", "image/png", png)
    editor.wait_for("() => app.graph._nodes.length === 7")
    restored = editor.js("() => app.serialize()")
    assert [(n["id"], n["type"], n.get("widgets_values")) for n in restored["nodes"]] == \
        [(n["id"], n["type"], n.get("widgets_values")) for n in sent["nodes"]]
    assert restored["links"] == sent["links"]


def test_drop_an_api_format_json(editor: EditorPage) -> None:
    prompt = json.loads((REPO / "workflows" / "hires_fix.json").read_text())
    drop_file(editor, "hires_fix.json", "application/json", json.dumps(prompt).encode())
    editor.wait_for("(n) => app.graph._nodes.length === n", len(prompt))
    nodes = {str(n["id"]): n for n in editor.nodes()}
    assert set(nodes) == set(prompt)
    expected_links = {(str(v[0]), v[1], nid, name) for nid, spec in prompt.items()
                      for name, v in spec["inputs"].items() if isinstance(v, list)}
    got = editor.js("() => app.graph.serialize().links.map(l => [String(l[1]), l[2], String(l[3]), "
                    "app.graph.getNodeById(l[3]).inputs[l[4]].name])")
    assert {tuple(link) for link in got} == expected_links
    for nid, spec in prompt.items():  # widget values by name
        for name, value in spec["inputs"].items():
            if not isinstance(value, list) and name in nodes[nid]["widgets"]:
                assert nodes[nid]["widgets"][name] == value, (nid, name)
    # Laid out by dependency: every link goes left to right, no two nodes share a position.
    for src, _, dst, _ in expected_links:
        assert nodes[src]["pos"][0] < nodes[dst]["pos"][0]
    assert len({tuple(n["pos"]) for n in nodes.values()}) == len(nodes)


def test_a_validation_error_is_shown_before_queueing(editor: EditorPage, editor_server: Any) -> None:
    loader = editor.node_of("CheckpointLoaderSimple")["id"]
    editor.set_widget(loader, "ckpt_name", "missing_model.safetensors")
    errors = editor.wait_for("(id) => app.runState.errors[id]", str(loader))
    assert errors[0]["input_name"] == "ckpt_name"
    assert "missing_model.safetensors" in json.dumps(errors) and "checkpoints" in errors[0]["hint"]
    assert "1 node(s) with errors" in editor.page.text_content("#validation")
    queued_before = len(requests.get(f"{editor_server.url}/history", timeout=10).json())
    editor.page.click("#queue-button")
    editor.page.wait_for_selector(".toast.error")
    assert len(requests.get(f"{editor_server.url}/history", timeout=10).json()) == queued_before
    assert requests.get(f"{editor_server.url}/queue", timeout=10).json()["queue_pending"] == []
    # Fixing it clears the mark.
    editor.set_widget(loader, "ckpt_name", "sumi_tiny_sd15.safetensors")
    editor.wait_for("(id) => !app.runState.errors[id]", str(loader))


def test_interrupt_the_running_prompt(editor: EditorPage, editor_server: Any) -> None:
    editor.shrink()
    editor.set_widget(editor.node_of("KSampler")["id"], "steps", 400)
    record_events(editor)
    editor.page.click("#queue-button")
    editor.wait_for("() => window.events.some(e => e.type === 'progress' && e.value >= 2)")
    # While it samples: the live preview is drawn in the sampler node and its progress bar fills.
    sampler = str(editor.node_of("KSampler")["id"])
    editor.wait_for("(id) => app.runState.nodes.get(id)?.preview?.naturalWidth > 0", sampler)
    state = editor.js("(id) => { const s = app.runState.nodes.get(id); return [s.state, s.progress]; }", sampler)
    assert state[0] == "running" and state[1][1] == 400 and 0 < state[1][0] < 400
    editor.page.click("#interrupt-button")
    event = editor.wait_for("() => window.events.find(e => e.type === 'execution_interrupted')")
    entry = requests.get(f"{editor_server.url}/history/{event['prompt_id']}", timeout=10).json()[event["prompt_id"]]
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])


def test_a_two_value_sweep_queues_two_prompts_and_reuses_the_cache(editor: EditorPage, editor_server: Any) -> None:
    editor.shrink()
    record_events(editor)
    editor.page.click("#sweep-button")
    dialog = editor.page.wait_for_selector(".dialog")
    assert dialog.eval_on_selector("select[name=X-widget]", "s => s.selectedOptions[0].text") == "KSampler › seed"
    editor.page.fill("textarea[name=X-values]", "101, 202")
    editor.page.click("text=Queue all")
    editor.wait_for("() => window.events.filter(e => e.type === 'execution_success').length === 2")
    starts = [e["prompt_id"] for e in editor.js("() => window.events") if e["type"] == "execution_start"]
    assert len(starts) == 2
    first, second = (executed_nodes(editor, p) for p in starts)
    assert "3" in first  # a new seed: the sampler ran
    assert sorted(second) == ["3", "8", "9"]  # only the sampler onward
    seeds = [requests.get(f"{editor_server.url}/history/{p}", timeout=10).json()[p]["prompt"][2]["3"]["inputs"]["seed"]
             for p in starts]
    assert seeds == [101, 202]
    editor.page.wait_for_selector("#history-list .sweep table.sweep-grid")
    editor.wait_for("() => document.querySelectorAll('#history-list .sweep-grid img.thumb').length === 2")
    header = editor.page.eval_on_selector_all("#history-list .sweep-grid tr:first-child th",
                                              "ths => ths.map(t => t.textContent)")
    assert header == ["KSampler › seed", "101", "202"]


def drop_file(editor: EditorPage, name: str, mime: str, data: bytes) -> None:
    """Drop a file onto the middle of the canvas, as a drag from the desktop does."""
    editor.js("([name, mime, b64]) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));"
              " const dt = new DataTransfer(); dt.items.add(new File([bytes], name, {type: mime}));"
              " const c = app.canvas.canvas; const r = c.getBoundingClientRect();"
              " c.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true,"
              " clientX: r.left + r.width / 2, clientY: r.top + r.height / 2})); }",
              [name, mime, base64.b64encode(data).decode()])


def test_unsaved_edits_survive_a_reload(editor: EditorPage) -> None:
    sampler = editor.node_of("KSampler")["id"]
    editor.set_widget(sampler, "cfg", 2.5)
    editor.js("() => app.workflows.newTab('second')")
    editor.page.wait_for_timeout(400)  # the browser copy is written 300 ms after the last edit
    editor.page.reload()
    editor.page.wait_for_selector("body[data-ready=true]")
    tabs = editor.page.eval_on_selector_all("#tabs .tab-name", "els => els.map(e => e.textContent)")
    assert [t.rstrip(" •") for t in tabs] == ["txt2img", "second"]
    editor.page.click("#tabs .tab[data-index='0']")
    assert editor.node_of("KSampler")["widgets"]["cfg"] == 2.5


def test_the_editor_says_when_the_server_is_gone_and_reconnects(context: Any, tmp_path: Path,
                                                                tiny_checkpoint: Path) -> None:
    import socket

    from tests.web.conftest import folders, make_base, serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with folders(make_base(tmp_path / "base", tiny_checkpoint)) as base:
        running = serve(base, port=port, previews=True)
        try:
            page = EditorPage(context.new_page(), running.url + "/").open()
            page.page.wait_for_selector("#connection.online")
            page.set_widget(page.node_of("KSampler")["id"], "cfg", 6.5)
            running.stop()
            page.page.wait_for_selector("#connection.offline", timeout=20000)
            assert "reconnecting" in page.page.text_content("#connection")
            assert page.node_of("KSampler")["widgets"]["cfg"] == 6.5  # the graph is kept
            running = serve(base, port=port, previews=True)
            page.page.wait_for_selector("#connection.online", timeout=20000)
            assert page.node_of("KSampler")["widgets"]["cfg"] == 6.5
        finally:
            running.stop()


def test_model_combos_refresh_and_load_image_uploads(editor: EditorPage, editor_server: Any) -> None:
    import shutil

    target = editor_server.base / "models" / "checkpoints" / "added_later.safetensors"
    shutil.copyfile(editor_server.base / "models" / "checkpoints" / "sumi_tiny_sd15.safetensors", target)
    try:
        editor.js("() => window.dispatchEvent(new Event('focus'))")
        loader = editor.node_of("CheckpointLoaderSimple")["id"]
        values = editor.wait_for("(id) => { const w = app.graph.getNodeById(id).widgets[0];"
                                 " return w.options.values.includes('added_later.safetensors') && w.options.values; }",
                                 loader)
        assert "sumi_tiny_sd15.safetensors" in values
    finally:
        target.unlink()
    # Load Image: a file dropped onto the node is uploaded into input/ and chosen.
    # litegraph finds nodes under the pointer by the bounds it drew them at: wait for the node's first frame.
    node = editor.js("() => new Promise((done) => { const n = LiteGraph.createNode('LoadImage'); n.pos = [100, 600];"
                     " app.graph.add(n); requestAnimationFrame(() => requestAnimationFrame(() => done(n.id))); })")
    png = REPO / "workflows" / "inputs" / "sumi_example.png"
    center = editor.js("(id) => { const n = app.graph.getNodeById(id); return [n.pos[0] + n.size[0] / 2,"
                       " n.pos[1] + 10]; }", node)
    x, y = editor.screen_pos(center)
    editor.js("([b64, x, y]) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));"
              " const dt = new DataTransfer(); dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
              " app.canvas.canvas.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,"
              " cancelable: true, clientX: x, clientY: y})); }",
              [base64.b64encode(png.read_bytes()).decode(), x, y])
    editor.wait_for("(id) => app.graph.getNodeById(id).widgets[0].value === 'dropped.png'", node)
    assert (editor_server.base / "input" / "dropped.png").read_bytes() == png.read_bytes()
    editor.wait_for("(id) => app.graph.getNodeById(id).imgs?.[0]?.naturalWidth > 0", node)


def test_save_reload_and_open_by_name(editor: EditorPage, editor_server: Any) -> None:
    editor.set_widget(editor.node_of("KSampler")["id"], "cfg", 5.5)
    editor.page.once("dialog", lambda dialog: dialog.accept("lighthouse study"))
    editor.page.click("#save-button")
    editor.page.wait_for_selector(".toast:has-text('Saved workflows/lighthouse study.json')")
    # Stored through ComfyUI's user-data route, where any ComfyUI-compatible front end finds it.
    saved = json.loads(requests.get(f"{editor_server.url}/api/userdata/workflows%2Flighthouse%20study.json",
                                    timeout=10).text)
    assert saved["extra"]["sumi"]["format_version"] == 1
    assert next(n for n in saved["nodes"] if n["type"] == "KSampler")["widgets_values"][3] == 5.5
    listed = requests.get(f"{editor_server.url}/api/userdata", params={"dir": "workflows"}, timeout=10).json()
    assert "lighthouse study.json" in listed
    # The edit came just before the save, inside the change tracker's debounce: once that has long passed the
    # tab is still clean (the late check used to mark it modified again when the write was quick).
    editor.page.wait_for_timeout(300)
    assert editor.page.text_content("#tabs .tab.active .tab-name") == "lighthouse study"
    # An edit made while the write is in flight is not in the file: the tab stays modified.
    editor.js("(id) => { const p = app.workflows.save(); const w = app.graph.getNodeById(id).widgets"
              ".find(w => w.name === 'cfg'); w.value = 6.5; app.changed(); return p; }",
              editor.node_of("KSampler")["id"])
    assert editor.page.text_content("#tabs .tab.active .tab-name") == "lighthouse study •"
    editor.page.click("#save-button")  # saved under its name, no prompt
    editor.wait_for("() => !app.workflows.current.modified")

    editor.js("() => localStorage.clear()")  # a fresh browser: only the server has it
    editor.page.reload()
    editor.page.wait_for_selector("body[data-ready=true]")
    editor.page.click("#open-button")
    editor.page.click(".file-item[data-path='lighthouse study.json']")
    editor.wait_for("() => app.workflows.current.path === 'workflows/lighthouse study.json'")
    assert editor.node_of("KSampler")["widgets"]["cfg"] == 6.5
    tabs = editor.page.eval_on_selector_all("#tabs .tab-name", "els => els.map(e => e.textContent)")
    assert tabs == ["txt2img •", "lighthouse study"]
    # An edit still inside the tracker's debounce when the tab is left marks that tab, not the next one.
    editor.js("(id) => { app.graph.getNodeById(id).widgets.find(w => w.name === 'cfg').value = 7.5; app.changed();"
              " app.workflows.newTab('third'); }", editor.node_of("KSampler")["id"])
    tabs = editor.page.eval_on_selector_all("#tabs .tab-name", "els => els.map(e => e.textContent)")
    assert tabs == ["txt2img •", "lighthouse study •", "third"]


def test_queue_panel_cancels_a_pending_prompt_and_the_gallery_loads_a_workflow(editor: EditorPage,
                                                                               editor_server: Any) -> None:
    editor.shrink()
    sampler = editor.node_of("KSampler")["id"]
    editor.set_widget(sampler, "steps", 300)
    editor.set_widget(sampler, "seed", 31337)
    record_events(editor)
    editor.page.click("#queue-button")  # runs (long)
    editor.wait_for("() => window.events.some(e => e.type === 'progress')")
    editor.set_widget(sampler, "steps", 2)
    editor.page.click("#queue-button")  # waits behind it
    pending = editor.page.wait_for_selector("#queue-list .queue-item.pending")
    pending_id = pending.get_attribute("data-prompt-id")
    assert editor.page.query_selector("#queue-list .queue-item.running")
    editor.page.click(f"#queue-list [data-prompt-id='{pending_id}'] button")  # Cancel
    editor.wait_for("(id) => !document.querySelector(`#queue-list [data-prompt-id='${id}']`)", pending_id)
    queue = requests.get(f"{editor_server.url}/queue", timeout=10).json()
    assert all(item[1] != pending_id for item in queue["queue_pending"])
    editor.page.click("#queue-list .queue-item.running button")  # Interrupt from the panel
    editor.wait_for("() => window.events.some(e => e.type === 'execution_interrupted')")
    assert requests.get(f"{editor_server.url}/history/{pending_id}", timeout=10).json() == {}

    # A finished prompt in the gallery: open it large, then load its workflow onto a new tab.
    editor.set_widget(sampler, "cfg", 3.25)
    prompt_id = queue_and_wait(editor)
    editor.page.click(f"#history-list [data-prompt-id='{prompt_id}'] img.thumb")
    large = editor.page.wait_for_selector(".lightbox img")
    editor.wait_for("(img) => img.complete && img.naturalWidth === 64", large)
    editor.set_widget(sampler, "cfg", 9.0)  # the canvas moves on; the history keeps what ran
    editor.page.click(".lightbox button:has-text('Load workflow')")
    editor.wait_for("() => app.workflows.tabs.length === 2")
    assert editor.node_of("KSampler")["widgets"]["cfg"] == 3.25


def test_a_comfyui_subgraph_workflow_opens_runs_and_saves_whole(editor: EditorPage, editor_server: Any) -> None:
    """This editor does not open subgraphs, but a workflow with them loads, runs (the server expands it into
    colon-path ids, shown on the instance) and saves with every definition kept."""
    shipped = json.loads((REPO / "workflows" / "subgraph_txt2img.json").read_text())
    drop_file(editor, "subgraph_txt2img.json", "application/json", json.dumps(shipped).encode())
    editor.wait_for("(n) => app.graph._nodes.length === n", len(shipped["nodes"]))
    saved = editor.js("() => app.serialize()")
    assert sorted(s["id"] for s in saved["definitions"]["subgraphs"]) == \
        sorted(s["id"] for s in shipped["definitions"]["subgraphs"])
    editor.wait_for("() => document.getElementById('validation').textContent === 'Ready'")
    record_events(editor)
    prompt_id = queue_and_wait(editor)
    ran = executed_nodes(editor, prompt_id) + editor.js(
        "(id) => window.events.filter(e => e.type === 'execution_cached' && e.prompt_id === id)"
        ".flatMap(e => e.nodes)", prompt_id)
    assert any(":" in node for node in ran)  # inner nodes run under their path
    instances = {str(n["id"]) for n in shipped["nodes"] if n["type"] in
                 {s["id"] for s in shipped["definitions"]["subgraphs"]}}
    states = editor.js("() => Object.fromEntries([...app.runState.nodes].map(([k, v]) => [k, v.state]))")
    assert all(states.get(i) in ("ran", "cached") for i in instances)
    entry = requests.get(f"{editor_server.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["outputs"]
