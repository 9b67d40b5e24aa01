"""The `sesame` command: the composition root wiring web, worker, queues, channels and doctor.

The one place in `bot` allowed to import `webhooks` and `runner` (the contract in pyproject.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bot import __version__
from bot.catalog import CATALOG, canonical_agent_name
from bot.db import NotMigrated
from bot.logs import use_json_lines
from bot.secret import reveal
from bot.settings import Settings, SettingsError, describe_keys, load_settings
from bot.untrusted import ControlFreeFormatter, install_clean_records

log = logging.getLogger("sesame")
EXIT_CONFIG = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def fail(message: str) -> int:
    """One clear line on stderr, and the configuration exit code."""
    print(f"sesame: error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sesame", description="Run coding agents in sandboxed workspaces from GitHub, Slack or the terminal.",
        epilog="Settings come from the environment, then config.json/.yaml/.jsonc/.toml, then defaults: "
               "`sesame settings` lists them.")
    parser.add_argument("--version", action="version", version=f"sesame {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the HTTP server (webhooks, Slack, API)")
    serve.add_argument("--host", help="listen address (default HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default PORT or 13531)")
    serve.add_argument("--workers", type=int, default=1,
                       help="web processes sharing the port (SO_REUSEPORT); default 1")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="listen on a non-loopback address without AUTH_PASSWORD (only behind something "
                            "that authenticates)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--no-sweeper", action="store_true", help=argparse.SUPPRESS)
    worker = sub.add_parser("worker", help="run an arq worker (needs REDIS_URL)")
    worker.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("doctor", help="check settings, database, Redis, bubblewrap and agents")
    sub.add_parser("settings", help="list every setting: env name, config path, default")
    run = sub.add_parser("run", help="run one session from the terminal, leaving a branch")
    run.add_argument("--repo", required=True, help="local path or clone URL of the repository")
    run.add_argument("--agent", help="agent to run (default SESAME_DEFAULT_AGENT)")
    run.add_argument("--model", help="model for the agent")
    run.add_argument("--base", help="base branch (default: the repository's default branch)")
    run.add_argument("--branch", help="branch to work on (default: a new one named after the prompt)")
    run.add_argument("--command", dest="agent_command", help="argv of the `command` agent (implies --agent command)")
    run.add_argument("--no-sandbox", action="store_true", help="run without sandbox security")
    run.add_argument("--keep", action="store_true", help="keep the workspace (keep_alive)")
    run.add_argument("prompt", nargs="+", help="what the agent should do")
    agents = sub.add_parser("agents", help="install, list or remove agent CLIs")
    agents_sub = agents.add_subparsers(dest="agents_command", metavar="ACTION", required=True)
    install = agents_sub.add_parser("install", help="install an agent's CLI from its vendor's npm package")
    install.add_argument("name", help=", ".join(CATALOG))
    agents_sub.add_parser("list", help="each agent: installed version and path, credential source, what is verified")
    remove = agents_sub.add_parser("remove", help="delete an agent's CLI from the data dir")
    remove.add_argument("name", help=", ".join(CATALOG))
    keys = sub.add_parser("keys", help="manage the key sealing stored credentials")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    keys_sub.add_parser("rotate", help="re-seal every stored credential with ENCRYPTION_KEY (after moving the "
                                       "old key to ENCRYPTION_KEY_PREVIOUS)")
    return parser


def configure_logging(verbose: bool) -> None:
    """Log to stderr; no record carries a terminal control, whatever text (agent output) it quotes."""
    install_clean_records()
    handler = logging.StreamHandler()
    handler.setFormatter(ControlFreeFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)


def run_async(coro: Awaitable[int]) -> int:
    """Run on uvloop when it is installed (about twice the request rate), else asyncio's loop; its
    subprocesses take turns with the sandbox's launcher threads (runner/sandbox/spawn_turns.py)."""
    from runner.sandbox.spawn_turns import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "settings":
        print("\n".join(describe_keys()))
        return 0
    try:
        settings = load_settings()
    except SettingsError as exc:
        return fail(str(exc))
    if settings.LOG_FORMAT == "json":
        use_json_lines()
    handler = COMMANDS[args.command]
    try:
        return run_async(handler(settings, args))
    except SettingsError as exc:
        return fail(str(exc))
    except NotMigrated as exc:
        return fail(f"DATABASE_URL: {exc}. Run `sesame migrate` first.")
    except KeyboardInterrupt:
        return 130


def share_metrics(settings: Settings) -> None:
    """Count into METRICS_DIR, which every web and worker process of this machine shares (bot/metrics.py)."""
    from bot.metrics import share_across_processes

    try:
        share_across_processes(settings.metrics_dir)
    except OSError as exc:
        log.warning("METRICS_DIR: cannot use %s (%s); /metrics shows this process's counts only",
                    settings.metrics_dir, exc)


async def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from bot.db import make_engine, migrate

    engine = make_engine(settings.database_url)
    try:
        await migrate(engine)
    except OSError as exc:
        return fail(f"DATABASE_URL: cannot connect ({exc}). Start the database or fix the URL.")
    finally:
        await engine.dispose()
    print(f"database migrated ({engine.dialect.name})")
    return 0


def make_queue(services: Any) -> Any:
    """arq when REDIS_URL is set, else the in-process queue running the pipeline."""
    from bot.queue import ArqQueue, InlineQueue
    from runner.worker import run_session

    if services.settings.REDIS_URL:
        return ArqQueue(services.settings.REDIS_URL.reveal())
    queue = InlineQueue(lambda sid: run_session(services, sid, queue.shutdown, queue=queue),
                        services.settings.INLINE_CONCURRENCY)
    return queue


def sandbox_status(settings: Settings) -> dict[str, Any]:
    """Whether sessions get bubblewrap, for /api/health and doctor."""
    from runner.sandbox import check_sandbox_support

    ok, detail = check_sandbox_support()
    enabled = settings.SANDBOX_SECURITY_ENABLED
    return {"ok": ok or not enabled, "enabled": enabled, "available": ok, "detail": detail,
            "provider": settings.SANDBOX_PROVIDER}


def build_web_app(services: Any, queue: Any) -> Any:
    """The aiohttp app with every web feature (each one checks whether it is configured)."""
    from bot.cli.wiring import WEB_FEATURES
    from runner.workspace import HostWorkspaces
    from webhooks.app import WORKSPACES, create_app

    app = create_app(services, queue, sandbox_status(services.settings), list(WEB_FEATURES))
    app[WORKSPACES] = HostWorkspaces(services)
    return app


def freeze_heap() -> None:
    """Put what start-up built out of the collector's reach: a full collection then walks only newer
    objects (a full collection of the ~120,000 objects imports make took about 60 ms)."""
    gc.collect()
    gc.freeze()


# A web process collects its young objects after this many allocations instead of Python's 700 (issue 16).
# A delivery's parsed payload is a few hundred containers, so at 700 the collector ran several times per
# delivery and a full collection (60-130 ms of CPU each, in the middle of the requests) every ~70,000:
# at 500 deliveries/s, 1.2 s of collection in an 8 s run (10-15 % of the process's CPU, about 0.25 ms a
# delivery); at 10,000, 0.2-0.4 s and no full collection during the run. Cycles are freed a little later.
WEB_GC_THRESHOLD = 10_000


def lower_priority(nice: int) -> int:
    """Lower this process's CPU priority by `nice` (WORKER_NICE), every thread of it, so that what it starts
    (git, agents) inherits it: a worker's sessions never delay the web processes' answers on a shared
    machine. Returns the niceness now (unchanged when not permitted)."""
    target = min(19, max(os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS, 0) + int(nice)))
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]:
        try:  # Linux keeps a niceness per thread; threads started later inherit the starting thread's
            os.setpriority(os.PRIO_PROCESS, int(tid), target)
        except OSError as exc:
            logging.getLogger(__name__).warning("could not lower the worker's CPU priority: %s", exc)
    return os.getpriority(os.PRIO_PROCESS, 0)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; an empty host or a wildcard listens everywhere."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: its addresses may be anywhere


def open_to_anyone(settings: Settings, host: str, port: int, args: argparse.Namespace) -> str | None:
    """Why serving on this address is refused (no password on a public address), or None."""
    if is_loopback(host) or settings.AUTH_PASSWORD or args.insecure_no_auth:
        return None
    return (f"AUTH_PASSWORD: refusing to serve on {host}:{port} without it: {host} is not a loopback address, "
            f"so anyone who can reach port {port} could start sessions that clone repositories and run agents "
            "with this server's keys. Set AUTH_PASSWORD, listen on 127.0.0.1, or pass --insecure-no-auth "
            "if something in front of Sesame already authenticates every request.")


START_TIMEOUT = 60.0  # seconds each web process of `serve --workers N` has to say it listens


async def serve_many(settings: Settings, args: argparse.Namespace) -> int:
    """Run `workers` web processes on one port. What one process must do alone happens here first: the
    embedded database is migrated and the key file made, so the children never race on them. A child
    that exits before it listens stops the others and the whole command, saying which and why."""
    from bot.db import make_engine, migrate
    from bot.settings_write import ensure_encryption_key

    ensure_encryption_key(settings, log.warning)
    if settings.embedded:
        engine = make_engine(settings.database_url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()
    argv = [sys.executable, "-m", "bot.cli", "serve", "--workers", "1", "--reuse-port"]
    argv += (["--host", args.host] if args.host else []) + (["--port", str(args.port)] if args.port else [])
    argv += ["--insecure-no-auth"] if args.insecure_no_auth else []
    # One sweeper is enough: the other processes only answer requests.
    children = [await asyncio.create_subprocess_exec(*argv, *([] if i == 0 else ["--no-sweeper"]),
                                                     stdout=asyncio.subprocess.PIPE)
                for i in range(args.workers)]
    ready = [asyncio.Event() for _ in children]
    relays = [asyncio.create_task(_relay(child, event)) for child, event in zip(children, ready, strict=True)]

    def forward(sig: int) -> None:
        for child in children:
            if child.returncode is None:
                child.send_signal(sig)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, forward, sig)
    failed = await _first_start_failure(children, ready)
    if failed is not None:
        forward(signal.SIGTERM)
    codes = [await child.wait() for child in children]
    await asyncio.gather(*relays)
    if failed is not None:
        return fail(f"web process {failed + 1} of {len(children)} exited before it listened "
                    f"(exit code {codes[failed]}; its error is above), so every process was stopped")
    return exit_code(codes)


async def _relay(child: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
    """Pass a child's output through, noting when it says it listens."""
    assert child.stdout is not None
    async for line in child.stdout:
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()
        if b" serving on " in line:
            ready.set()


async def _first_start_failure(children: list[asyncio.subprocess.Process],
                               ready: list[asyncio.Event]) -> int | None:
    """The index of a child that exited (or never listened within START_TIMEOUT) before every child
    listened; None once all listen."""
    deadline = loop_time() + START_TIMEOUT
    while not all(event.is_set() for event in ready):
        for i, child in enumerate(children):
            if child.returncode is not None and not ready[i].is_set():
                return i
        if loop_time() > deadline:
            return next(i for i, event in enumerate(ready) if not event.is_set())
        await asyncio.sleep(0.05)
    return None


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def exit_code(codes: list[int]) -> int:
    """The first failure among children's return codes; death by signal N counts as 128 + N."""
    return next((code if code > 0 else 128 - code for code in codes if code), 0)


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    host = args.host or settings.HOST
    port = args.port or settings.PORT
    refusal = open_to_anyone(settings, host, port, args)
    if refusal:
        return fail(refusal)
    if args.workers > 1:
        return await serve_many(settings, args)
    from bot.cli.wiring import open_services
    from bot.queue import InlineQueue
    from bot.sweeper import run_forever_sweeper
    from runner.providers.cleanup import remove_abandoned_session
    from runner.worker import HAND_BACK_TIMEOUT

    share_metrics(settings)
    try:
        services = await open_services(settings)
    except OSError as exc:
        return fail(f"DATABASE_URL: cannot connect ({exc}). Start the database or fix the URL.")
    queue = make_queue(services)
    from webhooks.app import AccessLog
    runner = web.AppRunner(build_web_app(services, queue), handle_signals=False, access_log_class=AccessLog)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=args.reuse_port or None).start()
    except OSError as exc:
        await runner.cleanup()
        await services.close()
        return fail(f"PORT: cannot listen on {host}:{port} ({exc.strerror}). Pick another with --port.")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:  # a second signal: in-process sessions are handed back at once
        if stopping.is_set() and isinstance(queue, InlineQueue):
            queue.hurry()
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):  # before the announcement: whoever read it may stop us
        loop.add_signal_handler(sig, on_signal)
    mode = "SQLite" if services.settings.embedded else "PostgreSQL"
    print(f"sesame {__version__} serving on http://{host}:{port} ({mode}, queue: {queue.kind})", flush=True)
    sweeper = None if args.no_sweeper else asyncio.create_task(
        run_forever_sweeper(services, queue, on_end=remove_abandoned_session))
    freeze_heap()
    gc.set_threshold(WEB_GC_THRESHOLD, *gc.get_threshold()[1:])
    await stopping.wait()
    print("sesame: shutting down", flush=True)
    if sweeper is not None:
        sweeper.cancel()
    await runner.cleanup()
    if isinstance(queue, InlineQueue):  # like `sesame worker`: finish within the grace, hand back the rest
        await queue.stop(max(float(settings.WORKER_SHUTDOWN_GRACE), 0.0), HAND_BACK_TIMEOUT)
    await queue.close()
    await services.close()
    return 0


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    if settings.WORKER_NICE:  # first, before its imports (seconds of CPU): what it starts inherits it
        lower_priority(int(settings.WORKER_NICE))
    from bot.cli.wiring import open_services
    from bot.queue import ArqQueue
    from runner.worker import build_worker

    redis_url = reveal(settings.REDIS_URL)
    if not redis_url:
        return fail("REDIS_URL: `sesame worker` needs Redis. Set REDIS_URL=redis://127.0.0.1:6379, "
                    "or run `sesame serve` alone to run sessions in-process.")
    share_metrics(settings)
    services = await open_services(settings)
    queue = ArqQueue(redis_url)
    worker = build_worker(services, queue, redis_url, burst=args.burst)
    freeze_heap()
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass
    finally:
        await worker.close()
        await queue.close()
        await services.close()
    return 0


async def cmd_doctor(settings: Settings, _args: argparse.Namespace) -> int:
    from bot.cli.doctor import run_doctor

    return await run_doctor(settings)


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from bot.cli.wiring import open_services
    from runner.cli_run import run_from_terminal

    for name in ("runner.pipeline", "runner.output", "runner.budget", "runner.push"):  # the outcome is printed below
        logging.getLogger(name).setLevel(logging.ERROR)
    services = await open_services(settings)
    try:
        return await run_from_terminal(services, args)
    finally:
        await services.close()


def print_indented(line: str) -> None:
    print("  " + line, flush=True)


async def cmd_agents(settings: Settings, args: argparse.Namespace) -> int:
    if args.agents_command == "list":
        return await list_agents(settings)
    name = canonical_agent_name(args.name)
    if name is None:
        return fail(f"unknown agent {args.name!r}; choose one of {', '.join(CATALOG)}")
    if not CATALOG[name].npm_package:
        print(f"{name} is built in: nothing to {args.agents_command}")
        return 0
    if args.agents_command == "remove":
        return remove_agent_cli(settings, name)
    return await install_agent_cli(settings, name)


async def install_agent_cli(settings: Settings, name: str) -> int:
    from runner.agents.install import AgentInstallError, install_agent, package_version

    print(f"installing {CATALOG[name].display_name} ({CATALOG[name].npm_package}) into "
          f"{settings.data_dir / 'agents' / name} ...", flush=True)
    try:
        bin_dir = await install_agent(name, settings.data_dir, progress=print_indented)
    except AgentInstallError as exc:
        return fail(f"{exc}. Check that npm can reach its registry, "
                    f"then run `sesame agents install {name}` again.")
    print(f"installed: {bin_dir} (version {package_version(name, settings.data_dir) or 'unknown'})")
    return 0


def remove_agent_cli(settings: Settings, name: str) -> int:
    from runner.agents.install import installed_agent, remove_agent

    print(f"removing {CATALOG[name].display_name} from {settings.data_dir / 'agents' / name} ...", flush=True)
    removed = remove_agent(name, settings.data_dir)
    print(f"removed: {removed}" if removed else f"{name} was not installed in the data dir: nothing removed")
    left = installed_agent(name, settings.data_dir)
    if left is not None:
        print(f"note: another {name} is on PATH at {left.binary}; Sesame did not install it and leaves it "
              "alone (sessions will use it)")
    return 0


async def list_agents(settings: Settings) -> int:
    """One line per agent (name, display name, install), then its credential source and what is verified."""
    from bot.cli.agentinfo import VERIFIED, credential_source, stored_credential_kinds
    from runner.agents.install import installed_agent

    stored = await stored_credential_kinds(settings)
    for spec in CATALOG.values():
        if spec.npm_package:
            found = installed_agent(spec.name, settings.data_dir)
            shown = (f"{found.version or 'version unknown'} at {found.binary} ({found.source})" if found
                     else f"not installed: run `sesame agents install {spec.name}`")
        else:
            shown = "built in: runs AGENT_COMMAND or the session's --command"
        print(f"{spec.name:10} {spec.display_name:16} {shown}")
        print(f"{'':11}credential: {credential_source(spec, stored, settings)}")
        print(f"{'':11}verified: {VERIFIED.get(spec.name, 'nothing yet')}")
    return 0


async def cmd_keys(settings: Settings, _args: argparse.Namespace) -> int:
    """`sesame keys rotate`: every stored credential re-sealed with the current key, with counts."""
    from bot.cli.wiring import open_services

    services = await open_services(settings)
    try:
        done = await services.credentials.reseal_all()
    finally:
        await services.close()
    print(f"re-sealed {done.resealed} stored credential(s) with the current ENCRYPTION_KEY; "
          f"{done.current} already were")
    if done.unreadable:
        return fail(f"{len(done.unreadable)} stored credential(s) open with no key held "
                    f"({', '.join(done.unreadable)}). Add the key they were sealed with to "
                    "ENCRYPTION_KEY_PREVIOUS and run `sesame keys rotate` again, or store them anew")
    if settings.ENCRYPTION_KEY_PREVIOUS:
        print("every stored credential is sealed with the current key: ENCRYPTION_KEY_PREVIOUS may be removed")
    return 0


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[int]]] = {
    "serve": cmd_serve, "worker": cmd_worker, "migrate": cmd_migrate, "doctor": cmd_doctor,
    "run": cmd_run, "agents": cmd_agents, "keys": cmd_keys,
}
