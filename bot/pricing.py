"""What a model's tokens cost: USD per million input and output tokens, for pricing a session's budget.

The built-in table holds the default and common models of Anthropic, OpenAI and Google at their public
list prices for standard (not batch, not cached) tokens, as published on anthropic.com/pricing,
openai.com/api/pricing and ai.google.dev/gemini-api/docs/pricing; checked 2025-11-30. Where a price has
tiers by prompt length (Gemini Pro), the table holds the lower tier, so a long prompt is under-counted,
never over-charged. Cache reads and writes are priced as plain input tokens.

MODEL_PRICES adds or overrides prices per model: `model=IN/OUT` pairs, comma separated
(`my-model=1.5/6,gpt-5=1.25/10`), IN and OUT in USD per million tokens. A model is looked up by its name
as the agent gives it; a date or `-latest` suffix, an `@version` and a `provider/` or `models/` prefix
are dropped first (`claude-sonnet-4-5-20250929` is `claude-sonnet-4-5`). A model found nowhere has no
price: the caller says so and enforces nothing rather than guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

PRICES_CHECKED = "2025-11-30"
PER = 1_000_000


@dataclass(frozen=True)
class Price:
    """USD per million input tokens and per million output tokens."""

    input_usd: float
    output_usd: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for that many tokens."""
        return (input_tokens * self.input_usd + output_tokens * self.output_usd) / PER


PRICES: dict[str, Price] = {
    # Anthropic
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-opus-4": Price(15.0, 75.0),
    "claude-sonnet-4-5": Price(3.0, 15.0),
    "claude-sonnet-4": Price(3.0, 15.0),
    "claude-3-7-sonnet": Price(3.0, 15.0),
    "claude-3-5-sonnet": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-5-haiku": Price(0.8, 4.0),
    "claude-3-haiku": Price(0.25, 1.25),
    # OpenAI
    "gpt-5.1": Price(1.25, 10.0),
    "gpt-5.1-codex": Price(1.25, 10.0),
    "gpt-5.1-codex-mini": Price(0.25, 2.0),
    "gpt-5": Price(1.25, 10.0),
    "gpt-5-codex": Price(1.25, 10.0),
    "gpt-5-mini": Price(0.25, 2.0),
    "gpt-5-nano": Price(0.05, 0.4),
    "gpt-4.1": Price(2.0, 8.0),
    "gpt-4.1-mini": Price(0.4, 1.6),
    "gpt-4.1-nano": Price(0.1, 0.4),
    "gpt-4o": Price(2.5, 10.0),
    "gpt-4o-mini": Price(0.15, 0.6),
    "o3": Price(2.0, 8.0),
    "o4-mini": Price(1.1, 4.4),
    "codex-mini": Price(1.5, 6.0),
    # Google (prompts up to 200k tokens)
    "gemini-3-pro-preview": Price(2.0, 12.0),
    "gemini-2.5-pro": Price(1.25, 10.0),
    "gemini-2.5-flash": Price(0.3, 2.5),
    "gemini-2.5-flash-lite": Price(0.1, 0.4),
    "gemini-2.0-flash": Price(0.1, 0.4),
    "gemini-2.0-flash-lite": Price(0.075, 0.3),
}

_SUFFIXES = re.compile(r"(?:-\d{8}|-\d{4}-\d{2}-\d{2}|-latest|@[\w.\-]+)$")
_AMOUNT = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")
FORMAT_HINT = "Write it as model=IN/OUT in USD per million tokens, e.g. my-model=1.5/6,gpt-5=1.25/10"


def normalize(model: str) -> str:
    """The table's name for a model: lower case, no provider prefix, no date or version suffix."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    while True:
        shorter = _SUFFIXES.sub("", name)
        if shorter == name or not shorter:
            return name
        name = shorter


def parse_prices(value: Mapping[str, str] | None) -> dict[str, Price]:
    """MODEL_PRICES (model -> "IN/OUT") as prices; ValueError naming the entry that is not a price (FORMAT_HINT says
    how to write one)."""
    prices: dict[str, Price] = {}
    for model, text in (value or {}).items():
        name = normalize(model)
        amounts = str(text).strip().split("/")
        if not name or len(amounts) != 2 or not all(_AMOUNT.fullmatch(a.strip()) for a in amounts):
            raise ValueError(f"{model}={text} is not a price")
        price = Price(float(amounts[0]), float(amounts[1]))
        if not (math.isfinite(price.input_usd) and math.isfinite(price.output_usd)):
            raise ValueError(f"{model}={text} is not a price")
        prices[name] = price
    return prices


def model_price(model: str | None, overrides: Mapping[str, str] | None = None) -> Price | None:
    """The price of a model: MODEL_PRICES first, then the built-in table; None when it is in neither."""
    return price_in(model, parse_prices(overrides))


def price_in(model: str | None, overrides: Mapping[str, Price]) -> Price | None:
    """model_price with MODEL_PRICES already parsed (parse_prices)."""
    if not model:
        return None
    name = normalize(model)
    return overrides.get(name) or PRICES.get(name)
