// The side panel: the queue (running and pending, with cancel and interrupt) and the history as a gallery.
// Each image opens large, and its workflow loads onto the canvas with one click; the prompts of one sweep are
// shown together as a labelled X/Y grid.
import {el, toast} from "./ui.js";

export class QueuePanel {
  constructor(app) {
    this.app = app;
    this.queueList = document.getElementById("queue-list");
    this.gallery = document.getElementById("history-list");
    this.timer = null;
    document.getElementById("clear-history").addEventListener("click", async () => {
      await this.app.api.postJson("/history", {clear: true});
      this.refresh();
    });
    document.getElementById("panel-toggle").addEventListener("click", () => {
      document.body.classList.toggle("panel-hidden");
      app.resize();
    });
  }

  refreshSoon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), 150);
  }

  async refresh() {
    try {
      const [queue, history] = await Promise.all([this.app.api.queue(), this.app.api.history(64)]);
      this.#renderQueue(queue);
      this.#renderHistory(history);
    } catch {
      // offline: the connection banner says so; the panel keeps what it showed
    }
  }

  #renderQueue(queue) {
    const rows = [];
    for (const item of queue.queue_running || []) rows.push(this.#queueRow(item, "running"));
    const pending = [...(queue.queue_pending || [])].sort((a, b) => a[0] - b[0]);
    for (const item of pending) rows.push(this.#queueRow(item, "pending"));
    if (!rows.length) rows.push(el("div", {class: "empty"}, "Queue is empty"));
    this.queueList.replaceChildren(...rows);
  }

  #queueRow(item, state) {
    const [number, promptId, , extra] = item;
    const sweep = extra?.sumi_sweep;
    const label = sweep ? `sweep ${sweep.labels.join(", ")}` : `#${number}`;
    const button = state === "running"
      ? el("button", {class: "small danger", title: "Interrupt", onclick: () => this.app.api.interrupt(promptId)}, "Interrupt")
      : el("button", {class: "small", title: "Cancel", onclick: async () => {
        await this.app.api.cancel([promptId]);
        this.refresh();
      }}, "Cancel");
    return el("div", {class: `queue-item ${state}`, dataset: {promptId, state}},
      el("span", {class: "state"}, state), el("span", {class: "label"}, label), button);
  }

  #renderHistory(history) {
    const entries = Object.entries(history || {}).reverse();
    const cards = [];
    const sweeps = new Map();
    for (const [promptId, entry] of entries) {
      const sweep = entry.prompt?.[3]?.sumi_sweep;
      if (sweep) {
        if (!sweeps.has(sweep.id)) {
          sweeps.set(sweep.id, []);
          cards.push({sweep: sweep.id});
        }
        sweeps.get(sweep.id).push([promptId, entry]);
        continue;
      }
      cards.push({promptId, entry});
    }
    const nodes = cards.map((card) => card.sweep ? this.#sweepGrid(sweeps.get(card.sweep))
                                                 : this.#historyCard(card.promptId, card.entry));
    if (!nodes.length) nodes.push(el("div", {class: "empty"}, "No finished prompts yet"));
    this.gallery.replaceChildren(...nodes);
  }

  #images(entry) {
    const out = [];
    for (const output of Object.values(entry.outputs || {})) {
      out.push(...(output.images || []));
    }
    return out;
  }

  #historyCard(promptId, entry) {
    const status = entry.status?.status_str || "unknown";
    const images = this.#images(entry);
    const thumbs = images.map((image) => el("img", {class: "thumb", src: this.app.api.viewUrl(image),
      alt: image.filename, loading: "lazy", onclick: () => this.openLarge(image, entry)}));
    return el("div", {class: `history-item ${status}`, dataset: {promptId, status}},
      el("div", {class: "history-head"}, el("span", {}, `#${entry.prompt?.[0] ?? ""} ${status}`),
         el("button", {class: "small", title: "Load this workflow", onclick: () => this.loadWorkflow(entry)}, "Load")),
      thumbs.length ? el("div", {class: "thumbs"}, thumbs) : el("div", {class: "no-images"}, "no images"));
  }

  #sweepGrid(items) {
    items.sort((a, b) => a[1].prompt[3].sumi_sweep.index - b[1].prompt[3].sumi_sweep.index);
    const first = items[0][1].prompt[3].sumi_sweep;
    const xs = [...new Set(items.map(([, e]) => e.prompt[3].sumi_sweep.x))];
    const ys = [...new Set(items.map(([, e]) => e.prompt[3].sumi_sweep.y ?? ""))];
    const cell = new Map(items.map(([, e]) => [`${e.prompt[3].sumi_sweep.x}\u0000${e.prompt[3].sumi_sweep.y ?? ""}`, e]));
    const header = el("tr", {}, el("th", {}, first.axes[1] ? `${first.axes[1]} ↓ / ${first.axes[0]} →` : first.axes[0]),
                      ...xs.map((x) => el("th", {}, x)));
    const rows = ys.map((y) => el("tr", {}, el("th", {}, y),
      ...xs.map((x) => {
        const entry = cell.get(`${x}\u0000${y}`);
        const image = entry && this.#images(entry)[0];
        return el("td", {}, image ? el("img", {class: "thumb", src: this.app.api.viewUrl(image), alt: `${x} ${y}`,
                                               onclick: () => this.openLarge(image, entry)})
                                  : el("span", {class: "no-images"}, entry?.status?.status_str || "…"));
      })));
    return el("div", {class: "history-item sweep", dataset: {sweep: first.id}},
      el("div", {class: "history-head"}, el("span", {}, `Sweep: ${first.axes.join(" × ")}`)),
      el("table", {class: "sweep-grid"}, header, ...rows));
  }

  openLarge(image, entry) {
    const overlay = el("div", {class: "overlay lightbox", onclick: (event) => {
      if (event.target === overlay) overlay.remove();
    }});
    overlay.append(el("div", {class: "lightbox-body"},
      el("img", {src: this.app.api.viewUrl(image), alt: image.filename}),
      el("div", {class: "dialog-buttons"},
        el("span", {class: "filename"}, image.filename),
        el("button", {onclick: () => { overlay.remove(); this.loadWorkflow(entry); }}, "Load workflow"),
        el("button", {onclick: () => overlay.remove()}, "Close"))));
    document.body.append(overlay);
  }

  loadWorkflow(entry) {
    const extra = entry.prompt?.[3] || {};
    const workflow = extra.extra_pnginfo?.workflow;
    const name = `history #${entry.prompt?.[0] ?? ""}`;
    if (workflow) this.app.workflows.newTab(name, workflow);
    else if (entry.prompt?.[2]) this.app.workflows.loadApi(entry.prompt[2], name);
    else toast("This entry carries no workflow", "error");
  }
}
