"""`sesame agents install|list|remove` as a user runs them: a process, a real npm, a real database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.catalog import AGENT_NAMES, CATALOG
from bot.cli.agentinfo import VERIFIED
from bot.cli.wiring import open_services
from bot.settings import Settings, load_settings
from runner.agents.install import agent_bin_dir, agent_prefix

WORKTREE = Path(__file__).parents[2]
# Amp's npm package is the smallest of the six to install (measured with an empty npm cache: 97 MB in
# 16 files, 4.0 s; Gemini CLI 100 MB in 828 files, 15.8 s; Copilot 189 MB, 10.3 s; opencode 354 MB, 27.6 s).
SMALLEST = "amp"
# npm needs its cache (HOME), and the machine's proxies and extra CA certificates where it has them.
PASSED_THROUGH = ("PATH", "HOME", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR",
                  "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def sesame(tmp_path: Path, *argv: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """`python3 -m bot.cli ...` from a clean environment (what npm needs passes, no setting does): the
    data dir is the test's, and the working directory holds no config file."""
    clean = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH or k.lower().startswith("npm_config_")}
    clean |= {"SESAME_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(WORKTREE), **env}
    return subprocess.run([sys.executable, "-m", "bot.cli", *argv], env=clean, cwd=tmp_path,
                          text=True, capture_output=True, timeout=timeout)


def agent_rows(stdout: str) -> dict[str, list[str]]:
    """`agents list` output: each agent's first line, then its indented detail lines."""
    rows: dict[str, list[str]] = {}
    current = ""
    for line in stdout.splitlines():
        if line and not line[0].isspace():
            current = line.split()[0]
            rows[current] = [line]
        elif line.strip():
            rows[current].append(line.strip())
    return rows


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_install_list_remove_the_smallest_agent_for_real(tmp_path: Path) -> None:
    done = sesame(tmp_path, "agents", "install", SMALLEST, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"installing Amp (@sourcegraph/amp) into {tmp_path / 'data' / 'agents' / 'amp'}")
    assert any(line.startswith("  $ npm install --prefix ") for line in lines)  # progress, as npm goes
    assert any(line.startswith("  npm http fetch GET 200 ") for line in lines)
    binary = agent_bin_dir(SMALLEST, tmp_path / "data") / "amp"
    assert binary.exists() and os.access(binary, os.X_OK)
    manifest = agent_prefix(SMALLEST, tmp_path / "data") / "node_modules" / "@sourcegraph" / "amp" / "package.json"
    version = json.loads(manifest.read_text())["version"]
    assert lines[-1] == f"installed: {binary.parent} (version {version})"

    listed = sesame(tmp_path, "agents", "list")
    assert listed.returncode == 0, listed.stderr
    amp = agent_rows(listed.stdout)["amp"]
    assert amp[0].split(None, 2)[2] == f"{version} at {binary} (data dir)"

    removed = sesame(tmp_path, "agents", "remove", SMALLEST)
    assert removed.returncode == 0, removed.stderr
    assert f"removed: {agent_prefix(SMALLEST, tmp_path / 'data')}" in removed.stdout
    assert not agent_prefix(SMALLEST, tmp_path / "data").exists()
    again = agent_rows(sesame(tmp_path, "agents", "list").stdout)["amp"]
    assert again[0].endswith("not installed: run `sesame agents install amp`")


@pytest.mark.parametrize(("action", "name"), [("install", "cursor"), ("remove", "../claude")])
def test_unknown_agent_is_a_clear_error_with_exit_2(tmp_path: Path, action: str, name: str) -> None:
    done = sesame(tmp_path, "agents", action, name)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"sesame: error: unknown agent {name!r}; choose one of "
                                   f"{', '.join(AGENT_NAMES)}")
    assert "Traceback" not in done.stdout + done.stderr and not (tmp_path / "data" / "agents").exists()


def test_remove_leaves_a_shared_install_and_reports_nothing_to_remove(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "gemini"
    (shared / "node_modules" / ".bin").mkdir(parents=True)
    (shared / "node_modules" / ".bin" / "gemini").write_text("#!/bin/sh\n")
    (tmp_path / "data" / "agents").mkdir(parents=True)
    (tmp_path / "data" / "agents" / "gemini").symlink_to(shared)
    done = sesame(tmp_path, "agents", "remove", "Gemini")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "data" / "agents" / "gemini").is_symlink()
    assert (shared / "node_modules" / ".bin" / "gemini").exists()  # the link went, not what it pointed at
    again = sesame(tmp_path, "agents", "remove", "gemini")
    assert again.returncode == 0 and "gemini was not installed in the data dir: nothing removed" in again.stdout


def test_remove_says_a_cli_on_path_stays(tmp_path: Path) -> None:
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "codex").write_text("#!/bin/sh\n")
    (on_path / "codex").chmod(0o755)
    done = sesame(tmp_path, "agents", "remove", "codex", PATH=f"{on_path}{os.pathsep}{os.environ['PATH']}")
    assert done.returncode == 0, done.stderr
    assert f"note: another codex is on PATH at {on_path / 'codex'}" in done.stdout
    assert (on_path / "codex").exists()


def test_path_install_shows_the_version_of_the_package_it_links_into(tmp_path: Path) -> None:
    # What `npm install -g` leaves: bin/claude -> ../lib/node_modules/@anthropic-ai/claude-code/cli.js
    package = tmp_path / "global" / "lib" / "node_modules" / "@anthropic-ai" / "claude-code"
    package.mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"name": "@anthropic-ai/claude-code", "version": "9.8.7"}))
    (package / "cli.js").write_text("#!/usr/bin/env node\n")
    (package / "cli.js").chmod(0o755)
    (tmp_path / "global" / "bin").mkdir()
    (tmp_path / "global" / "bin" / "claude").symlink_to("../lib/node_modules/@anthropic-ai/claude-code/cli.js")
    path = f"{tmp_path / 'global' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    done = sesame(tmp_path, "agents", "list", PATH=path)
    assert agent_rows(done.stdout)["claude"][0].split(None, 3)[3] == (
        f"9.8.7 at {tmp_path / 'global' / 'bin' / 'claude'} (PATH)")


async def test_list_names_each_credential_source_and_never_a_value(tmp_path: Path) -> None:
    secrets = {"sub": "sub-token-kept-in-the-database", "key": "sk-stored-amp-key-000",
               "gemini": "gemini-env-key-0000", "gh": "gh-env-token-0000"}
    env = {"SESAME_DATA_DIR": str(tmp_path / "data"), "ENCRYPTION_KEY": "ab" * 32}
    services = await open_services(load_settings(env=env, cwd=tmp_path), auto_migrate=True)
    try:
        await services.credentials.put("claude", "subscription", secrets["sub"])
        await services.credentials.put("claude", "api_key", secrets["key"])
        await services.credentials.put("amp", "api_key", secrets["key"])
    finally:
        await services.close()
    done = sesame(tmp_path, "agents", "list", ENCRYPTION_KEY="ab" * 32, GEMINI_API_KEY=secrets["gemini"],
                  GITHUB_TOKEN=secrets["gh"])
    assert done.returncode == 0, done.stderr
    rows = agent_rows(done.stdout)
    assert list(rows) == list(AGENT_NAMES)
    credential = {name: next(d for d in lines if d.startswith("credential: ")) for name, lines in rows.items()}
    assert credential["claude"] == "credential: stored subscription"
    assert credential["amp"] == "credential: stored API key"
    assert credential["gemini"] == "credential: environment (GEMINI_API_KEY)"
    assert credential["copilot"] == "credential: environment (GITHUB_TOKEN)"
    assert credential["codex"] == ("credential: none: store one (PUT /api/credentials/codex) or set "
                                   "CODEX_API_KEY or OPENAI_API_KEY")
    assert not any(value in done.stdout + done.stderr for value in secrets.values())
    for name, lines in rows.items():
        assert f"verified: {VERIFIED[name]}" in lines and CATALOG[name].display_name in lines[0]
    assert "Amp's own service" in VERIFIED["amp"] and "parser only" in VERIFIED["amp"]
    assert set(VERIFIED) == set(AGENT_NAMES)


def test_list_on_a_fresh_data_dir_creates_nothing(tmp_path: Path) -> None:
    done = sesame(tmp_path, "agents", "list")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "data").exists()
    assert all(lines[1].startswith("credential: ") for lines in agent_rows(done.stdout).values())


def npm_layout(prefix: Path, package: str, binary: str, version: str) -> Path:
    """What `npm install --prefix` leaves for a package: its files and package.json, and a bin link."""
    files = prefix / "node_modules" / package
    files.mkdir(parents=True)
    (files / "package.json").write_text(json.dumps({"name": package, "version": version}))
    (files / "cli.js").write_text("#!/bin/sh\n")
    (files / "cli.js").chmod(0o755)
    (prefix / "node_modules" / ".bin").mkdir()
    link = prefix / "node_modules" / ".bin" / binary
    link.symlink_to(Path("..") / package / "cli.js")
    return link


async def test_doctor_shows_each_agents_install_and_credential_source(tmp_path: Path) -> None:
    codex = npm_layout(agent_prefix("codex", tmp_path / "data"), "@openai/codex", "codex", "0.171.0")
    gemini = npm_layout(tmp_path / "global", "@google/gemini-cli", "gemini", "0.61.0")  # on PATH
    env = {"SESAME_DATA_DIR": str(tmp_path / "data"), "ENCRYPTION_KEY": "ab" * 32}
    services = await open_services(load_settings(env=env, cwd=tmp_path), auto_migrate=True)
    try:
        await services.credentials.put("claude", "subscription", "sub-token-kept-in-the-database")
    finally:
        await services.close()
    refused = closed_port()
    # both keys go through the gateway: its upstreams are the base URL settings, neither of which answers
    done = sesame(tmp_path, "doctor", ENCRYPTION_KEY="ab" * 32, CODEX_API_KEY="sk-openai-env-0001",
                  ANTHROPIC_BASE_URL=f"http://127.0.0.1:{refused}", OPENAI_BASE_URL="https://api.sesame.invalid/v1",
                  PATH=f"{gemini.parent}{os.pathsep}{os.environ['PATH']}")
    lines = done.stdout.splitlines()
    agent_lines = {line[7:].split()[0]: line for line in lines if line.startswith("[")}
    assert agent_lines["agents"] == "[WARN] agents       the default agent 'claude' is not installed (installed: codex, gemini)"
    assert agent_lines["claude"].startswith(
        "[WARN] claude       not installed (`sesame agents install claude`); credential: stored subscription; "
        f"gateway upstream http://127.0.0.1:{refused} unreachable: ")
    assert agent_lines["claude"].endswith("unreachable: connection refused"), agent_lines["claude"]
    assert agent_lines["codex"].startswith(f"[WARN] codex        0.171.0 at {codex} (data dir); credential: "
                                           "environment (CODEX_API_KEY); gateway upstream "
                                           "https://api.sesame.invalid/v1 unreachable: ")
    fix = lines[lines.index(agent_lines["codex"]) + 1].strip()
    assert fix == ("fix: let this host reach https://api.sesame.invalid/v1 (firewall, DNS, egress proxy), "
                   "or correct OPENAI_BASE_URL")
    assert agent_lines["gemini"] == f"[WARN] gemini       0.61.0 at {gemini} (PATH); credential: none"
    fix = lines[lines.index(agent_lines["gemini"]) + 1]
    assert fix.strip() == "fix: store one (PUT /api/credentials/gemini) or set GEMINI_API_KEY"
    assert "opencode" in agent_lines and "amp" in agent_lines and "command" not in agent_lines
    assert "sub-token-kept" not in done.stdout and "sk-openai-env" not in done.stdout


async def test_doctor_adds_what_an_agent_probe_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hook the credential gateway fills: a probe's finding joins the agent's line, worst status wins.
    from bot.cli import doctor

    async def upstream(_settings: Settings, name: str) -> doctor.Check | None:
        if name != "codex":
            return None
        return doctor.Check(name, "fail", "gateway cannot reach api.openai.com:443", "check the egress")

    monkeypatch.setattr(doctor, "AGENT_PROBES", [upstream])
    npm_layout(agent_prefix("codex", tmp_path / "data"), "@openai/codex", "codex", "0.171.0")
    settings = load_settings(env={"SESAME_DATA_DIR": str(tmp_path / "data"), "CODEX_API_KEY": "k" * 20},
                             cwd=tmp_path)
    checks = {c.name: c for c in await doctor.check_agents(settings)}
    assert checks["codex"].status == "fail" and checks["codex"].fix == "check the egress"
    assert checks["codex"].detail.endswith("credential: environment (CODEX_API_KEY); "
                                           "gateway cannot reach api.openai.com:443")
    assert checks["gemini"].status == "info" and "gateway" not in checks["gemini"].detail


def test_list_with_the_database_down_says_what_it_could_not_read(tmp_path: Path) -> None:
    done = sesame(tmp_path, "agents", "list", DATABASE_URL="postgresql://sesame@127.0.0.1:1/sesame",
                  BASE_URL="http://sesame.invalid", ENCRYPTION_KEY="ab" * 32, AMP_API_KEY="amp-env-key-0001")
    assert done.returncode == 0, done.stderr
    amp = agent_rows(done.stdout)["amp"][1]
    assert amp.startswith("credential: environment (AMP_API_KEY), unless one is stored (the database is "
                          "unreachable: ")
    assert "amp-env-key" not in done.stdout and "Traceback" not in done.stderr


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
