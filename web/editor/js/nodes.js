// Node classes generated from /object_info alone: no node is written by hand here, so a new Python node
// appears in the editor with no front-end change.
import {LiteGraph, LGraphNode} from "/lib/litegraph/litegraph.es.js";
import {addWidgetsFor, isWidgetInput} from "./widgets.js";

export const SOCKET_COLORS = {
  MODEL: "#b39ddb", CLIP: "#ffd54f", VAE: "#ef9a9a", CONDITIONING: "#ffab91", LATENT: "#f48fb1",
  IMAGE: "#80cbc4", MASK: "#a5d6a7", CONTROL_NET: "#80deea", UPSCALE_MODEL: "#c5e1a5",
  SIGMAS: "#cddc39", SAMPLER: "#ecb4b4", NOISE: "#b0bec5", GUIDER: "#66ffff",
  INT: "#9ccc65", FLOAT: "#aed581", STRING: "#bcaaa4", BOOLEAN: "#90caf9",
};

// The search box finds nodes by name, display name, category and description.
export function searchText(info) {
  return [info.name, info.display_name, info.category, info.description].join("\n").toLowerCase();
}

function orderedInputs(info) {
  const out = [];
  for (const group of ["required", "optional"]) {
    const specs = info.input?.[group] || {};
    const order = info.input_order?.[group] || Object.keys(specs);
    for (const name of order) out.push({name, spec: specs[name], optional: group === "optional"});
  }
  return out;
}

export function registerNodeTypes(objectInfo, editor) {
  for (const key of Object.keys(LiteGraph.registered_node_types)) {
    if (objectInfo[key]) LiteGraph.unregisterNodeType(key);
  }
  for (const [type, info] of Object.entries(objectInfo)) {
    const inputs = orderedInputs(info);
    class SumiNode extends LGraphNode {
      static title = info.display_name || type;
      static comfyClass = type;
      static nodeData = info;
      static category = info.category;
      static description = info.description;

      constructor(title) {
        super(title ?? SumiNode.title, type);
        this.serialize_widgets = true;
        for (const {name, spec, optional} of inputs) {
          if (!spec) continue;
          if (isWidgetInput(spec)) {
            addWidgetsFor(this, name, spec, editor);
          } else {
            const slot = this.addInput(name, spec[0]);
            if (optional) slot.shape = LiteGraph.SlotShape?.HollowCircle ?? slot.shape;
            if (spec[1]?.tooltip) slot.tooltip = spec[1].tooltip;
          }
        }
        (info.output || []).forEach((kind, i) => {
          const slot = this.addOutput(info.output_name?.[i] || kind, kind);
          if (info.output_is_list?.[i]) slot.shape = LiteGraph.GRID_SHAPE;
        });
        const size = this.computeSize();
        this.size = [Math.max(size[0], 240), size[1]];
      }

      onConnectionsChange() { editor.changed(); }
      onDrawForeground(ctx) { editor.drawNodeOverlay(this, ctx); }
      onDrawBackground(ctx) { editor.drawNodeImages(this, ctx); }
      getExtraMenuOptions(canvas, options) { return editor.nodeMenu(this, options); }
    }
    LiteGraph.registerNodeType(type, SumiNode);
  }
}

// Slot types accepted for an input (a comma-separated list, or "*" for anything).
export function typesCompatible(outputType, inputType) {
  if (!outputType || !inputType) return false;
  if (outputType === "*" || inputType === "*") return true;
  const accepted = String(inputType).split(",");
  return String(outputType).split(",").some((t) => accepted.includes(t));
}

// Node types with an input that accepts `type` (for a link dropped into empty space).
export function nodesAccepting(objectInfo, type) {
  return Object.entries(objectInfo).filter(([, info]) => orderedInputs(info).some(
    ({spec}) => spec && !isWidgetInput(spec) && typesCompatible(type, spec[0]))).map(([name]) => name);
}

export function nodesProducing(objectInfo, type) {
  return Object.entries(objectInfo).filter(([, info]) => (info.output || []).some(
    (kind) => typesCompatible(kind, type))).map(([name]) => name);
}

