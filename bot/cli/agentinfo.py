"""What `sesame agents list` and `sesame doctor` say of each agent: its install, where its credential
comes from (never the value), and what Sesame's own tests verify of it for real."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url

from bot.catalog import AgentSpec
from bot.settings import Settings

# What the tests run for real, per agent; say it plainly, and change it with the tests.
VERIFIED: dict[str, str] = {
    "claude": "the real CLI runs the whole pipeline in the sandbox against a loopback fake of the "
              "Messages API (tests/test_claude_sandboxed.py)",
    "codex": "the real CLI edits files against a loopback fake of the Responses API, with a stored key and "
             "with the server's OPENAI_API_KEY (tests/agents/test_codex_*.py); its parser reads recorded real output",
    "gemini": "the real CLI edits files against a loopback fake of generateContent "
              "(tests/agents/test_gemini_real.py); its parser reads recorded real output",
    "copilot": "the real CLI runs the whole pipeline in the sandbox in bring-your-own-key mode against a "
               "loopback fake of chat completions, its key through the gateway (tests/test_copilot_sandboxed.py, "
               "tests/test_gateway_sandboxed.py); with a GitHub token, never run by the tests",
    "opencode": "the real CLI runs the whole pipeline in the sandbox with Sesame's provider block against a "
                "loopback fake of chat completions, its key through the gateway (tests/test_opencode_sandboxed.py, "
                "tests/test_gateway_sandboxed.py); its own Anthropic and OpenAI providers reach loopback fakes "
                "through the gateway (tests/agents/test_opencode_native_gateway.py)",
    "amp": "its npm install (tests/agents/test_agents_cli.py), and its parser only, on lines shaped from "
           "Amp's documented stream JSON, never on real output: Amp talks only to Amp's own service "
           "(ampcode.com), so a real run needs an Amp account and its network",
    "command": "runs for real through the whole pipeline, sandboxed, in the tests",
}
CREDENTIAL_KINDS = (("subscription", "stored subscription"), ("api_key", "stored API key"))


@dataclass(frozen=True)
class StoredKinds:
    """Which credential kinds are stored per agent; `problem` says why they could not be read."""

    kinds: Mapping[str, Collection[str]]
    problem: str = ""


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite database URL, or None for another database (or an in-memory one)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


async def stored_credential_kinds(settings: Settings) -> StoredKinds:
    """Agent -> stored kinds, read without opening any value (no key needed) and without creating a
    database: a SQLite file that does not exist yet, or an unmigrated schema, holds none."""
    from bot.db import NotMigrated, check_migrated, make_engine
    from bot.models import Credential

    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():
        return StoredKinds({})
    engine = make_engine(settings.database_url)
    try:
        await asyncio.wait_for(check_migrated(engine), 10)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(Credential.agent, Credential.kind))).all()
    except NotMigrated:
        return StoredKinds({})
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoredKinds({}, f"the database is unreachable: {first}")
    finally:
        await engine.dispose()
    kinds: dict[str, set[str]] = {}
    for agent, kind in rows:
        kinds.setdefault(agent, set()).add(kind)
    return StoredKinds(kinds)


def credential_source(spec: AgentSpec, stored: StoredKinds, settings: Settings, *, hint: bool = True) -> str:
    """Where a session of this agent takes its credential from, in the runner's order: stored
    subscription, stored API key, then the first of its server environment variables; never a value.
    With hint, "none" says how to give it one."""
    kinds = stored.kinds.get(spec.name, ())
    for kind, label in CREDENTIAL_KINDS:
        if kind in kinds:
            return label
    env = next((key for key in spec.server_env_keys if settings.is_set(key)), None)
    found = f"environment ({env})" if env else "none"
    if not env and spec.server_env_keys and hint:
        found += f": store one (PUT /api/credentials/{spec.name}) or set {' or '.join(spec.server_env_keys)}"
    return f"{found}, unless one is stored ({stored.problem})" if stored.problem else found
