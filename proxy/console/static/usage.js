/* Usage and caps, limit-increase requests, and the member's own view. */
"use strict";

/* An "Edit limit" button and its form: a new cap (USD), unlimited, or back to the config. */
function capEditor(path, what, current) {
  const editor = form({ "aria-label": "Edit the cap of " + what, hidden: true }, [
    field("Monthly cap (USD)", { name: "amount", inputmode: "decimal", autocomplete: "off",
      value: current.cap === null ? "" : usd(current.cap).slice(1).replace(/,/g, "") }),
    el("button", { type: "submit", name: "set" }, "Adjust limit"),
    el("button", { type: "submit", name: "unlimited", class: "secondary" }, "Set unlimited"),
    current.source === "override"
      ? el("button", { type: "submit", name: "reset", class: "secondary" }, "Use the config's") : null,
  ], async (v, button) => {
    if (button === "reset") { await api("DELETE", path); return "The cap of " + what + " is the config's again."; }
    const amount = button === "unlimited" ? "unlimited" : v.amount.trim();
    if (!amount) throw new Error("Enter an amount in USD, or choose Set unlimited.");
    const r = await api("PUT", path, { amount });
    return "Cap of " + what + " set to " + (amount === "unlimited" ? "unlimited" : "$" + amount) + ".";
  });
  const edit = el("button", { type: "button", class: "secondary", "aria-expanded": "false",
    "aria-label": "Edit limit of " + what, onclick: () => {
      editor.hidden = !editor.hidden; edit.setAttribute("aria-expanded", String(!editor.hidden));
      if (!editor.hidden) editor.querySelector("input").focus();
    } }, "✎ Edit limit");
  return [edit, editor];
}

function capText(c) { return usd(c.cap) + (c.source === "override" ? " (set here)" : ""); }

function extraSwitch(path, on, what) {
  return el("button", { type: "button", class: "secondary", onclick: () => act(async () => {
    await api("PUT", path, { enabled: !on });
    return "Extra usage " + (on ? "disabled" : "enabled") + " for " + what + ".";
  }) }, on ? "Disable extra usage" : "Enable extra usage");
}

page("usage", "Usage", ["owner", "admin", "billing"], async (root) => {
  const can = TW.session.can.spend;
  const [orgs, caps, mtd, extra] = await Promise.all([
    api("GET", "/orgs"), api("GET", orgPath("/caps")), api("GET", orgPath("/spend")),
    api("GET", orgPath("/extra-usage"))]);
  const o = orgs.orgs.find((x) => x.org === TW.session.org);
  const users = await Promise.all(o.users.map((u) => api("GET", orgPath("/users/" + encodeURIComponent(u)))));
  const orgCap = caps.caps.organization;
  const orgExtra = extra.override === null ? extra.configured : extra.override;
  root.append(card("Organization",
    el("div", { class: "figures" },
      figure("Month-to-date spend", usd(mtd.organization.spend), "org-spend"),
      figure("Extra usage this month", usd(mtd.organization.extra)),
      figure("Spend cap (monthly)", capText(orgCap), "org-cap")),
    el("p", { id: "extra-state" }, "Extra usage is " + (orgExtra ? "enabled" : "disabled") +
      " for the organization" + (extra.override === null ? " (config)." : " (set here).")),
    can ? el("div", { class: "row-actions" }, ...capEditor(orgPath("/caps/organization"), "the organization", orgCap),
      extraSwitch(orgPath("/extra-usage"), orgExtra, "the organization")) : null));
  const tiers = Object.entries(caps.caps.tiers).map(([t, c]) => ({ t, c }));
  root.append(card("Seat tiers", table("Monthly cap per user of each tier", [
    ["Tier", (r) => r.t], ["Cap per user", (r) => capText(r.c), "num"],
    ...(can ? [["Actions", (r) => el("div", {}, ...capEditor(orgPath("/caps/tiers/" + encodeURIComponent(r.t)), "tier " + r.t, r.c))]] : []),
  ], tiers, "No seat tiers.")));
  root.append(card("Members", table("Members this month", [
    ["Member", (u) => u.user], ["Seat", (u) => u.seat || "—"],
    ["Included used", (u) => usd(Math.min(u.spend, u.included)) + " of " + usd(u.included), "num"],
    ["Month-to-date spend", (u) => usd(u.spend), "num"],
    ["Extra", (u) => usd(u.extra), "num"],
    ["Limit", (u) => usd(u.cap) + " (" + u.cap_source + ")"],
    ["Extra usage", (u) => (u.extra_usage ? "on" : "off")],
    ...(can ? [["Actions", (u) => el("div", { class: "row-actions" },
      ...capEditor(orgPath("/caps/users/" + encodeURIComponent(u.user)), u.user, caps.caps.users[u.user]),
      extraSwitch(orgPath("/extra-usage/users/" + encodeURIComponent(u.user)), u.extra_usage, u.user))]] : []),
  ], users, "No members with seats.")));
});

page("requests", "Requests", ["owner", "admin"], async (root) => {
  const [p, orgs] = await Promise.all([api("GET", orgPath("/limit-requests")), api("GET", "/orgs")]);
  const tiers = orgs.orgs.find((x) => x.org === TW.session.org).seat_tiers;
  const user = (r) => encodeURIComponent(r.request.user);
  const decide = (r) => form({ "aria-label": "Decide the request of " + r.request.user }, [
    field("New limit (USD or unlimited)", { name: "cap", autocomplete: "off" }),
    el("button", { type: "submit", name: "cap" }, "Increase limit"),
    tiers.length ? select("Or move to tier", tiers.map((t) => [t, t]), { name: "tier" }) : null,
    tiers.length ? el("button", { type: "submit", name: "tier", class: "secondary" }, "Move to tier") : null,
    el("button", { type: "submit", name: "deny", class: "danger" }, "Deny"),
  ], async (v, button) => {
    const path = orgPath("/limit-requests/" + user(r) + "/");
    if (button === "deny") { await api("POST", path + "deny", { note: "" }); return "Denied " + r.request.user + "'s request."; }
    const body = button === "tier" ? { tier: v.tier } : { cap: v.cap.trim() };
    if (button === "cap" && !body.cap) throw new Error("Enter the new limit in USD, or unlimited.");
    await api("POST", path + "approve", body);
    return "Approved " + r.request.user + "'s request.";
  });
  root.append(card("Review requests", table("Pending limit-increase requests, oldest first", [
    ["Member", (r) => r.request.user], ["Seat", (r) => r.user.seat || "—"],
    ["Used this month", (r) => usd(r.user.spend), "num"],
    ["Extra of limit", (r) => usd(r.user.extra) + " of " + usd(r.user.cap)],
    ["Asked", (r) => when(r.request.asked_ms)], ["Reason", (r) => r.request.reason || "—"],
    ["Decision", decide],
  ], p.pending, "No pending requests.")));
});

page("me", "My usage", ["member"], async (root) => {
  const me = TW.session.user;
  const u = await api("GET", orgPath("/users/" + encodeURIComponent(me)));
  root.append(card("This month",
    el("div", { class: "figures" },
      figure("Month-to-date spend", usd(u.spend), "my-spend"),
      figure("Included usage left", usd(Math.max(u.included - u.spend, 0)) + " of " + usd(u.included), "my-included"),
      figure("Extra usage of my limit", usd(u.extra) + " of " + usd(u.cap), "my-limit")),
    el("p", {}, "Seat: " + (u.seat || "none") + ". Extra usage past the included amount is " +
      (u.extra_usage ? "on" : "off") + "; your limit is set by " + u.cap_source + ".")));
  root.append(card("Need more?", form({ "aria-label": "Request extra usage" }, [
    el("label", { for: "reason", class: "wide" }, "What do you need it for? (optional)",
      el("textarea", { id: "reason", name: "reason", maxlength: "2000" })),
    el("button", { type: "submit" }, "Request extra usage"),
  ], async (v) => {
    await api("POST", orgPath("/limit-requests"), { user: me, reason: v.reason || "" });
    return "Your request was sent to your organization's admins.";
  })));
});
