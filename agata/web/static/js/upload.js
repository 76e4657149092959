// Bundle files: a drop zone with a file picker, and the listing with SHA-256.

import { formatBytes, h, replace, table } from "./dom.js";

let counter = 0;

/**
 * A drop zone; ``onFiles(File[])`` gets what was dropped or picked. Returns
 * ``{element, status}`` where ``status`` is a slot for progress and messages.
 */
export function dropZone({ onFiles, title = "Drop bundle files here", note } = {}) {
  counter += 1;
  const inputId = `bundle-files-${counter}`;
  const input = h("input", { type: "file", id: inputId, multiple: true, class: "visually-hidden", "data-role": "bundle-input" });
  const status = h("div", { class: "upload-status", "aria-live": "polite" });
  const zone = h(
    "div",
    { class: "dropzone", "data-role": "dropzone" },
    h("span", { class: "big" }, title),
    h(
      "span",
      { class: "small", "data-bundle-hint": "" },
      note || "server.py, client.py and the modules they import — or one bundle.zip, which is unpacked.",
    ),
    input,
    h("label", { for: inputId, class: "btn btn-small" }, "Choose files…"),
  );

  const take = (fileList) => {
    const files = [...fileList];
    if (files.length) onFiles(files);
  };
  input.addEventListener("change", () => {
    take(input.files);
    input.value = "";
  });
  zone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("over");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    take(event.dataTransfer.files);
  });
  return { element: h("div", { class: "stack", style: { gap: "8px" } }, zone, status), status, input };
}

/** A progress bar for ``status``; returns ``update(fraction)``. */
export function progress(status, label) {
  const bar = h("progress", { max: "1", value: "0", "aria-label": label });
  replace(status, h("div", { class: "small muted" }, label), bar);
  return (fraction) => {
    bar.value = fraction;
  };
}

/** The bundle listing: name, size and SHA-256 of each file. */
export function filesTable(files) {
  return table(
    [
      { label: "File", className: "primary", render: (f) => h("span", { class: "mono", "data-file": f.name }, f.name) },
      { label: "Size", className: "num nowrap", render: (f) => h("span", { title: `${f.size} bytes` }, formatBytes(f.size)) },
      { label: "SHA-256", render: (f) => h("span", { class: "sha", "data-sha256": f.sha256 }, f.sha256) },
    ],
    [...files].sort((a, b) => a.name.localeCompare(b.name)),
    { emptyText: "No files yet. A task needs at least server.py and client.py." },
  );
}

/** Files chosen but not sent yet (the create form uploads them after creating). */
export function pendingTable(files) {
  return table(
    [
      { label: "File", className: "primary", render: (f) => h("span", { class: "mono" }, f.name) },
      { label: "Size", className: "num nowrap", render: (f) => formatBytes(f.size) },
    ],
    files,
    { emptyText: "" },
  );
}
