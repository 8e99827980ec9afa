/* Sign-in, sign-out and navigation. */
"use strict";

function showSignIn(message) {
  document.getElementById("app").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("signin").hidden = false;
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("signin-secret").focus();
}

async function enter(session) {
  TW.session = session;
  document.getElementById("signin").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("who").hidden = false;
  const who = session.role === "member" ? session.user + " (member)" : session.role;
  document.getElementById("who-text").textContent = session.org + " · " + who;
  await render();
}

async function session(method, body) {
  const headers = { "content-type": "application/json" };
  if (TW.session) headers["x-csrf-token"] = TW.session.csrf;
  const r = await fetch("/console/session", {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, (data.error && data.error.message) || r.statusText);
  return data;
}

document.getElementById("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("signin-secret");
  try {
    const s = await session("POST", { secret: input.value });
    input.value = "";
    await enter(s);
    document.getElementById("main").focus();
  } catch (e) {
    document.getElementById("signin-error").textContent = e.message;
  }
});

document.getElementById("sign-out").addEventListener("click", async () => {
  try { await session("DELETE"); } catch (e) { /* signed out either way */ }
  TW.session = null; showSignIn("Signed out.");
});

window.addEventListener("hashchange", () => {
  if (!TW.session) return;
  say("");
  render().then(() => document.getElementById("main").focus());
});

session("GET").then(enter, () => showSignIn());
