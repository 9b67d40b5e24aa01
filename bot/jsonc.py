"""Edit a JSONC (JSON with comments and trailing commas) document in place: values are replaced,
added or removed at dotted paths, and every comment, blank line and indentation the user wrote stays.

There is no well-kept round-trip JSONC library for Python (json-five installs over the `json5` module
that reads our files), so this is a small editor: a tokenizer that knows strings and comments, a
parser that records where each member's value starts and ends, and text splices."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(r'''
    (?P<ws>\s+)
  | (?P<line>//[^\n]*)
  | (?P<block>/\*.*?\*/)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<punct>[{}\[\]:,])
  | (?P<atom>[^\s{}\[\]:,"/]+)
''', re.VERBOSE | re.DOTALL)


class JsoncError(ValueError):
    """The text is not JSONC this editor understands."""


@dataclass
class _Object:
    """An object's span and its members: key -> (key start, value start, value end, value if an object)."""

    start: int
    end: int = -1
    members: dict[str, tuple[int, int, int, _Object | None]] = field(default_factory=dict)


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every token but whitespace and comments."""
    found, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise JsoncError(f"unexpected character at offset {pos}")
        kind = match.lastgroup or ""
        if kind not in ("ws", "line", "block"):
            found.append((kind, match.start(), match.end()))
        pos = match.end()
    return found


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.tokens, self.i = text, _tokens(text), 0

    def peek(self) -> tuple[str, int, int]:
        if self.i >= len(self.tokens):
            raise JsoncError("the document ends too early")
        return self.tokens[self.i]

    def take(self, expected: str | None = None) -> tuple[str, int, int]:
        token = self.peek()
        if expected is not None and self.text[token[1]:token[2]] != expected:
            raise JsoncError(f"expected {expected!r} at offset {token[1]}")
        self.i += 1
        return token

    def value(self) -> tuple[int, int, _Object | None]:
        """Parse one value: (start, end, the object if it is one)."""
        kind, start, end = self.peek()
        char = self.text[start:end]
        if char == "{":
            obj = self.obj()
            return obj.start, obj.end, obj
        if char == "[":
            self.take("[")
            while self.text[self.peek()[1]:self.peek()[2]] != "]":
                self.value()
                if self.text[self.peek()[1]:self.peek()[2]] == ",":
                    self.take(",")
            return start, self.take("]")[2], None
        if kind in ("string", "atom"):
            self.take()
            return start, end, None
        raise JsoncError(f"unexpected {char!r} at offset {start}")

    def obj(self) -> _Object:
        node = _Object(self.take("{")[1])
        while True:
            kind, start, end = self.peek()
            if self.text[start:end] == "}":
                node.end = self.take("}")[2]
                return node
            if kind != "string":
                raise JsoncError(f"expected a member name at offset {start}")
            self.take()
            key = json.loads(self.text[start:end])
            self.take(":")
            value_start, value_end, child = self.value()
            node.members[key] = (start, value_start, value_end, child)
            if self.text[self.peek()[1]:self.peek()[2]] == ",":
                self.take(",")


def _root(text: str) -> _Object:
    parser = _Parser(text)
    root = parser.obj()
    if parser.i != len(parser.tokens):
        raise JsoncError("text after the top-level object")
    return root


def _nested(parts: list[str], value: Any) -> Any:
    for part in reversed(parts):
        value = {part: value}
    return value


def set_path(text: str, path: str, value: Any) -> str:
    """The text with the member at the dotted path set to value (None removes it), the rest untouched."""
    if not text.strip():
        text = "{}\n"
    node, parts = _root(text), path.split(".")
    for depth, part in enumerate(parts):
        member = node.members.get(part)
        last = depth == len(parts) - 1
        if member is not None and (last or member[3] is None):
            _key, value_start, value_end, _ = member
            if value is None:
                return _remove(text, node, part) if last else text
            if last:
                return text[:value_start] + json.dumps(value) + text[value_end:]
            new = json.dumps(_nested(parts[depth + 1:], value))  # a non-object in the way is replaced
            return text[:value_start] + new + text[value_end:]
        if member is None:
            if value is None:
                return text
            return _insert(text, node, part, _nested(parts[depth + 1:], value))
        assert member[3] is not None
        node = member[3]
    return text


def _insert(text: str, node: _Object, key: str, value: Any) -> str:
    """Add a member at the end of an object: on a line of its own in the indentation of the first member
    (after any comment that ends the last member's line), or inline in a one-line object."""
    closing = node.end - 1
    entry = f"{json.dumps(key)}: {json.dumps(value)}"
    if not node.members:
        return text[:closing] + entry + text[closing:]
    last_end = max(end for _s, _v, end, _c in node.members.values())
    first_key = min(start for start, _v, _e, _c in node.members.values())
    line_start = text.rfind("\n", 0, first_key) + 1
    own_lines = line_start > node.start and text[line_start:first_key].strip() == ""
    after = text[last_end:closing]
    trailing = after.lstrip().startswith(",")
    pos = last_end + after.index(",") + 1 if trailing else last_end
    if not own_lines:
        return text[:pos] + ("" if trailing else ",") + " " + entry + ("," if trailing else "") + text[pos:]
    indent = text[line_start:first_key]
    line_end = text.find("\n", pos, closing)
    rest = text[pos:line_end] if line_end != -1 else ""
    # after the comment that ends the last member's line, if one does
    own_line = line_end != -1 and (not rest.strip() or rest.strip().startswith(("//", "/*")))
    insert_at = line_end if own_line else pos
    comma = "" if trailing else ","
    return (text[:pos] + comma + text[pos:insert_at] + "\n" + indent + entry + ("," if trailing else "")
            + text[insert_at:])


def _remove(text: str, node: _Object, key: str) -> str:
    """Drop a member with its separating comma (and its line, when it had one to itself)."""
    key_start, _value_start, value_end, _ = node.members[key]
    end = value_end
    rest = text[value_end:node.end - 1]
    if rest.lstrip().startswith(","):
        end = value_end + len(rest) - len(rest.lstrip()) + 1
        start = key_start
    else:  # the last member: the comma before it goes, unless a comment stands between
        before = text[:key_start].rstrip()
        start = len(before) - 1 if before.endswith(",") else key_start
    line_start = text.rfind("\n", 0, key_start) + 1
    line_end = text.find("\n", end)
    if line_end != -1 and text[end:line_end].strip().startswith("//"):
        end = line_end  # the comment on the member's line was about it
    if text[line_start:key_start].strip() == "" and line_end != -1 and text[end:line_end].strip() == "" \
            and start == key_start:
        start, end = line_start, line_end + 1  # the member's whole line
    return text[:start] + text[end:]
