#!/bin/sh
# Bad :file=, :from=, :size= and :temp input is refused cleanly.
#
# Proves that:
#  - every bad input in the spec's list, on the command line (missing,
#    unreadable or directory file=; a FIFO or a character device as
#    file=, refused at once rather than waiting for a writer; a file
#    larger than :size=; image
#    data past max-memory; from= an unknown or writable device; a clone
#    cycle; from= with file=; :size= on a clone), stops nbdkit at
#    start-up: exit non-zero, not by a signal, within 30 s (10 s for
#    the FIFO), with exactly
#    one "nbdkit: ... error:" line, naming the parameter;
#  - good inputs next to them work and serve the right data: a path with
#    ':' in it (file= is last), a :size= larger than the file, a file
#    of exactly :size=, a writable device loaded from a file, a clone of
#    a read-only clone, a sparse or all-zero image far larger than
#    max-memory, a clone of a temporary golden;
#  - with dynamic=true a client's bad export names (from= an unknown or
#    writable device, :size= with :from=, :file=) are refused, each with
#    a log line naming it, create nothing, and the server keeps serving;
#    a client's good clone works and is found again by name.
. "$(dirname "$0")/lib.sh"

command -v nbdinfo >/dev/null || fail "nbdinfo is not installed"
command -v nbdsh >/dev/null || fail "nbdsh is not installed"
M=1048576
tried=0

# Images: small (8 MiB, 1 MiB of data), two (2 MiB, all data), sparse
# (64 MiB, 512 KiB of data), zeros (4 MiB of written zero bytes), a
# copy of small whose path has ':' in it, a directory, an unreadable file.
small=$tmp/small.raw
truncate -s 8M "$small"
head -c 1M /dev/urandom | dd of="$small" conv=notrunc status=none
head -c 2M /dev/urandom >"$tmp/two.raw"
head -c 1536K /dev/urandom >"$tmp/one5a.raw"
head -c 1536K /dev/urandom >"$tmp/one5b.raw"
truncate -s 64M "$tmp/sparse.raw"
head -c 512K /dev/urandom |
    dd of="$tmp/sparse.raw" bs=1M seek=40 conv=notrunc status=none
dd if=/dev/zero of="$tmp/zeros.raw" bs=1M count=4 status=none
colon=$tmp/a:b:ro.raw
cp "$small" "$colon"
mkdir "$tmp/imgdir"
cp "$small" "$tmp/unread.raw"
chmod 000 "$tmp/unread.raw"

# run_nbdkit, bad, good and client are in lib.sh: $run is the --run
# command, $wrap goes before nbdkit, $limit is the time limit in seconds.

# check_dev EXPORT SIZE FILE: a --run command: EXPORT is SIZE bytes and
# reads as FILE, then zeroes.  ($unixsocket is set by nbdkit --run.)
cat >"$tmp/check.py" <<'EOF'
import sys
import nbd
name, size, path, sock = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
h = nbd.NBD()
h.set_export_name(name)
h.connect_unix(sock)
want = open(path, "rb").read()
assert h.get_size() == size, "%s is %d bytes, not %d" % (name, h.get_size(), size)
assert h.pread(len(want), 0) == want, "%s does not read as %s" % (name, path)
if size > len(want):
    assert h.pread(size - len(want), len(want)) == bytes(size - len(want)), \
        "%s past the file is not zero" % name
EOF
check_dev() {
    echo "/usr/bin/python3 $tmp/check.py $1 $2 '$3' \"\$unixsocket\""
}

# --- Bad command lines. -----------------------------------------------------
# file=: missing, unreadable, a directory, empty.
bad "name=g" 'nosuch\.raw|No such file' "name=g:ro:file=$tmp/nosuch.raw"
bad "name=g" 'imgdir|[Dd]irectory|not a regular file' "name=g:ro:file=$tmp/imgdir"
bad "name=g" 'file' "name=g:ro:file="
# A FIFO would block open() until a writer came; a character device has
# no size.  Both are refused at once.
mkfifo "$tmp/fifo"
limit=10
bad "name=g" 'fifo.*not a regular file or block device' "name=g:ro:file=$tmp/fifo"
bad "name=w" 'fifo.*not a regular file or block device' "name=w:file=$tmp/fifo"
limit=30
bad "name=g" 'null.*not a regular file or block device' "name=g:ro:file=/dev/null"
if [ "$(id -u)" -eq 0 ]; then
    # Root reads a mode-000 file: drop the capabilities that allow it.
    command -v setpriv >/dev/null || fail "setpriv (util-linux) is not installed"
    wrap="setpriv --bounding-set=-dac_override,-dac_read_search --"
fi
bad "name=g" 'unread\.raw|[Pp]ermission' "name=g:ro:file=$tmp/unread.raw"
wrap=

# A file larger than :size=; image data past max-memory.
bad "name=g" 'size' "name=g:ro:size=1M:file=$tmp/two.raw"
bad "name=g" 'size' "name=g:ro:size=2097151:file=$tmp/two.raw"
bad "" 'max-memory' max-memory=1M "name=g:ro:file=$tmp/two.raw"
bad "" 'max-memory' max-memory=2M "name=ga:ro:file=$tmp/one5a.raw" \
    "name=gb:ro:file=$tmp/one5b.raw"

# from=: an unknown device, a writable device, empty, twice.
bad "name=vm" 'nosuch' name=vm:from=nosuch
bad "name=vm" 'nosuch' "name=g:ro:file=$small" name=vm:from=nosuch
bad "name=vm" 'read-only|writable|read-write|:ro' name=w name=vm:from=w
bad "name=vm" 'read-only|writable|read-write|:ro' name=w:rw:size=1M name=vm:from=w
bad "name=vm" 'read-only|writable|read-write|:ro' "name=w:file=$small" name=vm:from=w
bad "name=vm2" 'read-only|writable|read-write|:ro' "name=g:ro:file=$small" \
    name=vm1:from=g name=vm2:from=vm1
bad "name=vm" 'from' name=vm:from=
bad "name=vm" 'from' "name=g:ro:file=$small" name=vm:from=g:from=g

# Clone cycles: to itself, of two, of three (either device may be named).
bad "name=a" 'cycle|loop|itself' name=a:ro:from=a
bad "name=" 'cycle|loop' name=a:ro:from=b name=b:ro:from=a
bad "name=" 'cycle|loop' name=a:ro:from=c name=b:ro:from=a name=c:ro:from=b
# A clone declared first whose source hangs off a cycle: the cycle is
# named, not a missing device.
bad "a -> b -> a" 'cycle' name=c:ro:from=a name=a:ro:from=b name=b:ro:from=a

# from= with file= (file= is last: it takes the rest).
bad "name=vm" 'file' "name=g:ro:file=$small" "name=vm:from=g:file=$small"
bad "name=vm" 'file' "name=g:ro:file=$small" "name=vm:ro:from=g:file=$small"

# :size= on a clone, before or after from=, even the source's size.
bad "name=vm" 'size' "name=g:ro:file=$small" name=vm:size=1M:from=g
bad "name=vm" 'size' "name=g:ro:file=$small" name=vm:from=g:size=16M
bad "name=vm" 'size' "name=g:ro:file=$small" name=vm:from=g:size=8M

# --- Good command lines, with the data checked. ----------------------------
run=$(check_dev g 8388608 "$colon")
good "name=g:ro:file=$colon"                      # ':' in the path
run=$(check_dev g 16777216 "$small")
good "name=g:ro:size=16M:file=$small"             # larger than the file
run=$(check_dev g 8388608 "$small")
good "name=g:ro:size=8M:file=$small"              # exactly the file
run=$(check_dev w 8388608 "$small")
good "name=w:file=$small"                         # writable, loaded
run=$(check_dev vm 8388608 "$small")
good "name=g:ro:file=$small" name=b2:ro:from=g name=vm:from=b2
good "name=g:ro:file=$small" name=vm:ro:from=g    # a read-only clone
good "name=g:ro:temp:file=$small" name=vm:from=g  # clone of a temp golden
run=$(check_dev g 67108864 "$tmp/sparse.raw")
good max-memory=1M "name=g:ro:file=$tmp/sparse.raw"  # holes cost nothing
run=$(check_dev g 4194304 "$tmp/zeros.raw")
good max-memory=4K "name=g:ro:file=$tmp/zeros.raw"   # zero pages neither
run=true

# --- Client export names, dynamic=true. --------------------------------------
start_server dyn dynamic=true "name=g:ro:file=$small" name=w:size=8M \
    name=b2:ro:from=g

# refused EXPORT DEVICE: a connect to EXPORT is refused, leaves a new
# error line in the log naming it, and creates no device DEVICE.
refused() {
    n=$(wc -l <"$log")
    expect_fail "connect to $1" client "$1"
    tail -n +$((n + 1)) "$log" | grep 'error' >"$tmp/new" || :
    grep -qF -- "$2" "$tmp/new" ||
        { cat "$log"; fail "no log line naming '$2' for the refused '$1'"; }
    echo "refused '$1': $(head -n 1 "$tmp/new" | cut -c1-160)"
    kill -0 "$server_pid" || fail "nbdkit died after '$1'"
    nbdinfo --list "$(uri '')" >"$tmp/list" || fail "nbdinfo --list after '$1'"
    if grep -qF "export=\"$2\"" "$tmp/list"; then
        cat "$tmp/list"; fail "the refused '$1' created device $2"
    fi
}

refused vm:from=nosuch vm
refused vm:from=w vm
refused vm:from=vm vm
refused vm:from=g:size=1M vm
refused vm:size=8M:from=g vm
refused "x:file=$small" x
refused "x:ro:file=/etc/hostname" x
refused "vm:from=g:file=$small" vm
refused "vm:from=" vm

# The server still serves, and a client's good clone works.
client g "assert h.pread($M, 0) == open('$small', 'rb').read($M)" ||
    fail "g after the refusals"
client job:from=g "
assert h.get_size() == 8 * $M
assert h.pread($M, 0) == open('$small', 'rb').read($M)
h.pwrite(b'job!' * 1024, 0)" || fail "a client's clone job:from=g"
client job "assert h.pread(4096, 0) == b'job!' * 1024" ||
    fail "job, by name, is not the same clone"
client job:from=g "assert h.pread(4096, 0) == b'job!' * 1024" ||
    fail "job:from=g again is not the same clone"
client job2:from=b2 "assert h.pread($M, 0) == open('$small', 'rb').read($M)" ||
    fail "a client's clone of the read-only clone b2"
refused job3:from=job job3                        # job is writable
client g "assert h.pread($M, 0) == open('$small', 'rb').read($M)" ||
    fail "g changed"
nbdinfo --list "$(uri '')" >"$tmp/list" || fail "nbdinfo --list"
expect_grep 'clone of g,' "$tmp/list"
kill -0 "$server_pid" || fail "nbdkit died"
echo "clone-errors: $tried command lines tried"
