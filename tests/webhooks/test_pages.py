"""The web pages on the real app and its own SQLite database: the sessions list (filters, pagination, counts),
a session's page (prompt, steps, log, links, usage, violations, error), its forms (Stop, follow-up, Delete,
each refused without the CSRF token), escaping of hostile text, the 404 page and AUTH_PASSWORD."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.models import State
from bot.services import Services
from bot.sessions import NewSession
from tests.test_api import RecordingQueue
from webhooks.app import QUEUE

HOSTILE = '<script>alert("x")</script>\x1b]8;;http://evil.invalid\x07click\x1b]8;;\x07 & <img src=x onerror=alert(1)>'


@pytest.fixture
async def services(settings_for: Any) -> AsyncIterator[Services]:
    """Services on a SQLite database in the test's own data directory."""
    svc = await open_services(settings_for(BASE_URL="http://127.0.0.1:1"), auto_migrate=True)
    yield svc
    await svc.close()


@pytest.fixture
async def web(services: Services, aiohttp_client: Any) -> Any:
    client = await aiohttp_client(build_web_app(services, RecordingQueue()))
    client.services = services
    return client


async def make(services: Services, prompt: str = "fix the flaky test", **extra: Any) -> str:
    fields: dict[str, Any] = {"trigger_key": f"t:{uuid.uuid4()}", "prompt": prompt,
                              "agent": "command", "repo": "octo/hello", "source": "api"} | extra
    row, created = await services.sessions.create(NewSession(**fields))
    assert created
    return row.id


async def page(web: Any, path: str, status: int = 200) -> str:
    response = await web.get(path)
    text: str = await response.text()
    assert response.status == status, text
    return text


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def test_the_list_shows_sessions_newest_first_with_their_facts(web: Any, services: Services) -> None:
    old = await make(services, "the older one", requested_by="alice", source="cli", repo="/srv/repo")
    new = await make(services, "the newer one", agent="claude")
    await services.sessions.claim(new, "test")
    await services.sessions.record_usage(new, 1000, 200, 1.25)
    await services.sessions.add_violation(new, "network", "evil.invalid:443", "connect", "not allowed")
    for path in ("/", "/sessions"):
        html = await page(web, path)
        assert html.index("the newer one") < html.index("the older one")
    assert f'href="/sessions/{old}"' in html and f'href="/sessions/{new}"' in html
    row = html[html.index(f'data-session="{new}"'):]
    row = row[: row.index("</tr>")]
    assert "processing" in row and "Claude Code" in row and "octo/hello" in row and "API" in row
    assert "$1.25" in row and '<td class="num" data-violations>1</td>' in row and re.search(r"\d+\.\ds</td>", row)
    older = html[html.index(f'data-session="{old}"'):]
    assert "CLI" in older[: older.index("</tr>")] and "alice" in older[: older.index("</tr>")]
    counts = html[html.index('id="counts"'): html.index("</ul>")]
    assert 'data-count="pending">1<' in counts and 'data-count="processing">1<' in counts and "all <b>2</b>" in counts
    assert "Content-Security-Policy" in (await web.get("/sessions")).headers
    assert "unsafe-inline" not in (await web.get("/sessions")).headers["Content-Security-Policy"]


async def test_list_filters_narrow_and_bad_ones_are_a_400_saying_what_is_valid(web: Any, services: Services) -> None:
    a = await make(services, "alpha", repo="octo/a", agent="claude", source="github")
    b = await make(services, "bravo", repo="octo/b", agent="codex", source="slack")
    await services.sessions.request_stop(b)
    cases = {"?state=stopped": b, "?repo=octo/a": a, "?agent=codex": b, "?source=github": a,
             "?state=pending&repo=octo/a&agent=claude&source=github": a, "?agent=Claude": a}
    for query, only in cases.items():
        html = await page(web, "/sessions" + query)
        other = b if only == a else a
        assert f'data-session="{only}"' in html and f'data-session="{other}"' not in html, query
    html = await page(web, "/sessions?state=&repo=&agent=&source=")  # the form's "any"
    assert f'data-session="{a}"' in html and f'data-session="{b}"' in html
    assert "match these filters" in await page(web, "/sessions?state=error")
    bad = {"?state=bogus": "pending, processing, completed, error, stopped", "?agent=gpt": "claude",
           "?source=email": "github, slack, api, cli", "?repo=octo/zzz": "octo/a, octo/b",
           "?colour=red": "state, repo, agent, source", "?cursor=nonsense": "cursor", "?limit=0": "1 to 200"}
    for query, needle in bad.items():
        response = await web.get("/sessions" + query)
        html = await response.text()
        assert response.status == 400 and response.content_type == "text/html", query
        assert needle in html, (query, html)


async def test_pagination_follows_older_links_to_the_end(web: Any, services: Services) -> None:
    made = [await make(services, f"session number {n:02d}") for n in range(7)]
    seen: list[str] = []
    path: str | None = "/sessions?limit=3"
    pages = 0
    while path:
        html = await page(web, path)
        seen += re.findall(r'<tr data-session="([^"]+)"', html)
        match = re.search(r'<a href="([^"]+)" rel="next"', html)
        path = "/sessions" + match.group(1).replace("&amp;", "&") if match else None
        pages += 1
    assert seen == made[::-1] and pages == 3
    first = await page(web, "/sessions?limit=3&agent=command")
    link = re.search(r'<a href="([^"]+)" rel="next"', first)
    assert link and "agent=command" in link.group(1)  # the filters carry over to the next page


async def test_a_session_page_shows_prompt_steps_log_links_usage_violations_and_error(
        web: Any, services: Services) -> None:
    sid = await make(services, "add a greeting\nto hello.py", title="Greeting", model="m-1", base_branch="main",
                     branch="sesame/greet", requested_by="bob")
    await services.sessions.claim(sid, "test")
    events: list[tuple[str, dict[str, Any]]] = [
        ("step", {"step": "workspace", "status": "running", "detail": None}),
        ("step", {"step": "workspace", "status": "done", "detail": None}),
        ("step", {"step": "agent", "status": "running", "detail": None}),
        ("message", {"summary": "I will add the greeting"}),
        ("tool_call", {"summary": "Bash: ls -la", "tool": "Bash"}),
        ("file_edit", {"summary": "hello.py"}),
        ("agent_stderr", {"line": "\x1b[31mwarning: colour\x1b[0m"}),
        ("error", {"summary": "the tool failed"}),
        ("step", {"step": "agent", "status": "done", "detail": None}),
        ("commit", {"sha": "a" * 40, "message": "Add a greeting", "author": "s@x"}),
        ("pull_request", {"number": 7, "url": "https://github.com/octo/hello/pull/7", "created": True}),
    ]
    await services.sessions.add_events(sid, events)
    await services.sessions.add_violation(sid, "network", "evil.invalid:443", "connect", "not on the allow list")
    await services.sessions.record_commit(sid, "a" * 40)
    await services.sessions.record_pull_request(sid, 7, "https://github.com/octo/hello/pull/7")
    await services.sessions.record_usage(sid, 12345, 678, 0.42)
    await services.sessions.finish(sid, State.ERROR, "Claude Code's key was refused (401): set a valid key.")
    html = await page(web, f"/sessions/{sid}")
    assert "<h1 id=\"title\">Greeting</h1>" in html
    assert '<pre class="prompt" id="prompt">add a greeting\nto hello.py</pre>' in html
    assert re.search(r'data-step="workspace"><span class="mark">✓</span>\s*Workspace ready <span class="step-status">'
                     r'done</span>\s*<span class="took">\d+\.\ds</span>', html)
    assert re.search(r'data-step="pr"><span class="mark">○</span>\s*Pull request <span class="step-status">pending', html)
    ended = await make(services, "ended while its agent ran")
    await services.sessions.claim(ended, "test")
    await services.sessions.add_event(ended, "step", {"step": "agent", "status": "running", "detail": None})
    await services.sessions.finish(ended, State.ERROR, "it broke")
    assert re.search(r'data-step="agent"><span class="mark">✗</span>\s*Agent running <span class="step-status">failed',
                     await page(web, f"/sessions/{ended}"))
    log = html[html.index('id="log"'):]
    for line in ("I will add the greeting", "Bash: ls -la", "hello.py", "warning: colour",
                 f"Committed {'a' * 12}: Add a greeting", "Pull request #7 opened: https://github.com/octo/hello/pull/7",
                 "Blocked network connect evil.invalid:443 ×1", "Session error: Claude Code"):
        assert line in log, line
    assert '<li class="error" data-seq' in log and "\x1b" not in html and '{"summary"' not in log
    assert 'href="https://github.com/octo/hello/pull/7" id="pr"' in html
    assert f'href="https://github.com/octo/hello/commit/{"a" * 40}"' in html
    assert 'href="https://github.com/octo/hello/tree/sesame/greet"' in html
    assert '<p class="error" id="error">Claude Code&#39;s key was refused (401): set a valid key.</p>' in html
    assert "Usage: 12,345 tokens in, 678 out · $0.42" in html
    assert "<td>network</td><td><code>evil.invalid:443</code></td><td>connect</td><td>not on the allow list</td>" in html
    assert "Started" in html and "Finished" in html and "Duration" in html and "requested by bob" in html
    # ended: Delete and follow-up, no Stop
    assert 'id="delete-form"' in html and 'id="follow-up-form"' in html and 'id="stop-form"' not in html


async def test_hostile_text_is_escaped_and_freed_of_terminal_controls(web: Any, services: Services) -> None:
    sid = await make(services, HOSTILE, repo="octo/<b>repo</b>", requested_by="<i>eve</i>")
    await services.sessions.add_events(sid, [("message", {"summary": HOSTILE}), ("file_edit", {"summary": HOSTILE})])
    await services.sessions.add_violation(sid, "file", "/etc/<script>", "write", HOSTILE)
    for path in (f"/sessions/{sid}", "/sessions"):
        html = await page(web, path)
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>repo" not in html
        assert "<i>eve" not in html and "\x1b" not in html and "\x07" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/live.js" defer>']


async def test_stop_follow_up_and_delete_forms_do_what_they_say(web: Any, services: Services) -> None:
    sid = await make(services, "long job")
    await services.sessions.claim(sid, "test")
    html = await page(web, f"/sessions/{sid}")
    assert 'id="stop-form"' in html and 'id="delete-form"' not in html and 'id="follow-up-form"' in html
    token = csrf_of(html)
    stopped = await web.post(f"/sessions/{sid}/stop", data={"csrf": token}, allow_redirects=False)
    assert stopped.status == 303 and stopped.headers["Location"] == f"/sessions/{sid}?done=stopped"
    row = await services.sessions.get(sid)
    assert row is not None and row.stop_requested
    assert "Stop requested." in await page(web, stopped.headers["Location"])
    # a follow-up while it runs waits for it; the same form sent twice starts one
    key = re.search(r'name="key" value="([^"]+)"', html)
    assert key
    form = {"csrf": token, "key": key.group(1), "message": "now add <b>tests</b>"}
    sent = await web.post(f"/sessions/{sid}/follow-up", data=form, allow_redirects=False)
    again = await web.post(f"/sessions/{sid}/follow-up", data=form, allow_redirects=False)
    assert sent.status == again.status == 303 and sent.headers["Location"] == again.headers["Location"]
    child_id = sent.headers["Location"].split("/")[2].split("?")[0]
    child = await services.sessions.get(child_id)
    assert child is not None and child.parent_id == sid and child.prompt == "now add <b>tests</b>"
    assert web.app[QUEUE].ids == [child_id]
    child_page = await page(web, sent.headers["Location"])
    assert "Follow-up queued" in child_page and f'href="/sessions/{sid}"' in child_page
    empty = await web.post(f"/sessions/{sid}/follow-up", data={"csrf": token, "message": " "})
    assert empty.status == 400 and "follow-up message" in await empty.text()
    # running: no delete
    refused = await web.post(f"/sessions/{sid}/delete", data={"csrf": token})
    assert refused.status == 409 and "stop it first" in await refused.text()
    await services.sessions.finish(sid, State.STOPPED)
    await services.sessions.request_stop(child_id)  # the follow-up ends too, so both can go
    in_use = await web.post(f"/sessions/{sid}/delete", data={"csrf": token})
    assert in_use.status == 409 and "delete them first" in await in_use.text()
    gone = await web.post(f"/sessions/{child_id}/delete", data={"csrf": token}, allow_redirects=False)
    assert gone.status == 303 and await services.sessions.get(child_id) is None
    assert "Session deleted." in await page(web, gone.headers["Location"])
    await page(web, f"/sessions/{child_id}", status=404)


async def test_forms_without_the_token_or_from_another_site_are_refused(web: Any, services: Services) -> None:
    sid = await make(services, "keep running")
    await services.sessions.claim(sid, "test")
    token = csrf_of(await page(web, f"/sessions/{sid}"))
    attempts = [({}, {}), ({"csrf": "x" * 43}, {}),
                ({"csrf": token}, {"Origin": "https://evil.invalid"}),
                ({"csrf": token}, {"Sec-Fetch-Site": "cross-site"})]
    for data, headers in attempts:
        response = await web.post(f"/sessions/{sid}/stop", data=data, headers=headers, allow_redirects=False)
        assert response.status == 403 and "token" in await response.text(), (data, headers)
    row = await services.sessions.get(sid)
    assert row is not None and not row.stop_requested and row.state == "processing"
    # a client with no cookie (a cross-site form: the cookie is SameSite=Strict) is refused even with a token
    web.session.cookie_jar.clear()
    response = await web.post(f"/sessions/{sid}/stop", data={"csrf": token}, allow_redirects=False)
    assert response.status == 403


async def test_a_form_that_is_not_text_is_a_400_page(web: Any, services: Services) -> None:
    """A form body of bytes that are not UTF-8, in a charset nobody knows, or multipart without its boundary, is an
    HTML 400 saying so (it was a 500), and changes nothing."""
    sid = await make(services, "keep running")
    await services.sessions.claim(sid, "test")
    token = csrf_of(await page(web, f"/sessions/{sid}"))
    part = b'--xx\r\nContent-Disposition: form-data; name="csrf"\r\n%s\r\n' + token.encode() + b"\r\n--xx--\r\n"
    for body, content_type in ((b"csrf=" + token.encode() + b"&x=\xff\xfe", "application/x-www-form-urlencoded"),
                               (b"csrf=" + token.encode(), "application/x-www-form-urlencoded; charset=nope-9"),
                               (b"csrf=" + token.encode(), "multipart/form-data"),
                               (b"csrf=" + token.encode(), "multipart/form-data; boundary=xx"),
                               (part % b"Content-Type: text/plain; charset=zz\r\n", "multipart/form-data; boundary=xx")):
        response = await web.post(f"/sessions/{sid}/stop", data=body, headers={"Content-Type": content_type},
                                  allow_redirects=False)
        assert response.status == 400 and response.content_type == "text/html", content_type
        assert "could not be read" in await response.text()
    row = await services.sessions.get(sid)
    assert row is not None and not row.stop_requested and row.state == "processing"


async def test_unknown_pages_are_an_html_404_and_the_api_keeps_json(web: Any) -> None:
    for path in ("/nope", "/sessions/no-such-id", "/sessions/no-such-id%00", "/admin/x", "/static/missing.css"):
        response = await web.get(path)
        assert response.status == 404 and response.content_type == "text/html", path
        assert "<h1>" in await response.text()
    api = await web.get("/api/session/no-such-id")
    assert api.status == 404 and api.content_type == "application/json"
    for path in ("/static/live.js", "/static/sesame.css", "/favicon.ico"):
        assert (await web.get(path)).status == 200, path


async def test_auth_password_guards_pages_and_static_files(settings_for: Any, aiohttp_client: Any) -> None:
    services = await open_services(settings_for(AUTH_PASSWORD="hunter2-long", BASE_URL="http://127.0.0.1:1"),
                                   auto_migrate=True)
    try:
        sid = await make(services, "guarded")
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        for path in ("/", "/sessions", f"/sessions/{sid}", "/static/live.js", "/nope"):
            assert (await client.get(path)).status == 401, path
        good = {"Authorization": "Basic " + base64.b64encode(b"me:hunter2-long").decode()}
        response = await client.get(f"/sessions/{sid}", headers=good)
        text = await response.text()
        assert response.status == 200 and "guarded" in text and "hunter2" not in text
        assert (await client.post(f"/sessions/{sid}/stop", data={"csrf": csrf_of(text)})).status == 401
    finally:
        await services.close()


def test_templates_and_static_files_ship_as_package_data() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"templates/*", "static/*"} <= set(data["webhooks"])
    assert {p.name for p in (root / "webhooks" / "static").iterdir()} >= {"live.js", "sesame.css", "favicon.svg"}


async def test_the_session_page_says_which_sandbox_applied(web: Any, services: Services) -> None:
    asked = await make(services, "sandboxed")
    assert "on, as asked (not applied yet)" in await page(web, f"/sessions/{asked}")
    await services.sessions.claim(asked, "test")
    await services.sessions.add_event(asked, "sandbox", {"secured": False})
    assert "asked for, but not applied on this host" in await page(web, f"/sessions/{asked}")
    await services.sessions.add_event(asked, "sandbox", {"secured": True})
    assert "on, applied" in await page(web, f"/sessions/{asked}")
    off = await make(services, "unsandboxed", sandbox_security=False)
    assert "off (turned off for this session)" in await page(web, f"/sessions/{off}")
