# memblock shell-test helpers; source this from a test script.
#
# A test script exits 0 to pass, 77 to skip (optional extras only, with
# a reason on stdout), anything else to fail.  Every server it starts is
# killed and every temporary file removed on any exit path.

set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
MEMBLOCK_SO=${MEMBLOCK_SO:-$top/memblock.so}
# nbdsh and the libnbd Python tests need Debian's python3 (python3-libnbd).
PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
export PATH

[ -f "$MEMBLOCK_SO" ] || { echo "FAIL: $MEMBLOCK_SO is not built"; exit 1; }

# Short paths: a Unix socket path must fit in 108 bytes.
tmp=$(mktemp -d /tmp/mbt.XXXXXX)
_pids=""

_cleanup() {
    status=$?
    for p in $_pids; do
        kill "$p" 2>/dev/null || :
    done
    for p in $_pids; do
        # Wait for the server to go so its socket is gone before rm.
        i=0
        while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do
            sleep 0.1; i=$((i + 1))
        done
        kill -9 "$p" 2>/dev/null || :
    done
    rm -rf "$tmp"
    exit $status
}
trap _cleanup EXIT
trap 'exit 130' INT TERM

# fail MESSAGE: stop the test with a message.
fail() {
    echo "FAIL: $*"
    exit 1
}

# start_server NAME [nbdkit args after the plugin...]
# Start nbdkit with memblock on $tmp/NAME.sock, logging to $tmp/NAME.log.
# Sets $sock and $log.  Fails the test if the server does not come up.
start_server() {
    name=$1; shift
    start_plugin "$name" "$MEMBLOCK_SO" "$@"
}

# start_plugin NAME PLUGIN [args...]: start_server for any nbdkit plugin.
start_plugin() {
    name=$1; plugin=$2; shift 2
    sock=$tmp/$name.sock
    log=$tmp/$name.log
    pidfile=$tmp/$name.pid
    ${NBDKIT_WRAPPER:-} nbdkit -f -U "$sock" -P "$pidfile" ${NBDKIT_EXTRA:-} \
        "$plugin" "$@" >"$log" 2>&1 &
    bgpid=$!
    _pids="$_pids $bgpid"
    i=0
    while [ ! -s "$pidfile" ]; do
        if ! kill -0 "$bgpid" 2>/dev/null; then
            cat "$log"
            fail "nbdkit $plugin $* did not start"
        fi
        [ $i -lt 600 ] || fail "nbdkit $plugin $* took over 60 s to start"
        sleep 0.1; i=$((i + 1))
    done
    server_pid=$bgpid
}

# stop_server: stop the last server started and wait for it to exit.
stop_server() {
    kill "$server_pid"
    wait "$server_pid" || :
}

# uri EXPORT [SOCKET]: the nbd+unix URI of an export.
uri() {
    echo "nbd+unix:///$1?socket=${2:-$sock}"
}

# expect_fail DESCRIPTION COMMAND...: COMMAND must exit non-zero.
expect_fail() {
    what=$1; shift
    if "$@" >"$tmp/expect_fail.out" 2>&1; then
        cat "$tmp/expect_fail.out"
        fail "$what: expected failure, but it succeeded"
    fi
}

# expect_grep PATTERN FILE: FILE must contain PATTERN (grep -E).
expect_grep() {
    grep -Eq -- "$1" "$2" || { cat "$2"; fail "no '$1' in $2"; }
}

# Start-up checks (run_nbdkit, bad, good) read these, each unset by
# default: $run, the --run command (true); $limit, the time limit in
# seconds (30); $wrap, put before ${NBDKIT_WRAPPER:-} (setpriv ...);
# $inner_wrap, put after it, just before nbdkit (env PATH=..., which
# must not hide the wrapper's own command); $nbdkit_bin, the nbdkit to
# run (an absolute path if $inner_wrap changes PATH); $run_check, a
# command run with a description after each bad and good run.  The
# socket is in $tmp, not `-U -` (that leaves /tmp/nbdkitXXXXXX behind
# when the plugin refuses to start).

# run_nbdkit ARGS...: nbdkit memblock ARGS runs $run; output $tmp/out, rc $rc.
run_nbdkit() {
    rc=0
    rm -f "$tmp/run.sock"
    timeout -k 5 ${limit:-30} ${wrap:-} ${NBDKIT_WRAPPER:-} ${inner_wrap:-} \
        "${nbdkit_bin:-nbdkit}" -U "$tmp/run.sock" ${NBDKIT_EXTRA:-} \
        "$MEMBLOCK_SO" "$@" --run "${run:-true}" >"$tmp/out" 2>&1 || rc=$?
    tried=$((${tried:-0} + 1))
}

# bad WHO WHY ARGS...: ARGS stop nbdkit, one error line naming WHO, saying WHY.
bad() {
    who=$1 why=$2; shift 2
    run_nbdkit "$@"
    what="nbdkit memblock $(printf '%s ' "$@" | cut -c1-120)"
    [ $rc -ne 124 ] && [ $rc -ne 137 ] ||
        fail "$what: nbdkit hung (killed after ${limit:-30} s)"
    [ $rc -ne 0 ] || { cat "$tmp/out"; fail "$what: accepted"; }
    [ $rc -lt 128 ] || { cat "$tmp/out"; fail "$what: crashed (exit $rc)"; }
    grep '^nbdkit: .*error: ' "$tmp/out" >"$tmp/errors" || :
    if [ "$(wc -l <"$tmp/errors")" -ne 1 ]; then
        cat "$tmp/out"; fail "$what: expected exactly one nbdkit error line"
    fi
    grep -qF -- "$who" "$tmp/errors" ||
        { cat "$tmp/out"; fail "$what: the error line does not name '$who'"; }
    grep -Eq -- "$why" "$tmp/errors" ||
        { cat "$tmp/out"; fail "$what: the error line does not say '$why'"; }
    [ -z "${run_check:-}" ] || $run_check "$what"
    echo "ok (exit $rc): $(cut -c1-200 "$tmp/errors")"
}

# good ARGS...: ARGS must be accepted ($run must succeed).
good() {
    run_nbdkit "$@"
    [ $rc -eq 0 ] ||
        { cat "$tmp/out"; fail "nbdkit memblock $*: refused (exit $rc)"; }
    [ -z "${run_check:-}" ] || $run_check "nbdkit memblock $*"
}

# client NAME [PYTHON]: connect h to export NAME on $sock, then run PYTHON.
client() {
    /usr/bin/python3 -c "
import nbd, sys
h = nbd.NBD()
h.set_export_name(sys.argv[1])
h.connect_unix(sys.argv[2])
exec(sys.argv[3])
" "$1" "$sock" "${2:-pass}"
}

# pick DIR CAP_BYTES: paths from / of DIR's files under 4 MiB, up to CAP in all.
pick() {
    find "$1" -type f -readable -size -4M -printf '%s %p\n' |
        LC_ALL=C sort -k2 |
        awk -v cap="$2" '{ if (t + $1 <= cap) { t += $1; print substr($0, length($1) + 3) } }'
}
