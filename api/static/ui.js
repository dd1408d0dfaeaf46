// @ts-check
/** DOM building and formatting helpers shared by the views. */

/** @typedef {Node | string | number | null | undefined | false} Leaf */
/** @typedef {Leaf | Leaf[] | Leaf[][]} Child */

/**
 * An element with attributes (on* as listeners, `class`, `for`, data-*, aria-*) and children.
 * @param {string} tag
 * @param {Record<string, unknown> | null} [attrs]
 * @param {...Child} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), /** @type {EventListener} */ (value));
    } else if (name in el && !name.includes("-") && name !== "list" && name !== "form") {
      /** @type {any} */ (el)[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

/**
 * @param {HTMLElement} el
 * @param {unknown[]} children
 */
function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** @param {number | null | undefined} seconds */
export function formatTime(seconds) {
  if (!seconds) return "";
  return new Date(seconds * 1000).toLocaleString();
}

/** @param {number | null | undefined} seconds */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** @param {number | null | undefined} n */
export function formatBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

/** @param {unknown} value @param {number} [digits] */
export function formatNumber(value, digits = 4) {
  if (typeof value !== "number") return value === null || value === undefined ? "" : String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  return Number(value.toPrecision(digits)).toString();
}

export const ACTIVE = new Set(["validating_files", "queued", "running"]);

/** @param {string} status */
export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status.replace("_", " "));
}

/**
 * A progress bar with steps and ETA for a job's progress object.
 * @param {Record<string, any>} job a job object: its status and progress
 */
export function progressBar(job) {
  const p = job.progress || {};
  if (!p.total_steps) return h("span", { class: "muted" }, ACTIVE.has(job.status) ? "waiting" : "");
  const step = p.step || 0;
  const eta = ACTIVE.has(job.status) && p.eta_seconds !== undefined ? ` · ETA ${formatDuration(p.eta_seconds)}` : "";
  return h(
    "div",
    { class: "progress" },
    h("progress", { max: p.total_steps, value: step, "aria-label": `step ${step} of ${p.total_steps}` }),
    h("span", { class: "progress-text" }, `${step}/${p.total_steps}${eta}`),
  );
}

/** @param {HTMLElement} el @param {unknown} error */
export function showError(el, error) {
  el.textContent = error instanceof Error ? error.message : String(error);
  el.hidden = false;
}

/** A status line for errors, announced to screen readers. */
export function errorBox() {
  return h("p", { class: "error", role: "alert", hidden: true });
}
