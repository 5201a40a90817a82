#!/bin/bash
# Lay out gantryd's installed file tree under DESTDIR, shared by build-deb.sh and build-rpm.sh.
#
#   bash packaging/build-root.sh DESTDIR UNITDIR DOCDIR
#
# The venv is created by Debian's /usr/bin/python3.11 at its final path, /opt/gantryd, so its
# scripts and pyvenv.cfg need no relocating: a private mount namespace binds DESTDIR/opt over /opt
# for the build only, so the host's own /opt is neither read nor written. Wheels come from PyPI.
set -euo pipefail

PY=/usr/bin/python3.11
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(dirname "$here")

die() { echo "build-root.sh: $*" >&2; exit 1; }

if [[ ${1:-} == --in-namespace ]]; then
    # Runs inside `unshare --mount`: /opt is DESTDIR/opt from here on.
    staged_src=$2
    mount --bind "$3" /opt
    "$PY" -m venv /opt/gantryd
    # --isolated: no site or user pip config (local mirrors, find-links); PyPI only.
    pip=(/opt/gantryd/bin/python -m pip --isolated --disable-pip-version-check --no-input)
    [[ -r /etc/ssl/certs/ca-certificates.crt ]] && pip+=(--cert /etc/ssl/certs/ca-certificates.crt)
    "${pip[@]}" install --quiet --no-compile "$staged_src[redis]"
    "${pip[@]}" uninstall --quiet --yes pip setuptools
    # direct_url.json only records the temporary source directory this was built from.
    rm -f /opt/gantryd/lib/python3.11/site-packages/gantryd-*.dist-info/direct_url.json
    sed -i '/direct_url.json/d' /opt/gantryd/lib/python3.11/site-packages/gantryd-*.dist-info/RECORD
    # The package runs one program; the dependencies' own console scripts and activate are noise.
    find /opt/gantryd/bin -mindepth 1 ! -name gantryd ! -name 'python*' -delete
    site=/opt/gantryd/lib/python3.11/site-packages
    # Modules are imported, never executed: no execute bits on them. Extension modules lose
    # their symbol tables (smaller, and what Debian ships).
    find "$site" -type f -perm /111 ! -name '*.so' ! -name '*.so.*' -exec chmod a-x {} +
    find "$site" -type f \( -name '*.so' -o -name '*.so.*' \) -exec strip --strip-unneeded {} +
    PYTHONDONTWRITEBYTECODE=1 /opt/gantryd/bin/gantryd --help >/dev/null ||
        die "the built venv cannot run gantryd"
    find /opt/gantryd -name __pycache__ -type d -prune -exec rm -rf {} +
    if grep -rlI --exclude-dir=__pycache__ -e "$staged_src" -e /root/.pyenv /opt/gantryd; then
        die "the venv refers to the build machine (files listed above)"
    fi
    exit 0
fi

[[ $# -eq 3 ]] || die "usage: build-root.sh DESTDIR UNITDIR DOCDIR"
dest=$1 unitdir=$2 docdir=$3
[[ $EUID -eq 0 ]] || die "run as root: the venv is built at /opt/gantryd in a private mount namespace"
[[ -x $PY ]] || die "$PY is missing: apt-get install python3.11 python3.11-venv"
"$PY" -c 'import ensurepip' 2>/dev/null || die "python3.11 has no venv support: apt-get install python3.11-venv"
for f in pyproject.toml README.md config.example.toml agent/cli.py; do
    [[ -e $src/$f ]] || die "$src/$f is missing"
done

umask 022
# Build from a copy: pip's in-tree build would leave build/ and *.egg-info in the work tree.
staged_src=$(mktemp -d)
trap 'rm -rf "$staged_src"' EXIT
cp -r "$src/pyproject.toml" "$src/README.md" "$src/agent" "$staged_src/"
find "$staged_src" -name __pycache__ -type d -prune -exec rm -rf {} +

mkdir -p "$dest/opt"
unshare --mount --propagation private -- bash "${BASH_SOURCE[0]}" --in-namespace "$staged_src" "$dest/opt"

install -d "$dest/usr/bin"
ln -s /opt/gantryd/bin/gantryd "$dest/usr/bin/gantryd"
install -D -m 0644 "$src/systemd/gantryd.service" "$dest$unitdir/gantryd.service"
install -D -m 0644 "$here/gantryd.8" "$dest/usr/share/man/man8/gantryd.8"
gzip -9n "$dest/usr/share/man/man8/gantryd.8"
install -D -m 0644 "$here/sysusers.conf" "$dest/usr/lib/sysusers.d/gantryd.conf"
install -D -m 0644 "$src/config.example.toml" "$dest/etc/gantryd/config.toml"
install -d "$dest$docdir"
install -m 0644 "$src/README.md" "$src/config.example.toml" "$dest$docdir/"
shopt -s nullglob
docs=("$src"/docs/*.md)
((${#docs[@]})) && install -m 0644 "${docs[@]}" "$dest$docdir/"
# Dashboards and alert rules, when the operations work has added them.
for extra in grafana prometheus; do
    if [[ -d $here/$extra ]]; then
        install -d "$dest$docdir/$extra"
        find "$here/$extra" -maxdepth 1 -type f -exec install -m 0644 {} "$dest$docdir/$extra/" \;
    fi
done
