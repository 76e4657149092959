// The task page's two feeds: the server log tail and the event timeline. Both load a
// snapshot, then take live lines/events from the stream.

import { deviceHref, formatClock, formatTime, h, replace } from "./dom.js";

const LOG_LINES = 1000;
// The level a log line states near its start (Flower's "INFO :", Python logging's
// "... WARNING ..."); a traceback is an error. Lines are coloured by it, not by their
// stream: Flower writes every INFO line to stderr.
const LEVEL = /^.{0,48}?\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b/;

/** ``debug`` / ``info`` / ``warning`` / ``error`` / ``""`` (no level stated). */
export function logLevel(text) {
  if (/^(Traceback \(most recent call last\)|\w+(Error|Exception):)/.test(text)) return "error";
  const match = LEVEL.exec(text || "");
  if (!match) return "";
  const word = match[1];
  if (word === "WARN" || word === "WARNING") return "warning";
  if (word === "CRITICAL" || word === "FATAL" || word === "ERROR") return "error";
  return word.toLowerCase();
}
const BAD_EVENT = /error|fail|quarantin/i;

/** A terminal-like log; follows new lines while scrolled to the bottom. */
export function logFeed() {
  const element = h("pre", { class: "log", id: "log", tabindex: "0", "aria-label": "Server log" });
  let count = 0;
  const line = (l) => {
    const level = l.stream === "error" ? "error" : logLevel(l.text);
    return h("span", { class: `ln s-${l.stream}${level ? ` lv-${level}` : ""}`, "data-level": level || null },
      h("span", { class: "t", title: formatTime(l.time) }, formatClock(l.time)), l.text);
  };
  return {
    element,
    set(lines) {
      count = lines.length;
      if (!count) {
        replace(element, h("span", { class: "t" }, "No output yet. The server side's log appears here while it runs."));
        return;
      }
      replace(element, lines.slice(-LOG_LINES).map(line));
      element.scrollTop = element.scrollHeight;
    },
    append(l) {
      const stick = element.scrollTop + element.clientHeight >= element.scrollHeight - 24;
      if (count === 0) replace(element);
      count += 1;
      element.append(line(l));
      while (element.childElementCount > LOG_LINES) element.firstElementChild.remove();
      if (stick) element.scrollTop = element.scrollHeight;
    },
  };
}

/**
 * Events newest first: created, started, device X downloaded, error on device Y, ...
 * The same event repeated in a row (a device reporting "running task" every round) is
 * one entry with its count and the span of its times.
 */
export function timelineFeed() {
  const element = h("ol", { class: "timeline", id: "timeline", tabindex: "0", "aria-label": "Event timeline" });
  let groups = []; // oldest first: {key, first, last, count, element}
  // Not by run: a feed shows one run's events, and live ones do not name their run.
  const keyOf = (e) => JSON.stringify([e.event, e.service, e.user_id || ""]);
  const item = (group) => {
    const e = group.last;
    const when = group.count > 1
      ? [h("time", { title: formatTime(group.first.time) }, formatTime(group.first.time)), " – ", h("time", { title: formatTime(e.time) }, formatClock(e.time))]
      : h("time", { title: formatTime(e.time) }, formatTime(e.time));
    return h(
      "li",
      { class: BAD_EVENT.test(e.event) ? "bad" : "", "data-count": String(group.count) },
      h("div", { class: "what" }, e.event, group.count > 1 ? h("span", { class: "repeat", title: `${group.count} times in a row` }, ` ×${group.count}`) : null),
      h("div", { class: "when" }, when, " · ", e.service,
        e.user_id ? [" · ", h("a", { href: deviceHref(e.user_id) }, e.user_id)] : null),
    );
  };
  const push = (e) => {
    const top = groups.at(-1);
    if (top && top.key === keyOf(e)) {
      top.count += 1;
      top.last = e;
      return top;
    }
    const group = { key: keyOf(e), first: e, last: e, count: 1, element: null };
    groups.push(group);
    return group;
  };
  return {
    element,
    set(events) {
      groups = [];
      for (const e of events) push(e);
      if (!groups.length) {
        replace(element, h("li", { class: "muted" }, "No events yet."));
        return;
      }
      for (const g of groups) g.element = item(g);
      replace(element, [...groups].reverse().map((g) => g.element));
    },
    add(e) {
      if (!groups.length) replace(element);
      const group = push(e);
      const fresh = item(group);
      if (group.element) group.element.replaceWith(fresh);
      else element.prepend(fresh);
      group.element = fresh;
    },
  };
}
