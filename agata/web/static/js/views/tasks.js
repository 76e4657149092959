// Tasks: every registered task with its state, devices, last round and accuracy.

import { call } from "../api.js";
import {
  ago, alertBox, chips, debounce, deviceHref, errorBox, formatPercent, h, loading, replace,
  stateCell, table, taskHref,
} from "../dom.js";
import { runHref } from "../runs.js";

const STATES = ["all", "queued", "running", "stopped", "finished", "failed"];

export async function render(ctx) {
  ctx.title("Tasks");
  let tasks = null;
  const list = h("div", null, loading());
  const error = h("div", { "aria-live": "polite" });
  const search = h("input", { type: "search", id: "task-filter", placeholder: "Filter by id or tag", "aria-label": "Filter tasks by id or tag" });
  const stateSelect = h("select", { id: "state-filter", "aria-label": "Filter tasks by state" }, STATES.map((s) => h("option", { value: s }, s === "all" ? "All states" : s)));

  replace(
    ctx.container,
    h(
      "div",
      { class: "page-head" },
      h("div", null, h("h1", { tabindex: "-1" }, "Tasks"), h("p", { class: "subtitle" }, "Federated-learning tasks registered on this cloud.")),
      h("div", { class: "actions" }, h("a", { class: "btn btn-primary", href: "#/new-task", id: "new-task" }, "New task")),
    ),
    error,
    h(
      "section",
      { class: "card flush" },
      h("div", { class: "card-head" }, h("h2", null, "All tasks"), h("div", { class: "tools" }, search, stateSelect)),
      list,
    ),
  );

  function show() {
    if (!tasks) return;
    const term = search.value.trim().toLowerCase();
    const state = stateSelect.value;
    const shown = tasks.filter(
      (t) =>
        (state === "all" || t.state === state) &&
        (!term || t.task_id.toLowerCase().includes(term) || t.tags.some((tag) => tag.toLowerCase().includes(term))),
    );
    replace(
      list,
      table(
        [
          { label: "Task", className: "primary", render: (t) => h("a", { class: "id-link", href: taskHref(t.task_id) }, t.task_id) },
          { label: "Tags", render: (t) => chips(t.tags, "tag") },
          { label: "State", render: (t) => stateCell(t.state, t.state === "running" ? "" : t.state_reason) },
          { label: "Run", className: "num", render: (t) => (t.run ? h("a", { href: runHref(t.task_id, t.run), "data-run-link": String(t.run) }, `run ${t.run}`) : h("span", { class: "muted" }, "—")) },
          {
            label: "Devices running",
            render: (t) =>
              t.devices_running.length
                ? h("span", null, t.devices_running.slice(0, 3).map((d, i) => [i ? ", " : "", h("a", { href: deviceHref(d) }, d)]), t.devices_running.length > 3 ? ` +${t.devices_running.length - 3}` : "")
                : h("span", { class: "muted" }, "none"),
          },
          { label: "Last round", className: "num", render: (t) => (t.last_round ?? "—").toString() },
          { label: "Accuracy", className: "num", render: (t) => formatPercent(t.last_acc) },
          { label: "Last change", render: (t) => ago(t.last_mod_date) },
        ],
        shown.map((t) => ({ ...t, __attrs: { "data-task": t.task_id } })),
        {
          emptyText: tasks.length
            ? "No task matches the filter."
            : "No task yet. Create one with “New task”, then upload its bundle (server.py and client.py).",
        },
      ),
    );
  }

  async function load() {
    try {
      tasks = await call("rpc_exec_list_tasks", {});
      tasks.sort((a, b) => String(b.last_mod_date).localeCompare(String(a.last_mod_date)));
      replace(error);
      show();
    } catch (err) {
      replace(error, errorBox(err));
      if (!tasks) replace(list);
    }
  }

  search.addEventListener("input", show);
  stateSelect.addEventListener("change", show);
  const reload = debounce(load, 300);
  ctx.on("task", reload);
  ctx.on("metric", reload);
  ctx.on("device", (d) => d.task_id && reload());
  ctx.on("resync", reload);
  ctx.onCleanup(reload.cancel);
  await load();
}
