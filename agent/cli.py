"""The ``gantryd`` command line. User errors print one clear line and an exit status, never a
traceback: 78 (EX_CONFIG) for configuration problems, 1 when gantryd cannot start."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import trio

from agent.config import (
    DEFAULT_CONFIG_PATH,
    EX_CONFIG,
    Config,
    ConfigError,
    describe,
    load_config,
)


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gantryd: invalid configuration: {exc}", file=sys.stderr)
        return EX_CONFIG
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    _check_engine_nofile(config)
    _check_engine_privileged(config)
    from agent.orchestrator.job_parser import group_label_warnings

    for warning in group_label_warnings(config.pools):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: OK")
    print(describe(config))
    _check_runner_groups(config)
    return 0


GROUP_CHECK_SECONDS = 30.0  # how long check-config waits for GitHub's answers on runner groups


def _check_runner_groups(config: Config) -> None:
    """Ask GitHub whether each organization pool's runner group exists and which repositories
    it admits; say plainly when that could not be checked (no credentials, GitHub unreachable).
    Informational: the exit status stays that of the file's validation."""
    from agent.config import Scope
    from agent.github.auth import CredentialsError
    from agent.github.client import GitHubClient, GitHubError
    from agent.github.credentials import load_credentials
    from agent.github.runners import GroupFinding, group_report

    pools = [(p.name, p.runner_group) for p in config.pools if p.scope is Scope.ORGANIZATION]
    if not pools:
        return
    github = config.github
    try:
        auth = load_credentials(github).auth
    except CredentialsError as exc:
        print(f"runner groups not checked: cannot read the GitHub credentials: {exc}")
        return

    async def ask() -> list[GroupFinding] | str:
        with trio.move_on_after(GROUP_CHECK_SECONDS):
            try:
                async with GitHubClient(
                    github.api_url, auth, timeout=min(github.request_timeout, 10.0)
                ) as client:
                    return await group_report(client, pools, github.organizations)
            except GitHubError as exc:  # no HTTP answer: nothing was checked
                return f"GitHub at {github.api_url} is unreachable: {exc}"
        return f"GitHub at {github.api_url} did not answer within {GROUP_CHECK_SECONDS:g}s"

    found = trio.run(ask)
    if isinstance(found, str):
        print(f"runner groups not checked: {found}")
        return
    print(f"runner groups (asked {github.api_url}):")
    for finding in found:
        print(f'  pool "{finding.pool}": {finding.text}')


def _check_engine_nofile(config: Config) -> None:
    """Warn about pools whose ``nofile`` the local Docker Engine cannot grant; say so when
    the Engine's limit cannot be read (then nothing is compared)."""
    from agent.container.engine_limits import engine_nofile_limit, nofile_warnings

    docker_host = os.environ.get("DOCKER_HOST", "")
    if docker_host and not docker_host.startswith("unix://"):
        print(f"note: nofile not compared: the Engine at {docker_host} is remote", file=sys.stderr)
        return
    limit = engine_nofile_limit()
    if isinstance(limit, str):
        print(f"note: nofile not compared with the Docker Engine's limit: {limit}", file=sys.stderr)
        return
    for warning in nofile_warnings({p.name: p.nofile for p in config.pools}, limit):
        print(f"warning: {warning}", file=sys.stderr)


def _check_engine_privileged(config: Config) -> None:
    """Say plainly, per pool, when its privileged Docker sidecar cannot run on the local
    Engine (the other pools are unaffected); a note when the Engine's set cannot be read."""
    from agent.config import DockerMode
    from agent.container.engine_limits import engine_missing_capabilities, privileged_warnings

    pools = [p.name for p in config.pools if p.docker is DockerMode.DIND and p.docker_privileged]
    if not pools:
        return
    missing = engine_missing_capabilities()
    if isinstance(missing, str):
        print(f"note: whether the Engine can run privileged sidecars: {missing}", file=sys.stderr)
        return
    for warning in privileged_warnings(pools, missing):
        print(f"warning: {warning}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    from agent.daemon import Daemon, serve_until_signalled
    from agent.logs import setup_logging
    from agent.reload import LiveConfig
    from agent.startup import StartupError
    from agent.systemd import Notifier

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gantryd: invalid configuration: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(config.server.log_level, config.server.log_format)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    _check_engine_privileged(config)
    # DOCKER_HOST as the docker CLI reads it (e.g. a unit's Environment=); unset: the socket.
    docker_url = os.environ.get("DOCKER_HOST") or None
    daemon = Daemon(live=LiveConfig(config), notifier=Notifier(), docker_url=docker_url)
    try:
        trio.run(serve_until_signalled, daemon)
    except (StartupError, BaseExceptionGroup) as exc:
        startup = _find(exc, StartupError)
        if startup is None:
            raise
        print(f"gantryd: cannot start: {startup}", file=sys.stderr)
        return startup.exit_status
    return 0


E = TypeVar("E", bound=BaseException)


def _find(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` inside a (possibly nested) exception group."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def _queue_file(args: argparse.Namespace) -> Path | None:
    """``--file``, or the SQLite queue the configuration names (None: printed why not)."""
    if args.file is not None:
        return Path(args.file)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gantryd: invalid configuration: {exc}", file=sys.stderr)
        return None
    if config.queue.backend != "sqlite":
        print(
            f"gantryd: the queue is {config.queue.backend}, not a SQLite file; "
            "check Redis itself (or give --file)",
            file=sys.stderr,
        )
        return None
    return config.queue_path


def _queue_check(args: argparse.Namespace) -> int:
    from agent.storage.repair import check_file

    path = _queue_file(args)
    if path is None:
        return EX_CONFIG
    problems = check_file(path)
    if not problems:
        print(f"{path}: OK")
        return 0
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    print(f"`gantryd queue recover --file {path}` (gantryd stopped) keeps every readable row")
    return 1


def _queue_recover(args: argparse.Namespace) -> int:
    from agent.storage.repair import check_file, recover_file

    path = _queue_file(args)
    if path is None:
        return EX_CONFIG
    if not path.exists():
        print(f"gantryd: {path} does not exist", file=sys.stderr)
        return 1
    try:
        done = recover_file(path)
    except (OSError, sqlite3.Error) as exc:
        print(f"gantryd: cannot recover {path}: {exc}", file=sys.stderr)
        return 1
    if "counters" in done.rows:  # the queue's own file (not runners.db or another store)
        _restore_counters(path)
    if done.header_rebuilt:
        print(f"{path}: the header was unreadable; rebuilt it to read the pages after it")
    jobs = done.rows.get("jobs")
    kept = ", ".join(f"{n} {table}" for table, n in done.rows.items()) or "nothing readable"
    print(f"{path}: new file written; kept {kept}")
    if jobs is not None:
        print(f"kept {jobs} job(s)")
    print(f"the damaged file is kept as {done.kept_aside}")
    problems = check_file(path)
    for problem in problems:
        print(f"{path}: still: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _restore_counters(path: Path) -> None:
    from agent.queue.sqlite_schema import restore_counters

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        restore_counters(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(jobs=args.jobs, source=args.source)


def _emulator(args: argparse.Namespace) -> int:
    from agent.emulator.cli import main as emulator_main

    return emulator_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gantryd",
        description="Run GitHub Actions jobs in fresh, locked-down Docker containers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            type=Path,
            default=DEFAULT_CONFIG_PATH,
            help=f"configuration file (default {DEFAULT_CONFIG_PATH})",
        )

    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    with_config(serve)
    serve.set_defaults(func=_serve)
    check = sub.add_parser("check-config", help="validate a configuration file and summarise it")
    with_config(check)
    check.set_defaults(func=_check_config)
    queue = sub.add_parser("queue", help="check or recover the SQLite queue database")
    queue_sub = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    for name, about, func in (
        (
            "check",
            "run SQLite's integrity check on the queue file; exit 1 if damaged",
            _queue_check,
        ),
        (
            "recover",
            "write a new queue file with every readable job, keeping the damaged one aside "
            "(stop gantryd first)",
            _queue_recover,
        ),
    ):
        action = queue_sub.add_parser(name, help=about)
        with_config(action)
        action.add_argument("--file", type=Path, help="the database file (default: [queue] path)")
        action.set_defaults(func=func)
    demo = sub.add_parser("demo", help="run gantryd against the built-in GitHub stand-in")
    demo.add_argument("--jobs", type=int, default=5, help="how many jobs to run (default 5)")
    demo.add_argument(
        "--source",
        choices=("webhook", "scale-set"),
        default="webhook",
        help="how gantryd learns of jobs: signed webhooks (default) or a scale-set listener",
    )
    demo.set_defaults(func=_demo)
    from agent.ops.commands import add_commands

    add_commands(sub, with_config)
    emulator = sub.add_parser(
        "emulator",
        help="run the GitHub stand-in (see `gantryd emulator -- --help`)",
        add_help=False,
    )
    emulator.add_argument("rest", nargs=argparse.REMAINDER)
    emulator.set_defaults(func=_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
