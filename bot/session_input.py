"""What a new session asks for, checked before anything is recorded: the same checks and messages for
`sesame run` and `POST /api/session` (the repository, the prompt, the branch names)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from bot.catalog import display_name
from bot.setting_types import not_utf8
from bot.settings import API_REPO_POLICIES, Settings
from bot.triggers import is_safe_ref

RepoKind = Literal["github", "local", "url"]
REPO_POLICIES = API_REPO_POLICIES
POLICY_KINDS: dict[str, tuple[RepoKind, ...]] = {
    "installed": ("github",), "local": ("github", "local"), "any": ("github", "local", "url")}
URL_SCHEMES = ("https", "http", "ssh", "git")
GITHUB_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+$")  # git@host:owner/name.git
REF_FIELDS = {"base": "the base branch", "branch": "the branch name"}


class InputError(ValueError):
    """Input a session cannot start from; the message is for the person who sent it, as it is."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RepoTarget:
    """A repository as a session names it: owner/name on GitHub, an absolute local path, or a clone URL."""

    kind: RepoKind
    value: str


def check_utf8(field: str, text: str) -> str:
    """A terminal argument as given, unless it holds bytes that are not UTF-8: Python reads those into lone
    surrogates (surrogateescape), which no database column stores and no git ref or URL means."""
    held = not_utf8(text)
    if held is not None:
        raise InputError(field, f"{field} is not UTF-8 text (it holds {held})")
    return text


def check_prompt(text: str | None) -> str:
    """The prompt without surrounding blanks; a blank one is refused."""
    prompt = (text or "").strip()
    if not prompt:
        raise InputError("prompt", "the prompt is empty")
    return prompt


def check_ref(name: str, field: str = "branch") -> str:
    """A branch name git accepts (`git check-ref-format --branch`) that cannot be read as an option."""
    if not is_safe_ref(name) or name == "HEAD":
        what = REF_FIELDS.get(field, field)
        raise InputError(field, f"{what} {name!r} is not a safe git ref name (git check-ref-format rules, "
                                "and no leading '-')")
    return name


def local_repository(text: str, path: Path) -> RepoTarget:
    """An existing git repository (work tree or bare) at `path`, made absolute."""
    if not path.exists():
        raise InputError("repo", f"{text} is neither an existing path nor a clone URL")
    if not (path / ".git").exists() and not (path / "HEAD").exists():
        raise InputError("repo", f"{text} is not a git repository")
    return RepoTarget("local", str(path.resolve()))


def parse_repo(text: str, cwd: Path | None = None) -> RepoTarget:
    """What `text` names. Relative paths are read against `cwd` (the terminal's); without one (the API)
    only absolute paths name local repositories, and owner/name is a GitHub repository."""
    text = text.strip()
    if "://" in text:
        scheme = urlsplit(text).scheme.lower()
        if scheme == "file":
            return local_repository(text, Path(urlsplit(text).path))
        if scheme not in URL_SCHEMES or not urlsplit(text).hostname:
            raise InputError("repo", f"{text} is not a clone URL Sesame uses (schemes: {', '.join(URL_SCHEMES)})")
        return RepoTarget("url", text)
    if SCP_LIKE.match(text) and not text.startswith("-"):
        return RepoTarget("url", text)
    path = Path(text).expanduser()
    if path.is_absolute():
        return local_repository(text, path)
    if cwd is not None:
        if (cwd / path).exists() or not GITHUB_NAME.match(text):
            return local_repository(text, cwd / path)
        raise InputError("repo", f"{text} is neither an existing path nor a clone URL")
    if GITHUB_NAME.match(text) and text.rpartition("/")[2] not in (".", "..") and ".." not in text:
        return RepoTarget("github", text)
    raise InputError("repo", f"{text} is a relative path: give owner/name, an absolute path or a clone URL")


def repo_policy(settings: Settings) -> str:
    """API_REPOS in force: `auto` is `any` in the embedded single-machine mode (SQLite; whoever can reach
    it could run `sesame run` there) and `installed` with PostgreSQL (a shared server)."""
    policy = settings.API_REPOS or "auto"
    if policy == "auto":
        return "any" if settings.embedded else "installed"
    return policy


def check_allowed(target: RepoTarget, policy: str) -> None:
    """Refuse a repository kind the policy does not allow, naming the setting that would."""
    if target.kind in POLICY_KINDS[policy]:
        return
    what = {"local": "a local path", "url": "a clone URL", "github": "a GitHub repository"}[target.kind]
    needed = "local" if target.kind == "local" else "any"
    raise InputError("repo", f"this server does not start sessions on {what} (API_REPOS is {policy}): give "
                             f"owner/name of a repository the GitHub App is installed on, or set API_REPOS={needed}")


class InstallationLookup(Protocol):
    async def installation_for(self, full_name: str) -> int | None: ...


async def resolve_repo(settings: Settings, installations: InstallationLookup,
                       text: str) -> tuple[str, dict[str, Any] | None]:
    """The repository as a session records it, and its report (the App's installation for owner/name),
    if API_REPOS lets the API and the session form use it; InputError otherwise."""
    target = parse_repo(text)
    check_allowed(target, repo_policy(settings))
    if target.kind != "github":
        return target.value, None
    if not settings.GITHUB_APP_ID:
        raise InputError("repo", f"{target.value} names a GitHub repository, but this server has no GitHub App "
                                 "(GITHUB_APP_ID): give an absolute path or a clone URL")
    installation = await installations.installation_for(target.value)
    if installation is None:
        raise InputError("repo", f"Sesame's GitHub App is not installed on {target.value} (or the installation "
                                 "is suspended): install it on that repository first")
    return target.value, {"installation_id": installation}


def request_digest(kind: str, fields: dict[str, Any]) -> str:
    """What a request asked for ("create" or "follow-up" and its fields), recorded with the session: a retry
    with the same Idempotency-Key (the API's, or the session form's hidden key) is told from a reuse."""
    return hashlib.sha256(json.dumps([kind, fields], sort_keys=True).encode()).hexdigest()


def check_model(agent: str, model: str, by_agent: Mapping[str, list[str]]) -> None:
    """Refuse a model that another agent lists and `agent` does not (the Sesame API's listing or the built-in
    catalogue, `by_agent`), naming both; the form and the API both check here. A model nobody lists passes:
    the catalogue is not every model a vendor offers, and the agent itself says when it does not know one."""
    mine = by_agent.get(agent, [])
    if model in mine:
        return
    owners = [other for other, models in by_agent.items() if other != agent and model in models]
    if not owners:
        return
    theirs = ", ".join(f"{display_name(o)} ({o})" for o in owners)
    choice = f"choose one of {', '.join(mine)}" if mine else "leave it empty"
    raise InputError("model", f"model {model!r} is {theirs}'s, not {display_name(agent)} ({agent})'s: {choice}, "
                              "or another agent")
