// @ts-check
/** The project's datasets: format, examples, size, sha256, a preview of the first examples, delete. */
import { api, downloadFile, listAll, readHead } from "../api.js";
import { errorBox, formatBytes, formatTime, h, showError } from "../ui.js";

const PREVIEW_BYTES = 16 * 1024;
const PREVIEW_EXAMPLES = 5;

/** @typedef {{id: string, filename: string, format: string | null, examples: number | null, bytes: number,
 *   sha256: string, created_at: number, status: string, tokens?: number | null}} DatasetFile */

/** @returns {import("../app.js").View} */
export function datasetsView() {
  const error = errorBox();
  const rows = h("tbody");
  const preview = h("div", { id: "preview", "aria-live": "polite" });

  /** @param {DatasetFile} file */
  async function showPreview(file) {
    preview.replaceChildren(h("p", { class: "muted" }, `Reading ${file.filename}…`));
    try {
      const head = await readHead(file.id, PREVIEW_BYTES);
      // Whole lines only: the last one may be cut at the byte limit.
      const lines = head.split("\n").filter((line, i, all) => line.trim() && (i < all.length - 1 || head.length < PREVIEW_BYTES));
      const examples = lines.slice(0, PREVIEW_EXAMPLES).map((line) => {
        try { return JSON.stringify(JSON.parse(line), null, 2); } catch { return line; }
      });
      preview.replaceChildren(h("section", { class: "card" },
        h("h2", null, `Preview: ${file.filename}`),
        h("p", { class: "muted" }, `The first ${examples.length} examples.`),
        ...examples.map((text, i) => h("figure", null, h("figcaption", null, `line ${i + 1}`), h("pre", { class: "json" }, text)))));
    } catch (e) { showError(error, e); }
  }

  /** @param {DatasetFile} file */
  function row(file) {
    return h("tr", { "data-file-id": file.id },
      h("td", { "data-label": "File" }, h("strong", null, file.filename), h("div", { class: "mono muted" }, file.id)),
      h("td", { "data-label": "Format" }, file.format || ""),
      h("td", { "data-label": "Examples" }, file.examples ?? ""),
      h("td", { "data-label": "Tokens" }, file.tokens ?? "—"),
      h("td", { "data-label": "Size" }, formatBytes(file.bytes)),
      h("td", { "data-label": "sha256", class: "mono", title: file.sha256 }, `${file.sha256.slice(0, 12)}…`),
      h("td", { "data-label": "Uploaded" }, formatTime(file.created_at)),
      h("td", { "data-label": "", class: "row-actions" },
        h("button", { type: "button", class: "small", "aria-label": `Preview ${file.filename}`, onclick: () => showPreview(file) }, "Preview"),
        h("button", { type: "button", class: "small", "aria-label": `Download ${file.filename}`, onclick: () => downloadFile(file.id, file.filename).catch((e) => showError(error, e)) }, "Download"),
        h("button", {
          type: "button", class: "small danger", "aria-label": `Delete ${file.filename}`,
          onclick: async () => {
            if (!confirm(`Delete ${file.filename} (${file.id})?`)) return;
            try {
              await api(`/v1/files/${file.id}`, { method: "DELETE" });
              await refresh();
            } catch (e) { showError(error, e); }
          },
        }, "Delete")));
  }

  async function refresh() {
    /** @type {DatasetFile[]} */
    const files = await listAll("/v1/files?purpose=fine-tune");
    rows.replaceChildren(...(files.length ? files.map(row) : [h("tr", null, h("td", { colspan: 8 }, "No datasets yet: upload one from New job."))]));
  }

  const element = h("section", null,
    h("div", { class: "heading" }, h("h1", null, "Datasets"), h("a", { href: "#/new", class: "button" }, "Upload in New job")),
    error,
    h("div", { class: "table-wrap" }, h("table", { class: "stack", id: "datasets" },
      h("thead", null, h("tr", null, ...["File", "Format", "Examples", "Tokens", "Size", "sha256", "Uploaded", ""].map((t) => h("th", { scope: "col" }, t)))),
      rows)),
    preview);
  refresh().catch((e) => showError(error, e));
  return { element };
}
