"""Agent output handled a block at a time (issue 16): each stream's blocks are redacted whole, across block
boundaries too (StreamRedactor), stored as LineBlocks that read back as one event per line, in order, with
nothing lost at the end of the output."""

from __future__ import annotations

import io
import shlex
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bot.models import utcnow
from bot.redact import REDACTED, StreamRedactor, redact
from bot.services import Services
from bot.sessions import LineBlock, LineItem, NewSession, item_events
from runner.cli_run import run_from_terminal
from runner.output import EventBuffer
from tests.test_chunked_events import rows_of
from tests.test_pipeline import PYTHON, args, make_services

BODY = ["MIIEowIBAAKCAQEA" + "q" * 48, "Zm9vYmFyYmF6cXV4" + "w" * 48, "c2VjcmV0c2VjcmV0" + "e" * 48,
        "a2V5a2V5a2V5a2V5" + "r" * 48]
KEY = "\n".join(["-----BEGIN RSA PRIVATE KEY-----", *BODY, "-----END RSA PRIVATE KEY-----"])


def test_a_key_across_blocks_is_redacted_up_to_its_end() -> None:
    redactor = StreamRedactor([])
    blocks = ["before\n-----BEGIN RSA PRIVATE KEY-----\n" + BODY[0], BODY[1], BODY[2] + "\n" + BODY[3]
              + "\n-----END RSA PRIVATE KEY-----\nafter", "later"]
    out = [redactor(block) for block in blocks]
    assert out == ["before\n" + REDACTED, REDACTED, REDACTED + "\nafter", "later"]
    # the same text in one block: the same lines left
    assert redact("\n".join(blocks[:3])) == "before\n" + REDACTED + "\nafter"


def test_a_lone_begin_line_hides_no_more_than_its_span() -> None:
    redactor = StreamRedactor([])
    redactor.KEY_SPAN = 100  # type: ignore[misc]
    first = redactor("code: -----BEGIN PRIVATE KEY-----")
    rest = [redactor("x" * 60), redactor("y" * 30 + "\n" + "z" * 30 + "\nvisible"), redactor("shown")]
    assert first == "code: " + REDACTED
    assert rest == [REDACTED, REDACTED + "\nvisible", "shown"]


def test_a_multi_line_secret_split_over_blocks_is_redacted_line_by_line() -> None:
    server_key = KEY  # a multi-line secret value, e.g. GITHUB_PRIVATE_KEY
    redactor = StreamRedactor(["ab" * 32, server_key])
    # its lines shown without the armour (cat of a file, say), in separate blocks
    out = [redactor(BODY[0] + "\n" + BODY[1][:20]), redactor(BODY[2]), redactor("token " + "ab" * 32 + " end")]
    assert not any(line in piece for piece in out for line in BODY)
    assert out[2] == f"token {REDACTED} end"


def test_a_clean_block_is_handed_back_as_it_is() -> None:
    block = "\n".join(f"line {n} of a chatty agent" for n in range(1000))
    assert StreamRedactor(["s3cr3t-value"])(block) is block
    # the quick check misses nothing redact's case-blind patterns match (a dotless ı for i)
    odd = "é\nAuthorızatıon: Bearer abcdef123"
    assert StreamRedactor([])(odd) == f"é\nAuthorızatıon: {REDACTED}"


class Store:
    def __init__(self) -> None:
        self.stored: list[list[LineItem]] = []

    async def add_lines(self, session_id: str, items: list[LineItem]) -> list[int]:
        self.stored.append(items)
        return []


async def test_a_block_is_split_where_a_chunk_ends_and_keeps_its_order() -> None:
    store = Store()

    async def stored(write: Any, what: str) -> Any:
        return await write()

    state = SimpleNamespace(session=SimpleNamespace(id="s"), services=SimpleNamespace(sessions=store), stored=stored)
    buffer = EventBuffer(state, interval=60, chunk=10)  # type: ignore[arg-type]
    await buffer.add("step", {"n": 0})
    await buffer.add_block("message", [f"a{n}" for n in range(25)])
    await buffer.add("step", {"n": 1})
    await buffer.add_block("agent_stderr", ["e0", "e1"], field="line")
    await buffer.close()
    assert [sum(map(item_events, chunk)) for chunk in store.stored] == [10, 10, 9]
    flat: list[str] = []
    for chunk in store.stored:
        for item in chunk:
            flat += item.texts if isinstance(item, LineBlock) else [f"{item[0]}{item[1]['n']}"]
    assert flat == ["step0", *(f"a{n}" for n in range(25)), "step1", "e0", "e1"]
    assert buffer.count == 0 and not buffer.items


async def test_blocks_read_back_as_events_with_their_own_seqs(services: Services) -> None:
    row, _ = await services.sessions.create(NewSession(trigger_key=f"test:{uuid.uuid4()}", prompt="p",
                                                       agent="command", repo="acme/widget", source="api"))
    t0 = utcnow()
    items: list[LineItem] = [LineBlock("message", {}, t0, ["  first  ", "x" * 300]), ("step", {"n": 1}, t0),
                             LineBlock("agent_stderr", {}, t0 + timedelta(seconds=1), ["  err  "], "line")]
    assert await services.sessions.add_lines(row.id, items) == [2, 3, 4, 5]
    events = await services.sessions.events(row.id)
    assert [(e.seq, e.kind) for e in events] == [(1, "status"), (2, "message"), (3, "message"), (4, "step"),
                                                 (5, "agent_stderr")]
    assert events[1].data == {"summary": "first"} and events[2].data["summary"] == "x" * 119 + "…"
    assert events[4].data == {"line": "  err  "} and events[4].created_at.timestamp() == (t0 + timedelta(seconds=1)).timestamp()
    assert [e.seq for e in await services.sessions.events(row.id, after=2)] == [3, 4, 5]
    assert [e.seq for e in await services.sessions.events(row.id, after=3, limit=1)] == [4]
    # a block of a line or two (a quiet agent) is stored as plain rows, one per event, as before
    assert await services.sessions.add_lines(row.id, [LineBlock("message", {}, t0, [" 1.5 "])]) == [6]
    assert (await rows_of(services, row.id))[-1] == (6, "message")
    assert (await services.sessions.events(row.id, after=5))[0].data == {"summary": "1.5"}


AGENT = f"""
import sys, time
out, err = sys.stdout, sys.stderr
out.write("before\\n" + {KEY.splitlines()[0]!r} + "\\n" + {BODY[0]!r} + "\\n" + {BODY[1]!r} + "\\n"); out.flush()
time.sleep(0.3)
out.write({BODY[2]!r} + "\\n" + {BODY[3]!r} + "\\n-----END RSA PRIVATE KEY-----\\nafter the key\\n"); out.flush()
err.write("e1\\r\\n  \\ne2\\n"); err.flush()
time.sleep(0.2)
out.write({BODY[1]!r} + "\\n"); out.flush()
out.write("".join(f"line {{n}}\\r\\n" for n in range(30000)))
out.write("\\n   \\nthe last line, without a newline")
open("OUT.md", "w").write("x\\n")
"""


async def test_agent_output_redacted_across_reads_in_order_to_its_last_line(tmp_path: Path, db_url: str) -> None:
    from tests.support.gitrepo import make_repo

    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, db_url, GITHUB_PRIVATE_KEY=KEY)
    try:
        code = await run_from_terminal(services, args(origin, "talk", command=shlex.join([PYTHON, "-c", AGENT])),
                                       io.StringIO())
        session = (await services.sessions.recent(1))[0]
        events = await services.sessions.events(session.id, limit=100_000)
    finally:
        await services.close()
    assert code == 0, session.error
    said = [e.data["summary"] for e in events if e.kind == "message"]
    errors = [e.data["line"] for e in events if e.kind == "agent_stderr"]
    assert said[0] == "before" and "after the key" in said
    assert not any(line in str(e.data) for e in events for line in BODY)  # the key's body, in no event
    assert said[said.index("after the key") + 1] == REDACTED  # its line shown alone: a secret's line
    assert said[-30001:] == [f"line {n}" for n in range(30000)] + ["the last line, without a newline"]
    assert errors == ["e1", "  ", "e2"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
