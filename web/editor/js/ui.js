// Small DOM helpers shared by the panels: toasts, elements, dialogs.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// The last messages shown, kept after they fade (for the console and tests).
export const toastLog = [];
window.sumiToasts = toastLog;

export function toast(message, kind = "info", ms = 4000) {
  toastLog.push(`${kind}: ${message}`);
  if (toastLog.length > 50) toastLog.shift();
  const box = document.getElementById("toasts");
  const item = el("div", {class: `toast ${kind}`}, message);
  box.append(item);
  if (ms) setTimeout(() => item.remove(), ms);
  return item;
}

export function dialog(title, body, buttons) {
  const overlay = el("div", {class: "overlay"});
  const close = () => overlay.remove();
  const footer = el("div", {class: "dialog-buttons"},
    ...buttons.map(([label, fn, cls]) => el("button", {class: cls || "", onclick: async () => {
      if ((await fn?.()) !== false) close();
    }}, label)));
  overlay.append(el("div", {class: "dialog", role: "dialog"}, el("h2", {}, title), body, footer));
  overlay.addEventListener("keydown", (event) => { if (event.key === "Escape") close(); });
  document.body.append(overlay);
  overlay.querySelector("input, textarea, select")?.focus();
  return {overlay, close};
}
