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

/** Events newest first: created, started, device X downloaded, error on device Y, ... */
export function timelineFeed() {
  const element = h("ol", { class: "timeline", id: "timeline", tabindex: "0", "aria-label": "Event timeline" });
  let count = 0;
  const item = (e) =>
    h(
      "li",
      { class: BAD_EVENT.test(e.event) ? "bad" : "" },
      h("div", { class: "what" }, e.event),
      h("div", { class: "when" }, h("time", { title: formatTime(e.time) }, formatTime(e.time)), " · ", e.service,
        e.user_id ? [" · ", h("a", { href: deviceHref(e.user_id) }, e.user_id)] : null),
    );
  return {
    element,
    set(events) {
      count = events.length;
      if (!count) replace(element, h("li", { class: "muted" }, "No events yet."));
      else replace(element, [...events].reverse().map(item));
    },
    add(e) {
      if (count === 0) replace(element);
      count += 1;
      element.prepend(item(e));
    },
  };
}
