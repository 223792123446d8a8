// Sweeps: pick one or two widgets and a list of values for each; every combination is queued as its own prompt
// (the server's cache then re-runs only what a value changes, as `main.py run --set` does) and the history
// shows the results as a labelled X/Y grid.
import {dialog, el, toast} from "./ui.js";

export class SweepDialog {
  constructor(app) { this.app = app; }

  /** Every widget of the graph that a sweep can vary: [{node, widget, label}]. */
  candidates() {
    const out = [];
    for (const node of this.app.graph._nodes) {
      if (node.mode === 2 || node.mode === 4) continue;
      for (const widget of node.widgets || []) {
        if (widget.serialize === false || widget.name === "control_after_generate") continue;
        out.push({node, widget, label: `${node.title} › ${widget.name}`, key: `${node.id}/${widget.name}`});
      }
    }
    return out;
  }

  open() {
    const options = this.candidates();
    const axis = (name, optional) => {
      const select = el("select", {name: `${name}-widget`},
        optional ? el("option", {value: ""}, "(none)") : null,
        ...options.map((o) => el("option", {value: o.key}, o.label)));
      const values = el("textarea", {name: `${name}-values`, rows: "3",
        placeholder: "values: comma-separated numbers or names, one text per line"});
      return {select, values, box: el("fieldset", {}, el("legend", {}, name), select, values)};
    };
    const x = axis("X", false);
    const y = axis("Y", true);
    const seed = options.find((o) => o.widget.name === "seed");
    if (seed) x.select.value = seed.key;
    dialog("Queue a sweep", el("div", {class: "sweep-form"}, x.box, y.box), [
      ["Cancel"],
      ["Queue all", async () => {
        const axes = [];
        for (const a of [x, y]) {
          if (!a.select.value) continue;
          const target = options.find((o) => o.key === a.select.value);
          const values = parseValues(a.values.value, target.widget);
          if (!values.length) {
            toast(`Give at least one value for ${target.label}`, "error");
            return false;
          }
          axes.push({target, values});
        }
        await this.queue(axes);
        return true;
      }, "primary"],
    ]);
  }

  /** Queue every combination of `axes` ([{target: {node, widget, label}, values}]), X varying fastest. */
  async queue(axes) {
    const id = crypto.randomUUID();
    const [ax, ay] = axes;
    const combos = [];
    for (const yv of ay ? ay.values : [undefined]) {
      for (const xv of ax.values) combos.push([xv, yv]);
    }
    let queued = 0;
    for (const [index, [xv, yv]] of combos.entries()) {
      const overrides = [{node: ax.target.node.id, widget: ax.target.widget.name, value: xv}];
      if (ay) overrides.push({node: ay.target.node.id, widget: ay.target.widget.name, value: yv});
      const labels = [`${ax.target.widget.name}=${xv}`, ...(ay ? [`${ay.target.widget.name}=${yv}`] : [])];
      const sweep = {id, index, x: String(xv), y: ay ? String(yv) : null, labels,
                     axes: [ax.target.label, ...(ay ? [ay.target.label] : [])]};
      const results = await this.app.queuePrompt(0, 1, overrides, {sumi_sweep: sweep});
      if (!results.length) break;
      queued += 1;
    }
    toast(`Queued ${queued} of ${combos.length} sweep prompts`);
    return queued;
  }

  applyOverrides(workflow, overrides) {
    for (const {node: id, widget: name, value} of overrides) {
      const live = this.app.graph.getNodeById(id);
      const saved = workflow.nodes.find((n) => n.id === id);
      const index = live?.widgets?.findIndex((w) => w.name === name) ?? -1;
      if (!saved || index < 0) throw new Error(`sweep target ${id}.${name} is gone`);
      saved.widgets_values[index] = value;
    }
  }
}

export function parseValues(text, widget) {
  const numeric = widget.type === "number";
  const parts = numeric || widget.type === "combo" ? text.split(/[,\n]/) : text.split("\n");
  const values = parts.map((p) => p.trim()).filter(Boolean);
  if (numeric) return values.map(Number).filter((v) => Number.isFinite(v));
  if (widget.type === "toggle") return values.map((v) => v === "true");
  return values;
}
