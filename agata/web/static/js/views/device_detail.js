// One device (the original "get user info"): attributes, sensors, its tasks.

import { call } from "../api.js";
import {
  ago, alertBox, badge, chips, debounce, deviceState, errorBox, formatNumber, formatTime, h,
  loading, replace, table, taskHref,
} from "../dom.js";
import { currentTasks, extraChips, quarantineList } from "./devices.js";

export async function render(ctx) {
  const id = ctx.params.id;
  ctx.title(id);
  replace(ctx.container, loading());
  let device = await call("rpc_exec_get_user_info", { user_id: id });

  const head = h("div", { class: "page-head" });
  const msg = h("div", { "aria-live": "polite" });
  const attrs = h("div");
  const tasks = h("div");
  const offers = h("div", null, loading("Looking at the running tasks…"));
  replace(
    ctx.container,
    head,
    msg,
    h("div", { class: "stack" },
      h("div", { class: "grid grid-2" },
        h("section", { class: "card", "aria-labelledby": "h-attrs" }, h("h2", { id: "h-attrs" }, "Attributes"), attrs),
        h("section", { class: "card", "aria-labelledby": "h-offers" }, h("h2", { id: "h-offers" }, "Running tasks it matches now"), offers)),
      h("section", { class: "card flush", "aria-labelledby": "h-tasks" }, h("h2", { id: "h-tasks" }, "Its tasks"), tasks)),
  );

  const cleared = (taskId) => {
    replace(msg, alertBox(taskId ? `Quarantine of ${taskId} cleared: the device may run it again.` : "All quarantines cleared.", "ok"));
    load();
  };
  const failed = (error) => replace(msg, errorBox(error));

  function confirmRevoke(button) {
    const yes = h("button", { type: "button", class: "btn btn-danger-solid btn-small", id: "confirm-revoke" }, "Revoke");
    const no = h("button", { type: "button", class: "btn btn-small" }, "Cancel");
    const box = h("div", { class: "confirm", role: "alertdialog", "aria-label": "Confirm revoke" },
      h("span", null, `Revoke the credential of ${id}? It is refused from now on and must enroll again with a new enrollment token. Its record stays.`), yes, no);
    no.addEventListener("click", () => {
      replace(msg);
      button.focus();
    });
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        await call("rpc_exec_revoke_device", { user_id: id });
        replace(msg, alertBox(`Credential of ${id} revoked: the device is refused from now on.`, "ok"));
        load();
      } catch (error) {
        yes.disabled = false;
        failed(error);
      }
    });
    replace(msg, box);
    no.focus();
  }

  function show() {
    const quarantined = device.tasks.filter((t) => t.status === "quarantined");
    const clearAll = h("button", { type: "button", class: "btn", id: "clear-all", disabled: quarantined.length === 0 }, "Clear all quarantines");
    clearAll.addEventListener("click", async () => {
      clearAll.disabled = true;
      try {
        await call("rpc_exec_clear_quarantine", { user_id: id });
        cleared(null);
      } catch (error) {
        clearAll.disabled = false;
        failed(error);
      }
    });
    let revoke = null;
    if (device.enrolled) {
      revoke = h("button", { type: "button", class: "btn btn-danger", id: "revoke-device" }, "Revoke credential");
      revoke.addEventListener("click", () => confirmRevoke(revoke));
    }
    replace(
      head,
      h("div", { class: "crumb" }, h("a", { href: "#/devices" }, "Devices"), " / ", id),
      h("div", null, h("div", { class: "row" }, h("h1", { tabindex: "-1" }, id), badge(deviceState(device))),
        h("p", { class: "subtitle" }, "Last seen ", ago(device.last_seen), device.enrolled ? " · enrolled with its own credential" : " · not enrolled")),
      h("div", { class: "actions" }, clearAll, revoke),
    );
    replace(
      attrs,
      h("dl", { class: "props" },
        h("dt", null, "Data quantity"), h("dd", null, formatNumber(device.data_qnt)),
        h("dt", null, "Avg. accuracy contribution"), h("dd", null, formatNumber(device.avg_acc_contrib)),
        h("dt", null, "Avg. disconnections per round"), h("dd", null, formatNumber(device.avg_disconnection_per_round)),
        h("dt", null, "Sensors"), h("dd", null, chips(device.sensors)),
        h("dt", null, "Other attributes"), h("dd", null, extraChips(device.extra)),
        h("dt", null, "Current tasks"), h("dd", null, currentTasks(device)),
        h("dt", null, "Quarantined"), h("dd", null, quarantineList(device, cleared, failed)),
        h("dt", null, "Last seen"), h("dd", null, formatTime(device.last_seen)),
        h("dt", null, "Registered"), h("dd", null, formatTime(device.created_at)),
      ),
    );
    replace(
      tasks,
      table(
        [
          { label: "Task", className: "primary", render: (t) => h("a", { class: "id-link", href: taskHref(t.task_id) }, t.task_id) },
          { label: "Status", render: (t) => badge(t.status) },
          { label: "Reason", render: (t) => h("span", { class: "break" }, t.reason || "—") },
          { label: "Updated", render: (t) => ago(t.updated_at) },
        ],
        device.tasks,
        { emptyText: "This device has not reported on any task yet." },
      ),
    );
  }

  async function showOffers() {
    // Which running tasks select this device (without touching its "last seen").
    try {
      const running = await call("rpc_exec_list_tasks", { running: true });
      const checks = await Promise.all(running.map((t) => call("rpc_exec_get_task_devices", { task_id: t.task_id })));
      const matched = running.filter((_, i) => checks[i].matching.includes(id));
      replace(
        offers,
        matched.length
          ? h("ul", { style: { margin: 0, paddingLeft: "18px" } }, matched.map((t) => h("li", null, h("a", { href: taskHref(t.task_id) }, t.task_id), " ", chips(t.tags, "tag"))))
          : h("p", { class: "muted", style: { margin: 0 } }, running.length ? "No running task selects this device." : "No task is running."),
      );
    } catch (error) {
      replace(offers, errorBox(error));
    }
  }

  async function load() {
    try {
      device = await call("rpc_exec_get_user_info", { user_id: id });
      show();
      showOffers();
    } catch (error) {
      failed(error);
    }
  }

  const reload = debounce(load, 300);
  ctx.onCleanup(reload.cancel);
  ctx.on("device", (d) => d.user_id === id && reload());
  ctx.on("device_task", (d) => d.user_id === id && reload());
  ctx.on("quarantine_cleared", (d) => d.user_id === id && reload());
  ctx.on("task", reload);
  ctx.on("resync", reload);
  ctx.every(20000, show);
  show();
  await showOffers();
}
