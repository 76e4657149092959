// Small DOM and formatting helpers. Text is always set as text (never as HTML), so
// anything a task or a device sends is shown as it is and cannot inject markup.

import { describe, isUnreachable } from "./api.js";

const SVG_NS = "http://www.w3.org/2000/svg";

function setAttributes(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "value" || key === "checked" || key === "disabled") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function appendChildren(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** ``h("a", {href: "#/"}, "text", otherNode)`` -> an element. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttributes(el, attrs);
  appendChildren(el, children);
  return el;
}

/** Same as :func:`h` for SVG elements. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttributes(el, attrs);
  appendChildren(el, children);
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  appendChildren(el, children);
  return el;
}

// -- formatting -------------------------------------------------------------------

/** Epoch seconds or an ISO-8601 string -> Date (or null). */
export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

const pad = (n) => String(n).padStart(2, "0");

/** The browser's zone at ``d`` as ``UTC`` or ``UTC+02:00`` (every shown time carries it). */
export function zoneOf(d) {
  const minutes = -d.getTimezoneOffset();
  if (!minutes) return "UTC";
  const sign = minutes > 0 ? "+" : "-";
  return `UTC${sign}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
}

/** ``2026-01-31 13:00:00 UTC+01:00``: the one format of a full date and time. */
export function formatTime(value) {
  const d = toDate(value);
  if (!d) return "—";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${zoneOf(d)}`;
}

export function formatClock(value) {
  const d = toDate(value);
  if (!d) return "";
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function timeAgo(value) {
  const d = toDate(value);
  if (!d) return "never";
  const seconds = Math.round((Date.now() - d.getTime()) / 1000);
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/** A <time> showing "3 min ago" with the exact time as tooltip. */
export function ago(value) {
  const d = toDate(value);
  if (!d) return h("span", { class: "muted" }, "never");
  return h("time", { datetime: d.toISOString(), title: formatTime(value) }, timeAgo(value));
}

/** When something ends: "ends in 58 min", "ends in 1 h 30 min" (or "ended"), the exact
 * time as tooltip; null
 * when the time is unknown. */
export function endsAt(value) {
  const d = toDate(value);
  if (!d) return null;
  const seconds = Math.round((d.getTime() - Date.now()) / 1000);
  let text = "ended";
  if (seconds >= 86400) text = `ends in ${Math.floor(seconds / 86400)} d`;
  else if (seconds >= 3600) {
    const minutes = Math.floor((seconds % 3600) / 60);
    text = `ends in ${Math.floor(seconds / 3600)} h${minutes ? ` ${minutes} min` : ""}`;
  }
  else if (seconds >= 60) text = `ends in ${Math.floor(seconds / 60)} min`;
  else if (seconds > 0) text = `ends in ${seconds} s`;
  return h("time", { datetime: d.toISOString(), title: formatTime(value), class: "until" }, text);
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatNumber(value, digits = 4) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  return String(Number(value.toFixed(digits)));
}

export function formatPercent(value) {
  if (typeof value !== "number") return "—";
  return value <= 1 ? `${(value * 100).toFixed(1)} %` : formatNumber(value);
}

// -- components ---------------------------------------------------------------------

export function badge(state, extraClass = "") {
  const text = state || "unknown";
  return h("span", { class: `badge ${text} ${extraClass}`.trim(), "data-state": text }, text);
}

/** A device's state word: a revoked credential first, then whether it polled lately. */
export function deviceState(device) {
  if (device.revoked) return "revoked";
  return device.online ? "online" : "offline";
}

export function stateCell(state, reason) {
  return h("span", { class: "state" }, badge(state), reason ? h("span", { class: "reason" }, reason) : null);
}

export function chips(values, cls = "") {
  if (!values || values.length === 0) return h("span", { class: "muted" }, "—");
  return h("span", { class: "chips" }, values.map((v) => h("span", { class: `chip ${cls}`.trim() }, v)));
}

export function alertBox(message, kind = "error") {
  return h("p", { class: `alert alert-${kind}`, role: kind === "error" ? "alert" : "status" }, message);
}

/**
 * The box for a caught error, in the server's words (``prefix`` before them). One that
 * says the gateway cannot be reached is marked ``data-unreachable``: the shell removes
 * it as soon as the gateway answers again, whichever page or action showed it.
 */
export function errorBox(error, prefix = "") {
  const box = alertBox(`${prefix}${describe(error)}`);
  if (isUnreachable(error)) box.dataset.unreachable = "";
  return box;
}

export function loading(text = "Loading…") {
  return h("div", { class: "loading", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), text);
}

export function empty(text) {
  return h("div", { class: "empty" }, text);
}

/** A table whose cells carry their column name, so narrow screens can stack them. */
export function table(columns, rows, { emptyText = "Nothing yet.", className = "" } = {}) {
  if (rows.length === 0) return empty(emptyText);
  const head = h("thead", null, h("tr", null, columns.map((c) => h("th", { scope: "col", class: c.className }, c.label))));
  const body = h(
    "tbody",
    null,
    rows.map((row) =>
      h(
        "tr",
        row.__attrs || null,
        columns.map((c) => h("td", { "data-label": c.label, class: c.className }, c.render(row))),
      ),
    ),
  );
  return h("div", { class: "table-wrap" }, h("table", { class: `data responsive ${className}`.trim() }, head, body));
}

/** Call ``fn`` ``ms`` after the last call, but at least every ``4 * ms`` while calls keep coming. */
export function debounce(fn, ms) {
  let timer = null;
  let first = 0;
  const run = (args) => {
    first = 0;
    fn(...args);
  };
  const wrapped = (...args) => {
    clearTimeout(timer);
    const now = Date.now();
    if (!first) first = now;
    const wait = Math.max(0, Math.min(ms, first + 4 * ms - now));
    timer = setTimeout(() => run(args), wait);
  };
  wrapped.cancel = () => {
    clearTimeout(timer);
    first = 0;
  };
  return wrapped;
}

export const taskHref = (id) => `#/tasks/${encodeURIComponent(id)}`;
export const deviceHref = (id) => `#/devices/${encodeURIComponent(id)}`;
