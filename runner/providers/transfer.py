"""The working tree as an archive, up to a remote sandbox and back.

What comes back is the agent's: an archive whose names, links and sizes it chose. It is unpacked
into the host's project directory as plain data: every name is checked (no absolute path, no `..`),
every directory entered by fd with O_NOFOLLOW (a link the archive made is never followed, so
nothing lands outside the project), links are stored as links (never resolved), hard links, devices
and fifos are left out and listed. It is bounded while it streams in (spool(): no more than
SANDBOX_DISK_LIMIT bytes are ever read from the sandbox), and again by its files' sizes and its
number of entries (SANDBOX_MAX_FILES) as it is unpacked. The files are the session uid's,
as if the agent had written them here; runner.commit then reads them as data, unchanged.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from runner.sandbox.base import LimitExceeded, format_size

User = tuple[int, int]


@dataclass
class Unpacked:
    """What an archive from a sandbox held: counts, and entries refused (name, why)."""

    files: int = 0
    size: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


class TooLarge(LimitExceeded):
    """The archive holds more than the session's disk limit, or more entries than SANDBOX_MAX_FILES."""

    def __init__(self, what: str, value: int, setting: str) -> None:
        super().__init__(what, format_size(value) if what == "disk" else str(value), setting)
        self.args = (f"the work the sandbox sent back is larger than the session's disk limit of {self.value} "
                     f"({setting})" if what == "disk" else
                     f"the work the sandbox sent back holds more than {value} files ({setting})",)


async def spool(chunks: AsyncIterator[bytes], directory: Path, max_size: int) -> IO[bytes]:
    """The archive a sandbox streams, into an unnamed file in directory (never the project), read no
    further than max_size bytes: TooLarge past it, the stream closed."""
    out = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (handed to the caller, closed on error)
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_size:
                raise TooLarge("disk", max_size, "SANDBOX_DISK_LIMIT")
            out.write(chunk)
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()


def pack(project: Path) -> bytes:
    """A tar of the project (working tree and the agent's .git), links stored as links."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(project)):
            tar.add(project / entry, arcname=entry, recursive=True)
    return out.getvalue()


def _parts(name: str) -> list[str] | None:
    """The path's components, or None when it is absolute or climbs out."""
    name = name.removeprefix("./")
    if not name or name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or any("\0" in p for p in parts):
        return None
    return parts


def _open_dir(root_fd: int, parts: list[str], user: User | None) -> int:
    """An fd on root/parts..., made as needed; O_NOFOLLOW at each step (a link is an error)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                if user is not None:
                    os.chown(part, *user, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove(dir_fd: int, name: str) -> None:
    """Remove whatever holds name in dir_fd (a file, link or directory tree), without following links."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def clear(project: Path) -> None:
    """Empty the project directory (the host's copy is replaced by what the sandbox holds)."""
    fd = os.open(project, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name in os.listdir(fd):
            _remove(fd, name)
    finally:
        os.close(fd)


def unpack(data: bytes | IO[bytes], project: Path, user: User | None, max_size: int,
           max_entries: int = 200_000) -> Unpacked:
    """Replace the project directory's contents with the archive's, as untrusted data; TooLarge past
    max_size bytes of files or max_entries entries (each counted, refused ones too)."""
    clear(project)
    result = Unpacked()
    root = os.open(project, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with tarfile.open(fileobj=source, mode="r|*") as tar:  # a stream: members are not kept
            for entries, member in enumerate(tar, 1):
                if entries > max_entries:
                    raise TooLarge("files", max_entries, "SANDBOX_MAX_FILES")
                _unpack_one(tar, member, root, user, max_size, result)
    finally:
        os.close(root)
    return result


def _unpack_one(tar: tarfile.TarFile, member: tarfile.TarInfo, root: int, user: User | None, max_size: int,
                result: Unpacked) -> None:
    """One archive entry into the project, or a line in result.refused."""
    parts = _parts(member.name)
    if parts is None:
        result.refused.append((member.name, "a name outside the project"))
        return
    if not parts:
        return  # the archive's own "."
    if not (member.isdir() or member.isreg() or member.issym()):
        result.refused.append((member.name, "neither a file, a directory nor a symbolic link"))
        return
    try:
        parent = _open_dir(root, parts[:-1] if not member.isdir() else parts, user)
    except OSError:
        result.refused.append((member.name, "under a link or a file"))
        return
    try:
        if member.isdir():
            return
        name = parts[-1]
        _remove(parent, name)
        if member.issym():
            os.symlink(member.linkname, name, dir_fd=parent)
            if user is not None:
                os.chown(name, *user, dir_fd=parent, follow_symlinks=False)
            result.files += 1
            return
        result.size += member.size
        if result.size > max_size:
            raise TooLarge("disk", max_size, "SANDBOX_DISK_LIMIT")
        source = tar.extractfile(member)
        assert source is not None
        mode = 0o755 if member.mode & 0o100 else 0o644
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
        try:
            with os.fdopen(os.dup(fd), "wb") as out:
                shutil.copyfileobj(source, out)
            if user is not None:
                os.fchown(fd, *user)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        result.files += 1
    finally:
        os.close(parent)
