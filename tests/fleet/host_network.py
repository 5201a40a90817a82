"""Where the fleet's hosts live: each gantryd daemon in a network namespace of its own, or, where
namespaces cannot be made, on a loopback address of its own.

Namespaces (``ip netns``; needs root or CAP_SYS_ADMIN and iproute2): a test-only link-local /24,
169.254.<n>.0/24 with n = 200 + pid % 50 (away from 169.254.169.254), so two test processes
rarely share one. Host i gets namespace ``gantryd-t-<pid>-<i>`` with lo up and one end of a veth
pair holding .<10+i>; the other end, in the root namespace, holds the services address .1. Both
ends are point-to-point (``peer``) addresses: the only route in a namespace is to .1, there is no
default route, no forwarding, no NAT and no iptables rule, and 169.254/16 is never routed off a
link. redis-server and the emulator bind .1: a local address of the root namespace, so the test
process and runner containers (``network = "host"``, dockerd's namespace) reach it as well, and
the emulator reaches each host's intake over its veth. The Docker socket and the admin socket are
unix sockets on the filesystem and work from any namespace.

Loopback fallback: hosts on 127.0.0.<2+i>, services on 127.0.0.1; the reason is logged and shown
at the end of the pytest run (``conftest.pytest_terminal_summary``).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

NAMESPACE_PREFIX = "gantryd-t-"
INTAKE_PORT = 8080  # in a namespace of its own every port is free
FALLBACKS: list[str] = []  # reasons the loopback addressing was used, for the pytest summary


@dataclass(frozen=True)
class HostNetwork:
    services: str  # redis-server and the emulator bind here; every host and the root reach it
    addresses: tuple[str, ...]  # each host's intake and metrics address
    namespaces: tuple[str, ...]  # each host's namespace; empty on loopback

    def command(self, index: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run as host ``index`` (``ip netns exec`` execs it: same pid, signals reach
        the daemon itself)."""
        if not self.namespaces:
            return list(argv)
        return ["ip", "netns", "exec", self.namespaces[index], *argv]

    def intake_port(self, index: int) -> int:
        return INTAKE_PORT if self.namespaces else free_port(self.addresses[index])


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def our_namespaces() -> list[str]:
    """Namespaces named by this module, of any test process."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(NAMESPACE_PREFIX)]


def remove_orphans() -> None:
    """Namespaces left by a test process that was killed before its teardown ran."""
    for name in our_namespaces():
        pid = int(name.removeprefix(NAMESPACE_PREFIX).split("-")[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextmanager
def host_network(hosts: int) -> Iterator[HostNetwork]:
    """Namespaces and veths for ``hosts`` hosts, all removed on exit (asserted); the loopback
    addressing where ``ip netns add`` fails. Stop the hosts' processes before leaving."""
    pid = os.getpid()
    names = [f"{NAMESPACE_PREFIX}{pid}-{i}" for i in range(hosts)]
    reason = None
    try:
        remove_orphans()
        ip("netns", "add", names[0])
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = (getattr(exc, "stderr", None) or str(exc)).strip()
    if reason is not None:
        FALLBACKS.append(f"`ip netns add` failed: {reason}")
        log.warning("fleet hosts on loopback addresses: `ip netns add` failed: %s", reason)
        yield HostNetwork("127.0.0.1", tuple(f"127.0.0.{i + 2}" for i in range(hosts)), ())
        return
    net = f"169.254.{200 + pid % 50}"
    services = f"{net}.1"
    try:
        for i, name in enumerate(names):
            if i:
                ip("netns", "add", name)
            outside, inside, address = f"gf{pid}r{i}", f"gf{pid}n{i}", f"{net}.{10 + i}"
            ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", name)
            ip("addr", "add", services, "peer", address, "dev", outside)
            ip("link", "set", outside, "up")
            ip("-n", name, "addr", "add", address, "peer", services, "dev", inside)
            ip("-n", name, "link", "set", inside, "up")
            ip("-n", name, "link", "set", "lo", "up")
        yield HostNetwork(services, tuple(f"{net}.{10 + i}" for i in range(hosts)), tuple(names))
    finally:
        for i, name in enumerate(names):
            # deleting a namespace destroys its veth end, and with it the root end
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            subprocess.run(["ip", "link", "del", f"gf{pid}r{i}"], capture_output=True)
        left = set(names) & set(our_namespaces())
        assert not left, f"network namespaces left behind: {sorted(left)}"
