"""The fleet's host network: the services address reachable from every host, every host's address
reachable from the root namespace, no route anywhere else, and nothing left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.fleet.host_network import HostNetwork, host_network, our_namespaces

# Listens on argv[1]:argv[2], says so, and answers the first connection with "host".
LISTEN = (
    "import socket, sys\n"
    "s = socket.create_server((sys.argv[1], int(sys.argv[2])))\n"
    "print('listening', flush=True)\n"
    "s.accept()[0].sendall(b'host')\n"
)
# Connects to argv[1]:argv[2] and prints what it reads.
CONNECT = (
    "import socket, sys\n"
    "c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n"
    "print(c.recv(16).decode())\n"
)


def answers_from_host(network: HostNetwork, index: int) -> str:
    """Host ``index`` connects to a listener on the services address."""
    with socket.create_server((network.services, 0)) as server:
        port = server.getsockname()[1]
        with subprocess.Popen(
            network.command(index, [sys.executable, "-c", CONNECT, network.services, str(port)]),
            stdout=subprocess.PIPE,
            text=True,
        ) as client:
            server.settimeout(10)
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"services")
            out, _ = client.communicate(timeout=10)
            return out.strip()


def answers_from_root(network: HostNetwork, index: int) -> str:
    """The root namespace connects to a listener on host ``index``'s address."""
    address, port = network.addresses[index], network.intake_port(index)
    with subprocess.Popen(
        network.command(index, [sys.executable, "-c", LISTEN, address, str(port)]),
        stdout=subprocess.PIPE,
        text=True,
    ) as listener:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        with socket.create_connection((address, port), timeout=10) as c:
            return c.recv(16).decode()


def test_hosts_and_services_reach_each_other_and_nothing_else() -> None:
    with host_network(2) as network:
        assert len(set(network.addresses)) == 2
        for index in range(2):
            assert answers_from_host(network, index) == "services"
            assert answers_from_root(network, index) == "host"
        for name in network.namespaces:
            routes = subprocess.run(
                ["ip", "-n", name, "route"], capture_output=True, text=True, check=True
            ).stdout.splitlines()
            # one route, to the services address over the veth: no default, nothing off the link
            assert len(routes) == 1 and routes[0].startswith(f"{network.services} dev "), routes
    assert not set(network.namespaces) & set(our_namespaces())
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"gf{os.getpid()}" not in links


def test_a_failing_test_leaves_no_namespace_behind() -> None:
    made: tuple[str, ...] = ()
    with pytest.raises(RuntimeError), host_network(2) as network:
        made = network.namespaces
        raise RuntimeError("the test failed")
    assert not set(made) & set(our_namespaces())
