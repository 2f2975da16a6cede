#!/usr/bin/env bash
# fetch_prometheus.sh DIR: unpacks Debian's prometheus package (the prometheus server and promtool)
# into DIR/usr/bin for the observability tests: promtool checks the rules and the configuration,
# and a real Prometheus scrapes a running API. Nothing is installed system-wide and no service is
# started (apt-get install would register and start one). Without apt-get, or without the rights
# to refresh its package lists, it says so and the tests that need the binaries are skipped.
set -euo pipefail

dir=${1:?usage: fetch_prometheus.sh DIR}
if [[ -x $dir/usr/bin/promtool && -x $dir/usr/bin/prometheus ]]; then
    exit 0
fi
note() {
    echo "fetch_prometheus.sh: $*; the tests that need Prometheus are skipped" >&2
    exit 0
}
command -v apt-get >/dev/null 2>&1 || note "apt-get not found (put Prometheus' prometheus and promtool on PATH)"
command -v dpkg-deb >/dev/null 2>&1 || note "dpkg-deb not found"

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
download() {
    (cd "$work" && apt-get download prometheus >/dev/null 2>&1)
}
if ! download; then
    # A fresh machine has no package lists yet: refresh them (as root, as CI runs) and try again.
    ((EUID == 0)) || note "apt-get download prometheus failed (run apt-get update as root once)"
    apt-get update -qq >/dev/null 2>&1 || note "apt-get update failed"
    download || note "apt-get download prometheus failed"
fi
dpkg-deb --extract "$work"/prometheus_*.deb "$work/root"
mkdir -p "$dir/usr/bin"
cp "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$dir/usr/bin/"
echo "fetch_prometheus.sh: $("$dir/usr/bin/promtool" --version 2>&1 | head -n 1) in $dir/usr/bin"
