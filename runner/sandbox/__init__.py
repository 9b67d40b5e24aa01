"""Sandboxed execution of agents: bubblewrap, a private netns with an egress proxy, seccomp."""

from __future__ import annotations

from runner.sandbox.base import (
    DEFAULT_READ_ONLY,
    OutputLine,
    ProcessHandle,
    Sandbox,
    SandboxPolicy,
    Violation,
    ViolationCallback,
)
from runner.sandbox.local import LocalSandbox
from runner.sandbox.proxy import domain_allowed
from runner.sandbox.support import check_sandbox_support, create_sandbox

__all__ = [
    "DEFAULT_READ_ONLY",
    "LocalSandbox",
    "OutputLine",
    "ProcessHandle",
    "Sandbox",
    "SandboxPolicy",
    "Violation",
    "ViolationCallback",
    "check_sandbox_support",
    "create_sandbox",
    "domain_allowed",
]
