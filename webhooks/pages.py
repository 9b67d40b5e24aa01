"""The session page: status, live log, violations and links."""

from __future__ import annotations

import html
from string import Template

from aiohttp import web

from bot.progress import usage_line
from bot.reporting import session_progress
from webhooks.app import SERVICES

PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sesame · $title</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.5 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#1f2328}
.state{display:inline-block;padding:0 .6em;border-radius:1em;background:#eee}
.state.completed{background:#dafbe1}.state.error{background:#ffebe9}.state.processing{background:#fff8c5}
pre{background:#f6f8fa;padding:1em;overflow:auto;max-height:60vh;white-space:pre-wrap}
.warning{background:#fff8c5;padding:.5em 1em;border-left:4px solid #d4a72c}
.error{background:#ffebe9;padding:.5em 1em;border-left:4px solid #cf222e}
table{border-collapse:collapse}td{padding:.2em .8em .2em 0}
</style></head><body>
<h1>$title</h1>
<p><span class="state $state" id="state">$state</span> · $agent on <code>$repo</code>
$branch $pr</p>
$error
$warning
$usage
<h2>Violations (<span id="vcount">$violation_count</span>)</h2>
<table id="violations">$violations</table>
<h2>Log</h2>
<pre id="log"></pre>
<script>
const log = document.getElementById("log");
const source = new EventSource("/api/session/$id/events");
source.onmessage = () => {};
function show(kind, data) {
  const d = data.data || {};
  const text = d.summary || d.line || d.message || JSON.stringify(d);
  log.textContent += "[" + kind + "] " + text + "\\n";
  log.scrollTop = log.scrollHeight;
  if (kind === "status" && d.state) {
    const s = document.getElementById("state"); s.textContent = d.state; s.className = "state " + d.state; }
  if (kind === "status" && d.error && !document.getElementById("error")) {
    const p = document.createElement("p"); p.id = "error"; p.className = "error"; p.textContent = d.error;
    document.getElementById("log").before(p); }
  if (kind === "violation") {
    const c = document.getElementById("vcount"); c.textContent = +c.textContent + (d.count || 1);
    const row = document.getElementById("violations").insertRow(); row.insertCell().textContent = d.kind;
    row.insertCell().textContent = d.resource; row.insertCell().textContent = d.operation;
    row.insertCell().textContent = "x" + (d.count || 1); }
}
for (const kind of ["status","step","message","tool_call","file_edit","error","result","raw","agent_stderr",
                    "commit","push","pull_request","warning","agent_failure","cleanup"]) {
  source.addEventListener(kind, (e) => show(kind, JSON.parse(e.data)));
}
source.addEventListener("violation", (e) => show("violation", JSON.parse(e.data)));
source.addEventListener("end", () => source.close());
</script></body></html>
""")


async def session_page(request: web.Request) -> web.Response:
    """Render a session; the log follows live over SSE (past violations are in the table)."""
    services = request.app[SERVICES]
    row = await services.sessions.get(request.match_info["id"])
    if row is None:
        raise web.HTTPNotFound(text="no such session\n")
    esc = html.escape
    pr = f'· <a href="{esc(row.pr_url)}">#{row.pr_number}</a>' if row.pr_url else ""
    branch = f"· branch <code>{esc(row.branch)}</code>" if row.branch else ""
    warning = f'<p class="warning">{esc(row.warning)}</p>' if row.warning else ""
    error = f'<p class="error" id="error">{esc(row.error)}</p>' if row.error else ""
    usage = usage_line(session_progress(services, row, row.state))
    usage = f'<p class="usage" id="usage">{esc(usage)}</p>' if usage else ""
    body = PAGE.substitute(
        id=esc(row.id), title=esc(row.title or row.prompt[:80]), state=esc(row.state), agent=esc(row.agent),
        repo=esc(row.repo), branch=branch, pr=pr, error=error, warning=warning, usage=usage, violation_count=0,
        violations="")
    return web.Response(text=body, content_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline' "
                                 "'self'; style-src 'unsafe-inline'"})


def setup(app: web.Application) -> None:
    app.router.add_get("/sessions/{id}", session_page)
