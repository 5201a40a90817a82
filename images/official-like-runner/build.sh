#!/bin/bash
# Build the stand-in runner image that keeps the official image's contract (default tag
# gantryd/stand-in-runner-official:latest), with no registry: FROM the debootstrap'd Debian 12
# base that base.sh builds and caches, plus /home/runner and the docker CLI, as upstream's
# actions/runner: images/Dockerfile adds them. An unchanged context is fully cached by Docker's
# legacy builder and yields the same image id.
# Usage: images/official-like-runner/build.sh [TAG]      (DOCKER_CLI=/path/to/docker)
set -euo pipefail
umask 022  # the image's files get their modes from here, whatever umask the caller runs under

here=$(cd "$(dirname "$0")" && pwd)
tag=${1:-gantryd/stand-in-runner-official:latest}
DOCKER_CLI=${DOCKER_CLI:-/usr/bin/docker}

base=$(bash "$here/base.sh")
if [[ ! -x $DOCKER_CLI ]]; then
    echo "build.sh: $DOCKER_CLI not found: the image carries the host's docker CLI (Debian's docker.io)" >&2
    exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp -a "$here/home" "$ctx/home"
cp "$DOCKER_CLI" "$ctx/docker"
sed "s|@BASE@|$base|" "$here/Dockerfile" >"$ctx/Dockerfile"
chmod -R u=rwX,go=rX "$ctx/home"
chmod 0755 "$ctx/home/run.sh" "$ctx/home/run-helper.sh.template" "$ctx/home/safe_sleep.sh" \
    "$ctx/home/config.sh" "$ctx/home/bin/Runner.Listener" "$ctx/docker"
# Fixed timestamps: the build cache does not depend on checkout times.
find "$ctx" -exec touch -h -d "2020-01-01 00:00:00" {} +

DOCKER_BUILDKIT=0 docker build --quiet --network none --tag "$tag" "$ctx" >/dev/null
echo "$tag"
