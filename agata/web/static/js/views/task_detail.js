// One task: state and actions (start, stop, edit, delete, upload), a live chart of its
// current run (any metric; other runs laid over it), the run history, the server log
// tail and event timeline of the current run, and its devices.

import { call, getBlob, uploadFiles } from "../api.js";
import {
  ago, alertBox, badge, chips, debounce, deviceHref, errorBox, formatNumber, formatPercent,
  formatTime, h, loading, replace, table,
} from "../dom.js";
import { logFeed, timelineFeed } from "../feeds.js";
import { metricsPanel } from "../metrics_panel.js";
import { runHistoryTable } from "../runs.js";
import { dropZone, filesTable, progress } from "../upload.js";

export async function render(ctx) {
  const id = ctx.params.id;
  ctx.title(id);
  replace(ctx.container, loading());

  let deleting = false;
  const state = { task: null, metrics: [], logs: [], events: [], runs: [], devices: { matching: [], states: [] } };
  [state.task, state.metrics, state.logs, state.events, state.devices, state.runs] = await Promise.all([
    call("rpc_exec_get_task_by_id", { task_id: id }),
    call("rpc_exec_get_task_metrics", { task_id: id }),
    call("rpc_exec_get_task_logs", { task_id: id, limit: 300 }),
    call("rpc_exec_get_task_events", { task_id: id, limit: 500 }),
    call("rpc_exec_get_task_devices", { task_id: id }),
    call("rpc_exec_list_runs", { task_id: id }),
  ]);

  // -- layout ------------------------------------------------------------------------
  const head = h("div", { class: "page-head" });
  const actionMsg = h("div", { class: "action-msg", "aria-live": "polite" });
  const startBox = h("div");
  const stats = h("div", { class: "grid grid-stats" });
  const panel = metricsPanel({ taskId: id });
  ctx.onCleanup(panel.dispose);
  const compare = new Set(); // runs laid over the chart
  const runsBody = h("div", { id: "task-runs" });
  const log = logFeed();
  const timeline = timelineFeed();
  const devicesBody = h("div", { id: "task-devices" });
  const filesBody = h("div", { id: "task-files" });
  const config = h("div");
  const zone = dropZone({ onFiles: upload });

  replace(
    ctx.container,
    head,
    h(
      "div",
      { class: "stack" },
      actionMsg,
      startBox,
      stats,
      panel.element,
      h("section", { class: "card flush", "aria-labelledby": "h-runs" },
        h("h2", { id: "h-runs" }, "Runs ", h("span", { class: "count" }, "newest first; tick runs to compare them on the chart")), runsBody),
      h(
        "div",
        { class: "grid grid-2" },
        h("section", { class: "card", "aria-labelledby": "h-log" }, h("h2", { id: "h-log" }, "Server log"), log.element),
        h("section", { class: "card", "aria-labelledby": "h-events" }, h("h2", { id: "h-events" }, "Events ", h("span", { class: "count" }, "newest first")), timeline.element),
      ),
      h("section", { class: "card flush", "aria-labelledby": "h-devices" }, h("h2", { id: "h-devices" }, "Devices"), devicesBody),
      h(
        "div",
        { class: "grid grid-2" },
        h("section", { class: "card", "aria-labelledby": "h-files" },
          h("div", { class: "card-head" }, h("h2", { id: "h-files" }, "Bundle"),
            h("div", { class: "tools" }, h("button", { type: "button", class: "btn btn-small", id: "download-bundle", onclick: downloadBundle }, "Download .zip"))),
          filesBody, h("div", { style: { height: "12px" } }), zone.element),
        h("section", { class: "card", "aria-labelledby": "h-config" }, h("h2", { id: "h-config" }, "Configuration"), config),
      ),
    ),
  );

  // -- sections ----------------------------------------------------------------------
  function showHead() {
    const t = state.task;
    const busy = (button, fn) => async () => {
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      replace(actionMsg);
      try {
        await fn();
      } catch (error) {
        replace(actionMsg, errorBox(error));
      } finally {
        button.disabled = false;
        button.removeAttribute("aria-busy");
      }
    };
    const actions = h("div", { class: "actions" }, h("a", { class: "btn", href: `#/tasks/${encodeURIComponent(id)}/edit`, id: "edit-task" }, "Edit"));
    if (t.running) {
      const stop = h("button", { type: "button", class: "btn btn-danger", id: "stop-task" }, "Stop");
      stop.addEventListener("click", () => confirmStop(stop, busy));
      actions.append(stop);
    } else {
      const del = h("button", { type: "button", class: "btn btn-danger", id: "delete-task" }, "Delete");
      del.addEventListener("click", () => confirmDelete(del));
      actions.append(del);
    }
    replace(
      head,
      h("div", { class: "crumb" }, h("a", { href: "#/tasks" }, "Tasks"), " / ", id),
      h(
        "div",
        null,
        h("div", { class: "row" }, h("h1", { tabindex: "-1" }, id), h("span", { id: "task-state" }, badge(t.state)), t.tags.length ? chips(t.tags, "tag") : null),
        t.state_reason && !t.running ? h("p", { class: "subtitle", id: "task-reason" }, t.state_reason) : null,
      ),
      actions,
    );
  }

  function confirmStop(button, busy) {
    const run = state.task.run;
    const yes = h("button", { type: "button", class: "btn btn-danger-solid btn-small", id: "confirm-stop" }, "Stop the run");
    const no = h("button", { type: "button", class: "btn btn-small", id: "cancel-stop" }, "Cancel");
    const box = h("div", { class: "confirm", role: "alertdialog", "aria-label": "Confirm stop" },
      h("span", null, `Stop ${run ? `run ${run} of ` : ""}task ${id}? Its server side ends and devices end their part.`), yes, no);
    no.addEventListener("click", () => {
      replace(actionMsg);
      button.focus();
    });
    yes.addEventListener("click", busy(yes, async () => {
      await call("rpc_exec_stop_server_task", { task_id: id });
      replace(actionMsg, alertBox(`Task ${id} stopped.`, "ok"));
      await reloadTask();
    }));
    replace(actionMsg, box);
    no.focus();
  }

  function confirmDelete(button) {
    const yes = h("button", { type: "button", class: "btn btn-danger-solid btn-small", id: "confirm-delete" }, "Delete for good");
    const no = h("button", { type: "button", class: "btn btn-small" }, "Cancel");
    const box = h("div", { class: "confirm", role: "alertdialog", "aria-label": "Confirm delete" },
      h("span", null, `Delete task ${id}, its bundle, metrics and logs?`), yes, no);
    no.addEventListener("click", () => {
      replace(actionMsg);
      button.focus();
    });
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      deleting = true; // our own delete: its echo on the stream says nothing new
      try {
        await call("rpc_exec_delete_task", { task_id: id });
        ctx.flash(`Task ${id} deleted.`);
        ctx.navigate("#/tasks");
      } catch (error) {
        deleting = false;
        replace(actionMsg, errorBox(error));
      }
    });
    replace(actionMsg, box);
    no.focus();
  }

  function showStart() {
    const t = state.task;
    if (t.running) {
      replace(startBox);
      return;
    }
    const names = new Set(t.files.map((f) => f.name));
    const missing = ["server.py", "client.py"].filter((n) => !names.has(n));
    const args = h("input", { type: "text", id: "start-arguments", autocomplete: "off", spellcheck: "false", placeholder: t.server_arguments ? `stored: ${t.server_arguments}` : "none" });
    const button = h("button", { type: "submit", class: "btn btn-primary", id: "start-task" }, "Start task");
    const form = h(
      "form",
      { class: "inline-form", id: "start-form" },
      h("div", { class: "field" }, h("label", { for: "start-arguments" }, "Server arguments for this run (optional)"), args,
        h("span", { class: "hint" }, "Empty: the task's stored server arguments.")),
      button,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      replace(actionMsg);
      const body = { task_id: id };
      if (args.value.trim()) body.arguments = args.value;
      try {
        await call("rpc_exec_start_server_task", body);
        replace(actionMsg, notice(alertBox(`Task ${id} started. Matching devices pick it up by themselves.`, "ok"), "started"));
        await reloadTask();
      } catch (error) {
        replace(actionMsg, errorBox(error));
        button.disabled = false;
        button.removeAttribute("aria-busy");
      }
    });
    replace(
      startBox,
      h("section", { class: "card", "aria-label": "Start" },
        missing.length
          ? h("div", { class: "row", style: { marginBottom: "10px" } },
            h("div", { style: { flex: "1 1 260px" } }, alertBox(`Upload ${missing.join(" and ")} before starting.`, "warn")),
            h("button", { type: "button", class: "btn btn-small", onclick: () => {
              zone.input.scrollIntoView({ block: "center", behavior: "smooth" });
              zone.input.focus({ preventScroll: true });
            } }, "Go to the bundle"))
          : null,
        form),
    );
  }

  function stat(value, label, name) {
    return h("div", { class: "card stat", "data-stat": name }, h("span", { class: "value" }, value), h("span", { class: "label" }, label));
  }

  function showStats() {
    const t = state.task;
    replace(
      stats,
      stat((t.last_round ?? "—").toString(), "last round", "round"),
      stat(formatPercent(t.last_acc), "accuracy", "accuracy"),
      stat(String(t.devices_running.length), "devices running it", "running"),
      stat(String(state.devices.matching.length), "devices matching now", "matching"),
      h("div", { class: "card stat" }, h("span", { class: "value", style: { fontSize: "1.05rem", paddingTop: "8px" } }, ago(t.last_mod_date)), h("span", { class: "label" }, "last change")),
    );
  }

  // The chart shows the current run; runs ticked in the history are laid over it.
  function showChart() {
    panel.setMain(state.task.run ?? null);
    panel.setRecords(state.task.run ?? null, state.metrics);
    panel.setOverlay([...compare].sort((a, b) => b - a));
    panel.draw();
  }

  async function toggleCompare(run, checked) {
    if (!checked) {
      compare.delete(run);
      showChart();
      return;
    }
    compare.add(run);
    if (!panel.has(run)) {
      try {
        panel.setRecords(run, await call("rpc_exec_get_task_metrics", { task_id: id, run }));
      } catch (error) {
        compare.delete(run);
        replace(actionMsg, errorBox(error));
        showRuns();
        return;
      }
    }
    if (ctx.active) showChart();
  }

  function showRuns() {
    replace(runsBody, runHistoryTable(id, state.runs, { current: state.task.run, compare, onCompare: toggleCompare }));
  }

  function showDevices() {
    const { matching, states } = state.devices;
    const running = states.filter((s) => s.status === "running").map((s) => s.user_id);
    replace(
      devicesBody,
      h("div", { style: { padding: "0 18px 12px" } },
        h("dl", { class: "props" },
          h("dt", null, "Matching now"), h("dd", { id: "devices-matching" }, matching.length ? matching.map((d, i) => [i ? " " : "", h("a", { class: "chip", href: deviceHref(d) }, d)]) : h("span", { class: "muted" }, "no device matches the selection criteria")),
          h("dt", null, "Running it"), h("dd", { id: "devices-running" }, running.length ? running.map((d, i) => [i ? " " : "", h("a", { class: "chip", href: deviceHref(d) }, d)]) : h("span", { class: "muted" }, "none")),
        )),
      table(
        [
          { label: "Device", className: "primary", render: (s) => h("a", { class: "id-link", href: deviceHref(s.user_id) }, s.user_id) },
          { label: "Status", render: (s) => badge(s.status) },
          { label: "Reason", render: (s) => h("span", { class: "break" }, s.reason || "—") },
          { label: "Updated", render: (s) => ago(s.updated_at) },
        ],
        states,
        { emptyText: "No device has reported on this task yet." },
      ),
    );
  }

  function showFiles() {
    replace(filesBody, filesTable(state.task.files));
  }

  function limitsText(limits) {
    const units = { memory_mb: " MB memory", cpu_cores: " CPU cores", open_files: " open files", pids: " processes", wall_seconds: " s wall time" };
    const parts = Object.entries(limits || {}).filter(([, v]) => v != null).map(([k, v]) => `${v}${units[k] || ` ${k}`}`);
    return parts.length ? parts.join(", ") : h("span", { class: "muted" }, "the configured defaults");
  }

  function showConfig() {
    const t = state.task;
    const code = (v) => (v ? h("code", null, v) : h("span", { class: "muted" }, "—"));
    replace(
      config,
      h("dl", { class: "props" },
        h("dt", null, "Kind"), h("dd", { id: "task-kind" }, t.kind === "flower-app" ? "Flower App (a SuperLink per run)" : "Script (server.py + client.py)"),
        h("dt", null, t.kind === "flower-app" ? "SuperLink" : "Flower server"), h("dd", null, code(`${t.host}:${t.port}`)),
        h("dt", null, "Selection criteria"), h("dd", null, t.selection_criteria ? code(t.selection_criteria) : h("span", { class: "muted" }, "every device")),
        h("dt", null, "Server arguments"), h("dd", null, code(t.server_arguments)),
        h("dt", null, "Client arguments"), h("dd", null, code(t.client_arguments)),
        h("dt", null, "Minimum devices"), h("dd", null, t.min_devices ? `${t.min_devices}${t.start_deadline_s ? `, within ${t.start_deadline_s} s` : ""}` : h("span", { class: "muted" }, "none: a run starts at once")),
        h("dt", null, "Limits"), h("dd", { id: "task-limits" }, limitsText(t.limits)),
        h("dt", null, "Tags"), h("dd", null, chips(t.tags, "tag")),
        h("dt", null, "Version"), h("dd", null, String(t.version)),
        h("dt", null, "Created"), h("dd", null, formatTime(t.creation_date)),
        h("dt", null, "Last change"), h("dd", null, formatTime(t.last_mod_date)),
      ),
    );
  }

  function showTask() {
    showHead();
    showStart();
    showStats();
    showFiles();
    showConfig();
  }

  // -- actions -----------------------------------------------------------------------
  async function upload(files) {
    const update = progress(zone.status, `Uploading ${files.map((f) => f.name).join(", ")}…`);
    try {
      const listing = await uploadFiles(id, files, update);
      state.task.files = listing;
      showFiles();
      showStart();
      replace(zone.status, alertBox(`Uploaded ${files.length} file(s); the bundle now has ${listing.length}.`, "ok"));
    } catch (error) {
      replace(zone.status, errorBox(error, "Upload failed. "));
    }
  }

  async function downloadBundle() {
    replace(actionMsg);
    try {
      const blob = await getBlob(`api/tasks/${encodeURIComponent(id)}/bundle.zip`);
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: `task_${id}.zip` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (error) {
      replace(actionMsg, errorBox(error));
    }
  }

  async function reloadTask() {
    try {
      [state.task, state.devices, state.runs] = await Promise.all([
        call("rpc_exec_get_task_by_id", { task_id: id }),
        call("rpc_exec_get_task_devices", { task_id: id }),
        call("rpc_exec_list_runs", { task_id: id }),
      ]);
      if (!ctx.active) return;
      if (state.task.run !== panel.main) allSoon(); // a new run: its metrics, log and events
      clearStale();
      showTask();
      showDevices();
      showRuns();
    } catch (error) {
      if (error.status === 404) {
        if (deleting) return;
        ctx.flash(`Task ${id} no longer exists.`, "warn");
        ctx.navigate("#/tasks");
        return;
      }
      replace(actionMsg, notice(errorBox(error), "load"));
    }
  }

  // A notice says what it is about, so it goes when that no longer holds: a failed
  // reload once a reload succeeds (the gateway is back), "started" once the task is not.
  function notice(element, about) {
    element.dataset.about = about;
    return element;
  }
  function clearStale() {
    const shown = actionMsg.firstElementChild;
    const about = shown && shown.dataset.about;
    if (about === "load" || (about === "started" && state.task && !state.task.running)) replace(actionMsg);
  }

  // Metrics, log and events without ``run`` are the current run's: read with the task
  // record, so the chart is labelled with the run they belong to.
  async function reloadAll() {
    let task;
    try {
      [task, state.metrics, state.logs, state.events] = await Promise.all([
        call("rpc_exec_get_task_by_id", { task_id: id }),
        call("rpc_exec_get_task_metrics", { task_id: id }),
        call("rpc_exec_get_task_logs", { task_id: id, limit: 300 }),
        call("rpc_exec_get_task_events", { task_id: id, limit: 500 }),
      ]);
    } catch (error) {
      if (error.status !== 404) {
        replace(actionMsg, notice(errorBox(error), "load"));
        return;
      }
    }
    if (!ctx.active) return;
    if (task) state.task = task;
    showChart();
    log.set(state.logs);
    timeline.set(state.events);
    await reloadTask();
  }

  // -- live updates ------------------------------------------------------------------
  const taskSoon = debounce(reloadTask, 250);
  const allSoon = debounce(reloadAll, 250);
  ctx.onCleanup(taskSoon.cancel);
  ctx.onCleanup(allSoon.cancel);
  ctx.on("metric", (m) => {
    if (m.task_id !== id) return;
    const record = { round: m.round, source: m.source, metrics: m.metrics || {}, time: m.time, run: m.run };
    if (m.run === undefined || m.run === null || m.run === state.task.run) {
      state.metrics.push(record);
      showChart();
    } else if (panel.has(m.run)) {
      panel.add(m.run, record); // a run laid over the chart (or one that just started)
      showChart();
    }
    taskSoon(); // last round / accuracy, and a new run
  });
  ctx.on("log", (line) => line.task_id === id && (line.run == null || line.run === state.task.run) && log.append(line));
  ctx.on("event", (e) => {
    if (e.task_id !== id) return;
    // The timeline is the current run's; another run's event comes with its reload.
    if (e.run != null && e.run !== state.task.run) return;
    timeline.add(e);
  });
  ctx.on("task", (t) => {
    if (t.task_id !== id) return;
    if (t.deleted) {
      if (deleting) return;
      ctx.flash(`Task ${id} was deleted.`, "warn");
      ctx.navigate("#/tasks");
      return;
    }
    allSoon(); // a state change: also catch metrics and lines sent before we listened
  });
  ctx.on("device", () => taskSoon());
  ctx.on("device_task", (d) => d.task_id === id && taskSoon());
  ctx.on("quarantine_cleared", () => taskSoon());
  ctx.on("resync", allSoon);
  ctx.every(30000, showStats); // "last change" ages

  showTask();
  showChart();
  showRuns();
  log.set(state.logs);
  timeline.set(state.events);
  showDevices();
}
