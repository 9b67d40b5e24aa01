// Sesame's pages, live: a session's log and state follow its event stream (SSE); the sessions list
// refreshes the states of the rows it shows. Without JavaScript the pages work the same, by reloading.
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

function refreshList() {
  const rows = document.querySelectorAll("tr[data-session]");
  const live = Array.from(rows).filter((row) => !FINAL.includes(row.querySelector("[data-state]").textContent));
  if (!live.length) return;
  setTimeout(async () => {
    for (const row of live) {
      const answer = await fetch("/api/session/" + encodeURIComponent(row.dataset.session), {credentials: "same-origin"});
      if (!answer.ok) continue;
      const session = await answer.json();
      const badge = row.querySelector("[data-state]");
      badge.textContent = session.state;
      badge.className = "state " + session.state;
    }
    refreshList();
  }, 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  const body = document.body;
  if (body.dataset.page === "session" && !FINAL.includes(body.dataset.state)) followSession(body);
  if (body.dataset.page === "list") refreshList();
});
