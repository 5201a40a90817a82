"""``python -m agent.emulator`` / ``gantryd emulator``: the emulator as a standalone server.

Runs until SIGINT or SIGTERM and then exits 0. Problems with the arguments or the files they
name are reported in one line naming the option, exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator.models import parse_runner_version
from agent.emulator.server import serve_emulator
from agent.emulator.state import DEFAULT_RUNNER_IDLE_TIMEOUT, Emulator

EX_USAGE = 2


class UsageError(Exception):
    """A bad argument or unreadable file, with the option it concerns."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gantryd emulator",
        description="Serve a local stand-in for GitHub (App auth, JIT runners, jobs, webhooks).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="port (default 0: pick a free one)")
    parser.add_argument("--app-id", type=int, default=1, help="GitHub App id (default %(default)s)")
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument(
        "--app-public-key",
        type=Path,
        metavar="PATH",
        help="PEM file with the App's public key (a private key PEM also works)",
    )
    key.add_argument(
        "--generate-app-key",
        type=Path,
        metavar="PATH",
        help="write a new App private key (PEM, mode 0600) to PATH and use it",
    )
    parser.add_argument("--webhook-url", metavar="URL", help="deliver App webhooks to URL")
    parser.add_argument(
        "--webhook-secret-file", type=Path, metavar="PATH", help="file holding the webhook secret"
    )
    parser.add_argument(
        "--installation",
        action="extend",
        nargs="+",
        default=[],
        metavar="OWNER/REPO=ID",
        help="install the App on repositories under installation ID (repeatable)",
    )
    parser.add_argument(
        "--token-lifetime",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="installation token lifetime (default %(default)s, as on GitHub)",
    )
    parser.add_argument(
        "--public-repository",
        action="append",
        default=[],
        metavar="OWNER/REPO",
        help="make an installed repository public (repeatable; all are private otherwise)",
    )
    parser.add_argument(
        "--runner-idle-timeout",
        type=float,
        default=DEFAULT_RUNNER_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="remove a JIT runner that has not taken a job this long after it was registered "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--min-runner-version",
        metavar="X.Y.Z",
        help="refuse message polls of runners older than this as deprecated (default: off)",
    )
    return parser


def _installations(values: Sequence[str]) -> dict[int, list[str]]:
    installations: dict[int, list[str]] = {}
    for value in values:
        repo, _, number = value.rpartition("=")
        if repo.count("/") != 1 or not number.isdigit():
            raise UsageError(f"--installation {value!r}: expected OWNER/REPO=ID, e.g. acme/app=42")
        installations.setdefault(int(number), []).append(repo)
    return installations


def _public_key(path: Path) -> rsa.RSAPublicKey:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"--app-public-key {path}: {error.strerror}") from None
    try:
        if b"PRIVATE KEY" in data:
            key: object = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise UsageError(f"--app-public-key {path}: not a PEM RSA key ({error})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise UsageError(f"--app-public-key {path}: not an RSA key (GitHub Apps use RS256)")
    return key


def _generate_key(path: Path) -> rsa.RSAPublicKey:
    """Write a fresh 2048-bit key with mode 0600 from the start; never overwrite a file."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(
            f"--generate-app-key {path}: file exists; reuse it with --app-public-key {path}"
        ) from None
    except OSError as error:
        raise UsageError(f"--generate-app-key {path}: {error.strerror}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return key.public_key()


def _build(args: argparse.Namespace) -> tuple[Emulator, str | None, str]:
    if args.webhook_secret_file and not args.webhook_url:
        raise UsageError("--webhook-secret-file needs --webhook-url")
    if args.webhook_url and not args.webhook_url.startswith(("http://", "https://")):
        raise UsageError(f"--webhook-url {args.webhook_url!r}: expected an http(s) URL")
    secret = ""
    if args.webhook_secret_file:
        try:
            secret = args.webhook_secret_file.read_text().strip()
        except OSError as error:
            raise UsageError(
                f"--webhook-secret-file {args.webhook_secret_file}: {error.strerror}"
            ) from None
    if args.token_lifetime <= 0:
        raise UsageError("--token-lifetime must be positive")
    if args.runner_idle_timeout <= 0:
        raise UsageError("--runner-idle-timeout must be positive")
    if args.min_runner_version is not None:
        try:
            parse_runner_version(args.min_runner_version)
        except ValueError as error:
            raise UsageError(f"--min-runner-version: {error}") from None
    key = (
        _generate_key(args.generate_app_key)
        if args.generate_app_key
        else _public_key(args.app_public_key)
    )
    try:
        emulator = Emulator(
            app_id=args.app_id,
            app_public_key=key,
            installations=_installations(args.installation),
            token_lifetime=args.token_lifetime,
            public_repositories=args.public_repository,
            runner_idle_timeout=args.runner_idle_timeout,
            min_runner_version=args.min_runner_version,
        )
    except ValueError as error:
        raise UsageError(f"--installation / --public-repository: {error}") from None
    return emulator, args.webhook_url, secret


async def _serve(
    emulator: Emulator, host: str, port: int, webhook: str | None, secret: str
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(partial(serve_emulator, emulator, host=host, port=port))
            if webhook:
                emulator.add_hook(webhook, secret)
            print(f"emulator: GitHub stand-in at {base_url} (App id {emulator.app_id})", flush=True)
            async for signum in signals:
                print(f"emulator: {signal.Signals(signum).name}, stopping", flush=True)
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        emulator, webhook, secret = _build(args)
    except UsageError as error:
        print(f"emulator: {error}", file=sys.stderr)
        return EX_USAGE
    failure: OSError | None = None
    try:
        trio.run(_serve, emulator, args.host, args.port, webhook, secret)
    except* OSError as group:  # binding the port failed
        failure = group.exceptions[0]  # type: ignore[assignment]
    if failure is not None:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {failure}", file=sys.stderr)
        return 1
    return 0
