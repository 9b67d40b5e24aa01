"""The `sesame` command: the composition root wiring web, worker, queues, channels and doctor.

The one place in `bot` allowed to import `webhooks` and `runner` (the contract in pyproject.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bot import __version__
from bot.catalog import CATALOG
from bot.db import NotMigrated
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
    agents = sub.add_parser("agents", help="install or list agent CLIs")
    agents_sub = agents.add_subparsers(dest="agents_command", metavar="ACTION", required=True)
    install = agents_sub.add_parser("install", help="install an agent's CLI from its vendor's npm package")
    install.add_argument("name")
    agents_sub.add_parser("list", help="list agents and whether they are installed")
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
    """Run on uvloop when it is installed (about twice the request rate), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


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
    handler = COMMANDS[args.command]
    try:
        return run_async(handler(settings, args))
    except SettingsError as exc:
        return fail(str(exc))
    except NotMigrated as exc:
        return fail(f"DATABASE_URL: {exc}. Run `sesame migrate` first.")
    except KeyboardInterrupt:
        return 130


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
        return ArqQueue(services.settings.REDIS_URL)
    return InlineQueue(lambda sid: run_session(services, sid), services.settings.INLINE_CONCURRENCY)


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
    from webhooks.app import create_app

    return create_app(services, queue, sandbox_status(services.settings), list(WEB_FEATURES))


def freeze_heap() -> None:
    """Put what start-up built out of the collector's reach: a full collection then walks only newer
    objects (a full collection of the ~120,000 objects imports make took about 60 ms)."""
    gc.collect()
    gc.freeze()


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


async def serve_many(args: argparse.Namespace) -> int:
    """Run `workers` web processes on one port; SIGTERM reaches each, and we wait for all."""
    argv = [sys.executable, "-m", "bot.cli", "serve", "--workers", "1", "--reuse-port"]
    argv += ["--insecure-no-auth"] if args.insecure_no_auth else []
    argv += (["--host", args.host] if args.host else []) + (["--port", str(args.port)] if args.port else [])
    # One sweeper is enough: the other processes only answer requests.
    children = [await asyncio.create_subprocess_exec(*argv, *([] if i == 0 else ["--no-sweeper"]))
                for i in range(args.workers)]

    def forward(sig: int) -> None:
        for child in children:
            if child.returncode is None:
                child.send_signal(sig)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, forward, sig)
    codes = [await child.wait() for child in children]
    return exit_code(codes)


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
        return await serve_many(args)
    from bot.cli.wiring import open_services
    from bot.sweeper import run_forever_sweeper
    from runner.workspace import remove_abandoned_workspace

    try:
        services = await open_services(settings)
    except OSError as exc:
        return fail(f"DATABASE_URL: cannot connect ({exc}). Start the database or fix the URL.")
    queue = make_queue(services)
    runner = web.AppRunner(build_web_app(services, queue), handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=args.reuse_port or None).start()
    except OSError as exc:
        await runner.cleanup()
        await services.close()
        return fail(f"PORT: cannot listen on {host}:{port} ({exc.strerror}). Pick another with --port.")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before the announcement: whoever read it may stop us
        loop.add_signal_handler(sig, stopping.set)
    mode = "SQLite" if services.settings.embedded else "PostgreSQL"
    print(f"sesame {__version__} serving on http://{host}:{port} ({mode}, queue: {queue.kind})", flush=True)
    sweeper = None if args.no_sweeper else asyncio.create_task(
        run_forever_sweeper(services, queue, on_end=remove_abandoned_workspace))
    freeze_heap()
    await stopping.wait()
    print("sesame: shutting down", flush=True)
    if sweeper is not None:
        sweeper.cancel()
    await runner.cleanup()
    await queue.close()
    await services.close()
    return 0


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from bot.cli.wiring import open_services
    from bot.queue import ArqQueue
    from runner.worker import build_worker

    redis_url = settings.REDIS_URL
    if not redis_url:
        return fail("REDIS_URL: `sesame worker` needs Redis. Set REDIS_URL=redis://127.0.0.1:6379, "
                    "or run `sesame serve` alone to run sessions in-process.")
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

    logging.getLogger("runner.pipeline").setLevel(logging.ERROR)  # the outcome is printed below
    services = await open_services(settings)
    try:
        return await run_from_terminal(services, args)
    finally:
        await services.close()


def print_indented(line: str) -> None:
    print("  " + line, flush=True)


async def cmd_agents(settings: Settings, args: argparse.Namespace) -> int:
    from runner.agents.install import AgentInstallError, find_agent_binary, install_agent

    if args.agents_command == "list":
        for spec in CATALOG.values():
            found = find_agent_binary(spec.name, settings.data_dir) if spec.npm_package else "built in"
            shown = found or f"not installed: sesame agents install {spec.name}"
            print(f"{spec.name:10} {spec.display_name:16} {shown}")
        return 0
    if args.name not in CATALOG:
        return fail(f"unknown agent {args.name!r}; choose one of {', '.join(CATALOG)}")
    if not CATALOG[args.name].npm_package:
        print(f"{args.name} needs no installation")
        return 0
    print(f"installing {args.name} into {settings.data_dir / 'agents'} ...", flush=True)
    try:
        bin_dir = await install_agent(args.name, settings.data_dir, progress=print_indented)
    except AgentInstallError as exc:
        return fail(f"{exc}. Check that npm can reach its registry, "
                    f"then run `sesame agents install {args.name}` again.")
    print(f"installed: {bin_dir}")
    return 0


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[int]]] = {
    "serve": cmd_serve, "worker": cmd_worker, "migrate": cmd_migrate, "doctor": cmd_doctor,
    "run": cmd_run, "agents": cmd_agents,
}
