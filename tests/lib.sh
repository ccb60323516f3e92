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
