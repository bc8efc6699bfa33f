// The cctrain party dashboard. Everything shown comes from /api/state, which the local
// dashboard server builds from this party's attested session; text from the enclave or
// the host is adversarial, so it is only ever set as textContent (never as HTML).
"use strict";

const TOKEN = new URLSearchParams(window.location.search).get("token") || "";
const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 1000;

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fill(dl, pairs) {
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "") continue;
    dl.append(el("dt", k), el("dd", Array.isArray(v) ? v.join(", ") || "—" : v));
  }
}

function rows(table, list, cells, hashCols) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const item of list) {
    const tr = document.createElement("tr");
    cells(item).forEach((c, i) => tr.append(el("td", c, hashCols.includes(i) ? "hash" : "")));
    body.append(tr);
  }
}

function num(x, digits) {
  return typeof x === "number" ? x.toFixed(digits) : "—";
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

// A line chart of loss (left axis) and ε spent (right axis) against the step.
function chart(points, showLoss, showEps) {
  const box = $("chart");
  box.replaceChildren();
  const W = 600, H = 220, L = 46, R = 46, T = 10, B = 24;
  const steps = points.map((p) => p.step);
  if (points.length < 1) return;
  const s0 = Math.min(...steps), s1 = Math.max(...steps, s0 + 1);
  const x = (s) => L + ((s - s0) / (s1 - s0)) * (W - L - R);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", id: "chart-svg" });
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  root.append(svg("text", { x: L, y: H - 6, class: "tick" }, `step ${s0}`));
  root.append(svg("text", { x: W - R - 50, y: H - 6, class: "tick" }, `step ${s1}`));
  const series = [];
  if (showLoss) series.push(["loss", "loss", L, "start"]);
  if (showEps) series.push(["epsilon", "eps", W - R, "end"]);
  for (const [key, cls, ax, anchor] of series) {
    const pts = points.filter((p) => typeof p[key] === "number");
    if (!pts.length) continue;
    const vs = pts.map((p) => p[key]);
    const v0 = Math.min(0, ...vs), v1 = Math.max(...vs, v0 + 1e-9);
    const y = (v) => H - B - ((v - v0) / (v1 - v0)) * (H - T - B);
    root.append(svg("line", { x1: ax, y1: T, x2: ax, y2: H - B, class: "axis" }));
    root.append(svg("text", { x: ax, y: T + 8, class: "tick", "text-anchor": anchor }, num(v1, 3)));
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(p.step).toFixed(1)},${y(p[key]).toFixed(1)}`);
    root.append(svg("path", { d: d.join(" "), class: cls, "data-series": key, "data-points": pts.length }));
  }
  box.append(root);
  const legend = el("div", "", "legend");
  legend.textContent = [showLoss ? "— loss (left)" : "", showEps ? "- - ε spent (right)" : ""]
    .filter(Boolean).join("   ");
  box.append(legend);
}

function render(s) {
  const alarm = $("alarm");
  alarm.hidden = !s.alarm;
  alarm.textContent = s.alarm ? `VERIFICATION FAILED — do not trust this enclave: ${s.alarm}` : "";
  const error = $("error");
  error.hidden = !s.error;
  error.textContent = s.error || "";
  $("simulated").hidden = !(s.attested && s.attested.simulated);

  const pol = s.policy || {};
  $("policy-name").textContent = pol.name ? `· ${pol.name}` : "";
  $("party-id").textContent = s.party ? s.party.id : "?";
  $("party-roles").textContent = s.party ? `(${s.party.roles.join(", ")})` : "";
  document.title = `cctrain · ${s.party ? s.party.id : ""} · ${(s.status || {}).phase || ""}`;

  const st = s.status || {};
  const phase = $("phase");
  phase.textContent = st.phase || "unknown";
  phase.dataset.phase = st.phase || "";
  $("phase-detail").textContent = st.detail || "";
  fill($("status"), [
    ["phase", st.phase],
    ["uploaded", st.providers_uploaded],
    ["waiting for", st.providers_missing],
    ["approved by", st.approvals],
    ["approvals missing", st.approvals_missing],
    ["ε spent", typeof st.epsilon_spent === "number" ? num(st.epsilon_spent, 4) : null],
    ["locked", st.locked ? "yes (waiting for state-key shares)" : null],
  ]);

  const a = s.attested || {};
  const c = a.claims || {};
  fill($("attested"), [
    ["address", a.address],
    ["platform", c.platform],
    ["measurement", c.measurement],
    ["enclave key", a.enclave_signing_key],
    ["attested at", a.at],
  ]);

  fill($("policy"), [
    ["digest", pol.digest],
    ["expires", pol.expires || "never"],
    ["platforms", pol.platforms],
    ["model", pol.model],
    ["epochs", pol.epochs],
    ["batch size", pol.batch_size],
    ["DP", pol.dp ? `on, target ε ${pol.target_epsilon}, δ ${pol.delta}` : "off"],
    ["recipients", pol.recipients],
    ["released metrics", pol.metrics],
  ]);
  rows($("parties"), pol.parties || [], (p) => [p.id, p.roles.join(", "), p.signing_key], [2]);

  rows($("receipts"), s.receipts || [],
    (r) => [r.shard, r.rows, r.bytes, r.commitment, r.journal_seq, r.accepted], [3]);
  $("receipts-section").hidden = !(s.party && s.party.roles.some((r) => r !== "recipient"));

  const prog = s.progress || { points: [] };
  const last = prog.last;
  $("progress-text").textContent = last
    ? `step ${last.step}${last.total_steps ? ` of ${last.total_steps}` : ""}` +
      (typeof last.loss === "number" ? ` · loss ${num(last.loss, 4)}` : "") +
      (typeof last.epsilon === "number" ? ` · ε ${num(last.epsilon, 4)}` : "")
    : "no training step yet";
  $("progress-text").dataset.step = last ? last.step : "";
  chart(prog.points, (pol.metrics || []).includes("train_loss"), !!pol.dp);

  const rel = s.release;
  const box = $("release");
  box.replaceChildren();
  if (s.release_error) box.append(el("div", `release does not verify: ${s.release_error}`, "alarm"));
  if (rel) {
    const dl = el("dl");
    fill(dl, [
      ["verified", rel.verified ? "manifest signature, evidence, policy digest" : "no"],
      ["unsealed", rel.unsealed ? "yes: weights opened with your key, model hash checked" : "no (not a recipient, or not released yet)"],
      ["model sha256", rel.model_sha256],
      ["approved by", rel.approved_by],
    ]);
    box.append(dl, el("pre", JSON.stringify(rel.manifest, null, 2)));
    box.dataset.verified = String(!!rel.verified);
  } else if (!s.release_error) {
    box.textContent = "no release manifest yet";
  }

  const j = s.journal || { entries: [] };
  $("journal-head").textContent = j.head
    ? `verified: ${j.entries.length} entries, head #${j.head.seq} ${j.head.sha256}`
    : "";
  rows($("journal"), j.entries, (e) => [e.seq, e.time, e.label, e.text], []);
  $("updated").textContent = s.updated || "never";
}

async function poll() {
  try {
    const r = await fetch(`/api/state?token=${encodeURIComponent(TOKEN)}`, {
      headers: { "X-Cctrain-Token": TOKEN },
      cache: "no-store",
      credentials: "omit",
    });
    if (!r.ok) throw new Error(`dashboard server answered ${r.status}`);
    render(await r.json());
  } catch (err) {
    const e = $("error");
    e.hidden = false;
    e.textContent = `cannot reach the dashboard server: ${err.message}`;
  }
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", poll);
