// One run of a task: its record (arguments, bundle, times, outcome), the chart of its
// metrics (any metric, CSV export), its server log and events, how each device took
// part, and the artifacts it saved. Follows the run live while it has not ended.

import { call } from "../api.js";
import { badge, debounce, formatTime, h, loading, replace, taskHref } from "../dom.js";
import { logFeed, timelineFeed } from "../feeds.js";
import { metricsPanel } from "../metrics_panel.js";
import { ACTIVE_RUN_STATES, artifactsTable, runDevicesTable, runDuration, runHref } from "../runs.js";

export async function render(ctx) {
  const id = ctx.params.id;
  const number = Number(ctx.params.run);
  ctx.title(`${id} · run ${number}`);
  replace(ctx.container, loading());

  const state = { run: null, metrics: [], logs: [], events: [] };
  const query = { task_id: id, run: number };
  [state.run, state.metrics, state.logs, state.events] = await Promise.all([
    call("rpc_exec_get_run", query),
    call("rpc_exec_get_task_metrics", query),
    call("rpc_exec_get_task_logs", { ...query, limit: 1000 }),
    call("rpc_exec_get_task_events", { ...query, limit: 1000 }),
  ]);

  const head = h("div", { class: "page-head" });
  const props = h("div");
  const panel = metricsPanel({ taskId: id });
  ctx.onCleanup(panel.dispose);
  const log = logFeed();
  const timeline = timelineFeed();
  const devicesBody = h("div", { id: "run-devices" });
  const artifactsStatus = h("div", { "aria-live": "polite" });
  const artifactsBody = h("div", { id: "run-artifacts" });

  replace(
    ctx.container,
    head,
    h(
      "div",
      { class: "stack" },
      h("section", { class: "card", "aria-labelledby": "h-run" }, h("h2", { id: "h-run" }, "Run"), props),
      panel.element,
      h(
        "div",
        { class: "grid grid-2" },
        h("section", { class: "card", "aria-labelledby": "h-log" }, h("h2", { id: "h-log" }, "Server log"), log.element),
        h("section", { class: "card", "aria-labelledby": "h-events" }, h("h2", { id: "h-events" }, "Events ", h("span", { class: "count" }, "newest first")), timeline.element),
      ),
      h("section", { class: "card flush", "aria-labelledby": "h-run-devices" }, h("h2", { id: "h-run-devices" }, "Devices"), devicesBody),
      h("section", { class: "card flush", "aria-labelledby": "h-artifacts" }, h("h2", { id: "h-artifacts" }, "Artifacts"), artifactsStatus, artifactsBody),
    ),
  );

  function showRun() {
    const r = state.run;
    const code = (list) => (list && list.length ? h("code", { class: "break" }, list.join(" ")) : h("span", { class: "muted" }, "—"));
    const neighbours = h("div", { class: "actions" },
      number > 1 ? h("a", { class: "btn btn-small", href: runHref(id, number - 1), id: "previous-run" }, `← run ${number - 1}`) : null,
      h("a", { class: "btn btn-small", href: taskHref(id) }, "Task"));
    replace(
      head,
      h("div", { class: "crumb" }, h("a", { href: "#/tasks" }, "Tasks"), " / ", h("a", { href: taskHref(id) }, id), " / ", `run ${number}`),
      h("div", null,
        h("div", { class: "row" }, h("h1", { tabindex: "-1" }, `${id} · run ${number}`), h("span", { id: "run-state" }, badge(r.state))),
        r.reason ? h("p", { class: "subtitle", id: "run-reason" }, r.reason) : null),
      neighbours,
    );
    replace(
      props,
      h("dl", { class: "props" },
        h("dt", null, "Started"), h("dd", null, r.started_at ? formatTime(r.started_at) : h("span", { class: "muted" }, "not yet (queued)")),
        h("dt", null, "Ended"), h("dd", null, r.ended_at ? formatTime(r.ended_at) : h("span", { class: "muted" }, "not yet")),
        h("dt", null, "Duration"), h("dd", { id: "run-duration" }, runDuration(r.started_at, r.ended_at)),
        h("dt", null, "Server arguments"), h("dd", { id: "run-server-arguments" }, code(r.server_arguments)),
        h("dt", null, "Client arguments"), h("dd", null, code(r.client_arguments)),
        h("dt", null, "Bundle"), h("dd", null, `version ${r.bundle_version}: `, r.files.map((f, i) => [i ? ", " : "", h("code", { title: f.sha256 }, f.name)])),
        h("dt", null, "Devices"), h("dd", null, `${r.devices_joined} joined`, r.min_devices ? ` (needs ${r.min_devices}${r.start_deadline_s ? ` within ${r.start_deadline_s} s` : ""})` : ""),
        h("dt", null, "Last round"), h("dd", null, (r.last_round ?? "—").toString()),
      ),
    );
    replace(devicesBody, runDevicesTable(r.devices));
    replace(artifactsBody, artifactsTable(id, number, r.artifacts, artifactsStatus));
  }

  function showChart() {
    panel.setMain(number);
    panel.setRecords(number, state.metrics);
    panel.draw();
  }

  async function reload() {
    try {
      [state.run, state.metrics] = await Promise.all([call("rpc_exec_get_run", query), call("rpc_exec_get_task_metrics", query)]);
    } catch (error) {
      if (error.status === 404) {
        ctx.flash(`Run ${number} of task ${id} no longer exists.`, "warn");
        ctx.navigate(taskHref(id));
      }
      return;
    }
    if (!ctx.active) return;
    showRun();
    showChart();
  }
  const soon = debounce(reload, 250);
  ctx.onCleanup(soon.cancel);
  const live = () => ACTIVE_RUN_STATES.has(state.run.state);
  ctx.on("metric", (m) => {
    if (m.task_id !== id || m.run !== number) return;
    state.metrics.push({ round: m.round, source: m.source, metrics: m.metrics || {}, time: m.time, run: m.run });
    showChart();
    soon();
  });
  ctx.on("log", (line) => line.task_id === id && line.run === number && log.append(line));
  // Stream events may not name their run: one of the task's while this run is live is its.
  ctx.on("event", (e) => e.task_id === id && (e.run === number || (e.run == null && live())) && timeline.add(e));
  ctx.on("task", (t) => t.task_id === id && soon());
  ctx.on("device", (d) => d.task_id === id && live() && soon());
  ctx.on("resync", soon);
  ctx.every(15000, () => live() && replace(props.querySelector("#run-duration"), runDuration(state.run.started_at, state.run.ended_at)));

  showRun();
  showChart();
  log.set(state.logs);
  timeline.set(state.events);
}
