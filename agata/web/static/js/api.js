// The gateway's HTTP API (docs/http-api.md): operations, uploads, the event stream.
// Every request carries the operator token as ``Authorization: Bearer``; a 401 from
// anywhere ends the session (see ``onUnauthorized``).

const TOKEN_KEY = "agata.operator-token";

/** The gateway's root: the console lives at ``<root>/ui/``. */
export const BASE = new URL("../", document.baseURI);

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }

  /** A sentence for the operator (the server's own words, with the kind of failure). */
  get readable() {
    const d = this.detail;
    switch (this.status) {
      case 0: return d;
      case 400: return d;
      case 401: return `Not signed in: ${d}`;
      case 403: return `Not allowed: ${d}`;
      case 404: return `Not found: ${d}`;
      case 409: return d;
      case 413: return `Too large: ${d}`;
      case 503: return `The cloud is unavailable right now: ${d}`;
      case 504: return `The cloud did not answer in time: ${d}`;
      default: return this.status >= 500 ? `The server failed (${this.status}): ${d}` : d;
    }
  }
}

/** A readable message for any error a view may catch. */
export function describe(error) {
  if (error instanceof ApiError) return error.readable;
  return error && error.message ? error.message : String(error);
}

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

let unauthorizedHandler = () => {};

/** ``fn(error)`` runs whenever the gateway answers 401 to a signed-in request. */
export function onUnauthorized(fn) {
  unauthorizedHandler = fn;
}

async function detailOf(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    const detail = body && body.detail !== undefined ? body.detail : body;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      // FastAPI's own validation errors: [{loc: [...], msg}]
      return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
    }
    return JSON.stringify(detail);
  } catch {
    return text.trim().slice(0, 300) || response.statusText || `HTTP ${response.status}`;
  }
}

function unreachable() {
  gatewayLost = true;
  return new ApiError(0, `Cannot reach the AGATA gateway at ${BASE.origin}. Is the cloud running?`);
}

// Whether a request failed for want of the gateway since it last answered. When it
// answers again (any response, or the event stream opening) the window gets the event
// ``agata:reachable`` once, and the shell removes the "Cannot reach" messages.
let gatewayLost = false;

/** The gateway answered: say so (once per outage) to whoever shows "Cannot reach". */
export function markReachable() {
  if (!gatewayLost) return;
  gatewayLost = false;
  window.dispatchEvent(new Event("agata:reachable"));
}

/** True for an error that says the gateway could not be reached (no HTTP answer). */
export function isUnreachable(error) {
  return error instanceof ApiError && error.status === 0;
}

async function request(path, init = {}, { token = session.token, quiet = false } = {}) {
  const headers = { ...(init.headers || {}), Authorization: `Bearer ${token}` };
  let response;
  try {
    response = await fetch(new URL(path, BASE), { ...init, headers, cache: "no-store" });
  } catch {
    throw unreachable();
  }
  markReachable();
  if (response.ok) return response;
  const error = new ApiError(response.status, await detailOf(response));
  if (response.status === 401 && !quiet) unauthorizedHandler(error);
  throw error;
}

/** ``POST /<operation>`` with a JSON body; resolves to the operation's return value. */
export async function call(operation, body = {}, options = {}) {
  const response = await request(
    operation,
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) },
    options,
  );
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** ``GET <path>`` -> Blob (e.g. the bundle zip). */
export async function getBlob(path) {
  const response = await request(path, { method: "GET" });
  return response.blob();
}

/**
 * Upload bundle files (multipart field ``files``). Resolves to the whole bundle
 * listing [{name, size, sha256}]. ``onProgress(fraction)`` follows the upload.
 */
export function uploadFiles(taskId, files, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", new URL(`api/tasks/${encodeURIComponent(taskId)}/files`, BASE));
    xhr.setRequestHeader("Authorization", `Bearer ${session.token}`);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
    };
    xhr.onerror = () => reject(unreachable());
    xhr.onload = async () => {
      markReachable();
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(JSON.parse(xhr.responseText));
        return;
      }
      const detail = await detailOf(new Response(xhr.responseText, { status: xhr.status }));
      const error = new ApiError(xhr.status, detail);
      if (xhr.status === 401) unauthorizedHandler(error);
      reject(error);
    };
    xhr.send(form);
  });
}

/** The URL of the operator event stream (EventSource cannot send headers). */
export function streamUrl() {
  const url = new URL("api/stream", BASE);
  url.searchParams.set("token", session.token);
  return url;
}
