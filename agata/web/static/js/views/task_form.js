// Create a task (every field of the original form, plus its bundle files) or edit one.
// The selection criteria are checked by the server's validator as you type.

import { ApiError, call, describe, uploadFiles } from "../api.js";
import { alertBox, debounce, errorBox, h, loading, replace, taskHref } from "../dom.js";
import { TASK_ID } from "../protocol.js"; // written by the gateway from agata.protocol
import { dropZone, pendingTable, progress } from "../upload.js";

const FIELDS = ["task_id", "kind", "tags", "host", "port", "username", "password", "selection_criteria", "server_arguments", "client_arguments", "min_devices", "start_deadline_s", "memory_mb", "cpu_cores", "wall_seconds"];

// What the fields mean for each kind of task (docs/writing-tasks.md, docs/flower-apps.md).
const KIND_HINTS = {
  script: {
    host: "Where devices reach the task's Flower server.",
    port: "The Flower server's port (1–65535).",
    server_arguments: "Passed to server.py (shell-like quoting; {host} and {port} are replaced).",
    client_arguments: "Passed to client.py on every device.",
    bundle: "server.py, client.py and the modules they import — or one bundle.zip, which is unpacked.",
  },
  "flower-app": {
    host: "Where devices reach the run's SuperLink (AGATA starts one per run).",
    port: "The SuperLink's port (1–65535).",
    server_arguments: "The run config: key=value pairs, overriding [tool.flwr.app.config].",
    client_arguments: "Passed to each device's SuperNode as node config (key=value pairs).",
    bundle: "The app project: pyproject.toml with [tool.flwr.app] and its modules — or one .fab file.",
  },
};

/** The number in an input, or null when it is empty (NaN when it is not a number). */
function numberOrNull(input) {
  const text = input.value.trim();
  return text === "" ? null : Number(text);
}

function field({ name, label, required = false, hint, wide = false, input }) {
  const msg = h("span", { class: "field-msg", id: `${name}-msg`, "aria-live": "polite" });
  input.id = `f-${name}`;
  input.name = name;
  input.setAttribute("aria-describedby", `${name}-hint ${name}-msg`);
  if (required) input.required = true;
  const el = h(
    "div",
    { class: `field${wide ? " wide" : ""}`, "data-field": name },
    h("label", { for: `f-${name}` }, label, required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null),
    input,
    h("span", { class: "hint", id: `${name}-hint` }, hint || ""),
    msg,
  );
  return { el, input, msg };
}

function setMessage(f, text, kind = "error") {
  f.msg.className = `field-msg ${text ? kind : ""}`;
  f.msg.textContent = text || "";
  if (kind === "error" && text) f.input.setAttribute("aria-invalid", "true");
  else f.input.removeAttribute("aria-invalid");
}

/** "invalid arguments: port: msg; task_id: msg" -> {port: "msg", task_id: "msg"} */
function fieldErrors(detail) {
  const out = {};
  const text = String(detail).replace(/^invalid arguments:\s*/, "");
  for (const part of text.split(/;\s*/)) {
    const m = part.match(/^(?:limits\.)?([a-z_]+)(?:\.\d+)?:\s*(.+)$/);
    if (m && FIELDS.includes(m[1])) out[m[1]] = m[2];
  }
  if (/^selection criteria/.test(detail)) out.selection_criteria = detail;
  if (/already exists/.test(detail)) out.task_id = detail;
  return out;
}

function parseTags(text) {
  return [...new Set(text.split(",").map((t) => t.trim()).filter(Boolean))];
}

export async function render(ctx) {
  const editing = ctx.params.mode === "edit";
  const taskId = ctx.params.id;
  ctx.title(editing ? `Edit ${taskId}` : "New task");
  replace(ctx.container, loading());

  let task = null;
  if (editing) {
    task = await call("rpc_exec_get_task_by_id", { task_id: taskId });
  }

  const f = {
    task_id: field({
      name: "task_id", label: "Task ID", required: true,
      hint: editing ? "The ID of a task cannot change." : "Letters, digits, “-” and “_”; at most 64.",
      input: h("input", { type: "text", autocomplete: "off", spellcheck: "false", maxlength: "64", value: task ? task.task_id : "", disabled: editing }),
    }),
    kind: field({
      name: "kind", label: "Kind",
      hint: "A script task (Flower's server.py/client.py) or a Flower App run on Flower's Deployment Runtime.",
      input: h("select", null,
        h("option", { value: "script" }, "Script (server.py + client.py)"),
        h("option", { value: "flower-app" }, "Flower App (pyproject.toml)")),
    }),
    tags: field({
      name: "tags", label: "Tags", hint: "Comma-separated, e.g. digits, demo",
      input: h("input", { type: "text", autocomplete: "off", value: task ? task.tags.join(", ") : "" }),
    }),
    host: field({
      name: "host", label: "Host", required: true, hint: "Where devices reach the task's Flower server.",
      input: h("input", { type: "text", autocomplete: "off", spellcheck: "false", value: task ? task.host : location.hostname || "127.0.0.1" }),
    }),
    port: field({
      name: "port", label: "Port", required: true, hint: "The Flower server's port (1–65535).",
      input: h("input", { type: "number", min: "1", max: "65535", inputmode: "numeric", value: task ? String(task.port) : "8080" }),
    }),
    username: field({
      name: "username", label: "Username",
      hint: editing ? "Leave empty to keep the current one." : "Only for devices of the original system (--legacy-devices).",
      input: h("input", { type: "text", autocomplete: "off", spellcheck: "false" }),
    }),
    password: field({
      name: "password", label: "Password",
      hint: editing ? "Leave empty to keep the current one." : "Used with the username to download the bundle (legacy devices).",
      input: h("input", { type: "password", autocomplete: "new-password" }),
    }),
    selection_criteria: field({
      name: "selection_criteria", label: "Selection criteria", wide: true,
      hint: "Which devices may run it, e.g. (data_qnt > 50) and (\"camera\" in sensors). Empty: every device.",
      input: h("textarea", { rows: "2", spellcheck: "false", value: task ? task.selection_criteria : "" }),
    }),
    server_arguments: field({
      name: "server_arguments", label: "Server arguments",
      hint: "Passed to server.py (shell-like quoting; {host} and {port} are replaced).",
      input: h("input", { type: "text", autocomplete: "off", spellcheck: "false", value: task ? task.server_arguments : "" }),
    }),
    client_arguments: field({
      name: "client_arguments", label: "Client arguments", hint: "Passed to client.py on every device.",
      input: h("input", { type: "text", autocomplete: "off", spellcheck: "false", value: task ? task.client_arguments : "" }),
    }),
    min_devices: field({
      name: "min_devices", label: "Minimum devices",
      hint: "A run waits until this many devices joined (0: it runs at once).",
      input: h("input", { type: "number", min: "0", max: "1000000", inputmode: "numeric", value: task ? String(task.min_devices ?? 0) : "0" }),
    }),
    start_deadline_s: field({
      name: "start_deadline_s", label: "Start deadline (s)",
      hint: "A waiting run fails after this long without enough devices. Empty: it waits as long as it takes.",
      input: h("input", { type: "number", min: "0", step: "any", inputmode: "decimal", value: task && task.start_deadline_s != null ? String(task.start_deadline_s) : "" }),
    }),
    memory_mb: field({
      name: "memory_mb", label: "Memory (MB)", hint: "Per side's process tree. Empty: the configured default.",
      input: h("input", { type: "number", min: "1", inputmode: "numeric", value: task && task.limits && task.limits.memory_mb != null ? String(task.limits.memory_mb) : "" }),
    }),
    cpu_cores: field({
      name: "cpu_cores", label: "CPU cores", hint: "e.g. 0.5 or 2. Empty: the configured default.",
      input: h("input", { type: "number", min: "0.01", step: "any", inputmode: "decimal", value: task && task.limits && task.limits.cpu_cores != null ? String(task.limits.cpu_cores) : "" }),
    }),
    wall_seconds: field({
      name: "wall_seconds", label: "Wall time (s)", hint: "A side running longer is ended. Empty: the configured default.",
      input: h("input", { type: "number", min: "0.1", step: "any", inputmode: "decimal", value: task && task.limits && task.limits.wall_seconds != null ? String(task.limits.wall_seconds) : "" }),
    }),
  };
  f.kind.input.value = task ? task.kind || "script" : "script";
  const showKind = () => {
    const hints = KIND_HINTS[f.kind.input.value] || KIND_HINTS.script;
    for (const name of ["host", "port", "server_arguments", "client_arguments"]) {
      f[name].el.querySelector(".hint").textContent = hints[name];
    }
    if (zone.element) {
      const text = zone.element.querySelector("[data-bundle-hint]");
      if (text) text.textContent = hints.bundle;
    }
  };

  // -- selection criteria, checked as you type ----------------------------------------
  let criteriaCheck = 0;
  let criteriaValid = true;
  let criteriaResult = null; // the validator's last answer for the text in the box
  let savedNobody = ""; // the text the operator chose to save although it matches nobody
  const checkCriteria = async () => {
    const seq = ++criteriaCheck;
    const text = f.selection_criteria.input.value;
    if (!text.trim()) {
      criteriaValid = true;
      criteriaResult = null;
      setMessage(f.selection_criteria, "Empty: every device matches.", "ok");
      return;
    }
    setMessage(f.selection_criteria, "Checking…", "pending");
    try {
      const result = await call("rpc_exec_validate_criteria", { selection_criteria: text });
      if (seq !== criteriaCheck) return;
      criteriaValid = result.valid;
      criteriaResult = result.valid ? result : null;
      if (!result.valid) {
        setMessage(f.selection_criteria, result.error, "error");
        return;
      }
      const notes = [];
      if (result.unknown_names.length) {
        notes.push(`No device has ${result.unknown_names.join(", ")} (a typo?): ${result.unknown_names.length > 1 ? "they are" : "it is"} None on every device.`);
      }
      notes.push(...(result.type_mismatches || []).map((m) => `${m}.`));
      const total = result.devices ?? 0;
      notes.push(`Matches ${result.matching.toLocaleString("en")} of ${total.toLocaleString("en")} devices now (${(result.matching_online ?? 0).toLocaleString("en")} online).`);
      const warn = result.unknown_names.length || (result.type_mismatches || []).length || (total > 0 && !result.matching);
      setMessage(f.selection_criteria, `${warn ? "⚠ " : "✓ Valid expression. "}${notes.join(" ")}`, warn ? "warn" : "ok");
    } catch (error) {
      if (seq !== criteriaCheck) return;
      criteriaValid = !(error instanceof ApiError && error.status === 400);
      setMessage(f.selection_criteria, describe(error), "error");
    }
  };
  const checkSoon = debounce(checkCriteria, 350);
  ctx.onCleanup(checkSoon.cancel);
  f.selection_criteria.input.addEventListener("input", () => {
    criteriaCheck += 1; // a result for older text is stale now
    setMessage(f.selection_criteria, "Checking…", "pending");
    checkSoon();
  });
  // Enter submits the form, as in every other field (Shift+Enter for a new line).
  f.selection_criteria.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  // -- bundle files (create only) ------------------------------------------------------
  let pending = [];
  const pendingList = h("div");
  const zone = dropZone({
    title: "Drop the bundle files here",
    onFiles(files) {
      const byName = new Map(pending.map((p) => [p.name, p]));
      for (const file of files) byName.set(file.name, file);
      pending = [...byName.values()];
      replace(
        pendingList,
        pendingTable(pending),
        h("button", { type: "button", class: "btn btn-small btn-ghost", onclick: () => { pending = []; replace(pendingList); } }, "Remove all"),
      );
    },
  });

  f.kind.input.addEventListener("change", showKind);
  showKind();

  // -- form --------------------------------------------------------------------------
  const formError = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, editing ? "Save changes" : "Create task");
  const cancelHref = editing ? taskHref(taskId) : "#/tasks";
  const form = h(
    "form",
    { class: "form card", novalidate: true, id: "task-form" },
    h(
      "div",
      { class: "form-grid" },
      f.task_id.el, f.kind.el, f.tags.el, f.host.el, f.port.el, f.username.el, f.password.el,
      f.selection_criteria.el, f.server_arguments.el, f.client_arguments.el,
    ),
    h("details", { class: "form-more", id: "task-form-runs", open: Boolean(task && (task.min_devices || task.start_deadline_s || Object.keys(task.limits || {}).length)) },
      h("summary", null, "Runs and limits"),
      h("div", { class: "form-grid" },
        f.min_devices.el, f.start_deadline_s.el, f.memory_mb.el, f.cpu_cores.el, f.wall_seconds.el)),
    editing
      ? null
      : h("fieldset", null, h("legend", null, "Bundle files (optional, you can also upload them later)"), zone.element, pendingList),
    formError,
    h("div", { class: "form-actions" }, submit, h("a", { class: "btn btn-ghost", href: cancelHref }, "Cancel")),
  );

  function clientCheck() {
    const problems = {};
    const id = f.task_id.input.value.trim();
    if (!editing && !TASK_ID.test(id)) {
      problems.task_id = id ? "Use only letters, digits, “-” and “_” (at most 64)." : "A task needs an ID.";
    }
    if (!f.host.input.value.trim()) problems.host = "Where is the Flower server? Enter a host name or address.";
    const port = Number(f.port.input.value);
    if (!Number.isInteger(port) || port < 1 || port > 65535) problems.port = "Enter a port from 1 to 65535.";
    const minDevices = numberOrNull(f.min_devices.input);
    if (minDevices !== null && (!Number.isInteger(minDevices) || minDevices < 0)) problems.min_devices = "Enter a whole number, 0 or more.";
    for (const name of ["start_deadline_s", "memory_mb", "cpu_cores", "wall_seconds"]) {
      const value = numberOrNull(f[name].input);
      if (value !== null && !(value >= 0)) problems[name] = "Enter a positive number, or leave it empty.";
    }
    return problems;
  }

  function showProblems(problems) {
    for (const [name, fl] of Object.entries(f)) {
      if (name === "selection_criteria") {
        if (problems[name]) setMessage(fl, problems[name]);
        continue;
      }
      setMessage(fl, problems[name] || "");
    }
    const first = FIELDS.find((name) => problems[name]);
    if (first) f[first].input.focus();
    return Boolean(first);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(formError);
    const problems = clientCheck();
    checkSoon.cancel();
    await checkCriteria();
    if (!criteriaValid) problems.selection_criteria = f.selection_criteria.msg.textContent;
    if (showProblems(problems)) {
      replace(formError, alertBox("Please fix the highlighted fields."));
      return;
    }
    const criteriaText = f.selection_criteria.input.value.trim();
    // A fleet with no device yet matches nothing whatever the criteria: no warning then.
    if (criteriaResult && criteriaResult.devices > 0 && criteriaResult.matching === 0 && savedNobody !== criteriaText) {
      const anyway = h("button", { type: "button", class: "btn btn-small", id: "save-anyway" }, "Save anyway");
      anyway.addEventListener("click", () => {
        savedNobody = criteriaText;
        form.requestSubmit();
      });
      replace(formError, h("div", { class: "alert alert-warn", role: "alert", id: "criteria-matches-nobody" },
        "These selection criteria match no device now: the task would run nowhere until one qualifies. ", anyway));
      return;
    }
    const id = editing ? taskId : f.task_id.input.value.trim();
    const body = {
      task_id: id,
      host: f.host.input.value.trim(),
      port: Number(f.port.input.value),
      selection_criteria: f.selection_criteria.input.value.trim(),
      server_arguments: f.server_arguments.input.value,
      client_arguments: f.client_arguments.input.value,
      tags: parseTags(f.tags.input.value),
      kind: f.kind.input.value,
      min_devices: numberOrNull(f.min_devices.input) ?? 0,
    };
    const deadline = numberOrNull(f.start_deadline_s.input);
    if (deadline !== null) body.start_deadline_s = deadline;
    else if (editing && task.start_deadline_s != null) body.start_deadline_s = 0; // 0 clears it
    const limits = {};
    for (const name of ["memory_mb", "cpu_cores", "wall_seconds"]) {
      const value = numberOrNull(f[name].input);
      if (value !== null) limits[name] = value;
    }
    // Limits the form does not show (open files, pids) are kept as they were.
    for (const name of ["open_files", "pids"]) {
      if (task && task.limits && task.limits[name] != null) limits[name] = task.limits[name];
    }
    if (Object.keys(limits).length || (editing && Object.keys(task.limits || {}).length)) body.limits = limits;
    const username = f.username.input.value;
    const password = f.password.input.value;
    if (editing) {
      if (username) body.username = username;
      if (password) body.password = password;
    } else {
      Object.assign(body, { username, password, files_paths: [] });
    }

    submit.disabled = true;
    submit.setAttribute("aria-busy", "true");
    try {
      await call(editing ? "rpc_exec_update_task" : "rpc_exec_create_task", body);
    } catch (error) {
      submit.disabled = false;
      submit.removeAttribute("aria-busy");
      const mapped = error instanceof ApiError ? fieldErrors(error.detail) : {};
      showProblems(mapped);
      replace(formError, errorBox(error));
      if (!Object.keys(mapped).length) formError.scrollIntoView({ block: "nearest" });
      return;
    }

    if (!editing && pending.length) {
      const update = progress(zone.status, `Uploading ${pending.length} file(s)…`);
      try {
        const listing = await uploadFiles(id, pending, update);
        ctx.flash(`Task ${id} created; its bundle has ${listing.length} file(s).`);
      } catch (error) {
        ctx.flash(`Task ${id} was created, but its files were not uploaded: ${describe(error)}`, "error");
      }
    } else {
      ctx.flash(editing ? `Task ${id} saved.` : `Task ${id} created. Upload its bundle below, then start it.`);
    }
    ctx.navigate(taskHref(id));
  });

  replace(
    ctx.container,
    h(
      "div",
      { class: "page-head" },
      h("div", { class: "crumb" }, h("a", { href: "#/tasks" }, "Tasks"), editing ? [" / ", h("a", { href: taskHref(taskId) }, taskId)] : null),
      h("div", null, h("h1", { tabindex: "-1" }, editing ? `Edit task ${taskId}` : "New task"),
        h("p", { class: "subtitle" }, editing ? "Only what you change is sent; metrics, logs and the running state stay." : "Register a task; it stays stopped until you start it.")),
    ),
    form,
  );
  if (editing && task.running) {
    form.prepend(alertBox("This task is running: devices pick up the new settings when they next ask for tasks.", "info"));
  }
  if (f.selection_criteria.input.value.trim()) checkCriteria();
  ctx.focusHeading = false;
  (editing ? f.tags.input : f.task_id.input).focus();
}
