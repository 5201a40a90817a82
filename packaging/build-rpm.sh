#!/bin/bash
# Build dist/gantryd-<version>-0.experimental.x86_64.rpm (`make rpm`), EXPERIMENTAL: the same file
# tree as the .deb (build-root.sh), packed by rpmbuild. Needs root, Debian's python3.11 and
# python3.11-venv, and rpmbuild (apt-get install rpm). GANTRYD_VERSION and GANTRYD_DIST as in
# build-deb.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(dirname "$here")

command -v rpmbuild >/dev/null || { echo "build-rpm.sh: rpmbuild is missing: apt-get install rpm" >&2; exit 1; }
upstream=$(/usr/bin/python3.11 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$src/pyproject.toml")
version=${GANTRYD_VERSION:-$upstream}
dist=${GANTRYD_DIST:-$src/dist}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash "$here/build-root.sh" "$work/root" /usr/lib/systemd/system /usr/share/doc/gantryd
install -m 0644 "$here/debian/copyright.in" "$work/root/usr/share/doc/gantryd/copyright"

# rpm versions may not contain "-"; "~" sorts before release as in dpkg.
sed -e "s|@VERSION@|${version//-/\~}|" -e "s|@ROOT@|$work/root|" "$here/gantryd.spec.in" >"$work/gantryd.spec"
rpmbuild --quiet -bb --define "_topdir $work/rpmbuild" --define "_rpmdir $work/out" \
    --define '_build_id_links none' "$work/gantryd.spec" >&2
mkdir -p "$dist"
out=$(find "$work/out" -name '*.rpm' -print -quit)
cp "$out" "$dist/"
echo "$dist/$(basename "$out")"
