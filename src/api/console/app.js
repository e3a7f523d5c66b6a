// Horizon's live console. No build step, no dependency: the REST API for the figures, the
// node's own WebSocket endpoint (blackhole dialect) for the live tail. Everything from the
// network is put on the page as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const TAIL_ROWS = 200;
const state = { token: "", stats: null, timer: null, ws: null, paused: false, account: "", recent: new Set() };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells, classes) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => tr.appendChild(el("td", c, classes && classes[i])));
  return tr;
}

async function api(path) {
  const response = await fetch(path, { headers: { "X-Auth-Token": state.token } });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const why = body && (body.message || (body.data && body.data.message));
    throw new Error(`${response.status} ${why || response.statusText}`);
  }
  return body;
}

function duration(secs) {
  const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600),
    m = Math.floor(secs % 3600 / 60), s = secs % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

// --- figures ---------------------------------------------------------------------------------

function showStats(s) {
  state.stats = s;
  $("summary").textContent =
    `node ${s.node} · v${s.version} · up ${duration(s.uptime_secs)} · ${s.event_source} · ` +
    (s.ready ? "ready" : "NOT READY");
  const nodes = $("nodes");
  nodes.replaceChildren(...s.nodes.map((n) => el("li", n.node + (n.self ? " (this node)" : ""))));
  const sum = { connections: 0, subscriptions: 0, events: 0, deliveries: 0, dropped: 0, read_paused: 0, ring_depth: 0 };
  const rows = s.shards.map((sh) => {
    Object.keys(sum).forEach((k) => { sum[k] += sh[k]; });
    return row([sh.shard, sh.connections, sh.subscriptions, sh.events, sh.deliveries, sh.dropped,
      sh.read_paused, sh.ring_depth], ["", "num", "num", "num", "num", "num", "num", "num"]);
  });
  const total = row(["all", sum.connections, sum.subscriptions, "", sum.deliveries, sum.dropped,
    sum.read_paused, sum.ring_depth], ["", "num", "num", "num", "num", "num", "num", "num"]);
  total.style.fontWeight = "600";
  $("shards").replaceChildren(...rows, total);
  $("webhooks").textContent = s.webhooks
    ? `webhooks: ${s.webhooks.enabled_hooks} hooks enabled, ${s.webhooks.disabled_hooks} disabled`
    : "webhooks: off on this node";
  drawChart(s.history, s.sample_every_secs);
}

function drawChart(history, every) {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 1200, height = canvas.clientHeight || 220;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const left = 56, bottom = height - 22, top = 10, right = width - 10;
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const span = 600 * 1000, now = Date.now();
  const max = Math.max(10, ...history.map((h) => Math.max(h[1], h[2])));
  const scale = Math.pow(10, Math.floor(Math.log10(max)));
  const ceiling = Math.ceil(max / scale) * scale;
  const x = (t) => right - (now - t) / span * (right - left);
  const y = (v) => bottom - v / ceiling * (bottom - top);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = color("--muted");
  g.strokeStyle = color("--line");
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = ceiling * i / 4, py = Math.round(y(v)) + 0.5;
    g.beginPath(); g.moveTo(left, py); g.lineTo(right, py); g.stroke();
    g.fillText(v >= 1000 ? `${(v / 1000).toFixed(v % 1000 ? 1 : 0)}k` : String(v), 8, py + 4);
  }
  for (let m = 10; m >= 0; m -= 2) {
    const px = x(now - m * 60000);
    g.fillText(m ? `-${m} min` : "now", px - (m ? 18 : 22), height - 6);
  }
  const line = (index, name) => {
    g.strokeStyle = color(name);
    g.lineWidth = 2;
    g.beginPath();
    let started = false;
    history.forEach((h) => {
      if (now - h[0] > span) return;
      if (started) g.lineTo(x(h[0]), y(h[index])); else g.moveTo(x(h[0]), y(h[index]));
      started = true;
    });
    g.stroke();
  };
  line(1, "--events");
  line(2, "--deliveries");
  if (!history.length) {
    g.fillStyle = color("--muted");
    g.fillText(`collecting: a sample every ${every} s`, left + 10, top + 16);
  }
}

async function refreshStats() {
  try {
    showStats((await api("/v2/console/stats")).data);
    $("status").textContent = "";
  } catch (e) {
    $("summary").textContent = `cannot read the node's figures: ${e.message}`;
  }
}

function bindingSummary(bindings) {
  const shown = bindings.slice(0, 4).join(" ");
  return bindings.length > 4 ? `${shown} … (${bindings.length} bindings)` : shown;
}

async function refreshSockets() {
  const account = $("account").value.trim();
  if (!account) return;
  try {
    const body = await api(`/v2/accounts/${encodeURIComponent(account)}/websockets`);
    const sockets = body.data || [];
    $("sockets").replaceChildren(...sockets.map((s) => row([
      s.websocket_session_id, s.name || "", s.destination || "", s.source || "",
      bindingSummary(s.bindings || []),
    ], ["mono", "", "", "mono", "mono"])));
    $("sockets-note").textContent = `${sockets.length} socket(s)` +
      (body.partial ? ` · partial: no answer from ${(body.missing || []).join(", ")}` : "");
  } catch (e) {
    $("sockets").replaceChildren();
    $("sockets-note").textContent = `cannot list: ${e.message}`;
  }
}

// --- live tail -------------------------------------------------------------------------------

function tailState(text, cls) {
  const badge = $("tail-state");
  badge.textContent = text;
  badge.className = "badge " + (cls || "");
}

// Every binding shape the node accepts, with `*` for its placeholders, one subscribe per family
// (a family the account cannot have, e.g. presence without a realm, fails alone).
async function familyBindings() {
  const catalog = await (await fetch("/v2/websockets")).json();
  const families = catalog.data || {};
  return Object.keys(families).map((family) => {
    const shapes = [...new Set(families[family].map((b) => b.replace(/\{[^}]*\}/g, "*")))];
    // Only the broadest shapes: a shape another one covers would deliver its events twice.
    const covers = (wide, narrow) => {
      const w = wide.split("."), n = narrow.split(".");
      return wide !== narrow && w.length === n.length && w.every((seg, i) => seg === "*" || seg === n[i]);
    };
    return [family, shapes.filter((s) => !shapes.some((other) => covers(other, s)))];
  });
}

async function startTail() {
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  const account = $("account").value.trim();
  if (!account) return;
  state.account = account;
  const families = await familyBindings();
  const ws = new WebSocket($("ws-url").value.trim());
  state.ws = ws;
  tailState("connecting");
  const outcome = {};
  ws.onopen = () => {
    families.forEach(([family, bindings]) => ws.send(JSON.stringify({
      action: "subscribe", auth_token: state.token, request_id: family,
      name: "horizon console", data: { account_id: account, bindings },
    })));
  };
  ws.onmessage = (message) => {
    let frame;
    try { frame = JSON.parse(message.data); } catch (_) { return; }
    if (frame.action === "reply") {
      outcome[frame.request_id] = frame.status === "success" ? "ok" : (frame.data && frame.data.errors
        ? frame.data.errors.join("; ") : (frame.data && frame.data.message) || "refused");
      const ok = Object.keys(outcome).filter((f) => outcome[f] === "ok");
      const refused = Object.keys(outcome).filter((f) => outcome[f] !== "ok");
      $("tail-families").textContent = `watching ${ok.join(", ") || "nothing"}` +
        (refused.length ? ` · not available: ${refused.map((f) => `${f} (${outcome[f]})`).join(", ")}` : "");
      if (ok.length) tailState(`live: ${account}`, "live");
      else if (Object.keys(outcome).length === families.length) tailState("refused", "bad");
      return;
    }
    if (frame.action !== "event" || state.paused) return;
    // The same event through two of the family's shapes (old and new key forms): shown once.
    const seen = (frame.routing_key || "") + JSON.stringify(frame.data);
    if (state.recent.has(seen)) return;
    state.recent.add(seen);
    if (state.recent.size > TAIL_ROWS) state.recent.delete(state.recent.values().next().value);
    const data = frame.data || {};
    // `data` is normalized as Kazoo does it: lower case, `_` for `-`.
    const name = frame.name || data.event_name || "";
    const id = data.call_id || data.conference_id || data.fax_id || data.id || "";
    const tr = row([new Date().toLocaleTimeString(), name, frame.routing_key || "", id],
      ["mono", "", "mono", "mono"]);
    tr.className = "fresh";
    const tail = $("tail");
    tail.insertBefore(tr, tail.firstChild);
    while (tail.childElementCount > TAIL_ROWS) tail.removeChild(tail.lastChild);
  };
  ws.onclose = (e) => {
    tailState(`closed ${e.code}${e.reason ? " " + e.reason : ""}`, "bad");
    state.ws = null;
    // Back after a pause, unless the token was refused for good.
    if (e.code !== 4001 && e.code !== 1008) setTimeout(() => { if (!state.ws) startTail(); }, 3000);
  };
}

// --- wiring ----------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  $("status").textContent = "checking…";
  try {
    const s = (await api("/v2/console/stats")).data;
    sessionStorage.setItem("horizon-token", token);
    $("login").hidden = true;
    $("main").hidden = false;
    // Served straight from the node: its WebSocket port. Through a proxy (the page's port is not
    // the API's): the same origin, where the proxy passes WebSocket upgrades on.
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const direct = (location.port || (location.protocol === "https:" ? "443" : "80")) === String(s.api_port);
    if (!$("ws-url").value) {
      $("ws-url").value = direct ? `${scheme}://${location.hostname}:${s.websocket_port}/` : `${scheme}://${location.host}/`;
    }
    if (!$("account").value) $("account").value = s.you.account_id;
    showStats(s);
    refreshSockets();
    startTail();
    clearInterval(state.timer);
    state.timer = setInterval(() => { refreshStats(); refreshSockets(); }, 2000);
  } catch (e) {
    $("status").textContent = `refused: ${e.message}`;
    sessionStorage.removeItem("horizon-token");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token").value.trim());
  });
  $("refresh").addEventListener("click", () => { refreshSockets(); startTail(); });
  $("account").addEventListener("change", () => { refreshSockets(); startTail(); });
  $("ws-url").addEventListener("change", () => startTail());
  $("tail-toggle").addEventListener("click", () => {
    state.paused = !state.paused;
    $("tail-toggle").textContent = state.paused ? "Resume" : "Pause";
  });
  $("tail-clear").addEventListener("click", () => $("tail").replaceChildren());
  window.addEventListener("resize", () => state.stats && drawChart(state.stats.history, state.stats.sample_every_secs));
  const saved = sessionStorage.getItem("horizon-token");
  if (saved) signIn(saved);
});
