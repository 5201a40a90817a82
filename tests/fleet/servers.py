"""Real redis-server processes for the fleet tests: TLS, AUTH, a primary with a replica and a
Sentinel, each on free loopback ports in the test's own directory."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.queue.queue_support import free_port

BASE_ARGS = ("--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction")


def wait_for(condition: Callable[[], bool], *, within: float = 20.0, what: str) -> None:
    """Poll ``condition`` (a server's state, outside trio) until true or fail at the deadline."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling an outside process's state, bounded by the deadline


@dataclass
class Server:
    """One redis-server (or Sentinel) process; ``stop``/``start`` keep its port and data."""

    args: list[str]
    port: int
    directory: Path
    ping: Callable[[], bool]
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / f"redis-{self.port}.log"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([binary, *self.args], stdout=out, stderr=out)
        wait_for(self._answers, what=f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"redis-server exited: {self.log.read_text()[-2000:]}")
        try:
            return self.ping()
        except (redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def _ping(
    *, port: int, password: str | None = None, ssl: bool = False, ssl_ca_certs: str | None = None
) -> Callable[[], bool]:
    def ping() -> bool:
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            password=password,
            ssl=ssl,
            ssl_ca_certs=ssl_ca_certs,
            socket_connect_timeout=1,
        )
        try:
            return bool(client.ping())
        finally:
            client.close()

    return ping


def plain_server(directory: Path, *extra: str, password: str | None = None) -> Server:
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), *BASE_ARGS]
    if password is not None:
        args += ["--requirepass", password]
    return Server([*args, *extra], port, directory, _ping(port=port, password=password))


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(directory: Path) -> Pki:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: x509.Name | None, key: ec.EllipticCurvePrivateKey,
              sign_with: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:  # fmt: skip
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(sign_with, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("gantryd test CA", None, ca_key, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("localhost", ca.subject, key, ca_key, False)
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


def tls_server(directory: Path, pki: Pki) -> Server:
    """TLS only (``--port 0``): a client that does not speak TLS cannot talk to it."""
    port = free_port()
    args = [
        "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--tls-cert-file", str(pki.cert_file), "--tls-key-file", str(pki.key_file),
        "--tls-ca-cert-file", str(pki.ca_file), "--tls-auth-clients", "no", *BASE_ARGS,
    ]  # fmt: skip
    ping = _ping(port=port, ssl=True, ssl_ca_certs=str(pki.ca_file))
    return Server(args, port, directory, ping)


def sentinel_server(
    directory: Path,
    primary_port: int,
    master: str,
    *,
    password: str | None = None,
    primary_password: str | None = None,
) -> Server:
    """A Sentinel watching ``primary_port`` (quorum 1, quick failure detection); ``password`` is
    the Sentinel's own (``requirepass``), ``primary_password`` the one it logs in to the
    servers with (``auth-pass``)."""
    port = free_port()
    conf = directory / f"sentinel-{port}.conf"
    text = (
        f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor {master} 127.0.0.1 {primary_port} 1\n"
        f"sentinel down-after-milliseconds {master} 1000\n"
        f"sentinel failover-timeout {master} 5000\n"
    )
    if password is not None:
        text += f"requirepass {password}\n"
    if primary_password is not None:
        text += f"sentinel auth-pass {master} {primary_password}\n"
    conf.write_text(text)
    return Server([str(conf), "--sentinel"], port, directory, _ping(port=port, password=password))


def sentinel_primary(sentinel_port: int, master: str) -> tuple[str, int] | None:
    client = redis.Redis(host="127.0.0.1", port=sentinel_port, decode_responses=True)
    try:
        address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master)
    finally:
        client.close()
    return None if address is None else (str(address[0]), int(address[1]))


def sentinel_replicas(sentinel_port: int, master: str) -> int:
    client = redis.Redis(host="127.0.0.1", port=sentinel_port, decode_responses=True)
    try:
        replicas = client.execute_command("SENTINEL", "REPLICAS", master)
    finally:
        client.close()
    return sum(1 for r in replicas if "s_down" not in str(r))
