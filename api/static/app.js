// @ts-check
/** The dashboard's shell: sign-in, navigation, hash routes, and a poll that pauses while the tab is hidden. */
import { ApiError, api, apiKey, setApiKey } from "./api.js";
import { errorBox, h, showError } from "./ui.js";
import { adminView } from "./views/admin.js";
import { datasetsView } from "./views/datasets.js";
import { jobView } from "./views/job.js";
import { jobsView } from "./views/jobs.js";
import { newJobView } from "./views/newjob.js";

/** @typedef {{project_id: string, project_name: string, is_admin: boolean}} Me */
/** @typedef {{element: HTMLElement, refresh?: () => Promise<void>, dispose?: () => void}} View */

const POLL_MS = 2000;
const main = /** @type {HTMLElement} */ (document.getElementById("main"));
const nav = /** @type {HTMLElement} */ (document.getElementById("nav"));
/** @type {Me | null} */
let me = null;
/** @type {View | null} */
let view = null;
/** Views with a refresh in flight: a slow answer is not asked for again before it comes. */
const busy = new WeakSet();

/** @returns {View} */
function signInView() {
  const input = /** @type {HTMLInputElement} */ (
    h("input", { id: "api-key", type: "password", autocomplete: "off", placeholder: "lq-...", required: true })
  );
  const error = errorBox();
  const form = h(
    "form",
    {
      class: "card signin",
      onsubmit: async (/** @type {Event} */ event) => {
        event.preventDefault();
        setApiKey(input.value.trim());
        try {
          await loadMe();
          if (location.hash.startsWith("#/") && location.hash.length > 2) await route();
          else location.hash = "#/jobs";
        } catch (e) {
          setApiKey(null);
          showError(error, e);
        }
      },
    },
    h("h1", null, "Sign in"),
    h("p", { class: "muted" }, "Paste a project's API key. It is kept in this tab's session storage only."),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    error,
  );
  return { element: form };
}

async function loadMe() {
  me = await api("/v1/me");
  renderNav();
}

function renderNav() {
  const route = location.hash.split("/")[1] || "jobs";
  /** @param {string} href @param {string} label @param {string} name */
  const link = (href, label, name) =>
    h("a", { href, "aria-current": route === name ? "page" : undefined }, label);
  nav.replaceChildren(
    ...(me
      ? [
          h(
            "span",
            { class: "project", title: me.project_id },
            "Project ",
            h("strong", { id: "project-name" }, me.project_name),
            me.is_admin ? h("span", { class: "badge" }, "admin") : null,
          ),
          h(
            "div",
            { class: "links" },
            link("#/jobs", "Jobs", "jobs"),
            link("#/new", "New job", "new"),
            link("#/datasets", "Datasets", "datasets"),
            me.is_admin ? link("#/admin", "Admin", "admin") : null,
            h("a", { href: "/docs" }, "API docs"),
            h("button", { type: "button", id: "sign-out", onclick: signOut }, "Sign out"),
          ),
        ]
      : []),
  );
}

function signOut() {
  setApiKey(null);
  me = null;
  location.hash = "#/";
  route();
}

/** @param {View} next */
function show(next) {
  if (view && view.dispose) view.dispose();
  view = next;
  main.replaceChildren(next.element);
}

async function route() {
  if (!apiKey()) {
    me = null;
    renderNav();
    show(signInView());
    return;
  }
  try {
    if (!me) await loadMe();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return signOut();
    throw e;
  }
  renderNav();
  const [, name, id] = location.hash.split("/");
  if (name === "jobs" && id) show(jobView(decodeURIComponent(id)));
  else if (name === "new") show(newJobView());
  else if (name === "datasets") show(datasetsView());
  else if (name === "admin" && me && me.is_admin) show(adminView());
  else show(jobsView());
  document.title = `loraq: ${main.querySelector("h1")?.textContent || "dashboard"}`;
  await poll();
}

/** Refresh the current view now; the timer calls it every few seconds while the tab is visible. */
async function poll() {
  const current = view;
  if (!current || !current.refresh || busy.has(current) || document.hidden) return;
  busy.add(current);
  try {
    await current.refresh();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) signOut();
    else console.warn("refresh failed", e);
  } finally {
    busy.delete(current);
  }
}

window.addEventListener("hashchange", () => route());
document.addEventListener("visibilitychange", () => poll());
setInterval(poll, POLL_MS);
route();
