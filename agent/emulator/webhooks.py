"""Webhook hooks, deliveries and the task that sends them, as GitHub's Hookshot does.

Reference §1: every delivery is a POST with ``X-GitHub-Event``, ``X-GitHub-Delivery`` (a GUID),
``X-GitHub-Hook-ID``, ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body, §1.2), a
``GitHub-Hookshot/<hex>`` User-Agent and the installation target headers (§1.1); the receiver has
10 s to answer 2xx, anything else is a failed delivery and is **not retried** (§1.3). Every
attempt is recorded as a `Delivery` (the fields of the deliveries API, §1.4) so a later issue can
serve that API and redeliver.

Each hook has its own outbox and one sender task, so deliveries to one hook leave in the order
the events happened (per job and overall); `Faults` then breaks that order on purpose.

Unlike GitHub, loopback URLs are accepted (§1.3: GitHub rejects them): the emulator and gantryd
run on one host.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import trio

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 10.0  # seconds GitHub waits for the 2xx (§1.3, github.com)
USER_AGENT = "GitHub-Hookshot/e5a2b1c"  # always "GitHub-Hookshot/<short hex>" (§1.1)
ZEN = "Design for failure."


def signature_256(secret: bytes, body: bytes) -> str:
    """``X-Hub-Signature-256`` value: ``sha256=`` + hex HMAC-SHA256 of the raw body (§1.2)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Misbehaviour on demand (docs/design.md §7); all off by default. Rates are probabilities 0..1.

    What GitHub itself does, made frequent: deliveries that fail (recorded as failed, so they can
    be redelivered, §1.3/§1.4), arrive twice with the same GUID, or out of order (§1.3), late
    deliveries, and 5xx answers from the REST API.
    """

    drop_rate: float = 0.0  # delivery never reaches the receiver; recorded "failed to connect"
    duplicate_rate: float = 0.0  # delivered twice with the same X-GitHub-Delivery
    reorder_rate: float = 0.0  # held back and sent after the next pending delivery
    delivery_latency: float = 0.0  # seconds before each delivery attempt
    server_error_rate: float = 0.0  # REST endpoints answer 502 instead of working

    def __post_init__(self) -> None:
        for name in ("drop_rate", "duplicate_rate", "reorder_rate", "server_error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be within 0..1, got {value!r}")
        if not 0.0 <= self.delivery_latency < math.inf:
            raise ValueError(f"Faults.delivery_latency must be >= 0, got {self.delivery_latency!r}")


@dataclass(frozen=True, kw_only=True)
class Outgoing:
    """An event rendered for one hook, waiting in its outbox: the same bytes on every attempt."""

    guid: str  # X-GitHub-Delivery; kept by duplicates and redeliveries (§1.1)
    hook_id: int
    event: str
    action: str | None
    installation_id: int | None
    repository_id: int | None
    job_id: int | None
    body: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    redelivery: bool = False  # sent again on request (POST .../deliveries/{id}/attempts, §1.4)


@dataclass(kw_only=True)
class Delivery:
    """One delivery attempt, with the fields of GitHub's hook-delivery item (§1.4)."""

    id: int
    outgoing: Outgoing
    delivered_at: float  # epoch seconds
    redelivery: bool = False
    duration: float | None = None
    url: str = ""  # where it was posted: one of the hook's ``backends`` behind a balancer
    status: str = "pending"  # "OK" for a 2xx, otherwise GitHub's failure text
    status_code: int = 0  # 0 when no HTTP answer came back


@dataclass(kw_only=True)
class Hook:
    """A webhook: of the App (``integration``), of a repository, or of an organization.

    App hooks receive the events of every installation and carry ``installation`` in the
    payload (§2.2); repository/organization hooks only their target's events.
    """

    id: int
    url: str
    secret: bytes = field(repr=False)
    content_type: str  # "json" | "form"
    target_type: str  # X-GitHub-Hook-Installation-Target-Type: integration|repository|organization
    target_id: int  # App id, repository id or organization id
    target_name: str | None  # repository full name or organization login
    outbox_send: trio.MemorySendChannel[Outgoing] = field(repr=False)
    outbox_receive: trio.MemoryReceiveChannel[Outgoing] = field(repr=False)
    # A load balancer in front of several gantryd hosts, as GitHub sees it: one URL (``url``),
    # and behind it these backends, one chosen at random per delivery. Empty: ``url`` itself.
    backends: tuple[str, ...] = ()

    def hook_json(self, app_id: int) -> dict[str, Any]:
        """The ``hook`` object of the ``ping`` payload (§1.5)."""
        kind = {"integration": "App", "repository": "Repository", "organization": "Organization"}
        body: dict[str, Any] = {
            "type": kind[self.target_type],
            "id": self.id,
            "name": "web",
            "active": True,
            "events": ["workflow_job"],
            "config": {"content_type": self.content_type, "url": self.url, "insecure_ssl": "0"},
        }
        if self.target_type == "integration":
            body["app_id"] = app_id
        return body


def encode_body(hook: Hook, payload: dict[str, Any]) -> bytes:
    """JSON, or the JSON in a ``payload`` form field for ``form`` hooks (§1.1 Content-Type)."""
    text = json.dumps(payload, separators=(",", ":"))
    if hook.content_type == "form":
        return urlencode({"payload": text}).encode()
    return text.encode()


def delivery_headers(hook: Hook, event: str, guid: str, body: bytes) -> dict[str, str]:
    content_type = (
        "application/x-www-form-urlencoded" if hook.content_type == "form" else "application/json"
    )
    headers = {
        "Content-Type": content_type,
        "User-Agent": USER_AGENT,
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": guid,
        "X-GitHub-Hook-ID": str(hook.id),
        "X-GitHub-Hook-Installation-Target-Type": hook.target_type,
        "X-GitHub-Hook-Installation-Target-ID": str(hook.target_id),
    }
    if hook.secret:  # both signatures are sent only when a secret is set (§1.1)
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(hook.secret, body, hashlib.sha1).hexdigest()
        headers["X-Hub-Signature-256"] = signature_256(hook.secret, body)
    return headers


def new_guid() -> str:
    return str(uuid.uuid4())


class Sender:
    """Sends each hook's outbox in order; one per emulator run, owning the HTTP client.

    Every attempt is appended to ``deliveries`` (shared with the emulator) and announced through
    ``on_recorded`` so waiters can wake up.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        deliveries: list[Delivery],
        *,
        faults: Callable[[], Faults],
        rng: random.Random,
        on_recorded: Callable[[], None],
    ) -> None:
        self._client = client
        self._deliveries = deliveries
        self._faults = faults
        self._rng = rng
        self._on_recorded = on_recorded

    async def run_hook(self, hook: Hook) -> None:
        """Deliver ``hook``'s outbox until it is closed; runs in the emulator's nursery."""
        async with hook.outbox_receive:
            async for outgoing in hook.outbox_receive:
                if self._rng.random() < self._faults().reorder_rate:
                    try:
                        later = hook.outbox_receive.receive_nowait()
                    except trio.WouldBlock:
                        pass
                    else:
                        await self._attempt(hook, later)
                await self._attempt(hook, outgoing)
                if self._rng.random() < self._faults().duplicate_rate:
                    await self._attempt(hook, outgoing)

    async def _attempt(self, hook: Hook, outgoing: Outgoing) -> None:
        faults = self._faults()
        if faults.delivery_latency:
            await trio.sleep(faults.delivery_latency)
        delivery = Delivery(
            id=len(self._deliveries) + 1,
            outgoing=outgoing,
            delivered_at=time.time(),
            redelivery=outgoing.redelivery,
        )
        self._deliveries.append(delivery)
        started = time.monotonic()
        if self._rng.random() < faults.drop_rate:
            delivery.status = "failed to connect to host"
        else:
            await self._post(hook, delivery)
        delivery.duration = time.monotonic() - started
        log.debug(
            "delivery %s %s to %s: %s", outgoing.guid, outgoing.event, hook.url, delivery.status
        )
        self._on_recorded()

    async def _post(self, hook: Hook, delivery: Delivery) -> None:
        """POST to the hook's URL, or behind a balancer to a backend chosen at random; a
        backend that refuses the connection is passed over for the next one, as a balancer's
        redispatch does (no request reached it, so none is duplicated). GitHub itself never
        retries: when no backend takes the connection the delivery fails."""
        targets = [hook.url]
        if hook.backends:
            targets = list(hook.backends)
            self._rng.shuffle(targets)
        for url in targets:
            delivery.url = url
            try:
                response = await self._client.post(
                    url,
                    content=delivery.outgoing.body,
                    headers=delivery.outgoing.headers,
                    timeout=DELIVERY_TIMEOUT,
                )
            except httpx.ConnectError:
                delivery.status = "failed to connect to host"
                continue
            except httpx.TimeoutException:
                delivery.status = "timed out"
                return
            except httpx.HTTPError:
                delivery.status = "failed to connect to host"
                return
            break
        else:
            return
        delivery.status_code = response.status_code
        ok = 200 <= response.status_code < 300
        delivery.status = "OK" if ok else f"Invalid HTTP Response: {response.status_code}"
