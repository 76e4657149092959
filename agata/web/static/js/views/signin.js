// Sign-in with an operator token (kept in sessionStorage for this tab only).

import { call, describe, session } from "../api.js";
import { alertBox, h, replace } from "../dom.js";

export async function render(ctx) {
  ctx.title("Sign in");
  ctx.focusHeading = false;
  const message = ctx.signInMessage();
  const status = h("div", { class: "signin-status", "aria-live": "polite" }, message ? alertBox(message, "info") : null);
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "current-password",
    spellcheck: "false",
    required: true,
    "aria-describedby": "token-hint",
  });
  const button = h("button", { type: "submit", class: "btn btn-primary" }, "Sign in");
  const form = h(
    "form",
    { class: "form", novalidate: true },
    h(
      "div",
      { class: "field" },
      h("label", { for: "token" }, "Operator token"),
      input,
      h(
        "span",
        { class: "hint", id: "token-hint" },
        "Printed by ",
        h("code", null, "agata cloud run"),
        " (also in ",
        h("code", null, "<data dir>/operator-token"),
        "), or create one with ",
        h("code", null, "agata token create --name NAME"),
        ".",
      ),
    ),
    status,
    h("div", { class: "form-actions" }, button),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      input.setAttribute("aria-invalid", "true");
      replace(status, alertBox("Enter your operator token."));
      input.focus();
      return;
    }
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    replace(status);
    try {
      await call("rpc_exec_get_overview", {}, { token, quiet: true });
      session.set(token);
      ctx.signedIn();
    } catch (error) {
      input.setAttribute("aria-invalid", "true");
      let text = describe(error);
      if (error.status === 401) text = `That token was not accepted (${error.detail}). Check it and try again.`;
      if (error.status === 403) text = "That is a device credential, not an operator token. Operators sign in with a token from `agata token create`.";
      replace(status, alertBox(text));
      input.select();
      input.focus();
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  });

  replace(
    ctx.container,
    h(
      "div",
      { class: "signin" },
      h("div", { class: "brand" }, h("img", { src: "favicon.svg", alt: "", width: 34, height: 34 }), h("span", null, "AGATA")),
      h(
        "div",
        { class: "card" },
        h("h1", null, "Sign in to the operator console"),
        h("p", { class: "muted subtitle" }, "Federated learning tasks and the devices that run them."),
        h("div", { style: { height: "14px" } }),
        form,
      ),
    ),
  );
  input.focus();
}
