// Sumi's extension for ComfyUI's front end: after a run, each node shows why it ran (or that it came from
// the cache) and how long it took. Sumi's `executing` events carry a `reason`; the front end passes only the
// node id on, so this reads the websocket's text frames itself.
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";

const runs = new Map(); // node id → {reason, ms, cached}
const hooked = new WeakSet();
let current = null; // {id, started}

function finishCurrent(now) {
  if (current) {
    const entry = runs.get(current.id);
    if (entry) entry.ms = now - current.started;
    current = null;
  }
}

function onMessage(event) {
  if (typeof event.data !== "string") return;
  let message;
  try {
    message = JSON.parse(event.data);
  } catch {
    return;
  }
  const data = message.data || {};
  const now = performance.now();
  if (message.type === "execution_start") {
    runs.clear();
    current = null;
  } else if (message.type === "execution_cached") {
    for (const id of data.nodes || []) runs.set(String(id), { reason: "cached", ms: null, cached: true });
  } else if (message.type === "executing") {
    finishCurrent(now);
    if (data.node != null) {
      const id = String(data.display_node ?? data.node);
      runs.set(id, { reason: data.reason || "ran", ms: null, cached: false });
      current = { id, started: now };
    }
    app.graph?.setDirtyCanvas(true, false);
  } else if (["execution_success", "execution_error", "execution_interrupted"].includes(message.type)) {
    finishCurrent(now);
    app.graph?.setDirtyCanvas(true, false);
  }
}

function hookSocket() {
  const socket = api.socket;
  if (socket && !hooked.has(socket)) {
    hooked.add(socket);
    socket.addEventListener("message", onMessage);
  }
}

export function runLabel(entry) {
  if (!entry) return null;
  if (entry.cached) return "cached";
  const time = entry.ms == null ? "running" : `${(entry.ms / 1000).toFixed(2)} s`;
  return `${time} · ${entry.reason}`;
}

app.registerExtension({
  name: "sumi.RunReasons",
  setup() {
    hookSocket();
    // The front end replaces its socket when it reconnects; every connection starts with a status message.
    api.addEventListener("status", hookSocket);
    api.addEventListener("reconnected", hookSocket);
    window.sumiRunReasons = runs; // for tests and the console
    window.sumiRunLabel = runLabel;
  },
  nodeCreated(node) {
    const draw = node.onDrawForeground;
    node.onDrawForeground = function (ctx, ...rest) {
      const result = draw?.call(this, ctx, ...rest);
      const label = runLabel(runs.get(String(this.id)));
      if (label && !this.flags?.collapsed) {
        ctx.save();
        ctx.font = "11px sans-serif";
        ctx.fillStyle = label === "cached" ? "#8a8" : "#ccb";
        ctx.textAlign = "left";
        ctx.fillText(label, 4, this.size[1] + 14);
        ctx.restore();
      }
      return result;
    };
  },
});
