"""Agent output parsers, on real recorded output (tests/agents/data) and on edge cases."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runner.agents import AGENTS, AgentEvent, get_agent

DATA = Path(__file__).parent / "data"


def parse_file(agent_name: str, filename: str) -> list[AgentEvent]:
    """Every event of a recorded output file, parsed with the work directory it ran in."""
    text = (DATA / filename).read_text()
    cwd = re.search(r"/tmp/sesame-[a-z0-9_]+/project", text)
    agent = get_agent(agent_name)
    return [e for line in text.splitlines() for e in agent.parse_line(line, cwd=cwd and cwd.group(0))]


def summaries(events: list[AgentEvent], kind: str) -> list[str]:
    """Summaries of the events of one kind, in order."""
    return [e.summary for e in events if e.kind == kind]


def test_claude_edit_session() -> None:
    events = parse_file("claude", "claude_stream_edit.jsonl")
    assert summaries(events, "file_edit") == ["Writing greet.py", "Editing greet.py", "Editing missing.py"]
    assert summaries(events, "tool_call") == [
        "Updating the to-do list", "Reading README.md", "Running `python3 -c 'import greet; print(greet.greet())'`"]
    assert summaries(events, "message") == ["Let me plan this.", "Added greet.py; it returns 'hello'."]
    assert [e.kind for e in events][-1] == "result"
    assert events[-1].data["is_error"] is False and events[-1].data["num_turns"] == 7
    assert not summaries(events, "raw") and not summaries(events, "error")


def test_claude_api_error() -> None:
    events = parse_file("claude", "claude_stream_api_error.jsonl")
    assert [e.kind for e in events] == ["error", "result"]
    assert events[0].summary == "API Error: 400 scripted"
    assert events[1].data["is_error"] is True


def test_copilot_edit_session() -> None:
    events = parse_file("copilot", "copilot_json_edit.jsonl")
    assert summaries(events, "file_edit") == ["Writing greet.py", "Editing greet.py"]
    assert summaries(events, "tool_call") == [
        "Reading README.md", "Running `python3 -c 'import greet; print(greet.greet())'`"]
    assert summaries(events, "message") == ["Let me look first.", "Added greet.py; it returns 'hello'."]
    assert events[-1].kind == "result" and events[-1].data["is_error"] is False


def test_copilot_error() -> None:
    events = parse_file("copilot", "copilot_json_error.jsonl")
    assert [e.kind for e in events] == ["error", "result"]
    assert events[0].summary == "400 scripted failure"
    assert events[1].data["is_error"] is True


def test_opencode_edit_session() -> None:
    events = parse_file("opencode", "opencode_json_edit.jsonl")
    assert summaries(events, "file_edit") == ["Writing greet.py", "Editing greet.py"]
    assert summaries(events, "tool_call") == [
        "Reading README.md", "Running `python3 -c 'import greet; print(greet.greet())'`"]
    assert summaries(events, "message") == ["Let me look first.", "Added greet.py; it returns 'hello'."]
    assert events[-1].kind == "result" and events[-1].data["is_error"] is False


def test_opencode_error_line() -> None:
    """opencode kept retrying a failing provider here without printing; shape from its `run --format json` source."""
    line = json.dumps({"type": "error", "timestamp": 1, "sessionID": "ses_1",
                       "error": {"name": "APIError", "data": {"message": "Unauthorized", "statusCode": 401}}})
    assert get_agent("opencode").parse_line(line) == [
        AgentEvent("error", "Unauthorized", json.loads(line))]


def test_codex_edit_session() -> None:
    events = parse_file("codex", "codex_json_edit.jsonl")
    assert summaries(events, "file_edit") == ["Creating greet.py", "Editing greet.py"]
    assert summaries(events, "tool_call") == [
        "Running `cat README.md`", "Running `python3 -c 'import greet; print(greet.greet())'`"]
    assert summaries(events, "message") == ["Let me look first.", "Added greet.py; it returns 'hello'."]
    assert events[-1].kind == "result" and events[-1].data["is_error"] is False
    assert events[-1].data["usage"]["input_tokens"] == 50
    assert not summaries(events, "raw") and not summaries(events, "error")


def test_codex_api_error() -> None:
    events = parse_file("codex", "codex_json_error.jsonl")
    assert [(e.kind, e.summary) for e in events] == [("error", "scripted failure"), ("result", "scripted failure")]
    assert events[1].data["is_error"] is True


def test_codex_unauthorized() -> None:
    events = parse_file("codex", "codex_json_unauthorized.jsonl")
    assert [e.kind for e in events] == ["warning"] * 5 + ["error", "result"]
    assert events[0].summary.startswith("Reconnecting... 1/5 (unexpected status 401 Unauthorized")
    assert events[-1].data["is_error"] is True and "401 Unauthorized" in events[-1].summary


def test_gemini_edit_session() -> None:
    events = parse_file("gemini", "gemini_stream_edit.jsonl")
    assert summaries(events, "file_edit") == ["Writing greet.py", "Editing greet.py"]
    assert summaries(events, "tool_call") == [
        "Reading README.md", "Running `python3 -c 'import greet; print(greet.greet())'`"]
    messages = [e for e in events if e.kind == "message"]
    assert all(e.data["delta"] for e in messages)  # the CLI streams the model's text in pieces
    assert "".join(e.data["text"] for e in messages) == "Let me look first.Added greet.py; it returns 'hello'."
    assert events[-1].kind == "result" and events[-1].data["is_error"] is False
    assert events[-1].data["stats"]["tool_calls"] == 4
    assert not summaries(events, "raw") and not summaries(events, "error")


def test_gemini_api_error() -> None:
    events = parse_file("gemini", "gemini_stream_error.jsonl")
    assert [(e.kind, e.summary) for e in events] == [("result", "scripted failure")]
    assert events[0].data["is_error"] is True


CODEX_DOC_LINES = [
    # Shapes from the Codex CLI's documentation of `codex exec --json` (docs/exec.md).
    ('{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}', []),
    ('{"type":"turn.started"}', []),
    ('{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"**Searching for README files**"}}', []),
    ('{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls",'
     '"aggregated_output":"","exit_code":null,"status":"in_progress"}}', [("tool_call", "Running `ls`")]),
    ('{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls",'
     '"aggregated_output":"docs\\nsdk\\n","exit_code":0,"status":"completed"}}', []),
    ('{"type":"item.completed","item":{"id":"item_2","type":"file_change","changes":[{"path":"/w/project/src/a.py",'
     '"kind":"update"},{"path":"/w/project/b.md","kind":"add"}],"status":"completed"}}',
     [("file_edit", "Editing src/a.py"), ("file_edit", "Creating b.md")]),
    ('{"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"Repo contains docs and sdk."}}',
     [("message", "Repo contains docs and sdk.")]),
    ('{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122}}',
     [("result", "done")]),
    ('{"type":"turn.failed","error":{"message":"stream disconnected"}}', [("result", "stream disconnected")]),
    ('{"type":"error","message":"Reconnecting... 1/5"}', [("warning", "Reconnecting... 1/5")]),
    ('{"type":"error","message":"stream error: boom"}', [("error", "stream error: boom")]),
    ('{"type":"item.completed","item":{"id":"item_4","type":"error","message":"Under-development features '
     'enabled"}}', [("warning", "Under-development features enabled")]),
    ('{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc \'unclosed",'
     '"status":"in_progress"}}', [("tool_call", "Running `/bin/bash -lc 'unclosed`")]),
    ('{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"ls -la",'
     '"status":"in_progress"}}', [("tool_call", "Running `ls -la`")]),
]


@pytest.mark.parametrize(("line", "expected"), CODEX_DOC_LINES)
def test_codex_documented_lines(line: str, expected: list[tuple[str, str]]) -> None:
    events = get_agent("codex").parse_line(line, cwd="/w/project")
    assert [(e.kind, e.summary) for e in events] == expected


GEMINI_DOC_LINES = [
    # Shapes from the Gemini CLI's headless-mode documentation (`--output-format stream-json`).
    ('{"type":"init","timestamp":"2025-10-10T12:00:00.000Z","session_id":"abc123","model":"gemini-2.0-flash-exp"}', []),
    ('{"type":"message","role":"user","content":"List files","timestamp":"2025-10-10T12:00:01.000Z"}', []),
    ('{"type":"tool_use","tool_name":"Bash","tool_id":"bash-123","parameters":{"command":"ls -la"},'
     '"timestamp":"2025-10-10T12:00:02.000Z"}', [("tool_call", "Running `ls -la`")]),
    ('{"type":"tool_use","tool_name":"write_file","tool_id":"w-1","parameters":{"file_path":"/w/project/x.py",'
     '"content":"x"}}', [("file_edit", "Writing x.py")]),
    ('{"type":"tool_result","tool_id":"bash-123","status":"success","output":"file1.txt"}', []),
    ('{"type":"message","role":"assistant","content":"Here are the files...","delta":true}',
     [("message", "Here are the files...")]),
    ('{"type":"error","severity":"warning","message":"Loop detected"}', [("error", "Loop detected")]),
    ('{"type":"result","status":"success","stats":{"total_tokens":250,"duration_ms":3000,"tool_calls":1}}',
     [("result", "done")]),
    ('{"type":"result","status":"error","error":{"type":"FatalAuthenticationError","message":"bad key"}}',
     [("result", "bad key")]),
]


@pytest.mark.parametrize(("line", "expected"), GEMINI_DOC_LINES)
def test_gemini_documented_lines(line: str, expected: list[tuple[str, str]]) -> None:
    events = get_agent("gemini").parse_line(line, cwd="/w/project")
    assert [(e.kind, e.summary) for e in events] == expected


AMP_DOC_LINES = [
    # Amp's --stream-json is documented as Claude Code-compatible; tool names are Amp's own.
    ('{"type":"system","subtype":"init","cwd":"/w/project","session_id":"T-1","tools":["Bash","edit_file"]}', []),
    ('{"type":"assistant","message":{"type":"message","role":"assistant","content":[{"type":"tool_use",'
     '"id":"toolu_1","name":"edit_file","input":{"path":"/w/project/a.py","old_str":"a","new_str":"b"}}]},'
     '"parent_tool_use_id":null,"session_id":"T-1"}', [("file_edit", "Editing a.py")]),
    ('{"type":"assistant","message":{"content":[{"type":"tool_use","id":"toolu_2","name":"create_file",'
     '"input":{"path":"/w/project/n.py","content":"x"}}]}}', [("file_edit", "Writing n.py")]),
    ('{"type":"result","subtype":"success","duration_ms":2000,"is_error":false,"num_turns":2,'
     '"result":"Fixed it.","session_id":"T-1"}', [("result", "Fixed it.")]),
    ('{"type":"result","subtype":"error_during_execution","is_error":true,"error":"Out of credits"}',
     [("result", "Out of credits")]),
]


@pytest.mark.parametrize(("line", "expected"), AMP_DOC_LINES)
def test_amp_documented_lines(line: str, expected: list[tuple[str, str]]) -> None:
    events = get_agent("amp").parse_line(line, cwd="/w/project")
    assert [(e.kind, e.summary) for e in events] == expected


GARBAGE = ["not json at all", "[1, 2, 3]", '"a string"', "{broken", '{"type": 42}',
           '{"item": null, "type": "item.started"}', '{"type":"assistant","message":{"content":"oops"}}',
           '{"type":"tool_use","parameters":[1]}', "\x00\x1b[31m", "[" * 5000]


@pytest.mark.parametrize("name", sorted(AGENTS))
@pytest.mark.parametrize("line", GARBAGE)
def test_parsers_never_raise(name: str, line: str) -> None:
    events = AGENTS[name].parse_line(line)
    assert all(isinstance(e, AgentEvent) for e in events)


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_blank_lines_are_ignored(name: str) -> None:
    assert AGENTS[name].parse_line("   ") == []


def test_unparseable_json_agent_line_is_raw() -> None:
    assert get_agent("claude").parse_line("Warning: something odd") == [
        AgentEvent("raw", "Warning: something odd", {"line": "Warning: something odd"})]


def test_command_lines_are_messages() -> None:
    events = get_agent("command", command=["true"]).parse_line("editing README.md")
    assert [(e.kind, e.summary) for e in events] == [("message", "editing README.md")]
