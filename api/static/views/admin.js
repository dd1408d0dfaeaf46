// @ts-check
/** Admin: every project, and its API keys (issue: the secret is shown once; revoke). */
import { api, listAll } from "../api.js";
import { errorBox, formatBytes, formatTime, h, showError } from "../ui.js";

/** @typedef {{id: string, name: string, created_at: number, max_running_jobs: number | null,
 *   max_queued_jobs: number | null, max_storage_bytes: number | null}} Project */
/** @typedef {{id: string, redacted_value: string, created_at: number, revoked_at: number | null, is_admin: boolean}} Key */

/** @returns {import("../app.js").View} */
export function adminView() {
  const error = errorBox();
  const list = h("div", { id: "projects" });
  const name = /** @type {HTMLInputElement} */ (h("input", { id: "project-name-input", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}" }));

  /** @param {Project} project */
  function projectCard(project) {
    const keys = h("tbody");
    const secret = h("div", { "aria-live": "polite" });
    async function loadKeys() {
      /** @type {Key[]} */
      const items = await listAll(`/v1/projects/${project.id}/api_keys`);
      keys.replaceChildren(...items.map((key) => h("tr", { "data-key-id": key.id },
        h("td", { "data-label": "Key", class: "mono" }, key.redacted_value),
        h("td", { "data-label": "Created" }, formatTime(key.created_at)),
        h("td", { "data-label": "State" }, key.revoked_at ? `revoked ${formatTime(key.revoked_at)}` : key.is_admin ? "active (admin)" : "active"),
        h("td", { "data-label": "" }, key.revoked_at ? null : h("button", {
          type: "button", class: "small danger", "aria-label": `Revoke ${key.redacted_value}`,
          onclick: async () => {
            if (!confirm(`Revoke ${key.redacted_value}? Clients using it stop working at once.`)) return;
            try {
              await api(`/v1/projects/${project.id}/api_keys/${key.id}`, { method: "DELETE" });
              await loadKeys();
            } catch (e) { showError(error, e); }
          },
        }, "Revoke")))));
    }
    loadKeys().catch((e) => showError(error, e));
    const limits = [
      project.max_running_jobs ? `${project.max_running_jobs} running` : null,
      project.max_queued_jobs ? `${project.max_queued_jobs} queued` : null,
      project.max_storage_bytes ? formatBytes(project.max_storage_bytes) : null,
    ].filter(Boolean).join(", ");
    return h("section", { class: "card", "data-project-id": project.id },
      h("div", { class: "heading" },
        h("h2", null, project.name, " ", h("span", { class: "mono muted" }, project.id)),
        h("button", {
          type: "button", "aria-label": `Issue a key for ${project.name}`,
          onclick: async () => {
            try {
              /** @type {{value: string}} */
              const created = await api(`/v1/projects/${project.id}/api_keys`, { method: "POST" });
              secret.replaceChildren(h("div", { class: "secret" },
                h("p", null, h("strong", null, "New key, shown this once: "), "copy it now."),
                h("code", { class: "mono", id: "new-key" }, created.value)));
              await loadKeys();
            } catch (e) { showError(error, e); }
          },
        }, "Issue key")),
      h("p", { class: "muted" }, `Created ${formatTime(project.created_at)}${limits ? ` · limits: ${limits}` : ""}`),
      secret,
      h("div", { class: "table-wrap" }, h("table", { class: "stack" },
        h("thead", null, h("tr", null, ...["Key", "Created", "State", ""].map((t) => h("th", { scope: "col" }, t)))),
        keys)));
  }

  async function refresh() {
    /** @type {{data: Project[]}} */
    const page = await api("/v1/projects");
    list.replaceChildren(...page.data.map(projectCard));
  }

  const element = h("section", null,
    h("h1", null, "Projects and API keys"),
    h("form", {
      class: "card inline",
      onsubmit: async (/** @type {Event} */ e) => {
        e.preventDefault();
        try {
          await api("/v1/projects", { method: "POST", json: { name: name.value.trim() } });
          name.value = "";
          await refresh();
        } catch (err) { showError(error, err); }
      },
    },
    h("div", { class: "field grow" }, h("label", { for: "project-name-input" }, "New project name"), name),
    h("button", { type: "submit", class: "primary" }, "Create project")),
    error,
    list);
  refresh().catch((e) => showError(error, e));
  return { element };
}
