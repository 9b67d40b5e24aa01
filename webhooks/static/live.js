// Sesame's pages, live: a session's log and state follow its event stream (SSE); the sessions list
// follows the rows it shows and the counts (SSE from /sessions/live). Without JavaScript the pages work the same, by reloading.
"use strict";

const FINAL = ["completed", "error", "stopped"];
const STEP_LABELS = {workspace: "Workspace ready", agent: "Agent running", commit: "Commit", pr: "Pull request"};

function lineText(kind, d) {
  switch (kind) {
    case "agent_stderr": return d.line || "";
    case "step": return (STEP_LABELS[d.step] || d.step) + ": " + d.status + (d.detail ? " (" + d.detail + ")" : "");
    case "status": return "Session " + d.state + (d.error ? ": " + d.error : "");
    case "commit": return "Committed " + String(d.sha || "").slice(0, 12) + ": " + (d.message || "");
    case "push": return "Pushed " + d.branch + " at " + String(d.sha || "").slice(0, 12);
    case "pull_request": return "Pull request #" + d.number + ": " + d.url;
    case "warning": return d.message || "";
    case "agent_failure": return "Agent failed (" + d.cause + (d.status ? ", HTTP " + d.status : "") + ")";
    case "violation": return "Blocked " + d.kind + " " + d.operation + " " + d.resource + " \u00d7" + (d.count || 1);
    case "cleanup": return d.kept ? "Workspace kept" : "Workspace removed";
    default: return d.summary || d.message || JSON.stringify(d);
  }
}

function followSession(body) {
  const id = body.dataset.session;
  const log = document.getElementById("log");
  const state = document.getElementById("state");
  const hint = document.getElementById("live-hint");
  if (hint) hint.textContent = "Following live.";
  const source = new EventSource("/api/session/" + encodeURIComponent(id) + "/events?after=" + body.dataset.after);
  let ended = false;
  const show = (kind, event) => {
    const payload = JSON.parse(event.data);
    const d = payload.data || {};
    const li = document.createElement("li");
    li.className = (kind === "error" || kind === "agent_failure" || (kind === "status" && d.error)) ? "error" : kind;
    const time = document.createElement("time");
    time.textContent = String(payload.at || "").slice(11, 19);
    const label = document.createElement("span");
    label.className = "kind";
    label.textContent = kind;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = lineText(kind, d);  // text, never markup: agent output stays inert
    li.append(time, " ", label, " ", text);
    log.append(li);
    log.scrollTop = log.scrollHeight;
    if (kind === "status" && d.state) {
      state.textContent = d.state;
      state.className = "state " + d.state;
      if (FINAL.includes(d.state)) ended = true;
    }
    if (kind === "violation") {
      const count = document.getElementById("vcount");
      count.textContent = String(Number(count.textContent) + (d.count || 1));
    }
  };
  for (const kind of ["status", "step", "message", "tool_call", "file_edit", "error", "result", "usage", "raw",
                      "agent_stderr", "commit", "push", "pull_request", "warning", "agent_failure", "violation",
                      "cleanup"]) {
    source.addEventListener(kind, (event) => show(kind, event));
  }
  source.addEventListener("end", () => {
    source.close();
    // the page's controls, steps and links change when the session ends: show them as the server renders them
    if (ended || !FINAL.includes(body.dataset.state)) window.location.reload();
  });
}

function followList() {
  // one event stream for the rows shown: their state, violations, cost and duration, and the counts by state
  const rows = new Map(Array.from(document.querySelectorAll("tr[data-session]")).map((r) => [r.dataset.session, r]));
  // the server-rendered query: the rows' ids and, on the first page, the newest row and the filters
  const banner = document.getElementById("new-sessions");
  const source = new EventSource("/sessions/live?" + banner.dataset.live);
  source.addEventListener("session", (event) => {
    const facts = JSON.parse(event.data);
    const row = rows.get(facts.id);
    if (!row) return;
    const badge = row.querySelector("[data-state]");
    badge.textContent = facts.state;
    badge.className = "state " + facts.state;
    row.querySelector("[data-violations]").textContent = String(facts.violations);
    row.querySelector("[data-cost]").textContent = facts.cost;
    row.querySelector("[data-duration]").textContent = facts.duration;
  });
  source.addEventListener("counts", (event) => {
    const counts = JSON.parse(event.data);
    for (const cell of document.querySelectorAll("[data-count]")) {
      cell.textContent = String(counts[cell.dataset.count] || 0);
    }
  });
  source.addEventListener("new", (event) => {
    // sessions created since the page was rendered (matching its filters): a link to the list with them
    const fresh = JSON.parse(event.data);
    const link = document.getElementById("new-link");
    link.textContent = fresh.count + (fresh.more ? "+" : "") + (fresh.count === 1 && !fresh.more
      ? " new session" : " new sessions") + ": show";
    banner.hidden = fresh.count === 0;
  });
  // the stream stays open while rows end (counts and new sessions still change); when the server ends it
  // (after a while) EventSource opens a new one by itself
  document.body.dataset.live = "on";
}

function narrowModels() {
  // the session form: only the chosen agent's models are offered (the server refuses another agent's model)
  const select = document.getElementById("model");
  const apply = () => {
    const chosen = document.querySelector('input[name="agent"]:checked');
    const agent = chosen ? chosen.value : "";
    for (const group of select.querySelectorAll("optgroup[data-agent]")) {
      const mine = group.dataset.agent === agent;
      group.hidden = !mine;
      group.disabled = !mine;
    }
    const picked = select.selectedOptions[0];
    if (picked && picked.parentElement.disabled) select.value = "";  // another agent's model: back to the default
  };
  for (const radio of document.querySelectorAll('input[name="agent"]')) radio.addEventListener("change", apply);
  apply();
  select.dataset.narrowed = "on";
}

document.addEventListener("DOMContentLoaded", () => {
  const body = document.body;
  if (body.dataset.page === "session" && !FINAL.includes(body.dataset.state)) followSession(body);
  if (body.dataset.page === "list") followList();
  if (document.getElementById("model") && document.getElementById("agents")) narrowModels();
});
