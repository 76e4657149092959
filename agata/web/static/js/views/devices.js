// Devices: attributes, sensors, last seen, current and quarantined tasks; enrollment.

import { call, describe } from "../api.js";
import {
  ago, alertBox, badge, chips, debounce, deviceHref, formatNumber, h, loading, replace, table, taskHref,
} from "../dom.js";

export const ACTIVE = new Set(["running", "downloading", "downloaded"]);

export function extraChips(extra) {
  const entries = Object.entries(extra || {});
  if (!entries.length) return h("span", { class: "muted" }, "—");
  return h("span", null, entries.map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`)));
}

export function currentTasks(device) {
  const active = device.tasks.filter((t) => ACTIVE.has(t.status));
  if (!active.length) return h("span", { class: "muted" }, "none");
  return h("span", { class: "stack", style: { gap: "4px" } },
    active.map((t) => h("span", { class: "row" }, h("a", { href: taskHref(t.task_id) }, t.task_id), badge(t.status))));
}

/** The quarantined tasks of a device, each with a "Clear" button. */
export function quarantineList(device, onCleared, onError) {
  const quarantined = device.tasks.filter((t) => t.status === "quarantined");
  if (!quarantined.length) return h("span", { class: "muted" }, "none");
  return h(
    "ul",
    { class: "stack", style: { gap: "6px", listStyle: "none", margin: 0, padding: 0 } },
    quarantined.map((t) => {
      const button = h("button", {
        type: "button",
        class: "btn btn-small",
        "data-clear": `${device.user_id}/${t.task_id}`,
        "aria-label": `Clear the quarantine of task ${t.task_id} on ${device.user_id}`,
      }, "Clear");
      button.addEventListener("click", async () => {
        button.disabled = true;
        button.setAttribute("aria-busy", "true");
        try {
          await call("rpc_exec_clear_quarantine", { user_id: device.user_id, task_id: t.task_id });
          onCleared(t.task_id);
        } catch (error) {
          button.disabled = false;
          button.removeAttribute("aria-busy");
          onError(error);
        }
      });
      return h("li", { "data-quarantine": t.task_id },
        h("div", { class: "row" }, h("a", { href: taskHref(t.task_id) }, t.task_id), badge("quarantined"), button),
        t.reason ? h("span", { class: "reason" }, t.reason) : null);
    }),
  );
}

function enrollmentCard() {
  const uses = h("input", { type: "number", id: "enroll-uses", min: "1", max: "100000", value: "1", inputmode: "numeric" });
  const hours = h("input", { type: "number", id: "enroll-hours", min: "1", max: "8760", value: "24", inputmode: "numeric" });
  const out = h("div", { "aria-live": "polite" });
  const button = h("button", { type: "submit", class: "btn" }, "Create enrollment token");
  const form = h(
    "form",
    { class: "inline-form" },
    h("div", { class: "field", style: { flex: "0 1 140px" } }, h("label", { for: "enroll-uses" }, "Devices"), uses),
    h("div", { class: "field", style: { flex: "0 1 140px" } }, h("label", { for: "enroll-hours" }, "Valid for (hours)"), hours),
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      const result = await call("rpc_exec_create_enrollment_token", {
        uses: Number(uses.value) || 1,
        ttl_seconds: (Number(hours.value) || 24) * 3600,
      });
      const field = h("input", { type: "text", readonly: true, value: result.enrollment_token, id: "enrollment-token", "aria-label": "Enrollment token" });
      const copy = h("button", { type: "button", class: "btn btn-small" }, "Copy");
      copy.addEventListener("click", async () => {
        field.select();
        try {
          await navigator.clipboard.writeText(field.value);
          copy.textContent = "Copied";
        } catch {
          copy.textContent = "Press Ctrl+C";
        }
      });
      replace(out, h("div", { class: "stack", style: { gap: "6px", marginTop: "12px" } },
        h("div", { class: "row" }, h("div", { style: { flex: "1 1 260px" } }, field), copy),
        h("span", { class: "hint" }, `Shown once. Good for ${result.uses} device(s) until ${new Date(result.expires_at).toLocaleString()}. A device spends it once (POST /api/devices/enroll) and gets its own credential.`)));
    } catch (error) {
      replace(out, alertBox(describe(error)));
    } finally {
      button.disabled = false;
    }
  });
  return h("section", { class: "card", "aria-labelledby": "h-enroll" },
    h("h2", { id: "h-enroll" }, "Enroll devices"),
    h("p", { class: "muted small", style: { marginTop: 0 } }, "Devices authenticate with their own credential, obtained once with an enrollment token."),
    form, out);
}

export async function render(ctx) {
  ctx.title("Devices");
  const list = h("div", null, loading());
  const error = h("div", { "aria-live": "polite" });
  const search = h("input", { type: "search", id: "device-filter", placeholder: "Filter by id or sensor", "aria-label": "Filter devices by id or sensor" });
  let devices = null;

  replace(
    ctx.container,
    h("div", { class: "page-head" },
      h("div", null, h("h1", { tabindex: "-1" }, "Devices"), h("p", { class: "subtitle" }, "The fleet as the devices last reported it."))),
    error,
    h("div", { class: "stack" },
      h("section", { class: "card flush" },
        h("div", { class: "card-head" }, h("h2", null, "All devices ", h("span", { class: "count", id: "device-count" })), h("div", { class: "tools" }, search)),
        list),
      enrollmentCard()),
  );

  function show() {
    if (!devices) return;
    const term = search.value.trim().toLowerCase();
    const shown = devices.filter((d) => !term || d.user_id.toLowerCase().includes(term) || d.sensors.some((x) => x.toLowerCase().includes(term)));
    ctx.container.querySelector("#device-count").textContent = `(${devices.filter((d) => d.online).length} online of ${devices.length})`;
    replace(
      list,
      table(
        [
          { label: "Device", className: "primary", render: (d) => h("a", { class: "id-link", href: deviceHref(d.user_id) }, d.user_id) },
          { label: "State", render: (d) => h("span", null, badge(d.online ? "online" : "offline"), h("span", { class: "reason" }, ago(d.last_seen))) },
          { label: "Data", className: "num", render: (d) => formatNumber(d.data_qnt) },
          { label: "Acc. contrib.", className: "num", render: (d) => formatNumber(d.avg_acc_contrib) },
          { label: "Disconn./round", className: "num", render: (d) => formatNumber(d.avg_disconnection_per_round) },
          { label: "Sensors", render: (d) => chips(d.sensors) },
          { label: "Other attributes", render: (d) => extraChips(d.extra) },
          { label: "Current tasks", render: (d) => currentTasks(d) },
          {
            label: "Quarantined",
            render: (d) => quarantineList(d, (taskId) => {
              replace(error, alertBox(`Quarantine of ${taskId} on ${d.user_id} cleared: the device may run it again.`, "ok"));
              load();
            }, (err) => replace(error, alertBox(describe(err)))),
          },
        ],
        shown.map((d) => ({ ...d, __attrs: { "data-device": d.user_id } })),
        { emptyText: devices.length ? "No device matches the filter." : "No device has reported yet. Start an agent (agata edge run) or enroll one below." },
      ),
    );
  }

  async function load() {
    try {
      devices = await call("rpc_exec_list_devices", {});
      devices.sort((a, b) => a.user_id.localeCompare(b.user_id));
      show();
    } catch (err) {
      replace(error, alertBox(describe(err)));
      if (!devices) replace(list);
    }
  }

  search.addEventListener("input", show);
  const reload = debounce(load, 400);
  ctx.onCleanup(reload.cancel);
  ctx.on("device", reload);
  ctx.on("quarantine_cleared", reload);
  ctx.on("resync", reload);
  ctx.every(20000, load);
  await load();
}
