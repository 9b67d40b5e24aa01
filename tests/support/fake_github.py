"""A loopback fake of GitHub: REST API, App auth, git smart HTTP, signed webhook deliveries.

One fake for every GitHub test of the project:

    async with FakeGitHub() as gh:
        repo = gh.add_repo("acme/widget")
        gh.set_permission("acme/widget", "alice", "write")
        headers, body = gh.delivery("issue_comment",
                                    gh.issue_comment_payload("acme/widget", 1, "@sesame fix it"))

Point the product at it with `gh.settings_env()` (GITHUB_API_URL=gh.url, ...).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.github import GitHubAppClientFactory
from runner.git import communicate
from tests.support import gitrepo
from tests.support.loopback import LoopbackServer

DOCS_URL = "https://docs.github.com/rest"
APP_PERMISSIONS = {"contents": "write", "issues": "write", "pull_requests": "write", "checks": "write",
                   "metadata": "read"}
APP_EVENTS = ["issue_comment", "issues", "pull_request", "pull_request_review",
              "pull_request_review_comment", "installation_repositories", "check_run"]
_LEVELS = {"none": 0, "read": 1, "write": 2, "admin": 3}
# GitHub's permission API folds the finer roles into the classic three.
_ROLE_PERMISSION = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read",
                    "read": "read", "none": "none"}


# ---------------------------------------------------------------- keys and time


@functools.lru_cache(maxsize=1)
def app_key_pair() -> tuple[str, str]:
    """A test RSA key pair for the App as (private PEM, public PEM), made once per process."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def iso(moment: datetime | None = None) -> str:
    """GitHub's timestamp format, `2024-01-02T03:04:05Z`."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign(body: bytes, secret: str) -> str:
    """The `X-Hub-Signature-256` value for a delivery body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- state


@dataclass
class FakeUser:
    """A GitHub account (User, Organization or Bot)."""

    login: str
    id: int
    type: str = "User"
    name: str | None = None
    email: str | None = None


@dataclass
class FakeInstallation:
    """An installation of the App on one account."""

    id: int
    account: FakeUser
    repos: set[str] = field(default_factory=set)
    suspended: bool = False
    deleted: bool = False


@dataclass
class FakeRepo:
    """A repository; its git data is a bare repository at `path`."""

    owner: FakeUser
    name: str
    id: int
    path: Path
    default_branch: str = "main"
    private: bool = True
    fork_of: str | None = None

    @property
    def full_name(self) -> str:
        """`owner/name`."""
        return f"{self.owner.login}/{self.name}"


CHECK_STATUSES = ("queued", "in_progress", "completed")
CHECK_CONCLUSIONS = ("success", "failure", "neutral", "cancelled", "skipped", "timed_out", "action_required")


@dataclass
class FakeCheckRun:
    """A check run; `history` keeps (status, conclusion, output title) after every write."""

    id: int
    repo: str
    name: str
    head_sha: str
    status: str = "queued"
    conclusion: str | None = None
    external_id: str | None = None
    details_url: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    actions: list[dict[str, str]] = field(default_factory=list)
    history: list[tuple[str, str | None, str | None]] = field(default_factory=list)

    def update(self, body: Mapping[str, Any]) -> None:
        for name in ("status", "conclusion", "external_id", "details_url", "output", "actions"):
            if name in body:
                setattr(self, name, body[name])
        if self.conclusion and "status" not in body:
            self.status = "completed"
        self.history.append((self.status, self.conclusion, (self.output or {}).get("title")))


def _check_run_fields(body: Mapping[str, Any]) -> None:
    """422 on what GitHub refuses: unknown status or conclusion, completed without conclusion, long action texts."""
    if body.get("status") is not None and body["status"] not in CHECK_STATUSES:
        raise _validation("status", "invalid")
    if body.get("conclusion") is not None and body["conclusion"] not in CHECK_CONCLUSIONS:
        raise _validation("conclusion", "invalid")
    if body.get("status") == "completed" and not body.get("conclusion"):
        raise _validation("conclusion", "missing_field")
    for action in body.get("actions") or []:
        if len(action.get("label", "")) > 20 or len(action.get("description", "")) > 40 or \
                len(action.get("identifier", "")) > 20 or not action.get("identifier"):
            raise _validation("actions", "invalid")
    if len(body.get("actions") or []) > 3:
        raise _validation("actions", "too_long")


@dataclass
class FakeIssue:
    """An issue, or a pull request when `head` is set (they share numbers, as on GitHub)."""

    repo: str
    number: int
    id: int
    title: str
    body: str | None
    user: FakeUser
    state: str = "open"
    labels: list[str] = field(default_factory=list)
    head: str | None = None
    base: str | None = None
    head_repo: str | None = None
    draft: bool = False
    created_at: str = field(default_factory=iso)

    @property
    def is_pull(self) -> bool:
        """True for pull requests."""
        return self.head is not None


@dataclass
class FakeComment:
    """An issue comment or a pull request review comment, with its edit history."""

    id: int
    repo: str
    number: int
    body: str
    user: FakeUser
    kind: str = "issue"  # or "review"
    history: list[str] = field(default_factory=list)
    path: str | None = None
    line: int | None = None
    diff_hunk: str | None = None
    in_reply_to: int | None = None
    review_id: int | None = None
    reactions: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=iso)
    updated_at: str = field(default_factory=iso)

    @property
    def edits(self) -> int:
        """How many times the body was edited after creation."""
        return len(self.history) - 1


@dataclass
class FakeToken:
    """An installation access token; `repositories` None means all of the installation's."""

    token: str
    installation_id: int
    expires_at: datetime
    permissions: dict[str, str]
    repositories: frozenset[str] | None = None


@dataclass
class RecordedRequest:
    """One request the fake answered."""

    method: str
    path: str
    query: dict[str, str]
    auth_scheme: str | None
    credential: str | None
    status: int
    json: Any = None


@dataclass
class RecordedPush:
    """A git push that reached a repository, with the branches after it."""

    repo: str
    branches: dict[str, str]


@dataclass
class _RateLimitPlan:
    """The next `remaining` comment edits are refused with `status` and `retry-after`."""

    remaining: int = 0
    status: int = 403
    retry_after: int = 1


@dataclass
class _Failure:
    """An injected fault: `count` more requests matching `method` and `path` fail."""

    method: str
    path: re.Pattern[str]
    status: int
    count: int
    reset: bool
    retry_after: int | None

    def answer(self, request: web.Request) -> web.Response:
        if self.reset and request.transport is not None:
            request.transport.abort()  # the client sees its connection reset, no answer
        headers = {"retry-after": str(self.retry_after)} if self.retry_after is not None else None
        message = "API rate limit exceeded" if self.status == 429 else "Server Error"
        return _json({"message": message}, status=self.status, headers=headers)


class GitHubError(Exception):
    """A GitHub error response raised inside a handler."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers, self.errors = dict(headers or {}), errors


# ---------------------------------------------------------------- the fake


class FakeGitHub(LoopbackServer):
    """Loopback GitHub REST API + git smart HTTP; records everything for assertions."""

    def __init__(self, *, app_id: int = 4242, slug: str = "sesame",
                 webhook_secret: str = "webhook-secret-for-tests", account: str = "acme",
                 token_ttl: timedelta = timedelta(hours=1), root: Path | None = None) -> None:
        super().__init__()
        self.app_id, self.slug, self.webhook_secret = app_id, slug, webhook_secret
        self.private_key_pem, self.public_key_pem = app_key_pair()
        self.token_ttl = token_ttl
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="fake-github-")) if root is None else root
        self.git_root = self.root / "git"
        self._ids = itertools.count(1000)
        self.users: dict[str, FakeUser] = {}
        self.installations: dict[int, FakeInstallation] = {}
        self.repos: dict[str, FakeRepo] = {}
        self.issues: dict[tuple[str, int], FakeIssue] = {}
        self.comments: list[FakeComment] = []
        self.tokens: dict[str, FakeToken] = {}
        self.pats: dict[str, str] = {}
        self.permissions: dict[tuple[str, str], str] = {}
        self.requests: list[RecordedRequest] = []
        self.pushes: list[RecordedPush] = []
        self.jwts_seen: list[dict[str, Any]] = []
        self.check_runs: list[FakeCheckRun] = []
        self.contents_reads: list[tuple[str, str, str]] = []  # (repo, path, ref) of each contents read
        self.contents_asks: list[tuple[str, float]] = []  # (path, time.monotonic()) of each contents request
        self.manifest_codes: set[str] = set()  # codes GitHub would hand back after "Create GitHub App"
        self._rate_limit = _RateLimitPlan()
        self._holds: list[tuple[str, re.Pattern[str], asyncio.Event]] = []
        self._failures: list[_Failure] = []
        self.latency = 0.0  # seconds every API answer takes (benchmarks: real GitHub takes 100-500 ms)
        self.bot_user = FakeUser(f"{slug}[bot]", 9_000_000 + app_id, "Bot")
        self.installation_id = self.add_installation(account).id

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen on 127.0.0.1, on a random port."""
        app = web.Application(middlewares=[self._middleware], client_max_size=200 * 1024**2)
        self._add_routes(app.router)
        await self.serve(app)

    async def close(self) -> None:
        """Stop the server; remove the repositories when the fake made their directory."""
        await super().close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def api_url(self) -> str:
        """The REST API base (what GITHUB_API_URL should be)."""
        return self.url

    def settings_env(self) -> dict[str, str]:
        """Environment variables pointing Sesame at this fake."""
        return {"GITHUB_APP_ID": str(self.app_id), "GITHUB_PRIVATE_KEY": self.private_key_pem,
                "GITHUB_WEBHOOK_SECRET": self.webhook_secret, "GITHUB_API_URL": self.url,
                "GITHUB_APP_SLUG": self.slug}

    def client_factory(self, http: aiohttp.ClientSession) -> GitHubAppClientFactory:
        """The product's App client factory, pointed at this fake."""
        return GitHubAppClientFactory(self.app_id, self.private_key_pem, self.url, http)

    # ------------------------------------------------------------ setup helpers

    def user(self, login: str, *, type: str | None = None, name: str | None = None,
             email: str | None = None) -> FakeUser:
        """The account named `login`, created on first use (`[bot]` logins are Bots)."""
        if login not in self.users:
            kind = type or ("Bot" if login.endswith("[bot]") else "User")
            self.users[login] = FakeUser(login, next(self._ids), kind, name, email)
        user = self.users[login]
        user.name = name or user.name
        user.email = email or user.email
        return user

    def add_pat(self, login: str, token: str | None = None, *, name: str | None = None) -> str:
        """Register a personal access token for `login`; GET /user answers with that user."""
        token = token or "ghp_" + secrets.token_hex(18)
        self.user(login, name=name)
        self.pats[token] = login
        return token

    def add_installation(self, account: str, *, id: int | None = None) -> FakeInstallation:
        """Install the App on `account` (all its repositories added later go to it)."""
        owner = self.user(account, type="Organization")
        installation = FakeInstallation(id or next(self._ids), owner)
        self.installations[installation.id] = installation
        return installation

    def installation_of(self, account: str) -> FakeInstallation | None:
        """The live installation on `account`, if any."""
        for installation in self.installations.values():
            if installation.account.login == account and not installation.deleted:
                return installation
        return None

    def add_repo(self, full_name: str, *, source: Path | None = None,
                 files: Mapping[str, str] | None = None, default_branch: str = "main",
                 private: bool = True, installed: bool = True,
                 fork_of: str | None = None) -> FakeRepo:
        """Create a repository from a local git dir (`source`) or from `files`."""
        owner_login, name = full_name.split("/")
        path = self.git_root / owner_login / f"{name}.git"
        if source is None:
            source = gitrepo.make_repo(self.root / "seed" / full_name, files,
                                       branch=default_branch)
        gitrepo.make_bare(Path(source), path)
        gitrepo.git("config", "http.receivepack", "true", cwd=path)
        gitrepo.git("symbolic-ref", "HEAD", f"refs/heads/{default_branch}", cwd=path)
        owner = self.user(owner_login)
        repo = FakeRepo(owner, name, next(self._ids), path, default_branch, private, fork_of)
        self.repos[full_name] = repo
        self.permissions.setdefault((full_name, owner_login), "admin")
        installation = self.installation_of(owner_login)
        if installed:
            installation = installation or self.add_installation(owner_login)
            installation.repos.add(full_name)
        return repo

    def set_permission(self, full_name: str, login: str, permission: str) -> None:
        """Give `login` a role on the repository: admin, maintain, write, triage, read, none."""
        if permission not in _ROLE_PERMISSION:
            raise ValueError(f"unknown permission {permission!r}")
        self.user(login)
        self.permissions[(full_name, login)] = permission

    def _next_number(self, full_name: str) -> int:
        """The next issue/PR number of a repository."""
        return 1 + max((n for (r, n) in self.issues if r == full_name), default=0)

    def add_issue(self, full_name: str, title: str = "Something is broken",
                  body: str | None = "Steps to reproduce...", *, user: str = "alice",
                  labels: Iterable[str] = (), number: int | None = None) -> FakeIssue:
        """Open an issue."""
        number = number or self._next_number(full_name)
        issue = FakeIssue(full_name, number, next(self._ids), title, body, self.user(user),
                          labels=list(labels))
        self.issues[(full_name, number)] = issue
        return issue

    def add_pull(self, full_name: str, head: str, *, base: str | None = None,
                 title: str = "A change", body: str | None = "", user: str = "alice",
                 head_repo: str | None = None, number: int | None = None,
                 fork_files: Mapping[str, str] | None = None) -> FakeIssue:
        """Open a pull request from `head` (a branch of `head_repo`, default the same repo).

        A fork's commit (`fork_files` changed on top of the base) lands where GitHub keeps every PR's
        head in the base repository: refs/pull/N/head.
        """
        issue = self.add_issue(full_name, title, body, user=user, number=number)
        issue.head, issue.head_repo = head, head_repo or full_name
        issue.base = base or self.repos[full_name].default_branch
        if fork_files and head_repo:
            base_path = self.repos[full_name].path
            fork = self.repos.get(head_repo) or self.add_repo(head_repo, source=base_path, installed=False,
                                                               fork_of=full_name)
            work = self.root / "forks" / f"{full_name}-{issue.number}"
            gitrepo.git("clone", "--quiet", "--branch", issue.base, str(base_path), str(work), cwd=self.root)
            gitrepo.commit_files(work, fork_files, f"{user}'s change")
            gitrepo.git("push", "--quiet", str(fork.path), f"HEAD:refs/heads/{head}", cwd=work)
            gitrepo.git("push", "--quiet", "origin", f"HEAD:refs/pull/{issue.number}/head", cwd=work)
        self._sync_pull_heads(full_name)
        return issue

    def _sync_pull_heads(self, full_name: str) -> None:
        """refs/pull/N/head of every PR from a branch of this repository follows that branch, as GitHub's
        does after each push (a fork's PR head is pushed there in add_pull)."""
        repo = self.repos.get(full_name)
        if repo is None:
            return
        branches = self.branches(full_name)
        for pull in self.pulls:
            if pull.repo == full_name and pull.head_repo == full_name and pull.head in branches:
                gitrepo.git("update-ref", f"refs/pull/{pull.number}/head", branches[pull.head], cwd=repo.path)

    def rate_limit_comment_edits(self, count: int, *, status: int = 403,
                                 retry_after: int = 1) -> None:
        """Answer the next `count` comment edits with `status` (403 or 429) and `retry-after`."""
        self._rate_limit = _RateLimitPlan(count, status, retry_after)

    def hold(self, method: str, path: str) -> asyncio.Event:
        """Hold `method` requests whose path matches the regex `path` until the returned event is set."""
        gate = asyncio.Event()
        self._holds.append((method, re.compile(path), gate))
        return gate

    def fail_next(self, method: str, path: str, status: int = 502, *, count: int = 1, reset: bool = False,
                  retry_after: int | None = None) -> None:
        """Answer the next `count` `method` requests whose path matches the regex `path` with `status`
        (and `retry-after`), or, with `reset`, drop their connection without an answer."""
        self._failures.append(_Failure(method, re.compile(path), status, count, reset, retry_after))

    def clear_failures(self) -> None:
        """Stop injecting failures: GitHub answers again."""
        self._failures.clear()

    def failures_left(self) -> int:
        """Injected failures not yet used."""
        return sum(f.count for f in self._failures)

    async def _intercept(self, request: web.Request) -> web.Response | None:
        if self.latency and not request.path.startswith("/git/"):
            await asyncio.sleep(self.latency)
        for method, pattern, gate in self._holds:
            if request.method == method and pattern.search(request.path):
                await gate.wait()
        for failure in self._failures:
            if request.method == failure.method and failure.path.search(request.path):
                failure.count -= 1
                if failure.count <= 0:
                    self._failures.remove(failure)
                return failure.answer(request)
        return None

    def expire_tokens(self) -> None:
        """Make every installation token issued so far expired."""
        for token in self.tokens.values():
            token.expires_at = datetime.now(UTC) - timedelta(seconds=1)

    # ------------------------------------------------------------ queries for assertions

    @property
    def pulls(self) -> list[FakeIssue]:
        """All pull requests, in creation order."""
        return [i for i in self.issues.values() if i.is_pull]

    def comments_on(self, full_name: str, number: int) -> list[FakeComment]:
        """Comments (issue and review) on one issue or PR."""
        return [c for c in self.comments if c.repo == full_name and c.number == number]

    def comment(self, comment_id: int) -> FakeComment:
        """The comment with that id."""
        return next(c for c in self.comments if c.id == comment_id)

    def branches(self, full_name: str) -> dict[str, str]:
        """Branch -> sha on the remote."""
        return gitrepo.branches(self.repos[full_name].path)

    def api_requests(self, method: str | None = None,
                     path_prefix: str = "") -> list[RecordedRequest]:
        """Recorded requests filtered by method and path prefix."""
        return [r for r in self.requests if (method is None or r.method == method)
                and r.path.startswith(path_prefix)]

    # ------------------------------------------------------------ JSON shapes

    def _user_json(self, user: FakeUser) -> dict[str, Any]:
        """A user object as GitHub embeds it."""
        return {"login": user.login, "id": user.id, "node_id": f"U_{user.id}",
                "avatar_url": f"{self.url}/avatars/{user.id}",
                "url": f"{self.url}/users/{user.login}",
                "html_url": f"{self.url}/{user.login}", "type": user.type, "site_admin": False}

    def _repo_json(self, repo: FakeRepo) -> dict[str, Any]:
        """A repository object."""
        api = f"{self.url}/repos/{repo.full_name}"
        return {"id": repo.id, "node_id": f"R_{repo.id}", "name": repo.name,
                "full_name": repo.full_name, "private": repo.private,
                "owner": self._user_json(repo.owner), "html_url": f"{self.url}/{repo.full_name}",
                "url": api, "clone_url": self.clone_url(repo.full_name),
                "git_url": self.clone_url(repo.full_name), "fork": repo.fork_of is not None,
                "default_branch": repo.default_branch, "visibility":
                "private" if repo.private else "public", "archived": False,
                "issues_url": api + "/issues{/number}", "pulls_url": api + "/pulls{/number}",
                "comments_url": api + "/comments{/number}"}

    def clone_url(self, full_name: str) -> str:
        """Where git clones this repository from."""
        return f"{self.url}/git/{full_name}.git"

    def _issue_json(self, issue: FakeIssue) -> dict[str, Any]:
        """An issue object (with `pull_request` for PRs)."""
        api = f"{self.url}/repos/{issue.repo}/issues/{issue.number}"
        kind = "pull" if issue.is_pull else "issues"
        data: dict[str, Any] = {
                "id": issue.id, "node_id": f"I_{issue.id}", "number": issue.number,
                "title": issue.title, "body": issue.body, "user": self._user_json(issue.user),
                "state": issue.state, "locked": False, "url": api,
                "repository_url": f"{self.url}/repos/{issue.repo}",
                "comments_url": api + "/comments",
                "html_url": f"{self.url}/{issue.repo}/{kind}/{issue.number}",
                "labels": [self._label_json(issue.repo, name) for name in issue.labels],
                "comments": len([c for c in self.comments_on(issue.repo, issue.number)
                                 if c.kind == "issue"]),
                "author_association": self._association(issue.repo, issue.user.login),
                "created_at": issue.created_at, "updated_at": issue.created_at}
        if issue.is_pull:
            pulls = f"{self.url}/repos/{issue.repo}/pulls/{issue.number}"
            data["pull_request"] = {"url": pulls, "html_url": data["html_url"],
                                    "diff_url": data["html_url"] + ".diff",
                                    "patch_url": data["html_url"] + ".patch"}
        return data

    def _label_json(self, full_name: str, name: str) -> dict[str, Any]:
        """A label object."""
        return {"id": abs(hash(name)) % 10**8, "node_id": f"LA_{name}", "name": name,
                "url": f"{self.url}/repos/{full_name}/labels/{name}", "color": "ededed",
                "default": False, "description": None}

    def _ref_json(self, full_name: str, branch: str) -> dict[str, Any]:
        """The head/base object of a pull request."""
        repo = self.repos.get(full_name)
        sha = self.branches(full_name).get(branch, "0" * 40) if repo else "0" * 40
        owner = full_name.split("/")[0]
        return {"label": f"{owner}:{branch}", "ref": branch, "sha": sha,
                "user": self._user_json(self.user(owner)),
                "repo": self._repo_json(repo) if repo else None}

    def _pull_json(self, pull: FakeIssue) -> dict[str, Any]:
        """A pull request object."""
        api = f"{self.url}/repos/{pull.repo}/pulls/{pull.number}"
        issue = self._issue_json(pull)
        assert pull.head and pull.base and pull.head_repo
        return {"id": pull.id, "node_id": f"PR_{pull.id}", "number": pull.number,
                "title": pull.title, "body": pull.body, "state": pull.state, "url": api,
                "html_url": issue["html_url"], "issue_url": issue["url"],
                "comments_url": issue["comments_url"], "review_comments_url": api + "/comments",
                "user": issue["user"], "draft": pull.draft, "merged": False,
                "head": self._ref_json(pull.head_repo, pull.head),
                "base": self._ref_json(pull.repo, pull.base), "labels": issue["labels"],
                "author_association": issue["author_association"],
                "created_at": pull.created_at, "updated_at": pull.created_at}

    def _comment_json(self, comment: FakeComment) -> dict[str, Any]:
        """An issue comment or review comment object."""
        base = f"{self.url}/repos/{comment.repo}"
        data: dict[str, Any] = {
            "id": comment.id, "node_id": f"IC_{comment.id}", "body": comment.body,
            "user": self._user_json(comment.user),
            "created_at": comment.created_at, "updated_at": comment.updated_at,
            "author_association": self._association(comment.repo, comment.user.login)}
        if comment.kind == "issue":
            kind = "pull" if self.issues[(comment.repo, comment.number)].is_pull else "issues"
            data.update(url=f"{base}/issues/comments/{comment.id}",
                        issue_url=f"{base}/issues/{comment.number}",
                        html_url=f"{self.url}/{comment.repo}/{kind}/{comment.number}"
                                 f"#issuecomment-{comment.id}")
            return data
        pull = self.issues[(comment.repo, comment.number)]
        sha = self._ref_json(pull.head_repo or pull.repo, pull.head or "")["sha"]
        data.update(url=f"{base}/pulls/comments/{comment.id}",
                    pull_request_url=f"{base}/pulls/{comment.number}",
                    html_url=f"{self.url}/{comment.repo}/pull/{comment.number}"
                             f"#discussion_r{comment.id}",
                    pull_request_review_id=comment.review_id, path=comment.path,
                    line=comment.line, original_line=comment.line, side="RIGHT",
                    start_line=None, start_side=None, position=comment.line,
                    original_position=comment.line, commit_id=sha, original_commit_id=sha,
                    diff_hunk=comment.diff_hunk, subject_type="line")
        if comment.in_reply_to is not None:
            data["in_reply_to_id"] = comment.in_reply_to
        return data

    def _installation_json(self, installation: FakeInstallation) -> dict[str, Any]:
        """A full installation object."""
        return {"id": installation.id, "node_id": f"MDIz_{installation.id}",
                "account": self._user_json(installation.account),
                "app_id": self.app_id, "app_slug": self.slug, "target_id": installation.account.id,
                "target_type": installation.account.type, "repository_selection": "selected",
                "access_tokens_url": f"{self.url}/app/installations/{installation.id}"
                                     "/access_tokens",
                "permissions": APP_PERMISSIONS, "events": APP_EVENTS,
                "suspended_at": iso() if installation.suspended else None,
                "suspended_by": None, "created_at": iso(), "updated_at": iso()}

    def _association(self, full_name: str, login: str) -> str:
        """author_association of a user on a repository."""
        if full_name.split("/")[0] == login:
            return "OWNER"
        role = self.permissions.get((full_name, login), "none")
        return "COLLABORATOR" if _LEVELS[_ROLE_PERMISSION[role]] >= 2 else "NONE"

    # ------------------------------------------------------------ webhook deliveries

    def delivery(self, event: str, payload: Mapping[str, Any], *,
                 delivery_id: str | None = None,
                 secret: str | None = None) -> tuple[dict[str, str], bytes]:
        """Headers and body of a signed delivery, as GitHub's hookshot sends them."""
        body = json.dumps(payload).encode()
        secret = self.webhook_secret if secret is None else secret
        headers = {
            "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/fake",
            "X-GitHub-Event": event, "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
            "X-GitHub-Hook-ID": "4242000",
            "X-GitHub-Hook-Installation-Target-Type": "integration",
            "X-GitHub-Hook-Installation-Target-ID": str(self.app_id),
            "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, "sha1").hexdigest(),
            "X-Hub-Signature-256": sign(body, secret)}
        return headers, body

    def _envelope(self, action: str, full_name: str, sender: str,
                  sender_type: str | None) -> dict[str, Any]:
        """Keys every repository event has: action, repository, sender, installation."""
        repo = self.repos[full_name]
        installation = self.installation_of(repo.owner.login)
        data: dict[str, Any] = {
            "action": action, "repository": self._repo_json(repo),
            "sender": self._user_json(self.user(sender, type=sender_type))}
        if repo.owner.type == "Organization":
            data["organization"] = {"login": repo.owner.login, "id": repo.owner.id}
        if installation is not None:
            data["installation"] = {"id": installation.id,
                                    "node_id": f"MDIz_{installation.id}"}
        return data

    def _issue_or_new(self, full_name: str, number: int) -> FakeIssue:
        """The issue `number`, opened on the fly when a test did not create it."""
        issue = self.issues.get((full_name, number))
        return issue or self.add_issue(full_name, f"Issue {number}", number=number)

    def issue_comment_payload(self, full_name: str, number: int, body: str, *,
                              sender: str = "alice", sender_type: str | None = None,
                              action: str = "created",
                              comment_id: int | None = None) -> dict[str, Any]:
        """issue_comment.created (the comment is stored) or .edited (`comment_id` edited)."""
        issue = self._issue_or_new(full_name, number)
        data = self._envelope(action, full_name, sender, sender_type)
        if action == "edited":
            comment = self.comment(comment_id) if comment_id else self.comments_on(
                full_name, number)[-1]
            data["changes"] = {"body": {"from": comment.body}}
            comment.body = body
            comment.history.append(body)
        else:
            comment = self._new_comment(full_name, number, body, self.user(sender))
        data.update(issue=self._issue_json(issue), comment=self._comment_json(comment))
        return data

    def issues_labeled_payload(self, full_name: str, number: int, label: str = "sesame", *,
                               sender: str = "alice") -> dict[str, Any]:
        """issues.labeled; the label is added to the issue."""
        issue = self._issue_or_new(full_name, number)
        if label not in issue.labels:
            issue.labels.append(label)
        data = self._envelope("labeled", full_name, sender, None)
        data.update(issue=self._issue_json(issue), label=self._label_json(full_name, label))
        return data

    def review_comment_payload(self, full_name: str, number: int, body: str, *,
                               path: str = "src/widget.py", line: int = 2,
                               diff_hunk: str | None = None, in_reply_to: int | None = None,
                               sender: str = "alice", sender_type: str | None = None,
                               action: str = "created") -> dict[str, Any]:
        """pull_request_review_comment.created on PR `number` (stored as a review comment)."""
        pull = self.issues[(full_name, number)]
        hunk = diff_hunk or "@@ -1,2 +1,2 @@\n def answer():\n-    return 41\n+    return 42"
        comment = self._new_comment(full_name, number, body, self.user(sender), kind="review",
                                    path=path, line=line, diff_hunk=hunk,
                                    in_reply_to=in_reply_to, review_id=next(self._ids))
        data = self._envelope(action, full_name, sender, sender_type)
        data.update(comment=self._comment_json(comment), pull_request=self._pull_json(pull))
        return data

    def review_submitted_payload(self, full_name: str, number: int, body: str | None, *,
                                 state: str = "commented", sender: str = "alice",
                                 sender_type: str | None = None) -> dict[str, Any]:
        """pull_request_review.submitted on PR `number`."""
        pull = self.issues[(full_name, number)]
        review_id = next(self._ids)
        pull_json = self._pull_json(pull)
        data = self._envelope("submitted", full_name, sender, sender_type)
        data["review"] = {
            "id": review_id, "node_id": f"PRR_{review_id}",
            "user": self._user_json(self.user(sender)), "body": body, "state": state,
            "commit_id": pull_json["head"]["sha"], "submitted_at": iso(),
            "html_url": f"{pull_json['html_url']}#pullrequestreview-{review_id}",
            "pull_request_url": pull_json["url"],
            "author_association": self._association(full_name, sender)}
        data["pull_request"] = pull_json
        return data

    def pull_request_payload(self, full_name: str, number: int, action: str = "closed", *,
                             sender: str = "alice") -> dict[str, Any]:
        """pull_request.<action> (closed sets the PR's state)."""
        pull = self.issues[(full_name, number)]
        if action == "closed":
            pull.state = "closed"
        data = self._envelope(action, full_name, sender, None)
        data.update(number=number, pull_request=self._pull_json(pull))
        return data

    def installation_payload(self, action: str, *, installation_id: int | None = None,
                             sender: str = "octo-admin") -> dict[str, Any]:
        """installation.created/deleted/suspend/unsuspend, applied to the fake's state."""
        installation = self.installations[installation_id or self.installation_id]
        installation.suspended = action == "suspend" or (
            installation.suspended and action != "unsuspend")
        if action == "deleted":
            installation.deleted = True
            self._revoke(installation.id)
        if action == "created":
            installation.deleted = False
        data: dict[str, Any] = {
            "action": action, "installation": self._installation_json(installation),
            "sender": self._user_json(self.user(sender)), "requester": None}
        if action in ("created", "deleted"):
            data["repositories"] = [self._repo_brief(name) for name in sorted(installation.repos)]
        return data

    def installation_repositories_payload(self, action: str, repos: Iterable[str], *,
                                          installation_id: int | None = None,
                                          sender: str = "octo-admin") -> dict[str, Any]:
        """installation_repositories.added/removed, applied to the installation."""
        installation = self.installations[installation_id or self.installation_id]
        names = list(repos)
        for name in names:
            (installation.repos.add if action == "added" else installation.repos.discard)(name)
        briefs = [self._repo_brief(name) for name in names]
        return {"action": action, "installation": self._installation_json(installation),
                "repository_selection": "selected",
                "repositories_added": briefs if action == "added" else [],
                "repositories_removed": briefs if action == "removed" else [],
                "requester": None, "sender": self._user_json(self.user(sender))}

    def ping_payload(self) -> dict[str, Any]:
        """ping, sent when the App's webhook is set up."""
        return {"zen": "Keep it logically awesome.", "hook_id": 4242000,
                "hook": {"type": "App", "id": 4242000, "name": "web", "active": True,
                         "events": APP_EVENTS, "app_id": self.app_id,
                         "config": {"content_type": "json", "insecure_ssl": "0",
                                    "url": "https://sesame.example.com/webhooks/github"}}}

    def _repo_brief(self, full_name: str) -> dict[str, Any]:
        """The short repository object of installation events."""
        repo = self.repos[full_name]
        return {"id": repo.id, "node_id": f"R_{repo.id}", "name": repo.name,
                "full_name": full_name, "private": repo.private}

    def _new_comment(self, full_name: str, number: int, body: str, user: FakeUser,
                     **extra: Any) -> FakeComment:
        """Store a new comment."""
        comment = FakeComment(next(self._ids), full_name, number, body, user,
                              history=[body], **extra)
        self.comments.append(comment)
        return comment

    def _revoke(self, installation_id: int) -> None:
        """Revoke every token of an installation."""
        for key in [k for k, t in self.tokens.items() if t.installation_id == installation_id]:
            del self.tokens[key]

    # ------------------------------------------------------------ HTTP plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Record every request; turn GitHubError into GitHub's JSON error responses."""
        scheme, credential = _authorization(request)
        body = await request.read()
        parsed = None
        if body and not request.path.startswith("/git/"):
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        record = RecordedRequest(request.method, request.path, dict(request.query), scheme,
                                 credential, 500, parsed)
        self.requests.append(record)
        try:
            response = await self._intercept(request) or await handler(request)
        except GitHubError as exc:
            response = _error_response(exc)
        record.status = response.status
        return response

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the REST and git endpoints."""
        repo = "/repos/{owner}/{repo}"
        routes = [
            ("GET", "/app", self._get_app),
            ("POST", "/app-manifests/{code}/conversions", self._convert_manifest),
            ("GET", "/app/installations", self._list_installations),
            ("GET", "/app/installations/{id}", self._get_installation),
            ("POST", "/app/installations/{id}/access_tokens", self._create_token),
            ("GET", repo + "/installation", self._get_repo_installation),
            ("GET", "/installation/repositories", self._installation_repos),
            ("GET", "/user", self._get_user),
            ("GET", repo, self._get_repo),
            ("GET", repo + "/collaborators/{username}/permission", self._get_permission),
            ("GET", repo + "/contents/{path:.+}", self._get_contents),
            ("POST", repo + "/check-runs", self._create_check_run),
            ("PATCH", repo + "/check-runs/{id:\\d+}", self._edit_check_run),
            ("GET", repo + "/check-runs/{id:\\d+}", self._get_check_run),
            ("GET", repo + "/issues/{number:\\d+}", self._get_issue),
            ("GET", repo + "/issues/{number:\\d+}/comments", self._list_issue_comments),
            ("POST", repo + "/issues/{number:\\d+}/comments", self._create_issue_comment),
            ("GET", repo + "/issues/comments/{id:\\d+}", self._get_issue_comment),
            ("PATCH", repo + "/issues/comments/{id:\\d+}", self._edit_issue_comment),
            ("POST", repo + "/issues/comments/{id:\\d+}/reactions", self._react),
            ("GET", repo + "/pulls", self._list_pulls),
            ("POST", repo + "/pulls", self._create_pull),
            ("GET", repo + "/pulls/{number:\\d+}", self._get_pull),
            ("PATCH", repo + "/pulls/{number:\\d+}", self._edit_pull),
            ("GET", repo + "/pulls/{number:\\d+}/comments", self._list_review_comments),
            ("POST", repo + "/pulls/{number:\\d+}/comments/{id:\\d+}/replies", self._reply),
            ("GET", repo + "/pulls/comments/{id:\\d+}", self._get_review_comment),
            ("PATCH", repo + "/pulls/comments/{id:\\d+}", self._edit_review_comment),
            ("PATCH", repo + "/git/refs/{ref:heads/.+}", self._update_ref),
            ("GET", "/git/{owner}/{repo_git}/{tail:.*}", self._git),
            ("POST", "/git/{owner}/{repo_git}/{tail:.*}", self._git),
        ]
        for method, path, handler in routes:
            router.add_route(method, path, handler)

    # ------------------------------------------------------------ auth

    def _require_jwt(self, request: web.Request) -> None:
        """Verify the App JWT (RS256, iss = app id, at most 10 minutes)."""
        scheme, credential = _authorization(request)
        if scheme != "bearer" or not credential or credential.startswith("gh"):
            raise GitHubError(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(credential, self.public_key_pem, algorithms=["RS256"],
                                options={"require": ["iat", "exp", "iss"]}, leeway=30)
        except jwt.PyJWTError as exc:
            raise GitHubError(401, f"A JSON web token could not be decoded ({exc})") from None
        now = datetime.now(UTC).timestamp()
        if claims["exp"] > now + 600 + 30:
            raise GitHubError(401, "'Expiration time' claim ('exp') is too far in the future")
        if str(claims["iss"]) != str(self.app_id):
            raise GitHubError(401, "'Issuer' claim ('iss') must be an Integer")
        self.jwts_seen.append(claims)

    def _require_token(self, request: web.Request) -> FakeToken:
        """A valid installation token in `Authorization: token|Bearer ghs_...`."""
        scheme, credential = _authorization(request)
        token = self.tokens.get(credential or "") if scheme in ("token", "bearer") else None
        if token is None or token.expires_at <= datetime.now(UTC):
            raise GitHubError(401, "Bad credentials")
        if self.installations[token.installation_id].suspended:
            raise GitHubError(403, "This installation has been suspended")
        return token

    def _require_repo(self, request: web.Request, permission: str | None = None,
                      level: str = "read") -> tuple[FakeRepo, FakeToken]:
        """The repository in the path, reachable with the request's token (and permission)."""
        token = self._require_token(request)
        full_name = f"{request.match_info['owner']}/{request.match_info['repo']}"
        repo = self.repos.get(full_name)
        if repo is None or not self._token_reaches(token, full_name):
            raise GitHubError(404, "Not Found")
        if permission and not _allows(token.permissions, permission, level):
            raise GitHubError(403, "Resource not accessible by integration")
        return repo, token

    def _token_reaches(self, token: FakeToken, full_name: str) -> bool:
        """True when the token's installation and scope include the repository."""
        installation = self.installations[token.installation_id]
        in_scope = token.repositories is None or full_name.split("/")[1] in token.repositories
        return full_name in installation.repos and in_scope and not installation.deleted

    # ------------------------------------------------------------ App endpoints

    async def _convert_manifest(self, request: web.Request) -> web.Response:
        """POST /app-manifests/{code}/conversions: a code from `manifest_codes` yields the App (once)."""
        if request.match_info["code"] not in self.manifest_codes:
            raise GitHubError(404, "Not Found")
        self.manifest_codes.discard(request.match_info["code"])
        return _json({"id": self.app_id, "slug": self.slug, "name": self.slug.capitalize(),
                      "html_url": f"{self.url}/apps/{self.slug}", "pem": self.private_key_pem,
                      "webhook_secret": self.webhook_secret, "client_id": "Iv1.fake",
                      "client_secret": "fake-client-secret"}, status=201)

    async def _get_app(self, request: web.Request) -> web.Response:
        """GET /app."""
        self._require_jwt(request)
        return _json({"id": self.app_id, "slug": self.slug, "node_id": f"A_{self.app_id}",
                      "name": self.slug.capitalize(), "owner": self._user_json(
                          self.user("acme", type="Organization")),
                      "permissions": APP_PERMISSIONS, "events": APP_EVENTS,
                      "html_url": f"{self.url}/apps/{self.slug}"})

    async def _list_installations(self, request: web.Request) -> web.Response:
        """GET /app/installations."""
        self._require_jwt(request)
        return _json([self._installation_json(i) for i in self.installations.values()
                      if not i.deleted])

    def _installation(self, installation_id: str) -> FakeInstallation:
        """An existing installation, else 404."""
        installation = self.installations.get(int(installation_id))
        if installation is None or installation.deleted:
            raise GitHubError(404, "Not Found")
        return installation

    async def _get_installation(self, request: web.Request) -> web.Response:
        """GET /app/installations/{id}."""
        self._require_jwt(request)
        return _json(self._installation_json(self._installation(request.match_info["id"])))

    async def _create_token(self, request: web.Request) -> web.Response:
        """POST /app/installations/{id}/access_tokens, optionally scoped."""
        self._require_jwt(request)
        installation = self._installation(request.match_info["id"])
        if installation.suspended:
            raise GitHubError(403, "This installation has been suspended")
        body = await _json_body(request)
        scope = self._token_scope(installation, body)
        permissions = dict(body.get("permissions") or APP_PERMISSIONS)
        for name, level in permissions.items():
            if not _allows(APP_PERMISSIONS, name, level):
                raise GitHubError(422, f"The permissions requested are not granted to this "
                                       f"installation: {name}={level}")
        token = FakeToken("ghs_" + secrets.token_urlsafe(27).replace("-", "a").replace("_", "b"),
                          installation.id, datetime.now(UTC) + self.token_ttl,
                          permissions, scope)
        self.tokens[token.token] = token
        data: dict[str, Any] = {"token": token.token, "expires_at": iso(token.expires_at),
                                "permissions": permissions, "repository_selection": "selected"}
        if scope is not None:
            data["repositories"] = [self._repo_json(self.repos[f"{installation.account.login}/"
                                                               f"{name}"]) for name in sorted(scope)]
        return _json(data, status=201)

    def _token_scope(self, installation: FakeInstallation,
                     body: Mapping[str, Any]) -> frozenset[str] | None:
        """Repository names a token request asks for; 422 for ones outside the installation."""
        names = set(body.get("repositories") or ())
        by_id = {r.id: r.name for n, r in self.repos.items() if n in installation.repos}
        for repo_id in body.get("repository_ids") or ():
            if repo_id not in by_id:
                raise GitHubError(422, "There is at least one repository that does not exist "
                                       "or is not accessible to the parent installation.")
            names.add(by_id[repo_id])
        account = installation.account.login
        if any(f"{account}/{name}" not in installation.repos for name in names):
            raise GitHubError(422, "There is at least one repository that does not exist or "
                                   "is not accessible to the parent installation.")
        return frozenset(names) if names else None

    async def _get_repo_installation(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/installation (App JWT)."""
        self._require_jwt(request)
        full_name = f"{request.match_info['owner']}/{request.match_info['repo']}"
        for installation in self.installations.values():
            if full_name in installation.repos and not installation.deleted:
                return _json(self._installation_json(installation))
        raise GitHubError(404, "Not Found")

    async def _installation_repos(self, request: web.Request) -> web.Response:
        """GET /installation/repositories."""
        token = self._require_token(request)
        installation = self.installations[token.installation_id]
        repos = [self._repo_json(self.repos[n]) for n in sorted(installation.repos)
                 if self._token_reaches(token, n)]
        return _json({"total_count": len(repos), "repository_selection": "selected",
                      "repositories": repos})

    async def _get_user(self, request: web.Request) -> web.Response:
        """GET /user with a personal access token."""
        scheme, credential = _authorization(request)
        if credential in self.tokens:
            raise GitHubError(403, "Resource not accessible by integration")
        login = self.pats.get(credential or "") if scheme in ("token", "bearer") else None
        if login is None:
            raise GitHubError(401, "Bad credentials")
        user = self.users[login]
        return _json({**self._user_json(user), "name": user.name, "email": user.email})

    # ------------------------------------------------------------ repositories and issues

    async def _get_repo(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}."""
        repo, _ = self._require_repo(request)
        return _json(self._repo_json(repo))

    async def _get_contents(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/contents/{path}?ref=: a file's bytes (base64) at a branch, tag or sha (default
        branch without ref); 404 for a missing file or ref, a directory listing is not served."""
        repo, _ = self._require_repo(request, "contents", "read")
        path, ref = request.match_info["path"], request.query.get("ref") or repo.default_branch
        self.contents_asks.append((path, time.monotonic()))
        spec = f"{ref}:{path}"
        kind = subprocess.run(["git", "cat-file", "-t", spec], cwd=repo.path, capture_output=True, text=True,
                              env=gitrepo.git_env())
        if kind.returncode != 0 or kind.stdout.strip() != "blob":
            raise GitHubError(404, "Not Found")
        blob = subprocess.run(["git", "cat-file", "blob", spec], cwd=repo.path, capture_output=True, check=True,
                              env=gitrepo.git_env()).stdout
        sha = gitrepo.git("rev-parse", spec, cwd=repo.path)
        self.contents_reads.append((repo.full_name, path, ref))
        return _json({"type": "file", "encoding": "base64", "size": len(blob), "name": path.rsplit("/", 1)[-1],
                      "path": path, "sha": sha, "content": base64.encodebytes(blob).decode()})

    async def _create_check_run(self, request: web.Request) -> web.Response:
        """POST /repos/{o}/{r}/check-runs (needs checks: write): name and an existing head_sha required."""
        repo, _ = self._require_repo(request, "checks", "write")
        body = await _json_body(request)
        name, head_sha = _required_text(body, "name"), _required_text(body, "head_sha")
        if subprocess.run(["git", "cat-file", "-e", f"{head_sha}^{{commit}}"], cwd=repo.path,
                          env=gitrepo.git_env(), capture_output=True).returncode != 0:
            raise _validation("head_sha", "invalid")
        _check_run_fields(body)
        run = FakeCheckRun(next(self._ids), repo.full_name, name, head_sha)
        run.update(body)
        self.check_runs.append(run)
        return _json(self._check_run_json(run), status=201)

    async def _edit_check_run(self, request: web.Request) -> web.Response:
        """PATCH /repos/{o}/{r}/check-runs/{id}."""
        repo, _ = self._require_repo(request, "checks", "write")
        run = self._check_run(repo, request.match_info["id"])
        body = await _json_body(request)
        _check_run_fields(body)
        run.update(body)
        return _json(self._check_run_json(run))

    async def _get_check_run(self, request: web.Request) -> web.Response:
        repo, _ = self._require_repo(request, "checks", "read")
        return _json(self._check_run_json(self._check_run(repo, request.match_info["id"])))

    def _check_run(self, repo: FakeRepo, run_id: str) -> FakeCheckRun:
        run = next((r for r in self.check_runs if r.id == int(run_id) and r.repo == repo.full_name), None)
        if run is None:
            raise GitHubError(404, "Not Found")
        return run

    def _check_run_json(self, run: FakeCheckRun) -> dict[str, Any]:
        return {"id": run.id, "name": run.name, "head_sha": run.head_sha, "status": run.status,
                "conclusion": run.conclusion, "external_id": run.external_id, "details_url": run.details_url,
                "output": run.output, "html_url": f"{self.url}/{run.repo}/runs/{run.id}",
                "app": {"id": self.app_id, "slug": self.slug}}

    def check_run_payload(self, run: FakeCheckRun, action: str = "requested_action", identifier: str | None = None,
                          *, sender: str = "alice") -> dict[str, Any]:
        """A check_run delivery for `run` (requested_action with the button's identifier, or rerequested)."""
        repo = self.repos[run.repo]
        installation = self.installation_of(repo.owner.login)
        data: dict[str, Any] = {"action": action, "check_run": self._check_run_json(run),
                                "repository": self._repo_json(repo), "sender": self._user_json(self.user(sender)),
                                "installation": {"id": installation.id if installation else 0}}
        if identifier is not None:
            data["requested_action"] = {"identifier": identifier}
        return data

    def commit_file(self, full_name: str, branch: str, files: Mapping[str, str], message: str = "Change") -> str:
        """Commit `files` on top of `branch` (created from the default branch if new); the new sha."""
        repo = self.repos[full_name]
        with tempfile.TemporaryDirectory() as work:
            gitrepo.git("clone", "-q", str(repo.path), work, cwd=repo.path.parent)
            existing = branch in gitrepo.branches(repo.path)
            gitrepo.git("checkout", "-q", *([branch] if existing else ["-b", branch]), cwd=Path(work))
            gitrepo.commit_files(Path(work), files, message)
            gitrepo.git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=Path(work))
        self._sync_pull_heads(full_name)
        return gitrepo.branches(repo.path)[branch]

    async def _get_permission(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/collaborators/{u}/permission."""
        repo, _ = self._require_repo(request)
        login = request.match_info["username"]
        if login not in self.users:
            raise GitHubError(404, "Not Found")
        default = "none" if repo.private else "read"
        role = self.permissions.get((repo.full_name, login), default)
        return _json({"permission": _ROLE_PERMISSION[role], "role_name": role,
                      "user": self._user_json(self.users[login])})

    def _issue(self, repo: FakeRepo, number: str) -> FakeIssue:
        """Issue `number` of `repo`, else 404."""
        issue = self.issues.get((repo.full_name, int(number)))
        if issue is None:
            raise GitHubError(404, "Not Found")
        return issue

    async def _get_issue(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/issues/{n}."""
        repo, _ = self._require_repo(request, "issues", "read")
        return _json(self._issue_json(self._issue(repo, request.match_info["number"])))

    async def _list_issue_comments(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/issues/{n}/comments (paginated)."""
        repo, _ = self._require_repo(request, "issues", "read")
        issue = self._issue(repo, request.match_info["number"])
        items = [self._comment_json(c) for c in self.comments_on(repo.full_name, issue.number)
                 if c.kind == "issue"]
        return _paginated(request, items)

    async def _create_issue_comment(self, request: web.Request) -> web.Response:
        """POST /repos/{o}/{r}/issues/{n}/comments."""
        repo, token = self._require_repo(request)
        issue = self._issue(repo, request.match_info["number"])
        self._require_write(token, "pull_requests" if issue.is_pull else "issues")
        body = await _json_body(request)
        text = _required_text(body, "body")
        comment = self._new_comment(repo.full_name, issue.number, text, self.bot_user)
        return _json(self._comment_json(comment), status=201)

    def _require_write(self, token: FakeToken, permission: str) -> None:
        """403 unless the token may write `permission` (issues also allow PR comments)."""
        if not (_allows(token.permissions, permission, "write")
                or _allows(token.permissions, "issues", "write")):
            raise GitHubError(403, "Resource not accessible by integration")

    def _find_comment(self, repo: FakeRepo, comment_id: str, kind: str) -> FakeComment:
        """A comment of `kind` on `repo`, else 404."""
        for comment in self.comments:
            if comment.id == int(comment_id) and comment.repo == repo.full_name \
                    and comment.kind == kind:
                return comment
        raise GitHubError(404, "Not Found")

    async def _get_issue_comment(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/issues/comments/{id}."""
        repo, _ = self._require_repo(request, "issues", "read")
        return _json(self._comment_json(self._find_comment(repo, request.match_info["id"],
                                                           "issue")))

    def _take_rate_limit(self) -> None:
        """Refuse this edit when a rate-limit plan is active."""
        plan = self._rate_limit
        if plan.remaining <= 0:
            return
        plan.remaining -= 1
        message = ("You have exceeded a secondary rate limit. Please wait a few minutes "
                   "before you try again.")
        raise GitHubError(plan.status, message, {"retry-after": str(plan.retry_after),
                                                 "x-ratelimit-remaining": "4000"})

    async def _edit(self, request: web.Request, kind: str) -> web.Response:
        """PATCH a comment body, recording the edit (only the App's own comments)."""
        repo, token = self._require_repo(request)
        comment = self._find_comment(repo, request.match_info["id"], kind)
        self._require_write(token, "pull_requests" if kind == "review" else "issues")
        self._take_rate_limit()
        if comment.user.login != self.bot_user.login:
            raise GitHubError(403, "Resource not accessible by integration")
        comment.body = _required_text(await _json_body(request), "body")
        comment.history.append(comment.body)
        comment.updated_at = iso()
        return _json(self._comment_json(comment))

    async def _edit_issue_comment(self, request: web.Request) -> web.Response:
        """PATCH /repos/{o}/{r}/issues/comments/{id}."""
        return await self._edit(request, "issue")

    async def _edit_review_comment(self, request: web.Request) -> web.Response:
        """PATCH /repos/{o}/{r}/pulls/comments/{id}."""
        return await self._edit(request, "review")

    async def _react(self, request: web.Request) -> web.Response:
        """POST /repos/{o}/{r}/issues/comments/{id}/reactions."""
        repo, token = self._require_repo(request)
        self._require_write(token, "issues")
        comment = self._find_comment(repo, request.match_info["id"], "issue")
        content = _required_text(await _json_body(request), "content")
        comment.reactions.append(content)
        return _json({"id": next(self._ids), "content": content,
                      "user": self._user_json(self.bot_user), "created_at": iso()}, status=201)

    # ------------------------------------------------------------ pull requests

    async def _list_pulls(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/pulls?state=&head=owner:branch&base= (paginated)."""
        repo, _ = self._require_repo(request, "pull_requests", "read")
        state = request.query.get("state", "open")
        head, base = request.query.get("head"), request.query.get("base")
        items = [self._pull_json(p) for p in self.pulls if p.repo == repo.full_name
                 and (state == "all" or p.state == state)
                 and (head is None or f"{(p.head_repo or '').split('/')[0]}:{p.head}" == head)
                 and (base is None or p.base == base)]
        return _paginated(request, items)

    async def _create_pull(self, request: web.Request) -> web.Response:
        """POST /repos/{o}/{r}/pulls: 422 when head is missing, unchanged or already open."""
        repo, _ = self._require_repo(request, "pull_requests", "write")
        body = await _json_body(request)
        title = _required_text(body, "title")
        head = _required_text(body, "head").split(":")[-1]
        base = str(body.get("base") or repo.default_branch)
        branches = self.branches(repo.full_name)
        if head not in branches or base not in branches:
            raise _validation("head" if head not in branches else "base", "invalid")
        if branches[head] == branches[base]:
            raise _validation("head", "custom", f"No commits between {base} and {head}")
        if any(p.repo == repo.full_name and p.head == head and p.base == base
               and p.state == "open" for p in self.pulls):
            raise _validation("head", "custom", f"A pull request already exists for "
                                                f"{repo.owner.login}:{head}.")
        pull = self.add_pull(repo.full_name, head, base=base, title=title,
                             body=body.get("body"), user=self.bot_user.login)
        pull.draft = bool(body.get("draft", False))
        return _json(self._pull_json(pull), status=201)

    def _pull(self, repo: FakeRepo, number: str) -> FakeIssue:
        """Pull request `number`, else 404."""
        pull = self._issue(repo, number)
        if not pull.is_pull:
            raise GitHubError(404, "Not Found")
        return pull

    async def _get_pull(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/pulls/{n}."""
        repo, _ = self._require_repo(request, "pull_requests", "read")
        return _json(self._pull_json(self._pull(repo, request.match_info["number"])))

    async def _edit_pull(self, request: web.Request) -> web.Response:
        """PATCH /repos/{o}/{r}/pulls/{n}: title, body, state."""
        repo, _ = self._require_repo(request, "pull_requests", "write")
        pull = self._pull(repo, request.match_info["number"])
        body = await _json_body(request)
        pull.title = str(body.get("title", pull.title))
        pull.body = body.get("body", pull.body)
        pull.state = str(body.get("state", pull.state))
        return _json(self._pull_json(pull))

    async def _list_review_comments(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/pulls/{n}/comments."""
        repo, _ = self._require_repo(request, "pull_requests", "read")
        pull = self._pull(repo, request.match_info["number"])
        items = [self._comment_json(c) for c in self.comments_on(repo.full_name, pull.number)
                 if c.kind == "review"]
        return _paginated(request, items)

    async def _get_review_comment(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/pulls/comments/{id}."""
        repo, _ = self._require_repo(request, "pull_requests", "read")
        return _json(self._comment_json(self._find_comment(repo, request.match_info["id"],
                                                           "review")))

    async def _reply(self, request: web.Request) -> web.Response:
        """POST /repos/{o}/{r}/pulls/{n}/comments/{id}/replies: a reply in a review thread."""
        repo, token = self._require_repo(request)
        self._require_write(token, "pull_requests")
        pull = self._pull(repo, request.match_info["number"])
        parent = self._find_comment(repo, request.match_info["id"], "review")
        if parent.number != pull.number:
            raise GitHubError(404, "Not Found")
        root = parent.in_reply_to or parent.id  # GitHub threads replies on the first comment
        text = _required_text(await _json_body(request), "body")
        comment = self._new_comment(repo.full_name, pull.number, text, self.bot_user,
                                    kind="review", path=parent.path, line=parent.line,
                                    diff_hunk=parent.diff_hunk, in_reply_to=root,
                                    review_id=next(self._ids))
        return _json(self._comment_json(comment), status=201)

    # ------------------------------------------------------------ git refs

    async def _update_ref(self, request: web.Request) -> web.Response:
        """PATCH /repos/{o}/{r}/git/refs/heads/{branch} with `sha` (and `force`): 422 for a missing ref or
        commit, and for a move that is not a fast-forward unless forced, as GitHub answers."""
        repo, _ = self._require_repo(request, "contents", "write")
        body = await _json_body(request)
        sha, ref = _required_text(body, "sha"), f"refs/{request.match_info['ref']}"
        current = subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref], cwd=repo.path,
                                 capture_output=True, text=True, env=gitrepo.git_env()).stdout.strip()
        if not current:
            raise GitHubError(422, "Reference does not exist")
        exists = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo.path,
                                capture_output=True, env=gitrepo.git_env()).returncode == 0
        if not exists:
            raise GitHubError(422, "Object does not exist")
        forward = subprocess.run(["git", "merge-base", "--is-ancestor", current, sha], cwd=repo.path,
                                 capture_output=True, env=gitrepo.git_env()).returncode == 0
        if not forward and not body.get("force"):
            raise GitHubError(422, "Update is not a fast forward")
        gitrepo.git("update-ref", ref, sha, current, cwd=repo.path)
        self._sync_pull_heads(repo.full_name)
        url = f"{self.url}/repos/{repo.full_name}/git/{ref}"
        return _json({"ref": ref, "node_id": f"REF_{sha[:8]}", "url": url,
                      "object": {"type": "commit", "sha": sha, "url": f"{self.url}/repos/{repo.full_name}/git/"
                                                                    f"commits/{sha}"}})

    # ------------------------------------------------------------ git smart HTTP

    def _git_token(self, request: web.Request, full_name: str, service: str) -> FakeToken:
        """The installation token of HTTP Basic `x-access-token:<token>`, allowed on the repo."""
        scheme, credential = _authorization(request)
        user, _, password = _basic(credential) if scheme == "basic" else ("", "", "")
        token = self.tokens.get(password) if user == "x-access-token" else None
        if token is None or token.expires_at <= datetime.now(UTC):
            raise GitHubError(401, "Invalid username or password.",
                              {"WWW-Authenticate": 'Basic realm="GitHub"'})
        if full_name not in self.repos or not self._token_reaches(token, full_name):
            raise GitHubError(404, "Repository not found.")
        level = "write" if service == "git-receive-pack" else "read"
        if not _allows(token.permissions, "contents", level):
            raise GitHubError(403, "Permission to " + full_name + " denied.")
        return token

    async def _git(self, request: web.Request) -> web.StreamResponse:
        """git clone/fetch/push through `git http-backend` (CGI)."""
        owner, repo_git = request.match_info["owner"], request.match_info["repo_git"]
        if not repo_git.endswith(".git"):
            raise GitHubError(404, "Not Found")
        full_name = f"{owner}/{repo_git.removesuffix('.git')}"
        tail = request.match_info["tail"]
        service = request.query.get("service") or tail.rsplit("/", 1)[-1]
        self._git_token(request, full_name, service)
        status, headers, payload = await self._http_backend(request, f"/{full_name}.git/{tail}")
        if service == "git-receive-pack" and request.method == "POST":
            self.pushes.append(RecordedPush(full_name, self.branches(full_name)))
            self._sync_pull_heads(full_name)
        return web.Response(status=status, headers=headers, body=payload)

    async def _http_backend(self, request: web.Request,
                            path_info: str) -> tuple[int, dict[str, str], bytes]:
        """Run `git http-backend` for one request; parse its CGI answer."""
        body = await request.read()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root),
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
               "GIT_PROJECT_ROOT": str(self.git_root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": path_info, "REQUEST_METHOD": request.method,
               "QUERY_STRING": request.query_string, "REMOTE_USER": "x-access-token",
               "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": request.headers.get(
                   "Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "GIT_PROTOCOL": request.headers.get("Git-Protocol", "")}
        # aiohttp may already have inflated a gzip body; only pass the encoding if it did not.
        if request.headers.get("Content-Encoding") == "gzip" and body[:2] == b"\x1f\x8b":
            env["HTTP_CONTENT_ENCODING"] = "gzip"
        proc = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await communicate(proc, body)  # a GET's backend may exit before its empty stdin is written
        return _parse_cgi(out)


# ---------------------------------------------------------------- module helpers


def _authorization(request: web.Request) -> tuple[str | None, str | None]:
    """The scheme (lowercased) and credential of the Authorization header."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.strip().partition(" ")
    return (scheme.lower() or None), (credential.strip() or None)


def _basic(credential: str | None) -> tuple[str, str, str]:
    """Decode HTTP Basic credentials into (user, ':', password)."""
    try:
        return base64.b64decode(credential or "").decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", "", ""


def _allows(granted: Mapping[str, str], permission: str, level: str) -> bool:
    """True when `granted` includes `permission` at `level` or higher."""
    if permission == "metadata":
        return level == "read"
    return _LEVELS.get(granted.get(permission, "none"), 0) >= _LEVELS[level]


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response with GitHub's rate-limit headers."""
    reset = int(datetime.now(UTC).timestamp()) + 3600
    base = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999",
            "x-ratelimit-reset": str(reset), "x-github-media-type": "github.v3; format=json"}
    return web.json_response(data, status=status, headers={**base, **(headers or {})})


def _error_response(exc: GitHubError) -> web.Response:
    """GitHub's JSON error body."""
    data: dict[str, Any] = {"message": exc.message, "documentation_url": DOCS_URL,
                            "status": str(exc.status)}
    if exc.errors:
        data["errors"] = exc.errors
    return _json(data, status=exc.status, headers=exc.headers)


def _validation(field_name: str, code: str, message: str | None = None) -> GitHubError:
    """A 422 Validation Failed for a pull request field."""
    error: dict[str, Any] = {"resource": "PullRequest", "field": field_name, "code": code}
    if message:
        error["message"] = message
    return GitHubError(422, "Validation Failed", errors=[error])


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); 400 when it is not JSON."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise GitHubError(400, "Problems parsing JSON") from None
    if not isinstance(data, dict):
        raise GitHubError(400, "Problems parsing JSON")
    return data


def _required_text(body: Mapping[str, Any], key: str) -> str:
    """A required non-empty string field, else 422."""
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise GitHubError(422, "Validation Failed",
                          errors=[{"resource": "Issue", "field": key, "code": "missing_field"}])
    return value


def _paginated(request: web.Request, items: list[Any]) -> web.Response:
    """One page of `items` with a `Link: rel="next"` header, as GitHub paginates."""
    per_page = min(int(request.query.get("per_page", "30")), 100)
    page = int(request.query.get("page", "1"))
    chunk = items[(page - 1) * per_page: page * per_page]
    headers = {}
    if page * per_page < len(items):
        next_url = request.url.update_query(page=str(page + 1), per_page=str(per_page))
        headers["Link"] = f'<{next_url}>; rel="next"'
    return _json(chunk, headers=headers)


def _parse_cgi(out: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split CGI output into status, headers and body."""
    found = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := out.find(sep)) >= 0]
    if not found:
        return 500, {}, out
    split, length = min(found)
    head, payload = out[:split], out[split + length:]
    status, headers = 200, {}
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name:
            headers[name.strip()] = value.strip()
    return status, headers, payload


# ---------------------------------------------------------------- pytest fixture


@pytest_asyncio.fixture
async def fake_github(tmp_path: Path) -> AsyncIterator[FakeGitHub]:
    """A running FakeGitHub with `acme/widget` (installed) and alice as a writer."""
    async with FakeGitHub(root=tmp_path / "fake-github") as gh:
        gh.add_repo("acme/widget")
        gh.set_permission("acme/widget", "alice", "write")
        yield gh
