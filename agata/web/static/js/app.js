// The console's shell: session, hash routing (#/tasks, #/tasks/ID, #/devices, ...),
// the live-updates indicator, and the per-page context handed to each view.

import { describe, onUnauthorized, session } from "./api.js";
import { alertBox, h, replace } from "./dom.js";
import { Stream } from "./stream.js";
import * as deviceDetail from "./views/device_detail.js";
import * as devices from "./views/devices.js";
import * as overview from "./views/overview.js";
import * as runDetail from "./views/run_detail.js";
import * as signin from "./views/signin.js";
import * as taskDetail from "./views/task_detail.js";
import * as taskForm from "./views/task_form.js";
import * as tasks from "./views/tasks.js";

const ROUTES = [
  { pattern: /^$/, view: overview, nav: "overview" },
  { pattern: /^tasks$/, view: tasks, nav: "tasks" },
  { pattern: /^new-task$/, view: taskForm, nav: "tasks", params: () => ({ mode: "create" }) },
  { pattern: /^tasks\/([^/]+)\/edit$/, view: taskForm, nav: "tasks", params: (m) => ({ mode: "edit", id: m[1] }) },
  { pattern: /^tasks\/([^/]+)\/runs\/(\d+)$/, view: runDetail, nav: "tasks", params: (m) => ({ id: m[1], run: m[2] }) },
  { pattern: /^tasks\/([^/]+)$/, view: taskDetail, nav: "tasks", params: (m) => ({ id: m[1] }) },
  { pattern: /^devices$/, view: devices, nav: "devices" },
  { pattern: /^devices\/([^/]+)$/, view: deviceDetail, nav: "devices", params: (m) => ({ id: m[1] }) },
  { pattern: /^signin$/, view: signin, nav: null, public: true },
];

const main = document.getElementById("main");
const topbar = document.getElementById("topbar");
const live = document.getElementById("live");
const LIVE_TEXT = { off: "offline", connecting: "connecting…", live: "live", down: "reconnecting…" };

const stream = new Stream((status) => {
  live.dataset.status = status;
  live.querySelector(".live-text").textContent = LIVE_TEXT[status] || status;
  live.title = status === "live" ? "Live updates are on" : "Live updates are not connected";
});

let current = null; // the page context being shown
let pendingFlash = null;
let renderedHash = null; // the hash the page on screen was drawn for
let signInMessage = null;
let returnTo = null;

function routePath() {
  return location.hash.replace(/^#\/?/, "").replace(/\/+$/, "");
}

function resolve(path) {
  for (const route of ROUTES) {
    const match = path.match(route.pattern);
    if (match) {
      const raw = route.params ? route.params(match) : {};
      const params = Object.fromEntries(
        Object.entries(raw).map(([k, v]) => [k, typeof v === "string" ? safeDecode(v) : v]),
      );
      return { route, params };
    }
  }
  return null;
}

function safeDecode(value) {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function flashBox(notice) {
  const box = h("div", { class: "flash" }, alertBox(notice.message, notice.kind));
  const close = h("button", { type: "button", class: "btn btn-ghost btn-small flash-close", "aria-label": "Dismiss" }, "×");
  close.addEventListener("click", () => box.remove());
  box.firstChild.append(close);
  return box;
}

function flash(message, kind = "ok") {
  pendingFlash = { message, kind };
}

function signOut(message, { remember = true } = {}) {
  session.clear();
  stream.stop();
  signInMessage = message || null;
  const path = routePath();
  returnTo = remember && path !== "signin" ? location.hash || "#/" : null;
  if (path === "signin") render();
  else location.hash = "#/signin";
}

function signedIn() {
  stream.start();
  const target = returnTo && returnTo !== "#/signin" ? returnTo : "#/";
  returnTo = null;
  signInMessage = null;
  navigate(target);
}

function setNav(active) {
  for (const link of topbar.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function render() {
  renderedHash = location.hash;
  if (current) current.dispose();
  current = null;
  const path = routePath();
  const found = resolve(path);

  if (!session.token && !(found && found.route.public)) {
    returnTo = location.hash && location.hash !== "#/signin" ? location.hash : returnTo;
    location.replace("#/signin");
    return;
  }
  if (session.token && found && found.route.public) {
    location.replace("#/");
    return;
  }

  topbar.hidden = !session.token;
  if (session.token && stream.status === "off") stream.start();
  setNav(found ? found.route.nav : null);

  const container = h("div", { class: "view" });
  const ctx = createContext(container, found ? found.params : {});
  current = ctx;
  const notice = pendingFlash;
  pendingFlash = null;
  replace(main, notice ? flashBox(notice) : null, container);
  window.scrollTo(0, 0);

  if (!found) {
    replace(container, h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Page not found")),
      alertBox(`There is no page at #/${path}.`, "warn"), h("p", null, h("a", { href: "#/" }, "Back to the overview")));
    return;
  }
  try {
    await found.route.view.render(ctx);
  } catch (error) {
    if (!ctx.active || error.status === 401) return;
    const back = found.route.nav === "devices" ? ["#/devices", "Back to the devices"] : found.route.nav === "tasks" ? ["#/tasks", "Back to the tasks"] : ["#/", "Back to the overview"];
    replace(
      container,
      h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "This page cannot be shown")),
      h("div", { class: "stack" }, alertBox(describe(error)), h("p", null, h("a", { href: back[0] }, back[1]))),
    );
  }
  if (ctx.active && ctx.focusHeading) {
    const heading = container.querySelector("h1");
    if (heading) heading.focus({ preventScroll: true });
  }
}

function createContext(container, params) {
  const cleanups = [];
  const ctx = {
    container,
    params,
    stream,
    active: true,
    focusHeading: document.activeElement === null || document.activeElement === document.body || main.contains(document.activeElement) || topbar.contains(document.activeElement),
    navigate,
    flash,
    signedIn,
    signInMessage: () => signInMessage,
    title(text) {
      document.title = text ? `${text} · AGATA` : "AGATA console";
    },
    /** Run ``fn`` when the page is left. */
    onCleanup(fn) {
      cleanups.push(fn);
    },
    /** Subscribe to a stream kind for the life of this page. */
    on(kind, fn) {
      cleanups.push(stream.on(kind, fn));
    },
    every(ms, fn) {
      const timer = setInterval(fn, ms);
      cleanups.push(() => clearInterval(timer));
    },
    dispose() {
      ctx.active = false;
      for (const fn of cleanups.splice(0)) {
        try {
          fn();
        } catch (error) {
          console.error(error);
        }
      }
    },
  };
  return ctx;
}

onUnauthorized((error) => {
  if (!session.token) return;
  signOut(`Your session ended: the gateway did not accept the operator token (${error.detail}). Sign in again.`);
});

document.getElementById("signout").addEventListener("click", () => {
  signOut("You signed out.", { remember: false });
});

// A "Cannot reach the gateway" message is stale once the gateway answers again.
window.addEventListener("agata:reachable", () => {
  for (const box of main.querySelectorAll("[data-unreachable]")) box.remove();
});

// navigate() to the hash just set draws the page at once; the hashchange that follows
// must not draw it a second time (that would drop the notice shown with it).
window.addEventListener("hashchange", () => location.hash !== renderedHash && render());
render();
