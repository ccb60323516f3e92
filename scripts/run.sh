#!/bin/sh
# Serve memblock in the foreground on localhost (what `make run` does).
#   PORT=10809            TCP port
#   ARGS="name=disk0"     plugin parameters (connect strings and others)
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
port=${PORT:-10809}
args=${ARGS:-name=disk0}
url=nbd://localhost:$port

cat <<EOF
memblock: serving [$args] on $url until Ctrl-C (data lives until then).
Connect with, for example:
  nbdinfo --list $url
  qemu-io -f raw -c 'write -P 0x55 0 1M' $url/disk0
  qemu-io -f raw -r -c 'read -P 0x55 0 1M' $url/disk0:ro
  qemu-img info -f raw $url/disk0
  nbdsh -u $url/disk0 -c 'print(h.get_size())'
EOF
# shellcheck disable=SC2086  # ARGS is a list of parameters
exec nbdkit -f -i 127.0.0.1 -p "$port" "$top/memblock.so" $args
