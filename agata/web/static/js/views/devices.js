// Devices: attributes, sensors, last seen, current and quarantined tasks; enrollment.

import { call, describe } from "../api.js";
import {
  ago, alertBox, badge, chips, debounce, deviceHref, deviceState, empty, errorBox,
  formatNumber, formatTime, h, loading, replace, table, taskHref,
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
        h("span", { class: "hint" }, `Shown once. Good for ${result.uses} device(s) until ${formatTime(result.expires_at)}. A device spends it once (POST /api/devices/enroll) and gets its own credential.`)));
    } catch (error) {
      replace(out, errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
  return h("section", { class: "card", "aria-labelledby": "h-enroll" },
    h("h2", { id: "h-enroll" }, "Enroll devices"),
    h("p", { class: "muted small", style: { marginTop: 0 } }, "Devices authenticate with their own credential, obtained once with an enrollment token."),
    form, out);
}

const PAGE = 50;
const SORTABLE = {
  user_id: "Device",
  last_seen: "State",
  data_qnt: "Data",
  avg_acc_contrib: "Acc. contrib.",
  avg_disconnection_per_round: "Disconn./round",
};
const FILTER_HINT = "id, online, offline, quarantined, revoked, running, location=lab, data_qnt>50, sensor:camera, task:ID, or a selection criteria expression";

/** A column header that sorts the table by ``key`` (a second click reverses the order). */
function sortHeader(key, state, onSort) {
  const active = state.sort === key;
  const arrow = active ? (state.order === "asc" ? " ▲" : " ▼") : "";
  const button = h("button", { type: "button", class: "sort", "data-sort": key }, SORTABLE[key] + arrow);
  button.addEventListener("click", () => onSort(key));
  return h("th", { scope: "col", "aria-sort": active ? (state.order === "asc" ? "ascending" : "descending") : "none", class: key === "user_id" ? "primary" : key === "last_seen" ? "" : "num" }, button);
}

/** The operator and enrollment tokens, each revocable (their secrets are never shown). */
function tokensCard() {
  const body = h("div", null, loading());
  const out = h("div", { "aria-live": "polite" });
  async function revoke(operation, tokenId, label) {
    try {
      await call(operation, { token_id: tokenId });
      replace(out, alertBox(`${label} revoked.`, "ok"));
      await load();
    } catch (error) {
      replace(out, errorBox(error));
    }
  }
  function rows(items, operation, label, extra) {
    return table(
      [
        { label: "Name", className: "primary", render: (x) => x.name || x.token_id },
        { label: "Created", render: (x) => formatTime(x.created_at) },
        ...extra,
        { label: "State", render: (x) => badge(x.revoked ? "revoked" : "active") },
        {
          label: "",
          render: (x) => {
            if (x.revoked) return h("span", { class: "muted" }, "—");
            const button = h("button", { type: "button", class: "btn btn-small btn-danger", "data-revoke-token": x.token_id }, "Revoke");
            button.addEventListener("click", () => revoke(operation, x.token_id, label));
            return button;
          },
        },
      ],
      items,
      { emptyText: "None." },
    );
  }
  async function load() {
    try {
      const [operators, enrollments] = await Promise.all([
        call("rpc_exec_list_operator_tokens", {}),
        call("rpc_exec_list_enrollment_tokens", {}),
      ]);
      replace(body,
        h("h3", { class: "small" }, "Operator tokens"),
        h("div", { id: "operator-tokens" }, rows(operators, "rpc_exec_revoke_operator_token", "Operator token", [])),
        h("h3", { class: "small" }, "Enrollment tokens"),
        h("div", { id: "enrollment-tokens" }, rows(enrollments, "rpc_exec_revoke_enrollment_token", "Enrollment token", [
          { label: "Uses left", className: "num", render: (x) => String(x.uses_left) },
          { label: "Expires", render: (x) => (x.expires_at ? formatTime(x.expires_at) : "never") },
        ])));
    } catch (error) {
      replace(body, errorBox(error));
    }
  }
  const card = h("section", { class: "card", "aria-labelledby": "h-tokens" },
    h("h2", { id: "h-tokens" }, "Access tokens"),
    h("p", { class: "muted small", style: { marginTop: 0 } }, "Revoking an operator token signs its holder out at once; revoking an enrollment token stops new enrollments with it."),
    out, body);
  card.load = load;
  return card;
}

export async function render(ctx) {
  ctx.title("Devices");
  const state = { q: "", sort: "user_id", order: "asc", offset: 0 };
  const selected = new Set();
  const list = h("div", null, loading());
  const error = h("div", { "aria-live": "polite" });
  const filterNote = h("p", { class: "hint", id: "filter-note", "aria-live": "polite" });
  const search = h("input", { type: "search", id: "device-filter", placeholder: "Filter: online, location=lab, sensor:camera, data_qnt>50…", "aria-label": `Filter devices: ${FILTER_HINT}`, title: FILTER_HINT, autocomplete: "off" });
  const count = h("span", { class: "count", id: "device-count" });
  const pager = h("div", { class: "row pager", id: "device-pager" });
  const bulk = h("div", { class: "row bulk", id: "bulk-actions" });
  const tokens = tokensCard();
  let page = null;
  let seq = 0;

  replace(
    ctx.container,
    h("div", { class: "page-head" },
      h("div", null, h("h1", { tabindex: "-1" }, "Devices"), h("p", { class: "subtitle" }, "The fleet as the devices last reported it."))),
    error,
    h("div", { class: "stack" },
      h("section", { class: "card flush" },
        h("div", { class: "card-head" }, h("h2", null, "All devices ", count), h("div", { class: "tools" }, search)),
        h("div", { style: { padding: "0 18px" } }, filterNote, bulk),
        list,
        h("div", { style: { padding: "0 18px 14px" } }, pager)),
      enrollmentCard(),
      tokens),
  );

  function onSort(key) {
    if (state.sort === key) state.order = state.order === "asc" ? "desc" : "asc";
    else Object.assign(state, { sort: key, order: key === "last_seen" ? "desc" : "asc" });
    state.offset = 0;
    load();
  }

  function showBulk() {
    if (!selected.size) {
      replace(bulk);
      return;
    }
    const ids = [...selected];
    const act = (label, operation, body, confirmText) => {
      const button = h("button", { type: "button", class: `btn btn-small${confirmText ? " btn-danger" : ""}`, "data-bulk": operation }, label);
      button.addEventListener("click", () => {
        if (!confirmText) return run(operation, body);
        const yes = h("button", { type: "button", class: "btn btn-small btn-danger-solid", id: "confirm-bulk" }, `Yes, ${label.toLowerCase()}`);
        const no = h("button", { type: "button", class: "btn btn-small" }, "Cancel");
        yes.addEventListener("click", () => run(operation, body));
        no.addEventListener("click", showBulk);
        replace(bulk, h("span", { class: "small" }, confirmText), yes, no);
      });
      return button;
    };
    const run = async (operation, body) => {
      replace(bulk, loading("Working…"));
      const failures = [];
      for (const id of ids) {
        try {
          await call(operation, body(id));
        } catch (err) {
          failures.push(`${id}: ${describe(err)}`);
        }
      }
      selected.clear();
      replace(error, failures.length ? alertBox(`${failures.length} of ${ids.length} failed: ${failures.slice(0, 3).join("; ")}`) : alertBox(`Done for ${ids.length} device(s).`, "ok"));
      await load();
    };
    replace(bulk,
      h("span", { class: "small", id: "selected-count" }, `${ids.length} selected`),
      act("Clear quarantine", "rpc_exec_clear_quarantine", (id) => ({ user_id: id })),
      act("Revoke", "rpc_exec_revoke_device", (id) => ({ user_id: id }), `Revoke the credentials of ${ids.length} device(s)? They must enroll again.`),
      act("Decommission", "rpc_exec_delete_device", (id) => ({ user_id: id }), `Remove ${ids.length} device(s) and their credentials? Their history in runs stays.`));
  }

  function checkbox(id) {
    const box = h("input", { type: "checkbox", "data-select": id, "aria-label": `Select ${id}` });
    box.checked = selected.has(id);
    box.addEventListener("change", () => {
      if (box.checked) selected.add(id);
      else selected.delete(id);
      showBulk();
    });
    return box;
  }

  function show() {
    const devices = page.items;
    const online = devices.filter((d) => d.online && !d.revoked).length;
    count.textContent = `(${page.total.toLocaleString("en")}${state.q ? " matching" : ""})`;
    if (!devices.length) {
      replace(list, empty(state.q ? "No device matches the filter." : "No device has reported yet. Start an agent (agata edge run) or enroll one below."));
    } else {
      const all = h("input", { type: "checkbox", id: "select-page", "aria-label": "Select every device on this page" });
      all.checked = devices.every((d) => selected.has(d.user_id));
      all.addEventListener("change", () => {
        for (const d of devices) (all.checked ? selected.add(d.user_id) : selected.delete(d.user_id));
        show();
        showBulk();
      });
      const columns = [
        { label: "", render: (d) => checkbox(d.user_id) },
        { key: "user_id", label: "Device", className: "primary", render: (d) => h("a", { class: "id-link", href: deviceHref(d.user_id) }, d.user_id) },
        { key: "last_seen", label: "State", render: (d) => h("span", null, badge(deviceState(d)), h("span", { class: "reason" }, ago(d.last_seen))) },
        { key: "data_qnt", label: "Data", className: "num", render: (d) => formatNumber(d.data_qnt) },
        { key: "avg_acc_contrib", label: "Acc. contrib.", className: "num", render: (d) => formatNumber(d.avg_acc_contrib) },
        { key: "avg_disconnection_per_round", label: "Disconn./round", className: "num", render: (d) => formatNumber(d.avg_disconnection_per_round) },
        { label: "Sensors", render: (d) => chips(d.sensors) },
        { label: "Other attributes", render: (d) => extraChips(d.extra) },
        { label: "Current tasks", render: (d) => currentTasks(d) },
        {
          label: "Quarantined",
          render: (d) => quarantineList(d, (taskId) => {
            replace(error, alertBox(`Quarantine of ${taskId} on ${d.user_id} cleared: the device may run it again.`, "ok"));
            load();
          }, (err) => replace(error, errorBox(err))),
        },
      ];
      const head = h("thead", null, h("tr", null, columns.map((c, i) => (c.key ? sortHeader(c.key, state, onSort) : h("th", { scope: "col" }, i === 0 ? all : c.label)))));
      const body = h("tbody", null, devices.map((d) => h("tr", { "data-device": d.user_id }, columns.map((c) => h("td", { "data-label": c.label || "Select", class: c.className }, c.render(d))))));
      replace(list, h("div", { class: "table-wrap" }, h("table", { class: "data responsive", id: "devices-table" }, head, body)));
    }
    const first = page.total ? state.offset + 1 : 0;
    const last = state.offset + devices.length;
    const prev = h("button", { type: "button", class: "btn btn-small", id: "page-prev", disabled: state.offset === 0 }, "← Previous");
    const next = h("button", { type: "button", class: "btn btn-small", id: "page-next", disabled: last >= page.total }, "Next →");
    prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); load(); });
    next.addEventListener("click", () => { state.offset += PAGE; load(); });
    replace(pager, h("span", { class: "small", id: "page-range" }, `${first.toLocaleString("en")}–${last.toLocaleString("en")} of ${page.total.toLocaleString("en")} · ${online} online on this page`), prev, next);
  }

  async function load() {
    const mine = ++seq;
    try {
      const result = await call("rpc_exec_query_devices", { limit: PAGE, offset: state.offset, sort: state.sort, order: state.order, q: state.q });
      if (mine !== seq) return; // a newer filter or page is on its way
      page = result;
      if (!page.items.length && state.offset > 0 && page.total > 0) {
        state.offset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE);
        return load();
      }
      replace(filterNote);
      if (error.querySelector('[role="alert"]')) replace(error); // stale failures go; notices stay
      show();
      if (!bulk.querySelector("#confirm-bulk")) showBulk(); // a pending confirmation stays
    } catch (err) {
      if (mine !== seq) return;
      if (err.status === 400 && state.q) {
        filterNote.className = "hint error";
        replace(filterNote, describe(err));
        count.textContent = "";
        replace(list, empty("Fix the filter to see devices."));
        replace(pager);
        page = null;
        return;
      } else {
        replace(error, errorBox(err));
      }
      if (!page) replace(list);
    }
  }

  const refilter = debounce(() => {
    state.q = search.value.trim();
    state.offset = 0;
    load();
  }, 250);
  search.addEventListener("input", refilter);
  const reload = debounce(load, 400);
  ctx.onCleanup(reload.cancel);
  ctx.onCleanup(refilter.cancel);
  ctx.on("device", reload);
  ctx.on("device_task", reload);
  ctx.on("quarantine_cleared", reload);
  ctx.on("resync", reload);
  ctx.every(20000, load);
  await Promise.all([load(), tokens.load()]);
}
