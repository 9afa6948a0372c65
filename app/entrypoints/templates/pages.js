"use strict";
// The job pages are rendered on the server. When reads need a token, the server sends this page
// without data (HTTP 401); the script fetches the same URL again with the tab's token and swaps
// the content in. Operator actions call the API's operator endpoints with the operator token.
const TOKEN_KEY = "jobtrail.token";
const OPERATOR_KEY = "jobtrail.operator";
const ACTOR_KEY = "jobtrail.actor";
const REFRESH_MS = 1000;
const REFRESH_TRIES = 20;
const $ = (id) => document.getElementById(id);
const root = document.body.dataset.root;

function say(text, bad) {
  const out = $("operator-result");
  if (!out) return;
  out.textContent = text;
  out.className = bad ? "problem" : "note";
}
async function refresh() {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(location.href, { headers, cache: "no-store" });
  if (response.status === 401) {
    $("auth").hidden = false;
    $("auth-problem").textContent = token ? "that token is not valid here" : "kept for this tab only";
    return;
  }
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  const content = fresh.getElementById("content");
  if (!content) throw new Error("the page answered HTTP " + response.status + " without content");
  $("content").replaceWith(document.adoptNode(content));
  document.title = fresh.title;
  document.body.dataset.auth = "ok";
  $("auth").hidden = true;
  $("operator-key").hidden = false;
  wire();
}
function showOperator() {
  const on = Boolean(sessionStorage.getItem(OPERATOR_KEY));
  for (const node of document.querySelectorAll("[data-operator]")) node.hidden = !on;
  $("operator-actor").value = sessionStorage.getItem(ACTOR_KEY) || "";
}
async function act(path, body) {
  const response = await fetch(path, {
    method: "POST",
    cache: "no-store",
    headers: { "Authorization": "Bearer " + sessionStorage.getItem(OPERATOR_KEY),
      "Content-Type": "application/json" },
    body: JSON.stringify(Object.assign({ actor: sessionStorage.getItem(ACTOR_KEY) || "" }, body)),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || "HTTP " + response.status);
  return answer;
}
async function untilChanged() {
  const before = $("content").dataset.status;
  for (let i = 0; i < REFRESH_TRIES && $("content").dataset.status === before; i++) {
    await new Promise((done) => setTimeout(done, REFRESH_MS));
    await refresh();
  }
}
function onJobAction(button, body, done) {
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const answer = await act(button.dataset.path, body());
      say(done + " by " + answer.actor + " (event " + answer.event_id + "); waiting for the tracker…");
      await untilChanged();
    } catch (error) {
      say(error.message, true);
      button.disabled = false;
    }
  });
}
function selection(dryRun) {
  const since = $("redrive-since").value.trim(), pool = $("redrive-pool").value.trim();
  const body = { dry_run: dryRun, limit: Number($("redrive-limit").value.trim() || "100") };
  if ($("redrive-reason").value) body.reason = $("redrive-reason").value;
  if (pool) body.pool = pool;
  if (since) body.since = since;
  return body;
}
function listIds(ids) {
  const list = document.createElement("ul");
  list.id = "preview-ids";
  for (const id of ids) {
    const link = document.createElement("a");
    link.href = root + "dashboard/jobs/" + encodeURIComponent(id);
    link.textContent = id;
    list.appendChild(document.createElement("li")).appendChild(link);
  }
  $("preview-ids").replaceWith(list);
}
function wireRedriveForm() {
  const form = $("redrive-form");
  if (!form) return;
  const run = $("redrive-run"), discard = $("redrive-discard");
  const reset = (text) => { run.disabled = true; discard.disabled = true; listIds([]); say(text); };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const answer = await act(root + "redrive", selection(true));
      listIds(answer.job_ids);
      say(answer.job_ids.length + " dead letter(s) would be redriven:");
      run.disabled = answer.job_ids.length === 0;
      discard.disabled = false;
    } catch (error) { reset(""); say(error.message, true); }
  });
  run.addEventListener("click", async () => {
    run.disabled = true;
    try {
      const answer = await act(root + "redrive", selection(false));
      listIds(answer.job_ids);
      say(answer.job_ids.length + " dead letter(s) redriven by " + answer.actor + ":");
    } catch (error) { say(error.message, true); }
  });
  discard.addEventListener("click", () => reset("preview discarded; nothing was sent"));
}
function wire() {
  showOperator();
  const redrive = $("redrive-job"), cancel = $("cancel-job");
  if (redrive) onJobAction(redrive, () => ({}), "redrive recorded");
  if (cancel) onJobAction(cancel, () => ({ reason: $("cancel-reason").value }), "cancel recorded");
  wireRedriveForm();
}
$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  refresh().catch((error) => { $("auth-problem").textContent = error.message; });
});
$("operator-key").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("operator-token").value.trim();
  if (token) sessionStorage.setItem(OPERATOR_KEY, token);
  sessionStorage.setItem(ACTOR_KEY, $("operator-actor").value.trim());
  $("operator-token").value = "";
  showOperator();
});
$("operator-forget").addEventListener("click", () => {
  sessionStorage.removeItem(OPERATOR_KEY);
  showOperator();
});
if (document.body.dataset.auth === "needed" && sessionStorage.getItem(TOKEN_KEY)) {
  refresh().catch((error) => { $("auth-problem").textContent = error.message; });
} else {
  wire();
}
