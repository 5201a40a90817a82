"""The control commands (``gantryd status|jobs|drain|resume|gc|secrets``): each sends a request
of ``agent.ops.protocol`` through ``AdminClient`` and prints its answer with ``agent.ops.tables``.
User errors print one line (``ControlError``) and exit 1."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from agent.config import ConfigError, QueueConfig, load_config, runtime_dir_of
from agent.fleet.handle import open_fleet_redis
from agent.ops import protocol
from agent.ops.admin_client import AdminClient, ControlError, NotRunning
from agent.ops.protocol import JOBS_SHOWN, A, AdminError, Request, SecretsAnswer, socket_path
from agent.ops.secrets_api import answer_secrets
from agent.ops.tables import (
    dumps,
    format_audit,
    format_fleet,
    format_job,
    format_jobs,
    format_secrets,
    format_status,
)
from agent.queue.base import JobState
from agent.secrets import SecretsError, open_secret_store
from agent.storage.errors import StorageUnavailable

DRAIN_POLL = 1.0


# -- secrets without a running daemon ----------------------------------------------------------


def local_secrets(state_dir: Path, request: Request[A], queue: QueueConfig | None = None) -> A:
    """Answer a /secrets request on the store directly (gantryd is stopped): the local one, or
    with the Redis backend (``queue``) the fleet's. As root, new files are given to the owner
    of the state directory, so the daemon's user can still open them."""

    async def run() -> SecretsAnswer:
        async with contextlib.AsyncExitStack() as stack:
            fleet = None
            if queue is not None and queue.backend == "redis":
                fleet = await stack.enter_async_context(open_fleet_redis(queue))
            store = await stack.enter_async_context(open_secret_store(state_dir, fleet=fleet))
            return await answer_secrets(
                store,
                request.method,
                list(request.parts[1:]),
                dict(request.query),
                request.body or b"",
                actor=_actor(),
            )

    try:
        answer = trio.run(run)
    except (AdminError, SecretsError) as exc:
        raise ControlError(str(exc)) from exc
    except OSError as exc:
        raise ControlError(f"cannot open the secrets store in {state_dir}: {exc}") from exc
    except StorageUnavailable as exc:
        raise ControlError(f"cannot reach the fleet's secrets store: {exc}") from exc
    if os.geteuid() == 0:
        owner = state_dir.stat()
        for path in state_dir.glob("secrets.*"):
            os.chown(path, owner.st_uid, owner.st_gid)
    if not isinstance(answer, request.answer):
        raise AssertionError(f"{request.url} answered {answer!r}")  # answer_secrets is wrong
    return answer


def _actor() -> str:
    return f"cli uid={os.getuid()}"


# -- drain -------------------------------------------------------------------------------------


def drain(
    client: AdminClient,
    say: Callable[[str], None],
    *,
    poll: float = DRAIN_POLL,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Stop taking jobs, then report progress until no runner is left."""
    client.call(protocol.drain())
    say("draining: no new jobs will start; waiting for running ones (Ctrl-C stops waiting)")
    last = None
    while True:
        runners = client.call(protocol.get_status()).runners
        shown = ", ".join(f"{r.name} ({r.state}, job {r.job})" for r in runners)
        if len(runners) != last:
            say(f"{len(runners)} runner(s) left" + (f": {shown}" if runners else ""))
            last = len(runners)
        if not runners:
            say("drained: no runner left; `gantryd resume` takes jobs again")
            return
        sleep(poll)


# -- the commands ------------------------------------------------------------------------------


def _socket(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    return socket_path(runtime_dir_of(args.config))  # found even in an invalid file


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(_socket(args))


def _status(args: argparse.Namespace) -> int:
    if args.fleet:
        fleet = _client(args).call(protocol.get_fleet())
        print(dumps(fleet) if args.json else format_fleet(fleet))
        return 0
    status = _client(args).call(protocol.get_status())
    print(dumps(status) if args.json else format_status(status))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.jobs_command == "ls":
        states = tuple(JobState(s) for s in args.state)
        listed = client.call(protocol.list_jobs(states, pool=args.pool, limit=args.limit))
        if args.json:
            print(dumps(listed))
            return 0
        print(format_jobs(listed.jobs))
        if not listed.complete:
            print(f"(the first {len(listed.jobs)} only: narrow with --state/--pool or --limit)")
        return 0
    job = _job_arg(args.job)
    if args.jobs_command == "show":
        shown = client.call(protocol.get_job(job))
        print(dumps(shown) if args.json else format_job(shown))
    elif args.jobs_command == "cancel":
        client.call(protocol.cancel_job(job))
        print(f"job {job}: cancelled")
    else:
        client.call(protocol.retry_job(job))
        print(f"job {job}: queued again")
    return 0


def _job_arg(text: str) -> int:
    if not text.isdigit():
        raise ControlError(f"a job id is a number (GitHub's workflow job id), not {text!r}")
    return int(text)


def _drain(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.no_wait:
        answer = client.call(protocol.drain())
        print(f"draining: no new jobs will start; {answer.runners} runner(s) still working")
        return 0
    drain(client, print)
    return 0


def _resume(args: argparse.Namespace) -> int:
    _client(args).call(protocol.resume())
    print("resumed: taking new jobs")
    return 0


def _gc(args: argparse.Namespace) -> int:
    removed = _client(args).call(protocol.collect_garbage()).removed
    if not removed:
        print("nothing to remove")
        return 0
    print(f"garbage collection removed {len(removed)} object(s):")
    for name in removed:
        print(f"  {name}")
    return 0


def _secrets(args: argparse.Namespace) -> int:
    command = args.secrets_command
    if command == "set":
        value = sys.stdin.buffer.read()
        if value.endswith(b"\n"):
            value = value[:-1]
        if value.endswith(b"\r"):
            value = value[:-1]
        if not value:
            raise ControlError("no value on stdin: `printf %s VALUE | gantryd secrets set NAME`")
        _secrets_call(args, protocol.set_secret(args.name, value))
        print(f"secret {args.name} stored")
    elif command == "list":
        listed = _secrets_call(args, protocol.list_secrets())
        print(dumps(listed) if args.json else format_secrets(listed.secrets))
    elif command == "rm":
        _secrets_call(args, protocol.remove_secret(args.name))
        print(f"secret {args.name} removed")
    elif command == "rotate-key":
        rotated = _secrets_call(args, protocol.rotate_key()).rotated
        print(f"key rotated; {rotated} value(s) re-encrypted")
    else:
        audit = _secrets_call(args, protocol.secret_audit(args.name, limit=args.limit))
        print(dumps(audit) if args.json else format_audit(audit.audit))
    return 0


def _secrets_call(args: argparse.Namespace, request: Request[A]) -> A:
    """Through the daemon when it runs (it holds the database), else on the store directly."""
    try:
        return _client(args).call(request)
    except NotRunning:
        pass
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise ControlError(
            f"gantryd is not running and its configuration is unusable: {exc}"
        ) from None
    return local_secrets(config.server.state_dir, request, config.queue)


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    with_config: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register the control commands on the ``gantryd`` parser."""

    def control(name: str, help: str, func: Callable[[argparse.Namespace], int]) -> Any:
        p = sub.add_parser(name, help=help)
        with_config(p)
        p.add_argument("--socket", help="admin socket (default: <runtime_dir>/admin.sock)")
        p.set_defaults(func=_guarded(func))
        return p

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON for scripts")

    def leaf(group: Any, name: str, help: str) -> argparse.ArgumentParser:
        """An action parser that also takes --config/--socket after the action."""
        p: argparse.ArgumentParser = group.add_parser(name, help=help)
        p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--socket", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return p

    status = control("status", "what gantryd is doing: pools, runners, queue", _status)
    json_flag(status)
    status.add_argument(
        "--fleet",
        action="store_true",
        help="every host sharing this Redis: heartbeat, capacity, drain state, leases",
    )
    jobs = control("jobs", "list, show, retry or cancel jobs", _jobs)
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    ls = leaf(jobs_sub, "ls", "list jobs: waiting ones in serving order, then the newest")
    ls.add_argument(
        "--state",
        action="append",
        default=[],
        choices=[s.value for s in JobState],
        help="only jobs in this state (repeatable)",
    )
    ls.add_argument("--pool", help="only jobs of this pool")
    ls.add_argument("--limit", type=int, help=f"at most this many (default {JOBS_SHOWN})")
    json_flag(ls)
    for action, text in (
        ("show", "one job"),
        ("retry", "queue a dead or cancelled job again"),
        ("cancel", "cancel a job that has not finished"),
    ):
        p = leaf(jobs_sub, action, text)
        p.add_argument("job", help="GitHub workflow job id")
        if action == "show":
            json_flag(p)
    drain_parser = control("drain", "start no new jobs and wait for running ones", _drain)
    drain_parser.add_argument("--no-wait", action="store_true", help="return at once")
    control("resume", "take new jobs again after a drain", _resume)
    control("gc", "one garbage-collection pass; prints what it removed", _gc)
    secrets = control("secrets", "the encrypted secrets store", _secrets)
    secrets_sub = secrets.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    leaf(secrets_sub, "set", "store NAME, value read from stdin").add_argument("name")
    json_flag(leaf(secrets_sub, "list", "names and dates (never values)"))
    leaf(secrets_sub, "rm", "remove NAME").add_argument("name")
    leaf(secrets_sub, "rotate-key", "re-encrypt every value under a new key")
    audit = leaf(secrets_sub, "audit", "who used which secret, when")
    audit.add_argument("name", nargs="?", help="only this secret")
    audit.add_argument("--limit", type=int, default=100, help="newest N entries (default 100)")
    json_flag(audit)


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ControlError as exc:
            print(f"gantryd: {exc}", file=sys.stderr)
            return 1

    return run
