"""Kernel mounts for overlay workspaces: an idmapped, read-only view of a shared checkout under a
session's writable layer.

The shared checkout is root's on disk. The session's lower layer is an idmapped mount of it (root's
files appear as the session's uid, so the agent may edit, delete and chmod them in the merged tree;
every change lands in the session's upper layer, never in the checkout) and it is read-only as well.
That lower mount lives only while the overlay is mounted: it is detached right after (the overlay
keeps its own private clone), so no path leads to it.

Needs root with CAP_SYS_ADMIN in the host's mount namespace and a kernel with idmapped overlay layers
(5.19+); anything else refuses the mount, and the caller falls back to a full checkout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class OverlayRefused(OSError):
    """The kernel (or our privileges) refused a mount the overlay needs."""


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OverlayRefused(err, f"{what}: {os.strerror(err)}")
    return result


_USERNS: OrderedDict[tuple[int, int], int] = OrderedDict()
_USERNS_LOCK = threading.Lock()
USERNS_KEPT = 64  # namespaces kept open for reuse (a mount holds its own reference: closing is safe)


def userns_fd(uid: int, gid: int) -> int:
    """A new descriptor (the caller closes it) of a user namespace mapping 0 to uid:gid; the most recently
    used USERNS_KEPT namespaces are kept open for reuse."""
    with _USERNS_LOCK:
        if (uid, gid) in _USERNS:
            _USERNS.move_to_end((uid, gid))
            return os.dup(_USERNS[(uid, gid)])
        own = os.readlink("/proc/self/ns/user")
        # cat holds the namespace until its stdin closes (one exec: no shell)
        proc = subprocess.Popen(["unshare", "--user", "--", "cat"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
        try:
            deadline = time.monotonic() + 5
            while os.readlink(f"/proc/{proc.pid}/ns/user") == own:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise OverlayRefused(0, "no user namespace for the idmapped mount")
                time.sleep(0.001)
            with open(f"/proc/{proc.pid}/uid_map", "w") as fh:
                fh.write(f"0 {uid} 1\n")
            with open(f"/proc/{proc.pid}/gid_map", "w") as fh:
                fh.write(f"0 {gid} 1\n")
            fd = os.open(f"/proc/{proc.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise OverlayRefused(exc.errno or 0, f"user namespace: {exc}") from exc
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait()
        _USERNS[(uid, gid)] = fd
        while len(_USERNS) > USERNS_KEPT:
            os.close(_USERNS.popitem(last=False)[1])
        return os.dup(fd)


def _idmapped_lower(source: Path, target: Path, user: tuple[int, int]) -> None:
    """Attach a read-only clone of source at target, its root-owned files shown as user's."""
    fd = _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC),
                "open_tree")
    try:
        userns = userns_fd(*user)
        try:
            attr = _MountAttr(MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, userns)
            _check(_libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr),
                                 ctypes.sizeof(attr)), "mount_setattr (idmap)")
        finally:
            os.close(userns)
        _check(_libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH),
               "move_mount")
    finally:
        os.close(fd)


def _option_path(path: Path) -> str:
    text = str(path)
    if any(c in text for c in ",:\\\n"):
        raise OverlayRefused(0, f"a path the overlay options cannot carry: {text!r}")
    return text


def mount_overlay(shared: Path, lower: Path, upper: Path, work: Path, merged: Path, user: tuple[int, int]) -> None:
    """Mount merged = upper over an idmapped, read-only view of shared (attached at lower, then detached)."""
    # redirect_dir=on: a directory of the checkout renames in place (rename(2) would fail with EXDEV, and
    # `git mv` of a directory with it). The redirect lives in a trusted.overlay.* xattr of the upper layer,
    # which only the kernel, as the mounter, writes there: the upper dir is root's and out of the sandbox's
    # reach, and no process in a user namespace can set trusted.* xattrs. metacopy stays off (a redirect
    # to a lower file's data from an upper inode), as does index (hard links across layers).
    options = (f"lowerdir={_option_path(lower)},upperdir={_option_path(upper)},workdir={_option_path(work)}"
               ",redirect_dir=on,metacopy=off,index=off,xino=off")
    _idmapped_lower(shared, lower, user)
    try:
        _check(_libc.mount(b"overlay", os.fsencode(merged), b"overlay", MS_NOSUID | MS_NODEV, options.encode()),
               "mount overlay")
    finally:
        unmount(lower)


def unmount(path: Path) -> None:
    """Detach a mount (lazily: whatever still holds it open does not keep it in the tree)."""
    _check(_libc.umount2(os.fsencode(path), MNT_DETACH | UMOUNT_NOFOLLOW), f"umount {path}")


def mount_table(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[bytes, bytes]]:
    """(mount point, filesystem type) of every mount in a mountinfo file (this thread's namespace's by
    default), in its order."""
    table: list[tuple[bytes, bytes]] = []
    with open(mountinfo, "rb") as fh:
        for line in fh:
            fields = line.split(b" ")
            dash = fields.index(b"-", 6)  # optional fields end at " - "
            table.append((_unescape(fields[4]), fields[dash + 1]))
    return table


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or under root in this mount namespace, deepest first."""
    prefix = os.fsencode(os.path.realpath(root))
    found = [point for point, _kind in mount_table() if point == prefix or point.startswith(prefix + b"/")]
    return [Path(os.fsdecode(p)) for p in sorted(set(found), key=len, reverse=True)]


def _unescape(field: bytes) -> bytes:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i] == 0x5C and i + 3 < len(field) + 1 and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def unmount_all(root: Path) -> None:
    """Detach every mount at or under root (a session's overlay, a lower a dead worker left attached)."""
    for point in mounts_under(root):
        unmount(point)


def probe(scratch: Path) -> str | None:
    """Mount (and unmount) a tiny overlay in a directory of scratch: None when it works, else why not."""
    if os.geteuid() != 0:
        return "the worker is not root"
    root = Path(tempfile.mkdtemp(prefix="overlay-probe-", dir=scratch))
    try:
        for name in ("shared", "lower", "upper", "work", "merged"):
            (root / name).mkdir()
        mount_overlay(root / "shared", root / "lower", root / "upper", root / "work", root / "merged",
                      (65534, 65534))
        unmount(root / "merged")
        return None
    except OSError as exc:
        return str(exc)
    finally:
        try:
            unmount_all(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
