"""The escape suite: each attempt must fail inside the real sandbox, and be reported where it can."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Awaitable
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy
from runner.sandbox.local import LocalSandbox
from tests.sandbox.conftest import CREDENTIALS, SERVER_SECRETS, Env, requires_sandbox

pytestmark = requires_sandbox

PY = "/usr/bin/python3"


def _network(v: object, resource: str) -> bool:
    """A network violation for resource."""
    return v.kind == "network" and v.resource == resource


def _fs(v: object, path: str, operation: str | None = None) -> bool:
    """A filesystem violation for path (and operation)."""
    ok = v.kind == "filesystem" and v.resource == str(path)
    return ok and (operation is None or v.operation == operation)


# --- reads of credential paths and other sessions -------------------------------------------

@pytest.mark.parametrize("rel", sorted(CREDENTIALS))
async def test_credential_file_is_unreadable(env: Env, rel: str) -> None:
    """Each credential path under the (world-readable) server HOME is covered."""
    path = env.fake_home / rel
    run = await env.run(f"cat {path}; cat {path.parent}/* 2>&1; ls {path.parent}")
    assert CREDENTIALS[rel] not in run.out
    assert run.code != 0
    await env.violation(lambda v: _fs(v, path, "read"))


async def test_credential_read_through_planted_symlink(env: Env) -> None:
    """A symlink planted in the project does not hide where a read goes."""
    run = await env.run(f"ln -s {env.fake_home}/.ssh keys; cat keys/id_rsa; "
                        "ln -s /root/.aws/nothing-here aws; cat aws")
    assert "ssh-secret-key" not in run.out and run.code != 0
    await env.violation(lambda v: _fs(v, env.fake_home / ".ssh/id_rsa", "read"))
    await env.violation(lambda v: _fs(v, "/root/.aws/nothing-here", "read"))


async def test_normal_reads_are_not_reported(env: Env) -> None:
    """Reading the project, HOME, /etc and the tools of the system records nothing."""
    run = await env.run("cat README.md /etc/hostname /etc/passwd >/dev/null && git status -s "
                        f"&& ls {env.base} ~ /tmp >/dev/null && {PY} -c 'import json, email'")
    assert run.code == 0, run.err
    assert env.violations == []


async def test_etc_shadow_is_unreadable_and_not_ours(env: Env) -> None:
    """Trap 1: root-owned files do not become the sandbox user's; the agent is not host root."""
    handle = await env.sandbox.exec(
        ["/bin/sh", "-c", "cat /etc/shadow; stat -c %u /etc/shadow /etc/passwd /; exec sleep 432.198"]
    )
    out = []
    async for line in handle:
        if line.stream == "stdout":
            out.append(line.text)
        if len(out) == 3:
            break
    host_uids = []
    for pid in _host_pids_with("432.198"):
        with open(f"/proc/{pid}/status") as fh:
            host_uids += [ln.split()[1:] for ln in fh if ln.startswith("Uid:")]
    await handle.kill()
    assert not any("root:" in line for line in out)
    assert out == ["65534", "65534", "65534"]  # host root is unmapped: nobody, not uid 1000
    assert host_uids and all(uids == ["99999"] * 4 for uids in host_uids)
    await env.violation(lambda v: _fs(v, "/etc/shadow", "read"))


async def test_passwd_holds_only_the_sandbox_user(env: Env) -> None:
    """A minimal /etc/passwd and /etc/group."""
    run = await env.run("cat /etc/passwd /etc/group; id -un")
    users = [line.split(":")[0] for line in run.out.splitlines()[:2]]
    assert users == ["sesame", "sesame"] and run.out.splitlines()[-1] == "sesame"


async def test_server_key_file_is_hidden(env: Env) -> None:
    """Server config and key files named in hidden_paths cannot be read."""
    run = await env.run(f"cat {env.server_key}")
    assert "server-private-key-secret" not in run.out and run.code != 0
    await env.violation(lambda v: _fs(v, env.server_key, "read"))


async def test_other_session_is_invisible(env: Env) -> None:
    """Nothing of another session's workspace is visible."""
    run = await env.run(f"cat {env.other_secret}; ls {env.base}")
    assert "other-session-secret" not in run.out
    assert run.out.split() == ["sess-a"]
    await env.violation(lambda v: _fs(v, env.other_secret, "read"))


# --- writes ---------------------------------------------------------------------------------

async def test_write_outside_project_is_refused_and_reported(env: Env) -> None:
    """Writes outside the project (root filesystem, another session) fail and are violations."""
    target = env.base / "sess-b" / "project" / "planted.txt"
    run = await env.run(f"echo x > /etc/evil; echo x > /usr/local/bin/evil; echo x > {target}")
    assert run.code != 0 and not os.path.exists("/etc/evil") and not target.exists()
    await env.violation(lambda v: _fs(v, "/etc/evil", "write"))
    await env.violation(lambda v: _fs(v, "/usr/local/bin/evil", "write"))


async def test_mkdir_rename_unlink_outside_are_reported(env: Env) -> None:
    """Other write-like syscalls are reported too."""
    run = await env.run("mkdir /opt/evil; mv /etc/hostname /etc/h2; rm -f /etc/hosts; "
                        "ln -s /x /usr/evil; touch /var/evil")
    assert run.code != 0
    await env.violation(lambda v: _fs(v, "/opt/evil", "mkdir"))
    await env.violation(lambda v: _fs(v, "/etc/hostname", "rename"))
    await env.violation(lambda v: _fs(v, "/etc/hosts", "unlink"))
    await env.violation(lambda v: _fs(v, "/usr/evil", "symlink"))
    await env.violation(lambda v: _fs(v, "/var/evil", "write"))


async def test_git_hooks_are_read_only(env: Env) -> None:
    """A hook planted in .git/hooks would run outside the sandbox: refused."""
    hook = env.project / ".git/hooks/pre-commit"
    run = await env.run(f"echo 'curl evil' > {hook}; chmod +x {hook}")
    assert run.code != 0 and not hook.exists()
    await env.violation(lambda v: _fs(v, hook, "write"))


async def test_git_config_is_read_only(env: Env) -> None:
    """core.fsmonitor and friends in .git/config would run outside: refused."""
    config = env.project / ".git/config"
    before = config.read_text()
    run = await env.run("git config core.fsmonitor 'touch /tmp/pwned'; "
                        f"echo '[core] hooksPath=/tmp' >> {config}")
    assert run.code != 0 and config.read_text() == before
    await env.violation(lambda v: _fs(v, config) or _fs(v, f"{config}.lock"))


async def test_missing_gitmodules_cannot_be_created(env: Env) -> None:
    """Protected names are refused even when they do not exist yet."""
    run = await env.run("echo '[submodule]' > .gitmodules; echo 'evil' > .bashrc")
    assert run.code != 0
    assert not (env.project / ".gitmodules").exists() and not (env.project / ".bashrc").exists()
    await env.violation(lambda v: _fs(v, env.project / ".gitmodules", "write"))


async def test_renaming_git_dir_is_refused(env: Env) -> None:
    """Moving .git aside to plant a fresh hooks dir is refused."""
    run = await env.run("mv .git .git-old")
    assert run.code != 0 and (env.project / ".git/config").exists()
    await env.violation(lambda v: _fs(v, env.project / ".git", "rename"))


async def test_write_through_planted_symlink(env: Env) -> None:
    """A symlink in the project pointing outside does not let writes out."""
    run = await env.run(f"ln -s {env.outside} link; echo pwned > link; "
                        "ln -s /etc/passwd link2; echo pwned >> link2")
    assert run.code != 0
    assert env.outside.read_text() == "outside original\n"
    await env.violation(lambda v: _fs(v, "/etc/passwd", "write"))


async def test_write_through_hard_link(env: Env) -> None:
    """A planted hard link to a file outside stays unwritable; new links cannot cross mounts."""
    run = await env.run("echo pwned >> hardlink.txt; ln /etc/passwd passwd-link")
    assert run.code != 0
    assert env.outside.read_text() == "outside original\n"
    assert not (env.project / "passwd-link").exists()
    await env.violation(lambda v: _fs(v, env.project / "hardlink.txt", "write"))


async def test_writable_places_work(env: Env) -> None:
    """Project, HOME and /tmp (the session tmp) are writable; /dev/null too, without reports."""
    home = env.sandbox.policy.home_dir
    run = await env.run("echo a > made.txt && echo b > ~/h.txt && echo c > /tmp/t.txt "
                        "&& echo d > /dev/null && cat made.txt")
    assert run.code == 0, run.err
    assert (env.project / "made.txt").read_text() == "a\n"
    assert (home / "h.txt").exists() and (env.sandbox.policy.tmp_dir / "t.txt").exists()
    assert env.violations == []


# --- environment and /proc ------------------------------------------------------------------

async def test_no_server_secret_in_env_or_proc(env: Env) -> None:
    """Trap 2: neither the agent's env nor /proc/1/environ nor /proc/self/environ hold secrets."""
    assert os.environ["DATABASE_URL"] == SERVER_SECRETS["DATABASE_URL"]
    run = await env.run("env; cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'; "
                        "cat /proc/*/environ | tr '\\0' '\\n'; cat /proc/1/cmdline")
    for name, value in SERVER_SECRETS.items():
        assert name not in run.out and value not in run.out
    assert "HTTPS_PROXY=http://127.0.0.1:3128" in run.out


async def test_agent_env_is_only_what_the_caller_gave(env: Env) -> None:
    """The caller's env passes; nothing else from the worker does."""
    run = await env.run("env", env={"ANTHROPIC_API_KEY": "agent-own-key"})
    names = {line.split("=", 1)[0] for line in run.out.splitlines()}
    assert "ANTHROPIC_API_KEY=agent-own-key" in run.out
    assert names <= {"ANTHROPIC_API_KEY", "PATH", "HOME", "LANG", "TERM", "SHELL", "USER",
                     "LOGNAME", "TMPDIR", "PWD", "SHLVL", "_", "SESAME_SANDBOX_TOKEN",
                     "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                     "all_proxy"}


# --- network --------------------------------------------------------------------------------

async def test_domain_not_allowed(env: Env) -> None:
    """A name outside the allow list gets 403 from the proxy and a violation."""
    run = await env.run("curl -sS -m 5 -o /dev/null -w '%{http_code}' http://evil.invalid/x")
    assert run.out == "403"
    await env.violation(lambda v: _network(v, "evil.invalid:80"))


async def test_denied_subdomain_wins(env: Env) -> None:
    """Deny wins over a matching wildcard allow."""
    run = await env.run("curl -sS -m 5 -o /dev/null -w '%{http_code}' https://blocked.allowed.invalid/")
    assert run.code != 0
    await env.violation(lambda v: _network(v, "blocked.allowed.invalid:443"))


async def test_ip_literal_not_listed(env: Env) -> None:
    """An IP literal without an explicit host:port entry is refused."""
    run = await env.run("curl -sS -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.2:8080/")
    assert run.out == "403"
    await env.violation(lambda v: _network(v, "127.0.0.2:8080"))


@pytest.mark.parametrize("port", [5432, 6379])
async def test_local_services_refused(env: Env, port: int) -> None:
    """The real PostgreSQL and Redis on this host are unreachable, through the proxy or not."""
    run = await env.run(
        f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://localhost:{port}/; "
        f"curl -sS -m 5 -p -o /dev/null http://localhost:{port}/"
    )
    assert run.out.startswith("403") and run.code != 0
    await env.violation(lambda v: _network(v, f"localhost:{port}"))


async def test_direct_tcp_bypassing_proxy(env: Env) -> None:
    """Connecting straight to 127.0.0.1:6379 (Redis on the host) fails: the netns is empty."""
    script = ("import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', 6379))\n"
              "    print('connected')\nexcept OSError as e:\n    print('refused', e)\n")
    run = await env.run(f"{PY} -c \"$S\"", env={"S": script})
    assert "refused" in run.out
    await env.violation(lambda v: _network(v, "127.0.0.1:6379") and v.operation == "connect")


async def test_only_loopback_interface(env: Env) -> None:
    """No interface but lo inside."""
    run = await env.run("cat /proc/net/dev | tail -n +3 | cut -d: -f1")
    assert run.out.split() == ["lo"]


async def test_dns_lookup_is_refused_and_reported(env: Env) -> None:
    """Names do not resolve inside; the query is reported."""
    run = await env.run(f"{PY} -c \"import socket; socket.getaddrinfo('exfil-data.evil.invalid', 80)\"")
    assert run.code != 0 and "gaierror" in run.err
    await env.violation(lambda v: _network(v, "exfil-data.evil.invalid:53"))


async def test_postgres_unix_socket(env: Env) -> None:
    """PostgreSQL's unix socket is neither visible nor connectable."""
    script = ("import socket\ntry:\n    s = socket.socket(socket.AF_UNIX)\n"
              "    s.connect('/var/run/postgresql/.s.PGSQL.5432')\n    print('connected')\n"
              "except OSError as e:\n    print('refused', e)\n")
    run = await env.run(f"ls /var/run/postgresql/; {PY} -c \"$S\"", env={"S": script})
    assert "refused" in run.out and ".s.PGSQL" not in run.out
    await env.violation(lambda v: v.kind == "network" and v.resource == "unix socket")


async def test_allowed_loopback_server_through_proxy(env: Env) -> None:
    """An explicitly allowed 127.0.0.1:PORT is reachable through the proxy (plain HTTP)."""
    run = await env.run(f"curl -sS -m 5 http://127.0.0.1:{env.http_port}/hi")
    assert run.out == "hello from loopback", run.err
    assert env.violations == []


async def test_allowed_connect_tunnel(env: Env) -> None:
    """An allowed host:port works through a CONNECT tunnel (as HTTPS would)."""
    run = await env.run(f"curl -sS -m 5 --proxytunnel http://localhost:{env.http_port}/tunnel")
    assert run.out == "hello from loopback", run.err
    assert env.violations == []


# --- privilege and process escapes ----------------------------------------------------------

async def test_no_new_user_namespace(env: Env) -> None:
    """unshare -U (and -r) fails."""
    run = await env.run("unshare -U true; echo $?; unshare -r id; echo $?")
    codes = [line for line in run.out.splitlines() if line.isdigit()]
    assert codes == ["1", "1"]


async def test_mount_is_refused(env: Env) -> None:
    """mount(2) is refused even with a user namespace's caps gone."""
    run = await env.run("mkdir -p /tmp/m; mount -t tmpfs none /tmp/m")
    assert run.code != 0


async def test_setuid_binaries_do_not_elevate(env: Env) -> None:
    """su and passwd fail; no_new_privs is set."""
    run = await env.run("echo | su -c id root; echo su=$?; passwd -S root; echo passwd=$?; "
                        "grep NoNewPrivs /proc/self/status")
    assert "uid=0" not in run.out and "su=1" in run.out and "passwd=0" not in run.out
    assert "NoNewPrivs:\t1" in run.out


async def test_ptrace_is_refused(env: Env) -> None:
    """ptrace of any process fails."""
    script = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "print('attach', libc.ptrace(16, 1, 0, 0), ctypes.get_errno())\n")
    run = await env.run(f"{PY} -c \"$S\"", env={"S": script})
    assert "attach -1 1" in run.out  # EPERM


# The agent installs its own seccomp filter with a listener for openat and answers every call with
# CONTINUE from a thread of its own (not under that filter): were the kernel to notify that listener
# rather than the supervisor's, the supervisor would never see the open of a credential path.
OWN_LISTENER = """
import ctypes, os, struct, sys, threading, fcntl, queue
libc = ctypes.CDLL(None, use_errno=True)
seccomp_nr, openat_nr = {"x86_64": (317, 257), "aarch64": (277, 56)}[os.uname().machine]
code = b"".join(struct.pack("=HBBI", *insn) for insn in [
    (0x20, 0, 0, 0), (0x15, 0, 1, openat_nr), (0x06, 0, 0, 0x7FC00000), (0x06, 0, 0, 0x7FFF0000)])
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
prog = Prog(4, code)
fds = queue.SimpleQueue()
def answer():
    fd = fds.get()
    while True:
        buf = bytearray(80)
        fcntl.ioctl(fd, 0xC0502100, buf)
        fcntl.ioctl(fd, 0xC0182101, struct.pack("=QqiI", struct.unpack_from("=Q", buf)[0], 0, 0, 1))
threading.Thread(target=answer, daemon=True).start()
flags = int(sys.argv[2])
listener = libc.syscall(seccomp_nr, 1, flags, ctypes.byref(prog))
print("install", listener, ctypes.get_errno(), flush=True)
if listener >= 0 and flags & 8:
    fds.put(listener)
try:
    print(open(sys.argv[1]).read(), flush=True)
except OSError as exc:
    print("open", exc.errno, flush=True)
"""


@pytest.mark.parametrize("flags", [8, 8 | 1 | 16], ids=["new-listener", "new-listener+tsync"])
async def test_own_seccomp_listener_cannot_take_the_supervisors_calls(env: Env, flags: int) -> None:
    """seccomp(SET_MODE_FILTER, NEW_LISTENER [| TSYNC]) is refused inside: the supervisor keeps seeing
    every open (the credential read below is refused and reported, not answered by the agent)."""
    path = env.fake_home / ".ssh/id_rsa"
    run = await env.run(f"{PY} -c \"$S\" {path} {flags}", env={"S": OWN_LISTENER})
    assert "ssh-secret-key" not in run.out, run.out
    install = [line.split() for line in run.out.splitlines() if line.startswith("install ")]
    assert install and install[0][1] == "-1", (run.out, run.err)  # no listener fd for the agent
    assert "open 13" in run.out, (run.out, run.err)  # EACCES, from the supervisor
    await env.violation(lambda v: _fs(v, path, "read"))


# bwrap's pid-1 is the one process inside without our listener (bwrap gives it the notify program with
# none). Were its memory writable, a command would plant this there (x86_64): seccomp(SET_MODE_FILTER,
# NEW_LISTENER) then exit_group(100 - result), run once pid-1's wait4 returns (the command's exit): a
# listener fd, exit code below 100, means pid-1 and all it forks answer their own notified calls.
PID1_LISTENER = """
import struct
nr, *_, pc = open("/proc/1/syscall").read().split()
base = int(pc, 16)
code = (b"\\x48\\x8d\\x15" + struct.pack("<i", 41)  # lea rdx, [rip + 41]: the sock_fprog below
        + b"\\xbf\\x01\\x00\\x00\\x00\\xbe\\x08\\x00\\x00\\x00\\xb8\\x3d\\x01\\x00\\x00\\x0f\\x05"  # seccomp(1, 8, rdx)
        + b"\\x48\\x89\\xc7\\x48\\xf7\\xdf\\x48\\x83\\xc7\\x64"  # rdi = 100 - rax
        + b"\\xb8\\xe7\\x00\\x00\\x00\\x0f\\x05").ljust(48, b"\\xcc")  # exit_group(rdi)
code += struct.pack("<H6xQ", 1, base + 64) + struct.pack("=HBBI", 6, 0, 0, 0x7FFF0000)  # RET_ALLOW
with open("/proc/1/mem", "r+b", buffering=0) as mem:
    mem.seek(base)
    mem.write(code)
print("planted", nr, flush=True)
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the planted code is x86_64")
async def test_pid1_cannot_be_taken_over_for_a_listener(env: Env) -> None:
    """bwrap's pid-1 is out of the command's reach (its /proc entry is hidden): no code of the agent's runs
    there to install a listener of its own, nor to be trusted as bwrap's setup where the launcher thread
    carries the listener."""
    run = await env.run(f"{PY} -c \"$S\"", env={"S": PID1_LISTENER})
    assert not ("planted" in run.out and run.code < 100), f"pid-1 took a listener fd: {run}"
    assert "planted" not in run.out, run
    assert "No such file or directory" in run.err, run.err


async def test_kill_outside_is_impossible(env: Env) -> None:
    """The worker's pid does not exist inside; processes outside cannot be signalled."""
    run = await env.run(f"kill -9 {os.getpid()}; echo rc=$?; ls /proc | grep -c '^[0-9]'")
    assert "rc=1" in run.out or "No such process" in run.err
    assert int(run.out.splitlines()[-1]) < 10  # only the sandbox's own few processes


def _host_pids_with(arg: str) -> list[int]:
    """Host pids whose command line contains arg."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if arg.encode() in fh.read():
                        pids.append(int(entry.name))
            except OSError:
                pass
    return pids


async def test_daemon_dies_with_the_command(env: Env) -> None:
    """A setsid/nohup daemon does not outlive the command (nor the session)."""
    handle = await env.sandbox.exec(
        ["/bin/sh", "-c", "setsid nohup sleep 987.654 >/dev/null 2>&1 & sleep 0.3; echo started; sleep 0.2"]
    )
    async for line in handle:
        if line.text == "started":
            assert _host_pids_with("987.654"), "the daemon should be running now"
    await handle.wait()
    assert _host_pids_with("987.654") == []


async def test_kill_takes_the_whole_tree(env: Env) -> None:
    """kill() ends daemons too; destroy() leaves no process of the session."""
    handle = await env.sandbox.exec(
        ["/bin/sh", "-c", "setsid sleep 876.543 & (sleep 765.432 &) ; echo up; sleep 600"]
    )
    async for line in handle:
        if line.text == "up":
            break
    assert _host_pids_with("876.543") and _host_pids_with("765.432")
    await handle.kill()
    assert _host_pids_with("876.543") == [] and _host_pids_with("765.432") == []
    assert handle.returncode is not None


async def test_destroy_kills_running_commands(env: Env) -> None:
    """destroy() with commands still running leaves nothing behind."""
    handle = await env.sandbox.exec(["/bin/sh", "-c", "sleep 654.321"])
    await env.sandbox.destroy()
    assert handle.returncode is not None
    assert _host_pids_with("654.321") == []


_proc_reads: list[str] | None = None  # while set: what this process lists of /proc and reads of its processes


def _note_proc_reads(event: str, args: tuple[object, ...]) -> None:
    """Audit hook: a listing of /proc, or a read of a process's environ or status, whoever does it."""
    if _proc_reads is None or not args:
        return
    path = str(args[0])
    listing = event in ("os.scandir", "os.listdir") and os.path.normpath(path) == "/proc"
    if listing or (event == "open" and re.fullmatch(r"/proc/\d+/(environ|status)", path)):
        _proc_reads.append(f"{event} {path}")


sys.addaudithook(_note_proc_reads)


async def _proc_reads_of(action: Awaitable[None]) -> list[str]:
    """The /proc listings and process reads this process made while action ran."""
    global _proc_reads
    _proc_reads = []
    try:
        await action
        return _proc_reads
    finally:
        _proc_reads = None


async def test_destroy_does_not_scan_the_hosts_processes(env: Env) -> None:
    """Every command ran in a pid namespace, which ends with its pid-1: destroy() leaves nothing behind
    without listing /proc or reading each /proc/*/environ (issue 16: 5 ms of a cold start)."""
    handle = await env.sandbox.exec(["/bin/sh", "-c", "setsid sleep 543.219 & (sleep 543.218 &); echo up; sleep 600"])
    async for line in handle:
        if line.text == "up":
            break
    assert _host_pids_with("543.219") and _host_pids_with("543.218")
    assert await _proc_reads_of(env.sandbox.destroy()) == []
    assert _host_pids_with("543.219") == [] and _host_pids_with("543.218") == []


async def test_destroy_scans_for_leftovers_of_commands_run_unsandboxed(base_dir: Path) -> None:
    """Where a command ran without a pid namespace (security off) destroy() does look for what it left:
    the check above would see a scan."""
    async def ignore(v: object) -> None:
        pass

    sandbox = LocalSandbox(SandboxPolicy("off", base_dir, limits=None), ignore, warning="security off")
    await sandbox.start()
    await (await sandbox.exec(["true"])).wait()
    reads = await _proc_reads_of(sandbox.destroy())
    assert "os.scandir /proc" in reads and any(r.endswith("/environ") for r in reads)
