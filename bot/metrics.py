"""Prometheus metrics (issue 18): what every process counts, and `/metrics`' text for all of them.

Each `sesame serve` process and each `sesame worker` writes its counts into METRICS_DIR (prometheus_client's
multiprocess mode: one mmap file per process and kind); a scrape of any web process merges every file there,
so the figures are those of all processes on the machine that share the directory. Without a directory
(tests that build the app in-process) the counts are this process's own.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LOCAL = CollectorRegistry(auto_describe=True)  # this process's own counts, when no directory is shared
_state: dict[str, str] = {}

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, float("inf"))

DELIVERIES = Counter("sesame_github_deliveries", "GitHub webhook deliveries, by event and outcome",
                     ["event", "outcome"], registry=_LOCAL)
SESSIONS_ENDED = Counter("sesame_sessions_ended", "sessions that ended, by final state and agent",
                         ["state", "agent"], registry=_LOCAL)
SESSION_SECONDS = Histogram("sesame_session_duration_seconds", "time from claim to the end of a session",
                            ["state", "agent"], buckets=DURATION_BUCKETS, registry=_LOCAL)
STEP_SECONDS = Histogram("sesame_step_duration_seconds", "time each pipeline step took",
                         ["step", "status"], buckets=DURATION_BUCKETS, registry=_LOCAL)
SANDBOX_START = Histogram("sesame_sandbox_start_seconds", "time to assemble a sandbox and start the agent in it",
                          ["agent"], buckets=START_BUCKETS, registry=_LOCAL)
VIOLATIONS = Counter("sesame_violations", "sandbox violations, by kind", ["kind"], registry=_LOCAL)
TOKENS = Counter("sesame_agent_tokens", "model tokens agents reported, by agent and direction",
                 ["agent", "direction"], registry=_LOCAL)
COST = Counter("sesame_agent_cost_usd", "what agents reported spending, in USD", ["agent"], registry=_LOCAL)
API_CALLS = Counter("sesame_api_calls", "requests to GitHub's and Slack's APIs, by service and status",
                    ["service", "status"], registry=_LOCAL)
API_ERRORS = Counter("sesame_api_errors", "failed requests to GitHub's and Slack's APIs (an error status or "
                     "no answer)", ["service", "reason"], registry=_LOCAL)


def share_across_processes(directory: Path) -> None:
    """Count into `directory`, merged with every other process's files at a scrape. Called once at a
    process's start, before anything is counted (values made earlier would stay in this process only)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _state["dir"] = str(directory)
    pid = os.getpid()
    atexit.register(lambda: mark_process_dead(pid, str(directory)))  # type: ignore[no-untyped-call]


def shared_directory() -> str | None:
    return _state.get("dir")


class _Live(Collector):
    """Gauges read at scrape time (the queue, the sessions by state): the same for whichever process answers."""

    def __init__(self, families: Iterable[GaugeMetricFamily]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.families


def sessions_gauge(counts: Iterable[tuple[str, str, int]]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily("sesame_sessions", "sessions in the database, by state and agent",
                              labels=["state", "agent"])
    for state, agent, count in counts:
        gauge.add_metric([state, agent], count)
    return gauge


def queue_gauge(depth: int | None) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily("sesame_queue_depth", "jobs waiting in the queue for a worker")
    if depth is not None:
        gauge.add_metric([], depth)
    return gauge


def exposition(live: Iterable[GaugeMetricFamily] = ()) -> bytes:
    """The text format of every process's counts (or this one's) plus the live gauges."""
    registry = CollectorRegistry(auto_describe=False)
    directory = shared_directory()
    if directory is not None:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        out = generate_latest(registry)
    else:
        out = generate_latest(_LOCAL)
    return out + generate_latest(_with(live))


def _with(live: Iterable[GaugeMetricFamily]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Live(live))
    return registry


def api_call(service: str, status: int | None, reason: str | None = None) -> None:
    """One request to GitHub or Slack: its status (None: no answer), and an error when it failed."""
    API_CALLS.labels(service, str(status) if status is not None else "none").inc()
    if status is None or status >= 400 or reason:
        API_ERRORS.labels(service, reason or (str(status) if status is not None else "connection")).inc()


def session_ended(state: str, agent: str, seconds: float, input_tokens: int | None, output_tokens: int | None,
                  cost_usd: float | None) -> None:
    SESSIONS_ENDED.labels(state, agent).inc()
    SESSION_SECONDS.labels(state, agent).observe(seconds)
    if input_tokens:
        TOKENS.labels(agent, "input").inc(input_tokens)
    if output_tokens:
        TOKENS.labels(agent, "output").inc(output_tokens)
    if cost_usd:
        COST.labels(agent).inc(cost_usd)


@contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    """Observe how long the block took (also when it raised)."""
    with histogram.labels(*labels).time():
        yield
