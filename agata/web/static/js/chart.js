// A small SVG line chart of one metric per round, for one or several series (runs laid
// over each other). Both axes scale to the data shown. Drawn by hand: no chart library,
// nothing downloaded.

import { formatNumber, h, s } from "./dom.js";

const PAD = { left: 56, right: 18, top: 14, bottom: 36 };
/** Series colours, in order: the first is the run the page is about. */
export const SERIES_COLORS = ["var(--acc-color)", "var(--loss-color)", "#6d28d9", "#0369a1", "#be185d", "#4d7c0f", "#a16207", "#475569"];

/** The metric the chart shows first: accuracy when reported, else loss, else any. */
export function defaultMetric(names) {
  for (const preferred of ["acc", "accuracy", "loss"]) if (names.includes(preferred)) return preferred;
  return names[0] || "acc";
}

/** Every metric name the records [{metrics}] report, sorted (``acc`` first). */
export function metricNames(records) {
  const names = new Set();
  for (const r of records) for (const [key, value] of Object.entries(r.metrics || {})) if (typeof value === "number") names.add(key);
  const order = (n) => (n === "acc" || n === "accuracy" ? 0 : n === "loss" ? 1 : 2);
  return [...names].sort((a, b) => order(a) - order(b) || a.localeCompare(b));
}

/** Metric records [{round, source, metrics}] of one source -> [{round, value}] of ``metric`` by round. */
export function seriesOf(records, source, metric) {
  const byRound = new Map();
  for (const r of records) {
    if (r.source !== source) continue;
    const value = r.metrics ? r.metrics[metric] : undefined;
    if (typeof value === "number" && Number.isFinite(value)) byRound.set(r.round, { round: r.round, value });
  }
  return [...byRound.values()].sort((a, b) => a.round - b.round);
}

/** Tick values for [lo, hi]: about ``most`` round steps (1, 2, 2.5, 5 x 10^n). */
export function niceTicks(lo, hi, most = 5) {
  if (!(hi > lo)) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    return niceTicks(lo - pad, hi + pad, most);
  }
  const raw = (hi - lo) / most;
  const exp = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * exp).find((v) => v >= raw) || 10 * exp;
  const first = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = first; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks.at(-1) < hi) ticks.push(Number((ticks.at(-1) + step).toPrecision(12)));
  return ticks;
}

function roundTicks(min, max, most) {
  const step = Math.max(1, Math.ceil((max - min) / most));
  const ticks = [];
  for (let r = min; r <= max; r += step) ticks.push(r);
  return ticks;
}

/**
 * The chart of ``series`` ([{label, points: [{round, value}]}], the first drawn on top)
 * for ``metric``, as an <svg> drawn for ``width`` CSS pixels (its text keeps its size on
 * a phone and on a wide screen). The value axis spans the values shown, not 0..1.
 */
export function chartSvg(series, metric, width = 720) {
  const W = Math.max(280, Math.round(width));
  const H = W < 560 ? 230 : 290;
  const all = series.flatMap((line) => line.points);
  const main = series[0] && series[0].points;
  const svg = s("svg", {
    class: "chart-svg",
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "data-points": String(all.length),
    "data-metric": metric,
    "aria-label": main && main.length
      ? `${metric} over ${main.length} rounds of ${series[0].label}; last round ${main.at(-1).round}: ${formatNumber(main.at(-1).value)}`
      : `No ${metric} reported yet`,
  });
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;

  if (all.length === 0) {
    svg.append(
      s("rect", { x: PAD.left, y: PAD.top, width: plotW, height: plotH, fill: "none", class: "grid-line", "stroke-dasharray": "4 4" }),
      s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty-text" }, W < 560 ? "No rounds yet." : "No rounds yet — points appear here as the task trains."),
    );
    return svg;
  }

  const rounds = all.map((p) => p.round);
  let minR = Math.min(...rounds);
  let maxR = Math.max(...rounds);
  if (minR === maxR) {
    minR -= 1;
    maxR += 1;
  }
  const values = all.map((p) => p.value);
  const ticks = niceTicks(Math.min(...values), Math.max(...values), W < 560 ? 4 : 5);
  const lo = ticks[0];
  const hi = ticks.at(-1);
  const x = (r) => PAD.left + ((r - minR) / (maxR - minR)) * plotW;
  const y = (v) => PAD.top + plotH - ((v - lo) / (hi - lo)) * plotH;

  for (const v of ticks) {
    svg.append(s("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid-line" }));
    svg.append(s("text", { x: PAD.left - 8, y: y(v) + 4, "text-anchor": "end", class: "axis-text y-tick" }, formatNumber(v, 3)));
  }
  for (const r of roundTicks(Math.ceil(minR), Math.floor(maxR), W < 560 ? 5 : 10)) {
    svg.append(s("text", { x: x(r), y: H - PAD.bottom + 16, "text-anchor": "middle", class: "axis-text" }, String(r)));
  }
  svg.append(s("text", { x: PAD.left + plotW / 2, y: H - 4, "text-anchor": "middle", class: "axis-title" }, "round"));
  svg.append(s("text", { x: 12, y: PAD.top + plotH / 2, "text-anchor": "middle", class: "axis-title", transform: `rotate(-90 12 ${PAD.top + plotH / 2})` }, metric));

  const radius = all.length > 60 ? 2 : 3.5;
  // The first series last, so it is drawn on top of the ones laid over it.
  series.map((line, index) => ({ line, index })).reverse().forEach(({ line, index }) => {
    const color = SERIES_COLORS[index % SERIES_COLORS.length];
    const d = line.points.map((p, i) => `${i ? "L" : "M"}${x(p.round).toFixed(1)},${y(p.value).toFixed(1)}`).join("");
    const group = s("g", { class: `series${index ? " overlay" : ""}`, "data-series": line.label });
    group.append(s("path", { d, class: "line", stroke: color, "stroke-dasharray": index ? "6 4" : null }));
    for (const p of line.points) {
      group.append(s("circle", { cx: x(p.round), cy: y(p.value), r: radius, class: "pt", fill: color, "data-round": String(p.round) },
        s("title", null, `${line.label}, round ${p.round}: ${metric} ${formatNumber(p.value)}`)));
    }
    svg.append(group);
  });
  return svg;
}

/** The key of the series shown: colour and label of each. */
export function legend(series) {
  return h(
    "div",
    { class: "chart-legend", id: "chart-legend" },
    series.map((line, index) => h("span", { class: "key" },
      h("span", { class: "swatch", style: { background: index
        ? `repeating-linear-gradient(90deg, ${SERIES_COLORS[index % SERIES_COLORS.length]} 0 6px, transparent 6px 9px)`
        : SERIES_COLORS[0] } }),
      line.label)),
  );
}

/** A CSV of metric records: run, round, source, time, then one column per metric. */
export function metricsCsv(records) {
  const names = metricNames(records);
  const cell = (v) => {
    if (v === null || v === undefined) return "";
    const text = String(v);
    return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  };
  const rows = [["run", "round", "source", "time", ...names].join(",")];
  const sorted = [...records].sort((a, b) => (a.run ?? 0) - (b.run ?? 0) || a.round - b.round || String(a.source).localeCompare(String(b.source)));
  for (const r of sorted) {
    rows.push([r.run, r.round, r.source, r.time, ...names.map((n) => (r.metrics || {})[n])].map(cell).join(","));
  }
  return `${rows.join("\r\n")}\r\n`;
}
