#!/bin/sh
# A big write into pages that already hold data, raced over a second
# connection by trims and write-zeroes of some of those pages
# (tests/race.py does the work):
#  (a) afterwards each raced page reads as the write's data or as
#      zeroes, and stays so: a 512-byte write into its first 512 bytes
#      leaves the other 3.5 KiB as the first read showed them (a page
#      that the trim gave back and the copy then filled again, with its
#      bit clear, reads as zeroes until that small write "reveals" the
#      big write's data: the page changes its mind);
#  (b) with max-memory=16M, racing writes and trims of the same ranges
#      never take the server's RSS past max-memory (plus slack), and
#      after a trim of the whole device the server holds no more than it
#      did at start-up: pages filled again behind a trim, and so never
#      counted, would bypass the cap and never be given back.
# RACE_SECONDS (default 40) bounds (a), RACE_MEMCAP_SECONDS (default 10)
# bounds (b); RACE_SEED replays a run.
. "$(dirname "$0")/lib.sh"

failed=""       # both parts run; the test fails at the end if one did

# (a) 300 rounds (or 40 s) of a 32 MiB write (two 16 MiB chunks)
# against trims or write-zeroes of 4 of its pages, each trimmed once as
# soon as the write has left the client, so that they land while the
# server copies the write in.  Each nbdkit worker thread keeps a buffer
# as large as the largest request it has served: --threads=4 keeps that
# to 4 x 32 MiB (16 threads, the default, take 550 MiB; the race is
# between two connections, which have their own threads, and catches as
# much with 4).
saved_extra=${NBDKIT_EXTRA:-}
NBDKIT_EXTRA="$saved_extra --threads=4"
start_server race name=disk0:size=64M
NBDKIT_EXTRA=$saved_extra
/usr/bin/python3 "$top/tests/race.py" stability --rounds 300 \
    --seconds "${RACE_SECONDS:-40}" ${RACE_SEED:+--seed "$RACE_SEED"} \
    "$(uri disk0)" || failed="$failed; stability: raced pages changed their mind"
kill -0 "$server_pid" || fail "server died in the stability race"
stop_server

# (b) 8 MiB writes against trims of the same ranges over a 256 MiB
# device with max-memory=16M, then a trim of everything.  Slack, 24 MiB:
# the worker threads' buffers live until their connection closes; with
# --threads=2 they hold 2 x 8 MiB on the writing connection (trims carry
# no data), plus 8 MiB for thread stacks, malloc arenas and libnbd.  The
# same workload with each trim after its write (race.py memcap
# --no-race) peaks at start + 24 MiB (8 MiB of data + the buffers) and
# ends at start + 0.1 MiB.  The end figure is taken after closing the
# connections, so the buffers are gone: it may be start + slack at most.
NBDKIT_EXTRA="$saved_extra --threads=2"
start_server memcap max-memory=16M name=disk0:size=256M
NBDKIT_EXTRA=$saved_extra
/usr/bin/python3 "$top/tests/race.py" memcap \
    --seconds "${RACE_MEMCAP_SECONDS:-10}" ${RACE_SEED:+--seed "$RACE_SEED"} \
    "$(uri disk0)" "$server_pid" $((16 << 20)) $((24 << 20)) ||
    failed="$failed; memcap: the server holds memory past max-memory"
kill -0 "$server_pid" || fail "server died in the memory-cap race"
if grep -v 'refused with ENOSPC' "$log" | grep -q 'error'; then
    cat "$log"; fail "the server logged errors other than ENOSPC"
fi
stop_server
[ -z "$failed" ] || fail "${failed#; } (see above)"
