"""The repository's test gate (issue 18), end to end: setup installs a test tool, the agent's first round fails
the test, one fix round with the failure as its prompt passes it; still failing opens a draft."""

from __future__ import annotations

from bot.models import Session
from tests.support import gitrepo
from tests.support.rendered import github_text
from tests.webhooks.test_end_to_end import MakeStack, Stack, make_stack, progress_comment  # noqa: F401 (fixture)

# First round (the request): 43. A round whose prompt is a test failure: 42, and the prompt kept.
AGENT = ("import pathlib, sys\nprompt = sys.stdin.read()\n"
         "fixing = prompt.startswith(\"The repository's test command\")\n"
         "pathlib.Path('src/widget.py').write_text(f'def answer():\\n    return {42 if fixing else 43}\\n')\n"
         "if fixing:\n    pathlib.Path('FIX_PROMPT.md').write_text(prompt)\n"
         "print('fixing' if fixing else 'first try', flush=True)\n")
CONFIG = """setup:
  - |
    set -e
    mkdir -p "$HOME/bin"
    cat > "$HOME/bin/check-answer" <<'SH'
    #!/bin/sh
    if grep -q 'return 42' src/widget.py; then echo "1 passed"; exit 0; fi
    echo "FAILED test_answer: expected 42, got $(grep return src/widget.py)"
    exit 1
    SH
    chmod +x "$HOME/bin/check-answer"
test: '"$HOME/bin/check-answer"'
fix: {fix}
"""


async def run_one(stack: Stack, fix: int) -> tuple[Session, int]:
    hook = stack.hook
    hook.fake.commit_file(hook.repo, "main", {".github/sesame.yml": CONFIG.format(fix=fix)})
    issue = hook.fake.add_issue(hook.repo, "answer() is wrong", "It returns 41.")
    assert (await hook.comment(issue.number, "@sesame make answer() return 42")).status == 202
    await stack.drain()
    return await stack.only_session(), issue.number


async def test_a_test_that_fails_once_passes_after_one_fix_round(make_stack: MakeStack) -> None:
    stack = await make_stack(AGENT)
    row, number = await run_one(stack, fix=1)
    assert row.state == "completed", row.error
    hook = stack.hook
    bare = hook.fake.repos[hook.repo].path
    assert gitrepo.git("show", f"{row.commit_sha}:src/widget.py", cwd=bare).endswith("return 42")
    fix_prompt = gitrepo.git("show", f"{row.commit_sha}:FIX_PROMPT.md", cwd=bare)
    assert "FAILED test_answer: expected 42, got     return 43" in fix_prompt
    assert "fix round 1 of 1" in fix_prompt and fix_prompt.endswith("make answer() return 42")
    events = await hook.services.sessions.events(row.id)
    assert [(e.data["round"], e.data["exit_code"]) for e in events if e.kind == "test"] == [(0, 1), (1, 0)]
    assert [e.data["status"] for e in events if e.kind == "step" and e.data["step"] == "agent"] == [
        "running", "done", "running", "done"]
    [pr] = hook.fake.pulls
    assert not pr.draft and "Tests: passed after 1 fix round" in github_text(pr.body or "")
    body = github_text(progress_comment(stack, number).body)
    assert "Tests (passed after 1 fix round)" in body and "Setup (1 command in" in body
    assert "Test output: passed after 1 fix round" in body and "1 passed" in body


async def test_still_failing_after_the_fix_rounds_opens_a_draft_saying_why(make_stack: MakeStack) -> None:
    stack = await make_stack(AGENT)
    row, number = await run_one(stack, fix=0)
    assert row.state == "completed", row.error
    [pr] = stack.hook.fake.pulls
    text = github_text(pr.body or "")
    assert pr.draft and "Tests: failed (" in text and "exit code 1); this pull request is a draft" in text
    assert "FAILED test_answer: expected 42, got     return 43" in text
    body = github_text(progress_comment(stack, number).body)
    assert "Tests (failed (exit code 1)) (failed)" in body
    events = await stack.hook.services.sessions.events(row.id)
    assert [e.data["exit_code"] for e in events if e.kind == "test"] == [1]


# The setup leaves build metadata and a generated file; the agent writes fix.txt and edits the generated file,
# and in its fix round writes fix2.txt; the test leaves a report and a cache behind and passes once fix2.txt
# exists.
LEAVES_FILES = ("import pathlib, sys\nprompt = sys.stdin.read()\n"
                "fixing = prompt.startswith(\"The repository's test command\")\n"
                "pathlib.Path('fix2.txt' if fixing else 'fix.txt').write_text('from the agent\\n')\n"
                "if not fixing:\n    pathlib.Path('generated.py').write_text('x = 2  # edited by the agent\\n')\n")
LEAVES_CONFIG = """setup: mkdir -p widget.egg-info && echo meta > widget.egg-info/PKG-INFO && echo 'x = 1' > generated.py
test: |
  mkdir -p .cache/t && echo cached > .cache/t/data && echo '<testsuite/>' > report.xml
  test -f fix2.txt
fix: 1
"""


async def test_files_the_setup_and_test_commands_create_stay_out_of_the_commit(make_stack: MakeStack) -> None:
    stack = await make_stack(LEAVES_FILES)
    hook = stack.hook
    hook.fake.commit_file(hook.repo, "main", {".github/sesame.yml": LEAVES_CONFIG})
    issue = hook.fake.add_issue(hook.repo, "fix", "Write the fix files.")
    assert (await hook.comment(issue.number, "@sesame write the fix files")).status == 202
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    bare = hook.fake.repos[hook.repo].path
    files = gitrepo.git("ls-tree", "-r", "--name-only", row.commit_sha, cwd=bare).splitlines()
    assert "fix.txt" in files and "fix2.txt" in files  # the agent's, from both rounds
    assert gitrepo.git("show", f"{row.commit_sha}:generated.py", cwd=bare) == "x = 2  # edited by the agent"
    assert "report.xml" not in files and not any(f.startswith((".cache/", "widget.egg-info")) for f in files), files
    events = await hook.services.sessions.events(row.id)
    assert [e.data["exit_code"] for e in events if e.kind == "test"] == [1, 0]
    [left] = [e.data for e in events if e.kind == "command_files"]
    assert left == {"left_out": 3, "paths": [".cache/t/data", "report.xml", "widget.egg-info/PKG-INFO"]}
    body = github_text(progress_comment(stack, issue.number).body)
    assert "3 files of the setup and test commands left out" in body
