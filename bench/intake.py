"""Intake benchmark: signed deliveries with durable enqueue beside a bare endpoint, one run.

    .venv/bin/python bench/intake.py [--seconds 5] [--workers 2] [--connections 8] [--rate 300]
                                     [--synchronous full|normal] [--runs 1]

Two servers on the same stack (hypercorn's trio protocol behind intake's admission loop, via
``agent.daemon.serve_http``, in its own process, loopback only): **durable** is gantryd's
``WebhookApp`` on a SQLite queue (``synchronous=FULL`` unless ``--synchronous normal``) that
verifies the signature, parses, routes and commits each delivery before answering 201;
**bare** reads the body and answers 200.
The load generator is this file:
``--workers`` processes, each with ``--connections`` keep-alive HTTP/1.1 connections on raw
sockets, sending distinct, correctly signed ``workflow_job`` ``queued`` deliveries (every one a
new job id and GUID, signed before the clock starts), reconnecting when hypercorn closes a
connection (``keep_alive_max_requests``). Two phases per server: closed loop (as fast as answers
come: req/s) and open loop at ``--rate`` req/s (latency measured from each request's scheduled
time, so a stall is not hidden). Generator and server share this machine's cores, so ``--runs``
repeats everything and prints the load average before each run and the spread at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import trio

SECRET = "bench-secret"
LABELS = ["self-hosted", "linux"]


def _config(tmp: Path, synchronous: str) -> Any:
    from agent.config import (
        Config,
        GitHubConfig,
        PoolConfig,
        QueueConfig,
        SchedulerConfig,
        ServerConfig,
    )

    return Config(
        path=tmp / "config.toml",
        server=ServerConfig(listen="127.0.0.1:0", state_dir=tmp),
        github=GitHubConfig(),
        queue=QueueConfig(path=tmp / "queue.db", synchronous=synchronous),
        scheduler=SchedulerConfig(),
        pools=(PoolConfig(name="default", labels=("self-hosted", "linux", "x64")),),
    )


async def _bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]}
    )
    await send({"type": "http.response.body", "body": b"ok\n"})


async def _serve(mode: str, synchronous: str, port_out: Any, stop: Any) -> None:
    from agent.daemon import serve_http
    from agent.github.auth import Secret
    from agent.orchestrator.webhook import WebhookApp
    from agent.queue import open_queue
    from agent.reload import LiveConfig

    with tempfile.TemporaryDirectory(prefix="gantryd-bench-") as tmp:
        config = _config(Path(tmp), synchronous)
        async with open_queue(config) as queue, trio.open_nursery() as nursery:
            send, receive = trio.open_memory_channel[Any](1000)
            nursery.start_soon(_drain, receive)
            app: Any = _bare
            if mode == "durable":
                app = WebhookApp(
                    live=LiveConfig(config),
                    queue=queue,
                    secrets=lambda: (Secret(SECRET),),
                    job_events=send,
                    on_enqueue=lambda: None,
                )
            binds = await nursery.start(serve_http, app, config.server)
            port_out.send(int(binds[0].rsplit(":", 1)[1]))
            await trio.to_thread.run_sync(stop.wait)
            nursery.cancel_scope.cancel()


async def _drain(receive: Any) -> None:
    async for _ in receive:
        pass


def serve_process(mode: str, synchronous: str, port_out: Any, stop: Any) -> None:
    trio.run(_serve, mode, synchronous, port_out, stop)


def _requests(first_id: int, count: int, port: int) -> list[bytes]:
    """Distinct signed ``queued`` deliveries, as complete HTTP/1.1 requests."""
    out = []
    for job_id in range(first_id, first_id + count):
        body = json.dumps(
            {
                "action": "queued",
                "workflow_job": {
                    "id": job_id,
                    "run_id": job_id,
                    "run_attempt": 1,
                    "workflow_name": "CI",
                    "head_branch": "main",
                    "head_sha": "16c5286e8d9a0629956a28938386b36608707a71",
                    "html_url": f"https://github.com/o/r/actions/runs/{job_id}",
                    "status": "queued",
                    "conclusion": None,
                    "name": "build",
                    "labels": LABELS,
                    "runner_id": None,
                    "runner_name": None,
                    "steps": [],
                },
                "repository": {"full_name": "octo-org/app", "name": "app"},
                "organization": {"login": "octo-org"},
                "installation": {"id": 1001},
                "sender": {"login": "octocat"},
            },
            separators=(",", ":"),
        ).encode()
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        head = (
            f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nUser-Agent: GitHub-Hookshot/bench\r\n"
            f"X-GitHub-Event: workflow_job\r\nX-GitHub-Delivery: bench-{job_id}\r\n"
            f"X-Hub-Signature-256: sha256={signature}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


async def _exchange(
    stream: trio.SocketStream, request: bytes, buffer: bytearray
) -> tuple[int, bool]:
    """Send one request, read one response (Content-Length framed); return its status and
    whether the server closes the connection after it (hypercorn does every
    ``keep_alive_max_requests`` requests)."""
    await stream.send_all(request)
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buffer[:end]).decode("latin-1").lower()
            fields = dict(line.split(":", 1) for line in head.split("\r\n")[1:])
            length = int(fields["content-length"])
            while len(buffer) < end + 4 + length:
                buffer += await stream.receive_some(65536)
            del buffer[: end + 4 + length]
            return int(head.split(" ", 2)[1]), fields.get("connection", "").strip() == "close"
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk


async def _load(
    port: int, requests: list[bytes], connections: int, seconds: float, rate: float | None
) -> tuple[list[float], int]:
    """Closed loop (rate None) or open loop at ``rate`` req/s over all connections."""
    latencies: list[float] = []
    errors = 0
    next_index = 0
    start = trio.current_time() + 0.2
    end = start + seconds

    async def connection(index: int) -> None:
        nonlocal next_index, errors
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer = bytearray()
        sent = 0
        await trio.sleep_until(start)
        try:
            while trio.current_time() < end and next_index < len(requests):
                if rate is None:
                    scheduled = trio.current_time()
                else:
                    scheduled = start + (sent * connections + index) / rate
                    if scheduled >= end:
                        return
                    await trio.sleep_until(scheduled)
                request = requests[next_index]
                next_index += 1
                sent += 1
                status, closing = await _exchange(stream, request, buffer)
                if status >= 300:
                    errors += 1
                latencies.append(trio.current_time() - scheduled)
                if closing:  # as a client would; open-loop latency includes the reconnect
                    await stream.aclose()
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for index in range(connections):
            nursery.start_soon(connection, index)
    return latencies, errors


def load_process(
    port: int,
    first_id: int,
    count: int,
    connections: int,
    seconds: float,
    rate: float | None,
    out: Any,
) -> None:
    requests = _requests(first_id, count, port)
    out.send(trio.run(_load, port, requests, connections, seconds, rate))


def _phase(
    args: argparse.Namespace, mode: str, rate: float | None, base_id: int
) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    port_recv, port_send = ctx.Pipe(duplex=False)
    server = ctx.Process(target=serve_process, args=(mode, args.synchronous, port_send, stop))
    server.start()
    port = port_recv.recv()
    per_worker_rate = None if rate is None else rate / args.workers
    count = int((per_worker_rate or 6000) * args.seconds) + 1000
    pipes, workers = [], []
    for w in range(args.workers):
        receive, send = ctx.Pipe(duplex=False)
        worker = ctx.Process(
            target=load_process,
            args=(
                port,
                base_id + w * count,
                count,
                args.connections,
                args.seconds,
                per_worker_rate,
                send,
            ),
        )
        worker.start()
        pipes.append(receive)
        workers.append(worker)
    latencies: list[float] = []
    errors = 0
    for receive in pipes:
        got, bad = receive.recv()
        latencies += got
        errors += bad
    for worker in workers:
        worker.join()
    stop.set()
    server.join(30)
    latencies.sort()
    return {
        "rps": len(latencies) / args.seconds,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": errors,
        "n": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--connections", type=int, default=8, help="connections per process")
    parser.add_argument("--rate", type=float, default=300.0, help="open-loop request rate")
    parser.add_argument(
        "--synchronous", choices=("full", "normal"), default="full", help="queue.synchronous"
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat the four phases")
    args = parser.parse_args()
    print(
        f"intake benchmark: {args.workers} load processes x {args.connections} connections, "
        f"{args.seconds:g}s per phase, loopback, synchronous={args.synchronous}"
    )
    base = 10_000_000_000
    durable_max: list[float] = []
    for run in range(1, args.runs + 1):
        load_average = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\nrun {run}, load average before: {load_average}")
        print(f"{'server':<8} {'load':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for rate in (None, args.rate):
            for mode in ("bare", "durable"):
                base += 10_000_000
                r = _phase(args, mode, rate, base)
                load = "max" if rate is None else f"{rate:g}/s"
                print(
                    f"{mode:<8} {load:<8} {r['rps']:>8.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
                    f"{r['errors']:>8.0f}"
                )
                if mode == "durable" and rate is None:
                    durable_max.append(r["rps"])
    if args.runs > 1:
        low, high = min(durable_max), max(durable_max)
        print(
            f"\ndurable max over {args.runs} runs: {low:.0f}-{high:.0f} req/s, "
            f"median {statistics.median(durable_max):.0f}"
        )


if __name__ == "__main__":
    main()
