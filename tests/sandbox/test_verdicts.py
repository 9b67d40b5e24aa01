"""verdicts: what the supervisor allows, refuses or reports, as tables of (call, path, policy)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct

import pytest

from runner.sandbox import notify, seccomp
from runner.sandbox.base import Violation
from runner.sandbox.procview import parse_sockaddr
from runner.sandbox.verdicts import (
    ALLOW,
    OPEN_CALLS,
    PATH_OPS,
    HiddenPaths,
    PathArg,
    Resolved,
    Verdict,
    connect_verdict,
    inspection_failed,
    lexical,
    needs_resolution,
    path_args,
    permitted,
    read_verdict,
    reads,
    resolved_read_verdict,
    under,
    unix_socket,
    unresolvable,
    write_verdict,
    writes,
)

PROTECTED = ("/w/p/.git/hooks", "/w/p/.git/config", "/w/p/.bashrc")
PROTECTED_REASON = "protected path inside the project (git hooks and config, shell rc files)"
READ_ONLY_REASON = "outside the writable project, HOME and tmp"
PERMISSION_REASON = "not writable by the sandbox user (e.g. a hard link to a file outside)"


@pytest.mark.parametrize(("path", "root", "expected"), [
    ("/a", "/a", True),
    ("/a/b/c", "/a", True),
    ("/a/b", "/a/", True),
    ("/ab", "/a", False),
    ("/a", "/a/b", False),
    ("/x", "/", True),
    ("/", "/", True),
])
def test_under(path: str, root: str, expected: bool) -> None:
    """A prefix counts only at a component boundary."""
    assert under(path, root) is expected


def _stat(mode: int, uid: int, gid: int) -> os.stat_result:
    """A stat result with only mode and owner filled in."""
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize(("mode", "uid", "gid", "bit", "expected"), [
    (0o200, 7, 8, stat.S_IWUSR, True),  # the owner: owner bits
    (0o022, 7, 8, stat.S_IWUSR, False),  # the owner: group and other bits do not count
    (0o020, 1, 8, stat.S_IWUSR, True),  # the group
    (0o202, 1, 8, stat.S_IWUSR, False),  # the group: owner and other bits do not count
    (0o002, 1, 2, stat.S_IWUSR, True),  # anyone else
    (0o770, 1, 2, stat.S_IWUSR, False),
    (0o100, 7, 8, stat.S_IXUSR, True),  # search, as layout checks it
    (0o010, 1, 8, stat.S_IXUSR, True),
    (0o001, 1, 2, stat.S_IXUSR, True),
    (0o776, 1, 2, stat.S_IXUSR, False),
])
def test_permitted(mode: int, uid: int, gid: int, bit: int, expected: bool) -> None:
    """The first class that matches decides, as in the kernel (no capabilities)."""
    assert permitted(_stat(mode, 7, 8), uid, gid, bit) is expected


O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW = os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_NOFOLLOW


@pytest.mark.parametrize(("name", "flags", "expected"), [
    ("open", os.O_RDONLY, ()),
    ("openat", os.O_RDONLY | os.O_DIRECTORY, ()),
    ("open", os.O_WRONLY, (PathArg(None, 0, "write", True, False, ""),)),
    ("openat", os.O_RDWR, (PathArg(0, 1, "write", True, False, ""),)),
    ("openat2", os.O_WRONLY | O_NOFOLLOW, (PathArg(0, 1, "write", False, False, ""),)),
    ("openat", O_CREAT, (PathArg(0, 1, "write", True, False, "open"),)),  # touch: no write if it exists
    ("openat", O_CREAT | O_TRUNC, (PathArg(0, 1, "write", True, False, ""),)),
    ("openat", os.O_WRONLY | O_CREAT | O_EXCL, (PathArg(0, 1, "write", False, False, "excl"),)),
    ("mkdirat", os.O_WRONLY, PATH_OPS["mkdirat"]),  # flags only matter for opens
    ("renameat2", 0, (PathArg(0, 1, "rename", False, True), PathArg(2, 3, "rename", False, True))),
    ("lchown", 0, (PathArg(None, 0, "chown", False, False),)),
    ("chown", 0, (PathArg(None, 0, "chown", True, False),)),
    ("symlinkat", 0, (PathArg(1, 2, "symlink", False, True, "excl"),)),
    ("getpid", 0, ()),
])
def test_path_args(name: str, flags: int, expected: tuple[PathArg, ...]) -> None:
    """Which arguments of a call are paths it may write, and how the kernel treats them."""
    assert path_args(name, flags) == expected


@pytest.mark.parametrize(("flags", "may_read", "may_write"), [
    (os.O_RDONLY, True, False),
    (os.O_RDWR, True, True),
    (os.O_WRONLY, False, True),
    (os.O_WRONLY | O_CREAT, False, True),
    (O_CREAT, True, True),
    (os.O_RDONLY | O_TRUNC, True, True),
    (os.O_PATH, True, False),
])
def test_open_flags(flags: int, may_read: bool, may_write: bool) -> None:
    """An open is checked as a read unless it is write-only, and as a write when it may write."""
    assert (reads(flags), writes(flags)) == (may_read, may_write)


def test_open_write_flags_have_one_source() -> None:
    """The filter and the verdicts use the same write flags (seccomp's literals are this host's)."""
    assert seccomp.OPEN_WRITE_FLAGS == os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
    assert seccomp.O_PATH == os.O_PATH


def test_every_notified_call_has_a_verdict() -> None:
    """The filter notifies exactly the calls the verdicts know (plus socket and sendto, checked
    by argument): a call added to one list and not the other would go unchecked or unseen."""
    known = {*PATH_OPS, *OPEN_CALLS, "connect"}
    assert known == {*seccomp.NOTIFIED_ALWAYS, *seccomp.NOTIFIED_OPENS}


def _shape(verdict: Verdict) -> tuple[object, ...]:
    """A verdict without its violation's timestamp: what a table compares."""
    v = verdict.violation
    return (v and (v.kind, v.resource, v.operation, v.reason), verdict.deny_errno)


def _write(path: str, op: str = "write", creates: str = "") -> PathArg:
    """A path argument of operation op (directory-entry operations modify their parent)."""
    entry = op in ("mkdir", "rmdir", "unlink", "rename", "link", "symlink", "mknod")
    return PathArg(None, 0, op, True, entry, creates)


def _denied(path: str, op: str, reason: str, err: int = 0) -> Verdict:
    """A reported refusal; err 0: the kernel refuses it, we only report."""
    return Verdict(Violation("filesystem", path, op, reason), err)


@pytest.mark.parametrize(("resolved", "arg", "expected"), [
    # the writable project
    (Resolved("/w/p/a.py", True, False, False), _write("/w/p/a.py"), ALLOW),
    (Resolved("/w/p/new", False, False, False), _write("/w/p/new", "mkdir", "excl"), ALLOW),
    # protected paths and what lies under them: refused by us, whatever the mount says
    (Resolved("/w/p/.bashrc", True, False, False), _write("/w/p/.bashrc"),
     _denied("/w/p/.bashrc", "write", PROTECTED_REASON, errno.EACCES)),
    (Resolved("/w/p/.git/hooks/pre-commit", False, False, False), _write("x", "write", "open"),
     _denied("/w/p/.git/hooks/pre-commit", "write", PROTECTED_REASON, errno.EACCES)),
    (Resolved("/w/p/.git/config", True, False, False), _write("x", "chmod"),
     _denied("/w/p/.git/config", "chmod", PROTECTED_REASON, errno.EACCES)),
    # creating over what exists writes nothing: EEXIST from us for protected names, else the kernel's
    (Resolved("/w/p/.git/hooks", True, True, False), _write("x", "mkdir", "excl"), Verdict(None, errno.EEXIST)),
    (Resolved("/w/p/.bashrc", True, False, False), _write("x", "write", "open"), ALLOW),
    (Resolved("/usr/bin", True, True, False), _write("x", "mkdir", "excl"), ALLOW),
    # moving or removing an ancestor of a protected path
    (Resolved("/w/p/.git", True, False, False), _write("x", "rename"),
     _denied("/w/p/.git", "rename", PROTECTED_REASON, errno.EACCES)),
    (Resolved("/w/p/.git", True, False, False), _write("x", "rmdir"),
     _denied("/w/p/.git", "rmdir", PROTECTED_REASON, errno.EACCES)),
    (Resolved("/w/p", True, False, False), _write("x", "unlink"),
     _denied("/w/p", "unlink", PROTECTED_REASON, errno.EACCES)),
    (Resolved("/w/p/.git", True, False, False), _write("x", "chmod"), ALLOW),  # not a move
    (Resolved("/w/p/.github", True, False, False), _write("x", "rename"), ALLOW),  # a sibling
    # read-only mounts: the kernel refuses, we report; devices are writable there
    (Resolved("/etc/passwd", True, True, False), _write("x"), _denied("/etc/passwd", "write", READ_ONLY_REASON)),
    (Resolved("/usr/x", False, True, False), _write("x", "mkdir", "excl"),
     _denied("/usr/x", "mkdir", READ_ONLY_REASON)),
    (Resolved("/dev/null", True, True, True), _write("x"), ALLOW),
    # permission bits: a hard link to a file the sandbox user cannot write
    (Resolved("/w/p/link", True, False, False, False), _write("x"),
     _denied("/w/p/link", "write", PERMISSION_REASON)),
    (Resolved("/w/p/link", True, False, False, False), _write("x", "truncate"),
     _denied("/w/p/link", "truncate", PERMISSION_REASON)),
    (Resolved("/w/p/link", True, False, False, False), _write("x", "chmod"), ALLOW),  # ownership decides
])
def test_write_verdict(resolved: Resolved, arg: PathArg, expected: Verdict) -> None:
    """Protected paths are refused by us; read-only and unwritable targets only reported."""
    assert _shape(write_verdict(resolved, arg, PROTECTED)) == _shape(expected)


HOST = {"/s/other", "/s/s1", "/s/s1x"}  # entries of the session base that exist on the host
HIDDEN = HiddenPaths(
    secrets=frozenset({"/root/.ssh", "/home/ann/.aws", "/etc/shadow"}),
    base_dir="/s",
    visible=("/s/s1", "/s/.tools"),
    writable=("/s/s1/project", "/tmp"),
    exists=HOST.__contains__,
)
SECRET_REASON = "credential path hidden from the sandbox"
SESSION_REASON = "another session's directory"


@pytest.mark.parametrize(("path", "reason"), [
    ("/root/.ssh", SECRET_REASON),
    ("/root/.ssh/id_rsa", SECRET_REASON),
    ("/root/.sshx", None),
    ("/root", None),
    ("/etc/shadow", SECRET_REASON),
    ("/etc/passwd", None),
    ("/s/other", SESSION_REASON),
    ("/s/other/project/a.py", SESSION_REASON),
    ("/s/nobody/.claude", None),  # probing a name no session uses
    ("/s", None),  # the base itself: an empty tmpfs
    ("/s/s1/project/a.py", None),
    ("/s/s1", None),
    ("/s/s1x/project", SESSION_REASON),  # a prefix of the own session's name is another session
    ("/s/.tools/bin/x", None),
    ("/", None),
])
def test_read_verdict(path: str, reason: str | None) -> None:
    """Reads of credentials and other sessions are refused with EACCES and reported."""
    expected = ALLOW if reason is None else Verdict(Violation("filesystem", path, "read", reason), errno.EACCES)
    assert _shape(read_verdict(path, HIDDEN)) == _shape(expected)


@pytest.mark.parametrize(("given", "expected"), [
    ("/s/s1/project/link", True),  # the agent may have planted a symlink there
    ("/tmp/x", True),
    ("/tmp", True),
    ("/tmpfs/x", False),  # a prefix is not a parent
    ("/proc/self/root/root/.ssh", True),  # magic links
    ("/dev/fd/3", True),
    ("/dev/stdin", True),
    ("/usr/lib/../../root/.ssh", True),  # only a walk knows where ".." leads
    ("/usr/lib/python3/os.py", False),  # read-only elsewhere: the lexical answer stands
    ("/etc/hostname", False),
])
def test_needs_resolution(given: str, expected: bool) -> None:
    """Only paths that a symlink, magic link or ".." could redirect are resolved."""
    assert needs_resolution(given, lexical(given), HIDDEN) is expected


@pytest.mark.parametrize(("given", "path"), [
    ("/a//b/./c", "/a/b/c"),
    ("//etc/../root", "/root"),
    ("/", "/"),
    ("/..", "/"),
])
def test_lexical(given: str, path: str) -> None:
    """Lexical folding, with "//" at the start kept as "/"."""
    assert lexical(given) == path


@pytest.mark.parametrize(("path", "resolved", "hidden"), [
    ("/tmp/link", "/root/.ssh/id_rsa", True),  # a planted symlink to a secret
    ("/proc/self/cwd/x", "/s/other/x", True),
    ("/tmp/link", "/tmp/target", False),
    ("/root/.ssh", "/root/.ssh", False),  # unchanged: the lexical check already answered
    ("/dev/stdin", "pipe:[1234]", False),  # not a path
])
def test_resolved_read_verdict(path: str, resolved: str, hidden: bool) -> None:
    """A resolved read is judged by where it leads, reported under that path."""
    verdict = resolved_read_verdict(path, resolved, HIDDEN)
    assert (verdict.violation is not None) is hidden
    if hidden:
        assert verdict.deny_errno == errno.EACCES and verdict.violation
        assert verdict.violation.resource == resolved


def test_unresolvable_fails_closed() -> None:
    """A path that cannot be followed safely is refused and reported with why."""
    verdict = unresolvable("/proc/1/root/x", "read", "another process's /proc link")
    reason = "path cannot be resolved safely in the sandbox (another process's /proc link)"
    assert _shape(verdict) == (("filesystem", "/proc/1/root/x", "read", reason), errno.EACCES)


@pytest.mark.parametrize(("name", "nr", "resource", "operation"), [
    ("mkdirat", 258, "mkdirat", "mkdirat"),
    ("", 999, "999", "syscall"),
])
def test_inspection_failed(name: str, nr: int, resource: str, operation: str) -> None:
    """A call the supervisor broke on is refused, reported by name or number."""
    verdict = inspection_failed(name, nr)
    assert verdict.deny_errno == errno.EACCES and verdict.violation
    assert (verdict.violation.resource, verdict.violation.operation) == (resource, operation)


@pytest.mark.parametrize(("sock_type", "reported"), [
    (socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, False),  # glibc's nscd probe
    (socket.SOCK_STREAM, True),
    (socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, True),
    (socket.SOCK_STREAM | socket.SOCK_CLOEXEC, True),
])
def test_unix_socket(sock_type: int, reported: bool) -> None:
    """Every AF_UNIX socket is refused with EPERM; only the nscd probe goes unreported."""
    verdict = unix_socket(sock_type)
    assert verdict.deny_errno == errno.EPERM
    assert (verdict.violation is not None) is reported


def _no_ports(table: str, port: int) -> bool:
    """Listening ports must not be read for a non-loopback destination."""
    raise AssertionError(f"{table} ports read for a remote address")


TABLES = {"udp": {53}, "udp6": set(), "tcp": {3128}, "tcp6": {8000}}


@pytest.mark.parametrize(("ip", "port", "resource", "read"), [
    ("127.0.0.1", 3128, None, ["udp", "udp6", "tcp"]),  # the proxy
    ("127.0.0.1", 53, None, ["udp"]),  # the DNS sink: no TCP table read for a query (issue 16)
    ("::1", 8000, None, ["udp", "udp6", "tcp", "tcp6"]),  # the agent's own server
    ("127.0.0.1", 9, "127.0.0.1:9", ["udp", "udp6", "tcp", "tcp6"]),  # nothing listens there
    ("93.184.215.14", 443, "93.184.215.14:443", []),
    ("2001:db8::1", 443, "[2001:db8::1]:443", []),
])
def test_connect_verdict(ip: str, port: int, resource: str | None, read: list[str]) -> None:
    """Direct connections are reported (never refused here: the netns has only lo). The socket tables
    are read cheapest first, until one has the port: a TCP table costs a walk of the host's whole
    connection hash, which made each DNS query of a flood take ~10 ms."""
    asked: list[str] = []

    def listens(table: str, port: int) -> bool:
        asked.append(table)
        return port in TABLES[table]

    verdict = connect_verdict(ip, port, listens if ip in ("127.0.0.1", "::1") else _no_ports)
    assert asked == read
    if resource is None:
        assert verdict is ALLOW
    else:
        reason = "direct connection bypassing the proxy"
        assert _shape(verdict) == (("network", resource, "connect", reason), 0)


@pytest.mark.parametrize(("ip", "port", "resource", "read"), [
    ("127.0.0.1", 3128, None, []),  # the proxy, served by the worker: no table read per connection
    ("::1", 53, None, []),
    ("127.0.0.1", 9, "127.0.0.1:9", ["udp", "udp6", "tcp", "tcp6"]),  # still looked up, still reported
    ("93.184.215.14", 3128, "93.184.215.14:3128", []),  # a served port elsewhere is still a bypass
])
def test_connect_verdict_to_a_served_port(ip: str, port: int, resource: str | None, read: list[str]) -> None:
    """The ports the worker's own servers hold need no look-up; the rest are looked up as before."""
    asked: list[str] = []

    def listens(table: str, port: int) -> bool:
        asked.append(table)
        return False

    verdict = connect_verdict(ip, port, listens, served={3128, 53})
    assert asked == read
    if resource is None:
        assert verdict is ALLOW
    else:
        assert _shape(verdict) == (("network", resource, "connect", "direct connection bypassing the proxy"), 0)


@pytest.mark.parametrize(("raw", "expected"), [
    (struct.pack("=H", 2) + struct.pack("!H", 443) + bytes([10, 0, 0, 1]) + bytes(8), ("10.0.0.1", 443)),
    (struct.pack("=H", 10) + struct.pack("!H", 80) + bytes(4) + bytes(15) + b"\x01" + bytes(4), ("::1", 80)),
    (struct.pack("=H", 10) + struct.pack("!H", 80) + bytes(10), None),  # truncated
    (struct.pack("=H", 1) + b"/run/x\0", None),  # AF_UNIX
    (b"\x02\x00", None),
])
def test_parse_sockaddr(raw: bytes, expected: tuple[str, int] | None) -> None:
    """Only complete AF_INET/AF_INET6 addresses are read."""
    assert parse_sockaddr(raw) == expected


@pytest.mark.parametrize(("value", "low", "signed"), [
    (5, 5, 5),
    (0xFFFFFF9C, 0xFFFFFF9C, -100),  # AT_FDCWD as the kernel passes it
    (0xDEADBEEF_FFFFFF9C, 0xFFFFFF9C, -100),  # garbage in the upper half of an int argument
    (0x1_00000003, 3, 3),
])
def test_int_arguments(value: int, low: int, signed: int) -> None:
    """Int syscall arguments are the low 32 bits of the register."""
    assert (notify.low32(value), notify.signed32(value)) == (low, signed)
