"""The operators' dashboard page: one self-contained HTML document (inline CSS, JS and SVG).

It loads nothing from elsewhere. Every 2 s it reads ``stats`` and ``dashboard/data`` (relative
URLs, so it works behind a path prefix) and updates in place; producer-supplied text (job ids,
error messages) is only ever set as ``textContent``, never parsed as HTML.
"""

from __future__ import annotations

from app.domain.state import JobStatus

STYLE = """
:root { --bg: #f5f6f8; --card: #fff; --ink: #1d2330; --mute: #6b7280; --line: #e3e6eb;
  --ok: #1f9d55; --bad: #d64545; --warn: #e08a1e; --dead: #6b2737; --info: #2f6fd6; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
  background: var(--bg); color: var(--ink); }
header { display: flex; align-items: center; gap: 16px; padding: 12px 20px;
  background: #1d2330; color: #fff; }
header h1 { font-size: 18px; margin: 0; }
header .meta { margin-left: auto; color: #c9ced8; font-size: 12px; }
.badge { padding: 2px 8px; border-radius: 10px; font-size: 12px; background: var(--mute); }
.badge.ok { background: var(--ok); } .badge.degraded { background: var(--bad); }
main { padding: 16px 20px; display: grid; gap: 16px;
  grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 16px; min-width: 0; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .05em; color: var(--mute);
  margin: 0 0 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { flex: 1 1 110px; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.card .n { display: block; font-size: 24px; font-weight: 600; }
.card .l { color: var(--mute); font-size: 12px; }
.card.completed .n { color: var(--ok); } .card.dead_lettered .n { color: var(--dead); }
.card.expired .n { color: var(--warn); } .card.cooling_down .n { color: var(--info); }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { color: var(--mute); font-weight: 500; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.msg { color: var(--mute); max-width: 360px; overflow-wrap: anywhere; }
.rates { display: flex; gap: 24px; margin-bottom: 8px; }
.rates b { font-size: 20px; }
.legend { display: flex; gap: 14px; font-size: 12px; color: var(--mute); margin-top: 4px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
.empty, .note { color: var(--mute); font-style: italic; }
#error { display: none; background: #fdecec; color: var(--bad); padding: 8px 20px; }
#auth { display: none; background: #fff7e6; padding: 10px 20px; gap: 8px; align-items: center; }
#auth input { width: 320px; padding: 4px 6px; }
svg { width: 100%; height: 180px; display: block; }
"""

SCRIPT = """
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
    for (const [text, cls] of cells) tr.appendChild(el("td", text, cls));
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
  const rows = dead.items.map((d) => [[d.job_id], [d.reason], [d.error_code || ""],
    [d.detail || "", "msg"], [d.pool || ""], [d.attempt, "num"], [time(d.updated_at)]]);
  fillRows($("dead-rows"), rows, 7, "no dead letters");
}
function renderAnomalies(anomalies) {
  const rows = anomalies.items.map((a) => [[a.job_id], [a.status || "unknown"],
    [a.anomalies, "num"], [a.attempt, "num"], [a.pool || ""], [time(a.updated_at)]]);
  fillRows($("anomaly-rows"), rows, 6, "no anomalies among the jobs scanned");
  $("anomaly-window").textContent = anomalies.scanned;
}
function render(stats, data) {
  renderStatuses(stats.jobs);
  renderRates(stats.attempts);
  renderChart(stats.attempts.per_minute);
  renderQueues(data.queues, stats.jobs.by_queue);
  renderDeadLetters(data.dead_letters);
  renderAnomalies(data.anomalies);
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
"""

CARD_KEYS = ("total", *(status.value for status in JobStatus))
_CARDS = "\n".join(
    f'<div class="card {s}"><span class="n" id="count-{s}">–</span>'
    f'<span class="l">{s.replace("_", " ")}</span></div>'
    for s in CARD_KEYS
)
_LEGEND = "".join(
    f'<span><i class="sw-{k}"></i>{k.replace("_", " ")}</span>'
    for k in ("completed", "failed", "expired", "dead_lettered")
)
LEGEND_STYLE = "".join(
    f".sw-{k} {{ background: {c}; }}"
    for k, c in (
        ("completed", "#1f9d55"),
        ("failed", "#d64545"),
        ("expired", "#e08a1e"),
        ("dead_lettered", "#6b2737"),
    )
)

BODY = f"""
<header><h1>Jobtrail</h1><span id="health" class="badge">…</span>
<span class="meta">updated <span id="updated">never</span> · refreshes every 2 s</span></header>
<div id="error" role="alert"></div>
<form id="auth"><span>This API needs a read token:</span>
<input id="token" type="password" autocomplete="off" placeholder="read token">
<button type="submit">Use token</button><span class="note">kept for this tab only</span></form>
<main>
<section class="wide"><h2>Jobs by status</h2><div class="cards">{_CARDS}</div></section>
<section><h2>Throughput and failures (last <span id="window">15</span> minutes)</h2>
<div class="rates"><span><b id="completed-per-minute">–</b> completed / min</span>
<span><b id="failure-rate">–</b> of ended attempts failed</span></div>
<svg id="throughput" viewBox="0 0 600 180"></svg>
<div class="legend">{_LEGEND}<span><i class="sw-line"></i>failure rate</span></div></section>
<section><h2>Queue health</h2><p id="queues-unavailable" class="note"></p>
<table><thead><tr><th>work queue</th><th class="num">ready</th><th class="num">unacked</th>
<th class="num">consumers</th><th class="num">queued</th><th class="num">reserved</th>
<th class="num">cooling</th></tr></thead><tbody id="queue-rows"></tbody></table>
<p class="note">ready / unacked / consumers: RabbitMQ; queued / reserved / cooling: Jobtrail.</p>
</section>
<section class="wide"><h2>Dead letters (newest first)</h2>
<table><thead><tr><th>job</th><th>reason</th><th>error</th><th>detail</th><th>pool</th>
<th class="num">attempt</th><th>when (UTC)</th></tr></thead><tbody id="dead-rows"></tbody>
</table></section>
<section class="wide"><h2>Anomalies</h2>
<p class="note">Jobs whose history holds events that made no sense when they arrived, among the
<span id="anomaly-window">–</span> most recently changed jobs.</p>
<table><thead><tr><th>job</th><th>status</th><th class="num">anomalies</th>
<th class="num">attempt</th><th>pool</th><th>updated (UTC)</th></tr></thead>
<tbody id="anomaly-rows"></tbody></table></section>
</main>
"""

STYLE_ALL = STYLE + LEGEND_STYLE + ".sw-line { background: #2f6fd6; height: 3px !important; }\n"


def page_html() -> str:
    """The whole page, to be served with a CSP that admits exactly its style and script."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>Jobtrail dashboard</title>\n"
        f"<style>{STYLE_ALL}</style></head>\n<body>{BODY}<script>{SCRIPT}</script></body></html>\n"
    )
