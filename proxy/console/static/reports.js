/* Keys (create with the secret shown once, revoke) and reports (spend per day, cost per
   developer, by model, member and key, CSV, sessions). */
"use strict";

page("keys", "Keys", ["owner", "admin"], async (root) => {
  const [keys, orgs] = await Promise.all([api("GET", orgPath("/keys")), api("GET", "/orgs")]);
  const o = orgs.orgs.find((x) => x.org === TW.session.org);
  const create = form({ "aria-label": "Create a key" }, [
    field("Name", { name: "name", autocomplete: "off", required: true }),
    select("User", [["", "none (a service key)"], ...o.users.map((u) => [u, u])], { name: "user" }),
    o.workspaces.length ? select("Workspace", [["", "none"], ...o.workspaces.map((w) => [w, w])], { name: "workspace" }) : null,
    el("button", { type: "submit" }, "Create key"),
  ], async (v) => {
    const body = { name: v.name.trim() };
    if (v.user) body.user = v.user;
    if (v.workspace) body.workspace = v.workspace;
    const k = await api("POST", orgPath("/keys"), body);
    TW.flash = card("New key " + k.name,
      el("p", {}, "Copy this secret now: it is shown only this once."),
      el("code", { class: "secret", id: "new-secret", tabindex: "0" }, k.key));
    return "Key " + k.id + " created.";
  });
  const revoke = (k) => el("button", { type: "button", class: "danger", "aria-label": "Revoke key " + (k.name || k.id),
    onclick: () => act(async () => { await api("POST", "/keys/" + encodeURIComponent(k.id) + "/revoke"); return "Key " + k.id + " revoked."; }) }, "Revoke");
  const rotate = (k) => el("button", { type: "button", class: "secondary", "aria-label": "Rotate key " + (k.name || k.id),
    onclick: () => act(async () => {
      const r = await api("POST", "/keys/" + encodeURIComponent(k.id) + "/rotate", {});
      TW.flash = card("New secret of " + (r.name || r.id),
        el("p", {}, "Copy this secret now: it is shown only this once. The old one works until " + when(r.old_secret_until_ms) + "."),
        el("code", { class: "secret", id: "new-secret", tabindex: "0" }, r.key));
      return "Key " + k.id + " rotated.";
    }) }, "Rotate");
  root.append(card("Create a key", create));
  root.append(card("Keys", table("Keys of the organization", [
    ["Name", (k) => k.name || "—"], ["Key", (k) => k.hint], ["Id", (k) => k.id],
    ["User", (k) => k.user || "—"], ["Workspace", (k) => k.workspace || "—"],
    ["Created", (k) => when(k.created_ms)], ["Status", (k) => k.status || (k.revoked ? "revoked" : "active")],
    ["Actions", (k) => (k.revoked ? "" : el("div", { class: "row-actions" }, rotate(k), revoke(k)))],
  ], keys.keys, "No keys yet.")));
});

/* Every day from `from` to `to` (ISO dates), with the report's row or zero. */
function everyDay(report) {
  const byDay = Object.fromEntries(report.rows.map((r) => [r.day, r]));
  const out = [];
  for (let d = new Date(report.from + "T00:00:00Z"); d <= new Date(report.to + "T00:00:00Z");
    d = new Date(d.getTime() + 86400000)) {
    const day = d.toISOString().slice(0, 10);
    out.push(byDay[day] || { day, cost_micro: 0, requests: 0 });
  }
  return out;
}

function duration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return (ms / 1000).toFixed(1) + " s";
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return [d ? d + "d" : "", h ? h + "h" : "", m + "m", (s % 60) + "s"].filter(Boolean).join(" ");
}

/* Spend per day as bars: an SVG with a text alternative. */
function dayChart(rows) {
  /* Narrower drawing on a phone, so that its labels keep a readable size. */
  const w = window.innerWidth < 720 ? 360 : 640, h = 180, pad = 28, n = rows.length || 1;
  const max = Math.max(1, ...rows.map((r) => r.cost_micro));
  const bw = (w - pad * 2) / n;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const total = rows.reduce((a, r) => a + r.cost_micro, 0);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Spend per day, ${rows.length} days, ${usd(total)} in all, at most ${usd(max)} a day`);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node); return node;
  };
  add("line", { x1: pad, y1: h - pad, x2: w - pad, y2: h - pad, class: "axis" });
  rows.forEach((r, i) => {
    const bh = Math.round(((h - pad * 2) * r.cost_micro) / max);
    const bar = add("rect", { x: pad + i * bw + 1, y: h - pad - bh, width: Math.max(bw - 2, 1), height: bh, class: "bar" });
    const t = document.createElementNS(ns, "title"); t.textContent = r.day + ": " + usd(r.cost_micro); bar.append(t);
  });
  if (rows.length) {
    add("text", { x: pad, y: h - 8 }, rows[0].day);
    add("text", { x: w - pad, y: h - 8, "text-anchor": "end" }, rows[rows.length - 1].day);
    add("text", { x: pad, y: pad - 10 }, usd(max));
  }
  return el("div", { class: "chart" }, svg);
}

function totalsTable(caption, by, label, report, none) {
  return table(caption, [
    [label, (r) => (r[by] === null ? none : r.name ? r.name + " (" + r[by] + ")" : r[by])], ["Requests", (r) => num(r.requests), "num"],
    ["Input tokens", (r) => num(r.input_tokens), "num"], ["Output tokens", (r) => num(r.output_tokens), "num"],
    ["Cost", (r) => usd(r.cost_micro), "num"],
  ], report.rows, "No usage in this range.");
}

/* Cost per active developer (GET /orgs/{org}/developers) beside the reference figures. */
function developerCard(d) {
  const ref = d.reference;
  return card("Cost per developer",
    el("p", { class: "muted" }, d.developers + " developers active on " + d.developer_days +
      " developer-days. A developer is a member of the organization; service keys are not counted."),
    el("div", { class: "figures" },
      figure("Mean per developer-day", usd(d.mean_daily), "dev-mean"),
      figure("90th percentile per developer-day", usd(d.p90_daily), "dev-p90"),
      figure("Per developer-month", usd(d.monthly), "dev-month")),
    el("p", {}, "Reference for teams running coding assistants: about " + usd(ref.mean_daily_micro) +
      " per developer per day, under " + usd(ref.p90_daily_micro) + " for 90 % of developers, " +
      usd(ref.monthly_micro[0]) + "–" + usd(ref.monthly_micro[1]) + " per developer per month."),
    table("Active developers per day", [
      ["Day", (r) => r.day], ["Active developers", (r) => num(r.active_developers), "num"],
      ["Cost", (r) => usd(r.cost), "num"], ["Mean per developer", (r) => usd(r.mean_cost), "num"],
    ], d.days, "No developer requests in this range."));
}

page("reports", "Reports", ["owner", "admin", "billing"], async (root) => {
  TW.range = TW.range || {};
  const range_q = () => "?" + [TW.range.from ? "from=" + TW.range.from : "", TW.range.to ? "to=" + TW.range.to : ""]
    .filter(Boolean).join("&");
  const q = (by, fmt) => "/usage?by=" + by + (TW.range.from ? "&from=" + TW.range.from : "") +
    (TW.range.to ? "&to=" + TW.range.to : "") + (fmt ? "&format=" + fmt : "");
  const [day, model, user, key] = await Promise.all(["day", "model", "user", "key"].map((by) => api("GET", orgPath(q(by)))));
  const range = form({ "aria-label": "Date range" }, [
    field("From", { name: "from", type: "date", value: day.from }),
    field("To", { name: "to", type: "date", value: day.to }),
    el("button", { type: "submit" }, "Show"),
  ], async (v) => { TW.range = { from: v.from, to: v.to }; return ""; });
  const csv = (by) => el("a", { href: "/admin" + orgPath(q(by, "csv")), download: `usage-${by}-${day.from}-${day.to}.csv` }, "by " + by);
  root.append(card("Spend per day", range,
    el("div", { class: "figures" }, figure("Spend in range", usd(day.total.cost_micro), "range-spend"),
      figure("Requests", num(day.total.requests))),
    dayChart(everyDay(day)),
    el("p", {}, "Download CSV: ", csv("day"), " · ", csv("model"), " · ", csv("user"), " · ", csv("key"))));
  root.append(developerCard(await api("GET", orgPath("/developers" + range_q()))));
  root.append(card("By model", totalsTable("Spend by model", "model", "Model", model, "—")));
  root.append(card("By member", totalsTable("Spend by member", "user", "Member", user, "no member (service keys)")));
  root.append(card("By key", totalsTable("Spend by key", "key", "Key", key, "—")));
  const look = form({ "aria-label": "Find a session" }, [
    field("Session id", { name: "session", required: true, autocomplete: "off" }),
    el("button", { type: "submit" }, "Show session"),
  ], async (v) => {
    const s = await api("GET", orgPath("/sessions/" + encodeURIComponent(v.session.trim())));
    TW.shownSession = el("div", { id: "session-report" }, el("h4", {}, "Session " + s.session_id), el("dl", {}, [
      ["Total cost", usd(s.cost_micro)], ["Total duration (API)", duration(s.api_ms)],
      ["Total duration (wall)", duration(s.wall_ms)],
      ["Tokens", num(s.input_tokens) + " input, " + num(s.output_tokens) + " output"],
      ["Requests", num(s.requests)]].flatMap(([k, v2]) => [el("dt", {}, k), el("dd", {}, v2)])));
    return "";
  });
  root.append(card("Sessions", el("p", { class: "muted" }, "Requests sent with an x-tollway-session header, like a coding assistant's /cost."), look,
    TW.shownSession || null));
  TW.shownSession = null;
});
