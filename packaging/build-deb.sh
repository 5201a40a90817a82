#!/bin/bash
# Build dist/gantryd_<version>~deb12_amd64.deb (`make deb`). Needs root, Debian 12's python3.11
# and python3.11-venv, dpkg-deb, objdump and strip (binutils), gzip.
#
# Environment: GANTRYD_VERSION overrides the upstream version from pyproject.toml (the test uses it
# to make a "newer build"); GANTRYD_MAINTAINER sets the Maintainer field; GANTRYD_DIST the output
# directory (default dist/ in the source tree).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(dirname "$here")
PY=/usr/bin/python3.11

die() { echo "build-deb.sh: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing"
command -v objdump >/dev/null || die "objdump is missing: apt-get install binutils"

upstream=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$src/pyproject.toml")
version="${GANTRYD_VERSION:-$upstream}~deb12"
maintainer=${GANTRYD_MAINTAINER:-gantryd developers <gantryd@users.noreply.github.com>}
dist=${GANTRYD_DIST:-$src/dist}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
doc=/usr/share/doc/gantryd
bash "$here/build-root.sh" "$root" /lib/systemd/system "$doc"

umask 022
# Debian-specific files.
install -m 0644 "$here/debian/copyright.in" "$root$doc/copyright"
printf '%s\n' \
    "gantryd ($version) bookworm; urgency=medium" "" \
    "  * gantryd $upstream built for Debian 12 with $("$PY" -V)." "" \
    " -- $maintainer  $(date -R -u)" | gzip -9n >"$root$doc/changelog.gz"
install -D -m 0644 "$here/debian/lintian-overrides" "$root/usr/share/lintian/overrides/gantryd"

# Depends: the system Python the venv was made with (at least its version), and the newest glibc
# symbol version that any bundled extension module needs.
py_version=$(dpkg-query -W -f '${Version}' python3.11)
glibc=$(find "$root/opt" -name '*.so*' -type f -exec objdump -T {} + 2>/dev/null |
    grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)

install -d "$root/DEBIAN"
sed -e "s|@VERSION@|$version|" -e "s|@MAINTAINER@|$maintainer|" \
    -e "s|@INSTALLED_SIZE@|$(du -sk --exclude=DEBIAN "$root" | cut -f1)|" \
    -e "s|@PYTHON_DEP@|python3.11 (>= ${py_version%%-*})|" -e "s|@GLIBC@|${glibc:-2.36}|" \
    "$here/debian/control.in" >"$root/DEBIAN/control"
echo /etc/gantryd/config.toml >"$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$here/debian/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print0 | sort -z |
    xargs -0 md5sum | sed 's|  \./|  |') >"$root/DEBIAN/md5sums"

mkdir -p "$dist"
out="$dist/gantryd_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz -z6 --build "$root" "$out" >/dev/null
echo "$out"
