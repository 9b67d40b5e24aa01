"""Escapes through what the agent writes: each attack is a script committed into the repository,
run by the `command` agent through the normal pipeline; then we look at the host."""

from __future__ import annotations

import io
import os
import shlex
import textwrap
from pathlib import Path

import pytest

from runner.cli_run import run_from_terminal
from tests.support.gitrepo import branches, commit_files, git, make_repo, show_file
from tests.test_pipeline import args, make_services

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks target a worker running as root")

# Each attack gets the marker path as $1: a host directory the sandbox cannot see. Whatever the
# host runs on the agent's behalf (a filter, fsmonitor, a hook) would write into it.
ATTACKS = {
    "commondir_filter": """
        mkdir -p /tmp/evil/info
        printf '[filter "x"]\\n\\tclean = sh -c "id > %s/commondir-filter; cat"\\n\\trequired = true\\n' "$1" > /tmp/evil/config
        # the project's copy of the config gets the same filter, as does a commondir of our own
        cp -r .git/refs .git/objects /tmp/evil/ 2>/dev/null; cp .git/HEAD /tmp/evil/
        mkdir -p evil && cp -r /tmp/evil/. evil/
        echo "$PWD/evil" > .git/commondir
        echo 'victim.txt filter=x' > evil/info/attributes
        echo 'victim.txt filter=x' > .gitattributes
        echo 'changed' > victim.txt
    """,
    "nested_repo": """
        git init -q sub
        printf '[core]\\n\\tfsmonitor = "id > %s/nested-fsmonitor; true"\\n[filter "y"]\\n\\tclean = sh -c "id > %s/nested-filter; cat"\\n' "$1" "$1" >> sub/.git/config
        echo 'f filter=y' > sub/.gitattributes
        echo data > sub/f
        git -C sub add f 2>/dev/null; git -C sub -c user.name=a -c user.email=a@b commit -qm x 2>/dev/null
        echo dirty >> sub/f
        git add sub 2>/dev/null
        echo 'ok' > top.txt
    """,
    "git_symlinks": """
        rm -f .git/packed-refs && ln -s "$2" .git/packed-refs
        rm -rf .git/logs && ln -s "$1" .git/logs
        mkdir -p .git/objects/info && rm -rf .git/objects/info && ln -s "$1" .git/objects/info
        echo 'changed' > victim.txt
    """,
    "refs_symlink": """
        rm -rf .git/refs/heads && ln -s "$1" .git/refs/heads
        echo 'changed' > victim.txt
    """,
    # $3 holds a file of another directory: what restore_git_state deleted through .git/objects/info
    "objects_info": """
        rm -rf .git/objects/info && ln -s "$3" .git/objects/info
        rm -rf .git/objects/pack && ln -s "$3" .git/objects/pack
        echo 'changed' > victim.txt
    """,
    # a root-only file behind every name the host could parse; a name that is a terminal escape
    # a name that is a terminal escape, named in the session's error (the largest-file limit)
    "escape_name": """
        head -c 2097152 /dev/zero > "$(printf 'big\\033]0;pwned\\007\\033[2J\\033[31mred')"
        echo 'changed' > victim.txt
    """,
    "error_text": """
        ln -s "$2" .gitignore
        mkdir -p sub && ln -s "$2" sub/.gitignore
        ln -s "$2" .gitattributes
        ln -s "$2" .gitmodules
        rm -f .git/packed-refs .git/HEAD .git/config .git/index
        ln -s "$2" .git/packed-refs; ln -s "$2" .git/HEAD; ln -s "$2" .git/config; ln -s "$2" .git/index
        name="$(printf 'esc\\033]0;pwned\\007\\033[31mred')"
        mkdir "$name" && echo 'x' > "$name/f" && mkdir "$name/.git"  # named in a violation, so shown
        echo 'changed' > victim.txt
    """,
}


def _attack_repo(tmp_path: Path, name: str) -> Path:
    origin = make_repo(tmp_path / "origin")
    commit_files(origin, {"attack.sh": textwrap.dedent(ATTACKS[name]), "victim.txt": "original\n"}, "attack")
    return origin


def _marker_dir(tmp_path: Path) -> Path:
    marker = tmp_path / "host-only"
    marker.mkdir(mode=0o777)
    os.chmod(marker, 0o777)  # root on the host could write here anyway; make it easy for anyone
    return marker


def _root_only_file(tmp_path: Path) -> Path:
    secret = tmp_path / "root-only"
    secret.write_text("ROOT-ONLY-FIRST-LINE deadbeef\nsecond\n")
    os.chmod(secret, 0o600)
    return secret


def _victim_dir(tmp_path: Path) -> Path:
    """Another directory of the host with files in it: they must all survive the session."""
    victim = tmp_path / "victim-dir"
    victim.mkdir()
    for name in ("packs", "alternates", "pack-x.pack", "keep"):
        (victim / name).write_text("another directory's file\n")
    return victim


async def _run_attack(tmp_path: Path, db_url: str, name: str, **env: str):  # type: ignore[no-untyped-def]
    origin = _attack_repo(tmp_path, name)
    marker, secret, victim = _marker_dir(tmp_path), _root_only_file(tmp_path), _victim_dir(tmp_path)
    command = shlex.join(["sh", "attack.sh", str(marker), str(secret), str(victim)])
    services = await make_services(tmp_path, db_url, **env)
    out = io.StringIO()
    try:
        await run_from_terminal(services, args(origin, f"attack {name}", command=command), out)
        session = (await services.sessions.recent(1))[0]
        violations = await services.sessions.violations(session.id)
        events = await services.sessions.events(session.id)
    finally:
        await services.close()
    return origin, marker, session, violations, events, out.getvalue()


@pytest.mark.parametrize("name", ["commondir_filter", "nested_repo", "git_symlinks", "refs_symlink",
                                  "objects_info", "error_text"])
async def test_nothing_the_agent_wrote_in_git_runs_or_is_followed_on_the_host(
        tmp_path: Path, db_url: str, name: str) -> None:
    origin, marker, session, _violations, events, out = await _run_attack(tmp_path, db_url, name)
    assert sorted(os.listdir(marker)) == [], f"the host ran or wrote something for the agent: {out}"
    assert sorted(os.listdir(tmp_path / "victim-dir")) == ["alternates", "keep", "pack-x.pack", "packs"]
    text = " ".join([str(session.error), out, *(str(e.data) for e in events)])
    assert "ROOT-ONLY-FIRST-LINE" not in text
    assert session.state == "completed", session.error
    # the work itself is committed as content: the changed file, never the agent's .git
    tree = git("ls-tree", "-r", "--name-only", session.branch, cwd=origin).splitlines()
    assert not any(part == ".git" for path in tree for part in path.split("/"))
    if name != "nested_repo":
        assert show_file(origin, session.branch, "victim.txt") == "changed"


async def test_nested_git_directories_are_left_out_and_recorded(tmp_path: Path, db_url: str) -> None:
    origin, _marker, session, violations, _events, _out = await _run_attack(tmp_path, db_url, "nested_repo")
    tree = git("ls-tree", "-r", session.branch, cwd=origin)
    assert "160000" not in tree  # no gitlink: the nested repository's files are content
    assert show_file(origin, session.branch, "sub/f") == "data\ndirty"
    assert show_file(origin, session.branch, "top.txt") == "ok"
    assert any(v.kind == "filesystem" and v.resource.endswith("sub/.git") for v in violations)


IMPERSONATE = """
    git -c user.name='Linus Torvalds' -c user.email=torvalds@linux-foundation.org commit -qam 'Signed by Linus' 2>&1
    echo more > second.txt
    GIT_AUTHOR_NAME='Linus Torvalds' GIT_AUTHOR_EMAIL=torvalds@linux-foundation.org \\
    GIT_COMMITTER_NAME='Linus Torvalds' GIT_COMMITTER_EMAIL=torvalds@linux-foundation.org \\
        sh -c 'git add second.txt && git commit -qm "second by Linus"'
    echo third > third.txt
"""


async def test_the_agents_own_commits_are_pushed_under_the_attributed_author(tmp_path: Path, db_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    commit_files(origin, {"attack.sh": textwrap.dedent(IMPERSONATE), "victim.txt": "original\n"}, "attack")
    base = branches(origin)["main"]
    services = await make_services(tmp_path, db_url)
    command = "sh -c 'echo changed > victim.txt; sh attack.sh'"
    try:
        code = await run_from_terminal(services, args(origin, "impersonate", command=command), io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 0, session.error
    pushed = git("log", "--format=%an <%ae>|%cn <%ce>|%B%x00", f"{base}..{session.branch}", cwd=origin)
    commits = [c.strip() for c in pushed.split("\x00") if c.strip()]
    assert commits and not any("Torvalds" in c or "torvalds" in c for c in commits)
    for commit in commits:
        assert commit.startswith("Sesame Agent <agent@sesame.works>|")
        assert commit.rstrip().endswith("Co-authored-by: Sesame <agent@sesame.works>")
    for path, text in (("victim.txt", "changed"), ("second.txt", "more"), ("third.txt", "third")):
        assert show_file(origin, session.branch, path) == text


SYMLINKS = """
    ln -s /etc/shadow shadow-link
    ln -s ../../../../../../root escape-dir
    mkdir -p d && ln -s /etc d/etc-link
    printf 'x' > plain.txt && chmod +x plain.txt
"""


async def test_symlinks_are_committed_as_links_and_never_followed(tmp_path: Path, db_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    commit_files(origin, {"attack.sh": textwrap.dedent(SYMLINKS)}, "attack")
    services = await make_services(tmp_path, db_url)
    try:
        code = await run_from_terminal(services, args(origin, "links", command="sh attack.sh"), io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 0, session.error
    entries = {line.split("\t")[1]: line.split()[0]
               for line in git("ls-tree", "-r", session.branch, cwd=origin).splitlines()}
    assert entries["shadow-link"] == entries["escape-dir"] == entries["d/etc-link"] == "120000"
    assert entries["plain.txt"] == "100755"
    assert show_file(origin, session.branch, "shadow-link") == "/etc/shadow"
    assert not any(path.startswith(("escape-dir/", "d/etc-link/")) for path in entries)


async def test_gitignored_files_stay_out_and_deletions_are_committed(tmp_path: Path, db_url: str) -> None:
    origin = make_repo(tmp_path / "origin", {"README.md": "# w\n", "gone.txt": "bye\n", "tracked.pyc": "kept\n"})
    commit_files(origin, {".gitignore": "build/\n*.pyc\n"}, "ignore")  # tracked.pyc stays tracked
    script = "mkdir -p build && echo x > build/out && echo y > a.pyc && rm gone.txt && echo new > new.txt"
    services = await make_services(tmp_path, db_url)
    try:
        code = await run_from_terminal(services, args(origin, "ignore", command=f"sh -c '{script}'"),
                                       io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 0, session.error
    tree = set(git("ls-tree", "-r", "--name-only", session.branch, cwd=origin).splitlines())
    assert tree == {"README.md", ".gitignore", "tracked.pyc", "new.txt"}


async def test_a_file_over_the_size_limit_is_left_out_and_named(tmp_path: Path, db_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    script = "head -c 2097152 /dev/zero > big.bin && echo small > small.txt"
    services = await make_services(tmp_path, db_url, GIT_MAX_FILE_SIZE_MB="1")
    try:
        code = await run_from_terminal(services, args(origin, "big", command=f"sh -c '{script}'"), io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 1 and session.state == "error"
    assert "largest-file limit of 1 MiB (GIT_MAX_FILE_SIZE_MB): big.bin (2 MiB)" in session.error
    tree = set(git("ls-tree", "-r", "--name-only", session.branch, cwd=origin).splitlines())
    assert "small.txt" in tree and "big.bin" not in tree  # the work that fits is pushed


async def test_unreadable_and_special_files_are_not_read_with_the_hosts_rights(tmp_path: Path, db_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    secret = _root_only_file(tmp_path)
    script = (f"ln {secret} hard.txt 2>/dev/null; mkfifo pipe; echo private > mine.txt; chmod 000 mine.txt; "
              "echo fine > fine.txt")
    services = await make_services(tmp_path, db_url)
    try:
        code = await run_from_terminal(services, args(origin, "odd", command=f"sh -c '{script}'"), io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 0, session.error
    tree = set(git("ls-tree", "-r", "--name-only", session.branch, cwd=origin).splitlines())
    assert "fine.txt" in tree and not {"hard.txt", "pipe", "mine.txt"} & tree


SHIM = """#!/bin/sh
log=$(mktemp -p {logs} call.XXXXXXXX)
{{ printf 'at %s\\nuid %s\\n' "$(date +%s%N)" "$(id -u)"; printf 'arg %s\\n' "$@"; env | sed 's/^/env /'; }} > "$log"
exec {git} "$@"
"""
GIT_ENV = {"PATH", "HOME", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL", "GIT_TERMINAL_PROMPT", "GIT_ASKPASS",
           "LC_ALL", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
           "PWD", "OLDPWD", "SHLVL", "_"}  # the last four: what the shim's sh adds


def _git_calls(logs: Path) -> list[tuple[int, list[str], dict[str, str]]]:
    """(uid, argv, environment) of every git the host ran, in order."""
    calls = []
    for path in logs.iterdir():
        at, uid, argv, env = 0, -1, [], {}
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "at":
                at = int(value)
            elif key == "uid":
                uid = int(value)
            elif key == "arg":
                argv.append(value)
            elif key == "env":
                name, _, val = value.partition("=")
                env[name] = val
        calls.append((at, uid, argv, env))
    return [(uid, argv, env) for _at, uid, argv, env in sorted(calls, key=lambda c: c[0])]


def _subcommand(argv: list[str]) -> str:
    """The git subcommand of an argv (after -c pairs and --git-dir/--work-tree)."""
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("-c", "--git-dir", "--work-tree") else rest[1:]
    return rest[0] if rest else ""


async def test_host_git_after_the_agent_runs_as_the_session_uid_with_an_environment_from_nothing(
        tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from tests.conftest import session_base

    shim_dir = Path(session_base())  # 0755: the session's uid runs the shim too
    logs = shim_dir / "logs"
    logs.mkdir(mode=0o777)
    os.chmod(logs, 0o777)
    real_git = shutil.which("git")
    (shim_dir / "git").write_text(SHIM.format(logs=logs, git=real_git))
    os.chmod(shim_dir / "git", 0o755)
    origin = make_repo(tmp_path / "origin")
    monkeypatch.setenv("PATH", f"{shim_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SESAME_CANARY_SECRET", "canary-9f8e7d6c")  # in the worker's environment only
    services = await make_services(tmp_path, db_url)
    try:
        code = await run_from_terminal(services, args(origin, "edit", command="sh -c 'echo changed > README.md'"),
                                       io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 0, session.error
    calls = _git_calls(logs)
    for _uid, argv, env in calls:
        assert set(env) <= GIT_ENV, (argv, set(env) - GIT_ENV)
        assert not any("canary-9f8e7d6c" in v or "ab" * 32 in v for v in env.values())
    names = [_subcommand(argv) for _uid, argv, _env in calls]
    first = names.index("ls-files")  # the first git after the agent: it lists the work tree's files
    session_uid = calls[first][0]
    assert session_uid >= 1000
    after = calls[first:]
    assert {"ls-files", "fast-import", "commit-tree", "update-ref", "cat-file", "push"} <= set(names[first:])
    for uid, argv, _env in after:
        expected = 0 if _subcommand(argv) == "push" else session_uid
        assert uid == expected, (uid, argv)
    project = f"{services.settings.SESSION_DIR_BASE}/{session.id}/project"
    assert not any(project in " ".join(argv) for uid, argv, _env in after if uid == 0)
    assert show_file(origin, session.branch, "README.md") == "changed"


async def test_a_file_name_in_an_error_reaches_the_terminal_without_its_escapes(tmp_path: Path, db_url: str) -> None:
    _origin, _marker, session, _violations, _events, out = await _run_attack(
        tmp_path, db_url, "escape_name", GIT_MAX_FILE_SIZE_MB="1")
    assert session.state == "error" and "pwned" in str(session.error)  # the name is in the error ...
    assert "bigred (2 MiB)" in out and not {"\x1b", "\x07", "\x9b"} & set(out)  # ... shown, driving nothing
