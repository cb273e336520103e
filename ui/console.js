/*
 * rhema console: reads the API (/v1, /health) with the operator's key and
 * draws what it reads.  Hand-written, no framework, no build step.
 *
 * The key is kept in sessionStorage (this tab only) and sent as
 * "Authorization: Bearer <key>"; with keys off, no key is needed.
 * Everything the server sends is put into the page with textContent,
 * never as HTML.  Fields a later version adds are ignored, fields it
 * lacks show as "-".
 */
"use strict";

(function () {
  const KEY_STORE = "rhema.console.key";
  const REFRESH_MS = 5000;
  const SESSION_PAGES = 5; /* at most 5 x 1000 sessions are counted */
  const COLORS = ["#1f6feb", "#e8590c", "#2f9e44", "#ae3ec9"];

  const $ = (id) => document.getElementById(id);
  const state = {
    history: { t: [], series: {}, max: 720, interval: 10 },
    keyringOn: false,
    authProblem: null,
    charts: [],
    lastSample: null,
  };

  /* ---- DOM helpers: text only ---- */

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "-";
    if (typeof v !== "number") return String(v);
    if (digits === undefined) digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
    return v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  function fmtBytes(b) {
    if (typeof b !== "number") return "-";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return fmt(b, i ? 1 : 0) + " " + u[i];
  }

  function fmtDuration(s) {
    if (typeof s !== "number") return "-";
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }

  function fmtAgo(iso) {
    if (!iso) return "-";
    const t = Date.parse(iso);
    if (isNaN(t)) return String(iso);
    const s = Math.round((Date.now() - t) / 1000);
    if (s < 0) return "just now";
    if (s < 90) return s + "s ago";
    if (s < 5400) return Math.round(s / 60) + "m ago";
    if (s < 172800) return Math.round(s / 3600) + "h ago";
    return new Date(t).toISOString().slice(0, 10);
  }

  function statusClass(s) {
    const v = String(s || "").toLowerCase();
    if (["healthy", "ok", "online", "active", "alive", "ready", "leader", "passing"].includes(v)) return "s-ok";
    if (["degraded", "joining", "leaving", "paused", "pending", "forming", "unknown", "warning"].includes(v)) return "s-warn";
    if (["unhealthy", "offline", "failed", "firing", "critical", "unavailable", "down", "error"].includes(v)) return "s-bad";
    return "s-idle";
  }

  function pill(text) {
    return el("span", "pill " + statusClass(text), text === undefined || text === null ? "-" : text);
  }

  function setBadge(node, text) {
    node.className = "badge " + statusClass(text);
    node.textContent = text === undefined || text === null ? "" : String(text);
  }

  function facts(dl, pairs) {
    clear(dl);
    for (const [k, v] of pairs) {
      dl.appendChild(el("dt", null, k));
      const dd = el("dd");
      if (v instanceof Node) dd.appendChild(v); else dd.textContent = v === undefined || v === null ? "-" : String(v);
      dl.appendChild(dd);
    }
  }

  function fillTable(table, rows, emptyText) {
    const tbody = table.tBodies[0];
    clear(tbody);
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "empty", emptyText);
      td.colSpan = table.tHead.rows[0].cells.length;
      tr.appendChild(td);
      tbody.appendChild(tr);
      return;
    }
    for (const cells of rows) {
      const tr = el("tr");
      for (const c of cells) {
        const td = el("td");
        if (c instanceof Node) td.appendChild(c); else td.textContent = c === undefined || c === null ? "-" : String(c);
        if (!(c instanceof Node)) td.title = td.textContent;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }

  function bars(node, counts, order) {
    clear(node);
    const names = order || Object.keys(counts);
    const max = Math.max(1, ...names.map((n) => counts[n] || 0));
    for (const n of names) {
      const row = el("div", "bar");
      row.appendChild(pill(n));
      const track = el("div", "track");
      const fill = el("div", "fill");
      fill.style.width = ((100 * (counts[n] || 0)) / max).toFixed(1) + "%";
      fill.style.background = statusClass(n) === "s-bad" ? "var(--bad)" : statusClass(n) === "s-warn" ? "var(--warn)" : statusClass(n) === "s-ok" ? "var(--ok)" : "var(--accent)";
      track.appendChild(fill);
      row.appendChild(track);
      row.appendChild(el("span", "n", fmt(counts[n] || 0, 0)));
      node.appendChild(row);
    }
  }

  /* ---- the API ---- */

  function key() {
    try { return sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; }
  }

  /* {ok, status, data}: never throws; data is the parsed JSON (or null). */
  async function api(path) {
    const headers = { Accept: "application/json" };
    const k = key();
    if (k) headers.Authorization = "Bearer " + k;
    let res;
    try {
      res = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    } catch (e) {
      return { ok: false, status: 0, data: null, message: "the server is not reachable" };
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    const message = data && data.error && data.error.message ? data.error.message : res.statusText;
    if (res.status === 401 || res.status === 403) state.authProblem = message;
    return { ok: res.ok, status: res.status, data, message };
  }

  function problem(node, r) {
    clear(node);
    node.appendChild(el("p", "error", r.status ? r.status + ": " + r.message : r.message));
  }

  /* ---- panels ---- */

  async function loadCluster() {
    const r = await api("/v1/cluster");
    const table = $("nodes-table");
    if (!r.ok || !r.data) {
      setBadge($("cluster-status"), r.status ? "error " + r.status : "unreachable");
      facts($("cluster-facts"), [["problem", r.message]]);
      fillTable(table, [], "cannot read the cluster");
      return null;
    }
    const c = r.data;
    setBadge($("cluster-status"), c.status);
    $("node-line").textContent = "node " + (c.node_id || "-") + (c.is_leader ? " (leader)" : "") + " \u00b7 cluster " + (c.cluster || "-");
    facts($("cluster-facts"), [
      ["leader", c.leader ? c.leader + (c.leader_address ? " @ " + c.leader_address : "") : "none"],
      ["epoch", c.epoch],
      ["nodes", fmt(c.online_nodes, 0) + " online / " + fmt(c.total_nodes, 0) + " known" + (c.offline_nodes ? ", " + c.offline_nodes + " offline" : "") + (c.unhealthy_nodes ? ", " + c.unhealthy_nodes + " unhealthy" : "")],
      ["mode", c.enabled ? "distributed" : "single node"],
    ]);
    const nodes = Array.isArray(c.nodes) ? c.nodes : [];
    fillTable(table, nodes.map((n) => {
      const who = el("div");
      who.appendChild(el("div", null, n.node_id + (n.node_id === c.leader ? " \u2605" : "")));
      who.appendChild(el("div", "small", n.address));
      who.title = n.node_id + " at " + n.address;
      return [who, n.role, pill(n.status), fmtAgo(n.last_heartbeat)];
    }), "no live node");
    return c;
  }

  async function loadSessions() {
    const counts = {}, all = [];
    let cursor = null, pages = 0, more = false;
    do {
      const r = await api("/v1/sessions?limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
      if (!r.ok || !r.data) {
        problem($("sessions-bars"), r);
        fillTable($("sessions-table"), [], "cannot list sessions");
        return null;
      }
      for (const s of r.data.items || []) {
        counts[s.status] = (counts[s.status] || 0) + 1;
        all.push(s);
      }
      cursor = r.data.next_cursor;
      pages++;
      more = !!cursor;
    } while (cursor && pages < SESSION_PAGES);
    const order = ["Active", "Paused", "Completed", "Cancelled"].concat(Object.keys(counts).filter((k) => !["Active", "Paused", "Completed", "Cancelled"].includes(k)));
    bars($("sessions-bars"), counts, order);
    $("sessions-total").textContent = (more ? "first " : "") + fmt(all.length, 0) + " session" + (all.length === 1 ? "" : "s");
    all.sort((a, b) => String(b.updated_at || "").localeCompare(String(a.updated_at || "")));
    fillTable($("sessions-table"), all.slice(0, 10).map((s) => [
      s.id, s.topic, pill(s.status), Array.isArray(s.participants) ? s.participants.join(", ") : "-", fmtAgo(s.updated_at),
    ]), "no sessions");
    return all.length;
  }

  async function loadAgents() {
    const r = await api("/v1/agents/stats");
    if (!r.ok || !r.data) { problem($("agents-bars"), r); return; }
    const s = r.data;
    bars($("agents-bars"), s.by_status || {}, s.by_status ? Object.keys(s.by_status) : []);
    $("agents-total").textContent = fmt(s.total_agents, 0) + " agents, " + fmt(s.online_agents, 0) + " online";
  }

  async function loadServices() {
    const r = await api("/v1/services?limit=1000");
    const table = $("services-table");
    if (!r.ok || !r.data) { fillTable(table, [], r.status + ": " + r.message); return; }
    const items = r.data.items || [];
    const healthy = items.filter((s) => s.health_status === "Healthy").length;
    $("services-total").textContent = items.length + " instance" + (items.length === 1 ? "" : "s") + ", " + healthy + " healthy";
    items.sort((a, b) => String(a.name).localeCompare(String(b.name)) || String(a.service_id).localeCompare(String(b.service_id)));
    fillTable(table, items.map((s) => [s.name, s.service_id, s.address, pill(s.health_status), fmtAgo(s.last_health_check)]),
      "no registered services");
  }

  async function loadKeys() {
    const dl = $("keys-facts");
    if (!state.keyringOn) {
      facts(dl, [["key management", "off"]]);
      return;
    }
    const r = await api("/v1/keys/stats");
    if (!r.ok || !r.data) { facts(dl, [["problem", (r.status || "") + " " + r.message]]); return; }
    const k = r.data;
    const pairs = [];
    for (const name of ["current_version", "current_cipher_id", "min_decryption_version", "versions", "active_keys",
      "last_rotation", "next_rotation", "last_backup"]) {
      if (k[name] !== undefined && (typeof k[name] !== "object" || k[name] === null)) pairs.push([name.replace(/_/g, " "), k[name]]);
    }
    if (!pairs.length) for (const [n, v] of Object.entries(k)) if (typeof v !== "object") pairs.push([n.replace(/_/g, " "), v]);
    const last = state.lastSample || {};
    if (typeof last.keyring_messages_current_key === "number") pairs.push(["messages under the current key", fmt(last.keyring_messages_current_key, 0)]);
    facts(dl, pairs.slice(0, 10));
  }

  /* The firing alerts, whatever shape /v1/alerts has: active[], firing[] or alerts[] with a state. */
  function firingAlerts(d) {
    if (!d) return [];
    if (Array.isArray(d.active)) return d.active;
    if (Array.isArray(d.firing)) return d.firing;
    const list = Array.isArray(d.alerts) ? d.alerts : Array.isArray(d.items) ? d.items : Array.isArray(d) ? d : [];
    return list.filter((a) => String(a.state || a.status || "").toLowerCase() === "firing");
  }

  async function loadAlerts() {
    const r = await api("/v1/alerts");
    const ul = $("alerts-list");
    clear(ul);
    if (!r.ok) { ul.appendChild(el("li", "error", (r.status || "") + " " + r.message)); setBadge($("alerts-count"), "?"); return; }
    const firing = firingAlerts(r.data);
    setBadge($("alerts-count"), firing.length ? firing.length + " firing" : "none");
    if (!firing.length) { ul.appendChild(el("li", "none", "Nothing is firing.")); return; }
    for (const a of firing) {
      const li = el("li");
      const labels = a.labels || {};
      const name = a.name || a.alertname || labels.alertname || a.metric || "alert";
      li.appendChild(el("div", "what", name + (a.severity || labels.severity ? " \u00b7 " + (a.severity || labels.severity) : "")));
      const detail = [];
      if (a.value !== undefined) detail.push("value " + fmt(a.value));
      if (a.limit !== undefined) detail.push("limit " + fmt(a.limit));
      else if (typeof a.threshold === "number") detail.push("threshold " + fmt(a.threshold));
      const since = a.raised_at || a.active_at || a.activeAt || a.startsAt || a.since;
      if (since) detail.push("since " + fmtAgo(since));
      const msg = a.message || a.summary || (a.annotations && (a.annotations.summary || a.annotations.description));
      if (msg) detail.push(msg);
      li.appendChild(el("div", "detail", detail.join(" \u00b7 ")));
      ul.appendChild(li);
    }
  }

  async function loadHealth() {
    const r = await api("/health");
    if (!r.data) { setBadge($("health-status"), "unreachable"); facts($("health-facts"), [["problem", r.message]]); return null; }
    const h = r.data;
    setBadge($("health-status"), h.status);
    const pairs = [["version", h.version], ["uptime", fmtDuration(h.uptime_seconds)], ["storage", h.backend ? h.backend + " (" + (h.storage || "-") + ")" : h.storage], ["workers", h.workers]];
    const comps = h.components;
    if (comps && typeof comps === "object") {
      const list = Array.isArray(comps) ? comps : Object.entries(comps).map(([n, c]) => Object.assign({ name: n }, typeof c === "object" ? c : { status: c }));
      for (const c of list) pairs.push([c.name || c.component || "component", pill(c.status)]);
    }
    facts($("health-facts"), pairs);
    $("footer-version").textContent = "rhemad " + (h.version || "");
    return h;
  }

  async function loadStats() {
    const r = await api("/v1/stats");
    return r.ok ? r.data : null;
  }

  function tiles(stats, health, cluster, sessions) {
    const t = $("tiles");
    clear(t);
    const last = state.lastSample || {};
    const items = [
      ["uptime", fmtDuration((health && health.uptime_seconds) || (stats && stats.uptime_seconds))],
      ["requests / s", fmt(last.request_rate)],
      ["p95 latency", last.latency_p95_ms === undefined || last.latency_p95_ms === null ? "-" : fmt(last.latency_p95_ms) + " ms"],
      ["error ratio", last.error_ratio === undefined || last.error_ratio === null ? "-" : fmt(100 * last.error_ratio, 2) + " %"],
      ["in flight", fmt(last.in_flight, 0)],
      ["nodes up", cluster ? fmt(cluster.online_nodes, 0) + " / " + fmt(cluster.total_nodes, 0) : "-"],
      ["sessions", sessions === null || sessions === undefined ? "-" : fmt(sessions, 0)],
      ["entries", stats && stats.storage ? fmt(stats.storage.entries, 0) : "-"],
      ["data", stats && stats.storage ? fmtBytes(stats.storage.bytes) : "-"],
      ["memory", fmtBytes(last.process_resident_bytes)],
    ];
    for (const [k, v] of items) {
      const d = el("div", "tile");
      d.appendChild(el("div", "k", k));
      d.appendChild(el("div", "v", v));
      t.appendChild(d);
    }
  }

  /* ---- history and charts ---- */

  async function loadHistory() {
    const h = state.history;
    const since = h.t.length ? h.t[h.t.length - 1] : 0;
    const r = await api("/v1/stats/history" + (since ? "?since=" + since : ""));
    if (!r.ok || !r.data) {
      $("charts-sub").textContent = r.status === 404 ? "(the history is off: monitoring.enabled)" : "(" + (r.status || "") + " " + r.message + ")";
      return;
    }
    const d = r.data;
    h.max = d.max_samples || h.max;
    h.interval = d.interval_seconds || h.interval;
    const ts = d.timestamps || [];
    for (let i = 0; i < ts.length; i++) {
      h.t.push(ts[i]);
      for (const [name, col] of Object.entries(d.series || {})) {
        if (!h.series[name]) h.series[name] = new Array(h.t.length - 1).fill(null);
        h.series[name].push(col[i] === undefined ? null : col[i]);
      }
      for (const col of Object.values(h.series)) while (col.length < h.t.length) col.push(null);
    }
    const drop = h.t.length - h.max;
    if (drop > 0) {
      h.t.splice(0, drop);
      for (const col of Object.values(h.series)) col.splice(0, drop);
    }
    if (h.t.length) {
      const last = {};
      for (const [name, col] of Object.entries(h.series)) last[name] = col[col.length - 1];
      state.lastSample = last;
      state.keyringOn = last.keyring_current_version !== null && last.keyring_current_version !== undefined;
    }
    $("charts-sub").textContent = "one sample every " + h.interval + " s, " + h.t.length + " kept (" + (d.storage_backend || "memory") + ")";
    for (const c of state.charts) c.draw();
  }

  /* The top of the y axis: four gridline steps of 1, 2, 2.5 or 5 times a power of ten. */
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const step = v / 4, p = Math.pow(10, Math.floor(Math.log10(step)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= step) return 4 * m * p;
    return 40 * p;
  }

  function timeLabel(ms) {
    const d = new Date(ms);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0") + ":" + String(d.getSeconds()).padStart(2, "0");
  }

  function Chart(canvas) {
    this.canvas = canvas;
    this.names = canvas.dataset.series.split(",");
    this.labels = (canvas.dataset.labels || canvas.dataset.series).split(",");
  }

  Chart.prototype.draw = function () {
    const cv = this.canvas, h = state.history;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(200, cv.clientWidth), ht = Math.max(120, cv.clientHeight);
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(ht * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(ht * dpr);
    }
    const g = cv.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, ht);
    const L = 46, R = 10, T = 24, B = 22, pw = w - L - R, ph = ht - T - B;
    let max = 0, points = 0;
    for (const n of this.names) for (const v of h.series[n] || []) if (v !== null && isFinite(v)) { max = Math.max(max, v); points++; }
    const top = niceMax(max);
    const t0 = h.t.length ? h.t[0] : Date.now() - 60000, t1 = h.t.length > 1 ? h.t[h.t.length - 1] : t0 + 60000;
    const x = (t) => L + (pw * (t - t0)) / Math.max(1, t1 - t0);
    const y = (v) => T + ph - (ph * v) / top;

    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    g.strokeStyle = "#e3e8ef";
    g.fillStyle = "#667085";
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4, yy = Math.round(y(v)) + 0.5;
      g.beginPath(); g.moveTo(L, yy); g.lineTo(L + pw, yy); g.stroke();
      g.fillText(fmt(v, top < 0.1 ? 4 : top < 1 ? 3 : top < 10 ? 2 : 0), L - 6, yy);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    if (h.t.length > 1) for (let i = 0; i <= 3; i++) {
      const t = t0 + ((t1 - t0) * i) / 3;
      g.fillText(timeLabel(t), Math.min(Math.max(x(t), L + 24), L + pw - 24), T + ph + 6);
    }

    this.names.forEach((n, k) => {
      const col = h.series[n] || [];
      g.strokeStyle = COLORS[k % COLORS.length];
      g.lineWidth = 1.8;
      g.beginPath();
      let pen = false;
      for (let i = 0; i < col.length; i++) {
        const v = col[i];
        if (v === null || !isFinite(v)) { pen = false; continue; }
        const px = x(h.t[i]), py = y(v);
        if (pen) g.lineTo(px, py); else g.moveTo(px, py);
        pen = true;
      }
      g.stroke();
      /* a lone point between gaps still shows */
      g.fillStyle = COLORS[k % COLORS.length];
      for (let i = 0; i < col.length; i++) {
        const v = col[i], prev = col[i - 1], next = col[i + 1];
        if (v !== null && isFinite(v) && (prev === null || prev === undefined) && (next === null || next === undefined)) {
          g.beginPath(); g.arc(x(h.t[i]), y(v), 2, 0, 2 * Math.PI); g.fill();
        }
      }
      /* legend */
      const lx = L + 4 + k * ((pw - 8) / this.names.length);
      g.fillRect(lx, 8, 10, 3);
      g.fillStyle = "#1b2330";
      g.textAlign = "left";
      g.textBaseline = "middle";
      const last = col.length ? col[col.length - 1] : null;
      g.fillText(this.labels[k] + (last !== null && last !== undefined ? " " + fmt(last) : ""), lx + 14, 10);
    });
    if (!points) {
      g.fillStyle = "#8a94a6";
      g.textAlign = "center";
      g.textBaseline = "middle";
      g.fillText(h.t.length ? "no data in this window yet" : "waiting for the first samples", L + pw / 2, T + ph / 2);
    }
    cv.dataset.points = String(points);
  };

  /* ---- the loop ---- */

  let refreshing = false;
  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    state.authProblem = null;
    try {
      await loadHistory();
      const [cluster, sessions, health, stats] = await Promise.all([loadCluster(), loadSessions(), loadHealth(), loadStats(), loadAgents(), loadServices(), loadAlerts(), loadKeys()]);
      tiles(stats, health, cluster, sessions);
      const dot = $("status-dot"), text = $("status-text");
      if (state.authProblem) {
        dot.className = "dot bad";
        text.textContent = key() ? "key refused" : "API key needed";
        text.title = state.authProblem;
      } else {
        dot.className = "dot ok";
        text.textContent = "updated " + timeLabel(Date.now());
        text.title = "";
      }
    } finally {
      refreshing = false;
    }
  }

  function start() {
    state.charts = Array.from(document.querySelectorAll("canvas[data-series]")).map((c) => new Chart(c));
    const input = $("key-input");
    input.value = key();
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      try { sessionStorage.setItem(KEY_STORE, input.value.trim()); } catch (e) { /* storage off: the key lives until reload */ }
      refresh();
    });
    $("key-forget").addEventListener("click", () => {
      try { sessionStorage.removeItem(KEY_STORE); } catch (e) { /* nothing kept */ }
      input.value = "";
      refresh();
    });
    window.addEventListener("resize", () => { for (const c of state.charts) c.draw(); });
    for (const c of state.charts) c.draw();
    refresh();
    setInterval(refresh, REFRESH_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
