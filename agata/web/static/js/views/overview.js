// Home: the fleet at a glance (devices online/offline, tasks running, recent failures).

import { call } from "../api.js";
import {
  ago, alertBox, badge, chips, debounce, deviceHref, deviceState, errorBox, formatPercent, h,
  loading, replace, table, taskHref,
} from "../dom.js";

function stat(value, label, cls = "", id = "") {
  return h("div", { class: "card stat", "data-stat": id }, h("span", { class: `value ${cls}` }, String(value)), h("span", { class: "label" }, label));
}

export async function render(ctx) {
  ctx.title("Overview");
  const stats = h("div", { class: "grid grid-stats" }, loading());
  const running = h("div", null);
  const failures = h("div", null);
  const devices = h("div", null);
  const error = h("div", { "aria-live": "polite" });

  replace(
    ctx.container,
    h(
      "div",
      { class: "page-head" },
      h("div", null, h("h1", { tabindex: "-1" }, "Fleet overview"), h("p", { class: "subtitle" }, "Devices, tasks and what went wrong lately.")),
      h("div", { class: "actions" }, h("a", { class: "btn btn-primary", href: "#/new-task" }, "New task")),
    ),
    error,
    h(
      "div",
      { class: "stack" },
      stats,
      h(
        "div",
        { class: "grid grid-2" },
        h("section", { class: "card flush", "aria-labelledby": "ov-running" }, h("h2", { id: "ov-running" }, "Running tasks"), running),
        h("section", { class: "card flush", "aria-labelledby": "ov-failures" }, h("h2", { id: "ov-failures" }, "Recent failures"), failures),
      ),
      h("section", { class: "card flush", "aria-labelledby": "ov-devices" }, h("h2", { id: "ov-devices" }, "Devices"), devices),
    ),
  );

  async function load() {
    try {
      const [overview, tasks, fleet] = await Promise.all([
        call("rpc_exec_get_overview", {}),
        call("rpc_exec_list_tasks", { running: true }),
        call("rpc_exec_query_devices", { limit: 8, sort: "last_seen", order: "desc" }),
      ]);
      replace(error);
      replace(
        stats,
        stat(overview.devices_online, "devices online", overview.devices_online ? "ok" : "", "devices-online"),
        stat(overview.devices_offline ?? overview.devices_total - overview.devices_online, "devices offline", "", "devices-offline"),
        stat(overview.tasks_running, "tasks running", overview.tasks_running ? "run" : "", "tasks-running"),
        stat(overview.tasks_total, "tasks in total", "", "tasks-total"),
        stat(overview.recent_failures.length, "recent failures", overview.recent_failures.length ? "bad" : "", "failures"),
      );
      replace(
        running,
        table(
          [
            { label: "Task", className: "primary", render: (t) => h("a", { class: "id-link", href: taskHref(t.task_id) }, t.task_id) },
            { label: "Devices", className: "num", render: (t) => String(t.devices_running.length) },
            { label: "Round", className: "num", render: (t) => (t.last_round ?? "—").toString() },
            { label: "Accuracy", className: "num", render: (t) => formatPercent(t.last_acc) },
          ],
          tasks,
          { emptyText: "No task is running. Start one from its page." },
        ),
      );
      replace(
        failures,
        table(
          [
            { label: "Task", className: "primary", render: (f) => h("a", { class: "id-link", href: taskHref(f.task_id) }, f.task_id) },
            { label: "Reason", render: (f) => h("span", { class: "break" }, f.reason || "—") },
            { label: "When", render: (f) => ago(f.time) },
          ],
          [...overview.recent_failures].reverse(),
          { emptyText: "No failures." },
        ),
      );
      const recent = fleet.items;
      replace(
        devices,
        table(
          [
            { label: "Device", className: "primary", render: (d) => h("a", { class: "id-link", href: deviceHref(d.user_id) }, d.user_id) },
            { label: "State", render: (d) => badge(deviceState(d)) },
            { label: "Last seen", render: (d) => ago(d.last_seen) },
            { label: "Sensors", render: (d) => chips(d.sensors) },
          ],
          recent,
          { emptyText: "No device has reported yet. Start an agent with `agata edge run`." },
        ),
        fleet.total ? h("p", { class: "small", style: { padding: "0 18px 14px" } }, h("a", { href: "#/devices", id: "see-all-devices" }, `See all ${fleet.total.toLocaleString("en")} devices →`)) : null,
      );
    } catch (err) {
      replace(error, errorBox(err));
    }
  }

  const reload = debounce(load, 400);
  ctx.on("task", reload);
  ctx.on("device", reload);
  ctx.on("device_task", reload);
  ctx.on("resync", reload);
  ctx.every(20000, load); // "online" ages without any event
  ctx.onCleanup(reload.cancel);
  await load();
}
