"""A repository's .github/sesame.yml (issue 18), end to end: webhook -> arq worker -> sandboxed setup and
agent -> pull request, against the fake GitHub's contents API; read from the base branch only."""

from __future__ import annotations

import pytest

from bot.repo_config import (
    RepoConfig,
    RepoConfigError,
    branch_with_prefix,
    chosen,
    domains_within,
    follow_up_choice,
    parse,
    prompt_with,
    trigger_choice,
)
from tests.support import gitrepo
from tests.support.rendered import github_html, github_text
from tests.webhooks.test_end_to_end import EDIT, MakeStack, make_stack, progress_comment  # noqa: F401 (fixture)

# The agent uses the tool the setup installed in HOME, and keeps its prompt for the test to read.
USES_TOOL = ("import os, pathlib, subprocess, sys\nprompt = sys.stdin.read()\n"
             "out = subprocess.run([os.path.expanduser('~/bin/greet')], capture_output=True, text=True).stdout\n"
             "pathlib.Path('GREETING.txt').write_text(out)\npathlib.Path('PROMPT.md').write_text(prompt)\n"
             "print('used the tool', flush=True)\n")
CONFIG = """# Sesame for this repository
setup:
  - |
    set -e
    mkdir -p "$HOME/bin"
    printf '#!/bin/sh\\necho hello from greet\\n' > "$HOME/bin/greet"
    chmod +x "$HOME/bin/greet"
    echo installed greet
  - echo "second step <b>bold</b>"
branch_prefix: bots/
budget: 1.25
model: gpt-test
instructions: |
  Keep functions under twenty lines.
"""


def show(repo_path: object, sha: str, path: str) -> str:
    return gitrepo.git("show", f"{sha}:{path}", cwd=repo_path)  # type: ignore[arg-type]


async def test_setup_runs_in_the_sandbox_before_the_agent_and_the_config_shapes_the_session(
        make_stack: MakeStack) -> None:
    stack = await make_stack(USES_TOOL)
    hook = stack.hook
    hook.fake.commit_file(hook.repo, "main", {".github/sesame.yml": CONFIG}, "Add the Sesame config")
    issue = hook.fake.add_issue(hook.repo, "greet", "Use the greeter.")
    assert (await hook.comment(issue.number, "@sesame greet the world")).status == 202
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    assert row.branch.startswith("bots/") and row.budget_usd == 1.25
    assert row.model == "gpt-test"  # the trigger named no agent: the repository's model applies
    bare = hook.fake.repos[hook.repo].path
    assert show(bare, row.commit_sha, "GREETING.txt") == "hello from greet"
    prompt = show(bare, row.commit_sha, "PROMPT.md")
    assert prompt.startswith("greet the world") and "Keep functions under twenty lines." in prompt
    assert (hook.repo, ".github/sesame.yml", "main") in hook.fake.contents_reads
    [pr] = hook.fake.pulls
    assert pr.head == row.branch
    body = progress_comment(stack, issue.number).body
    assert "- [x] Setup (2 commands in " in body
    assert "<details><summary>Setup output (2 commands in " in body
    assert "installed greet" in body and "\nsecond step <b>bold</b>\n" in body
    fence_start = body.index("```text")
    assert body.index("<b>bold</b>") > fence_start  # the output only inside the fence, where nothing renders
    rendered = github_html(body)
    assert "<b>bold</b>" not in rendered and "&lt;b&gt;bold&lt;/b&gt;" in rendered
    assert "<summary>Setup output (2 commands in " in rendered


async def test_the_config_comes_from_the_base_branch_never_the_pull_requests_head(make_stack: MakeStack) -> None:
    stack = await make_stack(USES_TOOL)
    hook = stack.hook
    hook.fake.commit_file(hook.repo, "main", {".github/sesame.yml": CONFIG})
    evil = "setup: echo EVIL > EVIL.txt\n"
    hook.fake.commit_file(hook.repo, "feature", {".github/sesame.yml": evil, "src/new.py": "x = 1\n"})
    pr = hook.fake.add_pull(hook.repo, "feature")
    assert (await hook.comment(pr.number, "@sesame greet the world")).status == 202
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    assert row.branch == "feature"
    reads = [r for r in hook.fake.contents_reads if r[0] == hook.repo and r[1].endswith("sesame.yml")]
    assert reads and all(ref == "main" for _repo, _path, ref in reads)
    bare = hook.fake.repos[hook.repo].path
    assert show(bare, row.commit_sha, "GREETING.txt") == "hello from greet"
    with pytest.raises(RuntimeError):
        show(bare, row.commit_sha, "EVIL.txt")


async def test_an_invalid_config_is_reported_with_its_line_and_the_session_runs_on_defaults(
        make_stack: MakeStack) -> None:
    stack = await make_stack(EDIT)
    hook = stack.hook
    hook.fake.commit_file(hook.repo, "main", {".sesame.yml": "setup: echo hi\nbudget: 1\nbranch_prefx: x/\n"})
    issue = hook.fake.add_issue(hook.repo, "fix", "It returns 41.")
    assert (await hook.comment(issue.number, "@sesame make answer() return 42")).status == 202
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    assert row.budget_usd is None and not row.branch.startswith("x/")
    body = github_text(progress_comment(stack, issue.number).body)
    assert ".sesame.yml line 3: unknown setting 'branch_prefx'" in body and "runs on the server's defaults" in body
    assert "Setup" not in body


async def test_the_config_files_are_asked_for_at_once(make_stack: MakeStack) -> None:
    """.github/sesame.yml, .sesame.yml and AGENTS.md: one round trip's time, not three (issue 16: each
    answer of the real GitHub takes 100-500 ms); the first path found still wins."""
    stack = await make_stack(EDIT)
    hook = stack.hook
    hook.fake.commit_file(hook.repo, "main", {".sesame.yml": "budget: 2\n", "AGENTS.md": "Be brief.\n"})
    hook.fake.latency = 0.5
    issue = hook.fake.add_issue(hook.repo, "fix", "It returns 41.")
    assert (await hook.comment(issue.number, "@sesame make answer() return 42")).status == 202
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    assert row.budget_usd == 2
    asks = {path: at for path, at in hook.fake.contents_asks}
    assert set(asks) == {".github/sesame.yml", ".sesame.yml", "AGENTS.md"}
    assert max(asks.values()) - min(asks.values()) < 0.4  # one after another: 0.5 s apart at least


@pytest.mark.parametrize(("text", "line", "words"), [
    ("agent: claude\nsetup: [1, 2]\n", 2, "setup: a command or a list"),
    ("test: pytest\nfix: 9\n", 2, "fix: a whole number from 0 to 5"),
    ("allowed_domains:\n  - pypi.org\n  - 'evil domain'\n", 2, "allowed_domains"),
    ("budget: yes\n", 1, "budget: an amount"),
    ("setup: [\n", 2, "not valid YAML"),
    ("- a list\n", 1, "must be a mapping"),
    ("agent: hal9000\n", 1, "agent: one of"),
    ("branch_prefix: '../x'\n", 1, "branch_prefix"),
    ("model: gpt-5\nmodel: o3\n", 2, "set twice"),
])
def test_invalid_files_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(RepoConfigError) as caught:
        parse(".github/sesame.yml", text)
    assert caught.value.line == line and words in str(caught.value), str(caught.value)


def test_a_valid_file() -> None:
    config = parse(".github/sesame.yml", "agent: codex\nmodel: gpt-5\nsetup: pip install -e .\ntest: pytest -q\n"
                                         "fix: 2\nallowed_domains: [PyPI.org, '*.pythonhosted.org']\n")
    assert (config.agent, config.model, config.setup, config.test, config.fix) == (
        "codex", "gpt-5", ("pip install -e .",), "pytest -q", 2)
    assert config.allowed_domains == ("pypi.org", "*.pythonhosted.org")
    assert parse(".sesame.yml", "") == RepoConfig(path=".sesame.yml")


def test_the_servers_policy_wins_over_the_repositorys_domains() -> None:
    config = RepoConfig(path=".sesame.yml", allowed_domains=("pypi.org", "evil.example", "files.example:8443"))
    policy = domains_within(config, True, ["evil.example", "files.example"])
    assert policy.added == ("pypi.org",) and policy.refused == ("evil.example", "files.example:8443")
    forbidden = domains_within(config, False, [])
    assert forbidden.added == () and "REPO_CONFIG_DOMAINS" in (forbidden.reason or "")


def test_prompt_and_branch() -> None:
    config = RepoConfig(path=".sesame.yml", instructions="Be brief.", branch_prefix="bots/", agents_md="Use tabs.")
    assert prompt_with(config, "fix it", "claude") == (
        "fix it\n\nInstructions from the repository's .sesame.yml:\nBe brief.\n\nThe repository's AGENTS.md:\nUse tabs.")
    assert "AGENTS.md" not in prompt_with(config, "fix it", "codex")  # Codex reads it itself
    assert branch_with_prefix(config, "sesame/fix-it-1a2b") == "bots/fix-it-1a2b"


def test_the_repositorys_agent_and_model_fill_in_only_what_the_trigger_did_not_name() -> None:
    config = RepoConfig(agent="codex", model="gpt-5")
    assert chosen(config, "claude", None, trigger_choice(None, None)) == ("codex", "gpt-5")
    assert chosen(config, "claude", None, trigger_choice("claude", None)) == ("claude", None)  # not codex's model
    assert chosen(config, "codex", None, trigger_choice("codex", None)) == ("codex", "gpt-5")
    assert chosen(config, "claude", "opus", trigger_choice(None, "opus")) == ("claude", "opus")  # pins its agent
    assert chosen(config, "claude", None, {}) == ("claude", None)  # rows from before the record: as named
    assert chosen(RepoConfig(model="m"), "claude", "opus", trigger_choice("claude", "opus")) == ("claude", "opus")
    assert chosen(RepoConfig(model="m"), "claude", None, trigger_choice("claude", None)) == ("claude", "m")
    parent = trigger_choice(None, None)  # the follow-up takes over its parent's agent and model
    assert chosen(config, "claude", "opus", follow_up_choice(parent, None, None)) == ("codex", "gpt-5")
    assert chosen(config, "claude", None, follow_up_choice(parent, "claude", None)) == ("claude", None)
    assert follow_up_choice(trigger_choice("amp", None), None, None) == {"agent_named": True, "model_named": False}
