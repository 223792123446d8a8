// What the server says about the graph, drawn onto its nodes: the node running now and its progress, the live
// preview, output images, and after a run whether each node ran or came from the cache, why it ran (the
// executor's `reason`) and how long it took; before a run, the validator's errors on the node and input.
import {LiteGraph} from "/lib/litegraph/litegraph.es.js";
import {toast} from "./ui.js";

export const FAR_ZOOM = 0.35;  // below this zoom, text on the canvas is unreadable: outlines only
const COLORS = {running: "#4caf50", ran: "#64b5f6", cached: "#9e9e9e", error: "#f44336"};

export class RunState {
  constructor(app) {
    this.app = app;
    this.nodes = new Map();  // node id → {state, reason, ms, progress, preview, startedAt}
    this.errors = {};        // node id → [{input_name, message, details, hint}]
    this.promptId = null;
    this.running = null;
    this.validateTimer = null;
    this.validateSeq = 0;
    const on = (type, fn) => app.api.addEventListener(type, (event) => fn(event.detail));
    on("execution_start", (d) => this.#start(d));
    on("execution_cached", (d) => this.#cached(d));
    on("executing", (d) => this.#executing(d));
    on("progress", (d) => this.#progress(d));
    on("executed", (d) => this.#executed(d));
    on("execution_success", () => this.#finish());
    on("execution_error", (d) => this.#error(d));
    on("execution_interrupted", () => { this.#finish(); toast("Interrupted"); });
    on("preview", (d) => this.#preview(d));
  }

  graphLoaded() {
    this.nodes.clear();
    this.errors = {};
  }

  #node(id) {
    const top = String(id).split(":")[0];
    return this.app.graph.getNodeById(/^\d+$/.test(top) ? Number(top) : top);
  }

  // A node inside a subgraph ("12:5", as the server expands it) is shown on its instance on the canvas ("12").
  #entry(id) {
    const key = String(id).split(":")[0];
    if (!this.nodes.has(key)) this.nodes.set(key, {});
    return this.nodes.get(key);
  }

  #redraw() { this.app.canvas.setDirty(true, true); }

  #start({prompt_id: promptId}) {
    this.promptId = promptId;
    for (const entry of this.nodes.values()) {
      delete entry.state;
      delete entry.progress;
      if (entry.preview) URL.revokeObjectURL(entry.preview.src);
      delete entry.preview;
    }
    document.body.dataset.running = "true";
    this.#redraw();
  }

  #cached({nodes}) {
    for (const id of nodes || []) Object.assign(this.#entry(id), {state: "cached", reason: "cached", ms: 0});
    this.#redraw();
  }

  #closeRunning(now) {
    if (this.running === null) return;
    const entry = this.#entry(this.running);
    if (entry.state === "running") {
      entry.state = "ran";
      entry.ms = (entry.before || 0) + now - entry.startedAt;  // a subgraph instance sums its inner nodes
      delete entry.progress;
    }
    this.running = null;
  }

  #executing({node, reason}) {
    const now = performance.now();
    this.#closeRunning(now);
    if (node === null || node === undefined) {
      this.#finish();
      return;
    }
    const entry = this.#entry(node);
    const before = entry.promptId === this.promptId && entry.state === "ran" ? entry.ms : 0;
    Object.assign(entry, {state: "running", reason: reason || "not cached", startedAt: now, ms: null, before,
                          promptId: this.promptId});
    this.running = String(node);
    this.#redraw();
  }

  #progress({node, value, max}) {
    if (node === null || node === undefined) return;
    this.#entry(node).progress = [value, max];
    this.#redraw();
  }

  #preview({url, node}) {
    const id = node ?? this.running;
    if (id === null || id === undefined) return;
    const img = new Image();
    img.onload = () => {
      const entry = this.#entry(id);
      if (entry.preview) URL.revokeObjectURL(entry.preview.src);
      entry.preview = img;
      this.#redraw();
    };
    img.src = url;
  }

  #executed({node, output}) {
    const target = this.#node(node);
    if (!target || !output?.images?.length) return;
    const images = output.images.map((image) => {
      const img = new Image();
      img.onload = () => this.#redraw();
      img.src = this.app.api.viewUrl(image);
      return img;
    });
    target.imgs = images;
    target.outputImages = output.images;
    const entry = this.#entry(node);
    if (entry.preview) {
      URL.revokeObjectURL(entry.preview.src);
      delete entry.preview;
    }
    this.#redraw();
  }

  #finish() {
    this.#closeRunning(performance.now());
    delete document.body.dataset.running;
    this.app.panel.refreshSoon();
    this.#redraw();
  }

  #error(data) {
    this.#closeRunning(performance.now());
    const id = data.node_id;
    if (id !== undefined && id !== null) {
      Object.assign(this.#entry(id), {state: "error", reason: `${data.exception_type}: ${data.exception_message}`});
    }
    toast(`Node ${id} (${data.node_type}) failed: ${data.exception_message}`, "error", 8000);
    this.#finish();
  }

  describe(entry) {
    if (entry.state === "cached") return "cached";
    const time = entry.ms === null || entry.ms === undefined ? "" : ` · ${formatMs(entry.ms)}`;
    return `${entry.reason}${time}`;
  }

  // -- validation before anything runs -------------------------------------------------------------------------

  validateSoon() {
    clearTimeout(this.validateTimer);
    this.validateTimer = setTimeout(() => this.validate(), 250);
  }

  async validate() {
    const seq = ++this.validateSeq;
    let result;
    try {
      result = await this.app.api.validate(this.app.serialize());
    } catch (error) {
      result = error.body && "node_errors" in error.body ? error.body : null;
    }
    if (seq !== this.validateSeq || !result) return;
    this.setValidation(result.node_errors || {}, result.error);
  }

  setValidation(nodeErrors, general = null) {
    this.errors = {};
    for (const [id, entry] of Object.entries(nodeErrors)) {
      const [top, ...inner] = id.split(":");  // an error inside a subgraph is shown on its instance
      const where = inner.length ? `inside ${id} (${entry.class_type}): ` : "";
      (this.errors[top] ||= []).push(...entry.errors.map((e) => ({
        input_name: inner.length ? null : e.extra_info?.input_name, message: where + e.message,
        details: e.details, hint: e.extra_info?.hint})));
    }
    const status = document.getElementById("validation");
    const count = Object.keys(this.errors).length;
    const generalText = general && !count ? general.message : null;
    status.textContent = count ? `${count} node(s) with errors` : generalText || "Ready";
    status.className = count || generalText ? "validation bad" : "validation good";
    status.title = Object.entries(this.errors).map(([id, errs]) => errs.map(
      (e) => `#${id} ${e.input_name ? `${e.input_name}: ` : ""}${e.message}${e.hint ? ` (${e.hint})` : ""}`)
      .join("\n")).join("\n");
    this.#redraw();
  }

  // -- drawing -------------------------------------------------------------------------------------------------

  drawOverlay(node, ctx) {
    const entry = this.nodes.get(String(node.id));
    const errors = this.errors[String(node.id)];
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const [w, h] = node.size;
    if (node.flags?.collapsed) return;
    if (entry?.state) {
      ctx.save();
      ctx.strokeStyle = COLORS[entry.state];
      ctx.lineWidth = entry.state === "running" ? 3 : 1.5;
      ctx.beginPath();
      ctx.roundRect(-2, -title - 2, w + 4, h + title + 4, 10);
      ctx.stroke();
      // The badge under the node: why it ran and how long it took, or "cached" (unreadable when far out).
      if (this.app.canvas.ds.scale >= FAR_ZOOM) {
        const text = this.describe(entry);
        ctx.font = "11px sans-serif";
        const tw = Math.min(ctx.measureText(text).width + 12, Math.max(w, 160));
        ctx.fillStyle = COLORS[entry.state];
        ctx.globalAlpha = 0.9;
        ctx.beginPath();
        ctx.roundRect(0, h + 4, tw, 18, 4);
        ctx.fill();
        ctx.globalAlpha = 1;
        ctx.fillStyle = "#111";
        ctx.textAlign = "left";
        ctx.fillText(fit(ctx, text, tw - 12), 6, h + 17);
      }
      if (entry.progress) {
        const [value, max] = entry.progress;
        ctx.fillStyle = "#2e7d32";
        ctx.fillRect(0, -title, w * Math.min(value / max, 1), 4);
      }
      ctx.restore();
    }
    if (errors?.length) {
      ctx.save();
      ctx.strokeStyle = COLORS.error;
      ctx.lineWidth = 3;
      ctx.beginPath();
      ctx.roundRect(-3, -title - 3, w + 6, h + title + 6, 10);
      ctx.stroke();
      if (this.app.canvas.ds.scale < FAR_ZOOM) {  // the outline says it; the text would be unreadable
        ctx.restore();
        return;
      }
      ctx.font = "12px sans-serif";
      ctx.textAlign = "left";
      let y = -title - 8;
      for (const error of errors.slice(0, 3).reverse()) {
        const text = `${error.input_name ? `${error.input_name}: ` : ""}${error.message}${error.hint ? ` — ${error.hint}` : ""}`;
        ctx.fillStyle = COLORS.error;
        ctx.fillText(fit(ctx, text, Math.max(w, 320)), 0, y);
        y -= 16;
      }
      // Mark the input concerned: its slot, or its widget.
      for (const error of errors) {
        if (!error.input_name) continue;
        const slot = node.inputs?.findIndex((input) => input.name === error.input_name) ?? -1;
        if (slot >= 0) {
          const pos = node.getConnectionPos(true, slot);
          ctx.fillStyle = COLORS.error;
          ctx.beginPath();
          ctx.arc(pos[0] - node.pos[0], pos[1] - node.pos[1], 6, 0, Math.PI * 2);
          ctx.fill();
        }
        const widget = node.widgets?.find((wd) => wd.name === error.input_name);
        if (widget?.y !== undefined) {
          ctx.strokeStyle = COLORS.error;
          ctx.lineWidth = 2;
          ctx.strokeRect(10, widget.y, w - 20, LiteGraph.NODE_WIDGET_HEIGHT);
        }
      }
      ctx.restore();
    }
  }

  drawImages(node, ctx) {
    const entry = this.nodes.get(String(node.id));
    const image = entry?.preview || node.imgs?.[0];
    if (!image || !image.complete || !image.naturalWidth || node.flags?.collapsed) return;
    const top = widgetsBottom(node) + 6;
    const [w, h] = node.size;
    const room = h - top - 6;
    if (room < 24) {
      node.size[1] = top + Math.min(w, 256) + 6;  // make room for the image once, and draw it in the next frame
      this.#redraw();
      return;
    }
    const scale = Math.min((w - 12) / image.naturalWidth, room / image.naturalHeight);
    const iw = image.naturalWidth * scale;
    const ih = image.naturalHeight * scale;
    ctx.drawImage(image, (w - iw) / 2, top + (room - ih) / 2, iw, ih);
  }
}

function widgetsBottom(node) {
  let bottom = (node.inputs?.length || node.outputs?.length)
    ? Math.max(node.inputs?.length || 0, node.outputs?.length || 0) * LiteGraph.NODE_SLOT_HEIGHT + 4 : 0;
  for (const widget of node.widgets || []) {
    const height = widget.computeSize?.(node.size[0])[1] ?? LiteGraph.NODE_WIDGET_HEIGHT;
    if (widget.y !== undefined) bottom = Math.max(bottom, widget.y + height);
  }
  return bottom;
}

// Text cut to a width, remembered: cutting measures the text once per character removed, every frame otherwise.
const fitted = new Map();

function fit(ctx, text, width) {
  const key = `${ctx.font}\u0000${width}\u0000${text}`;
  let out = fitted.get(key);
  if (out === undefined) {
    out = text;
    if (ctx.measureText(text).width > width) {
      while (out.length > 3 && ctx.measureText(`${out}…`).width > width) out = out.slice(0, -1);
      out = `${out}…`;
    }
    if (fitted.size > 2000) fitted.clear();
    fitted.set(key, out);
  }
  return out;
}

export function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}
