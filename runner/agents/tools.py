"""Turn a tool call of any agent into a short human summary ("Editing tests/test_http.py")."""

from __future__ import annotations

from typing import Any

from runner.agents.base import AgentEvent, relative_path, shorten

PATH_KEYS = ("file_path", "path", "filePath", "absolute_path", "notebook_path", "target_file", "file")
COMMAND_KEYS = ("command", "cmd", "script")
PATTERN_KEYS = ("pattern", "query", "regex", "glob", "url", "description")

# Tool names (lower-cased, across vendors) that change files, and their verb.
EDIT_TOOLS = {
    "write": "Writing", "write_file": "Writing", "create_file": "Writing", "create": "Writing",
    "edit": "Editing", "multiedit": "Editing", "edit_file": "Editing", "replace": "Editing",
    "str_replace": "Editing", "str_replace_editor": "Editing", "notebookedit": "Editing",
    "apply_patch": "Patching", "patch": "Patching", "undo_edit": "Reverting",
}
# Tool names that do something else, and their verb.
OTHER_TOOLS = {
    "bash": "Running", "shell": "Running", "run_shell_command": "Running", "exec_command": "Running",
    "read": "Reading", "read_file": "Reading", "view": "Reading", "read_many_files": "Reading",
    "glob": "Finding", "list": "Listing", "ls": "Listing", "list_directory": "Listing",
    "grep": "Searching for", "search_file_content": "Searching for", "codebase_search_agent": "Searching for",
    "webfetch": "Fetching", "web_fetch": "Fetching", "read_web_page": "Fetching",
    "websearch": "Searching the web for", "google_web_search": "Searching the web for",
    "web_search": "Searching the web for",
    "task": "Delegating", "agent": "Delegating",
}


def first_value(args: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first string value among keys of args."""
    for key in keys:
        value = args.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return " ".join(value)
    return None


def tool_event(name: str, args: Any, *, cwd: str | None = None, extra: dict[str, Any] | None = None) -> AgentEvent:
    """A file_edit or tool_call event for a tool the model invoked."""
    args = args if isinstance(args, dict) else {}
    data = {"tool": name, "input": args, **(extra or {})}
    key = name.lower()
    path = first_value(args, PATH_KEYS)
    if key in EDIT_TOOLS:
        shown = relative_path(path, cwd) if path else "files"
        return AgentEvent("file_edit", shorten(f"{EDIT_TOOLS[key]} {shown}"), {**data, "path": path})
    return AgentEvent("tool_call", tool_summary(key, name, args, path, cwd), data)


def tool_summary(key: str, name: str, args: dict[str, Any], path: str | None, cwd: str | None) -> str:
    """Summary line for a tool that does not edit files."""
    if key in ("todowrite", "todo_write", "update_todos"):
        return "Updating the to-do list"
    verb = OTHER_TOOLS.get(key, f"Using {name}")
    command = first_value(args, COMMAND_KEYS)
    if command and verb == "Running":
        return shorten(f"Running `{shorten(command, 80)}`")
    target = relative_path(path, cwd) if path else first_value(args, PATTERN_KEYS)
    return shorten(f"{verb} {target}" if target else verb)
