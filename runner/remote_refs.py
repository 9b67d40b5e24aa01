"""The remote's branches asked in-process over git's smart HTTP (protocol v2 `ls-refs`, else the v0
advertisement), and the mirror's own, so a fetch runs only when they differ.

The token goes in a request header of this process only: never in argv or the environment of a child.
Nothing here logs a header or a body.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from runner.gitdir import HEADS, ref_wanted

log = logging.getLogger(__name__)

CHECK_SECONDS = 10.0  # past this the refs check gives up and the fetch decides
MAX_ANSWER = 64 << 20  # bytes of a ref listing read at most
_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_ZERO = re.compile(r"0+")


@dataclass(frozen=True)
class RemoteRefs:
    """The remote's refs asked for (name -> oid) and the branch its HEAD names ("" when unknown)."""

    refs: dict[str, str]
    head: str


class RefsUnavailable(Exception):
    """The remote did not list its refs in a way understood here: fetch instead."""


def auth_headers(auth_env: Mapping[str, str], remote: str) -> dict[str, str]:
    """The HTTP headers git would send to `remote`: the `http[.<url>].extraHeader` entries of the
    GIT_CONFIG_* variables the channel gave (bot/github.py git_auth_env)."""
    headers: dict[str, str] = {}
    try:
        count = int(auth_env.get("GIT_CONFIG_COUNT", "0"))
    except ValueError:
        return headers
    for index in range(count):
        key = auth_env.get(f"GIT_CONFIG_KEY_{index}", "")
        section, _, name = key.rpartition(".")
        if name.lower() != "extraheader" or not section.lower().startswith("http"):
            continue
        url = section[len("http."):] if "." in section else ""
        if url and not remote.startswith(url):
            continue
        field, sep, value = auth_env.get(f"GIT_CONFIG_VALUE_{index}", "").partition(":")
        if sep and field.strip():
            headers[field.strip()] = value.strip()
    return headers


def pkt(line: str) -> bytes:
    data = line.encode()
    return f"{len(data) + 4:04x}".encode() + data


def pkt_lines(body: bytes) -> list[bytes | None]:
    """A pkt-line stream as its payloads; None for a flush (0000) or delimiter (0001) packet."""
    lines: list[bytes | None] = []
    at = 0
    while at < len(body):
        try:
            size = int(body[at:at + 4], 16)
        except ValueError as exc:
            raise RefsUnavailable("not a pkt-line stream") from exc
        if size < 4:
            lines.append(None)
            at += 4
            continue
        if at + size > len(body):
            raise RefsUnavailable("a truncated pkt-line")
        lines.append(body[at + 4:at + size])
        at += size
    return lines


def _strip_service(lines: list[bytes | None]) -> list[bytes | None]:
    """The smart HTTP answer without its `# service=git-upload-pack` header and the flush after it (a v2
    answer may come without them, as git's http-backend sends it; git accepts both)."""
    if lines and lines[0] == b"version 2\n":
        return lines
    if not lines or lines[0] is None or not lines[0].startswith(b"# service=git-upload-pack"):
        raise RefsUnavailable("not a smart HTTP answer")
    return lines[2:] if len(lines) > 1 and lines[1] is None else lines[1:]


def parse_v0(lines: list[bytes | None], prefixes: Sequence[str]) -> RemoteRefs:
    """A v0 ref advertisement: `oid name` lines, capabilities after a NUL on the first (symref=HEAD:...)."""
    refs: dict[str, str] = {}
    head = ""
    for raw in lines:
        if raw is None:
            break
        line, _, caps = raw.decode(errors="replace").rstrip("\n").partition("\0")
        for cap in caps.split():
            if cap.startswith("symref=HEAD:"):
                head = cap.removeprefix("symref=HEAD:")
        oid, _, name = line.partition(" ")
        if not _OID.fullmatch(oid):
            raise RefsUnavailable("a malformed ref line")
        if _ZERO.fullmatch(oid) or name.endswith("^{}"):
            continue  # an empty repository's capabilities line; a peeled tag
        if ref_wanted(name, prefixes):
            refs[name] = oid
    return RemoteRefs(refs, head.removeprefix(HEADS) if head.startswith(HEADS) else "")


def parse_ls_refs(lines: list[bytes | None], prefixes: Sequence[str]) -> RemoteRefs:
    """A v2 `ls-refs` answer: `oid name [symref-target:...]` lines up to the flush."""
    refs: dict[str, str] = {}
    head = ""
    for raw in lines:
        if raw is None:
            break
        oid, _, rest = raw.decode(errors="replace").rstrip("\n").partition(" ")
        name, *attributes = rest.split(" ")
        if not _OID.fullmatch(oid) and oid != "unborn":
            raise RefsUnavailable("a malformed ref line")
        if name == "HEAD":
            target = next((a.removeprefix("symref-target:") for a in attributes if a.startswith("symref-target:")), "")
            head = target.removeprefix(HEADS) if target.startswith(HEADS) else ""
        elif oid != "unborn" and ref_wanted(name, prefixes):
            refs[name] = oid
    return RemoteRefs(refs, head)


async def _answer(response: aiohttp.ClientResponse, kind: str) -> bytes:
    if response.status != 200 or response.content_type != f"application/x-git-upload-pack-{kind}":
        raise RefsUnavailable(f"HTTP {response.status} {response.content_type}")
    body = await response.content.read(MAX_ANSWER + 1)
    if len(body) > MAX_ANSWER:
        raise RefsUnavailable("a ref listing over the size limit")
    return body


_SPEAKS_V2: set[str] = set()  # remotes whose advertisement offered v2 ls-refs (this process)


async def list_remote_refs(http: aiohttp.ClientSession, remote: str, auth_env: Mapping[str, str],
                           prefixes: Sequence[str] = (HEADS,)) -> RemoteRefs:
    """The remote's refs under `prefixes` and its HEAD, as `git fetch` would discover them; RefsUnavailable
    when the remote is not smart HTTP or does not answer as such (a redirect included: git follows those
    by its own rules). A remote known to offer v2 `ls-refs` is asked with the one stateless POST (the
    capability advertisement does not change between requests); should that fail, the full exchange runs."""
    if not remote.startswith(("http://", "https://")):
        raise RefsUnavailable("not an HTTP remote")
    base = remote.rstrip("/")
    headers = {**auth_headers(auth_env, remote), "Git-Protocol": "version=2"}
    timeout = aiohttp.ClientTimeout(total=CHECK_SECONDS)
    if remote in _SPEAKS_V2:
        try:
            return await _ls_refs(http, base, headers, timeout, prefixes)
        except (RefsUnavailable, aiohttp.ClientError):
            _SPEAKS_V2.discard(remote)
    async with http.get(f"{base}/info/refs?service=git-upload-pack", headers=headers, timeout=timeout,
                        allow_redirects=False) as response:
        lines = _strip_service(pkt_lines(await _answer(response, "advertisement")))
    if not lines or lines[0] != b"version 2\n":
        return parse_v0(lines, prefixes)  # a server without v2 lists every ref at once
    capabilities = {line.decode(errors="replace").strip().partition("=")[0] for line in lines if line is not None}
    if "ls-refs" not in capabilities:
        raise RefsUnavailable("a v2 server without ls-refs")
    listed = await _ls_refs(http, base, headers, timeout, prefixes)
    _SPEAKS_V2.add(remote)
    return listed


async def _ls_refs(http: aiohttp.ClientSession, base: str, headers: Mapping[str, str],
                   timeout: aiohttp.ClientTimeout, prefixes: Sequence[str]) -> RemoteRefs:
    request = b"".join([pkt("command=ls-refs\n"), b"0001", pkt("symrefs\n"), pkt("ref-prefix HEAD\n"),
                        *(pkt(f"ref-prefix {prefix}\n") for prefix in prefixes), b"0000"])
    async with http.post(f"{base}/git-upload-pack", data=request, timeout=timeout, allow_redirects=False,
                         headers={**headers, "Content-Type": "application/x-git-upload-pack-request",
                                  "Accept": "application/x-git-upload-pack-result"}) as response:
        return parse_ls_refs(pkt_lines(await _answer(response, "result")), prefixes)
