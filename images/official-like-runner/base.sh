#!/bin/bash
# Build (once) the base of the official-like stand-in runner image and print its tag: a
# debootstrap'd Debian 12 minimal tree with upstream's packages, user, groups and sudoers
# (actions/runner: images/Dockerfile), imported into Docker with `docker import`.
#
# debootstrap takes a minute or two, so the tree is cached twice, keyed by a hash of this script
# (which holds the package list and every step that shapes the tree), as
# tests/packaging/build-test-image.sh does: as a Docker image tag, and as a tarball under
# $CACHE_DIR from which a lost image is re-imported without running debootstrap again.
set -euo pipefail
umask 022  # the image's files get their modes from here, whatever umask the caller runs under

CACHE_DIR=${GANTRYD_TEST_CACHE:-/var/cache/gantryd-test}
MIRROR=${GANTRYD_TEST_MIRROR:-http://deb.debian.org/debian}
# Upstream installs "sudo lsb-release gpg-agent software-properties-common curl jq unzip" and git
# (images/Dockerfile). gpg-agent and software-properties-common only serve add-apt-repository
# (they pull in Python); ca-certificates comes with curl upstream through Recommends.
PACKAGES=sudo,lsb-release,curl,ca-certificates,jq,unzip,git

key=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
base="gantryd-test-official-runner-base:$key"
tarball="$CACHE_DIR/official-runner-base-$key.tar"

if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [[ ! -s $tarball ]]; then
        command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
        mkdir -p "$CACHE_DIR"
        root=$(mktemp -d "$CACHE_DIR/official-rootfs.XXXXXX")
        trap 'rm -rf "$root"' EXIT
        debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" >&2
        # The user and group exactly as upstream's images/Dockerfile makes them:
        #   adduser --disabled-password --gecos "" --uid 1001 runner   (Ubuntu's adduser: a user
        #     group of the same name, a home from /etc/skel, shell /bin/bash)
        #   groupadd docker --gid 123; usermod -aG sudo runner; usermod -aG docker runner
        #   echo "%sudo   ALL=(ALL:ALL) NOPASSWD:ALL" > /etc/sudoers
        #   echo "Defaults env_keep += \"DEBIAN_FRONTEND\"" >> /etc/sudoers
        #   chmod 777 /home/runner
        chroot "$root" groupadd --gid 1001 runner
        chroot "$root" useradd --uid 1001 --gid 1001 --create-home --shell /bin/bash \
            --comment "" runner
        chroot "$root" groupadd docker --gid 123
        chroot "$root" usermod -aG sudo runner
        chroot "$root" usermod -aG docker runner
        # ">" keeps the file's mode (0440 root:root), as it does upstream.
        echo "%sudo   ALL=(ALL:ALL) NOPASSWD:ALL" >"$root/etc/sudoers"
        echo "Defaults env_keep += \"DEBIAN_FRONTEND\"" >>"$root/etc/sudoers"
        chmod 777 "$root/home/runner"
        # Upstream: "mkdir -p /usr/local/lib/docker/cli-plugins" (buildx itself is not copied).
        mkdir -p "$root/usr/local/lib/docker/cli-plugins"
        : >"$root/etc/machine-id"
        # Upstream: "rm -rf /var/lib/apt/lists/*" after each install; docs and man pages are
        # dropped as Ubuntu's minimised base image (runtime-deps:8.0-noble) drops them.
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
            "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
            "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
        tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
    fi
    docker import "$tarball" "$base" >/dev/null
fi
echo "$base"

