"""Token usage and cost an agent reports in its stream, summed over a run; pure, no I/O.

Parsers put what one event reports in its data, as an increment:
`data["tokens"] = {"input": int, "output": int}` and, where the agent prices its own calls,
`data["cost_usd"] = float`. Claude Code and Amp report once, on their result line (totals of the
run, cost included); Codex per turn (`turn.completed`); Gemini CLI once, in its result's stats;
opencode per step (`step_finish`, cost included). Copilot CLI's JSON output carries no token
counts: its usage is for a gateway's count to give.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.agents.base import AgentEvent


@dataclass(frozen=True)
class Usage:
    """Tokens in and out, and the cost in USD; None where nothing was reported."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None

    def __add__(self, other: Usage) -> Usage:
        return Usage(_plus(self.input_tokens, other.input_tokens), _plus(self.output_tokens, other.output_tokens),
                     _plus(self.cost_usd, other.cost_usd))

    @property
    def reported(self) -> bool:
        """Whether anything was reported at all."""
        return any(v is not None for v in (self.input_tokens, self.output_tokens, self.cost_usd))


def _plus(a: Any, b: Any) -> Any:
    """a + b, where None is "not reported" rather than zero."""
    if a is None:
        return b
    return a if b is None else a + b


def count(value: Any) -> int | None:
    """A non-negative token count, or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def dollars(value: Any) -> float | None:
    """A non-negative cost, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return float(value)


def tokens(input_tokens: Any, output_tokens: Any) -> dict[str, int] | None:
    """The `tokens` entry of an event's data, or None when neither count is a count."""
    found = {k: v for k, v in (("input", count(input_tokens)), ("output", count(output_tokens))) if v is not None}
    return found or None


def usage_data(input_tokens: Any, output_tokens: Any, cost: Any = None) -> dict[str, Any]:
    """The `tokens` and `cost_usd` entries for an event's data (empty when nothing is reported)."""
    data: dict[str, Any] = {}
    found = tokens(input_tokens, output_tokens)
    if found:
        data["tokens"] = found
    if dollars(cost) is not None:
        data["cost_usd"] = dollars(cost)
    return data


def sum_counts(usage: Mapping[str, Any], *keys: str) -> int | None:
    """The sum of the counts under keys (e.g. input plus cache reads), None when none is a count."""
    found = [c for c in (count(usage.get(k)) for k in keys) if c is not None]
    return sum(found) if found else None


def usage_of(event: AgentEvent) -> Usage:
    """What one event reports (an increment), Usage() when nothing."""
    found = event.data.get("tokens")
    found = found if isinstance(found, dict) else {}
    return Usage(count(found.get("input")), count(found.get("output")), dollars(event.data.get("cost_usd")))


def claude_usage(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Claude Code's (and Amp's) result line: input counts cache writes and reads; total_cost_usd is the run's."""
    usage = obj.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    input_tokens = sum_counts(usage, "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return usage_data(input_tokens, usage.get("output_tokens"), obj.get("total_cost_usd"))
