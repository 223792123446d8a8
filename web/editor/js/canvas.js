// Canvas behaviour on top of litegraph: the node search (name, display name, category, description; filtered
// by socket type when a link is dropped into empty space), refusal messages for incompatible links, keyboard
// shortcuts (mute, bypass, group, search), the system clipboard (JSON, so nodes paste between tabs) and files
// dropped onto the canvas.
import {LGraphGroup, LiteGraph} from "/lib/litegraph/litegraph.es.js";
import {nodesAccepting, nodesProducing, searchText, typesCompatible} from "./nodes.js";
import {toast} from "./ui.js";

const CLIPBOARD_KEY = "litegrapheditor_clipboard";
const MUTED = 2;
const BYPASS = 4;

export function installCanvasBehaviour(app) {
  const canvas = app.canvas;
  let filter = null;  // {input: TYPE} or {output: TYPE} while a dropped link's search box is open

  // -- search --------------------------------------------------------------------------------------------------
  canvas.onSearchBox = (helper, text) => {
    const words = text.toLowerCase().split(/\s+/).filter(Boolean);
    let names = Object.keys(app.objectInfo);
    if (filter?.input) names = nodesAccepting(app.objectInfo, filter.input);
    if (filter?.output) names = nodesProducing(app.objectInfo, filter.output);
    const scored = [];
    for (const name of names) {
      const info = app.objectInfo[name];
      const haystack = searchText(info);
      if (!words.every((word) => haystack.includes(word))) continue;
      const title = (info.display_name || name).toLowerCase();
      // Best first: the exact title or name, the query inside the title, a title starting with its first word,
      // the whole query anywhere (a description), then every word somewhere.
      const query = words.join(" ");
      const score = title === query || name.toLowerCase() === query ? 0 : title.includes(query) ? 1
        : title.startsWith(words[0] || "") ? 2 : haystack.includes(query) ? 3 : 4;
      scored.push([score, title, name]);
    }
    scored.sort((a, b) => a[0] - b[0] || a[1].localeCompare(b[1]));
    return scored.slice(0, 60).map(([, , name]) => name);
  };
  const showSearchBox = canvas.showSearchBox.bind(canvas);
  canvas.showSearchBox = (event, options = {}) => {
    filter = options.type_filter_in ? {input: options.type_filter_in}
      : options.type_filter_out ? {output: options.type_filter_out} : null;
    const box = showSearchBox(event, {...options, show_all_if_empty: true, show_all_on_open: true,
                                      do_type_filter: false});
    const observer = new MutationObserver(() => {
      if (!box.isConnected) {
        filter = null;
        observer.disconnect();
      }
    });
    observer.observe(box.parentElement || document.body, {childList: true});
    box.classList.add("sumi-search");
    box.querySelector("input")?.setAttribute("placeholder", "Search nodes by name, category or description");
    return box;
  };

  // A link dropped into empty space: the search box lists only nodes that can take it.
  canvas.linkConnector.events.addEventListener("dropped-on-canvas", (event) => {
    const first = canvas.linkConnector.renderLinks[0];
    if (!first) return;
    const pointer = event.detail;
    const context = canvas.linkConnector.state.connectingTo === "input"
      ? {node_from: first.node, slot_from: first.fromSlot, type_filter_in: first.fromSlot.type}
      : {node_to: first.node, slot_from: first.fromSlot, type_filter_out: first.fromSlot.type};
    setTimeout(() => canvas.showSearchBox(pointer, context), 0);
  });

  // An incompatible drop is refused by litegraph; say why.
  canvas.linkConnector.events.addEventListener("after-drop-links", (event) => {
    const {renderLinks, event: pointer} = event.detail;
    const first = renderLinks[0];
    if (!first || canvas.linkConnector.state.connectingTo !== "input") return;
    const node = app.graph.getNodeOnPos(pointer.canvasX, pointer.canvasY);
    if (!node || node === first.node) return;
    const input = node.getInputOnPos?.([pointer.canvasX, pointer.canvasY]);
    const from = first.fromSlot.type;
    if (input && !typesCompatible(from, input.type)) {
      refuse(`${node.title}.${input.name} expects ${input.type}, got ${from}`);
    } else if (!input && !node.inputs?.some((i) => typesCompatible(from, i.type))) {
      refuse(`${node.title} has no input that accepts ${from}`);
    }
  });

  function refuse(message) {
    app.lastRefusal = message;
    toast(`Cannot connect: ${message}`, "error");
  }

  // -- keys ----------------------------------------------------------------------------------------------------
  document.addEventListener("keydown", (event) => {
    if (event.target.closest?.("input, textarea, select, [contenteditable], .litegraph.dialog")) return;
    const mod = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if (mod && key === "m") { event.preventDefault(); toggleMode(MUTED); }
    else if (mod && key === "b") { event.preventDefault(); toggleMode(BYPASS); }
    else if (mod && key === "g") { event.preventDefault(); groupSelected(); }
    else if (!mod && key === "/" || (mod && key === "k")) {
      event.preventDefault();
      const rect = canvas.canvas.getBoundingClientRect();
      canvas.showSearchBox(new MouseEvent("click", {clientX: rect.left + rect.width / 2,
                                                    clientY: rect.top + rect.height / 3}));
    } else if (!mod && key === "alt") {
      return;
    } else if (mod && key === "c" && selectedNodes().length) {
      event.preventDefault();
      event.stopPropagation();
      copySelection();
    } else if (mod && key === "v") {
      event.stopPropagation();  // the `paste` event below reads the system clipboard
    }
  }, true);

  function selectedNodes() { return Object.values(canvas.selected_nodes || {}); }

  function toggleMode(mode) {
    const nodes = selectedNodes();
    if (!nodes.length) return;
    const target = nodes.every((n) => n.mode === mode) ? 0 : mode;
    for (const node of nodes) node.mode = target;
    canvas.setDirty(true, true);
    app.tracker.check();
  }

  function groupSelected() {
    const nodes = selectedNodes();
    if (!nodes.length) return;
    const group = new LGraphGroup("Group");
    group.resizeTo(nodes, 10);
    app.graph.add(group);
    canvas.setDirty(true, true);
    app.tracker.check();
  }

  function copySelection() {
    canvas.copyToClipboard();
    const text = localStorage.getItem(CLIPBOARD_KEY);
    navigator.clipboard?.writeText(JSON.stringify({sumi_clipboard: 1, ...JSON.parse(text)})).catch(() => {});
  }

  // -- clipboard: nodes as JSON, or a whole workflow, or an image for a selected Load Image node --------------
  document.addEventListener("paste", (event) => {
    if (event.target.closest?.("input, textarea, [contenteditable]")) return;
    const data = event.clipboardData;
    const file = [...(data?.files || [])][0];
    if (file) {
      event.preventDefault();
      const target = selectedNodes().find((n) => n.uploadCombo);
      if (target && file.type.startsWith("image/")) app.uploadToNode(target, target.uploadCombo, file);
      else app.workflows.handleFile(file);
      return;
    }
    const text = data?.getData("text/plain");
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch { parsed = null; }
    if (parsed?.sumi_clipboard || (parsed && Array.isArray(parsed.nodes) && !("links" in parsed && "version" in parsed))) {
      event.preventDefault();
      const {sumi_clipboard: _, ...items} = parsed;
      localStorage.setItem(CLIPBOARD_KEY, JSON.stringify(items));
      pasteAtPointer();
    } else if (parsed && typeof parsed === "object") {
      event.preventDefault();
      app.workflows.handleFile(new File([text], "pasted.json", {type: "application/json"}));
    } else if (!text && localStorage.getItem(CLIPBOARD_KEY)) {
      pasteAtPointer();
    }
  });

  function pasteAtPointer() {
    canvas.pasteFromClipboard({position: [...canvas.graph_mouse]});
    canvas.setDirty(true, true);
    app.changed();
  }

  // -- files dropped onto the canvas ---------------------------------------------------------------------------
  const element = canvas.canvas;
  element.addEventListener("dragover", (event) => event.preventDefault());
  element.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer?.files?.[0];
    if (!file) return;
    canvas.adjustMouseEvent(event);
    const node = app.graph.getNodeOnPos(event.canvasX, event.canvasY);
    if (node && app.dropOnNode(node, event)) return;
    app.workflows.handleFile(file);
  });

  LiteGraph.pointerevents_method = "pointer";
}
