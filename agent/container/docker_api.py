"""The only module that imports docker-py: blocking calls moved to worker threads.

Each kind of work gets its own thread limiter so a slow image pull or the long-lived event stream
never starves container creation (STYLE: "a thread limiter per kind of work"). docker-py's errors
become ``DockerError`` / ``ContainerNotFound`` here, so callers never see docker-py types.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import docker.transport
import docker.types
import requests.exceptions
import trio

from agent.container.security import HostOptions

LABEL_PREFIX = "io.gantryd."
MANAGED_LABEL = "io.gantryd.managed"
INSTANCE_LABEL = "io.gantryd.instance"
RUNNER_LABEL = "io.gantryd.runner"
EXPIRES_LABEL = "io.gantryd.expires"
log = logging.getLogger(__name__)
# Pull progress lines worth a log line (one per layer step, not every byte count).
_PULL_MILESTONES = ("Pulling fs layer", "Download complete", "Pull complete", "Digest:", "Status:")


class DockerError(Exception):
    """Docker refused or could not be reached; the message is Docker's own."""


class ContainerNotFound(DockerError):
    pass


class ImageNotFound(DockerError):
    pass


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    name: str
    image: str
    command: tuple[str, ...]
    labels: Mapping[str, str]
    environment: Mapping[str, str]
    host: HostOptions
    stdin_open: bool = False
    entrypoint: tuple[str, ...] | None = None  # None: the image's own


@dataclass(frozen=True, kw_only=True)
class ContainerInfo:
    id: str
    name: str
    labels: Mapping[str, str]
    state: str  # created | running | exited | ...


@dataclass(frozen=True, kw_only=True)
class ManagedObject:
    """A labelled volume or network (what GC needs to judge it)."""

    kind: str  # volume | network
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class ContainerUsage:
    """One stats sample: memory now and its peak (cgroup v1 max_usage), CPU used so far."""

    memory: int
    peak_memory: int
    cpu_seconds: float


@dataclass(frozen=True, kw_only=True)
class DiskUsage:
    """Bytes on disk: per container id (writable layer + mounted volumes), per volume name."""

    containers: Mapping[str, int]
    volumes: Mapping[str, int]


@dataclass(frozen=True, kw_only=True)
class ContainerEvent:
    action: str  # start | die | oom | destroy
    container_id: str
    labels: Mapping[str, str]
    exit_code: int | None
    time_nano: int


def _digest(info: Mapping[str, Any]) -> str:
    digests = info.get("RepoDigests") or []
    return str(digests[0] if digests else info["Id"])


def _translate(exc: Exception) -> DockerError:
    if isinstance(exc, docker.errors.ImageNotFound):
        return ImageNotFound(str(exc.explanation or exc))
    if isinstance(exc, docker.errors.NotFound):
        return ContainerNotFound(str(exc.explanation or exc))
    if isinstance(exc, docker.errors.APIError):
        return DockerError(str(exc.explanation or exc))
    return DockerError(f"Docker Engine unreachable: {exc}")


def _storage_opt_refused(message: str) -> bool:
    """Docker's refusal of ``--storage-opt size`` by a driver or filesystem that cannot do it
    (overlay2 off xfs-pquota: "--storage-opt is supported only for overlay over xfs with
    'pquota' mount option"; others: "Storage Opt not supported", "storage-opt ... not
    supported")."""
    lowered = message.lower()
    return ("storage-opt" in lowered or "storage opt" in lowered) and "support" in lowered


_DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


# Connections kept to a unix-socket Engine: more than the calls that can run at once (control 8,
# pulls 2, disk 1), so none is opened and thrown away under load.
_POOL_SIZE = 16


class _OneUnixPool(docker.transport.UnixHTTPAdapter):  # type: ignore[misc]
    """docker-py's unix-socket adapter keys its connection pools by the whole request URL, so
    every call naming a container (start, remove, inspect, stats) opened a new connection to
    the Engine, in a new pool, 25 of them kept open: ≈ 4 connects per job, measured. One pool
    for the socket instead, its connections reused."""

    def get_connection(self, url: str, proxies: Any = None) -> Any:
        return super().get_connection("http+docker://localhost", proxies)


class DockerAPI:
    """A docker-py API client driven from trio. Create once; close with ``close()``."""

    def __init__(self, base_url: str | None = None, *, timeout: float = 60.0) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._api = self._client()
        self._control = trio.CapacityLimiter(8)  # create/start/stop/remove/inspect
        self._pulls = trio.CapacityLimiter(2)
        self._disk = trio.CapacityLimiter(1)  # disk usage walks every layer and volume
        self._storage_quota: bool | None = None

    def _client(self, version: str | None = None) -> docker.APIClient:
        """A client; without ``version`` it asks the Engine for it (blocking, at start only)."""
        try:
            api = docker.APIClient(
                base_url=self._base_url,
                timeout=int(self._timeout),
                version=version or "auto",
                max_pool_size=_POOL_SIZE,
            )
        except docker.errors.DockerException as exc:
            raise _translate(exc) from exc
        adapter = api.get_adapter(api.base_url)
        if isinstance(adapter, docker.transport.UnixHTTPAdapter):
            api.mount(
                "http+docker://",
                _OneUnixPool(adapter.socket_path, adapter.timeout, max_pool_size=_POOL_SIZE),
            )
            adapter.close()
            # requests' per-call proxy and ~/.netrc lookups (≈ 120 µs of CPU a call here): no
            # proxy or netrc entry applies to a unix socket.
            api.trust_env = False
        return api

    def close(self) -> None:
        self._api.close()

    async def _call(
        self, fn: Any, *args: Any, limiter: trio.CapacityLimiter | None = None, **kwargs: Any
    ) -> Any:
        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            except _DOCKER_ERRORS as exc:
                raise _translate(exc) from exc

        return await trio.to_thread.run_sync(run, limiter=limiter or self._control)

    async def ping(self) -> None:
        await self._call(self._api.ping)

    async def image_digest(self, image: str) -> str | None:
        """The local image's repository digest (or id when it has none); None if absent."""
        try:
            info = await self._call(self._api.inspect_image, image)
        except (ImageNotFound, ContainerNotFound):  # docker-py's NotFound, by message
            return None
        return _digest(info)

    async def pull(self, image: str, *, on_progress: Callable[[str], None] | None = None) -> str:
        """Pull an image; return its digest. Docker's (the registry's) error message is kept.

        ``on_progress`` gets one line per layer step; it runs on the pull's worker thread.
        """
        repository, _, tag = (
            image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
        )

        def run() -> str:
            try:
                for line in self._api.pull(repository, tag=tag, stream=True, decode=True):
                    if "error" in line:
                        raise DockerError(str(line["error"]))
                    status = str(line.get("status", ""))
                    if on_progress is not None and status.startswith(_PULL_MILESTONES):
                        layer = line.get("id")
                        on_progress(f"{layer}: {status}" if layer else status)
                info = self._api.inspect_image(image)
            except _DOCKER_ERRORS as exc:
                raise _translate(exc) from exc
            return _digest(info)

        return await trio.to_thread.run_sync(run, limiter=self._pulls)

    @property
    def storage_quota(self) -> bool | None:
        """Whether the storage driver enforces ``--storage-opt size`` (overlay2: only on xfs
        with pquota); None until a container asked for it. Learnt by trying, once."""
        return self._storage_quota

    async def create(self, spec: ContainerSpec) -> str:
        """Create the container; a ``storage_size`` the storage driver refuses is dropped
        (and not asked again): the disk watcher measures instead (agent/container/disk.py)."""
        size = spec.host.storage_size if self._storage_quota is not False else None
        try:
            return await self._create(spec, size)
        except DockerError as exc:
            if size is None or not _storage_opt_refused(str(exc)):
                raise
            log.info("storage driver has no per-container size limit, measuring: %s", exc)
            self._storage_quota = False
            return await self._create(spec, None)

    async def _create(self, spec: ContainerSpec, storage_size: int | None) -> str:
        h = spec.host
        mounts = [
            docker.types.Mount(target=v.target, source=None, type="volume", labels=dict(v.labels))
            for v in h.volumes
        ] + [
            docker.types.Mount(target=v.target, source=v.source, type="volume")
            for v in h.named_volumes
        ]
        host_config = self._api.create_host_config(
            cap_drop=list(h.cap_drop) or None,
            cap_add=list(h.cap_add) or None,
            security_opt=list(h.security_opt) or None,
            read_only=h.read_only,
            pids_limit=h.pids_limit,
            mem_limit=h.memory,
            memswap_limit=h.memory_swap,
            nano_cpus=h.nano_cpus,
            ulimits=[docker.types.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in h.ulimits],
            tmpfs=dict(h.tmpfs),
            mounts=mounts or None,
            storage_opt={"size": str(storage_size)} if storage_size else None,
            network_mode=h.network_mode,
            log_config=docker.types.LogConfig(
                type=h.log_config["type"], config=h.log_config["config"]
            ),
            init=h.init,
            privileged=h.privileged,
        )
        if h.unmasked_paths:  # what the CLI's systempaths=unconfined sends (API 1.39+)
            host_config["MaskedPaths"], host_config["ReadonlyPaths"] = [], []
        created = await self._call(
            self._api.create_container,
            spec.image,
            command=list(spec.command),
            name=spec.name,
            user=h.user,
            labels=dict(spec.labels),
            environment=dict(spec.environment),
            host_config=host_config,
            stdin_open=spec.stdin_open,
            detach=not spec.stdin_open,
            entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
        )
        if storage_size:
            self._storage_quota = True
        return str(created["Id"])

    async def start_with_stdin(self, container_id: str, data: bytes) -> None:
        """Start a container and write ``data`` to its stdin, then close it.

        This is how secrets reach the runner: they never appear in the container's Env or Cmd
        (``docker inspect``) and never touch the disk. The container must have been created
        with ``stdin_open`` (docker-py then sets StdinOnce, so stdin closes when we detach).
        """

        def run() -> None:
            try:
                attached = self._api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
                raw: socket.socket = getattr(attached, "_sock", attached)
                try:
                    self._api.start(container_id)
                    raw.sendall(data)
                finally:
                    raw.close()
                    attached.close()
            except _DOCKER_ERRORS as exc:
                raise _translate(exc) from exc

        await trio.to_thread.run_sync(run, limiter=self._control)

    async def start(self, container_id: str) -> None:
        await self._call(self._api.start, container_id)

    async def wait_for_log(self, container_id: str, needle: str) -> bool:
        """Follow the container's output until a line contains ``needle`` (True) or the
        container's output ends, i.e. it exited (False). The caller bounds the wait; a
        cancelled wait leaves its thread to end when the container goes."""

        def run() -> bool:
            try:
                stream = self._api.logs(container_id, stream=True, follow=True)
            except _DOCKER_ERRORS as exc:
                raise _translate(exc) from exc
            pending = b""
            try:
                for chunk in stream:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    if any(needle.encode() in line for line in lines):
                        return True
                return needle.encode() in pending
            except _DOCKER_ERRORS as exc:
                raise _translate(exc) from exc
            finally:  # the stream's socket and its HTTP response, not left to the collector
                stream.close()
                response = getattr(stream, "_response", None)
                if response is not None:
                    response.close()

        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)

    async def logs_tail(self, container_id: str, *, lines: int) -> str:
        """The last ``lines`` lines of the container's output (stdout and stderr)."""
        raw = await self._call(self._api.logs, container_id, tail=lines)
        return bytes(raw).decode("utf-8", "replace").rstrip()

    async def exec_root(self, container_id: str, command: tuple[str, ...]) -> tuple[int, str]:
        """Run ``command`` as root in a running container; its exit code and output."""

        def run() -> tuple[int, str]:
            try:
                created = self._api.exec_create(container_id, list(command), user="0")
                output = self._api.exec_start(created["Id"])
                code = self._api.exec_inspect(created["Id"]).get("ExitCode")
            except _DOCKER_ERRORS as exc:
                raise _translate(exc) from exc
            return int(code if code is not None else -1), bytes(output).decode("utf-8", "replace")

        return await trio.to_thread.run_sync(run, limiter=self._control)

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        """Create a named local volume (an existing one of that name is kept: idempotent)."""
        await self._call(self._api.create_volume, name, labels=dict(labels))

    async def remove_volume(self, name: str) -> bool:
        """Remove a named volume; False if it was already gone."""
        try:
            await self._call(self._api.remove_volume, name, force=True)
        except ContainerNotFound:
            return False
        return True

    async def info(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(self._api.info)
        return result

    async def stop(self, container_id: str, *, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (Docker's own stop sequence)."""
        await self._call(self._api.stop, container_id, timeout=int(grace))

    async def remove(self, container_id: str) -> bool:
        """Force-remove a container and its anonymous volumes; False if it was already gone."""
        try:
            await self._call(self._api.remove_container, container_id, force=True, v=True)
        except ContainerNotFound:
            return False
        return True

    async def inspect(self, container_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(self._api.inspect_container, container_id)
        return result

    async def stats(self, container_id: str) -> ContainerUsage:
        """One stats sample (``one_shot``: no second sample, so it answers at once)."""
        raw = await self._call(self._api.stats, container_id, stream=False, one_shot=True)
        memory = raw.get("memory_stats") or {}
        cpu = (raw.get("cpu_stats") or {}).get("cpu_usage") or {}
        usage = int(memory.get("usage") or 0)
        return ContainerUsage(
            memory=usage,
            peak_memory=max(usage, int(memory.get("max_usage") or 0)),
            cpu_seconds=int(cpu.get("total_usage") or 0) / 1e9,
        )

    async def disk_usage(self) -> DiskUsage:
        """Bytes each container holds on disk: its writable layer plus the volumes it mounts
        (by container id), and each volume's own size. One ``/system/df`` answers for every
        container at once; the Engine walks each writable layer and volume for it, so callers
        keep it infrequent."""
        raw = await self._call(self._api.df, limiter=self._disk)
        volumes = {
            v.get("Name"): max(0, int((v.get("UsageData") or {}).get("Size") or 0))
            for v in raw.get("Volumes") or []
        }
        containers = {
            c["Id"]: max(0, int(c.get("SizeRw") or 0))
            + sum(
                volumes.get(m.get("Name"), 0)
                for m in c.get("Mounts") or []
                if m.get("Type") == "volume"
            )
            for c in raw.get("Containers") or []
        }
        return DiskUsage(containers=containers, volumes=volumes)

    async def list_managed(self, **labels: str) -> list[ContainerInfo]:
        filters = [f"{MANAGED_LABEL}=true"] + [f"{LABEL_PREFIX}{k}={v}" for k, v in labels.items()]
        rows = await self._call(self._api.containers, all=True, filters={"label": filters})
        return [
            ContainerInfo(
                id=row["Id"],
                name=(row.get("Names") or ["?"])[0].lstrip("/"),
                labels=row.get("Labels") or {},
                state=row.get("State", ""),
            )
            for row in rows
        ]

    async def list_managed_objects(self, **labels: str) -> list[ManagedObject]:
        """gantryd's labelled volumes and networks."""
        filters = [f"{MANAGED_LABEL}=true"] + [f"{LABEL_PREFIX}{k}={v}" for k, v in labels.items()]
        volumes = await self._call(self._api.volumes, filters={"label": filters})
        networks = await self._call(self._api.networks, filters={"label": filters})
        found = [
            ManagedObject(kind="volume", name=v["Name"], labels=v.get("Labels") or {})
            for v in (volumes or {}).get("Volumes") or []
        ]
        found += [
            ManagedObject(kind="network", name=n["Name"], labels=n.get("Labels") or {})
            for n in networks or []
        ]
        return found

    async def remove_object(self, obj: ManagedObject) -> bool:
        """Remove a volume or network; False if it was already gone."""
        fn = self._api.remove_volume if obj.kind == "volume" else self._api.remove_network
        try:
            await self._call(fn, obj.name)
        except ContainerNotFound:
            return False
        return True

    @asynccontextmanager
    async def events(
        self, *, since: int | None = None, instance: str | None = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[ContainerEvent]]:
        """Stream start/die/oom/destroy events of gantryd's containers (of ``instance``'s only,
        when given: the Engine filters, so another gantryd's or a test's containers on the same
        Engine cost this process nothing).

        The blocking stream runs in its own thread on its own client (never behind the control
        limiter); leaving the context closes the stream, which ends the thread.
        """
        api = self._client(self._api.api_version)  # no version round trip in the event loop
        send, receive = trio.open_memory_channel[ContainerEvent](64)
        stream: Any = None

        def pump(token: trio.lowlevel.TrioToken) -> None:
            nonlocal stream
            try:
                stream = api.events(
                    since=since,
                    decode=True,
                    filters={
                        "type": "container",
                        "label": [f"{MANAGED_LABEL}=true"]
                        + ([f"{INSTANCE_LABEL}={instance}"] if instance else []),
                        "event": ["start", "die", "oom", "destroy"],
                    },
                )
                for raw in stream:
                    attributes = raw.get("Actor", {}).get("Attributes", {})
                    code = attributes.get("exitCode")
                    event = ContainerEvent(
                        action=raw.get("Action", raw.get("status", "")),
                        container_id=raw.get("Actor", {}).get("ID", raw.get("id", "")),
                        labels={k: v for k, v in attributes.items() if k.startswith(LABEL_PREFIX)},
                        exit_code=int(code) if code is not None else None,
                        time_nano=int(raw.get("timeNano", 0)),
                    )
                    trio.from_thread.run(send.send, event, trio_token=token)
            except (trio.Cancelled, trio.RunFinishedError, trio.BrokenResourceError):
                pass
            except _DOCKER_ERRORS:
                pass  # the stream broke: closing the channel tells the consumer to reconnect
            finally:
                with suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(send.close, trio_token=token)

        async with trio.open_nursery() as nursery:
            token = trio.lowlevel.current_trio_token()
            nursery.start_soon(lambda: trio.to_thread.run_sync(pump, token, abandon_on_cancel=True))
            try:
                yield receive
            finally:
                if stream is not None:
                    stream.close()
                api.close()
                nursery.cancel_scope.cancel()
