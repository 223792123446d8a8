// The editor's entry point: builds the canvas, the node classes and the panels, and exposes `window.app` with
// `app.graph` and `app.queuePrompt()` as ComfyUI does (tests, scripts and browser consoles use these names).
import {LGraph, LGraphCanvas, LiteGraph} from "/lib/litegraph/litegraph.es.js";
import {Api} from "./api.js";
import {installCanvasBehaviour} from "./canvas.js";
import {ChangeTracker} from "./history.js";
import {registerNodeTypes, SOCKET_COLORS} from "./nodes.js";
import {QueuePanel} from "./panels.js";
import {FAR_ZOOM, RunState} from "./run_state.js";
import {SweepDialog} from "./sweep.js";
import {toast} from "./ui.js";
import {applyControl} from "./widgets.js";
import {Workflows} from "./workflows.js";

function usedSubgraphs(graph) {
  const registry = graph.subgraphs;
  const typeOf = (node) => node.type || node.last_serialization?.type;
  const used = new Map();
  const visit = (nodes) => {
    for (const node of nodes) {
      const subgraph = registry.get(typeOf(node));
      if (subgraph && !used.has(subgraph.id)) {
        used.set(subgraph.id, subgraph.asSerialisable());
        visit(subgraph._nodes || []);
      }
    }
  };
  visit(graph._nodes);
  return [...used.values()];
}

class SumiApp {
  constructor() {
    this.api = new Api();
    this.objectInfo = {};
    this.graph = null;
    this.canvas = null;
    this.lastPrompt = null;  // the body of the last /prompt this editor sent (tests read it)
  }

  async setup() {
    this.objectInfo = await this.api.objectInfo();
    registerNodeTypes(this.objectInfo, this);
    this.graph = new LGraph();
    const element = document.getElementById("graph-canvas");
    this.canvas = new LGraphCanvas(element, this.graph);
    this.canvas.allow_searchbox = true;
    this.canvas.show_info = false;
    this.canvas.render_canvas_border = false;
    Object.assign(LGraphCanvas.link_type_colors, SOCKET_COLORS);
    // Zoomed far out, straight links look the same as curves and cost a fraction to draw (1,000-node graphs).
    const draw = this.canvas.draw.bind(this.canvas);
    this.canvas.draw = (...args) => {
      this.canvas.links_render_mode = this.canvas.ds.scale < FAR_ZOOM ? LiteGraph.LINEAR_LINK : LiteGraph.SPLINE_LINK;
      return draw(...args);
    };
    this.resize();
    window.addEventListener("resize", () => this.resize());
    this.runState = new RunState(this);
    this.tracker = new ChangeTracker(this);
    this.workflows = new Workflows(this);
    this.panel = new QueuePanel(this);
    this.sweep = new SweepDialog(this);
    installCanvasBehaviour(this);
    this.#bindToolbar();
    this.#bindConnection();
    await this.workflows.restore();
    this.api.connect();
    this.graph.start();
    window.addEventListener("focus", () => this.refreshCombos());
    document.body.dataset.ready = "true";
  }

  /** Zoom and pan so that every node is in view. */
  fitView() {
    const nodes = this.graph._nodes;
    if (!nodes.length) return;
    const bounds = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of nodes) {
      bounds[0] = Math.min(bounds[0], node.pos[0]);
      bounds[1] = Math.min(bounds[1], node.pos[1] - 30);
      bounds[2] = Math.max(bounds[2], node.pos[0] + node.size[0]);
      bounds[3] = Math.max(bounds[3], node.pos[1] + node.size[1]);
    }
    const {width, height} = this.canvas.canvas;
    const scale = Math.min(1.2, 0.92 * Math.min(width / (bounds[2] - bounds[0]), height / (bounds[3] - bounds[1])));
    this.canvas.ds.scale = scale;
    this.canvas.ds.offset = [(width / scale - (bounds[2] - bounds[0])) / 2 - bounds[0],
                             (height / scale - (bounds[3] - bounds[1])) / 2 - bounds[1]];
    this.canvas.setDirty(true, true);
  }

  resize() {
    const rect = this.canvas.canvas.parentElement.getBoundingClientRect();
    this.canvas.resize(Math.floor(rect.width), Math.floor(rect.height));
  }

  // Called after every edit: undo snapshot, autosave, and validation on the server.
  changed() {
    this.tracker?.checkSoon();
  }

  serialize() {
    const data = this.graph.serialize();
    data.extra = {...(data.extra || {}), sumi: {format_version: 1}};
    if (!data.definitions?.subgraphs?.length && this.graph.subgraphs?.size) {
      // A ComfyUI subgraph instance is a placeholder node here (this editor does not open subgraphs), which
      // litegraph does not count as using its definition: keep every definition the instances reach, so
      // nothing of the file is lost and the server can expand it.
      const subgraphs = usedSubgraphs(this.graph);
      if (subgraphs.length) data.definitions = {...(data.definitions || {}), subgraphs};
    }
    return data;
  }

  /** Queue the current graph (ComfyUI's signature: `number` 0 appends, -1 puts it in front; `batch` copies). */
  async queuePrompt(number = 0, batch = 1, overrides = null, extraData = {}) {
    const results = [];
    for (let i = 0; i < batch; i++) {
      const workflow = this.serialize();
      if (overrides) this.sweep.applyOverrides(workflow, overrides);
      try {
        this.lastPrompt = workflow;
        const response = await this.api.queuePrompt(workflow, extraData, number === -1);
        this.runState.setValidation({});
        results.push(response);
      } catch (error) {
        const nodeErrors = error.body?.node_errors;
        if (nodeErrors && Object.keys(nodeErrors).length) {
          this.runState.setValidation(nodeErrors);
          toast(`Not queued: ${Object.keys(nodeErrors).length} node(s) have errors`, "error");
        } else {
          toast(`Not queued: ${error.body?.error?.message || error.message}`, "error");
        }
        return results;
      }
      if (!overrides) this.#applyControls();
    }
    this.panel.refresh();
    return results;
  }

  #applyControls() {
    let touched = false;
    for (const node of this.graph._nodes) {
      for (const widget of node.widgets || []) {
        if (widget.control && widget.control.value !== "fixed") {
          applyControl(widget);
          touched = true;
        }
      }
    }
    if (touched) {
      this.canvas.setDirty(true, false);
      this.changed();
    }
  }

  // Combos of file names (models, input images) re-read from the server, e.g. after files were added.
  async refreshCombos() {
    try {
      this.objectInfo = await this.api.objectInfo();
    } catch {
      return;
    }
    for (const node of this.graph._nodes) {
      const info = this.objectInfo[node.type];
      if (!info) continue;
      for (const widget of node.widgets || []) {
        const spec = info.input?.required?.[widget.name] || info.input?.optional?.[widget.name];
        if (spec && Array.isArray(spec[0]) && widget.type === "combo") widget.options.values = [...spec[0]];
      }
    }
    this.canvas.setDirty(true, false);
  }

  async uploadToNode(node, combo, file) {
    try {
      const saved = await this.api.uploadImage(file);
      const name = saved.subfolder ? `${saved.subfolder}/${saved.name}` : saved.name;
      if (!combo.options.values.includes(name)) combo.options.values.push(name);
      combo.value = name;
      node.showImage?.();
      this.changed();
      toast(`Uploaded ${name}`);
    } catch (error) {
      toast(`Upload failed: ${error.body?.error?.message || error.message}`, "error");
    }
  }

  dropOnNode(node, event) {
    const file = event.dataTransfer?.files?.[0];
    if (!node.uploadCombo || !file || !file.type.startsWith("image/")) return false;
    this.uploadToNode(node, node.uploadCombo, file);
    return true;
  }

  drawNodeOverlay(node, ctx) { this.runState.drawOverlay(node, ctx); }
  drawNodeImages(node, ctx) { this.runState.drawImages(node, ctx); }

  nodeMenu(node, options) {
    const state = this.runState.nodes.get(String(node.id));
    if (state?.reason) options.push(null, {content: `Last run: ${this.runState.describe(state)}`, disabled: true});
    return options;
  }

  #bindToolbar() {
    const click = (id, fn) => document.getElementById(id).addEventListener("click", fn);
    click("queue-button", () => this.queuePrompt(0, Number(document.getElementById("batch-count").value) || 1));
    click("interrupt-button", () => this.api.interrupt(this.runState.promptId));
    click("sweep-button", () => this.sweep.open());
    click("undo-button", () => this.tracker.undo());
    click("redo-button", () => this.tracker.redo());
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
        event.preventDefault();
        this.queuePrompt(event.shiftKey ? -1 : 0, 1);
      }
    });
  }

  #bindConnection() {
    const banner = document.getElementById("connection");
    this.api.addEventListener("disconnected", () => {
      banner.textContent = "Server unreachable: reconnecting… (your graph is kept)";
      banner.className = "connection offline";
    });
    this.api.addEventListener("connected", () => {
      banner.textContent = "Connected";
      banner.className = "connection online";
      this.refreshCombos();
      this.panel.refresh();
    });
    this.api.addEventListener("status", (event) => {
      const remaining = event.detail?.status?.exec_info?.queue_remaining;
      if (remaining !== undefined) document.getElementById("queue-size").textContent = `${remaining} in queue`;
      this.panel.refreshSoon();
    });
  }
}

LiteGraph.release_link_on_empty_shows_menu = false;
LiteGraph.search_filter_enabled = true;
const app = new SumiApp();
window.app = app;
window.LiteGraph = LiteGraph;  // as ComfyUI's front end does: scripts and consoles create nodes with it
app.setup().catch((error) => {
  console.error(error);
  toast(`The editor could not start: ${error.message}`, "error", 0);
});
export default app;
