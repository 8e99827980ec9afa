/* Tollway console: what every page shares. Every number and every change goes through
   the admin API (/admin/...); the session cookie signs the calls, and the CSRF token the
   sign-in gave goes with every change. Nothing here decides a rule: the API does. */
"use strict";

const TW = { session: null, pages: {}, order: [] };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/* Call the admin API; the answer's JSON, or an ApiError with the API's message. */
async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && TW.session) headers["x-csrf-token"] = TW.session.csrf;
  const r = await fetch("/admin" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = text;
  try { data = JSON.parse(text); } catch (e) { /* CSV or empty */ }
  if (r.status === 401 && TW.session) { TW.session = null; showSignIn("Your session ended; sign in again."); }
  if (!r.ok) throw new ApiError(r.status, (data && data.error && data.error.message) || text);
  return data;
}

function orgPath(rest) { return "/orgs/" + encodeURIComponent(TW.session.org) + rest; }

/* Money: integer micro-USD in, "$1,234.50" out (integer arithmetic, no float rounding;
   2 decimals, more only when the amount has them). */
function usd(micro) {
  if (micro === null || micro === undefined) return "Unlimited";
  const neg = micro < 0; let m = Math.abs(Math.trunc(micro));
  const whole = Math.trunc(m / 1e6); let frac = String(m % 1e6).padStart(6, "0");
  frac = frac.replace(/0+$/, ""); if (frac.length < 2) frac = frac.padEnd(2, "0");
  return (neg ? "-$" : "$") + whole.toLocaleString("en-US") + "." + frac;
}
function usdText(text) { return text === null || text === undefined ? "—" : "$" + text; }
function when(ms) {
  if (!ms) return "—";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 16) + " UTC";
}
function num(n) { return (n || 0).toLocaleString("en-US"); }

/* Build DOM without HTML strings (no injection): el("td", {class: "num"}, "text", node). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

let uid = 0;
function field(label, attrs) {
  const id = "f" + (++uid);
  return el("label", { for: id }, label, el("input", { id, type: "text", ...attrs }));
}
function select(label, options, attrs) {
  const id = "f" + (++uid);
  return el("label", { for: id }, label,
    el("select", { id, ...attrs }, options.map(([v, t]) => el("option", { value: v }, t))));
}
function card(title, ...children) {
  const id = "h" + (++uid);
  return el("section", { class: "card", "aria-labelledby": id }, el("h3", { id }, title), ...children);
}
function figure(label, value, id) {
  return el("div", { class: "figure" }, el("div", { class: "label" }, label),
    el("div", { class: "value", id }, value));
}
/* A table; columns are [header, cell(row) -> text or node, "num"?]. */
function table(caption, columns, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty || "Nothing yet.");
  return el("div", { class: "table-wrap" }, el("table", { class: "stack" },
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, columns.map(([h, , k]) => el("th", { scope: "col", class: k }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, columns.map(([h, f, k]) =>
      el("td", { class: k, "data-label": h }, f(r))))))));
}

function say(message, kind) {
  const s = document.getElementById("status");
  s.textContent = message || ""; s.className = kind || "";
}

/* Run an action: its errors are shown, the page is drawn again (live numbers). */
async function act(work, done) {
  try {
    const message = await work();
    await render();
    if (message) say(message, "ok");
  } catch (e) {
    say(e.message, "error");
    if (done) done();
  }
}

/* A form that calls `work(values)` on submit; values by the inputs' name attributes. */
function form(attrs, children, work) {
  const f = el("form", { class: "inline", ...attrs }, ...children);
  f.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const values = Object.fromEntries(new FormData(f).entries());
    const button = ev.submitter && ev.submitter.name ? ev.submitter.name : null;
    act(() => work(values, button));
  });
  return f;
}

function page(id, title, roles, draw) {
  TW.pages[id] = { id, title, roles, draw }; TW.order.push(id);
}

async function render() {
  const s = TW.session; if (!s) return;
  const main = document.getElementById("main");
  main.setAttribute("aria-busy", "true");
  const allowed = TW.order.filter((id) => TW.pages[id].roles.includes(s.role));
  let id = location.hash.slice(1);
  if (!allowed.includes(id)) id = allowed[0];
  const nav = document.getElementById("nav"); nav.replaceChildren();
  for (const p of allowed) {
    nav.append(el("li", {}, el("a", { href: "#" + p, "aria-current": p === id ? "page" : null },
      TW.pages[p].title)));
  }
  const target = document.getElementById("page");
  const fresh = el("div", {}, el("h2", {}, TW.pages[id].title));
  if (TW.flash) { fresh.append(TW.flash); TW.flash = null; }  /* shown once: a new secret */
  try {
    await TW.pages[id].draw(fresh);
  } catch (e) {
    fresh.append(el("p", { role: "alert", class: "muted" }, "Could not load this page: " + e.message));
  }
  target.replaceWith(fresh); fresh.id = "page";
  document.title = TW.pages[id].title + " · Tollway console";
  main.setAttribute("aria-busy", "false");
  TW.drawn = (TW.drawn || 0) + 1;  /* how many times a page was drawn (tests wait on it) */
}
