"""Client side of the admin socket: the requests behind ``gantryd status|jobs|drain|…`` and the
tables they print. Every failure becomes a ``ControlError`` whose message says what to do."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import trio

from agent.config import ConfigError, ServerConfig, load_config
from agent.ops.admin_server import JOBS_SHOWN, AdminError, secrets_endpoint, socket_path
from agent.queue.base import JobState
from agent.secrets import SecretsError, open_secret_store

DRAIN_POLL = 1.0


class ControlError(Exception):
    """A control command failed; the message is for the operator."""


class NotRunning(ControlError):
    pass


class AdminClient:
    """Blocking JSON-over-HTTP calls on the admin unix socket."""

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = path
        self._timeout = timeout

    def request(self, method: str, url: str, *, body: bytes | None = None) -> Any:
        transport = httpx.HTTPTransport(uds=str(self.path))
        try:
            with httpx.Client(transport=transport, timeout=self._timeout) as client:
                response = client.request(method, "http://gantryd" + url, content=body)
        except httpx.ConnectError as exc:
            raise self._connect_error(exc) from exc
        except httpx.HTTPError as exc:
            raise ControlError(f"gantryd did not answer on {self.path}: {exc}") from exc
        try:
            answer = response.json()
        except ValueError as exc:
            raise ControlError(
                f"unexpected answer from {self.path}: {response.text[:200]}"
            ) from exc
        if response.status_code >= 400:
            raise ControlError(str(answer.get("error", response.reason_phrase)))
        return answer

    def _connect_error(self, exc: Exception) -> ControlError:
        cause = exc.__cause__ or exc.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, PermissionError) or (
            self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK)
        ):
            return ControlError(
                f"permission denied on {self.path}: run as root or as a member of gantryd's group"
            )
        if not self.path.exists():
            return NotRunning(f"the daemon is not running (no admin socket at {self.path})")
        return NotRunning(f"the daemon is not running (nobody answers on {self.path})")


# -- secrets without a running daemon ----------------------------------------------------------


def local_secrets(
    state_dir: Path, method: str, rest: list[str], query: dict[str, str], body: bytes
) -> Any:
    """Run a /secrets request on the store directly (gantryd is stopped). As root, new files are
    given to the owner of the state directory, so the daemon's user can still open them."""

    async def run() -> Any:
        async with open_secret_store(state_dir) as store:
            return await secrets_endpoint(store, method, rest, query, body, actor=_actor())

    try:
        result = trio.run(run)
    except (AdminError, SecretsError) as exc:
        raise ControlError(str(exc)) from exc
    except OSError as exc:
        raise ControlError(f"cannot open the secrets store in {state_dir}: {exc}") from exc
    if os.geteuid() == 0:
        owner = state_dir.stat()
        for path in state_dir.glob("secrets.*"):
            os.chown(path, owner.st_uid, owner.st_gid)
    return result


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
    client.request("POST", "/drain")
    say("draining: no new jobs will start; waiting for running ones (Ctrl-C stops waiting)")
    last = None
    while True:
        runners = client.request("GET", "/status")["runners"]
        shown = ", ".join(f"{r['name']} ({r['state']}, job {r['job']})" for r in runners)
        if len(runners) != last:
            say(f"{len(runners)} runner(s) left" + (f": {shown}" if runners else ""))
            last = len(runners)
        if not runners:
            say("drained: no runner left; `gantryd resume` takes jobs again")
            return
        sleep(poll)


# -- tables ------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def format_status(status: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    config = status["config"]
    head = [
        f"gantryd {status['version']} on {status['instance']}, up {_age(status['uptime'])}"
        + ("  [DRAINING: taking no new jobs]" if status["paused"] else ""),
        f"config {config['path']}"
        + ("" if config["last_reload_ok"] else "  [LAST RELOAD FAILED: old config in force]"),
        "",
        "POOLS",
        _table(
            ["pool", "labels", "runners", "max", "queue"],
            [
                [
                    p["name"],
                    ",".join(p["labels"]),
                    " ".join(f"{k}={v}" for k, v in p["runners"].items()) or "-",
                    str(p["max_runners"]),
                    " ".join(f"{k}={v}" for k, v in p["queue"].items()) or "-",
                ]
                for p in status["pools"]
            ],
        ),
        "",
        "RUNNERS",
    ]
    runners = status["runners"]
    head.append(
        _table(
            ["runner", "pool", "state", "job", "repository", "age", "cpu", "memory"],
            [
                [
                    r["name"],
                    r["pool"],
                    r["state"],
                    str(r["job"] or "-"),
                    r["repository"] or "-",
                    _age(r["age"]),
                    "-" if r["cpu"] is None else f"{r['cpu']:.2f}",
                    _bytes(r["memory"]),
                ]
                for r in runners
            ],
        )
        if runners
        else "(none)"
    )
    queue = status["queue"]
    head += ["", "QUEUE  " + " ".join(f"{k}={v}" for k, v in queue["by_state"].items() if v)]
    head.append(format_jobs(queue["jobs"], now) if queue["jobs"] else "(nothing waiting)")
    return "\n".join(head)


def format_jobs(jobs: list[dict[str, Any]], now: float | None = None) -> str:
    if not jobs:
        return "(no jobs)"
    now = time.time() if now is None else now
    return _table(
        ["pos", "job", "state", "pool", "prio", "waited", "repository", "runner"],
        [
            [
                str(j["position"] or "-"),
                str(j["id"]),
                j["state"],
                j["pool"],
                str(j["priority"]),
                _age(now - j["enqueued_at"]),
                j["repository"],
                j["runner"] or "-",
            ]
            for j in jobs
        ],
    )


def format_job(job: dict[str, Any]) -> str:
    keys = ["id", "state", "repository", "pool", "priority", "position", "attempts", "runner"]
    keys += ["runners", "conclusion", "last_error", "workflow", "name"]
    return "\n".join(f"{k:<11} {job.get(k) if job.get(k) not in (None, []) else '-'}" for k in keys)


def format_secrets(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "(no secrets)"
    return _table(
        ["name", "created", "updated"],
        [[e["name"], _when(e["created_at"]), _when(e["updated_at"])] for e in entries],
    )


def format_audit(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "(no audit entries)"
    return _table(
        ["when", "secret", "action", "runner", "job", "by"],
        [
            [
                _when(e["at"]),
                e["secret"],
                e["action"],
                e["runner"] or "-",
                str(e["job"] or "-"),
                e["actor"],
            ]
            for e in entries
        ],
    )


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


# -- the commands ------------------------------------------------------------------------------


def _socket(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    try:
        runtime_dir = load_config(args.config).server.runtime_dir
    except ConfigError:
        runtime_dir = ServerConfig().runtime_dir  # unreadable config: try the default place
    return socket_path(runtime_dir)


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(_socket(args))


def _status(args: argparse.Namespace) -> int:
    status = _client(args).request("GET", "/status")
    print(dumps(status) if args.json else format_status(status))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.jobs_command == "ls":
        query = {"state": ",".join(args.state), "pool": args.pool, "limit": args.limit}
        url = "/jobs?" + urlencode({k: v for k, v in query.items() if v})
        answer = client.request("GET", url)
        if args.json:
            print(dumps(answer))
            return 0
        print(format_jobs(answer["jobs"]))
        if not answer["complete"]:
            print(f"(the first {len(answer['jobs'])} only: narrow with --state/--pool or --limit)")
        return 0
    job = _job_arg(args.job)
    if args.jobs_command == "show":
        answer = client.request("GET", f"/jobs/{job}")
        print(dumps(answer) if args.json else format_job(answer))
    else:
        client.request("POST", f"/jobs/{job}/{args.jobs_command}")
        print(f"job {job}: {'cancelled' if args.jobs_command == 'cancel' else 'queued again'}")
    return 0


def _job_arg(text: str) -> int:
    if not text.isdigit():
        raise ControlError(f"a job id is a number (GitHub's workflow job id), not {text!r}")
    return int(text)


def _drain(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.no_wait:
        answer = client.request("POST", "/drain")
        print(f"draining: no new jobs will start; {answer['runners']} runner(s) still working")
        return 0
    drain(client, print)
    return 0


def _resume(args: argparse.Namespace) -> int:
    _client(args).request("POST", "/resume")
    print("resumed: taking new jobs")
    return 0


def _gc(args: argparse.Namespace) -> int:
    removed: list[str] = _client(args).request("POST", "/gc")["removed"]
    if not removed:
        print("nothing to remove")
        return 0
    print(f"garbage collection removed {len(removed)} object(s):")
    for name in removed:
        print(f"  {name}")
    return 0


def _secrets(args: argparse.Namespace) -> int:
    command = args.secrets_command
    query: dict[str, str] = {}
    body = b""
    if command == "set":
        body = sys.stdin.buffer.read()
        if body.endswith(b"\n"):
            body = body[:-1]
        if body.endswith(b"\r"):
            body = body[:-1]
        if not body:
            raise ControlError("no value on stdin: `printf %s VALUE | gantryd secrets set NAME`")
        method, rest = "PUT", [args.name]
    elif command == "list":
        method, rest = "GET", []
    elif command == "rm":
        method, rest = "DELETE", [args.name]
    elif command == "rotate-key":
        method, rest = "POST", ["rotate-key"]
    else:
        method, rest = "GET", ["audit"]
        query = {"limit": str(args.limit)} | ({"secret": args.name} if args.name else {})
    answer = _secrets_request(args, method, rest, query, body)
    if command == "list":
        print(dumps(answer) if args.json else format_secrets(answer["secrets"]))
    elif command == "audit":
        print(dumps(answer) if args.json else format_audit(answer["audit"]))
    elif command == "set":
        print(f"secret {args.name} stored")
    elif command == "rm":
        print(f"secret {args.name} removed")
    else:
        print(f"key rotated; {answer['rotated']} value(s) re-encrypted")
    return 0


def _secrets_request(
    args: argparse.Namespace, method: str, rest: list[str], query: dict[str, str], body: bytes
) -> Any:
    """Through the daemon when it runs (it holds the database), else on the store directly."""
    url = "/secrets/" + "/".join(rest) + ("?" + urlencode(query) if query else "")
    try:
        return _client(args).request(method, url, body=body or None)
    except NotRunning:
        pass
    try:
        state_dir = load_config(args.config).server.state_dir
    except ConfigError as exc:
        raise ControlError(
            f"gantryd is not running and its configuration is unusable: {exc}"
        ) from None
    return local_secrets(state_dir, method, rest, query, body)


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

    json_flag(control("status", "what gantryd is doing: pools, runners, queue", _status))
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
