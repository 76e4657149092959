// The training-progress panel of the task and run pages: the chart of one metric (any
// the run reported, picked in #chart-metric) for one source (the server's aggregate or a
// device, #chart-source), other runs laid over it, the values per round, and a CSV of
// the run's metrics (#export-csv).

import { chartSvg, defaultMetric, legend, metricNames, metricsCsv, seriesOf } from "./chart.js";
import { formatNumber, h, replace, table } from "./dom.js";

/** A file download of ``text`` named ``name``, made in the browser. */
export function saveText(text, name, type = "text/csv") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export function metricsPanel({ taskId }) {
  const records = new Map(); // run number -> [{round, source, metrics, time, run}]
  let main = null; // the run the page is about
  let overlay = []; // runs laid over it
  let chosenMetric = null;
  let chosenSource = null;
  let width = 720;

  const tools = h("div", { class: "tools" });
  const chartBody = h("div", { class: "chart-box", id: "chart" });
  const legendBox = h("div");
  const valuesTable = h("div");
  const element = h(
    "section",
    { class: "card", "aria-labelledby": "h-chart" },
    h("div", { class: "card-head" }, h("h2", { id: "h-chart" }, "Training progress"), tools),
    chartBody,
    legendBox,
    h("details", { style: { marginTop: "10px" } }, h("summary", { class: "small muted" }, "Values per round"), valuesTable),
  );
  const resized = new ResizeObserver(() => {
    if (chartBody.clientWidth && Math.abs(chartBody.clientWidth - width) > 8) draw();
  });
  resized.observe(chartBody);

  const mainRecords = () => records.get(main) || [];
  function sources() {
    const all = [...new Set(mainRecords().map((m) => m.source))];
    return all.sort((a, b) => (a === "server" ? -1 : b === "server" ? 1 : a.localeCompare(b)));
  }

  // Pickers are rebuilt only when their choices change: a new point must not close an
  // open list under the operator's pointer.
  let toolsFor = "";
  function drawTools(names, list, metric, source) {
    const key = JSON.stringify([names, list, metric, source, main]);
    if (key === toolsFor) return;
    toolsFor = key;
    const metricSelect = h("select", { id: "chart-metric", "aria-label": "Metric" },
      (names.length ? names : [metric]).map((n) => h("option", { value: n }, n)));
    metricSelect.value = metric;
    metricSelect.addEventListener("change", () => {
      chosenMetric = metricSelect.value;
      draw();
    });
    const parts = [metricSelect];
    if (list.length > 1) {
      const sourceSelect = h("select", { id: "chart-source", "aria-label": "Whose metrics" },
        list.map((src) => h("option", { value: src }, src === "server" ? "server (aggregated)" : `device ${src}`)));
      sourceSelect.value = source;
      sourceSelect.addEventListener("change", () => {
        chosenSource = sourceSelect.value;
        draw();
      });
      parts.push(sourceSelect);
    } else if (list.length) {
      parts.push(h("span", { class: "small muted", id: "chart-source-name" }, `source: ${list[0]}`));
    }
    const csv = h("button", { type: "button", class: "btn btn-small", id: "export-csv", disabled: !mainRecords().length }, "Export CSV");
    csv.addEventListener("click", () => saveText(metricsCsv(mainRecords()), `task_${taskId}_run_${main}_metrics.csv`));
    parts.push(csv);
    replace(tools, parts);
  }

  function draw() {
    const names = metricNames([...records.values()].flat());
    const metric = chosenMetric && names.includes(chosenMetric) ? chosenMetric : defaultMetric(names);
    const list = sources();
    // The operator's choice once made; until then the aggregated server series as soon
    // as there is one (else the first device's): the chart follows the run.
    const source = chosenSource && list.includes(chosenSource) ? chosenSource : list[0] || "server";
    const series = [{ label: main ? `run ${main}` : "this run", points: seriesOf(mainRecords(), source, metric) }];
    for (const run of overlay) {
      if (run !== main) series.push({ label: `run ${run}`, points: seriesOf(records.get(run) || [], source, metric) });
    }
    width = chartBody.clientWidth || width;
    replace(chartBody, chartSvg(series, metric, width));
    replace(legendBox, legend(series));
    drawTools(names, list, metric, source);
    const values = series[0].points;
    replace(
      valuesTable,
      table(
        [
          { label: "Round", className: "num", render: (p) => String(p.round) },
          { label: metric, className: "num", render: (p) => formatNumber(p.value) },
        ],
        [...values].reverse(),
        { emptyText: "No rounds yet." },
      ),
    );
  }

  return {
    element,
    dispose: () => resized.disconnect(),
    /** The run the page shows (``null``: the task never ran). */
    setMain(run) {
      main = run;
    },
    get main() {
      return main;
    },
    setRecords(run, list) {
      records.set(run, list);
    },
    has: (run) => records.has(run),
    /** A live point of ``run``. */
    add(run, record) {
      if (!records.has(run)) records.set(run, []);
      records.get(run).push(record);
    },
    setOverlay(runs) {
      overlay = runs;
    },
    draw,
  };
}
