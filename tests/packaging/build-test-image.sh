#!/bin/bash
# Build (once) the Debian 12 image with systemd that the packaging test boots, and print its tag.
#
# debootstrap is slow (minutes), so the result is cached twice, both keyed by a hash of this script
# (which holds the package list): as a Docker image tag, and as a tarball under $CACHE_DIR, from
# which a lost image is re-imported without running debootstrap again.
set -euo pipefail
umask 022  # the image's files get their modes from here, whatever umask the caller runs under

CACHE_DIR=${GANTRYD_TEST_CACHE:-/var/cache/gantryd-test}
MIRROR=${GANTRYD_TEST_MIRROR:-http://deb.debian.org/debian}
# What `apt install ./gantryd_*.deb` needs already present, so the test installs offline:
# systemd as PID 1, gantryd's Depends (python3.11, docker.io) and a little to look around with.
PACKAGES=systemd,systemd-sysv,dbus,python3.11,docker.io,procps

key=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
tag="gantryd-test-debian12:$key"
tarball="$CACHE_DIR/debian12-systemd-$key.tar"

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi

if [[ ! -s $tarball ]]; then
    command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
    mkdir -p "$CACHE_DIR"
    root=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" >&2
    # The host's Docker Engine is used through its mounted socket: never start one inside.
    for unit in docker.service docker.socket containerd.service; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    # Units that only make noise or fail in a container.
    for unit in systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
        getty@tty1.service console-getty.service systemd-firstboot.service; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    : >"$root/etc/machine-id"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi

docker import --change 'CMD ["/sbin/init"]' "$tarball" "$tag" >&2
echo "$tag"
