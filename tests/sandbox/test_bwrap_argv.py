"""The pure policy -> bwrap argv translation, as a table of expectations."""

from __future__ import annotations

from dataclasses import replace

import pytest

from runner.sandbox.bwrap import MountPlan, build_argv, command_mounts, finish_argv, mount_argv, session_argv
from runner.sandbox.local import build_env

PLAN = MountPlan(
    base_dir="/srv/sesame", project_dir="/srv/sesame/s1/project", home_dir="/srv/sesame/s1/home",
    tmp_dir="/srv/sesame/s1/tmp", passwd="/srv/sesame/s1/.passwd", shared_dir="/srv/sesame/.sandbox-shared",
    uid=1000, gid=1000,
    hide_files=("/etc/shadow", "/srv/config/sesame.toml"), hide_dirs=("/home/ann/.ssh",),
    read_only=("/srv/sesame/s1/project/.git/hooks", "/srv/sesame/s1/project/.git/config"),
)


def _pairs(argv: list[str], option: str, arity: int) -> list[tuple[str, ...]]:
    """Every occurrence of option with its arguments."""
    return [tuple(argv[i + 1 : i + 1 + arity]) for i, a in enumerate(argv) if a == option]


ARGV = build_argv(PLAN, ["claude", "-p", "hi"], "/srv/sesame/s1/project", seccomp_fd=5, info_fd=6)

CASES = [
    # option, arity, expected occurrences (subset), why
    ("--ro-bind", 2, [("/", "/")], "root read-only"),
    ("--bind", 2, [("/srv/sesame/s1/project",) * 2, ("/srv/sesame/s1/home",) * 2,
                   ("/srv/sesame/s1/tmp", "/tmp")], "writable: project, HOME, session tmp"),
    ("--tmpfs", 1, [("/srv/sesame",), ("/run",)], "other sessions and host sockets hidden"),
    ("--remount-ro", 1, [("/srv/sesame",), ("/run",)], "hiding tmpfs read-only"),
    ("--ro-bind", 2, [("/srv/sesame/s1/.passwd", "/etc/passwd"),
                      ("/srv/sesame/.sandbox-shared/group", "/etc/group"),
                      ("/srv/sesame/.sandbox-shared/resolv.conf", "/etc/resolv.conf")], "minimal /etc"),
    ("--ro-bind", 2, [("/srv/sesame/.sandbox-shared/denied", "/etc/shadow"),
                      ("/srv/sesame/.sandbox-shared/denied", "/srv/config/sesame.toml"),
                      ("/srv/sesame/.sandbox-shared/denied.d", "/home/ann/.ssh")], "secrets hidden"),
    ("--ro-bind-try", 2, [("/srv/sesame/s1/project/.git/hooks",) * 2,
                          ("/srv/sesame/s1/project/.git/config",) * 2], "protected project paths"),
    ("--uid", 1, [("1000",)], "unprivileged uid inside"),
    ("--gid", 1, [("1000",)], "unprivileged gid inside"),
    ("--seccomp", 1, [("5",)], "seccomp program fd"),
    ("--info-fd", 1, [("6",)], "info fd for the pid-1 pidfd"),
    ("--chdir", 1, [("/srv/sesame/s1/project",)], "cwd"),
]


@pytest.mark.parametrize(("option", "arity", "expected", "why"), CASES)
def test_argv_contains(option: str, arity: int, expected: list[tuple[str, ...]], why: str) -> None:
    """Each expectation is present."""
    found = _pairs(ARGV, option, arity)
    for item in expected:
        assert item in found, why


@pytest.mark.parametrize("flag", ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                                  "--disable-userns", "--die-with-parent", "--new-session"])
def test_namespaces_and_lifetime_flags(flag: str) -> None:
    """New user, pid, ipc, uts namespaces; no nested userns; dies with the worker."""
    assert flag in ARGV


def test_network_namespace_is_joined_not_created() -> None:
    """The netns is prepared by the caller (loopback + proxy), so bwrap must not unshare it."""
    assert "--unshare-net" not in ARGV and "--unshare-all" not in ARGV and "--share-net" not in ARGV


def test_command_follows_double_dash() -> None:
    """The command comes last, unparsed by bwrap."""
    assert ARGV[0] == "/usr/bin/bwrap"
    assert ARGV[ARGV.index("--") + 1 :] == ["claude", "-p", "hi"]


def test_ordering_hides_sessions_before_binding_our_own() -> None:
    """tmpfs over the base, then our binds, then the base goes read-only."""
    tmpfs = ARGV.index("/srv/sesame")
    project = ARGV.index("/srv/sesame/s1/project")
    remount = len(ARGV) - 1 - ARGV[::-1].index("--remount-ro")
    assert tmpfs < project < remount or ARGV[remount + 1] == "/run"
    assert ARGV.index("--tmpfs") < ARGV.index("/srv/sesame/s1/home")


def test_root_bind_comes_first() -> None:
    """Later mounts override the read-only root, never the other way round."""
    assert ARGV.index("--ro-bind") < ARGV.index("--bind") < ARGV.index("--ro-bind-try")


def test_without_resolv_conf_and_fds() -> None:
    """No resolv.conf bind when the host's is a symlink; optional fds omitted."""
    argv = build_argv(replace(PLAN, resolv_conf=False), ["true"], "/x")
    assert "/etc/resolv.conf" not in argv and "--seccomp" not in argv and "--info-fd" not in argv


def test_env_is_built_from_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.environ never leaks in; the caller cannot override HOME or the proxy."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://secret")
    env = build_env({"API_KEY": "k", "HOME": "/root", "HTTPS_PROXY": "http://evil:1"},
                    "/s/home", "/tmp", "tok/", "http://127.0.0.1:3128")
    assert "DATABASE_URL" not in env and env["API_KEY"] == "k"
    assert env["HOME"] == "/s/home" and env["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert env["TMPDIR"] == "/tmp" and env["PATH"].startswith("/usr/local/sbin")


def test_env_without_proxy_drops_callers_proxy() -> None:
    """Unsandboxed runs get no proxy variables at all."""
    env = build_env({"http_proxy": "http://x:1"}, "/h", "/t", "tok/", None)
    assert not any("proxy" in k.lower() for k in env)


def test_every_tmpfs_is_sized_and_dev_shm_is_one() -> None:
    """With a size, each --tmpfs is preceded by --size; /dev/shm is its own tmpfs after --dev."""
    argv = build_argv(replace(PLAN, tmpfs_size=1 << 20, hide_homes=("/home", "/root")), ["true"], "/", block_fd=7)
    tmpfs = [i for i, a in enumerate(argv) if a == "--tmpfs"]
    assert sorted(argv[i + 1] for i in tmpfs) == ["/dev/shm", "/home", "/proc/1", "/root", "/run", "/srv/sesame"]
    assert all(argv[i - 2 : i] == ["--size", str(1 << 20)] for i in tmpfs)
    assert argv.index("--dev") < tmpfs[0] and argv[tmpfs[0] - 4 : tmpfs[0] - 2] == ["--perms", "1777"]
    assert _pairs(argv, "--block-fd", 1) == [("7",)]
    assert "--size" not in ARGV and "--block-fd" not in ARGV  # no limits: nothing sized, nothing blocks


def test_pid1_proc_entry_is_hidden_read_only() -> None:
    """bwrap's pid-1 (no listener of ours) is out of the command's reach: /proc/1, once /proc is mounted,
    is an empty tmpfs, read-only."""
    argv = build_argv(PLAN, ["true"], "/")
    proc, hidden = argv.index("/proc"), argv.index("/proc/1")
    assert argv[proc - 1] == "--proc" and argv[hidden - 1] == "--tmpfs" and proc < hidden
    assert argv[hidden - 3 : hidden - 1] == ["--perms", "0555"]
    assert argv[hidden + 1 : hidden + 3] == ["--remount-ro", "/proc/1"]


def test_homes_are_empty_tmpfs_under_the_session_mounts_then_read_only() -> None:
    """Homes hidden whole before anything inside them is mounted, sealed read-only after."""
    plan = replace(PLAN, base_dir="/home/svc/sessions", project_dir="/home/svc/sessions/s1/project",
                   home_dir="/home/svc/sessions/s1/home", hide_homes=("/home", "/root"))
    argv = build_argv(plan, ["true"], "/")
    tmpfs = [i for i, a in enumerate(argv) if a == "--tmpfs" and argv[i + 1] in ("/home", "/root")]
    base = argv.index("/home/svc/sessions")
    project = argv.index("/home/svc/sessions/s1/project")
    sealed = [i for i, a in enumerate(argv) if a == "--remount-ro" and argv[i + 1] in ("/home", "/root")]
    assert len(tmpfs) == 2 and len(sealed) == 2
    assert max(tmpfs) < base < project < min(sealed) < argv.index("--")
    assert argv[tmpfs[0] - 2 : tmpfs[0]] == ["--perms", "0755"]


def test_git_dir_is_pinned_before_its_read_only_parts() -> None:
    """.git bound onto itself first: the ro hooks and config then sit on top of it."""
    git = "/srv/sesame/s1/project/.git"
    argv = build_argv(replace(PLAN, pinned=(git,)), ["true"], "/")
    pin = next(i for i, a in enumerate(argv) if a == "--bind" and argv[i + 1 : i + 3] == [git, git])
    assert pin < argv.index(f"{git}/hooks") and pin < argv.index(f"{git}/config")


def test_two_seccomp_programs_are_added_in_order() -> None:
    """With the notify program beside the deny program bwrap applies both (--seccomp takes one only)."""
    argv = build_argv(PLAN, ["true"], "/", seccomp_fd=5, extra_seccomp_fd=8)
    assert "--seccomp" not in argv
    assert _pairs(argv, "--add-seccomp-fd", 1) == [("5",), ("8",)]


def test_a_command_binds_the_protected_paths_present_then_seals_the_homes() -> None:
    """Per command, only the protected paths that exist are bound (bwrap would resolve and skip the others);
    the session part is the same for every command and the homes are sealed after the binds."""
    plan = replace(PLAN, hide_homes=("/home",), pinned=("/srv/sesame/s1/project/.git",))
    present = ("/srv/sesame/s1/project/.git/config",)
    argv = finish_argv([*session_argv(plan), *command_mounts(plan, present)], ["true"], "/")
    assert _pairs(argv, "--ro-bind-try", 2) == [(present[0], present[0])]
    assert argv.index("--ro-bind-try") < argv.index("--remount-ro", argv.index("--ro-bind-try")) < argv.index("--")
    assert argv[argv.index("--ro-bind-try") + 3 : argv.index("--ro-bind-try") + 5] == ["--remount-ro", "/home"]
    assert mount_argv(plan) == [*session_argv(plan), *command_mounts(plan, plan.read_only)]
    assert _pairs(build_argv(plan, ["true"], "/"), "--ro-bind-try", 2) == [(p, p) for p in plan.read_only]
