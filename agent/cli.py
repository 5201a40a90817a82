"""The ``gantryd`` command line. User errors print one clear line and an exit status, never a
traceback: 78 (EX_CONFIG) for configuration problems, 1 when gantryd cannot start."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import trio

from agent.config import DEFAULT_CONFIG_PATH, EX_CONFIG, ConfigError, describe, load_config


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gantryd: invalid configuration: {exc}", file=sys.stderr)
        return EX_CONFIG
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: OK")
    print(describe(config))
    return 0


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
