#!/bin/sh
# Build the stand-in runner image (default tag gantryd/stand-in-runner:latest) with no registry:
# FROM scratch plus Debian's static busybox, prepared in a temporary build context and built by
# Docker's legacy builder. Idempotent: an unchanged context is fully cached and yields the same
# image id.   Usage: images/runner/build.sh [TAG]      (BUSYBOX=/path/to/static/busybox)
set -eu
umask 022  # the image's files get their modes from here, whatever umask the caller runs under

here=$(cd "$(dirname "$0")" && pwd)
tag=${1:-gantryd/stand-in-runner:latest}
busybox=${BUSYBOX:-/bin/busybox}

if [ ! -x "$busybox" ]; then
    echo "build.sh: $busybox not found; install Debian's busybox-static (apt-get install busybox-static)" >&2
    exit 1
fi
if command -v ldd >/dev/null 2>&1 && ldd "$busybox" >/dev/null 2>&1; then
    echo "build.sh: $busybox is dynamically linked; the image has no libc, install busybox-static" >&2
    exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT INT TERM
root="$ctx/rootfs"
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" "$root/tmp" \
    "$root/home" "$ctx/runner"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
# One symlink per applet, where Debian's busybox would put it (bin/sh, usr/bin/env, ...).
"$busybox" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$root/$applet"
done
cp "$here/passwd" "$here/group" "$root/etc/"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 1777 "$root/tmp"
cp "$here/run.sh" "$ctx/runner/run.sh"
chmod 0755 "$ctx/runner" "$ctx/runner/run.sh"
cp "$here/Dockerfile" "$ctx/Dockerfile"
# Fixed timestamps keep the build cache valid across runs (COPY checksums ignore mtimes, but be
# explicit about not depending on them).
find "$ctx" -exec touch -h -d "2020-01-01 00:00:00" {} + 2>/dev/null || true

DOCKER_BUILDKIT=0 docker build --quiet --network none --tag "$tag" "$ctx" >/dev/null
echo "$tag"
