#!/bin/sh
# Run every memblock test: the Check unit tests in BUILD, then each
# tests/test-*.sh against the real plugin.  Ends with "N passed, N failed".
# Usage: tests/run-tests.sh [BUILD]    (TESTS="a b" picks shell tests)
set -u

top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build/plain}
logs=$top/$build/test-logs
mkdir -p "$logs"
passed=0 failed=0 skipped=0 failures=""

# Run Check binary $1; add its checks to the totals.
run_unit() {
    name=$(basename "$1")
    start=$(date +%s)
    CK_FORK=${CK_FORK:-yes} "$1" >"$logs/$name.log" 2>&1
    rc=$?
    line=$(grep -E '^[0-9]+%: Checks: [0-9]+' "$logs/$name.log" | tail -n 1)
    if [ -z "$line" ]; then
        failed=$((failed + 1)); failures="$failures $name"
        echo "FAIL $name (no Check summary, exit $rc)"; tail -n 20 "$logs/$name.log"
        return
    fi
    n=$(echo "$line" | sed -E 's/.*Checks: ([0-9]+).*/\1/')
    f=$(echo "$line" | sed -E 's/.*Failures: ([0-9]+).*/\1/')
    e=$(echo "$line" | sed -E 's/.*Errors: ([0-9]+).*/\1/')
    passed=$((passed + n - f - e))
    failed=$((failed + f + e))
    if [ $((f + e)) -ne 0 ] || [ $rc -ne 0 ]; then
        [ $((f + e)) -ne 0 ] || failed=$((failed + 1))
        failures="$failures $name"
        echo "FAIL $name: $line"; grep -E ':[EF]:' "$logs/$name.log" | head -n 20
    else
        echo "PASS $name: $line ($(( $(date +%s) - start )) s)"
    fi
}

for t in "$top/$build"/test-*; do
    case "$t" in *.log|*/test-logs) continue ;; esac
    [ -x "$t" ] && run_unit "$t"
done

# nbdkit_tmpdirs: the /tmp/nbdkitXXXXXX directories that exist, sorted.
# nbdkit makes one for `-U -` and leaves it behind when it fails to
# start; a test must give nbdkit a socket in its own $tmp instead.
nbdkit_tmpdirs() {
    for d in /tmp/nbdkit*; do
        [ -d "$d" ] && echo "$d"
    done | LC_ALL=C sort
}

shell_tests=${TESTS:-$(cd "$top/tests" && ls test-*.sh 2>/dev/null)}
for t in $shell_tests; do
    name=${t%.sh}
    start=$(date +%s)
    # Shell tests run one at a time, so a directory that appears while
    # one runs is that test's (unless something else on the machine runs
    # `nbdkit -U -` at the same moment: the names are printed).
    nbdkit_tmpdirs >"$logs/.$name.tmpdirs"
    sh "$top/tests/$t" >"$logs/$name.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    leaked=$(nbdkit_tmpdirs | LC_ALL=C comm -13 "$logs/.$name.tmpdirs" -)
    rm -f "$logs/.$name.tmpdirs"
    if [ -n "$leaked" ]; then
        n=$(echo "$leaked" | wc -l)
        echo "FAIL: $name left $n /tmp/nbdkit* directories behind" \
             "(nbdkit -U -?):" $(echo "$leaked" | head -n 5) \
             "$([ "$n" -le 5 ] || echo ...)" >>"$logs/$name.log"
        [ $rc -ne 0 ] && [ $rc -ne 77 ] || rc=1
    fi
    case $rc in
        0)  passed=$((passed + 1)); echo "PASS $name ($secs s)" ;;
        77) skipped=$((skipped + 1))
            echo "SKIP $name: $(tail -n 1 "$logs/$name.log")" ;;
        *)  failed=$((failed + 1)); failures="$failures $name"
            echo "FAIL $name (exit $rc, $secs s); last lines of $logs/$name.log:"
            tail -n 25 "$logs/$name.log" | sed 's/^/    /' ;;
    esac
done

[ -z "$failures" ] || echo "failed:$failures"
if [ $skipped -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ $failed -eq 0 ]
