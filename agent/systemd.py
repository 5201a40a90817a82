"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET per state change.

READY=1 once serving, RELOADING=1/READY=1 around a reload, STOPPING=1 on the way out,
STATUS= for `systemctl status`. Without $NOTIFY_SOCKET (not started by systemd) it does nothing.

Sends never block: a datagram socket whose reader lags (its queue holds only ~10 messages) would
otherwise stop the whole event loop inside ``sendto``; a message that does not fit is dropped
and logged instead (systemd reads promptly, so this means systemd itself is stuck).

``keep_alive`` is the service that sends WATCHDOG=1 from the event loop itself (so a blocked loop
is what trips systemd's watchdog, not a stuck helper thread) and refreshes STATUS= with counts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import trio

log = logging.getLogger(__name__)

STATUS_INTERVAL = 5.0  # seconds between STATUS= refreshes without a watchdog


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self._watchdog = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self.last_status = ""
        self.dropped = 0  # messages systemd's socket did not take

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        if self._address is None:
            return
        message = "\n".join(fields).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            try:
                sock.sendto(message, self._address)
            except OSError as exc:  # BlockingIOError when full; gone if systemd went away
                self.dropped += 1
                log.warning("sd_notify: %s not delivered to systemd: %s", fields[0], exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 for Type=notify-reload.
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        self.last_status = text
        self.notify(f"STATUS={text}")

    @property
    def watchdog_interval(self) -> float | None:
        """How often to send WATCHDOG=1 (half of WATCHDOG_USEC), None without a watchdog."""
        return None if self._watchdog is None else self._watchdog / 2

    async def keep_alive(
        self,
        status: Callable[[], str],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """WATCHDOG=1 every half watchdog period, and STATUS= whenever ``status()`` changes."""
        task_status.started()
        if not self.enabled:
            await trio.sleep_forever()
        interval = min(self.watchdog_interval or STATUS_INTERVAL, STATUS_INTERVAL)
        while True:
            await trio.sleep(interval)  # READY=1 (sent by the daemon once all is up) comes first
            text = status()
            fields = ["WATCHDOG=1"] if self._watchdog is not None else []
            if text != self.last_status:
                self.last_status = text
                fields.append(f"STATUS={text}")
            if fields:
                self.notify(*fields)
