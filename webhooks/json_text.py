"""Whether a JSON document's strings are text a database can store.

JSON may escape half a UTF-16 pair (`"\\ud800"`): json reads it into a str that no UTF-8 encoder writes, so
the insert that stores it fails after the request was half handled (a 500 and a logged traceback). The
entry points refuse such bodies up front with a 400 that says why."""

from __future__ import annotations

import json
from typing import Any

from bot.setting_types import not_utf8

LONE_SURROGATE = "the body escapes a lone surrogate (half a UTF-16 pair, such as \\ud800), which is not text"


def is_text(data: Any) -> bool:
    """False when a string (a key or a value) of a document json read holds a lone surrogate. RecursionError
    where it is nested deeper than the encoder recurses."""
    return not_utf8(json.dumps(data, ensure_ascii=False)) is None
