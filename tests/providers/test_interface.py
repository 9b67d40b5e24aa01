"""The provider interface: SANDBOX_PROVIDER picks the provider, and what a remote sandbox sends back is
unpacked into the project as untrusted data (no escape by name or link, no device, bounded)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.settings import Settings, load_settings
from runner.providers import ProviderUnavailable, provider_for
from runner.providers.base import RemoteSandbox
from runner.providers.local import LocalProvider
from runner.providers.sync import read_back
from runner.providers.transfer import TooLarge, pack, unpack
from runner.sandbox.base import LimitExceeded, ProcessHandle, SandboxLimits, SandboxPolicy
from runner.sandbox.local import LocalSandbox
from runner.workspace import Workspace


def _settings(tmp_path: Path, **env: str) -> Settings:
    return load_settings(env={"SESAME_DATA_DIR": str(tmp_path / "d"), "ENCRYPTION_KEY": "ab" * 32, **env},
                         cwd=tmp_path)


def test_local_is_the_default_provider_and_makes_the_bubblewrap_sandbox(tmp_path: Path) -> None:
    provider = provider_for(_settings(tmp_path))
    assert isinstance(provider, LocalProvider)
    assert isinstance(provider.create(SandboxPolicy("s", tmp_path), lambda v: None), LocalSandbox)


def test_an_unknown_provider_is_refused_at_session_time(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.values["SANDBOX_PROVIDER"] = "nowhere"  # a hand-edited value that got past the checks
    with pytest.raises(ProviderUnavailable, match="use one of local"):
        provider_for(settings)


@pytest.mark.parametrize(("provider", "needs"), [("docker", "DOCKER_SANDBOX_IMAGE"), ("e2b", "E2B_API_KEY"),
                                                 ("daytona", "DAYTONA_API_KEY"), ("vercel", "VERCEL_TOKEN")])
def test_each_provider_is_selected_by_the_setting_and_refused_without_what_it_needs(
        tmp_path: Path, provider: str, needs: str) -> None:
    settings = _settings(tmp_path, SANDBOX_PROVIDER=provider, DOCKER_SANDBOX_IMAGE="img", E2B_API_KEY="k",
                         DAYTONA_API_KEY="k", VERCEL_TOKEN="t", VERCEL_TEAM_ID="team", VERCEL_PROJECT_ID="prj")
    assert provider_for(settings).name == provider
    settings.values[needs] = None  # unset after the start-up check (a live settings change)
    with pytest.raises(ProviderUnavailable, match=f"the {provider} sandbox provider needs {needs}"):
        provider_for(settings)


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info in entries:
            body = (data or {}).get(info.name)
            if body is not None:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


def test_the_working_tree_round_trips_with_links_and_modes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "a.txt").write_text("a\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o755)
    os.symlink("dir/a.txt", src / "link")
    dst.mkdir()
    (dst / "stale.txt").write_text("the host's old copy\n")
    result = unpack(pack(src), dst, None, 1 << 20)
    assert (dst / "dir" / "a.txt").read_text() == "a\n" and not (dst / "stale.txt").exists()
    assert os.readlink(dst / "link") == "dir/a.txt" and os.access(dst / "run.sh", os.X_OK)
    assert result.files == 3 and not result.refused


def test_names_outside_the_project_and_paths_through_links_are_refused(tmp_path: Path) -> None:
    project, outside = tmp_path / "project", tmp_path / "outside"
    project.mkdir()
    outside.mkdir()
    archive = _tar([
        _member("../outside/escaped"), _member(str(outside / "absolute")),
        _member("evil", tarfile.SYMTYPE, str(outside)), _member("evil/through-link"),
        _member("dev", tarfile.CHRTYPE), _member("fifo", tarfile.FIFOTYPE),
        _member("hard", tarfile.LNKTYPE, "/etc/passwd"), _member("ok.txt"),
    ], {"../outside/escaped": b"x", str(outside / "absolute"): b"x", "evil/through-link": b"x", "ok.txt": b"ok"})
    result = unpack(archive, project, None, 1 << 20)
    assert list(outside.iterdir()) == []
    assert (project / "ok.txt").read_bytes() == b"ok"
    assert os.readlink(project / "evil") == str(outside)  # kept as a link (data), never followed
    refused = {name for name, _why in result.refused}
    assert refused == {"../outside/escaped", str(outside / "absolute"), "evil/through-link", "dev", "fifo", "hard"}
    assert not (project / "dev").exists() and not (project / "fifo").exists() and not (project / "hard").exists()


def test_an_archive_larger_than_the_disk_limit_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    with pytest.raises(TooLarge):
        unpack(_tar([_member("big")], {"big": b"x" * 2048}), project, None, 1024)


class _Endless(RemoteSandbox):
    """A remote sandbox whose archive never ends (a hostile agent's answer): counts what was asked of it."""

    def __init__(self, policy: SandboxPolicy) -> None:
        self.policy, self.warning, self.chunks = policy, None, 0

    async def start(self) -> None: ...
    async def exec(self, *args: object, **kwargs: object) -> ProcessHandle: raise NotImplementedError
    async def listen(self, port: int) -> object: raise NotImplementedError
    async def destroy(self) -> None: ...
    async def upload(self, archive: bytes, remote_dir: str) -> None: ...
    remote_id = "endless"

    async def download(self, remote_dir: str) -> AsyncIterator[bytes]:
        while True:
            self.chunks += 1
            yield b"\0" * 65536


async def test_an_endless_archive_is_cut_at_the_disk_limit_while_it_streams(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    workspace.project.mkdir(parents=True)
    sandbox = _Endless(SandboxPolicy("s", tmp_path, limits=SandboxLimits(disk=1 << 20)))
    with pytest.raises(LimitExceeded, match=r"^the work the sandbox sent back is larger than the session\'s disk limit of 1m \(SANDBOX_DISK_LIMIT\)$"):
        await read_back(sandbox, workspace)
    assert sandbox.chunks <= (1 << 20) // 65536 + 1  # read no further than the limit
    assert not [p for p in workspace.root.iterdir() if p.name != "project"]  # the spool file is gone


def test_an_archive_with_more_entries_than_allowed_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    archive = _tar([_member(f"f{i}") for i in range(6)], {f"f{i}": b"x" for i in range(6)})
    with pytest.raises(LimitExceeded, match=r"^the work the sandbox sent back holds more than 5 files \(SANDBOX_MAX_FILES\)$"):
        unpack(io.BytesIO(archive), project, None, 1 << 20, max_entries=5)
    assert len(list(project.iterdir())) <= 5
