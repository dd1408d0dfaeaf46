// @ts-check
/** The jobs list: status filter, search, paging past 100, live progress, cancel from the row. */
import { api } from "../api.js";
import { ACTIVE, errorBox, formatTime, h, progressBar, showError, statusBadge } from "../ui.js";

const PAGE = 50;
const STATUSES = ["", "validating_files", "queued", "running", "succeeded", "failed", "cancelled"];
// Kept across navigation: back from a job lands on the same filter.
const state = { status: "", q: "", wanted: PAGE };

/** @typedef {{id: string, model: string, status: string, suffix: string | null, created_at: number,
 *   fine_tuned_model: string | null, error: {message: string} | null, progress: Record<string, any> | null,
 *   metadata: Record<string, string> | null, adapter: {type: string, r: number}}} Job */

/** @returns {import("../app.js").View} */
export function jobsView() {
  const error = errorBox();
  const rows = h("tbody");
  const more = /** @type {HTMLButtonElement} */ (
    h("button", { type: "button", hidden: true, onclick: () => { state.wanted += PAGE; refresh(); } }, "Load more")
  );
  const count = h("p", { class: "muted", "aria-live": "polite" });
  const status = /** @type {HTMLSelectElement} */ (
    h(
      "select",
      { id: "status-filter", onchange: () => { state.status = status.value; state.wanted = PAGE; refresh(); } },
      STATUSES.map((s) => h("option", { value: s, selected: s === state.status }, s ? s.replace("_", " ") : "any")),
    )
  );
  /** @type {number | undefined} */
  let typing;
  const search = /** @type {HTMLInputElement} */ (
    h("input", {
      id: "job-search", type: "search", value: state.q, placeholder: "id, suffix, model or metadata",
      oninput: () => {
        clearTimeout(typing);
        typing = window.setTimeout(() => { state.q = search.value.trim(); state.wanted = PAGE; refresh(); }, 300);
      },
    })
  );
  let generation = 0;

  async function refresh() {
    const mine = ++generation;
    /** @type {Job[]} */
    const jobs = [];
    let after = null;
    let hasMore = true;
    while (hasMore && jobs.length < state.wanted) {
      const params = new URLSearchParams({ limit: String(Math.min(100, state.wanted - jobs.length)) });
      if (state.status) params.set("status", state.status);
      if (state.q) params.set("q", state.q);
      if (after) params.set("after", after);
      /** @type {{data: Job[], has_more: boolean}} */
      const page = await api(`/v1/fine_tuning/jobs?${params}`);
      jobs.push(...page.data);
      hasMore = page.has_more && page.data.length > 0;
      after = page.data.length ? page.data[page.data.length - 1].id : null;
    }
    if (mine !== generation) return;  // a newer filter's answer is on its way
    error.hidden = true;
    rows.replaceChildren(...(jobs.length ? jobs.map(row) : [h("tr", null, h("td", { colspan: 6 }, "No jobs."))]));
    count.textContent = `${jobs.length}${hasMore ? "+" : ""} job${jobs.length === 1 ? "" : "s"}`;
    more.hidden = !hasMore;
  }

  /** @param {Job} job */
  function row(job) {
    const cancel = ACTIVE.has(job.status)
      ? h("button", {
          type: "button", class: "danger small", "aria-label": `Cancel ${job.id}`,
          onclick: async () => {
            try {
              await api(`/v1/fine_tuning/jobs/${job.id}/cancel`, { method: "POST" });
              await refresh();
            } catch (e) { showError(error, e); }
          },
        }, "Cancel")
      : null;
    return h(
      "tr",
      {
        "data-job-id": job.id, "data-status": job.status, class: "opens",
        // The whole row opens the job; its id stays the link that keyboards and screen readers use.
        onclick: (/** @type {MouseEvent} */ event) => {
          const target = /** @type {Element} */ (event.target);
          if (target.closest("a, button") || window.getSelection()?.toString()) return;  // a copied id is no click
          location.hash = `#/jobs/${job.id}`;
        },
      },
      h("td", { "data-label": "Job" },
        h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id),
        job.suffix ? h("div", { class: "muted" }, job.suffix) : null),
      h("td", { "data-label": "Model" }, job.model,
        h("div", { class: "muted" }, `${job.adapter.type} r=${job.adapter.r}`)),
      h("td", { "data-label": "Status" }, statusBadge(job.status),
        job.error ? h("div", { class: "error-text" }, job.error.message) : null),
      h("td", { "data-label": "Progress" }, progressBar(job)),
      h("td", { "data-label": "Created" }, formatTime(job.created_at)),
      h("td", { "data-label": "" }, cancel),
    );
  }

  const element = h(
    "section",
    null,
    h("div", { class: "heading" }, h("h1", null, "Fine-tuning jobs"), h("a", { href: "#/new", class: "button primary" }, "New job")),
    h("div", { class: "filters" },
      h("div", { class: "field" }, h("label", { for: "status-filter" }, "Status"), status),
      h("div", { class: "field grow" }, h("label", { for: "job-search" }, "Search"), search)),
    error,
    count,
    h("div", { class: "table-wrap" },
      h("table", { class: "jobs stack" },
        h("thead", null, h("tr", null, ...["Job", "Model", "Status", "Progress", "Created", ""].map((t) => h("th", { scope: "col" }, t)))),
        rows)),
    more,
  );
  return {
    element,
    refresh: () => refresh().catch((e) => showError(error, e)),
  };
}
