// Undo/redo over whole-graph snapshots: every edit (move, connect, widget, delete, group, mode, paste, ...) is
// caught by comparing the serialised graph after input events, so no edit needs its own undo code.
// The view (pan and zoom) is not part of an edit.

const LIMIT = 100;

// Selecting a node brings it to the front, which reorders `nodes`: that is not an edit either.
function comparable(data) {
  const copy = {...data, extra: {...(data.extra || {})}};
  delete copy.extra.ds;
  copy.nodes = [...(data.nodes || [])].sort((a, b) => String(a.id).localeCompare(String(b.id), "en", {numeric: true}));
  return JSON.stringify(copy);
}

export class ChangeTracker {
  constructor(app) {
    this.app = app;
    this.undoStack = [];
    this.redoStack = [];
    this.current = null;
    this.timer = null;
    this.restoring = false;
    // Catch an edit as soon as the gesture that made it ends, so that two quick edits stay two undo steps.
    const later = () => setTimeout(() => this.check(), 0);
    app.canvas.canvas.addEventListener("pointerup", later);
    document.addEventListener("keyup", later);
    document.addEventListener("keydown", (event) => {
      this.check();
      if (event.target.closest?.("input, textarea, select, [contenteditable]")) return;
      const key = event.key.toLowerCase();
      if (!(event.ctrlKey || event.metaKey)) return;
      if (key === "z" && !event.shiftKey) { event.preventDefault(); this.undo(); }
      if (key === "y" || (key === "z" && event.shiftKey)) { event.preventDefault(); this.redo(); }
    }, true);
  }

  /** Start a fresh history from the graph as it is now (a workflow was opened). */
  reset() {
    clearTimeout(this.timer);
    this.undoStack = [];
    this.redoStack = [];
    this.current = comparable(this.app.serialize());
  }

  checkSoon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.check(), 50);
  }

  check() {
    clearTimeout(this.timer);
    if (this.restoring) return;
    const now = comparable(this.app.serialize());
    if (this.current === null) this.current = now;
    if (now === this.current) return;
    this.undoStack.push(this.current);
    if (this.undoStack.length > LIMIT) this.undoStack.shift();
    this.redoStack = [];
    this.current = now;
    this.app.workflows.edited();
  }

  undo() { this.#step(this.undoStack, this.redoStack); }
  redo() { this.#step(this.redoStack, this.undoStack); }

  #step(from, to) {
    this.check();
    const target = from.pop();
    if (target === undefined) return;
    to.push(this.current);
    this.current = target;
    this.restoring = true;
    try {
      this.app.workflows.loadGraph(JSON.parse(target), {keepHistory: true, keepView: true});
    } finally {
      this.restoring = false;
    }
    // Loading may normalise a few fields (and its connection callbacks ask for a check): the restored graph
    // as it serialises now is the current state, not an edit.
    clearTimeout(this.timer);
    this.current = comparable(this.app.serialize());
    this.app.workflows.edited();
  }
}
