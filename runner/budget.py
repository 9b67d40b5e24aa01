"""A session's budget: the credential gateway's tokens priced per model (bot.pricing), and the stop once it is spent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bot.models import Session
from bot.pricing import parse_prices, price_in
from bot.sessions import budget_left
from runner.agents.base import Agent
from runner.agents.usage import Usage
from runner.run_state import PriceOf, Run
from runner.sandbox.gateway import BudgetHook, GatewayStats

log = logging.getLogger(__name__)


async def session_budget_hook(state: Run, agent: Agent, model: str | None) -> BudgetHook | None:
    """The gateway's BudgetHook for a session with a budget: its tokens so far at the session model's price,
    or, with no model chosen, at the price of the model each request named. A model priced nowhere
    (bot.pricing, MODEL_PRICES) is not guessed at: the progress message says the budget cannot be enforced."""
    session, budget = state.session, state.session.budget_usd
    if budget is None or not agent.binary:
        return None
    prices = parse_prices(state.services.settings.MODEL_PRICES)
    price = price_in(model, prices)
    if model and price is None:
        await state.warn(f"the budget of ${budget:,.2f} cannot be enforced: {unpriced_model(model)}")
        return None
    if price is not None:
        state.price_of = lambda requested: price  # every token at the session model's price
    else:
        state.price_of = lambda requested: price_in(requested, prices)  # no model chosen: each request's own

    def ran_out(spent: float) -> None:
        if state.budget_stop is None:
            log.info("session %s: the budget of $%.2f ran out ($%.2f spent); stopping the agent",
                     session.id, budget, spent)
            state.budget_stop = asyncio.get_running_loop().create_task(stop_for_budget(state, spent))

    def unpriced(requested: str) -> None:
        what = unpriced_model(requested) if requested else f"a request of {agent.display_name} named no model"
        state.budget_warning = asyncio.get_running_loop().create_task(
            state.warn(f"the budget of ${budget:,.2f} is no longer enforced: {what}"))

    return budget_hook(session, state.price_of, ran_out, unpriced)


def unpriced_model(model: str) -> str:
    """Why a budget cannot be priced for model."""
    return f"the price of `{model}` is unknown: add it to MODEL_PRICES as model=IN/OUT (USD per million tokens)"


def spent_on(by_model: dict[str, tuple[int, int]], price_of: PriceOf) -> tuple[float, str | None]:
    """USD spent on the tokens per model at price_of's prices, and the first model it has no price for."""
    spent = 0.0
    for requested, (input_tokens, output_tokens) in by_model.items():
        price = price_of(requested)
        if price is None:
            return spent, requested
        spent += price.cost(input_tokens, output_tokens)
    return spent, None


def budget_hook(session: Session, price_of: PriceOf, ran_out: Callable[[float], None],
                unpriced: Callable[[str], None]) -> BudgetHook:
    """A BudgetHook: the gateway's tokens so far (per model its requests named) priced by price_of, against
    bot.sessions.budget_left; once nothing is left it says no and calls ran_out(spent USD) at each refusal.
    A model price_of has no price for is said once (unpriced(model)) and from then on nothing is enforced.
    It runs on the event loop: the callbacks must not block."""
    enforced = True

    def hook(stats: GatewayStats) -> bool:
        nonlocal enforced
        if not enforced:
            return True
        spent, unknown = spent_on(stats.by_model, price_of)
        if unknown is not None:
            enforced = False
            unpriced(unknown)
            return True
        left = budget_left(session, spent)
        if left is None or left > 0:
            return True
        ran_out(spent)
        return False

    return hook


def gateway_usage(state: Run) -> Usage:
    """What the credential gateway counted: its tokens, priced when every model they went to has a price."""
    stats = state.agent_run.gateway_stats if state.agent_run is not None else None
    if stats is None or not stats.by_model:
        return Usage()
    spent, unknown = spent_on(stats.by_model, state.price_of) if state.price_of is not None else (0.0, "")
    return Usage(stats.input_tokens, stats.output_tokens, spent if unknown is None else None)


async def stop_for_budget(state: Run, spent_usd: float | None = None) -> None:
    """For the credential gateway, once it stops forwarding because bot.sessions.budget_left is 0: stop
    the agent; the session ends error saying the budget ran out (spent_usd by the gateway's count), the
    work so far committed and pushed."""
    watch = state.watch
    if watch is None or watch.stopped_for is not None:
        return
    watch.budget_ran_out(spent_usd)
    watch.stopped_for = watch.fatal
    if state.agent_run is not None:
        await state.agent_run.kill()
