// mpsnode explorer: a read-only page over the node's JSON API. Data is only ever written as text
// (textContent, attributes), never as markup; the content-security policy allows this file alone.
"use strict";

const main = document.getElementById("main");
// what the page saw and when (for the browser tests' latency figures; nothing is sent anywhere)
window.mpsExplorer = { loadedAt: Date.now(), rounds: [], renders: 0 };
let current = { route: "", id: null };
let headHeight = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v; else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const link = (href, text, cls) => el("a", { href, class: cls }, text);
const short = (hex) => (hex && hex.length > 16 ? hex.slice(0, 8) + "…" + hex.slice(-6) : hex);
const addr = (a) => link("#/account/" + a, short(a), "mono");
const pct = (bps) => (bps / 100).toFixed(2) + "%";
const num = (v) => el("td", { class: "num" }, v === null || v === undefined ? "" : v.toLocaleString());

function table(headers, rows, attrs) {
  return el("table", attrs, el("tr", {}, headers.map((h) => el("th", {}, h))), rows);
}
function kv(pairs) {
  return el("table", { class: "kv" }, pairs.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
}
function proven(data) {
  return el("p", { class: "mono proven" }, "read at height ", String(data.proven_at_height),
    ", state root ", data.state_root);
}

async function api(path) {
  const reply = await fetch("/api/" + path, { headers: { accept: "application/json" } });
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.error || reply.statusText);
  return body;
}

// pages ----------------------------------------------------------------------------------------
async function pageTasks() {
  const data = await api("tasks");
  const rows = data.tasks.map((t) => el("tr", { "data-task": t.task_id },
    el("td", {}, link("#/task/" + t.task_id, "task " + t.task_id)),
    el("td", { class: "status-" + t.status }, t.status),
    num(t.round), el("td", {}, pct(t.accuracy_bps) + " / " + pct(t.target_accuracy_bps)),
    num(t.participants), num(t.escrow),
    el("td", {}, t.seconds_left !== undefined ? `${t.blocks_left} blocks (~${t.seconds_left} s)` : "")));
  return [el("h1", {}, "Tasks"),
    data.tasks.length ? table(["task", "status", "round", "accuracy / target", "participants", "escrow", "time left"], rows)
      : el("p", {}, "no task on this chain yet"),
    proven(data)];
}

function curve(rounds, target) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v)); return n; };
  const W = 640, H = 260, L = 48, R = 16, T = 12, B = 32;
  const scored = rounds.filter((r) => !r.void);
  const maxRound = Math.max(1, ...rounds.map((r) => r.round));
  const x = (r) => L + ((W - L - R) * (r - (maxRound > 1 ? 1 : 0))) / Math.max(1, maxRound - (maxRound > 1 ? 1 : 0));
  const y = (bps) => T + (H - T - B) * (1 - bps / 10000);
  const root = svg("svg", { class: "curve", width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-points": scored.length });
  for (let p = 0; p <= 100; p += 25) {
    root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(p * 100), y2: y(p * 100) }));
    const t = svg("text", { x: 6, y: y(p * 100) + 4 }); t.textContent = p + "%"; root.append(t);
  }
  root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  root.append(svg("line", { class: "target", x1: L, x2: W - R, y1: y(target), y2: y(target) }));
  const label = svg("text", { x: (W + L) / 2 - 20, y: H - 8 }); label.textContent = "round"; root.append(label);
  if (scored.length) {
    root.append(svg("polyline", { class: "line", points: scored.map((r) => `${x(r.round)},${y(r.accuracy_bps)}`).join(" ") }));
    for (const r of scored) {
      const c = svg("circle", { class: "point", cx: x(r.round), cy: y(r.accuracy_bps), r: 4, "data-round": r.round, "data-accuracy-bps": r.accuracy_bps });
      const tip = svg("title", {}); tip.textContent = `round ${r.round}: ${pct(r.accuracy_bps)}`; c.append(tip);
      root.append(c);
    }
  }
  return root;
}

async function pageTask(id) {
  const t = await api("tasks/" + id);
  const slashed = new Set(t.slashes.map((s) => s.address));
  const rewards = Object.fromEntries((t.billing.rewarded || []).map((r) => [r.address, r.amount]));
  const participants = [...new Set([...t.participants, ...Object.keys(t.reward_units), ...slashed])];
  const who = table(["client", "state", "reward units", "paid"], participants.map((a) => el("tr", { "data-address": a },
    el("td", {}, addr(a)),
    el("td", {}, slashed.has(a) ? el("span", { class: "slashed" }, "slashed") : (t.participants.includes(a) ? "participant" : "removed")),
    num(t.reward_units[a] || 0), num(rewards[a] || 0))), { id: "clients" });
  const rounds = t.rounds.map((r) => el("details", { class: "round", "data-round": r.round },
    el("summary", {}, `round ${r.round}: ${r.void ? "void" : pct(r.accuracy_bps)} at block ${r.height}` +
      (r.slashed.length ? `, ${r.slashed.length} slashed` : "")),
    table(["update of", "Krum score", "selected", "flagged", "contribution", "slashed"], r.updates.map((u) => {
      const s = r.slashed.find((x) => x.address === u.address);
      return el("tr", {}, el("td", {}, addr(u.address)), num(u.score),
        el("td", { class: u.selected ? "selected" : "" }, u.selected ? "yes" : "no"),
        el("td", { class: u.flagged ? "flagged" : "" }, u.flagged ? "yes" : (u.excluded ? "excluded" : "no")),
        num(u.contribution), el("td", {}, s ? el("span", { class: "slashed" }, "slashed: " + s.rule) : ""));
    })),
    el("p", { class: "mono" }, "state root ", r.state_root)));
  const bill = t.billing.TaskCompleted || t.billing.TaskExpired;
  return [el("h1", {}, `Task ${t.task_id} `, el("span", { class: "status-" + t.status, id: "task-status" }, t.status)),
    kv([["round", `${t.round} (${t.phase}), ${t.rounds_closed} closed of at most ${t.max_rounds}`],
      ["accuracy", `${pct(t.accuracy_bps)}, target ${pct(t.target_accuracy_bps)}`],
      ["participants", `${t.participants.length} (min ${t.min_clients}, max ${t.max_clients}), ${t.removed} removed`],
      ["escrow", t.escrow.toLocaleString()], ["fee per round", t.fee_per_round.toLocaleString()],
      ["aggregator", t.aggregator], ["arch", t.arch.join("-")],
      ["time left", t.seconds_left !== undefined ? `${t.blocks_left} blocks (~${t.seconds_left} s)` : "-"]]),
    el("h2", {}, "Accuracy per round"), curve(t.rounds, t.target_accuracy_bps),
    el("h2", {}, "Clients"), who,
    el("h2", {}, "Rounds"), rounds,
    el("h2", {}, "Billing"), bill ? kv(Object.entries(bill).filter(([k]) => k !== "event").map(([k, v]) => [k, String(v)]))
      : el("p", {}, "not billed yet: a task is billed when it completes"),
    proven(t)];
}

async function pageAccount(a) {
  const d = await api("accounts/" + a);
  return [el("h1", {}, "Account ", el("span", { class: "mono" }, d.address)),
    kv([["balance", d.balance.toLocaleString()], ["bonded", d.bonded.toLocaleString()],
      ["unbonding", d.unbonding.map(([amt, at]) => `${amt} at block ${at}`).join(", ") || "none"],
      ["jailed", d.jailed ? "yes" : "no"], ["nonce", d.nonce],
      ["open tasks", d.tasks.length ? el("span", {}, d.tasks.map((t) => link("#/task/" + t, "task " + t + " "))) : "none"]]),
    proven(d),
    el("h2", {}, "History (rewards, slashes, transfers, joins, deposits, withdrawals)"),
    table(["height", "event", "details", "state root"], d.history.map((h) => el("tr", {},
      el("td", {}, link("#/block/" + h.height, h.height)),
      el("td", { class: h.event === "Slashed" ? "slashed" : "" }, h.event),
      el("td", { class: "mono" }, Object.entries(h).filter(([k]) => !["event", "height", "state_root"].includes(k))
        .map(([k, v]) => `${k}=${typeof v === "string" && v.length > 20 ? short(v) : JSON.stringify(v)}`).join(" ")),
      el("td", { class: "mono" }, short(h.state_root)))))];
}

async function pageBlocks() {
  const d = await api("blocks");
  return [el("h1", {}, "Recent blocks"), table(["height", "hash", "time", "txs", "bytes", "state root"], d.blocks.map((b) => el("tr", {},
    el("td", {}, link("#/block/" + b.height, b.height)), el("td", { class: "mono" }, short(b.hash)),
    el("td", {}, new Date(b.timestamp_ms).toLocaleTimeString()), num(b.txs), num(b.bytes), el("td", { class: "mono" }, short(b.state_root)))))];
}

async function pageBlock(h) {
  const b = await api("blocks/" + h);
  const receipts = b.receipts.slice(0, b.txs_total);  // one per tx, in order; then the end of block's
  return [el("h1", {}, "Block " + b.height),
    kv([["hash", el("span", { class: "mono" }, b.hash)], ["parent", link("#/block/" + (b.height - 1), b.parent_hash, "mono")],
      ["time", new Date(b.timestamp_ms).toISOString()], ["state root", el("span", { class: "mono" }, b.state_root)],
      ["txs", b.txs_total]]),
    el("h2", {}, "Transactions"),
    table(["tx", "kind", "sender", "nonce", "fee", "status", "events"], b.txs.map((t, i) => el("tr", {},
      el("td", {}, link("#/tx/" + t.tx_id, short(t.tx_id), "mono")), el("td", {}, t.kind), el("td", {}, addr(t.sender)),
      num(t.nonce), num(t.fee), el("td", {}, receipts[i] ? receipts[i].status_name : ""),
      el("td", {}, receipts[i] ? receipts[i].events.map((e) => e.event).join(", ") : "")))),
    el("h2", {}, "End of block"),
    el("p", {}, b.receipts.length > b.txs_total ? b.receipts[b.receipts.length - 1].events.map((e) => e.event).join(", ") || "no events" : "")];
}

async function pageTx(id) {
  const t = await api("txs/" + id);
  const pairs = Object.entries(t).filter(([k]) => !["receipt", "body"].includes(k)).map(([k, v]) => [k, String(v)]);
  return [el("h1", {}, "Transaction"), kv(pairs),
    t.body ? [el("h2", {}, "Body"), kv(Object.entries(t.body).map(([k, v]) => [k, JSON.stringify(v)]))] : [],
    t.receipt ? [el("h2", {}, "Receipt: " + t.receipt.status_name),
      table(["event", "fields"], t.receipt.events.map((e) => el("tr", {}, el("td", {}, e.event),
        el("td", { class: "mono" }, JSON.stringify(Object.fromEntries(Object.entries(e).filter(([k]) => k !== "event")))))))] : []];
}

async function pageNode() {
  const n = await api("node");
  const pairs = Object.entries(n).filter(([k, v]) => typeof v !== "object").map(([k, v]) => [k, String(v)]);
  const out = [el("h1", {}, "This node: " + n.kind), kv(pairs)];
  if (n.verifier) {
    out.push(el("h2", {}, "Verification"), kv(Object.entries(n.verifier).map(([k, v]) => [k, String(v)])));
    if (n.verifier.diverged) out.push(el("p", { class: "error" }, "diverged at block " + n.verifier.divergence_height + ": ",
      link("/api/reports/" + n.verifier.divergence_height, "the divergence report")));
  }
  const settlement = n.settlement || n.l2_settlement;
  if (settlement) out.push(el("h2", {}, "Settlement on L1"), kv(Object.entries(settlement).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)])));
  return out;
}

// routing and live updates --------------------------------------------------------------------------
const routes = [
  [/^#?\/?$/, "tasks", pageTasks], [/^#\/task\/(\d+)$/, "task", pageTask], [/^#\/account\/([0-9a-f]{64})$/, "account", pageAccount],
  [/^#\/blocks$/, "blocks", pageBlocks], [/^#\/block\/(\d+)$/, "block", pageBlock], [/^#\/tx\/([0-9a-f]{64})$/, "tx", pageTx],
  [/^#\/node$/, "node", pageNode],
];

async function render() {
  const hash = location.hash || "#/";
  for (const [pattern, name, page] of routes) {
    const m = hash.match(pattern);
    if (!m) continue;
    current = { route: name, id: m[1] || null };
    try {
      const content = await page(m[1]);
      main.replaceChildren(...[content].flat(3));
      main.dataset.renderedMs = String(Date.now());
      window.mpsExplorer.renders += 1;
    } catch (err) {
      main.replaceChildren(el("p", { class: "error" }, String(err.message || err)));
    }
    return;
  }
  main.replaceChildren(el("p", { class: "error" }, "no such page: " + hash));
}

document.getElementById("search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = document.getElementById("q").value.trim().toLowerCase();
  if (/^[0-9a-f]{64}$/.test(q)) {
    api("txs/" + q).then(() => { location.hash = "#/tx/" + q; }, () => { location.hash = "#/account/" + q; });
  } else if (/^t?\d+$/.test(q)) {
    location.hash = q.startsWith("t") ? "#/task/" + q.slice(1) : "#/block/" + q;
  }
});

function connectLive() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/stream");
  let opened = false;
  source.addEventListener("open", () => {
    live.textContent = "live"; live.className = "live on";
    if (opened) scheduleRender();  // a reconnect: the stream resumes after the last block seen; redraw too
    opened = true;
  });
  source.addEventListener("error", () => { live.textContent = "reconnecting"; live.className = "live off"; });
  source.addEventListener("hello", (msg) => {
    document.getElementById("head").textContent = `block ${JSON.parse(msg.data).height}`;
  });
  source.addEventListener("head", (msg) => {
    const b = JSON.parse(msg.data);
    headHeight = b.height;
    document.getElementById("head").textContent = `block ${b.height}`;
    if (["tasks", "task", "blocks", "node"].includes(current.route)) scheduleRender();
  });
  source.addEventListener("round", (msg) => {
    const r = JSON.parse(msg.data);
    const seen = { task_id: r.task_id, round: r.round, height: r.height, receivedMs: Date.now() };
    window.mpsExplorer.rounds.push(seen);
    if ((current.route === "task" && String(r.task_id) === current.id) || current.route === "tasks") {
      render().then(() => { seen.renderedMs = Date.now(); });
    }
  });
}

let pending = null;
function scheduleRender() {  // at most one refresh every two seconds from block heads
  if (pending) return;
  pending = setTimeout(() => { pending = null; render(); }, 2000);
}

window.addEventListener("hashchange", render);
render();
connectLive();
