// Runs of a task (docs/http-api.md, "Runs"): each start is one. The history table of the
// task page, and the parts of a run's page: its devices and its artifacts.

import { describe, getBlob } from "./api.js";
import { ago, alertBox, badge, deviceHref, formatBytes, formatPercent, formatTime, h, replace, table, toDate } from "./dom.js";

export const ACTIVE_RUN_STATES = new Set(["queued", "waiting", "running"]);

export function runHref(taskId, run) {
  return `#/tasks/${encodeURIComponent(taskId)}/runs/${run}`;
}

/** ``1 h 02 min``, ``3 min 05 s``, ``12 s`` from ``start`` to ``end`` (to now while running). */
export function runDuration(start, end) {
  const from = toDate(start);
  if (!from) return "—";
  const to = toDate(end) || new Date();
  const seconds = Math.max(0, Math.round((to.getTime() - from.getTime()) / 1000));
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const rest = seconds % 60;
  if (hours) return `${hours} h ${String(minutes).padStart(2, "0")} min`;
  if (minutes) return `${minutes} min ${String(rest).padStart(2, "0")} s`;
  return `${rest} s`;
}

/** The run's state badge with the reason it ended (or waits). */
export function runOutcome(run) {
  return h("span", { class: "state" }, badge(run.state), run.reason ? h("span", { class: "reason" }, run.reason) : null);
}

const args = (list) => (list && list.length ? h("code", { class: "break" }, list.join(" ")) : h("span", { class: "muted" }, "—"));

/**
 * The run history: run, started, duration, arguments, outcome, final accuracy. With
 * ``compare`` (a Set of run numbers) and ``onCompare(run, checked)`` each row but the
 * ``current`` one has a box to lay that run over the chart.
 */
export function runHistoryTable(taskId, runs, { current = null, compare = null, onCompare = null } = {}) {
  const columns = [];
  if (compare) {
    columns.push({
      label: "Compare",
      className: "check",
      render: (r) => {
        if (r.run === current) return h("span", { class: "small muted" }, "shown");
        const box = h("input", { type: "checkbox", class: "compare-run", "data-run": String(r.run), "aria-label": `Lay run ${r.run} over the chart`, checked: compare.has(r.run) });
        box.addEventListener("change", () => onCompare(r.run, box.checked));
        return box;
      },
    });
  }
  columns.push(
    { label: "Run", className: "primary", render: (r) => h("a", { class: "id-link", href: runHref(taskId, r.run) }, `run ${r.run}`) },
    { label: "Started", render: (r) => (r.started_at ? h("time", { title: formatTime(r.started_at) }, formatTime(r.started_at)) : h("span", { class: "muted" }, "not yet")) },
    { label: "Duration", className: "num", render: (r) => runDuration(r.started_at, r.ended_at) },
    { label: "Arguments", render: (r) => args(r.server_arguments) },
    { label: "Outcome", render: runOutcome },
    { label: "Final accuracy", className: "num", render: (r) => formatPercent(r.last_acc) },
  );
  const rows = runs.map((r) => ({ ...r, __attrs: { "data-run": String(r.run) } }));
  return table(columns, rows, { emptyText: "Not run yet: each start makes a run, listed here.", className: "runs" });
}

/** How each device took part in the run. */
export function runDevicesTable(devices) {
  return table(
    [
      { label: "Device", className: "primary", render: (d) => h("a", { class: "id-link", href: deviceHref(d.user_id) }, d.user_id) },
      { label: "Status", render: (d) => badge(d.status) },
      { label: "Reason", render: (d) => h("span", { class: "break" }, d.reason || "—") },
      { label: "Last round", className: "num", render: (d) => (d.last_round ?? "—").toString() },
      { label: "Joined", render: (d) => ago(d.joined_at) },
    ],
    devices || [],
    { emptyText: "No device took part in this run." },
  );
}

/** The run's artifacts, each with a download button (fetched with the token). */
export function artifactsTable(taskId, run, artifacts, status) {
  const download = async (name) => {
    replace(status);
    try {
      const blob = await getBlob(`api/tasks/${encodeURIComponent(taskId)}/runs/${run}/artifacts/${encodeURIComponent(name)}`);
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (error) {
      replace(status, alertBox(`Download of ${name} failed. ${describe(error)}`));
    }
  };
  return table(
    [
      { label: "Artifact", className: "primary", render: (a) => h("span", { class: "break" }, a.name) },
      { label: "Size", className: "num", render: (a) => formatBytes(a.size) },
      { label: "SHA-256", render: (a) => h("code", { class: "hash", title: a.sha256 }, a.sha256.slice(0, 16)) },
      { label: "Saved", render: (a) => ago(a.saved_at) },
      { label: "", render: (a) => h("button", { type: "button", class: "btn btn-small", "data-artifact": a.name, onclick: () => download(a.name) }, "Download") },
    ],
    artifacts || [],
    { emptyText: "This run saved no artifacts (TaskReporter.save_artifact)." },
  );
}
