// @ts-check
/** One job: spec, status history, live progress, loss chart, events, checkpoints, results, samples. */
import { ApiError, api, downloadFile, listAll, request } from "../api.js";
import { LossChart, metricsByStep } from "../chart.js";
import { extractFromTarGz } from "../tar.js";
import {
  ACTIVE, errorBox, formatBytes, formatDuration, formatNumber, formatTime, h, progressBar, showError, statusBadge,
} from "../ui.js";

/** @typedef {{id: string, created_at: number, level: string, message: string, type: string,
 *   data: Record<string, any> | null}} JobEvent */

// The status history: the message events, less the per-checkpoint ones (those have their own table).
const STATUS_MESSAGE = /^(?!Checkpoint )/;

/**
 * A definition list from [term, value] pairs, leaving out empty values.
 * @param {[string, unknown][]} pairs
 */
function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => [h("dt", null, k), h("dd", null, v instanceof Node ? v : formatNumber(v))]));
}

/** @param {string} title @param {...(Node | null)} body */
function section(title, ...body) {
  const id = `s-${title.toLowerCase().replace(/\W+/g, "-")}`;
  return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title), ...body);
}

/** @param {string} fileId @param {string} label */
function downloadButton(fileId, label) {
  const button = /** @type {HTMLButtonElement} */ (h("button", {
    type: "button", class: "small", "data-file-id": fileId,
    onclick: async () => {
      button.disabled = true;
      try {
        const file = await api(`/v1/files/${fileId}`).catch(() => ({ filename: fileId }));
        await downloadFile(fileId, /** @type {{filename: string}} */ (file).filename);
      } finally { button.disabled = false; }
    },
  }, label));
  return button;
}

/** @param {string} jobId @returns {import("../app.js").View} */
export function jobView(jobId) {
  const error = errorBox();
  const title = h("h1", { class: "mono" }, jobId);
  const headerStatus = h("div", { class: "heading-status" });
  const live = h("div", { "aria-live": "polite" });
  const chartBox = h("div", { class: "chart", id: "loss-chart" });
  const chart = new LossChart(chartBox);
  const spec = h("div");
  const history = h("ol", { class: "history" });
  const eventsBody = h("tbody");
  const checkpointsBody = h("tbody");
  const results = h("ul", { class: "files" });
  const samplesSection = section("Samples: base vs tuned", h("div", { id: "samples" }));
  samplesSection.hidden = true;
  const manifestPre = h("pre", { class: "json", id: "manifest", hidden: true });
  const manifestError = errorBox();
  /** @type {JobEvent[]} */
  let events = [];  // newest first, as the API lists them
  /** @type {Record<string, any> | null} */
  let job = null;
  let specShown = false;
  let samplesDone = false;

  const cancel = /** @type {HTMLButtonElement} */ (h("button", {
    type: "button", class: "danger", hidden: true, id: "cancel-job",
    onclick: async () => {
      try {
        await api(`/v1/fine_tuning/jobs/${jobId}/cancel`, { method: "POST" });
        await refresh();
      } catch (e) { showError(error, e); }
    },
  }, "Cancel job"));

  const manifestButton = /** @type {HTMLButtonElement} */ (h("button", {
    type: "button", hidden: true, id: "show-manifest",
    onclick: async () => {
      if (!job || !job.result_files.length) return;
      manifestButton.disabled = true;
      try {
        const blob = await (await request(`/v1/files/${job.result_files[0]}/content`)).blob();
        const bytes = await extractFromTarGz(blob, "manifest.json");
        if (!bytes) throw new Error("the bundle has no manifest.json");
        manifestPre.textContent = JSON.stringify(JSON.parse(new TextDecoder().decode(bytes)), null, 2);
        manifestPre.hidden = false;
        manifestButton.hidden = true;
      } catch (e) {
        showError(manifestError, e);
        manifestButton.disabled = false;
      }
    },
  }, "Show manifest"));

  /** @param {Record<string, any>} j */
  function renderSpec(j) {
    const a = j.adapter || {};
    const q = a.quantization;
    spec.replaceChildren(
      facts([
        ["Model", j.model], ["Fine-tuned model", j.fine_tuned_model], ["Suffix", j.suffix],
        ["Seed", j.seed == null ? null : String(j.seed)],  // an identifier to copy: no thousands separators
        ["Training file", j.training_file], ["Validation file", j.validation_file],
        ["Metadata", j.metadata ? JSON.stringify(j.metadata) : null],
        ["Adapter", `${a.type} r=${a.r} alpha=${a.alpha} dropout=${a.dropout}`],
        ["Target modules", Array.isArray(a.target_modules) ? a.target_modules.join(", ") : a.target_modules],
        ["Quantization", q ? `${q.bits}-bit ${q.quant_type}${q.double_quant ? ", double quant" : ""}, compute ${q.compute_dtype}` : "none"],
        ["Compute dtype", a.compute_dtype],
        ["Merged export", j.export && j.export.merged ? "yes" : null],
      ]),
      h("h3", null, "Hyperparameters (resolved)"),
      facts(Object.entries(j.hyperparameters || {})),
    );
  }

  /** @param {Record<string, any>} j */
  function renderLive(j) {
    const p = j.progress || {};
    const ev = j.evaluation || null;
    title.textContent = j.id;
    headerStatus.replaceChildren(statusBadge(j.status), j.status_details ? h("span", { class: "muted" }, ` ${j.status_details}`) : "");
    cancel.hidden = !ACTIVE.has(j.status);
    live.replaceChildren(
      progressBar(j),
      j.error ? h("p", { class: "error-text", id: "job-error" }, `${j.error.code}: ${j.error.message}`) : "",
      facts([
        ["Step", p.total_steps ? `${p.step || 0} of ${p.total_steps}` : null], ["Epoch", p.epoch],
        ["Train loss", p.train_loss], ["Valid loss", p.valid_loss],
        ["Tokens/s", typeof p.tokens_per_second === "number" ? Math.round(p.tokens_per_second) : null],
        ["ETA", ACTIVE.has(j.status) && p.eta_seconds !== undefined ? formatDuration(p.eta_seconds) : null],
        ["Base valid loss", ev ? ev.base_valid_loss : null],
        ["Best valid loss", ev && ev.best_valid_loss !== null ? `${formatNumber(ev.best_valid_loss)} (step ${ev.best_step})` : null],
        ["Improvement over base", ev && typeof ev.improvement === "number" ? `${(ev.improvement * 100).toFixed(1)}%` : null],
        ["Trained tokens", j.trained_tokens],
        ["Created", formatTime(j.created_at)], ["Finished", formatTime(j.finished_at)],
      ]),
    );
  }

  function renderEvents() {
    const oldestFirst = [...events].reverse();
    chart.update(metricsByStep(oldestFirst), job && job.evaluation ? job.evaluation.base_valid_loss ?? null : null);
    history.replaceChildren(
      ...oldestFirst.filter((e) => e.type === "message" && STATUS_MESSAGE.test(e.message))
        .map((e) => h("li", null, h("time", null, formatTime(e.created_at)), " ", e.message)),
    );
    eventsBody.replaceChildren(
      ...events.slice(0, 300).map((e) =>
        h("tr", { class: `level-${e.level}` },
          h("td", { "data-label": "Time" }, formatTime(e.created_at)),
          h("td", { "data-label": "Level" }, e.level),
          h("td", { "data-label": "Message", class: "wrap" }, e.message))),
    );
  }

  async function loadCheckpoints() {
    /** @type {{id: string, step_number: number, created_at: number, metrics: Record<string, any>, result_file: string | null, fine_tuned_model_checkpoint: string}[]} */
    const checkpoints = await listAll(`/v1/fine_tuning/jobs/${jobId}/checkpoints`);
    checkpointsBody.replaceChildren(
      ...(checkpoints.length ? checkpoints.map((c) =>
        h("tr", { "data-step": c.step_number },
          h("td", { "data-label": "Step" }, c.step_number),
          h("td", { "data-label": "Train loss" }, formatNumber(c.metrics.train_loss)),
          h("td", { "data-label": "Valid loss" }, formatNumber(c.metrics.valid_loss)),
          h("td", { "data-label": "Accuracy" }, formatNumber(c.metrics.valid_mean_token_accuracy ?? c.metrics.train_mean_token_accuracy)),
          h("td", { "data-label": "Saved" }, formatTime(c.created_at)),
          h("td", { "data-label": "" }, c.result_file ? downloadButton(c.result_file, "Download") : h("span", { class: "muted" }, "pruned"))))
        : [h("tr", null, h("td", { colspan: 6 }, "No checkpoints yet."))]),
    );
  }

  /** @param {string[]} fileIds */
  async function loadResults(fileIds) {
    const files = await Promise.all(fileIds.map((id) => api(`/v1/files/${id}`).catch(() => ({ id, filename: id }))));
    results.replaceChildren(...files.map((/** @type {any} */ f) =>
      h("li", null, h("span", { class: "mono" }, f.filename), " ", h("span", { class: "muted" }, formatBytes(f.bytes)), " ",
        downloadButton(f.id, "Download"))));
    manifestButton.hidden = !fileIds.length || !manifestPre.hidden;
  }

  async function loadSamples() {
    /** @type {{data: {step: number, index: number, input: any, reference: string | null, base_output: string, output: string}[]}} */
    let page;
    try {
      page = await api(`/v1/fine_tuning/jobs/${jobId}/samples?limit=100`);
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return;  // an API without samples
      throw e;
    }
    if (!page.data || !page.data.length) return;
    const latest = Math.max(...page.data.map((s) => s.step));
    const shown = page.data.filter((s) => s.step === latest).sort((a, b) => a.index - b.index);
    /** @param {any} input */
    const prompt = (input) => typeof input === "string" ? input
      : (input || []).filter((/** @type {any} */ m) => m.role !== "assistant").map((/** @type {any} */ m) => `${m.role}: ${m.content}`).join("\n");
    /** @type {HTMLElement} */ (samplesSection.querySelector("#samples")).replaceChildren(
      h("p", { class: "muted" }, `Tuned outputs at step ${latest}.`),
      ...shown.map((s) => h("div", { class: "sample" },
        h("pre", { class: "prompt" }, prompt(s.input)),
        h("div", { class: "side-by-side" },
          h("figure", null, h("figcaption", null, "Base"), h("pre", null, s.base_output)),
          h("figure", null, h("figcaption", null, "Tuned"), h("pre", null, s.output))),
        s.reference ? h("p", { class: "muted" }, `Reference: ${s.reference}`) : null)),
    );
    samplesSection.hidden = false;
    samplesDone = !ACTIVE.has(job ? job.status : "");
  }

  let lastCheckpointsKey = "";
  async function refresh() {
    job = await api(`/v1/fine_tuning/jobs/${jobId}`);
    const j = /** @type {Record<string, any>} */ (job);
    error.hidden = true;
    if (!specShown) { renderSpec(j); specShown = true; }
    renderLive(j);
    const known = new Set(events.map((e) => e.id));
    /** @type {JobEvent[]} */
    const fresh = await listAll(`/v1/fine_tuning/jobs/${jobId}/events`, (/** @type {JobEvent} */ e) => known.has(e.id));
    events = [...fresh, ...events];
    if (fresh.length || !chartBox.dataset.series) renderEvents();
    const checkpointsKey = `${events.filter((e) => /checkpoint/i.test(e.message)).length}:${j.status}`;
    if (checkpointsKey !== lastCheckpointsKey) {
      lastCheckpointsKey = checkpointsKey;
      await loadCheckpoints();
      await loadResults(j.result_files || []);
    }
    if (!samplesDone) await loadSamples();
  }

  const element = h("article", { class: "job", "data-job-id": jobId },
    h("p", null, h("a", { href: "#/jobs" }, "← Jobs")),
    h("div", { class: "heading" }, h("div", null, title, headerStatus), cancel),
    error,
    section("Progress", live),
    section("Loss", h("p", { class: "muted" }, "Train and valid loss, learning rate and token accuracy by step; the dashed grey line is the base model's valid loss."), chartBox),
    h("div", { class: "columns" },
      section("Spec", spec),
      section("Status history", history)),
    section("Checkpoints", h("div", { class: "table-wrap" }, h("table", { class: "stack", id: "checkpoints" },
      h("thead", null, h("tr", null, ...["Step", "Train loss", "Valid loss", "Accuracy", "Saved", ""].map((t) => h("th", { scope: "col" }, t)))),
      checkpointsBody))),
    section("Result files", results, manifestButton, manifestError, manifestPre),
    samplesSection,
    section("Events", h("div", { class: "table-wrap events" }, h("table", { class: "stack", id: "events" },
      h("thead", null, h("tr", null, ...["Time", "Level", "Message"].map((t) => h("th", { scope: "col" }, t)))),
      eventsBody))),
  );
  return {
    element,
    refresh: () => refresh().catch((e) => showError(error, e)),
    dispose: () => chart.destroy(),
  };
}
