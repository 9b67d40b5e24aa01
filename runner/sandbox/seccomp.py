"""Seccomp BPF programs for the sandbox, generated with struct (x86_64 and aarch64)."""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

# seccomp_data offsets and return actions (linux/seccomp.h)
_NR = 0
_ARCH = 4
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_ALLOW = 0x7FFF0000

# classic BPF opcodes
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA

CLONE_NS_FLAGS = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
AF_UNIX = 1
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
OPEN_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000  # O_WRONLY|O_RDWR|O_CREAT|O_TRUNC
O_PATH = 0o10000000  # same value on x86_64 and aarch64
X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True)
class Arch:
    """Syscall numbers of one architecture."""

    name: str
    audit: int
    nr: dict[str, int]


# Syscalls refused outright with EPERM (clone/unshare/socket/ioctl are checked by argument).
BLOCKED = [
    "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "kcmp", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "fanotify_init",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
    "swapoff", "acct", "open_by_handle_at", "name_to_handle_at", "syslog", "quotactl", "lookup_dcookie",
    "vhangup", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "sethostname", "setdomainname",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "iopl", "ioperm", "uselib",
]

_COMMON = {
    "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "pidfd_getfd": 438, "clone3": 435, "openat2": 437,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "fchmodat2": 452,
}

X86_64 = Arch("x86_64", 0xC000003E, _COMMON | {
    "clone": 56, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166,
    "pivot_root": 155, "chroot": 161, "ptrace": 101, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "keyctl": 250, "add_key": 248, "request_key": 249,
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "fanotify_init": 300,
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "syslog": 103, "quotactl": 179,
    "lookup_dcookie": 212, "vhangup": 153, "settimeofday": 164, "clock_settime": 227,
    "adjtimex": 159, "clock_adjtime": 305, "sethostname": 170, "setdomainname": 171,
    "iopl": 172, "ioperm": 173, "uselib": 134, "socket": 41, "ioctl": 16, "connect": 42,
    "sendto": 44, "open": 2, "openat": 257, "creat": 85, "mkdir": 83, "mkdirat": 258,
    "rmdir": 84, "unlink": 87, "unlinkat": 263, "rename": 82, "renameat": 264,
    "renameat2": 316, "link": 86, "linkat": 265, "symlink": 88, "symlinkat": 266,
    "truncate": 76, "mknod": 133, "mknodat": 259, "chmod": 90, "fchmodat": 268,
    "chown": 92, "lchown": 94, "fchownat": 260, "seccomp": 317,
    "setgroups": 116, "setresuid": 117, "setresgid": 119,
})

AARCH64 = Arch("aarch64", 0xC00000B7, _COMMON | {
    "clone": 220, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
    "pivot_root": 41, "chroot": 51, "ptrace": 117, "process_vm_readv": 270,
    "process_vm_writev": 271, "kcmp": 272, "keyctl": 219, "add_key": 217, "request_key": 218,
    "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "fanotify_init": 262,
    "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
    "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89,
    "open_by_handle_at": 265, "name_to_handle_at": 264, "syslog": 116, "quotactl": 60,
    "lookup_dcookie": 18, "vhangup": 58, "settimeofday": 170, "clock_settime": 112,
    "adjtimex": 171, "clock_adjtime": 266, "sethostname": 161, "setdomainname": 162,
    "socket": 198, "ioctl": 29, "connect": 203, "sendto": 206, "openat": 56, "mkdirat": 34,
    "unlinkat": 35, "renameat": 38, "renameat2": 276, "linkat": 37, "symlinkat": 36,
    "truncate": 45, "mknodat": 33, "fchmodat": 53, "fchownat": 54, "seccomp": 277,
    "setgroups": 159, "setresuid": 147, "setresgid": 149,
})

ARCHES = {"x86_64": X86_64, "aarch64": AARCH64}

# Write-like syscalls the supervisor inspects: name -> index of the flags argument for opens
# (None: always notify).
NOTIFIED_OPENS = {"open": 1, "openat": 2}
NOTIFIED_ALWAYS = [
    "openat2", "creat", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "link", "linkat", "symlink", "symlinkat", "truncate", "mknod", "mknodat", "chmod", "fchmodat",
    "fchmodat2", "chown", "lchown", "fchownat", "connect",
]


def host_arch() -> Arch:
    """The syscall table of the machine we run on."""
    machine = platform.machine()
    if machine not in ARCHES:
        raise OSError(f"no seccomp syscall table for {machine}")
    return ARCHES[machine]


class _Asm:
    """A tiny classic-BPF assembler with forward labels."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, object]] = []
        self.labels: dict[str, int] = {}

    def load(self, offset: int) -> None:
        """A = 32-bit word of seccomp_data at offset."""
        self.code.append((_LD_ABS, 0, 0, offset))

    def jump(self, op: int, k: int, true: object = 0, false: object = 0) -> None:
        """Conditional jump; targets are labels (str) or relative ints."""
        self.code.append((op, true, false, k))

    def goto(self, target: str) -> None:
        """Unconditional forward jump to a label."""
        self.code.append((_JA, 0, 0, target))

    def ret(self, value: int, label: str | None = None) -> None:
        """Return an action, optionally labelled."""
        if label:
            self.labels[label] = len(self.code)
        self.code.append((_RET, 0, 0, value))

    def _offset(self, index: int, target: object) -> int:
        """Resolve a label to a relative jump offset."""
        if isinstance(target, int):
            return target
        delta = self.labels[str(target)] - index - 1
        if not 0 <= delta <= 255:
            raise ValueError(f"BPF jump to {target} out of range")
        return delta

    def assemble(self) -> bytes:
        """The program as an array of struct sock_filter."""
        out = bytearray()
        for i, (op, jt, jf, k) in enumerate(self.code):
            if op == _JA:
                jt, jf, k = 0, 0, self._offset(i, k)
            out += struct.pack("=HBBI", op, self._offset(i, jt), self._offset(i, jf), k)
        return bytes(out)


def _arg_lo(index: int) -> int:
    """Offset of the low 32 bits of syscall argument index (little endian)."""
    return 16 + 8 * index


def _arg_hi(index: int) -> int:
    """Offset of the high 32 bits of syscall argument index (little endian)."""
    return 20 + 8 * index


def deny_program(arch: Arch | None = None) -> bytes:
    """The filter bwrap installs for the agent: refuse escapes with EPERM.

    socket(AF_UNIX) is not here but in notify_program, so the refusal can be reported;
    without a supervisor the kernel fails a notified call with ENOSYS, still a refusal.
    """
    arch = arch or host_arch()
    eperm = RET_ERRNO | errno.EPERM
    a = _Asm()
    a.load(_ARCH)
    a.jump(_JEQ, arch.audit, 0, "kill")
    a.load(_NR)
    if arch is X86_64:
        a.jump(_JGE, X32_SYSCALL_BIT, "eperm", 0)
    a.jump(_JEQ, arch.nr["clone3"], "enosys", 0)  # flags hidden in a struct: libc falls back to clone
    a.jump(_JEQ, arch.nr["clone"], "ns_flags0", 0)
    a.jump(_JEQ, arch.nr["unshare"], "ns_flags0", 0)
    a.jump(_JEQ, arch.nr["ioctl"], "ioctl", 0)
    for name in BLOCKED:
        if name in arch.nr:
            a.jump(_JEQ, arch.nr[name], "eperm", 0)
    a.goto("allow")
    a.labels["ns_flags0"] = len(a.code)
    a.load(_arg_lo(0))
    a.jump(_JSET, CLONE_NS_FLAGS, "eperm", "allow")
    a.labels["ioctl"] = len(a.code)
    a.load(_arg_lo(1))
    a.jump(_JEQ, TIOCSTI, "eperm", 0)
    a.jump(_JEQ, TIOCLINUX, "eperm", "allow")
    a.ret(RET_ALLOW, "allow")
    a.ret(eperm, "eperm")
    a.ret(RET_ERRNO | errno.ENOSYS, "enosys")
    a.ret(RET_KILL_PROCESS, "kill")
    return a.assemble()


def notify_program(arch: Arch | None = None, reads: bool = True) -> bytes:
    """The filter whose listener the supervisor reads: opens, write-like syscalls, connect.

    reads: every open but O_PATH ones (hidden paths are reported), else only write opens.
    """
    arch = arch or host_arch()
    a = _Asm()
    a.load(_ARCH)
    a.jump(_JEQ, arch.audit, 0, "allow")
    a.load(_NR)
    for name, flag_arg in NOTIFIED_OPENS.items():
        if name in arch.nr:
            a.jump(_JEQ, arch.nr[name], f"flags{flag_arg}", 0)
    for name in NOTIFIED_ALWAYS:
        if name in arch.nr:
            a.jump(_JEQ, arch.nr[name], "notify", 0)
    a.jump(_JEQ, arch.nr["socket"], "socket", 0)
    a.jump(_JEQ, arch.nr["sendto"], "sendto", "allow")
    for flag_arg in sorted(set(NOTIFIED_OPENS.values())):
        a.labels[f"flags{flag_arg}"] = len(a.code)
        a.load(_arg_lo(flag_arg))
        if reads:
            a.jump(_JSET, O_PATH, "allow", "notify")
        else:
            a.jump(_JSET, OPEN_WRITE_FLAGS, "notify", "allow")
    a.labels["socket"] = len(a.code)  # AF_UNIX: refused (and reported) by the supervisor
    a.load(_arg_lo(0))
    a.jump(_JEQ, AF_UNIX, "notify", "allow")
    a.labels["sendto"] = len(a.code)  # only sendto with an explicit address
    a.load(_arg_lo(4))
    a.jump(_JEQ, 0, 0, "notify")
    a.load(_arg_hi(4))
    a.jump(_JEQ, 0, "allow", "notify")
    a.ret(RET_USER_NOTIF, "notify")
    a.ret(RET_ALLOW, "allow")
    return a.assemble()
