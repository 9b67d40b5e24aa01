"""Why an agent run failed, in one sentence that names the agent, the cause and the fix.

A pure classifier over what the run left behind; no I/O. Its inputs:

- the parsed `AgentEvent`s of the run (only kinds error, warning and result are read: an agent's
  own messages may talk about rate limits without having hit one). Parsers may put a structured
  HTTP status in `data["status"]` (or Claude Code's `api_error_status` / `error_status`) and a
  vendor error code in `data["error"]`; otherwise the status is read from the text;
- the exit code, and the last lines of standard error (read only when the run failed);
- `upstream`: the HTTP statuses the model API answered, in order, as a credential gateway between
  the agent and its upstream sees them (e.g. `[401]`, or `[200, 200, 429]`). The gateway knows
  what the agent may hide (a CLI that retries a 401 five times and then says "stream error");
  an empty sequence means "no gateway view";
- `blocked`: the network destinations the sandbox refused during the run (violation resources);
- what the sentence needs: the agent's display name, where its credential came from, the model;
- `budget_ran_out()`: called by whoever stops forwarding when the session's budget is spent (the
  gateway, through `runner.run_state.Run.watch`); from then on the verdict is that, whatever the
  agent made of the refusal.

`FailureWatch` collects the evidence line by line; its `fatal` property says, as soon as it is
seen, that retrying cannot help (a rejected key, an unknown model), so the caller may stop the
agent at once instead of waiting through its retries. `verdict()` gives the `AgentFailure`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from runner.agents.base import AgentEvent

Cause = Literal["budget", "blocked", "expired", "billing", "credential", "model", "quota", "rate_limit", "network"]
CredentialSource = Literal["subscription", "api_key", "environment"]
EVIDENCE_KINDS = ("error", "warning", "result")
FATAL: tuple[Cause, ...] = ("budget", "blocked", "expired", "billing", "credential", "model")
# When a run shows several causes, the one a user must act on first wins.
PRIORITY: tuple[Cause, ...] = ("blocked", "expired", "billing", "credential", "model", "quota", "network", "rate_limit")
STDERR_LINES = 40
EVIDENCE_LIMIT = 200

# Phrases (lower-cased) by cause, from the real CLIs' output against each vendor's error bodies.
PHRASES: dict[Cause, tuple[str, ...]] = {
    "blocked": ("blocked by the sesame sandbox",),  # the egress proxy's 403 body, passed on by the CLIs
    "expired": ("oauth token has expired", "token has expired", "token expired", "subscription has expired",
                "subscription expired", "plan has expired", "refresh token", "re-authenticate", "reauthenticate",
                "invalid_grant", "sign in again", "log in again"),
    "billing": ("credit balance is too low", "billing_error", "payment required", "insufficient credit",
                "out of credits", "no credits"),
    "credential": ("authentication_error", "authentication_failed", "invalid api key", "invalid x-api-key",
                   "incorrect api key", "api key not valid", "api_key_invalid", "invalid_api_key",
                   "permission_error", "permission_denied", "unauthorized", "failed to authenticate",
                   "invalid bearer token", "please run /login", "not logged in", "bad credentials",
                   "api_key_service_blocked", "forbidden"),
    "model": ("model_not_found", "modelnotfounderror", "is not found for api version", "issue with the selected model",
              "unknown model", "model not found", "requested model", "the model `", "not_found_error", "invalid model",
              "unsupported model", "model is not supported", "providermodelnotfounderror"),
    "quota": ("insufficient_quota", "quota exceeded", "exceeded your current quota", "exhausted your daily quota",
              "resource_exhausted", "terminalquotaerror", "quota_exceeded", "usage limit", "monthly limit", "quota"),
    "rate_limit": ("rate_limit", "rate limit", "rate-limit", "too many requests", "ratelimit", "overloaded"),
    "network": ("unable to connect", "connection refused", "econnrefused", "enotfound", "eai_again",
                "connection error", "fetch failed", "error sending request", "stream disconnected",
                "tunneling socket", "proxy", "getaddrinfo", "network error", "timed out connecting",
                "econnreset", "socket hang up", "dns error"),
}
STATUS_CAUSES: dict[int, Cause] = {401: "credential", 402: "billing", 403: "credential", 404: "model",
                                   429: "rate_limit"}
STATUS_PATTERNS = (
    re.compile(r"\bstatus(?:code)?[\"']?\s*[:=]?\s*(\d{3})\b", re.I),
    re.compile(r"\b(?:api error|error|code)[\"']?\s*[:=]?\s*\(?(\d{3})\b", re.I),
    re.compile(r"\((\d{3})\)"),
    re.compile(r"\b(\d{3}) (?:unauthorized|forbidden|too many requests|not found|payment required)\b", re.I),
)
STATUS_KEYS = ("status", "api_error_status", "error_status", "statusCode", "status_code", "code")
TEXT_KEYS = ("error", "message", "text", "result", "subtype", "name", "errorType", "data", "responseBody")
NESTED_KEYS = ("error", "data")
MODEL_IN_TEXT = re.compile(r"(?:model[:\s(]+|models/)[`'\"]?([\w.\-/:@]+?)[`'\")]?(?=[\s,]|\.\s|\.?$)", re.I)


@dataclass(frozen=True)
class AgentFailure:
    """A recognised failure: the cause, the HTTP status when one is known, the agent's own words."""

    agent: str
    cause: Cause
    status: int | None = None
    detail: str = ""
    source: CredentialSource | None = None
    model: str | None = None
    blocked: tuple[str, ...] = ()
    budget_usd: float | None = None
    spent_usd: float | None = None  # what the credential gateway counted when the budget ran out

    @property
    def fatal(self) -> bool:
        """Retrying with the same credential and model cannot help."""
        return self.cause in FATAL

    @property
    def sentence(self) -> str:
        """One sentence: the agent, the cause (with its status) and the fix."""
        return describe(self)


@dataclass(frozen=True)
class Clue:
    """One piece of evidence: a cause, maybe a status, and the text it came from."""

    cause: Cause
    status: int | None
    text: str


def describe(f: AgentFailure) -> str:
    """The sentence for a failure."""
    why = f"({f.status})" if f.status else {"network": "(no connection)", "rate_limit": "(rate limit)",
                                           "quota": "(quota)", "model": "(unknown model)",
                                           "billing": "(billing)"}.get(f.cause, "(refused)")
    if f.cause == "budget":
        budget = f" of ${f.budget_usd:,.2f}" if f.budget_usd else ""
        spent = f" (${f.spent_usd:,.2f} spent)" if f.spent_usd is not None else ""
        return f"{f.agent} was stopped: the budget{budget} ran out{spent}: raise it with --budget or SESSION_BUDGET_USD"
    if f.cause == "credential":
        return _credential_sentence(f.agent, f.source, why)
    if f.cause == "expired":
        status = f" ({f.status})" if f.status else ""
        return (f"{f.agent}'s subscription has expired{status}: sign in again and store the new token under "
                "Credentials")
    if f.cause == "billing":
        return (f"{f.agent}'s account has no credit left {why}: add credit or renew the plan with the provider, "
                "or store another credential under Credentials")
    if f.cause == "model":
        model = f"`{f.model}`" if f.model else "the chosen model"
        return (f"{f.agent} cannot use {model}: it does not exist or the credential has no access to it {why}; "
                "choose another model with --model or in Settings")
    if f.cause == "quota":
        return (f"{f.agent}'s quota is used up {why}: check the plan and billing with the provider, or store "
                "another credential under Credentials")
    if f.cause == "rate_limit":
        return (f"{f.agent} was rate-limited by its model API {why}: try again in a few minutes, or raise the "
                "limit with the provider")
    if f.blocked or f.cause == "blocked":
        hosts = ", ".join(f.blocked[:3]) or "its model API"
        return (f"{f.agent} could not reach {hosts} (blocked by the sandbox): add it to the allowed domains "
                "under /admin/sandbox, or point the agent's base URL at an allowed host")
    return (f"{f.agent} could not reach its model API {why}: check the agent's base URL in Settings and that "
            "the service answers")


def _credential_sentence(agent: str, source: CredentialSource | None, why: str) -> str:
    if source == "subscription":
        return (f"{agent}'s subscription token was rejected {why}: sign in again and store the new token "
                "under Credentials")
    if source == "environment":
        return (f"{agent}'s API key from the server's environment was rejected {why}: replace it there, "
                "or store a key under Credentials")
    if source is None:
        return f"{agent} has no credential {why}: store an API key or a subscription under Credentials"
    return f"{agent}'s API key was rejected {why}: replace it under Credentials"


def status_in(data: dict[str, Any], text: str) -> int | None:
    """An HTTP error status from an event's structured data, else from its text."""
    for inner in _nested(data):
        for key in STATUS_KEYS:
            value = inner.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
                return value
    for pattern in STATUS_PATTERNS:
        for match in pattern.finditer(text):
            status = int(match.group(1))
            if 400 <= status <= 599:
                return status
    return None


def cause_in(text: str, status: int | None) -> Cause | None:
    """The cause a piece of evidence names: its words first, its status second."""
    lowered = text.lower()
    found = [cause for cause in PRIORITY if any(p in lowered for p in PHRASES[cause])]
    if "network" in found and ("proxy" in lowered or "tunnel" in lowered):
        return "network"  # the sandbox's egress proxy refused the connection: its 403 is not the API's
    if "network" in found and status is not None:
        found.remove("network")  # an HTTP answer arrived: the words describe the connection, not the cause
    if found:
        return found[0]
    return STATUS_CAUSES.get(status) if status is not None else None


def clue_of(event: AgentEvent) -> Clue | None:
    """What one parsed event says about a failure, if anything."""
    if event.kind not in EVIDENCE_KINDS or (event.kind == "result" and not event.data.get("is_error")):
        return None
    text = " ".join(filter(None, [event.summary, *_texts(event.data)]))
    status = status_in(event.data, text)
    cause = cause_in(text, status)
    return Clue(cause, status, event.summary or text[:200]) if cause else None


def _nested(data: dict[str, Any], depth: int = 3) -> Iterable[dict[str, Any]]:
    """data and the objects under its error and data keys (opencode: error.data; Copilot: data)."""
    yield data
    if depth > 0:
        for key in NESTED_KEYS:
            inner = data.get(key)
            if isinstance(inner, dict):
                yield from _nested(inner, depth - 1)


def _texts(data: dict[str, Any]) -> Iterable[str]:
    """The strings of an event's data worth reading (error codes, messages)."""
    for inner in _nested(data):
        for key in TEXT_KEYS:
            value = inner.get(key)
            if isinstance(value, str):
                yield value


@dataclass
class FailureWatch:
    """Evidence of one run, gathered as its output arrives; `verdict()` at the end."""

    agent: str
    source: CredentialSource | None = None
    model: str | None = None
    clues: deque[Clue] = field(default_factory=lambda: deque(maxlen=EVIDENCE_LIMIT))
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_LINES))
    errored: bool = False  # an error event or a failed result was seen
    stopped_for: AgentFailure | None = None  # the caller stopped the agent for this fatal failure
    budget_usd: float | None = None
    budget_spent: bool = False
    spent_usd: float | None = None
    blocked_hosts: list[str] = field(default_factory=list)  # destinations the sandbox refused, as they happen

    def see_blocked(self, resource: str) -> None:
        """Take one network destination the sandbox refused (the first few are kept)."""
        if resource not in self.blocked_hosts and len(self.blocked_hosts) < 10:
            self.blocked_hosts.append(resource)

    def budget_ran_out(self, spent_usd: float | None = None) -> None:
        """The session's budget is spent (spent_usd by the gateway's count) and its model API no longer
        answers: that is the failure now."""
        self.budget_spent, self.spent_usd = True, spent_usd

    def see(self, event: AgentEvent) -> Clue | None:
        """Take one parsed event; returns its clue, if it has one."""
        if event.kind == "error" or (event.kind == "result" and event.data.get("is_error")):
            self.errored = True
        clue = clue_of(event)
        if clue is not None:
            self.clues.append(clue)
        return clue

    def see_stderr(self, line: str) -> None:
        """Take one line of standard error."""
        if line.strip():
            self.stderr.append(line)

    @property
    def fatal(self) -> AgentFailure | None:
        """A failure seen so far that no retry can mend, or None."""
        if self.budget_spent:
            return self._budget()
        failure = self._from(list(self.clues), (), ())
        return failure if failure is not None and failure.fatal else None

    def _budget(self) -> AgentFailure:
        return AgentFailure(self.agent, "budget", None, "", self.source, self.model, budget_usd=self.budget_usd,
                            spent_usd=self.spent_usd)

    def verdict(self, exit_code: int, upstream: Sequence[int] = (), blocked: Sequence[str] = ()) -> AgentFailure | None:
        """The failure of a finished run, or None when it did not fail or for no reason recognised here."""
        if self.budget_spent:
            return self._budget()
        if exit_code == 0 and not self.errored and not _refused(upstream):
            return None
        clues = list(self.clues) + [c for c in (_stderr_clue(self.stderr),) if c is not None]
        return self._from(clues, upstream, blocked)

    def _from(self, clues: list[Clue], upstream: Sequence[int], blocked: Sequence[str]) -> AgentFailure | None:
        gateway = _upstream_clue(upstream)
        if gateway is not None:
            clues = [*clues, gateway]
        if not clues and (blocked or self.blocked_hosts):
            clues = [Clue("network", None, "")]
        if not clues:
            return None
        best = min(clues, key=lambda c: PRIORITY.index(c.cause))
        if gateway is not None and best.cause == "network":
            best = gateway  # the upstream did answer: what the agent took for a lost connection was a refusal
        status = best.status or next((c.status for c in clues if c.cause == best.cause and c.status), None)
        status = status or (gateway.status if gateway is not None else None)
        model = self.model or _model_in(best.text)
        blocked = [*self.blocked_hosts, *(b for b in blocked if b not in self.blocked_hosts)]
        return AgentFailure(self.agent, best.cause, status, best.text, self.source, model,
                            tuple(blocked) if best.cause in ("network", "blocked") else ())


def _refused(upstream: Sequence[int]) -> bool:
    """The upstream's last answer was an error the classifier names."""
    return bool(upstream) and upstream[-1] in STATUS_CAUSES


def _upstream_clue(upstream: Sequence[int]) -> Clue | None:
    """The gateway's view: its last error status, when the upstream's last answer was one."""
    if not _refused(upstream):
        return None
    return Clue(STATUS_CAUSES[upstream[-1]], upstream[-1], "")


def _stderr_clue(lines: Iterable[str]) -> Clue | None:
    """A clue from the tail of standard error (stack traces carry the status and the error's class)."""
    text = "\n".join(lines)
    status = status_in({}, text)
    cause = cause_in(text, status)
    return Clue(cause, status, "") if cause else None


def _model_in(text: str) -> str | None:
    """The model an error message names ("model: claude-x", "models/gemini-x", "model 'gpt-x'")."""
    match = MODEL_IN_TEXT.search(text)
    return match.group(1) if match else None
