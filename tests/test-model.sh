#!/bin/sh
# Model test: tests/model.py hammers two devices at once over 3
# connections each (up to 4 requests in flight per connection) with
# random writes, write-zeroes and trims at unaligned offsets across
# 64 KiB chunk boundaries, checks every byte it reads and every "zero"
# extent against an exact model, then reads both devices in full from
# fresh connections: neither device may show the other's data or lose
# any of its own.  MODEL_SECONDS (default 20) sets the run time;
# MODEL_SEED replays a run.
. "$(dirname "$0")/lib.sh"

start_server model chunk-size=64K name=left:size=24M name=right:size=24M
/usr/bin/python3 "$top/tests/model.py" --seconds "${MODEL_SECONDS:-20}" \
    ${MODEL_SEED:+--seed "$MODEL_SEED"} "$(uri left)" "$(uri right)" ||
    fail "model.py found a mismatch (see above)"
kill -0 "$server_pid" || fail "server died"
if grep -q 'error' "$log"; then
    cat "$log"; fail "the server logged errors"
fi
