"""The per-session budget: prices per model (bot.pricing, MODEL_PRICES), the credential gateway's budget hook,
and the real Claude Code stopped through the pipeline once the tokens it used cost more than its budget."""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.models import Session
from bot.pricing import PRICES, Price, model_price, normalize, parse_prices
from bot.progress import render_markdown
from bot.settings import SettingsError, load_settings
from runner.budget import budget_hook
from runner.cli_run import run_from_terminal
from runner.sandbox import check_sandbox_support
from runner.sandbox.gateway import BUDGET_MESSAGE, BUDGET_STATUS, CredentialGateway, GatewayStats, requested_model
from tests.agents import real_cli
from tests.agents.test_claude_real import MODEL
from tests.conftest import session_base
from tests.sandbox.test_gateway import loopback_socket
from tests.support.fake_anthropic import FakeAnthropic, Turn, call, say
from tests.support.gitrepo import branches, make_repo, show_file
from tests.test_api import RecordingQueue

SANDBOX_OK, SANDBOX_DETAIL = check_sandbox_support()
KEY = "sk-ant-budget-test-key"


def test_each_vendor_has_its_default_models_priced() -> None:
    for model in ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5", "gpt-5", "gpt-5-codex",
                  "gpt-5-nano", "gemini-2.5-pro", "gemini-2.5-flash"):
        price = PRICES[model]
        assert 0 < price.input_usd < price.output_usd, model  # output costs more, with every vendor
    assert Price(3.0, 15.0).cost(1_000_000, 100_000) == pytest.approx(4.5)


@pytest.mark.parametrize("given,name", [
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"), ("Claude-Sonnet-4-5", "claude-sonnet-4-5"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku"), ("gpt-4o-2024-08-06", "gpt-4o"),
    ("models/gemini-2.5-pro", "gemini-2.5-pro"), ("anthropic/claude-opus-4-1", "claude-opus-4-1"),
    ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"), ("gpt-5-mini", "gpt-5-mini"),
])
def test_a_model_is_found_under_its_dated_or_prefixed_names(given: str, name: str) -> None:
    assert normalize(given) == name
    assert model_price(given) == PRICES[name]


def test_an_unknown_model_has_no_price_rather_than_a_guess() -> None:
    assert model_price("claude-sonnet-9") is None and model_price("gpt-5-turbo-x") is None
    assert model_price(None) is None and model_price("") is None


def test_model_prices_add_and_override() -> None:
    overrides = {"my-local-model": "0/0", "gpt-5": "2/20", "Vendor/Odd-Model-20250101": "0.5/1.25"}
    assert model_price("my-local-model", overrides) == Price(0.0, 0.0)
    assert model_price("gpt-5-2025-08-07", overrides) == Price(2.0, 20.0)  # the override wins over the table
    assert model_price("odd-model", overrides) == Price(0.5, 1.25)
    assert model_price("gpt-5-mini", overrides) == PRICES["gpt-5-mini"]


@pytest.mark.parametrize("bad", ["x=3", "x=3/", "x=/4", "x=three/4", "x=-1/4", "x=1/2/3", "x=nan/1", "x=1e3/4"])
def test_a_malformed_model_price_is_a_clear_error(bad: str, tmp_path: Path) -> None:
    model, text = bad.split("=", 1)
    with pytest.raises(ValueError, match="is not a price"):
        parse_prices({model: text})
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"MODEL_PRICES": f"ok-model=1/2,{bad}"}, cwd=tmp_path)
    assert str(caught.value) == (f"MODEL_PRICES: {bad} is not a price. Write it as model=IN/OUT in USD per million "
                                 "tokens, e.g. my-model=1.5/6,gpt-5=1.25/10")


def test_model_prices_setting_from_env_and_file(tmp_path: Path) -> None:
    settings = load_settings(env={"MODEL_PRICES": "my-model=1.5/6"}, cwd=tmp_path)
    assert settings.MODEL_PRICES == {"my-model": "1.5/6"}
    assert model_price("my-model", settings.MODEL_PRICES) == Price(1.5, 6.0)
    (tmp_path / "config.json").write_text('{"sessions": {"modelPrices": {"other": "0.1/0.4"}}}')
    assert load_settings(env={}, cwd=tmp_path).MODEL_PRICES == {"other": "0.1/0.4"}


async def test_the_hook_lets_requests_through_until_the_tokens_cost_the_budget() -> None:
    """Through a real gateway to the fake Messages API: the first answer reports 20,000 tokens in and
    1,000 out at $3/$15 per million ($0.075); with a $0.05 budget the next request is refused."""
    script = [Turn(text="first", input_tokens=20_000, output_tokens=1_000), say("second")]
    session = Session(id="s-budget", budget_usd=0.05)
    spent: list[float] = []
    unpriced: list[str] = []
    async with FakeAnthropic(script, api_key=KEY) as fake:
        gateway = CredentialGateway(fake.base_url, KEY, ("x-api-key",),
                                    budget=budget_hook(session, lambda model: Price(3.0, 15.0), spent.append,
                                                       unpriced.append))
        await gateway.start(loopback_socket())
        try:
            async with aiohttp.ClientSession() as http:
                answers = []
                for _ in range(3):
                    async with http.post(f"http://127.0.0.1:{gateway.port}/v1/messages",
                                         headers={"x-api-key": gateway.placeholder},
                                         json={"model": MODEL, "max_tokens": 10, "tools": [{"name": "t"}],
                                               "messages": [{"role": "user", "content": "hi"}]}) as answer:
                        answers.append((answer.status, await answer.json()))
        finally:
            await gateway.close()
    assert [status for status, _ in answers] == [200, BUDGET_STATUS, BUDGET_STATUS]
    assert answers[1][1]["error"]["message"] == BUDGET_MESSAGE
    assert len(fake.message_requests) == 1  # nothing reached the upstream after the budget ran out
    assert (gateway.stats.input_tokens, gateway.stats.output_tokens) == (20_000, 1_000)
    assert gateway.stats.budget_stops == 2 and spent == pytest.approx([0.075, 0.075]) and not unpriced
    assert gateway.stats.by_model == {MODEL: (20_000, 1_000)}


def test_a_session_without_a_budget_is_never_refused() -> None:
    def stats(**by_model: tuple[int, int]) -> GatewayStats:
        return GatewayStats(by_model={name.replace("_", "-"): tokens for name, tokens in by_model.items()})

    def sonnet(model: str) -> Price:
        return Price(3.0, 15.0)

    hook = budget_hook(Session(id="s-free"), sonnet, print, print)
    assert hook(stats(m=(10**9, 10**9)))
    limited = budget_hook(Session(id="s-limited", budget_usd=1.0), sonnet, print, print)
    assert limited(stats(m=(333_333, 0))) and not limited(stats(m=(333_334, 0)))


def test_without_a_model_each_request_is_priced_at_its_own_and_an_unknown_one_ends_enforcement() -> None:
    spent: list[float] = []
    unpriced: list[str] = []
    hook = budget_hook(Session(id="s-each", budget_usd=1.0), model_price, spent.append, unpriced.append)
    # $0.80 of Opus 4.1 and $0.10 of Haiku 4.5: $0.90, within $1
    assert hook(GatewayStats(by_model={"claude-opus-4-1": (40_000, 2_666), "claude-haiku-4-5-20251001": (0, 20_000)}))
    # another $0.15 of Haiku: over
    assert not hook(GatewayStats(by_model={"claude-opus-4-1": (40_000, 2_666),
                                          "claude-haiku-4-5-20251001": (150_000, 20_000)}))
    assert spent == pytest.approx([0.79995 + 0.25])
    # a model priced nowhere: said once, and from then on nothing is refused rather than a guess
    assert hook(GatewayStats(by_model={"claude-opus-4-1": (10**9, 0), "claude-next-unknown": (1, 1)}))
    assert hook(GatewayStats(by_model={"claude-opus-4-1": (10**9, 10**9)}))
    assert unpriced == ["claude-next-unknown"] and len(spent) == 1


@pytest.mark.parametrize("path,body,model", [
    ("/v1/messages", b'{"model": "claude-sonnet-4-5", "messages": [{"model": "x"}]}', "claude-sonnet-4-5"),
    ("/v1/responses", b' {"input": "hi", "model": "gpt-5-codex"}', "gpt-5-codex"),
    ("/v1beta/models/gemini-2.5-pro:streamGenerateContent", b'{"contents": []}', "gemini-2.5-pro"),
    ("/v1/messages", b"not json", ""), ("/v1/models", b"", ""),
])
def test_the_gateway_reads_the_model_a_request_names(path: str, body: bytes, model: str) -> None:
    assert requested_model(path, body) == model


@pytest.fixture(scope="session")
def claude_install() -> Path:
    """The data dir holding Claude Code from npm (installed on first use)."""
    return real_cli.agents_data_dir("claude")


async def run_claude(tmp_path: Path, claude_install: Path, fake: FakeAnthropic, model: str | None, budget: str,
                     aiohttp_client: Any) -> tuple[int, Session, list[str], Path, dict[str, Any]]:
    """One sandboxed Claude Code session through the pipeline, against fake, with that budget: its exit
    code, stored row, progress messages, origin repository and the API's view of it."""
    origin = make_repo(tmp_path / "origin")
    data_dir = tmp_path / "data"
    (data_dir / "agents").mkdir(parents=True)
    os.symlink(claude_install / "agents" / "claude", data_dir / "agents" / "claude")
    shown: list[str] = []
    env = {"SESAME_DATA_DIR": str(data_dir), "SESSION_DIR_BASE": session_base(), "ENCRYPTION_KEY": "ab" * 32,
           "ANTHROPIC_BASE_URL": fake.base_url, "ANTHROPIC_API_KEY": KEY, "SESSION_TIMEOUT": "240",
           "SESSION_BUDGET_USD": budget} | ({"CLAUDE_MODEL": model} if model else {})
    services = await open_services(load_settings(env=env, cwd=tmp_path))
    try:
        code = await run_from_terminal(services, argparse.Namespace(
            repo=str(origin), agent="claude", model=None, base=None, agent_command=None,
            no_sandbox=False, keep=False, prompt=["add", "hello.py"]), io.StringIO(),
            printer=lambda p: shown.append(render_markdown(p)))
        session = (await services.sessions.recent(1))[0]
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        api = await (await client.get(f"/api/session/{session.id}")).json()
    finally:
        await services.close()
    return code, session, shown, origin, api


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
async def test_claude_code_is_stopped_when_its_budget_runs_out(tmp_path: Path, claude_install: Path,
                                                               aiohttp_client: Any) -> None:
    # The first agent turn writes hello.py and reports 20,000 tokens in and 1,000 out: $0.075 at Sonnet's
    # $3/$15, over the $0.05 budget, so the gateway refuses the request that would bring the file's result.
    script = [Turn(tool_uses=call("Write", file_path="hello.py", content="print(1)\n").tool_uses,
                   input_tokens=20_000, output_tokens=1_000), say("Added hello.py.")]
    async with FakeAnthropic(script, api_key=KEY) as fake:
        code, session, shown, origin, api = await run_claude(tmp_path, claude_install, fake, MODEL, "0.05",
                                                             aiohttp_client)
    assert code != 0 and session.state == "error"
    agent_turns = [r for r in fake.message_requests if (r.body or {}).get("tools")]
    assert len(agent_turns) == 1  # the turn after the Write never reached the API
    spent = session.cost_usd
    assert spent is not None and spent >= 0.05
    sentence = (f"Claude Code was stopped: the budget of $0.05 ran out (${spent:,.2f} spent): raise it with "
                "--budget or SESSION_BUDGET_USD")
    assert session.error == sentence and api["error"] == sentence and api["state"] == "error"
    assert sentence in shown[-1].replace("\\", "")  # the progress message escapes its Markdown
    assert session.branch and session.commit_sha and branches(origin)[session.branch] == session.commit_sha
    assert show_file(origin, session.branch, "hello.py").strip() == "print(1)"  # the work so far, committed and pushed
    # Claude Code was killed before its result line: the usage stored is the gateway's count
    assert session.input_tokens is not None and session.input_tokens >= 20_000
    assert session.output_tokens is not None and session.output_tokens >= 1_000
    assert api["usage"] == {"inputTokens": session.input_tokens, "outputTokens": session.output_tokens,
                            "costUsd": spent, "budgetUsd": 0.05}


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
async def test_an_unpriced_model_is_said_and_not_enforced(tmp_path: Path, claude_install: Path,
                                                         aiohttp_client: Any) -> None:
    script = [Turn(tool_uses=call("Write", file_path="hello.py", content="print(1)\n").tool_uses,
                   input_tokens=20_000, output_tokens=1_000), say("Added hello.py.")]
    async with FakeAnthropic(script, api_key=KEY) as fake:
        code, session, shown, _origin, api = await run_claude(tmp_path, claude_install, fake,
                                                              "claude-test-unpriced", "0.05", aiohttp_client)
    assert code == 0 and session.state == "completed", session.error
    warning = ("the budget of $0.05 cannot be enforced: the price of `claude-test-unpriced` is unknown: add it "
               "to MODEL_PRICES as model=IN/OUT (USD per million tokens)")
    assert session.warning is not None and warning in session.warning and warning in api["warning"]
    assert warning in shown[-1].replace("\\", "")


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
async def test_with_no_model_chosen_the_requested_models_are_priced(tmp_path: Path, claude_install: Path,
                                                                    aiohttp_client: Any) -> None:
    script = [Turn(tool_uses=call("Write", file_path="hello.py", content="print(1)\n").tool_uses,
                   input_tokens=20_000, output_tokens=1_000), say("Added hello.py.")]
    async with FakeAnthropic(script, api_key=KEY) as fake:
        code, session, shown, origin, api = await run_claude(tmp_path, claude_install, fake, None, "0.05",
                                                             aiohttp_client)
    assert code == 0 and session.state == "completed", session.error
    models = {(r.body or {}).get("model") for r in fake.message_requests}
    requested = models.pop()
    assert not models and isinstance(requested, str) and requested
    if model_price(requested) is not None:  # a Claude Code whose default model the table knows: enforced
        assert session.error is None and session.warning is None
        return
    # the CLI's own default model, priced nowhere: said once the gateway saw it, and the session goes on
    warning = (f"the budget of $0.05 is no longer enforced: the price of `{requested}` is unknown: add it to "
               "MODEL_PRICES as model=IN/OUT (USD per million tokens)")
    assert session.warning == warning and api["warning"] == warning
    shown_text = shown[-1].replace("\\", "").replace("\u2060", "")  # Markdown escapes, word joiners before digits
    assert warning in shown_text
    assert show_file(origin, str(session.branch), "hello.py").strip() == "print(1)"
