"""The generated seccomp programs, run through a small classic-BPF interpreter."""

from __future__ import annotations

import errno
import struct

import pytest

from runner.sandbox import seccomp
from runner.sandbox.dns import query_name, refusal

ALLOW, NOTIFY, KILL = seccomp.RET_ALLOW, seccomp.RET_USER_NOTIF, seccomp.RET_KILL_PROCESS
EPERM, ENOSYS = seccomp.RET_ERRNO | errno.EPERM, seccomp.RET_ERRNO | errno.ENOSYS


def run_bpf(program: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """Evaluate a seccomp program on one syscall (the opcodes our assembler emits)."""
    padded = (tuple(args) + (0,) * 6)[:6]
    data = struct.pack("=iIQ6Q", nr, arch, 0, *padded)
    insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack("=I", data[k : k + 4])[0]
        elif code == 0x06:
            return k
        elif code == 0x05:
            pc += k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        pc += 1


@pytest.fixture(params=[seccomp.X86_64, seccomp.AARCH64], ids=lambda a: a.name)
def arch(request: pytest.FixtureRequest) -> seccomp.Arch:
    """Both supported architectures."""
    return request.param


DENY_CASES = [
    # syscall, args, expected, why
    ("unshare", (0x10000000,), EPERM, "unshare(CLONE_NEWUSER)"),
    ("unshare", (0x00020000,), EPERM, "unshare(CLONE_NEWNS)"),
    ("unshare", (0x00000400,), ALLOW, "unshare(CLONE_FILES) is harmless"),
    ("clone", (0x10000000 | 17,), EPERM, "clone with CLONE_NEWUSER"),
    ("clone", (0x40000000,), EPERM, "clone with CLONE_NEWNET"),
    ("clone", (0x01200011,), ALLOW, "fork-style clone"),
    ("clone3", (), ENOSYS, "clone3: libc falls back to clone"),
    ("setns", (3, 0), EPERM, "setns"),
    ("mount", (), EPERM, "mount"),
    ("umount2", (), EPERM, "umount2"),
    ("pivot_root", (), EPERM, "pivot_root"),
    ("move_mount", (), EPERM, "move_mount"),
    ("open_tree", (), EPERM, "open_tree"),
    ("fsopen", (), EPERM, "fsopen"),
    ("ptrace", (16, 1), EPERM, "ptrace"),
    ("process_vm_readv", (), EPERM, "process_vm_readv"),
    ("keyctl", (), EPERM, "keyctl"),
    ("bpf", (), EPERM, "bpf"),
    ("perf_event_open", (), EPERM, "perf_event_open"),
    ("io_uring_setup", (), EPERM, "io_uring would bypass the write supervisor"),
    ("ioctl", (0, seccomp.TIOCSTI), EPERM, "TIOCSTI terminal injection"),
    ("ioctl", (0, 0x5401), ALLOW, "TCGETS"),
    ("socket", (2, 1), ALLOW, "AF_INET"),
    ("openat", (0, 0, 0), ALLOW, "plain open"),
]


@pytest.mark.parametrize(("name", "args", "expected", "why"), DENY_CASES)
def test_deny_program(arch: seccomp.Arch, name: str, args: tuple[int, ...], expected: int,
                      why: str) -> None:
    """The filter bwrap loads refuses escapes and lets normal work through."""
    assert run_bpf(seccomp.deny_program(arch), arch.audit, arch.nr[name], args) == expected, why


def test_deny_program_kills_foreign_arch_and_x32() -> None:
    """Another audit arch is killed; x32 syscalls on x86_64 are refused."""
    program = seccomp.deny_program(seccomp.X86_64)
    assert run_bpf(program, 0x40000003, 1) == KILL  # i386
    assert run_bpf(program, seccomp.X86_64.audit, 0x40000000 | 2) == EPERM


O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_PATH = 0, 1, 2, 0o100, 0o1000, 0o10000000

NOTIFY_CASES = [
    ("openat", (0, 0, O_RDONLY), NOTIFY, "reads: hidden paths are reported"),
    ("openat", (0, 0, O_PATH), ALLOW, "O_PATH opens read nothing"),
    ("openat", (0, 0, O_WRONLY), NOTIFY, "write"),
    ("openat", (0, 0, O_RDWR), NOTIFY, "read-write"),
    ("openat", (0, 0, O_CREAT), NOTIFY, "create"),
    ("openat", (0, 0, O_TRUNC), NOTIFY, "truncate"),
    ("openat2", (), NOTIFY, "flags in a struct: always inspected"),
    ("mkdirat", (), NOTIFY, "mkdir"),
    ("unlinkat", (), NOTIFY, "unlink"),
    ("renameat2", (), NOTIFY, "rename"),
    ("linkat", (), NOTIFY, "link"),
    ("symlinkat", (), NOTIFY, "symlink"),
    ("truncate", (), NOTIFY, "truncate"),
    ("fchmodat", (), NOTIFY, "chmod"),
    ("connect", (), NOTIFY, "connect (proxy bypass detection)"),
    ("sendto", (3, 0, 0, 0, 0), ALLOW, "sendto on a connected socket"),
    ("sendto", (3, 0, 0, 0, 0x7FFF00001000), NOTIFY, "sendto with an address"),
    ("socket", (1, 1), NOTIFY, "AF_UNIX: refused by the supervisor"),
    ("socket", (2, 1), ALLOW, "AF_INET"),
    ("read", (), ALLOW, "everything else"),
]


@pytest.mark.parametrize(("name", "args", "expected", "why"), NOTIFY_CASES)
def test_notify_program(name: str, args: tuple[int, ...], expected: int, why: str) -> None:
    """The supervisor sees write-like calls and connects, nothing else."""
    arch = seccomp.X86_64
    nr = arch.nr.get(name, 0)  # read is 0 on x86_64
    assert run_bpf(seccomp.notify_program(arch), arch.audit, nr, args) == expected, why


def test_open_flags_checked_on_x86_64_legacy_open() -> None:
    """open(2) keeps its flags in the second argument."""
    arch = seccomp.X86_64
    program = seccomp.notify_program(arch)
    assert run_bpf(program, arch.audit, arch.nr["open"], (0, O_RDONLY)) == NOTIFY
    assert run_bpf(program, arch.audit, arch.nr["open"], (0, O_PATH)) == ALLOW
    assert run_bpf(program, arch.audit, arch.nr["open"], (0, O_WRONLY | O_CREAT)) == NOTIFY


def test_write_only_program_leaves_reads_alone() -> None:
    """Without read reporting only write opens are notified."""
    arch = seccomp.X86_64
    program = seccomp.notify_program(arch, reads=False)
    assert run_bpf(program, arch.audit, arch.nr["openat"], (0, 0, O_RDONLY)) == ALLOW
    assert run_bpf(program, arch.audit, arch.nr["openat"], (0, 0, O_WRONLY)) == NOTIFY


def test_dns_sink_parsing() -> None:
    """The sink reads the question name and answers REFUSED with the same id."""
    query = bytes.fromhex("abcd01000001000000000000") + b"\x04exfi\x07invalid\x00\x00\x01\x00\x01"
    assert query_name(query) == "exfi.invalid"
    answer = refusal(query)
    assert answer[:2] == b"\xab\xcd" and answer[3] & 0x0F == 5 and answer[2] & 0x80
