"""Sesame: coding agents in sandboxed workspaces, triggered from GitHub and Slack."""

__version__ = "0.1.0"
