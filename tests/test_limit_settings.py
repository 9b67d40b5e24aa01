"""Limit settings: size parsing with clear errors, defaults, and which mechanism a host gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli.doctor import check_limits
from bot.settings import SettingsError, load_settings
from runner.sandbox import limits as limits_module
from runner.sandbox.base import SandboxLimits, format_size
from runner.sandbox.limits import Mechanism, detect

SIZES = [("4g", 4 << 30), ("512m", 512 << 20), ("512M", 512 << 20), ("1024k", 1 << 20), ("2GiB", 2 << 30),
         ("1t", 1 << 40), ("4096", 4096), (" 8g ", 8 << 30)]
BAD = [("4x", "is not a size"), ("4.5g", "is not a size"), ("-1g", "is not a size"), ("g", "is not a size"),
       ("0", "is not a positive size"), ("0m", "is not a positive size")]


@pytest.mark.parametrize(("text", "size"), SIZES)
def test_sizes_parse(tmp_path: Path, text: str, size: int) -> None:
    settings = load_settings(env={"SANDBOX_MEMORY_LIMIT": text, "SANDBOX_TMPFS_SIZE": text}, cwd=tmp_path)
    assert size == settings.SANDBOX_MEMORY_LIMIT and size == settings.SANDBOX_TMPFS_SIZE


@pytest.mark.parametrize(("text", "problem"), BAD)
@pytest.mark.parametrize("key", ["SANDBOX_MEMORY_LIMIT", "SANDBOX_TMPFS_SIZE", "SANDBOX_DISK_LIMIT"])
def test_bad_sizes_are_one_clear_error(tmp_path: Path, key: str, text: str, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={key: text}, cwd=tmp_path)
    assert caught.value.key == key and problem in str(caught.value) and "e.g. 4g" in str(caught.value)


@pytest.mark.parametrize(("key", "value"), [("SANDBOX_MAX_PROCESSES", "0"), ("SANDBOX_MAX_PROCESSES", "many"),
                                            ("SANDBOX_CPU_SHARE", "0"), ("SANDBOX_CPU_SHARE", "-1"),
                                            ("SANDBOX_CPU_SHARE", "0.001"), ("SANDBOX_CPU_SHARE", "nan"),
                                            ("SANDBOX_CPU_SHARE", "half")])
def test_bad_numbers_name_the_key(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={key: value}, cwd=tmp_path)
    assert caught.value.key == key


def test_defaults_match_the_sandbox_defaults(tmp_path: Path) -> None:
    settings = load_settings(env={}, cwd=tmp_path)
    defaults = SandboxLimits()
    assert (
        defaults.max_processes, defaults.memory, defaults.cpu_share, defaults.tmpfs, defaults.disk) == (settings.SANDBOX_MAX_PROCESSES, settings.SANDBOX_MEMORY_LIMIT, settings.SANDBOX_CPU_SHARE,
            settings.SANDBOX_TMPFS_SIZE, settings.SANDBOX_DISK_LIMIT)
    assert defaults.describe() == "1024 processes, 4g memory, 1 CPU, tmpfs 256m, disk 10g"


def test_a_config_file_size_is_parsed(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("sandbox:\n  limits:\n    memory: 2g\n    disk: 1073741824\n")
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.SANDBOX_MEMORY_LIMIT == 2 << 30 and settings.SANDBOX_DISK_LIMIT == 1 << 30


@pytest.mark.parametrize(("size", "text"), [(4 << 30, "4g"), (512 << 20, "512m"), (1536 << 20, "1536m"),
                                            (1536, "1536"), (1 << 40, "1t"), (3 << 10, "3k")])
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


V1_MOUNTS = """cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0
"""


def test_v1_is_chosen_from_writable_pids_and_memory(tmp_path: Path) -> None:
    mounts = V1_MOUNTS.replace("/sys/fs/cgroup", str(tmp_path))
    for name in ("pids", "memory/worker", "cpu,cpuacct", "unified"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    (tmp_path / "unified" / "cgroup.subtree_control").write_text("")
    found = detect(mounts, "4:memory:/worker\n3:pids:/\n2:cpu,cpuacct:/\n0::/\n")
    assert found.name == "cgroup v1"
    assert dict(found.parents) == {"pids": tmp_path / "pids", "memory": tmp_path / "memory/worker",
                                   "cpu": tmp_path / "cpu,cpuacct"}


def test_rlimits_without_a_pids_hierarchy(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    found = detect(f"cgroup {tmp_path}/memory cgroup rw,memory 0 0\n", "4:memory:/\n")
    assert found.name == "rlimits" and "RLIMIT_NPROC" in found.detail


def test_v2_when_the_workers_cgroup_delegates(tmp_path: Path) -> None:
    worker = tmp_path / "worker.slice"
    worker.mkdir()
    (worker / "cgroup.controllers").write_text("cpu memory pids\n")
    (worker / "cgroup.subtree_control").write_text("")
    found = detect(f"cgroup2 {tmp_path} cgroup2 rw 0 0\n", "0::/worker.slice\n")
    assert found.name == "cgroup v2" and dict(found.parents) == {"memory": worker}
    assert (worker / "cgroup.subtree_control").read_text() == "+pids +memory +cpu"


async def test_doctor_says_which_mechanism_applies(tmp_path: Path) -> None:
    check = await check_limits(load_settings(env={"SANDBOX_MEMORY_LIMIT": "2g"}, cwd=tmp_path))
    assert check.detail.startswith(f"{limits_module.mechanism().name} (") and "2g memory" in check.detail
    assert check.status == ("warn" if limits_module.mechanism().name == "rlimits" else "ok")


async def test_doctor_warns_when_only_rlimits_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_module, "_mechanism", Mechanism("rlimits", "no writable cgroup"))
    check = await check_limits(load_settings(env={}, cwd=tmp_path))
    assert check.status == "warn" and check.detail.startswith("rlimits") and "cgroup" in check.fix
