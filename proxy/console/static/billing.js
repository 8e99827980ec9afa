/* Billing: balance, buy credits, auto-reload, credit lots with their expiry, history. */
"use strict";

function reloadText(r) {
  if (!r.enabled) return "Auto-reload is off.";
  return "When the balance falls below " + usdText(r.threshold) + ", buy credit up to " +
    usdText(r.target) + " (" + (r.source || "config") + ").";
}

function autoReloadCard(info, can) {
  const r = info.auto_reload;
  const editor = form({ "aria-label": "Edit auto-reload", hidden: true }, [
    field("Threshold (USD)", { name: "threshold", inputmode: "decimal", required: true, value: r.threshold || "" }),
    field("Reload to (USD)", { name: "target", inputmode: "decimal", required: true, value: r.target || "" }),
    el("button", { type: "submit", name: "save" }, "Save"),
  ], async (v) => {
    await api("PUT", orgPath("/auto-reload"), { threshold: v.threshold.trim(), target: v.target.trim() });
    return "Auto-reload saved.";
  });
  const edit = el("button", { type: "button", class: "secondary", "aria-expanded": "false", "aria-label": "Edit auto-reload", onclick: () => {
    editor.hidden = !editor.hidden; edit.setAttribute("aria-expanded", String(!editor.hidden));
    if (!editor.hidden) editor.querySelector("input").focus();
  } }, "Edit");
  const off = el("button", { type: "button", class: "danger", onclick: () => act(async () => {
    await api("PUT", orgPath("/auto-reload"), { enabled: false }); return "Auto-reload turned off.";
  }) }, "Turn off");
  const pm = info.payment_method;
  return card("Auto-reload",
    el("p", { id: "auto-reload-state" }, reloadText(r)),
    el("p", { class: "muted" }, pm.registered
      ? "Payment method: " + pm.provider + "." : "No payment method registered: nothing is ever bought automatically."),
    can ? el("div", { class: "row-actions" }, edit, r.enabled ? off : null) : null,
    can ? editor : null);
}

function eventDetail(e) {
  const skip = new Set(["id", "type", "time", "ts_ms", "amount", "amount_micro"]);
  return Object.entries(e).filter(([k]) => !skip.has(k)).map(([k, v]) => k + " " + v).join(", ");
}

page("billing", "Billing", ["owner", "admin", "billing"], async (root) => {
  const can = TW.session.can.credits;
  const info = await api("GET", orgPath("/credits"));
  if (info.mode !== "prepaid") {
    root.append(card("Credits", el("p", {},
      "This organization is billed monthly for its usage (postpaid): it holds no prepaid credit.")));
    return;
  }
  const [lots, history] = await Promise.all([
    api("GET", orgPath("/credits/lots")), api("GET", orgPath("/credits/history?limit=50"))]);
  const b = info.balance;
  const buy = form({ "aria-label": "Buy credits" }, [
    field("Amount (USD)", { name: "amount", inputmode: "decimal", required: true, placeholder: "50.00", autocomplete: "off" }),
    el("button", { type: "submit" }, "Buy credits"),
  ], async (v) => {
    const r = await api("POST", orgPath("/credits/purchases"), { amount: v.amount.trim(), charge: true });
    return "Bought " + usd(r.lot.amount_micro) + " of credit; it expires " + when(r.lot.expires_ms) + ".";
  });
  root.append(card("Credit balance",
    el("div", { class: "figures" },
      figure("Available", usd(b.available_micro), "balance"),
      figure("Held for requests in flight", usd(b.held_micro)),
      b.debt_micro ? figure("Owed", usd(b.debt_micro)) : null),
    can ? buy : null,
    can ? el("p", { class: "muted" }, "Purchased credit is charged to the payment method, " +
      "usable at once, expires one year after purchase and is not refundable.") : null));
  root.append(autoReloadCard(info, can));
  root.append(card("Credits and expiry", table("Credit lots", [
    ["Kind", (l) => l.kind], ["Source", (l) => l.source || "—"],
    ["Amount", (l) => usd(l.amount_micro), "num"], ["Remaining", (l) => usd(l.remaining_micro), "num"],
    ["Added", (l) => when(l.created_ms)], ["Expires", (l) => when(l.expires_ms)],
  ], lots.lots, "No credit yet.")));
  root.append(card("History", table("Purchases, auto-reloads, debits and expiries (latest 50)", [
    ["Time", (e) => when(e.ts_ms)], ["Type", (e) => e.type],
    ["Amount", (e) => usd(e.amount_micro), "num"], ["Detail", eventDetail],
  ], history.events, "No events yet.")));
});
