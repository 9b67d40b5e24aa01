"""Settings that change while Sesame runs: noticing that the config file changed (one stat at most every
interval), and which changed keys apply at once (Key.live) and which wait for a restart. bot.settings'
Settings.refresh and Settings.apply use these; the process re-reads the file on its own (no signal)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.setting_types import Key

Stat = tuple[int, int, int]  # inode, size, mtime in ns: a rewrite in place or a replacement both change it


def file_stat(path: Path) -> Stat | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class ConfigWatch:
    """Whether the config file is worth reading again: asked at most every min_interval seconds, it says
    yes once per change of the file (or of which file is in use)."""

    seen: Stat | None = None
    checked: float = 0.0

    def due(self, min_interval: float) -> bool:
        now = time.monotonic()
        if now - self.checked < min_interval:
            return False
        self.checked = now
        return True

    def changed(self, path: Path, same_file: bool) -> bool:
        """True when `path` changed since it was last seen (then it counts as seen, whether or not it loads)."""
        seen = file_stat(path)
        if seen is None or (seen == self.seen and same_file):
            return False
        self.seen = seen
        return True


@dataclass
class LiveSplit:
    """What a fresh read of the config means: `changed` live keys take their new value now, `pending`
    keys hold a value that waits for a restart, `settled` keys no longer wait (the file is back)."""

    changed: list[str] = field(default_factory=list)
    pending: dict[str, Any] = field(default_factory=dict)
    settled: list[str] = field(default_factory=list)


def split_live(keys: Iterable[Key], current: Mapping[str, Any], fresh: Mapping[str, Any]) -> LiveSplit:
    """Compare the values in force with a fresh read, key by key (pure)."""
    split = LiveSplit()
    for key in keys:
        new, old = fresh.get(key.name), current.get(key.name)
        if key.live:
            if new != old:
                split.changed.append(key.name)
        elif new != old:
            split.pending[key.name] = new
        else:
            split.settled.append(key.name)
    return split
