// The server API client: HTTP routes in ComfyUI's shapes and the event websocket, reconnecting by itself.
// Events are re-dispatched as DOM events named after ComfyUI's message types ("executing", "progress", ...),
// plus "preview" (a Blob URL of a binary preview frame), "connected" and "disconnected".

const PREVIEW_IMAGE = 1;
const PREVIEW_IMAGE_WITH_METADATA = 4;

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Api extends EventTarget {
  constructor() {
    super();
    this.clientId = sessionStorage.getItem("sumi.clientId") || crypto.randomUUID().replaceAll("-", "");
    sessionStorage.setItem("sumi.clientId", this.clientId);
    this.connected = false;
    this.socket = null;
    this.retryMs = 500;
  }

  async fetchJson(path, options = {}) {
    const response = await fetch(`/api${path}`, {cache: "no-store", ...options});
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = {error: {message: text}}; }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  postJson(path, data) {
    return this.fetchJson(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                 body: JSON.stringify(data)});
  }

  objectInfo() { return this.fetchJson("/object_info"); }
  history(maxItems = 64) { return this.fetchJson(`/history?max_items=${maxItems}`); }
  queue() { return this.fetchJson("/queue"); }
  interrupt(promptId) { return this.postJson("/interrupt", promptId ? {prompt_id: promptId} : {}); }
  cancel(promptIds) { return this.postJson("/queue", {delete: promptIds}); }
  validate(workflow) { return this.postJson("/sumi/validate", {prompt: workflow}); }
  defaultWorkflow() { return this.fetchJson("/sumi/default_workflow"); }

  // The graph is sent as it is: the server converts the editor format to the API format with the node schemas.
  queuePrompt(workflow, extraData = {}, front = false) {
    return this.postJson("/prompt", {prompt: workflow, client_id: this.clientId, front,
                                     extra_data: {preview_method: "auto", ...extraData}});
  }

  // ComfyUI's user-data routes: the same files any ComfyUI-compatible front end sees.
  async listWorkflows() {
    try {
      return await this.fetchJson("/userdata?dir=workflows&recurse=true&split=false&full_info=true");
    } catch (error) {
      if (error.status === 404) return [];
      throw error;
    }
  }

  async readUserData(path) {
    const response = await fetch(`/api/userdata/${encodeURIComponent(path)}`, {cache: "no-store"});
    if (!response.ok) throw new ApiError(response.status, null);
    return response.text();
  }

  async writeUserData(path, text, overwrite = true) {
    const response = await fetch(`/api/userdata/${encodeURIComponent(path)}?overwrite=${overwrite}&full_info=true`,
                                 {method: "POST", body: text, headers: {"Content-Type": "application/json"}});
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  async uploadImage(file) {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("overwrite", "true");
    const response = await fetch("/api/upload/image", {method: "POST", body: form});
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  viewUrl(image) {
    const query = new URLSearchParams({filename: image.filename, subfolder: image.subfolder || "",
                                       type: image.type || "output"});
    return `/api/view?${query}`;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws?clientId=${this.clientId}`);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.retryMs = 500;
      socket.send(JSON.stringify({type: "feature_flags", data: {supports_preview_metadata: true}}));
      this.connected = true;
      this.dispatchEvent(new CustomEvent("connected"));
    });
    socket.addEventListener("close", () => {
      if (this.socket !== socket) return;
      const was = this.connected;
      this.connected = false;
      if (was) this.dispatchEvent(new CustomEvent("disconnected"));
      setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 5000);
    });
    socket.addEventListener("message", (event) => this.#onMessage(event.data));
  }

  #onMessage(data) {
    if (data instanceof ArrayBuffer) {
      const view = new DataView(data);
      const kind = view.getUint32(0);
      let offset = 8;
      let meta = {};
      if (kind === PREVIEW_IMAGE_WITH_METADATA) {
        const length = view.getUint32(4);
        meta = JSON.parse(new TextDecoder().decode(new Uint8Array(data, 8, length)));
        offset = 8 + length;
      } else if (kind !== PREVIEW_IMAGE) {
        return;
      }
      const type = meta.image_type || "image/jpeg";
      const url = URL.createObjectURL(new Blob([data.slice(offset)], {type}));
      this.dispatchEvent(new CustomEvent("preview", {detail: {url, node: meta.display_node_id || meta.node_id,
                                                             prompt_id: meta.prompt_id}}));
      return;
    }
    let message;
    try { message = JSON.parse(data); } catch { return; }
    if (message?.type) this.dispatchEvent(new CustomEvent(message.type, {detail: message.data || {}}));
  }
}
