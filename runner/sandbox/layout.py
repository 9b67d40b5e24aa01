"""Session directories, control files and the host-resolved mount plan."""

from __future__ import annotations

import glob
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from runner.sandbox.base import (
    CREDENTIAL_PATHS,
    SANDBOX_USER,
    SYSTEM_SECRET_PATHS,
    SandboxPolicy,
)
from runner.sandbox.bwrap import MountPlan
from runner.sandbox.verdicts import permitted, under

CONTROL = ".sandbox"  # per session: the docker provider's control files
PASSWD = ".passwd"  # per session, in its directory: the sandbox's /etc/passwd (its HOME is the session's)
SHARED = ".sandbox-shared"  # per session base: what every session's sandbox shows alike
GROUP_TEXT = f"{SANDBOX_USER}:x:{{gid}}:\n"
RESOLV_TEXT = "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n"
# Already replaced by fresh mounts inside the sandbox: hiding there would fail.
_REPLACED_ROOTS = ("/run", "/var/run", "/tmp", "/proc", "/dev")


def control_dir(policy: SandboxPolicy) -> Path:
    """Root-owned files of the docker provider's, made by it."""
    return policy.session_dir / CONTROL


def shared_dir(policy: SandboxPolicy) -> Path:
    """Root-owned files the sandbox mounts but cannot see as such, alike for every session of the base:
    /etc/group, /etc/resolv.conf and the unreadable placeholders that hide paths."""
    return policy.base_dir / SHARED


def _write(path: Path, text: str, mode: int) -> None:
    """Write a root-owned control file."""
    path.write_text(text)
    os.chmod(path, mode)


def write_control_files(policy: SandboxPolicy) -> None:
    """The session's passwd; the base's shared files, made once (a file made costs ~0.4 ms here)."""
    home = policy.home_dir
    _write(policy.session_dir / PASSWD,
           f"{SANDBOX_USER}:x:{policy.uid}:{policy.gid}:Sesame agent:{home}:/bin/sh\n", 0o644)
    ensure_shared(policy)


_SHARED_FILES = {"group": 0o644, "resolv.conf": 0o644, "denied": 0o000, "denied.d": 0o000}
_shared_seen: dict[tuple[str, int], int] = {}  # (shared dir, gid) -> its inode, checked by this process


def _shared_texts(policy: SandboxPolicy) -> dict[str, str]:
    """The contents of the shared regular files."""
    return {"group": GROUP_TEXT.format(gid=policy.gid), "resolv.conf": RESOLV_TEXT, "denied": ""}


def _shared_sound(path: Path, policy: SandboxPolicy) -> bool:
    """path holds exactly the shared files, ours, with their modes, written by no one else."""
    texts = _shared_texts(policy)
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o755:
            return False
        for name, mode in _SHARED_FILES.items():
            entry = os.lstat(path / name)
            kind = stat.S_ISDIR if name.endswith(".d") else stat.S_ISREG
            if not kind(entry.st_mode) or entry.st_uid != os.geteuid() or stat.S_IMODE(entry.st_mode) != mode:
                return False
            if name in texts and (path / name).read_text() != texts[name]:
                return False
        return sorted(os.listdir(path)) == sorted(_SHARED_FILES)
    except (OSError, UnicodeDecodeError):
        return False


def ensure_shared(policy: SandboxPolicy) -> Path:
    """The base's shared control directory, made (or made again, when it is not as made) and checked
    once per process; then one lstat a session."""
    path = shared_dir(policy)
    key = (str(path), policy.gid)
    try:
        inode = os.lstat(path).st_ino
    except FileNotFoundError:
        inode = None
    if inode is not None and _shared_seen.get(key) == inode:
        return path
    if not _shared_sound(path, policy):
        _make_shared(path, policy)
    _shared_seen[key] = os.lstat(path).st_ino
    return path


def _make_shared(path: Path, policy: SandboxPolicy) -> None:
    """Build the shared files beside path and rename them into place (another worker may be doing the
    same: the first rename wins, and what it made is checked like any other)."""
    temp = Path(tempfile.mkdtemp(prefix=f"{SHARED}.", dir=path.parent))
    try:
        for name, text in _shared_texts(policy).items():
            _write(temp / name, text, _SHARED_FILES[name])
        (temp / "denied.d").mkdir(mode=0o000)
        os.chmod(temp / "denied.d", 0o000)
        os.chmod(temp, 0o755)
        if os.path.lexists(path) and not _shared_sound(path, policy):
            aside = Path(tempfile.mkdtemp(prefix=f"{SHARED}.old.", dir=path.parent))
            os.rename(path, aside / "old")
            _remove(aside)
        try:
            os.rename(temp, path)
        except OSError:  # made meanwhile by another worker
            if not _shared_sound(path, policy):
                raise
    finally:
        _remove(temp)


def _remove(path: Path) -> None:
    """Remove a directory tree of ours, placeholders of mode 000 included."""
    if not os.path.lexists(path):
        return
    for dirpath, dirnames, _files in os.walk(path):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Hand a directory tree to the sandbox's host uid (skips what it already owns)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)):
            st = os.lstat(name)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                continue  # a hard link (e.g. git objects shared with a mirror): stays read-only
            if st.st_uid != uid or st.st_gid != gid:
                os.lchown(name, uid, gid)


def prepare_session(policy: SandboxPolicy, drop_privileges: bool) -> None:
    """Create project, home and tmp (0700); owned by the sandbox's host uid when we are root."""
    policy.session_dir.mkdir(parents=True, exist_ok=True)
    for path in (policy.project_dir, policy.home_dir, policy.tmp_dir):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    if drop_privileges:
        _make_traversable(Path(policy.base_dir))
        # root's, and passable only by the sandbox's group: no other uid reaches project or home
        os.chown(policy.session_dir, 0, policy.host_gid)
        os.chmod(policy.session_dir, 0o710)
        if not _reachable(str(policy.project_dir), policy.host_uid, policy.host_gid):
            raise PermissionError(
                f"uid {policy.host_uid} cannot traverse to {policy.project_dir}: "
                "every parent of the session base must be searchable by others"
            )
        for path in (policy.project_dir, policy.home_dir, policy.tmp_dir):
            if path == policy.project_dir and os.path.ismount(path):
                # an overlay workspace (runner.workspace): its files are the session uid's already
                # (an idmapped lower layer, an upper layer handed over); walking it would copy every
                # file up and take time in proportion to the repository
                os.chown(path, policy.host_uid, policy.host_gid)
                continue
            _chown_tree(path, policy.host_uid, policy.host_gid)
    write_control_files(policy)


def _make_traversable(path: Path) -> None:
    """Ensure others may traverse the session base (bwrap runs as the sandbox host uid)."""
    mode = path.stat().st_mode
    if not mode & stat.S_IXOTH:
        os.chmod(path, stat.S_IMODE(mode) | stat.S_IXOTH)


def home_directories() -> list[str]:
    """Home directories whose credentials must be hidden: ours, root's and /home/*."""
    homes = {os.path.expanduser("~"), "/root", *glob.glob("/home/*")}
    return sorted(h for h in homes if os.path.isdir(h))


def _reachable(path: str, uid: int, gid: int, searchable: dict[str, bool] | None = None) -> bool:
    """Whether uid:gid can look up path (bwrap must reach a mount point to cover it); searchable, when
    given, keeps each directory's answer for the caller's further paths."""
    parent = os.path.dirname(path)
    while True:
        known = searchable.get(parent) if searchable is not None else None
        if known is None:
            known = permitted(os.stat(parent), uid, gid, stat.S_IXUSR)
            if searchable is not None:
                searchable[parent] = known
        if not known:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def hidden_homes(policy: SandboxPolicy) -> list[str]:
    """Home directories shown as empty tmpfs: whatever appears in them later stays out too.

    The session's own HOME, project and the tools are mounted on top; "/" is never one.
    """
    homes = {os.path.realpath(h) for h in [*home_directories(), "/home"] if os.path.isdir(h)}
    homes = {h for h in homes if h != "/" and not _replaced(h, policy)}
    return sorted(h for h in homes if not any(h != o and under(h, o) for o in homes))


def _replaced(path: str, policy: SandboxPolicy) -> bool:
    """True when path lies under a mount the sandbox replaces anyway."""
    roots = (*_REPLACED_ROOTS, str(policy.base_dir))
    return any(under(path, r) for r in roots)


def secret_candidates(policy: SandboxPolicy) -> list[str]:
    """Every path that should be hidden, before checking existence."""
    paths = [os.path.join(h, c) for h in home_directories() for c in CREDENTIAL_PATHS]
    paths += [*SYSTEM_SECRET_PATHS, *glob.glob("/etc/ssh/ssh_host_*key")]
    return paths + [os.path.abspath(p) for p in policy.hidden_paths]


def resolved_secrets(policy: SandboxPolicy) -> list[tuple[str, str]]:
    """Every secret candidate as (absolute, resolved) path: resolved once per start, for the mount plan
    and the supervisor's hidden paths alike (each resolution lstats every component)."""
    absolute = [os.path.abspath(c) for c in secret_candidates(policy)]
    return list(zip(absolute, realpaths(absolute), strict=True))


def realpaths(paths: Sequence[str]) -> list[str]:
    """os.path.realpath of each absolute, normalised path, each parent directory resolved once (the secret
    candidates share their homes): a path resolves as its resolved parent joined with its last component,
    resolved again only where that component is a symlink."""
    parents: dict[str, str] = {}
    out: list[str] = []
    for path in paths:
        parent, name = os.path.split(path)
        if not name:  # "/"
            out.append(os.path.realpath(path))
            continue
        resolved = parents.get(parent)
        if resolved is None:
            resolved = parents[parent] = os.path.realpath(parent)
        joined = os.path.join(resolved, name)
        out.append(os.path.realpath(joined) if os.path.islink(joined) else joined)
    return out


def hidden_mounts(policy: SandboxPolicy, check_reach: bool,
                  resolved: list[tuple[str, str]] | None = None) -> tuple[list[str], list[str]]:
    """(files, dirs) to cover: existing secrets bwrap can reach and does not hide already."""
    files: list[str] = []
    dirs: list[str] = []
    searchable: dict[str, bool] = {}  # the candidates share their parents (the homes)
    for _absolute, path in resolved_secrets(policy) if resolved is None else resolved:
        if not os.path.lexists(path) or _replaced(path, policy):
            continue
        if check_reach and not _reachable(path, policy.host_uid, policy.host_gid, searchable):
            continue  # the host uid cannot even look it up: plain permissions hide it
        (dirs if os.path.isdir(path) else files).append(path)
    return sorted(set(files)), sorted(set(dirs))


def read_only_paths(policy: SandboxPolicy) -> tuple[str, ...]:
    """Absolute protected paths inside the project."""
    return tuple(str(policy.project_dir / p) for p in policy.read_only_paths)


def plan_mounts(policy: SandboxPolicy, drop_privileges: bool,
                resolved: list[tuple[str, str]] | None = None) -> MountPlan:
    """Resolve the policy against this host into a MountPlan (resolved: resolved_secrets(policy), when
    the caller has it already)."""
    homes = hidden_homes(policy)
    files, dirs = hidden_mounts(policy, drop_privileges, resolved)
    files = [p for p in files if not any(under(p, h) for h in homes)]
    dirs = [p for p in dirs if not any(under(p, h) for h in homes)]
    git_dir = policy.project_dir / ".git"
    return MountPlan(
        base_dir=str(policy.base_dir),
        project_dir=str(policy.project_dir),
        home_dir=str(policy.home_dir),
        tmp_dir=str(policy.tmp_dir),
        passwd=str(policy.session_dir / PASSWD),
        shared_dir=str(shared_dir(policy)),
        uid=policy.uid,
        gid=policy.gid,
        hide_files=tuple(files),
        hide_dirs=tuple(dirs),
        read_only=read_only_paths(policy),
        hide_homes=tuple(homes),
        # the agent's .git stays where it is (a real directory only: bwrap follows links)
        pinned=(str(git_dir),) if git_dir.is_dir() and not git_dir.is_symlink() else (),
        resolv_conf=not os.path.islink("/etc/resolv.conf"),
    )
