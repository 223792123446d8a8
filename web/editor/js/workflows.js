// Open workflows: tabs, the unsaved state kept in localStorage (it survives a reload or a stopped server),
// saving and opening by name through ComfyUI's /userdata/workflows/… routes, download and upload, and whatever
// is dropped onto the canvas (PNG with metadata, editor-format or API-format JSON).
import {LiteGraph} from "/lib/litegraph/litegraph.es.js";
import {dialog, el, toast} from "./ui.js";

const STORE_KEY = "sumi.tabs";
const FORMAT_VERSION = 1;

export class Workflows {
  constructor(app) {
    this.app = app;
    this.tabs = [];
    this.active = -1;
    this.saveTimer = null;
    this.edits = 0;  // counts edits, so that a save knows whether one came in while it was writing
    this.bar = document.getElementById("tabs");
    const click = (id, fn) => document.getElementById(id).addEventListener("click", fn);
    click("new-button", () => this.newTab());
    click("save-button", () => this.save());
    click("open-button", () => this.openDialog());
    click("download-button", () => this.download());
    click("upload-button", () => this.pickFile());
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "s") {
        event.preventDefault();
        this.save();
      }
    });
  }

  get current() { return this.tabs[this.active]; }

  async restore() {
    let stored = null;
    try { stored = JSON.parse(localStorage.getItem(STORE_KEY)); } catch { stored = null; }
    if (stored?.tabs?.length) {
      this.tabs = stored.tabs;
      this.#activate(Math.min(stored.active ?? 0, this.tabs.length - 1));
      return;
    }
    await this.openDefault();
  }

  async openDefault() {
    try {
      const {name, prompt} = await this.app.api.defaultWorkflow();
      this.loadApi(prompt, name.replace(/\.json$/, ""));
    } catch (error) {
      toast(`Could not load the default workflow: ${error.message}`, "error");
      this.newTab();
    }
  }

  newTab(name = "Unsaved workflow", data = null, path = null) {
    this.#stash();
    this.tabs.push({name, path, data, modified: !path && Boolean(data)});
    this.#activate(this.tabs.length - 1, data === null);
  }

  #stash() {
    if (!this.current || !this.app.graph) return;
    this.app.tracker?.check();  // an edit still inside the tracker's debounce marks this tab before it is left
    this.current.data = this.app.serialize();
  }

  #activate(index, empty = false) {
    this.active = index;
    const tab = this.current;
    if (tab.data && !empty) this.loadGraph(tab.data, {keepHistory: false});
    else this.loadGraph({nodes: [], links: [], groups: [], version: 0.4}, {keepHistory: false});
    this.render();
    this.persist();
  }

  switchTo(index) {
    if (index === this.active) return;
    this.#stash();
    this.#activate(index);
  }

  closeTab(index) {
    const tab = this.tabs[index];
    if (tab.modified && !confirm(`Close "${tab.name}" without saving?`)) return;
    if (index === this.active) this.#stash();
    this.tabs.splice(index, 1);
    if (!this.tabs.length) {
      this.tabs.push({name: "Unsaved workflow", path: null, data: null, modified: false});
    }
    this.#activate(Math.min(index <= this.active ? Math.max(this.active - 1, 0) : this.active,
                            this.tabs.length - 1));
  }

  render() {
    this.bar.replaceChildren(...this.tabs.map((tab, i) => el("div", {
      class: `tab${i === this.active ? " active" : ""}`, dataset: {index: String(i)}, title: tab.path || tab.name,
      onclick: () => this.switchTo(i)},
      el("span", {class: "tab-name"}, tab.name + (tab.modified ? " •" : "")),
      el("button", {class: "tab-close", title: "Close", onclick: (event) => {
        event.stopPropagation();
        this.closeTab(i);
      }}, "×"))));
    document.title = `${this.current?.name || "Sumi"} · Sumi`;
  }

  /** Called after each edit: mark the tab modified and keep it in localStorage. */
  edited() {
    this.edits += 1;
    if (this.current && !this.current.modified) {
      this.current.modified = true;
      this.render();
    }
    this.app.runState.validateSoon();
    clearTimeout(this.saveTimer);
    this.saveTimer = setTimeout(() => this.persist(), 300);
  }

  persist() {
    this.#stash();
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify({tabs: this.tabs, active: this.active}));
    } catch (error) {
      toast(`Could not keep the workflow in this browser: ${error.message}`, "error");
    }
  }

  loadGraph(data, {keepHistory = false, keepView = false} = {}) {
    const app = this.app;
    const view = keepView ? {scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset]} : null;
    const migrated = migrate(structuredClone(data));
    app.graph.clear();
    app.graph.configure(migrated);
    for (const node of app.graph._nodes) node.showImage?.();
    if (view) {
      app.canvas.ds.scale = view.scale;
      app.canvas.ds.offset = view.offset;
    } else if (migrated.extra?.ds) {
      app.canvas.ds.scale = migrated.extra.ds.scale;
      app.canvas.ds.offset = [...migrated.extra.ds.offset];
    }
    app.canvas.setDirty(true, true);
    if (!keepHistory) app.tracker.reset();
    app.runState.graphLoaded();
  }

  // -- ComfyUI's API format: nodes placed left to right by dependency ------------------------------------------

  loadApi(prompt, name = "API workflow") {
    this.newTab(name);
    const graph = this.app.graph;
    const created = new Map();
    for (const [id, spec] of Object.entries(prompt)) {
      const node = LiteGraph.createNode(spec.class_type);
      if (!node) {
        toast(`Unknown node type ${spec.class_type} (node ${id}) was left out`, "error");
        continue;
      }
      if (/^\d+$/.test(id)) node.id = Number(id);
      if (spec._meta?.title && spec._meta.title !== node.title) node.title = spec._meta.title;
      for (const widget of node.widgets || []) {
        const value = spec.inputs?.[widget.name];
        if (value !== undefined && !Array.isArray(value)) {
          if (widget.type === "combo" && !widget.options.values.includes(value)) widget.options.values.push(value);
          widget.value = value;
        }
      }
      graph.add(node);
      created.set(id, node);
    }
    for (const [id, spec] of Object.entries(prompt)) {
      const target = created.get(id);
      if (!target) continue;
      for (const [inputName, value] of Object.entries(spec.inputs || {})) {
        if (!Array.isArray(value) || value.length !== 2 || !created.has(String(value[0]))) continue;
        const slot = target.findInputSlot(inputName);
        if (slot >= 0) created.get(String(value[0])).connect(Number(value[1]), target, slot);
      }
    }
    layoutByDependency(graph, prompt, created);
    this.app.fitView();
    this.app.tracker.reset();
    this.current.data = this.app.serialize();
    this.current.modified = true;
    this.render();
    this.persist();
    this.app.runState.validateSoon();
  }

  // -- files ---------------------------------------------------------------------------------------------------

  async handleFile(file) {
    try {
      const base = file.name.replace(/\.(json|png)$/i, "");
      if (file.type === "image/png" || /\.png$/i.test(file.name)) {
        const chunks = readPngText(await file.arrayBuffer());
        if (chunks.workflow) return this.#openData(JSON.parse(chunks.workflow), base);
        if (chunks.prompt) return this.loadApi(JSON.parse(chunks.prompt), base);
        toast(`${file.name} carries no workflow`, "error");
        return;
      }
      this.#openData(JSON.parse(await file.text()), base);
    } catch (error) {
      toast(`Could not open ${file.name}: ${error.message}`, "error");
    }
  }

  #openData(data, name, path = null) {
    if (data && Array.isArray(data.nodes) && "links" in data) {
      this.newTab(name, data, path);
      return;
    }
    const prompt = data?.prompt && typeof data.prompt === "object" ? data.prompt : data;  // a saved /prompt body
    if (prompt && typeof prompt === "object" && Object.values(prompt).every((n) => n?.class_type)) {
      this.loadApi(prompt, name);
      return;
    }
    throw new Error("not a workflow (neither the editor format nor the API format)");
  }

  pickFile() {
    const picker = el("input", {type: "file", accept: ".json,.png,application/json,image/png"});
    picker.onchange = () => picker.files[0] && this.handleFile(picker.files[0]);
    picker.click();
  }

  download() {
    const blob = new Blob([JSON.stringify(this.app.serialize(), null, 2)], {type: "application/json"});
    const link = el("a", {href: URL.createObjectURL(blob), download: `${this.current.name}.json`});
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  async save(asName = null) {
    let name = asName || (this.current.path ? this.current.name : null);
    if (!name) {
      name = prompt("Save workflow as:", this.current.name === "Unsaved workflow" ? "" : this.current.name);
      if (!name) return false;
    }
    name = name.trim().replace(/\.json$/i, "");
    const path = `workflows/${name}.json`;
    // An edit made just before saving is still waiting for the change tracker's debounce: take it in now, so
    // that its late check does not mark the saved tab modified. An edit made while the write is in flight is
    // not in the file, and keeps the tab modified.
    const tab = this.current;
    this.app.tracker.check();
    const editsBefore = this.edits;
    try {
      await this.app.api.writeUserData(path, JSON.stringify(this.app.serialize()), true);
    } catch (error) {
      toast(`Could not save: ${error.body?.error?.message || error.message}`, "error");
      return false;
    }
    this.app.tracker.check();
    Object.assign(tab, {name, path, modified: tab !== this.current || this.edits !== editsBefore});
    this.render();
    this.persist();
    toast(`Saved ${path}`);
    return true;
  }

  async open(path) {
    const text = await this.app.api.readUserData(path);
    const existing = this.tabs.findIndex((tab) => tab.path === path);
    if (existing >= 0) this.tabs.splice(existing, 1);
    this.active = Math.min(this.active, this.tabs.length - 1);
    this.#openData(JSON.parse(text), path.replace(/^workflows\//, "").replace(/\.json$/, ""), path);
    this.current.modified = false;
    this.render();
    this.persist();
  }

  async openDialog() {
    let files = [];
    try {
      files = await this.app.api.listWorkflows();
    } catch (error) {
      toast(`Could not list saved workflows: ${error.message}`, "error");
      return;
    }
    const list = el("div", {class: "file-list"});
    const {close} = dialog("Open workflow", list, [["Cancel"]]);
    if (!files.length) list.append(el("p", {}, "No saved workflows yet."));
    for (const file of files) {
      const rel = typeof file === "string" ? file : file.path;
      list.append(el("button", {class: "file-item", dataset: {path: rel}, onclick: async () => {
        close();
        try { await this.open(`workflows/${rel}`); } catch (error) { toast(`Could not open ${rel}: ${error.message}`, "error"); }
      }}, rel.replace(/\.json$/, "")));
    }
  }
}

/** Sumi's saved editor files carry `extra.sumi.format_version`; older files are migrated here, step by step. */
export function migrate(data) {
  data.extra = data.extra || {};
  const version = data.extra.sumi?.format_version ?? 0;
  // Version 0 (no Sumi marker: ComfyUI's own files) needs nothing: version 1 is ComfyUI's schema 0.4 as is.
  if (version < FORMAT_VERSION) data.extra.sumi = {...(data.extra.sumi || {}), format_version: FORMAT_VERSION};
  return data;
}

function layoutByDependency(graph, prompt, created) {
  const depth = new Map();
  const visit = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    let d = 0;
    for (const value of Object.values(prompt[id]?.inputs || {})) {
      if (Array.isArray(value) && value.length === 2 && created.has(String(value[0]))) {
        d = Math.max(d, visit(String(value[0]), seen) + 1);
      }
    }
    depth.set(id, d);
    return d;
  };
  const columns = [];
  for (const id of created.keys()) {
    const d = visit(id);
    (columns[d] ||= []).push(id);
  }
  let x = 40;
  for (const column of columns.filter(Boolean)) {
    let y = 60;
    let width = 0;
    for (const id of column) {
      const node = created.get(id);
      node.pos = [x, y];
      y += node.size[1] + LiteGraph.NODE_TITLE_HEIGHT + 30;
      width = Math.max(width, node.size[0]);
    }
    x += width + 60;
  }
  graph.setDirtyCanvas(true, true);
}

/** The text chunks of a PNG (tEXt, and iTXt without compression), keyword → text. */
export function readPngText(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  const signature = [137, 80, 78, 71, 13, 10, 26, 10];
  if (!signature.every((b, i) => bytes[i] === b)) throw new Error("not a PNG file");
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const out = {};
  let offset = 8;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = latin1.decode(bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    if (type === "tEXt") {
      const zero = data.indexOf(0);
      out[latin1.decode(data.subarray(0, zero))] = latin1.decode(data.subarray(zero + 1));
    } else if (type === "iTXt") {
      const zero = data.indexOf(0);
      const keyword = latin1.decode(data.subarray(0, zero));
      if (data[zero + 1] === 0) {  // uncompressed
        let p = zero + 3;
        p = data.indexOf(0, p) + 1;  // language tag
        p = data.indexOf(0, p) + 1;  // translated keyword
        out[keyword] = utf8.decode(data.subarray(p));
      }
    } else if (type === "IEND") {
      break;
    }
    offset += 12 + length;
  }
  return out;
}

