"""Before a push: every object it would send is scanned for every secret the server knows."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.secretscan import KnownSecret, SecretMatcher, credential_label, settings_secrets
from bot.services import Services
from runner import git as gitops
from runner.workspace import START_REF

TOKEN_LABEL = "a GitHub token minted for this session"
THREAD_SCAN = 1 << 20  # blobs from this size are scanned off the event loop
NAMES_SHOWN = 5
TREE_ENTRY = b"\0"
# refs/sesame/start itself when it exists (a pattern with a glob character gets no `/*` appended), nothing
# when it does not: `rev-list --glob` needs no look-up of its own first
START_GLOB = START_REF[:-1] + "[" + START_REF[-1] + "]"
MATCHERS_KEPT = 4
_matchers: OrderedDict[tuple[KnownSecret, ...], SecretMatcher] = OrderedDict()


@dataclass(frozen=True)
class Leak:
    """Where a secret was found (a path, already masked) and what it is; never the value."""

    path: str
    label: str


class SecretInPush(Exception):
    """The push would publish a secret: it is refused; the message names files and kinds only."""

    def __init__(self, leaks: list[Leak]) -> None:
        self.leaks = leaks
        shown = ", ".join(f"{leak.path} holds {leak.label}" for leak in leaks[:NAMES_SHOWN])
        more = f" (and {len(leaks) - NAMES_SHOWN} more)" if len(leaks) > NAMES_SHOWN else ""
        super().__init__(f"push refused, nothing was pushed: {shown}{more}")


async def known_secrets(services: Services, tokens: Iterable[str]) -> list[KnownSecret]:
    """Server settings, every stored credential, and the tokens minted for this session."""
    stored = [KnownSecret(credential_label(c.agent, c.kind), c.value)
              for c in await services.credentials.all_values()]
    return [*settings_secrets(services.settings), *stored, *(KnownSecret(TOKEN_LABEL, t) for t in tokens)]


def matcher_for(secrets: Sequence[KnownSecret]) -> SecretMatcher:
    """The matcher of these secrets: built once (every form of a private key in one automaton costs
    milliseconds), kept for the next scan of the same secrets (a few sets, the latest used)."""
    key = tuple(secrets)
    matcher = _matchers.get(key)
    if matcher is None:
        matcher = _matchers[key] = SecretMatcher(key)
        while len(_matchers) > MATCHERS_KEPT:
            _matchers.popitem(last=False)
    _matchers.move_to_end(key)
    return matcher


async def new_objects(git_dir: Path, sha: str) -> list[tuple[str, str]]:
    """(object id, path) of every object reachable from sha that neither the remote's branches nor the
    start ref (a fork PR's head: already in the base repository, not the agent's) reach."""
    out = await gitops.in_git_dir(git_dir, ["rev-list", "--objects", sha, "--not", "--remotes",
                                            f"--glob={START_GLOB}"])
    # Lines end at \n only: str.splitlines would also cut a file name at \x1c or \u2028.
    return [(oid, path) for oid, _, path in (line.partition(" ") for line in out.split("\n") if line)]


def tree_names(data: bytes) -> list[bytes]:
    """The entry names of a raw tree object (`mode name\\0` then a 20-byte id, repeated)."""
    names, at = [], 0
    while at < len(data):
        end = data.find(TREE_ENTRY, at)
        if end < 0:
            break
        names.append(data[at:end].partition(b" ")[2])
        at = end + 21
    return names


def locate(matcher: SecretMatcher, kind: bytes, path: str, data: bytes) -> str:
    """What to call the place of a hit: the file, the entry named after a secret, or the commit."""
    if kind == b"commit":
        return "the commit message"
    if kind == b"tree":
        named = [n for n in tree_names(data) if matcher.find(n)]
        name = named[0].decode(errors="backslashreplace") if named else ""
        return f"{path}/{name}" if path else name or "a file name"
    return path or "a file"


async def scan_objects(git_dir: Path, objects: list[tuple[str, str]], matcher: SecretMatcher) -> list[Leak]:
    """Stream the objects out of `git cat-file --batch` and search each; one leak per place and kind.

    A large blob is searched in a thread (the matcher releases the GIL) while the next is read.
    """
    proc = await gitops.start_git(["--git-dir", str(git_dir), "cat-file", "--batch"], git_dir,
                                  user=gitops.store_owner(git_dir), stdin=gitops.PIPE)
    assert proc.stdin is not None
    errors = asyncio.ensure_future(proc.stderr.read())  # drained, unused
    names = "".join(f"{oid}\n" for oid, _ in objects).encode()
    feeder = asyncio.ensure_future(_feed(proc.stdin, names))
    leaks: dict[tuple[str, str], None] = {}
    in_flight: tuple[asyncio.Future[list[str]], bytes, str, memoryview] | None = None
    try:
        for _oid, path in objects:
            kind, body = await _read_object(proc.stdout)
            if len(body) < THREAD_SCAN:
                _record(leaks, matcher, matcher.find(body), kind, path, body)
                continue
            if in_flight is not None:
                _record(leaks, matcher, await in_flight[0], *in_flight[1:])
            in_flight = (asyncio.ensure_future(asyncio.to_thread(matcher.find, body)), kind, path, body)
        if in_flight is not None:
            _record(leaks, matcher, await in_flight[0], *in_flight[1:])
        await feeder
    except BaseException:
        feeder.cancel()
        if proc.returncode is None:
            proc.kill()
        raise
    finally:
        await proc.wait()
        await errors
    return [Leak(place, label) for place, label in leaks]


async def _read_object(stdout: asyncio.StreamReader) -> tuple[bytes, memoryview]:
    """The next object of `cat-file --batch`: its type and content."""
    header = (await stdout.readline()).split()
    if len(header) != 3:
        raise RuntimeError("git cat-file ended early while scanning the push for secrets")
    data = await stdout.readexactly(int(header[2]) + 1)
    return header[1], memoryview(data)[:-1]


def _record(leaks: dict[tuple[str, str], None], matcher: SecretMatcher, labels: list[str], kind: bytes,
            path: str, body: memoryview) -> None:
    if labels:
        place = matcher.mask(locate(matcher, kind, path, bytes(body)))
        leaks.update(((place, label), None) for label in labels)


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
        stdin.close()
    except (BrokenPipeError, ConnectionResetError, RuntimeError):
        pass


async def check_push(services: Services, git_dir: Path, sha: str, tokens: Iterable[str]) -> list[Leak]:
    """The leaks a push of sha would make, from the trusted git dir (nothing of the workspace is read)."""
    # the secrets (the database) and the objects (git) are independent: looked up at once
    objects = asyncio.ensure_future(new_objects(git_dir, sha))
    try:
        matcher = matcher_for(await known_secrets(services, tokens))
    except BaseException:
        objects.cancel()
        await asyncio.gather(objects, return_exceptions=True)
        raise
    if not matcher:
        await objects
        return []
    return await scan_objects(git_dir, await objects, matcher)
