#!/bin/sh
# Install the Debian 12 packages memblock needs to build, test and benchmark.
# Usage: scripts/install-deps.sh [build|check|bench|deb|all]   (default: all)
# Only missing packages are installed; when all are present this is a no-op.
set -eu

what=${1:-all}

build="gcc make pkg-config nbdkit nbdkit-plugin-dev perl libzstd-dev liblz4-dev libjson-c-dev libnbd-dev"
# e2fsprogs: mkfs.ext4 -d builds the images the clone tests load.
tests="check libnbd-bin python3-libnbd qemu-utils valgrind clang libclang-rt-14-dev e2fsprogs"
guest="guestfish linux-image-amd64"
# qemu-system-common: qemu-storage-daemon, the clone bench's peer.
bench="fio util-linux qemu-system-common"
# `make deb` and tests/test-deb.sh: dpkg-buildpackage (dpkg-dev, in
# build-essential) with debhelper, lintian, and systemd-analyze (systemd).
deb="build-essential debhelper lintian systemd python3"

case "$what" in
    build) want="$build"; norec="" ;;
    check) want="$build $tests $bench $deb"; norec="$guest" ;;
    bench) want="$build $tests $bench"; norec="" ;;
    deb)   want="$build $deb"; norec="" ;;
    all)   want="$build $tests $bench $deb"; norec="$guest" ;;
    *) echo "install-deps.sh: unknown target '$what' (build|check|bench|deb|all)" >&2; exit 2 ;;
esac

# Print the packages of "$@" that dpkg does not report as installed.
missing() {
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
            printf '%s ' "$p"
        fi
    done
}

need=$(missing $want)
need_norec=$(missing $norec)
[ -z "$need$need_norec" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

echo "install-deps.sh: installing: $need $need_norec" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ -n "$need" ]; then
    $SUDO apt-get install -y -qq $need >/dev/null
fi
if [ -n "$need_norec" ]; then
    $SUDO apt-get install -y -qq --no-install-recommends $need_norec >/dev/null
fi
