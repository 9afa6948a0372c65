
"use strict";
const POLL_MS = 2000;
const TOKEN_KEY = "jobtrail.token";
const STATUSES = ["queued", "reserved", "cooling_down", "completed", "expired",
  "dead_lettered", "cancelled"];
const OUTCOMES = [["completed", "#1f9d55"], ["failed", "#d64545"], ["expired", "#e08a1e"],
  ["dead_lettered", "#6b2737"]];
const SVG_NS = "http://www.w3.org/2000/svg";
class AuthNeeded extends Error {}

const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}
function fillRows(tbody, rows, columns, emptyText) {
  const fresh = document.createElement("tbody");
  fresh.id = tbody.id;
  if (rows.length === 0) {
    const td = el("td", emptyText, "empty");
    td.colSpan = columns;
    fresh.appendChild(el("tr")).appendChild(td);
  }
  for (const cells of rows) {
    const tr = el("tr");
    for (const [text, cls, href] of cells) {
      const td = tr.appendChild(el("td", href ? undefined : text, cls));
      if (href) td.appendChild(el("a", text)).href = href;
    }
    fresh.appendChild(tr);
  }
  tbody.replaceWith(fresh);
}
async function getJson(path) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new AuthNeeded(path);
  if (!response.ok) throw new Error(path + " answered HTTP " + response.status);
  return response.json();
}
function jobLink(id) { return "dashboard/jobs/" + encodeURIComponent(id); }
function time(iso) { return iso ? iso.replace("T", " ").slice(0, 19) : ""; }
function pct(x) { return x === null || x === undefined ? "—" : (100 * x).toFixed(1) + "%"; }

function renderStatuses(jobs) {
  $("count-total").textContent = jobs.total;
  for (const s of STATUSES) $("count-" + s).textContent = jobs.by_status[s] || 0;
}
function renderRates(attempts) {
  $("completed-per-minute").textContent = attempts.completed_per_minute.toFixed(1);
  $("failure-rate").textContent = pct(attempts.failure_rate);
  $("window").textContent = attempts.minutes;
}
function renderChart(perMinute) {
  const chart = $("throughput");
  const W = 600, H = 180, PAD = 24, n = perMinute.length || 1;
  const totals = perMinute.map((m) => OUTCOMES.reduce((t, [k]) => t + m[k], 0));
  const top = Math.max(1, ...totals);
  const slot = (W - 2 * PAD) / n, bar = Math.max(2, slot * 0.7);
  const fresh = svg("svg", { id: "throughput", viewBox: `0 0 ${W} ${H}`,
    role: "img", "aria-label": "attempts ended per minute" });
  fresh.appendChild(svg("line", { x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD,
    stroke: "#c8ccd3" }));
  const label = svg("text", { x: 2, y: 12, "font-size": 10, fill: "#6b7280" });
  label.textContent = top + "/min";
  fresh.appendChild(label);
  const line = [];
  perMinute.forEach((m, i) => {
    let y = H - PAD;
    const x = PAD + i * slot + (slot - bar) / 2;
    for (const [k, color] of OUTCOMES) {
      const h = (m[k] / top) * (H - 2 * PAD);
      if (h > 0) fresh.appendChild(svg("rect", { x, y: y - h, width: bar, height: h,
        fill: color, "data-outcome": k }));
      y -= h;
    }
    const ended = totals[i];
    if (ended > 0) {
      const rate = (ended - m.completed) / ended;
      line.push(`${x + bar / 2},${PAD + (1 - rate) * (H - 2 * PAD)}`);
    }
    if (i % 5 === 0 || i === n - 1) {
      const t = svg("text", { x, y: H - 8, "font-size": 10, fill: "#6b7280" });
      t.textContent = m.minute.slice(11, 16);
      fresh.appendChild(t);
    }
  });
  if (line.length > 1) fresh.appendChild(svg("polyline", { points: line.join(" "),
    fill: "none", stroke: "#2f6fd6", "stroke-width": 2, id: "failure-line" }));
  chart.replaceWith(fresh);
}
function renderQueues(queues, byQueue) {
  const counts = new Map(byQueue.map((q) => [q.queue, q.by_status]));
  $("queues-unavailable").textContent = queues.available ? "" : queues.message;
  const names = new Set(counts.keys());
  names.delete(null);
  const broker = new Map((queues.items || []).map((q) => [q.name, q]));
  for (const name of broker.keys()) names.add(name);
  const rows = [...names].sort().map((name) => {
    const q = broker.get(name), c = counts.get(name) || {};
    const b = (k) => (q ? q[k] : "—");
    return [[name], [b("ready"), "num"], [b("unacked"), "num"], [b("consumers"), "num"],
      [c.queued || 0, "num"], [c.reserved || 0, "num"], [c.cooling_down || 0, "num"]];
  });
  fillRows($("queue-rows"), rows, 7, "no work queues yet");
}
function renderDeadLetters(dead) {
  const rows = dead.items.map((d) => [[d.job_id, "", jobLink(d.job_id)], [d.reason], [d.error_code || ""],
    [d.detail || "", "msg"], [d.pool || ""], [d.attempt, "num"], [time(d.updated_at)]]);
  fillRows($("dead-rows"), rows, 7, "no dead letters");
}
function renderAnomalies(anomalies) {
  const rows = anomalies.items.map((a) => [[a.job_id, "", jobLink(a.job_id)], [a.status || "unknown"],
    [a.anomalies, "num"], [a.attempt, "num"], [a.pool || ""], [time(a.updated_at)]]);
  fillRows($("anomaly-rows"), rows, 6, "no anomalies among the jobs scanned");
  $("anomaly-window").textContent = anomalies.scanned;
}
function seconds(x) { return x === null || x === undefined ? "—" : String(x); }
function renderLatency(latency) {
  const rows = latency.groups.map((g) => {
    const over = Object.values(g.wait.breaches).concat(Object.values(g.run.breaches),
      Object.values(g.end_to_end.breaches)).reduce((a, b) => a + b, 0);
    return [[g.pool], [g.priority], [g.wait.count, "num"],
      [`${seconds(g.wait.p50)} / ${seconds(g.wait.p95)} / ${seconds(g.wait.p99)}`, "num"],
      [seconds(g.run.p95), "num"], [seconds(g.end_to_end.p95), "num"],
      [over, over ? "num bad" : "num"]];
  });
  fillRows($("latency-rows"), rows, 7, "no attempt reserved or ended in the window");
  $("latency-window").textContent = latency.minutes;
  $("starved").textContent = latency.starved.length === 0 ? "No tenant starved." :
    "Starved: " + latency.starved.map((s) => `${s.tenant} in ${s.pool} (wait p95 ` +
      `${s.wait_p95} s, others ${s.others_wait_p95} s)`).join("; ");
}
function render(stats, data) {
  renderStatuses(stats.jobs);
  renderRates(stats.attempts);
  renderChart(stats.attempts.per_minute);
  renderQueues(data.queues, stats.jobs.by_queue);
  renderDeadLetters(data.dead_letters);
  renderAnomalies(data.anomalies);
  renderLatency(data.latency);
  const health = $("health");
  health.textContent = stats.health.status;
  health.className = "badge " + stats.health.status;
  health.title = stats.health.reason || "";
  $("updated").textContent = new Date().toLocaleTimeString();
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}
function showError(message) {
  $("error").textContent = message;
  $("error").style.display = message ? "block" : "none";
}
async function poll() {
  try {
    const [stats, data] = await Promise.all([getJson("stats?minutes=15"),
      getJson("dashboard/data")]);
    render(stats, data);
    showError("");
    $("auth").style.display = "none";
  } catch (error) {
    if (error instanceof AuthNeeded) {
      $("auth").style.display = "flex";
      showError("");
    } else {
      showError("Update failed: " + error.message + " (retrying)");
    }
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
});
poll();
