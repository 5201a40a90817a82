#!/bin/bash
# Build (once) the local Docker-in-Docker daemon image and print its tag: a debootstrap'd Debian 12
# minbase tree with Debian's docker.io (dockerd, containerd, runc, tini), imported with
# `docker import`, no registry. It stands in for the official `docker:dind` in tests: gantryd runs
# it as a pool's sidecar (`docker = "dind"`) with the command `dockerd --host=unix://... ...`,
# so the image needs no entrypoint (Debian's dockerd is on PATH, as docker:dind's is).
#
# As images/official-like-runner/base.sh does, the tree is cached twice, keyed by a hash of this
# script: as a Docker image tag, and as a tarball under $CACHE_DIR from which a lost image is
# re-imported without running debootstrap again.
# Usage: images/dind/build.sh [TAG]        (default tag gantryd/test-dind:latest)
set -euo pipefail
umask 022

CACHE_DIR=${GANTRYD_TEST_CACHE:-/var/cache/gantryd-test}
MIRROR=${GANTRYD_TEST_MIRROR:-http://deb.debian.org/debian}
# docker.io brings containerd, runc, tini and iptables; ca-certificates for a registry mirror
# over TLS. No docker CLI plugins: the daemon is all the sidecar runs.
PACKAGES=docker.io,ca-certificates,iproute2,procps
tag=${1:-gantryd/test-dind:latest}

key=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
keyed="gantryd-test-dind:$key"
tarball="$CACHE_DIR/dind-$key.tar"

if ! docker image inspect "$keyed" >/dev/null 2>&1; then
    if [[ ! -s $tarball ]]; then
        command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
        mkdir -p "$CACHE_DIR"
        root=$(mktemp -d "$CACHE_DIR/dind-rootfs.XXXXXX")
        trap 'rm -rf "$root"' EXIT
        debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" >&2
        # The runner (uid 1001, in group docker 123 as upstream's image makes it) reaches the
        # socket through the group gantryd gives dockerd (--group=123); name it here too.
        if chroot "$root" getent group docker >/dev/null; then
            chroot "$root" groupmod --gid 123 docker
        else
            chroot "$root" groupadd --gid 123 docker
        fi
        : >"$root/etc/machine-id"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
            "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
            "$root"/var/log/*.log "$root"/var/cache/debconf/*-old "$root"/var/lib/docker
        tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
    fi
    # docker:dind declares its data root a volume; gantryd mounts a per-job volume there anyway.
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'VOLUME /var/lib/docker' \
        --change 'LABEL io.gantryd.test-image=dind' \
        "$tarball" "$keyed" >/dev/null
fi
docker tag "$keyed" "$tag"
echo "$tag"
