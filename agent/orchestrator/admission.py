"""Admission of intake connections: at most ``server.max_connections`` open at once.

hypercorn has no such setting (its ``Config`` has ``backlog``, ``keep_alive_max_requests`` and
``max_requests``, none of which caps open connections), so a flood of slow connections took every
file descriptor: ``accept`` failed with EMFILE and GitHub's deliveries waited behind it (issue 13
§9). Intake therefore runs hypercorn's per-connection protocol (``TCPServer``) from an accept
loop of its own (`serve_admitted`, hypercorn's trio ``worker_serve`` for plain TCP otherwise):

- nothing is accepted while the limit is reached: new connections wait in the kernel's listen
  backlog and take no descriptor of gantryd's;
- at the limit, one connection with no request in the app is closed to admit the next one:
  the one admitted longest ago among those that never sent a whole request's headers (all a
  slow-loris client ever holds), else the one admitted longest ago among those idle between
  keep-alive requests. A delivery is in the app as soon as its headers have arrived, and a
  connection with a request in the app is never cut: its body and its answer are bounded by
  ``read_timeout`` and ``response_deadline``. So slow connections cannot starve a signed
  delivery; only when every admitted connection is inside the app does accept wait for one to
  end.

The same connections carry the two timeouts hypercorn cannot tell apart (its ``read_timeout``
bounds every read, the idle wait between keep-alive requests included): a request's headers
must arrive within ``server.read_timeout`` of its first byte (of the connection's opening, for
its first request), while an idle connection is kept ``server.keep_alive_timeout`` (hypercorn's
idle timer). Keeping idle connections longer than the client or balancer in front does means the
client always closes first: with the two at 5 s, a delivery sent on a connection the server
was closing at that instant failed at the sender, and GitHub never retries it.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from agent.orchestrator.intake_http import Receive, Scope, Send

log = logging.getLogger(__name__)

App = Callable[[Scope, Receive, Send], Awaitable[None]]
Peer = tuple[str, int]
# What trio's own serve_listeners waits out rather than fails on (too many open files, memory).
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_CAPACITY_PAUSE = 0.1  # seconds before accepting again after one of those (trio's own pause)
LOG_INTERVAL = 60.0  # seconds: the limit being reached is logged at most this often


def _peer(address: Any) -> Peer | None:
    """``(host, port)`` of a socket address or an ASGI ``client``; None for anything else."""
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


@dataclass
class AdmissionStats:
    """For /metrics: open connections now, the most at once, and how many were cut."""

    open: int = 0
    peak: int = 0
    evicted: int = 0  # idle connections cut to admit newer ones
    at_limit: int = 0  # times a connection waited for room
    accept_failed: int = 0  # EMFILE and the like: should stay 0 (see daemon.connection_limit)


class Connection(trio.abc.HalfCloseableStream):
    """An admitted socket stream; leaves the admission when closed, by either side."""

    def __init__(self, stream: trio.SocketStream, admission: Admission, peer: Peer) -> None:
        self._stream = stream
        self._admission = admission
        self.socket = stream.socket  # hypercorn reads the peer and local address from it
        self.peer = peer
        self.in_app = 0  # requests of this connection the app is handling now
        self.requests = 0  # requests of this connection that reached the app
        # When the headers of the request being received must be in: from the opening for the
        # first request, from its first byte for a later one; None while idle or in the app.
        self.headers_due: float | None = trio.current_time() + admission.header_timeout
        self.serving = trio.CancelScope()  # hypercorn's task for this connection

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """The next bytes; cut when a request's headers are late. Reads in the app and idle
        waits are bounded elsewhere (the app; hypercorn's idle timer)."""
        data: bytes | bytearray | None = None
        while data is None:
            if self.headers_due is None or self.in_app:
                data = await self._stream.receive_some(max_bytes)
                break
            reached = self.requests
            with trio.move_on_at(self.headers_due):
                data = await self._stream.receive_some(max_bytes)
            # Late, unless the headers were whole and the request reached the app meanwhile
            # (hypercorn reads on while the app's task starts): its body is the app's to bound.
            if data is None and self.requests == reached:
                self._reading_ended()
                raise trio.BrokenResourceError("request headers not received within read_timeout")
        if not data:
            self._reading_ended()
        elif not self.in_app and self.headers_due is None:  # a next request begins
            self.headers_due = trio.current_time() + self._admission.header_timeout
        return data

    def _reading_ended(self) -> None:
        """Once the reading is over with no request in the app, nothing is left to serve, but
        hypercorn's trio server would wait out its idle timer (keep_alive_timeout) with the
        socket open: end its task now."""
        if not self.in_app:
            self.serving.cancel()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        self._admission.release(self)
        await self._stream.aclose()


class Admission:
    """The open connections of intake's listeners, in the order they were admitted."""

    def __init__(self, limit: int, *, header_timeout: float) -> None:
        if limit < 1:
            raise ValueError(f"max_connections must be at least 1, not {limit}")
        self.limit = limit
        self.header_timeout = header_timeout  # server.read_timeout
        self.stats = AdmissionStats()
        self._open: dict[Peer, Connection] = {}
        self._freed = trio.Event()  # set and replaced whenever a connection leaves
        self._logged_at: float | None = None
        self._logged_evicted = 0
        self._failed_logged_at: float | None = None

    def release(self, connection: Connection) -> None:
        if self._open.get(connection.peer) is connection:
            del self._open[connection.peer]
            self.stats.open = len(self._open)
            self._freed.set()
            self._freed = trio.Event()

    async def _make_room(self) -> None:
        """Until fewer than ``limit`` are open: cut the oldest one that never reached the app,
        else the oldest one idle between requests, or wait for one to end when the app
        serves them all."""
        if len(self._open) >= self.limit:
            self.stats.at_limit += 1
            self._log_limit()
        while len(self._open) >= self.limit:
            idle = next((c for c in self._open.values() if not c.requests), None) or next(
                (c for c in self._open.values() if not c.in_app), None
            )
            if idle is None:
                await self._freed.wait()
                continue
            self.stats.evicted += 1
            await idle.aclose()  # hypercorn's reader sees it closed and ends the connection

    def _log_limit(self) -> None:
        now = trio.current_time()
        if self._logged_at is not None and now - self._logged_at < LOG_INTERVAL:
            return
        log.warning(
            "intake: %d connections open, server.max_connections reached; %d idle one(s) cut "
            "to admit newer ones since the last such line",
            len(self._open),
            self.stats.evicted - self._logged_evicted,
        )
        self._logged_at, self._logged_evicted = now, self.stats.evicted

    async def accept(self, listener: trio.SocketListener) -> Connection:
        """The next connection, once there is room for it; room is made only for a
        connection that is waiting (one admitted a moment ago has not sent its request yet)."""
        while True:
            await trio.lowlevel.wait_readable(listener.socket)
            await self._make_room()
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                self.stats.accept_failed += 1
                now = trio.current_time()
                if self._failed_logged_at is None or now - self._failed_logged_at >= LOG_INTERVAL:
                    self._failed_logged_at = now
                    log.error(
                        "intake: accept failed (%s; %d time(s) so far): the process is out of "
                        "descriptors or memory; lower server.max_connections or raise LimitNOFILE",
                        exc,
                        self.stats.accept_failed,
                    )
                await trio.sleep(_CAPACITY_PAUSE)
                continue
            peer = _peer(stream.socket.getpeername())
            if peer is None:  # not TCP: intake listens on TCP only
                await stream.aclose()
                continue
            connection = Connection(stream, self, peer)
            self._open[peer] = connection
            self.stats.open = len(self._open)
            self.stats.peak = max(self.stats.peak, self.stats.open)
            return connection

    def wrap(self, app: App) -> App:
        """``app``, noting which connection each HTTP request it handles came on."""

        async def admitted(scope: Scope, receive: Receive, send: Send) -> None:
            peer = _peer(scope.get("client")) if scope["type"] == "http" else None
            connection = self._open.get(peer) if peer is not None else None
            if connection is None:
                await app(scope, receive, send)
                return
            connection.in_app += 1
            connection.requests += 1
            try:
                await app(scope, receive, send)
            finally:
                connection.in_app -= 1
                connection.headers_due = None  # idle until the next request's first byte

        return admitted


async def serve_admitted(
    app: App,
    config: HypercornConfig,
    admission: Admission,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``config.bind`` (plain TCP) as hypercorn's trio worker does, but with
    connections taken through ``admission``; started() with the bound URLs."""
    wrapped = wrap_app(admission.wrap(app), config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
                await config.log.info(f"Running on {binds[-1]} (CTRL + C to quit)")

            async def accept_forever(listener: trio.SocketListener) -> None:
                while True:
                    connection = await admission.accept(listener)
                    state = ConnectionState(lifespan_state.copy())
                    server = TCPServer(wrapped, config, context, state, connection)  # type: ignore[arg-type]
                    server_nursery.start_soon(serve_connection, server, connection)

            async def serve_connection(server: TCPServer, connection: Connection) -> None:
                try:
                    with connection.serving:
                        await server.run()
                finally:  # as trio's serve_listeners: closed even when cancelled mid-close
                    await trio.aclose_forcefully(connection)

            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    for listener in listeners:
                        nursery.start_soon(accept_forever, listener)
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                for listener in listeners:
                    listener.socket.close()  # no new connection; those admitted finish
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
