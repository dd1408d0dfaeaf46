// @ts-check
/** The loss chart: metrics events deduplicated by step, drawn with the vendored uPlot. */
import uPlot from "./vendor/uplot/uPlot.esm.js";

/** @typedef {{step: number, [metric: string]: number}} StepMetrics */

/**
 * One row per step, oldest step first. A resumed run logs some steps again: the latest event wins,
 * metric by metric, so a step's train and valid metrics (separate events) still meet in one row.
 * @param {{created_at: number, data: Record<string, any> | null, type: string}[]} eventsOldestFirst
 * @returns {StepMetrics[]}
 */
export function metricsByStep(eventsOldestFirst) {
  /** @type {Map<number, StepMetrics>} */
  const rows = new Map();
  for (const event of eventsOldestFirst) {
    if (event.type !== "metrics" || !event.data || typeof event.data.step !== "number") continue;
    const row = rows.get(event.data.step) || { step: event.data.step };
    for (const [name, value] of Object.entries(event.data)) if (typeof value === "number") row[name] = value;
    rows.set(event.data.step, row);
  }
  return [...rows.values()].sort((a, b) => a.step - b.step);
}

/** @type {{key: string, label: string, stroke: string, scale: string, dash?: number[]}[]} */
const SERIES = [
  { key: "train_loss", label: "train loss", stroke: "#0969da", scale: "loss" },
  { key: "valid_loss", label: "valid loss", stroke: "#cf222e", scale: "loss" },
  { key: "learning_rate", label: "learning rate", stroke: "#8250df", scale: "lr", dash: [4, 4] },
  { key: "train_mean_token_accuracy", label: "token accuracy", stroke: "#1a7f37", scale: "acc", dash: [2, 3] },
];

/**
 * The series as plotted: steps, then one column per metric (null where a step lacks it).
 * @param {StepMetrics[]} rows
 * @param {number | null} baseValidLoss
 */
export function chartData(rows, baseValidLoss) {
  return {
    steps: rows.map((row) => row.step),
    series: Object.fromEntries(
      SERIES.map((s) => [s.key, rows.map((row) => (row[s.key] === undefined ? null : row[s.key]))]),
    ),
    base_valid_loss: baseValidLoss,
  };
}

export class LossChart {
  /** @param {HTMLElement} container */
  constructor(container) {
    this.container = container;
    /** @type {uPlot | null} */
    this.plot = null;
    /** @type {ReturnType<typeof chartData> | null} */
    this.data = null;
    this.resize = () => this.plot && this.plot.setSize(this.size());
    window.addEventListener("resize", this.resize);
  }

  size() {
    const width = Math.max(240, this.container.clientWidth || 600);
    return { width, height: width < 500 ? 220 : 300 };
  }

  /** @param {StepMetrics[]} rows @param {number | null} baseValidLoss */
  update(rows, baseValidLoss) {
    const data = chartData(rows, baseValidLoss);
    const same = this.data && JSON.stringify(this.data) === JSON.stringify(data);
    this.data = data;
    // Tests and curious users read what is plotted here, after deduplication.
    this.container.dataset.series = JSON.stringify(data);
    /** @type {any} */ (window).__chartData = data;
    if (same) return;
    const shown = SERIES.filter((s) => data.series[s.key].some((v) => v !== null));
    /** @type {(number | null)[][]} */
    const columns = [data.steps, ...shown.map((s) => data.series[s.key])];
    const withBase = baseValidLoss !== null && baseValidLoss !== undefined && data.steps.length > 0;
    if (withBase) columns.push(data.steps.map(() => baseValidLoss));
    if (this.plot) this.plot.destroy();
    this.container.replaceChildren();
    if (!data.steps.length) {
      this.container.append("No metrics yet.");
      this.plot = null;
      return;
    }
    this.plot = new uPlot(
      {
        ...this.size(),
        // Accuracy is a fraction: on a fixed 0-100% scale an accuracy of 0.14 reads as 14%, where a
        // scale fitted to the data would draw it at the top of the plot, like 100%.
        scales: { x: { time: false }, acc: { auto: false, range: [0, 1] } },
        axes: [
          { label: "step" },
          { scale: "loss", label: "loss" },
          ...(shown.some((s) => s.scale === "lr") ? [{
            scale: "lr", label: "learning rate", side: 1, grid: { show: false }, size: 64,
            // uPlot's default labels round to the axis' step: 0.0015 and 0.001 both read "0.001".
            values: (/** @type {uPlot} */ _u, /** @type {number[]} */ splits) => splits.map((v) => String(Number(v.toPrecision(2)))),
          }] : []),
          ...(shown.some((s) => s.scale === "acc") ? [{
            scale: "acc", label: "token accuracy", side: 1, grid: { show: false }, size: 48,
            values: (/** @type {uPlot} */ _u, /** @type {number[]} */ splits) => splits.map((v) => `${Math.round(v * 100)}%`),
          }] : []),
        ],
        series: [
          { label: "step" },
          ...shown.map((s) => ({
            label: s.label, stroke: s.stroke, scale: s.scale, width: 2, dash: s.dash, spanGaps: true,
            points: { show: s.key === "valid_loss" },
          })),
          ...(withBase ? [{ label: "base valid loss", stroke: "#6e7781", scale: "loss", dash: [8, 4], width: 1.5 }] : []),
        ],
      },
      /** @type {any} */ (columns),
      this.container,
    );
  }

  destroy() {
    window.removeEventListener("resize", this.resize);
    if (this.plot) this.plot.destroy();
  }
}
