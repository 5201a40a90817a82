"""A Debian 12 container with systemd as PID 1, driven like a freshly installed host.

The packaging test installs the .deb into it with apt and manages gantryd with systemctl. systemd
needs CAP_SYS_ADMIN and an unfiltered seccomp in the container to apply the unit's sandboxing
(mount namespaces, its own seccomp filters); the host's Docker socket is mounted so gantryd can
start runner containers, and the network is the host's so everything stays on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BUILD_IMAGE = Path(__file__).with_name("build-test-image.sh")
DOCKER_SOCKET = Path("/var/run/docker.sock")


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], check=True, capture_output=True, text=True, timeout=timeout
    )


def cached_image() -> str:
    """The cached systemd image's tag; debootstraps it only when no cached copy exists."""
    done = subprocess.run(
        ["bash", str(BUILD_IMAGE)], check=True, capture_output=True, text=True, timeout=900
    )
    return done.stdout.strip()


@dataclass
class SystemdBox:
    name: str

    @classmethod
    def start(cls, image: str, name: str) -> SystemdBox:
        docker(
            "run",
            "--detach",
            "--name",
            name,
            "--hostname",
            name,
            "--network",
            "host",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--tmpfs",
            "/tmp",
            "--volume",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "--volume",
            f"{DOCKER_SOCKET}:/run/docker.sock",
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--stop-signal",
            "SIGRTMIN+3",
            image,
        )
        return cls(name)

    def run(
        self, *command: str, check: bool = True, stdin: str | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as root in the box; ``check`` failures show its output."""
        done = subprocess.run(
            ["docker", "exec", "-i", self.name, *command],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)!r} exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def sh(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, check=check)

    def write(self, path: str, data: str, *, mode: str = "0644", owner: str = "root") -> None:
        self.run(
            "install", "-D", "-m", mode, "-o", owner, "-g", owner, "/dev/stdin", path, stdin=data
        )

    def copy_in(self, source: Path, path: str) -> None:
        docker("cp", str(source), f"{self.name}:{path}")

    def exists(self, path: str) -> bool:
        return self.run("test", "-e", path, check=False).returncode == 0

    def unit(self, *properties: str) -> dict[str, str]:
        """Properties of gantryd.service as systemd reports them."""
        out = self.run(
            "systemctl", "show", "gantryd.service", *(f"--property={p}" for p in properties)
        )
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def journal(self) -> str:
        return self.run("journalctl", "--no-pager", "-u", "gantryd.service", check=False).stdout

    def wait_booted(self, deadline: float) -> str:
        """systemd's verdict once start-up has finished: "running" or "degraded"."""
        end = time.monotonic() + deadline
        while True:
            # `is-system-running --wait` needs systemd to accept connections: retry until it does.
            state = self.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=deadline
            ).stdout.strip()
            if state in ("running", "degraded"):
                return state
            if time.monotonic() > end:
                raise AssertionError(f"systemd in {self.name} did not finish booting: {state!r}")
            time.sleep(0.2)

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "--force", self.name], capture_output=True, check=False)
