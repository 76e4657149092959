// A small SVG line chart of accuracy (left axis) and loss (right axis) per round.
// Drawn by hand: no chart library, nothing downloaded.

import { formatNumber, h, s } from "./dom.js";

const PAD = { left: 48, right: 52, top: 14, bottom: 36 };

export function accuracyOf(metrics) {
  if (typeof metrics.acc === "number") return metrics.acc;
  if (typeof metrics.accuracy === "number") return metrics.accuracy;
  return null;
}

/** Metric records [{round, source, metrics}] of one source -> [{round, acc, loss}] by round. */
export function seriesOf(records, source) {
  const byRound = new Map();
  for (const r of records) {
    if (r.source !== source) continue;
    const loss = typeof r.metrics.loss === "number" ? r.metrics.loss : null;
    byRound.set(r.round, { round: r.round, acc: accuracyOf(r.metrics), loss });
  }
  return [...byRound.values()].sort((a, b) => a.round - b.round);
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
    if (step * exp >= value) return step * exp;
  }
  return 10 * exp;
}

function roundTicks(min, max, most) {
  const span = max - min;
  const step = Math.max(1, Math.ceil(span / most));
  const ticks = [];
  for (let r = min; r <= max; r += step) ticks.push(r);
  return ticks;
}

function linePath(points, x, y, key) {
  let d = "";
  let pen = false;
  for (const p of points) {
    if (p[key] === null) {
      pen = false;
      continue;
    }
    d += `${pen ? "L" : "M"}${x(p.round).toFixed(1)},${y(p[key]).toFixed(1)}`;
    pen = true;
  }
  return d;
}

/**
 * The chart for ``points`` ([{round, acc, loss}]) as an <svg> drawn for ``width`` CSS
 * pixels (so its text keeps its size on a phone and on a wide screen).
 */
export function chartSvg(points, width = 720) {
  const W = Math.max(280, Math.round(width));
  const H = W < 560 ? 230 : 290;
  const svg = s("svg", {
    class: "chart-svg",
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "data-points": String(points.length),
    "aria-label": points.length
      ? `Accuracy and loss over ${points.length} rounds; last round ${points.at(-1).round}: accuracy ${formatNumber(points.at(-1).acc)}, loss ${formatNumber(points.at(-1).loss)}`
      : "No rounds reported yet",
  });
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;

  if (points.length === 0) {
    svg.append(
      s("rect", { x: PAD.left, y: PAD.top, width: plotW, height: plotH, fill: "none", class: "grid-line", "stroke-dasharray": "4 4" }),
      s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty-text" }, W < 560 ? "No rounds yet." : "No rounds yet — points appear here as the task trains."),
    );
    return svg;
  }

  const rounds = points.map((p) => p.round);
  let minR = Math.min(...rounds);
  let maxR = Math.max(...rounds);
  if (minR === maxR) {
    minR -= 1;
    maxR += 1;
  }
  const accs = points.map((p) => p.acc).filter((v) => v !== null);
  const losses = points.map((p) => p.loss).filter((v) => v !== null);
  const accMax = accs.length && Math.max(...accs) > 1 ? niceMax(Math.max(...accs)) : 1;
  const lossMax = niceMax(losses.length ? Math.max(...losses) : 1);

  const x = (r) => PAD.left + ((r - minR) / (maxR - minR)) * plotW;
  const yAcc = (v) => PAD.top + plotH - (v / accMax) * plotH;
  const yLoss = (v) => PAD.top + plotH - (v / lossMax) * plotH;

  // grid and axes
  for (let i = 0; i <= 4; i += 1) {
    const y = PAD.top + (plotH * i) / 4;
    svg.append(s("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: "grid-line" }));
    svg.append(s("text", { x: PAD.left - 8, y: y + 4, "text-anchor": "end", class: "axis-text" }, formatNumber(accMax * (1 - i / 4), 2)));
    if (losses.length) {
      svg.append(s("text", { x: W - PAD.right + 8, y: y + 4, "text-anchor": "start", class: "axis-text" }, formatNumber(lossMax * (1 - i / 4), 3)));
    }
  }
  for (const r of roundTicks(Math.ceil(minR), Math.floor(maxR), W < 560 ? 5 : 10)) {
    svg.append(s("text", { x: x(r), y: H - PAD.bottom + 16, "text-anchor": "middle", class: "axis-text" }, String(r)));
  }
  svg.append(s("text", { x: PAD.left + plotW / 2, y: H - 4, "text-anchor": "middle", class: "axis-title" }, "round"));
  svg.append(s("text", { x: 12, y: PAD.top + plotH / 2, "text-anchor": "middle", class: "axis-title", transform: `rotate(-90 12 ${PAD.top + plotH / 2})` }, "accuracy"));
  if (losses.length) {
    svg.append(s("text", { x: W - 10, y: PAD.top + plotH / 2, "text-anchor": "middle", class: "axis-title", transform: `rotate(90 ${W - 10} ${PAD.top + plotH / 2})` }, "loss"));
  }

  // series
  if (losses.length) svg.append(s("path", { d: linePath(points, x, yLoss, "loss"), class: "line loss", "stroke-dasharray": "6 4" }));
  if (accs.length) svg.append(s("path", { d: linePath(points, x, yAcc, "acc"), class: "line acc" }));
  const r = points.length > 40 ? 2 : 3.5;
  for (const p of points) {
    if (p.loss !== null) {
      svg.append(s("circle", { cx: x(p.round), cy: yLoss(p.loss), r, class: "pt loss" }, s("title", null, `round ${p.round}: loss ${formatNumber(p.loss)}`)));
    }
    if (p.acc !== null) {
      svg.append(s("circle", { cx: x(p.round), cy: yAcc(p.acc), r, class: "pt acc", "data-round": String(p.round) }, s("title", null, `round ${p.round}: accuracy ${formatNumber(p.acc)}`)));
    }
  }
  return svg;
}

export function legend() {
  return h(
    "div",
    { class: "chart-legend", "aria-hidden": "true" },
    h("span", { class: "key" }, h("span", { class: "swatch", style: { background: "var(--acc-color)" } }), "accuracy (left axis)"),
    h("span", { class: "key" }, h("span", { class: "swatch", style: { background: "repeating-linear-gradient(90deg, var(--loss-color) 0 6px, transparent 6px 9px)" } }), "loss (right axis)"),
  );
}
