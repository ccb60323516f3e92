#!/bin/sh
# Model test on compressed devices: tests/model.py (see test-model.sh)
# with --compressible, so writes carry every kind of data a compressed
# store packs differently (same-filled 8-byte words, short patterns,
# text, random data kept raw, zeroes, and mixes of them inside one
# 16 KiB unit), over two devices at once: "left" takes the server's
# compress=zstd, "right" its own :compress=lz4.  Writes, write-zeroes
# and trims at unaligned offsets across 64 KiB chunks and 16 KiB units;
# every byte read and every "zero" extent is checked against the model,
# then both devices are read in full from fresh connections.  A device
# a client creates (dynamic=true) takes the codec its connect string
# names, and a later connect string naming another codec is refused.
# The listing must then show each device with its own codec.
# MODEL_SECONDS (default 10) sets the run time; MODEL_SEED replays a run.
. "$(dirname "$0")/lib.sh"

start_server model chunk-size=64K compress=zstd dynamic=true \
    name=left:size=24M name=right:size=24M:compress=lz4
/usr/bin/python3 "$top/tests/model.py" --compressible \
    --seconds "${MODEL_SECONDS:-10}" ${MODEL_SEED:+--seed "$MODEL_SEED"} \
    "$(uri left)" "$(uri right)" ||
    fail "model.py found a mismatch (see above)"
kill -0 "$server_pid" || fail "server died"
if grep -q 'error' "$log"; then
    cat "$log"; fail "the server logged errors"
fi

# A client's connect string picks the codec of a device it creates; the
# same name with another codec is refused, with its own codec allowed.
/usr/bin/python3 - "$(uri "dyn:size=1M:compress=lz4")" "$(uri dyn)" \
    "$(uri "dyn:compress=lz4")" <<'PY' ||
import sys, nbd
data = (b"dynamic " * 4096)[:20000] + bytes(30000) + b"\xa5" * 16384
for uri in sys.argv[1:]:
    h = nbd.NBD()
    h.connect_uri(uri)
    assert h.get_size() == 1 << 20
    if uri == sys.argv[1]:
        h.pwrite(data, 4095)
    assert h.pread(len(data), 4095) == data, "dyn: data differs"
    h.shutdown()
PY
    fail "the dynamic device dyn:size=1M:compress=lz4 failed"
expect_fail "dyn with another codec" nbdinfo "$(uri "dyn:compress=zstd")"

# Each device says how its data is kept: "N of data in M (codec)".
nbdinfo --list "nbd+unix://?socket=$sock" >"$tmp/list" ||
    fail "nbdinfo --list failed"
grep -E 'export=|description' "$tmp/list"
for dev_codec in left:24:zstd right:24:lz4 dyn:1:lz4; do
    dev=${dev_codec%%:*} codec=${dev_codec##*:}
    size=${dev_codec#*:} size=${size%:*}
    line=$(grep -A1 "^export=\"$dev\":" "$tmp/list" | grep description) ||
        { cat "$tmp/list"; fail "no description for $dev"; }
    echo "$line" | grep -Eq "$size MiB, read-write, .* of data in .* \\($codec\\)\$" ||
        { cat "$tmp/list"; fail "$dev is not listed as compressed with $codec"; }
done
