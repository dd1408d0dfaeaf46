// @ts-check
/** New job: upload or pick a dataset, pick a base model, LoRA/QLoRA settings, estimate, submit. */
import { ApiError, api, listAll, request } from "../api.js";
import { errorBox, formatBytes, formatNumber, h, showError } from "../ui.js";

const DEFAULT_TARGETS = "q_proj, k_proj, v_proj, o_proj";

/**
 * A labelled input.
 * @param {string} id @param {string} label @param {Record<string, unknown>} attrs @param {string} [hint]
 */
function field(id, label, attrs, hint) {
  const input = h("input", { id, name: id, ...attrs, "aria-describedby": hint ? `${id}-hint` : undefined });
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    hint ? h("small", { id: `${id}-hint`, class: "muted" }, hint) : null);
}

/** @param {string} id @param {string} label @param {string[]} options @param {string} value */
function choice(id, label, options, value) {
  return h("div", { class: "field" }, h("label", { for: id }, label),
    h("select", { id, name: id }, options.map((o) => h("option", { value: o, selected: o === value }, o))));
}

/** @returns {import("../app.js").View} */
export function newJobView() {
  const error = errorBox();
  const uploadError = h("p", { class: "error", role: "alert", id: "upload-error", hidden: true });
  const uploadStatus = h("p", { class: "muted", "aria-live": "polite", id: "upload-status" });
  const estimateBox = h("div", { id: "estimate", "aria-live": "polite" });
  const fileInput = /** @type {HTMLInputElement} */ (h("input", { id: "dataset-file", type: "file", accept: ".jsonl,.json,.txt", class: "visually-hidden" }));
  const trainingSelect = /** @type {HTMLSelectElement} */ (h("select", { id: "training_file", name: "training_file", required: true }));
  const validationSelect = /** @type {HTMLSelectElement} */ (h("select", { id: "validation_file", name: "validation_file" }));
  const modelSelect = /** @type {HTMLSelectElement} */ (h("select", { id: "model", name: "model", required: true }));
  const qloraOnly = h("div", { class: "grid", id: "qlora-options" },
    choice("bits", "Quantization bits", ["4", "8"], "4"),
    choice("quant_type", "Quant type", ["nf4", "fp4"], "nf4"));

  let filesAsked = 0;
  /** @param {string} [selected] */
  async function loadFiles(selected) {
    const mine = ++filesAsked;
    /** @type {{id: string, filename: string, examples: number | null, format: string | null, bytes: number}[]} */
    const files = await listAll("/v1/files?purpose=fine-tune");
    if (mine !== filesAsked) return;  // a later call (after an upload) has the newer list
    const option = (/** @type {typeof files[number]} */ f) =>
      h("option", { value: f.id }, `${f.filename} · ${f.format || "?"} · ${f.examples ?? "?"} examples · ${f.id}`);
    const [training, validation] = [trainingSelect.value, validationSelect.value];
    trainingSelect.replaceChildren(h("option", { value: "" }, "— choose a dataset —"), ...files.map(option));
    validationSelect.replaceChildren(h("option", { value: "" }, "none"), ...files.map(option));
    trainingSelect.value = selected || training;
    validationSelect.value = validation;
  }

  async function loadModels() {
    /** @type {{id: string, kind?: string}[]} */
    const models = await listAll("/v1/models");
    modelSelect.replaceChildren(...models.map((m) => h("option", { value: m.id }, m.kind === "adapter" ? `${m.id} (continue training)` : m.id)));
  }

  /** @param {File} file */
  async function uploadFile(file) {
    uploadError.hidden = true;
    uploadStatus.textContent = `Uploading ${file.name} (${formatBytes(file.size)})…`;
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file, file.name);
    try {
      /** @type {{id: string, examples: number, format: string}} */
      const created = await (await request("/v1/files", { method: "POST", body: form })).json();
      await loadFiles(created.id);
      uploadStatus.textContent = `Uploaded ${file.name}: ${created.id}, ${created.examples} ${created.format} examples.`;
    } catch (e) {
      uploadStatus.textContent = "";
      showError(uploadError, e instanceof ApiError ? `${file.name}: ${e.message}` : e);
    }
  }

  fileInput.addEventListener("change", () => fileInput.files && fileInput.files[0] && uploadFile(fileInput.files[0]));
  const drop = h("label", {
    for: "dataset-file", class: "dropzone", id: "dropzone",
    ondragover: (/** @type {DragEvent} */ e) => { e.preventDefault(); drop.classList.add("over"); },
    ondragleave: () => drop.classList.remove("over"),
    ondrop: (/** @type {DragEvent} */ e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) uploadFile(file);
    },
  }, h("strong", null, "Upload a JSONL dataset"), h("span", { class: "muted" }, "Choose a file or drop it here"));

  const form = /** @type {HTMLFormElement} */ (h("form", { id: "new-job", novalidate: true, onsubmit: (/** @type {Event} */ e) => { e.preventDefault(); submit(); } },
    h("section", { class: "card" }, h("h2", null, "Data"),
      drop, fileInput, uploadStatus, uploadError,
      h("div", { class: "grid" },
        h("div", { class: "field" }, h("label", { for: "training_file" }, "Training file"), trainingSelect),
        h("div", { class: "field" }, h("label", { for: "validation_file" }, "Validation file (optional)"), validationSelect))),
    h("section", { class: "card" }, h("h2", null, "Model and adapter"),
      h("div", { class: "grid" },
        h("div", { class: "field" }, h("label", { for: "model" }, "Base model"), modelSelect),
        choice("adapter_type", "Adapter", ["qlora", "lora"], "qlora"),
        field("r", "Rank r", { type: "number", min: 1, max: 1024, value: 8 }),
        field("alpha", "Alpha", { type: "number", min: 0.01, step: "any", value: 16 }),
        field("dropout", "Dropout", { type: "number", min: 0, max: 0.99, step: "any", value: 0.05 }),
        field("target_modules", "Target modules", { type: "text", value: DEFAULT_TARGETS }, 'comma-separated, or "all-linear"')),
      qloraOnly),
    h("section", { class: "card" }, h("h2", null, "Hyperparameters"),
      h("p", { class: "muted" }, '"auto" is resolved from the dataset size when the job is created; Estimate shows the values.'),
      h("div", { class: "grid" },
        field("n_epochs", "Epochs", { type: "text", value: "auto", inputmode: "numeric" }),
        field("batch_size", "Batch size", { type: "text", value: "auto", inputmode: "numeric" }),
        field("learning_rate_multiplier", "Learning rate multiplier", { type: "text", value: "auto", inputmode: "decimal" }),
        field("learning_rate", "Learning rate", { type: "text", placeholder: "2e-4 × multiplier", inputmode: "decimal" }),
        field("max_seq_len", "Max sequence length", { type: "number", min: 16, value: 1024 }),
        choice("lr_scheduler", "LR scheduler", ["linear", "cosine", "constant"], "linear"),
        field("warmup_ratio", "Warmup ratio", { type: "number", min: 0, max: 0.5, step: "any", value: 0 }),
        field("save_steps", "Save every N steps", { type: "number", min: 1, placeholder: "each epoch" }),
        field("eval_steps", "Evaluate every N steps", { type: "number", min: 1, placeholder: "at each save" }),
        field("suffix", "Suffix", { type: "text", maxlength: 64 }),
        field("seed", "Seed", { type: "number", placeholder: "random" }),
        h("div", { class: "field check" }, h("input", { type: "checkbox", id: "packing", name: "packing" }), h("label", { for: "packing" }, "Packing")))),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "estimate-button", onclick: estimate }, "Estimate"),
      h("button", { type: "submit", class: "primary", id: "create-button" }, "Create job")),
    error,
    estimateBox,
  ));

  /** @param {string} name */
  const value = (name) => /** @type {HTMLInputElement} */ (form.elements.namedItem(name)).value.trim();
  /** @param {string} name */
  const autoOrNumber = (name) => (value(name) === "auto" || value(name) === "" ? "auto" : Number(value(name)));
  /** @param {string} name */
  const optionalNumber = (name) => (value(name) === "" ? undefined : Number(value(name)));

  function body() {
    const type = value("adapter_type");
    const targets = value("target_modules");
    /** @type {Record<string, unknown>} */
    const hyperparameters = {
      n_epochs: autoOrNumber("n_epochs"), batch_size: autoOrNumber("batch_size"),
      learning_rate_multiplier: autoOrNumber("learning_rate_multiplier"),
      learning_rate: optionalNumber("learning_rate"), max_seq_len: optionalNumber("max_seq_len"),
      lr_scheduler: value("lr_scheduler"), warmup_ratio: optionalNumber("warmup_ratio"),
      save_steps: optionalNumber("save_steps"), eval_steps: optionalNumber("eval_steps"),
      packing: /** @type {HTMLInputElement} */ (form.elements.namedItem("packing")).checked,
    };
    return {
      model: value("model"),
      training_file: value("training_file"),
      validation_file: value("validation_file") || undefined,
      suffix: value("suffix") || undefined,
      seed: optionalNumber("seed"),
      adapter: {
        type, r: Number(value("r")), alpha: Number(value("alpha")), dropout: Number(value("dropout")),
        target_modules: targets === "all-linear" ? "all-linear" : targets.split(",").map((t) => t.trim()).filter(Boolean),
        ...(type === "qlora" ? { quantization: { bits: Number(value("bits")), quant_type: value("quant_type") } } : {}),
      },
      method: { type: "supervised", supervised: { hyperparameters } },
    };
  }

  /** @param {unknown} e */
  function fail(e) {
    showError(error, e instanceof ApiError && e.param ? `${e.param}: ${e.message}` : e);
  }

  async function estimate() {
    error.hidden = true;
    estimateBox.replaceChildren(h("p", { class: "muted" }, "Estimating…"));
    try {
      /** @type {Record<string, any>} */
      const est = await api("/v1/fine_tuning/jobs/estimate", { method: "POST", json: body() });
      const memory = est.memory_bytes || {};
      estimateBox.replaceChildren(h("section", { class: "card" }, h("h2", null, "Estimate"),
        h("dl", { class: "facts" },
          ...[["Examples", est.examples], ["Train tokens", est.train_tokens], ["Trained tokens", est.trained_tokens],
            ["Truncated examples", est.truncated_examples], ["Sequences", est.sequences], ["Total steps", est.total_steps],
            ["Device", `${est.device} (${est.compute_dtype})`],
            ["Trainable parameters", est.parameters ? `${formatNumber(est.parameters.trainable)} of ${formatNumber(est.parameters.base)}` : null]]
            .filter(([, v]) => v !== undefined && v !== null)
            .map(([k, v]) => [h("dt", null, String(k)), h("dd", { "data-estimate": k }, formatNumber(v))])),
        h("h3", null, "Peak memory"),
        h("table", { class: "memory" }, h("tbody", null,
          ...Object.entries(memory).map(([k, v]) => h("tr", { class: k === "total" ? "total" : "" },
            h("th", { scope: "row" }, k.replace("_", " ")), h("td", null, formatBytes(/** @type {number} */ (v))))))),
        h("h3", null, "Hyperparameters as they will resolve"),
        h("dl", { class: "facts" }, ...Object.entries(est.hyperparameters || {})
          .filter(([, v]) => v !== null).map(([k, v]) => [h("dt", null, k), h("dd", null, formatNumber(v))]))));
    } catch (e) {
      estimateBox.replaceChildren();
      fail(e);
    }
  }

  async function submit() {
    error.hidden = true;
    try {
      /** @type {{id: string}} */
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: body() });
      location.hash = `#/jobs/${job.id}`;
    } catch (e) { fail(e); }
  }

  const typeSelect = /** @type {HTMLSelectElement} */ (form.elements.namedItem("adapter_type"));
  typeSelect.addEventListener("change", () => { qloraOnly.hidden = typeSelect.value !== "qlora"; });

  const element = h("section", null, h("h1", null, "New fine-tuning job"), form);
  Promise.all([loadFiles(), loadModels()]).catch(fail);
  return { element };
}
