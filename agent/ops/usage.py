"""Container memory and CPU from their cgroup files: read by the sampler for the metrics, and
shown per runner by ``gantryd status``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Usage:
    memory: int  # bytes
    cpu_seconds: float  # cumulative


# Where Docker puts a container's cgroup: v2 (systemd or cgroupfs driver), then v1.
_CGROUP_V2 = ("system.slice/docker-{id}.scope", "docker/{id}")
_CGROUP_V1 = ("system.slice/docker-{id}.scope", "docker/{id}")


def read_usage(container_id: str, root: Path = Path("/sys/fs/cgroup")) -> Usage | None:
    """Memory and CPU of one container from its cgroup files; None if not found (gone)."""
    try:
        for pattern in _CGROUP_V2:
            base = root / pattern.format(id=container_id)
            if (base / "memory.current").exists():
                memory = int((base / "memory.current").read_text())
                stat = dict(
                    line.split() for line in (base / "cpu.stat").read_text().splitlines() if line
                )
                return Usage(memory, int(stat["usage_usec"]) / 1e6)
        for pattern in _CGROUP_V1:
            rel = pattern.format(id=container_id)
            memory_file = root / "memory" / rel / "memory.usage_in_bytes"
            if memory_file.exists():
                cpu_ns = int((root / "cpuacct" / rel / "cpuacct.usage").read_text())
                return Usage(int(memory_file.read_text()), cpu_ns / 1e9)
    except (OSError, ValueError, KeyError):
        return None  # the container went away while we read
    return None


@dataclass(frozen=True)
class ContainerLoad:
    memory: int  # bytes
    cpu: float  # cores in use since the previous sample


class UsageTracker:
    """Per-container memory and CPU rate, from successive cgroup readings."""

    def __init__(self, root: Path = Path("/sys/fs/cgroup")) -> None:
        self._root = root
        self._last: dict[str, tuple[float, Usage]] = {}
        self.load: dict[str, ContainerLoad] = {}

    def sample_blocking(self, container_ids: Iterable[str], now: float) -> dict[str, ContainerLoad]:
        """Read every container (blocking file reads: run in a thread); forget the gone ones."""
        last, self._last, load = self._last, {}, {}
        for cid in container_ids:
            usage = read_usage(cid, self._root)
            if usage is None:
                continue
            self._last[cid] = (now, usage)
            before = last.get(cid)
            cpu = 0.0
            if before is not None and now > before[0]:
                cpu = max(0.0, (usage.cpu_seconds - before[1].cpu_seconds) / (now - before[0]))
            load[cid] = ContainerLoad(usage.memory, cpu)
        self.load = load
        return load
