// Widgets generated from an input's declaration: INT/FLOAT with min/max/step, combos, text (multi-line prompts),
// toggles, the seed's control-after-generate and Load Image's upload.
import {LiteGraph} from "/lib/litegraph/litegraph.es.js";

export const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
export const CONTROL_VALUES = ["fixed", "increment", "decrement", "randomize"];
const SAFE_MAX = Number.MAX_SAFE_INTEGER;

export function isWidgetInput(spec) {
  const [type, opts] = spec;
  if (opts?.forceInput) return false;
  return Array.isArray(type) || WIDGET_TYPES.has(type);
}

function decimals(x) {
  const text = String(x);
  return text.includes("e-") ? Number(text.split("e-")[1]) : (text.split(".")[1] || "").length;
}

export function addWidgetsFor(node, name, spec, editor) {
  const [type, opts = {}] = spec;
  const changed = () => editor.changed();
  let widget;
  if (Array.isArray(type) || type === "COMBO") {
    const values = Array.isArray(type) ? type : opts.options || [];
    const initial = opts.default ?? values[0] ?? "";
    widget = node.addWidget("combo", name, initial, changed, {values: [...values]});
    if (opts.image_upload) addImageUpload(node, widget, editor);
  } else if (type === "INT") {
    const step = opts.step ?? 1;
    widget = node.addWidget("number", name, opts.default ?? 0, changed, {
      min: Math.max(opts.min ?? -SAFE_MAX, -SAFE_MAX), max: Math.min(opts.max ?? SAFE_MAX, SAFE_MAX),
      step2: step, step: step * 10, precision: 0, round: 1});
    if (opts.control_after_generate) {
      const control = node.addWidget("combo", "control_after_generate", "randomize", changed,
                                     {values: CONTROL_VALUES});
      control.linkedTo = widget;
      widget.control = control;
    }
  } else if (type === "FLOAT") {
    const step = opts.step ?? 0.1;
    const round = opts.round ?? step;
    widget = node.addWidget("number", name, opts.default ?? 0, changed, {
      min: opts.min ?? -Infinity, max: opts.max ?? Infinity, step2: step, step: step * 10,
      precision: Math.min(Math.max(decimals(round), decimals(step)), 6), round});
  } else if (type === "BOOLEAN") {
    widget = node.addWidget("toggle", name, opts.default ?? false, changed,
                            {on: opts.label_on ?? "true", off: opts.label_off ?? "false"});
  } else if (type === "STRING" && opts.multiline) {
    widget = node.addCustomWidget(multilineWidget(name, opts.default ?? "", changed));
  } else {
    widget = node.addWidget("text", name, opts.default ?? "", changed, {});
  }
  if (opts.tooltip) widget.tooltip = opts.tooltip;
  widget.inputSpec = spec;
  return widget;
}

// A prompt box: wrapped text over several lines; a click opens a multi-line editor.
function multilineWidget(name, value, changed) {
  const lines = 4;
  return {
    type: "multiline", name, value, options: {multiline: true},
    computeSize(width) { return [width, LiteGraph.NODE_WIDGET_HEIGHT * lines + 4]; },
    draw(ctx, node, width, y) {
      const h = LiteGraph.NODE_WIDGET_HEIGHT * lines;
      ctx.fillStyle = LiteGraph.WIDGET_BGCOLOR;
      ctx.strokeStyle = LiteGraph.WIDGET_OUTLINE_COLOR;
      ctx.beginPath();
      ctx.roundRect(12, y, width - 24, h, 6);
      ctx.fill();
      ctx.stroke();
      ctx.fillStyle = this.value ? LiteGraph.WIDGET_TEXT_COLOR : LiteGraph.WIDGET_SECONDARY_TEXT_COLOR;
      ctx.font = "12px sans-serif";
      ctx.textAlign = "left";
      const wrapped = wrap(ctx, this.value || this.name, width - 40);
      wrapped.slice(0, lines).forEach((line, i) => ctx.fillText(line, 20, y + 15 + i * 16));
    },
    mouse(event, pos, node) {
      if (event.type !== "pointerdown" && event.type !== "mousedown") return false;
      const canvas = node.graph?.list_of_graphcanvas?.[0];
      canvas?.prompt(this.name, this.value, (text) => {
        if (text === null || text === this.value) return;
        this.value = text;
        node.setDirtyCanvas(true, true);
        changed();
      }, event, true);
      return true;
    },
  };
}

function wrap(ctx, text, width) {
  const out = [];
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    for (const word of paragraph.split(" ")) {
      const next = line ? `${line} ${word}` : word;
      if (ctx.measureText(next).width > width && line) {
        out.push(line);
        line = word;
      } else {
        line = next;
      }
    }
    out.push(line);
  }
  return out;
}

// Load Image: an upload button beside the file combo, a preview of the chosen file, and drops onto the node.
function addImageUpload(node, combo, editor) {
  const showImage = () => {
    if (!combo.value) return;
    const img = new Image();
    img.onload = () => { node.imgs = [img]; node.setDirtyCanvas(true, true); };
    img.src = editor.api.viewUrl({filename: combo.value, type: "input"});
  };
  const previous = combo.callback;
  combo.callback = (...args) => { showImage(); previous?.(...args); };
  const button = node.addWidget("button", "choose file to upload", "image", () => {
    const picker = document.createElement("input");
    picker.type = "file";
    picker.accept = "image/png,image/jpeg,image/webp";
    picker.onchange = () => picker.files[0] && editor.uploadToNode(node, combo, picker.files[0]);
    picker.click();
  }, {});
  button.serialize = false;  // not an input: keeps widgets_values aligned with the node's declared inputs
  node.uploadCombo = combo;
  node.showImage = showImage;
  queueMicrotask(showImage);
}

// ComfyUI's "control after generate": applied to the widget once a prompt has been queued.
export function applyControl(widget) {
  const control = widget.control?.value;
  const {min, max} = widget.options;
  if (control === "increment") widget.value = Math.min(widget.value + 1, max);
  else if (control === "decrement") widget.value = Math.max(widget.value - 1, min);
  else if (control === "randomize") {
    const span = Math.min(max, 2 ** 50) - Math.max(min, 0);
    widget.value = Math.max(min, 0) + Math.floor(Math.random() * span);
  }
}
