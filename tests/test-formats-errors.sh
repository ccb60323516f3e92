#!/bin/sh
# Bad :format=, :nbd= and image input is refused cleanly.
#
# Proves that every bad input - a missing, unreadable, directory or FIFO
# file; the wrong format (qcow2 for a raw file, vmdk for a qcow2); a
# qcow2 with a corrupt header, a corrupt L1 table, truncated, encrypted,
# or with its backing file gone; qemu-nbd not on PATH; an unreachable
# URI; a source larger than :size=; data over max-memory; a bad format
# name (QCOW, empty, unknown, too long); :format= without :file= (alone
# or with :nbd=); :nbd= with :from=; :nbd= empty - is refused:
#  - on the command line: nbdkit exits non-zero (not by a signal, not
#    hanging) with exactly one "nbdkit: ... error:" line naming the
#    device and the cause, and leaves no qemu-nbd behind;
#  - through the control socket (device_create with format, file, uri,
#    size): a -32000 refusal with data.errno, one line naming the device
#    and the cause, device_list unchanged, and (for max-memory) the
#    memory given back;
#  - as a client's export name with dynamic=true (:nbd=, :format=): the
#    connection is refused with a log line naming it, nothing is
#    created, the URI's server is never connected to and no qemu-nbd
#    starts; the server goes on serving.
# Good inputs next to them work: raw needs no qemu tools, a :size=
# larger than the image, data that just fits under max-memory.
# Last, :nbd= with :file= in either order (each takes the rest of the
# string, so the one holds the other) must be refused as the two
# together, as :file= holding ':persist=' is: today the first is
# refused with a misleading "No such file" and the second is accepted,
# loading from the server and ignoring the :file= (connect.c bug).
. "$(dirname "$0")/lib.sh"

for t in nbdinfo qemu-img qemu-io qemu-nbd /usr/bin/python3; do
    command -v $t >/dev/null || fail "$t is not installed"
done
M=1048576
tried=0
helper() { /usr/bin/python3 "$top/tests/formats-helper.py" "$@"; }

# --- Images. ------------------------------------------------------------------
# small.raw: 16 MiB, 4 MiB of random data at 1 MiB; q.qcow2 of it; the
# bad ones made from q.qcow2.
small=$tmp/small.raw
truncate -s 16M "$small"
head -c 4M /dev/urandom | dd of="$small" bs=1M seek=1 conv=notrunc status=none
head -c 1M /dev/urandom >"$tmp/tiny.raw"
q=$tmp/q.qcow2
qemu-img convert -f raw -O qcow2 "$small" "$q" || fail "convert qcow2"
# l1 FILE: the L1 table's offset, from the qcow2 header (bytes 40-47).
l1=$(od -An -tu8 --endian=big -j40 -N8 "$q" | tr -d ' ')
[ "$l1" -gt 0 ] && [ $((l1 % 512)) -eq 0 ] || fail "bad L1 offset $l1 in $q"
# A corrupt header: the L1 table offset not cluster-aligned.
cp "$q" "$tmp/badhdr.qcow2"
printf '\000\000\000\000\000\001\043\105' |
    dd of="$tmp/badhdr.qcow2" bs=1 seek=40 conv=notrunc status=none
# A corrupt L1 table: random entries.
cp "$q" "$tmp/badl1.qcow2"
head -c 64 /dev/urandom |
    dd of="$tmp/badl1.qcow2" bs=1 seek="$l1" conv=notrunc status=none
# Truncated to half.
cp "$q" "$tmp/trunc.qcow2"
truncate -s $(( $(stat -c %s "$q") / 2 )) "$tmp/trunc.qcow2"
# Encrypted (LUKS).
qemu-img create -q --object secret,id=sec0,data=abc -f qcow2 \
    -o encrypt.format=luks,encrypt.key-secret=sec0 "$tmp/enc.qcow2" 16M ||
    fail "qemu-img create an encrypted qcow2"
# An overlay whose backing file is gone.
cp "$small" "$tmp/gone.raw"
qemu-img create -q -f qcow2 -b "$tmp/gone.raw" -F raw "$tmp/orphan.qcow2" ||
    fail "qemu-img create the overlay"
rm "$tmp/gone.raw"
mkdir "$tmp/imgdir"
mkfifo "$tmp/fifo"
cp "$q" "$tmp/unread.qcow2"
chmod 000 "$tmp/unread.qcow2"
# PATH without qemu-nbd (qemu-img is there).
mkdir "$tmp/path"
ln -s "$(command -v qemu-img)" "$tmp/path/qemu-img"
nbdkit_bin=$(command -v nbdkit)

# A server with the raw image for :nbd= (and one that logs connects).
start_plugin src file "$small"
src_uri="nbd+unix:///?socket=$sock"
start_plugin logged --filter=log file "$small" "logfile=$tmp/logged.log"
logged_uri="nbd+unix:///?socket=$sock"

# --- Command lines. -----------------------------------------------------------
# run_nbdkit, bad, good and client are in lib.sh.  $inner_wrap (env
# PATH=..., setpriv) goes after NBDKIT_WRAPPER, just before nbdkit: the
# PATH must not hide the wrapper's command, and $nbdkit_bin is absolute.
# $limit is the time limit.

# no_qemu_nbd WHAT: no qemu-nbd of this test's files is left running.
no_qemu_nbd() {
    i=0
    while pgrep -f "qemu-nbd.*$tmp" >/dev/null; do
        [ $i -lt 30 ] || { pgrep -af "qemu-nbd.*$tmp"; fail "$1: qemu-nbd left running"; }
        sleep 0.1; i=$((i + 1))
    done
}
# Every bad and good run then checks that no qemu-nbd is left.
run_check=no_qemu_nbd

# The file: missing, a directory, a FIFO (refused at once, not waiting
# for a writer), a character device, unreadable.
bad name=x 'nosuch\.qcow2.*No such file' "name=x:ro:format=qcow2:file=$tmp/nosuch.qcow2"
bad name=x 'imgdir.*not a regular file' "name=x:ro:format=qcow2:file=$tmp/imgdir"
limit=10
bad name=x 'fifo.*not a regular file' "name=x:ro:format=qcow2:file=$tmp/fifo"
limit=30
bad name=x 'null.*not a regular file' "name=x:ro:format=vmdk:file=/dev/null"
if [ "$(id -u)" -eq 0 ]; then
    # Root reads a mode-000 file: drop the capabilities that allow it.
    command -v setpriv >/dev/null || fail "setpriv (util-linux) is not installed"
    inner_wrap="setpriv --bounding-set=-dac_override,-dac_read_search --"
fi
bad name=x 'unread\.qcow2.*[Pp]ermission denied' "name=x:ro:format=qcow2:file=$tmp/unread.qcow2"
inner_wrap=

# The wrong format; corrupt, truncated, encrypted; a backing file gone.
bad name=x 'small\.raw.*not a qcow2 image.*not in qcow2 format' \
    "name=x:ro:format=qcow2:file=$small"
bad name=x 'q\.qcow2.*not a vmdk image' "name=x:ro:format=vmdk:file=$q"
bad name=x 'badhdr\.qcow2.*(L1 table|corrupt)' "name=x:ro:format=qcow2:file=$tmp/badhdr.qcow2"
bad name=x 'badl1\.qcow2.*corrupt.*errors were found' \
    "name=x:ro:format=qcow2:file=$tmp/badl1.qcow2"
bad name=x 'trunc\.qcow2.*(corrupt or truncated|truncated)' \
    "name=x:ro:format=qcow2:file=$tmp/trunc.qcow2"
bad name=x 'enc\.qcow2.*encrypted' "name=x:ro:format=qcow2:file=$tmp/enc.qcow2"
bad name=x 'orphan\.qcow2.*gone\.raw.*No such file' \
    "name=x:ro:format=qcow2:file=$tmp/orphan.qcow2"

# qemu-nbd not installed: a PATH with qemu-img only.  A raw image needs
# neither.
inner_wrap="env PATH=$tmp/path"
bad name=x 'qemu-nbd.*not installed' "name=x:ro:format=qcow2:file=$q"
good "name=x:ro:file=$small"
good "name=x:ro:format=raw:file=$small"
inner_wrap=

# An unreachable URI: no such socket, a refused port, not a URI.
bad name=x 'nosuch\.sock.*cannot connect' "name=x:ro:nbd=nbd+unix:///?socket=$tmp/nosuch.sock"
bad name=x 'cannot connect.*refused' "name=x:ro:nbd=nbd://127.0.0.1:1/"
bad name=x 'cannot connect' "name=x:ro:nbd=not-a-uri"
bad name=x 'nbd=.*(URI|uri)' "name=x:ro:nbd="

# Larger than :size=; over max-memory (4 MiB of data under 2 MiB).
bad name=x 'larger than :size=' "name=x:ro:size=8M:format=qcow2:file=$q"
bad name=x 'larger than :size=' "name=x:ro:size=8M:nbd=$src_uri"
bad name=x 'max-memory' max-memory=2M "name=x:ro:format=qcow2:file=$q"
bad name=x 'max-memory' max-memory=2M "name=x:ro:nbd=$src_uri"
bad name=y 'max-memory' max-memory=6M "name=x:ro:file=$small" \
    "name=y:ro:format=qcow2:file=$q"
run=true
good "name=x:ro:size=32M:format=qcow2:file=$q"     # larger than the image
good max-memory=5M "name=x:ro:format=qcow2:file=$q"  # 4 MiB of data fits

# Bad format names.
bad name=x 'format=.*(format name|qcow2)' "name=x:ro:format=QCOW:file=$q"
bad name=x 'format=' "name=x:ro:format=:file=$q"
bad name=x "Unknown driver 'qcow9'" "name=x:ro:format=qcow9:file=$q"
bad name=x 'format=' "name=x:ro:format=qcow2qcow2qcow2qcow2:file=$q"
bad name=x 'format=' "name=x:ro:format=qc/w2:file=$q"

# :format= without :file=, alone or with :nbd=.
bad name=x "format=.*file=" name=x:ro:format=qcow2
bad name=x "format=.*file=" name=x:ro:size=1M:format=qcow2
bad name=x "format=.*file=" "name=x:ro:format=qcow2:nbd=$src_uri"

# :nbd= with :from= (:nbd= with :file=: at the end).
bad name=x "from=.*nbd=.*together" "name=g:ro:file=$small" "name=x:ro:from=g:nbd=$src_uri"
echo "command line: $tried runs"

# --- The control socket. ----------------------------------------------------
# g (4 MiB of data) under max-memory=6M: 2 MiB left.  The server has no
# capability to read a mode-000 file, as a non-root one would not.
csock=$tmp/mb.ctl
[ "$(id -u)" -ne 0 ] ||
    NBDKIT_WRAPPER="setpriv --bounding-set=-dac_override,-dac_read_search --"
start_server ctl control="$csock" max-memory=6M "name=g:ro:file=$small"
NBDKIT_WRAPPER=
i=0
while [ ! -S "$csock" ]; do
    [ $i -lt 100 ] || fail "no control socket"
    sleep 0.1; i=$((i + 1))
done
g_alloc=$(helper field "$csock" g allocated)

# refused NAME WHY JSON-MEMBERS: device_create {"name": NAME, JSON-MEMBERS}
# is refused (-32000, data.errno, one line naming NAME and saying WHY),
# with device_list unchanged.
refused() {
    n=$1 why=$2 members=$3
    helper refused "$csock" "{\"name\": \"$n\", \"readonly\": true, $members}" \
        "'$n'" "$why" || fail "device_create $n: see above"
    no_qemu_nbd "device_create $n"
    tried=$((tried + 1))
}
refused s1 'nosuch\.qcow2.*No such file' "\"format\": \"qcow2\", \"file\": \"$tmp/nosuch.qcow2\""
refused s2 'imgdir.*not a regular file' "\"format\": \"qcow2\", \"file\": \"$tmp/imgdir\""
refused s3 'fifo.*not a regular file' "\"format\": \"qcow2\", \"file\": \"$tmp/fifo\""
refused s4 'unread\.qcow2.*[Pp]ermission denied' "\"format\": \"qcow2\", \"file\": \"$tmp/unread.qcow2\""
refused s5 'not a qcow2 image' "\"format\": \"qcow2\", \"file\": \"$small\""
refused s6 'not a vmdk image' "\"format\": \"vmdk\", \"file\": \"$q\""
refused s7 '(L1 table|corrupt)' "\"format\": \"qcow2\", \"file\": \"$tmp/badhdr.qcow2\""
refused s8 'corrupt.*errors were found' "\"format\": \"qcow2\", \"file\": \"$tmp/badl1.qcow2\""
refused s9 'corrupt or truncated|truncated' "\"format\": \"qcow2\", \"file\": \"$tmp/trunc.qcow2\""
refused s10 'encrypted' "\"format\": \"qcow2\", \"file\": \"$tmp/enc.qcow2\""
refused s11 'gone\.raw.*No such file' "\"format\": \"qcow2\", \"file\": \"$tmp/orphan.qcow2\""
refused s12 'nosuch\.sock.*cannot connect' "\"uri\": \"nbd+unix:///?socket=$tmp/nosuch.sock\""
refused s13 'cannot connect.*refused' '"uri": "nbd://127.0.0.1:1/"'
refused s14 'larger than size' "\"size\": 8388608, \"format\": \"qcow2\", \"file\": \"$q\""
refused s15 'larger than size' "\"size\": 8388608, \"uri\": \"$src_uri\""
refused s16 'max-memory' "\"format\": \"qcow2\", \"file\": \"$q\""
refused s17 'max-memory' "\"uri\": \"$src_uri\""
refused s18 'format' "\"format\": \"QCOW\", \"file\": \"$q\""
refused s19 'format' "\"format\": \"\", \"file\": \"$q\""
refused s20 "Unknown driver 'qcow9'" "\"format\": \"qcow9\", \"file\": \"$q\""
refused s21 'format.*file' '"format": "qcow2"'
refused s22 'format.*file' "\"format\": \"qcow2\", \"uri\": \"$src_uri\""
refused s23 'file or uri' "\"file\": \"$small\", \"uri\": \"$src_uri\""
refused s24 'clone.*image|from' "\"from\": \"g\", \"uri\": \"$src_uri\""
# The failed loads gave their memory back: 1 MiB more fits in the 2 MiB
# left, and g is as it was.
[ "$(helper field "$csock" g allocated)" -eq "$g_alloc" ] || fail "g's memory changed"
helper rpc "$csock" device_create "{\"name\": \"t\", \"readonly\": true, \"format\": \"raw\", \"file\": \"$tmp/tiny.raw\"}" \
    >"$tmp/rpc.out" || { cat "$tmp/rpc.out"; fail "device_create t (1 MiB) after the refusals"; }
[ "$(helper field "$csock" t data)" -eq $M ] || fail "t does not hold 1 MiB"
stop_server

# qemu-nbd not installed, through the socket.
env PATH="$tmp/path" "$nbdkit_bin" -f -U "$tmp/np.sock" -P "$tmp/np.pid" \
    "$MEMBLOCK_SO" control="$tmp/np.ctl" name=g:size=1M >"$tmp/np.log" 2>&1 &
_pids="$_pids $!"
i=0
while [ ! -S "$tmp/np.ctl" ]; do
    [ $i -lt 100 ] || { cat "$tmp/np.log"; fail "no control socket np.ctl"; }
    sleep 0.1; i=$((i + 1))
done
helper refused "$tmp/np.ctl" "{\"name\": \"s30\", \"format\": \"qcow2\", \"file\": \"$q\"}" \
    "'s30'" 'qemu-nbd.*not installed' || fail "device_create s30 without qemu-nbd"
tried=$((tried + 1))
echo "control socket: $tried inputs tried in all"

# --- Client export names (dynamic=true). --------------------------------------
start_server dyn dynamic=true "name=g:ro:file=$small"
# refused_export EXPORT: a connect to EXPORT is refused with a new log
# line naming it; no device x, no connection to the logged server, no
# qemu-nbd.
refused_export() {
    n=$(wc -l <"$log")
    expect_fail "connect to $1" client "$1"
    tail -n +$((n + 1)) "$log" | grep 'error' >"$tmp/new" || :
    [ "$(wc -l <"$tmp/new")" -eq 1 ] ||
        { cat "$log"; fail "'$1': not one new error line in the log"; }
    grep -qF -- "export '$(echo "$1" | cut -c1-40)" "$tmp/new" ||
        { cat "$tmp/new"; fail "the log line does not name the export '$1'"; }
    echo "refused '$1': $(cut -c1-200 "$tmp/new")"
    kill -0 "$server_pid" || fail "nbdkit died after '$1'"
    nbdinfo --list "$(uri '')" >"$tmp/list" || fail "nbdinfo --list after '$1'"
    if grep -q '^export="x' "$tmp/list"; then
        cat "$tmp/list"; fail "the refused '$1' created a device"
    fi
    no_qemu_nbd "export '$1'"
    tried=$((tried + 1))
}
refused_export "x:nbd=$logged_uri"
refused_export "x:ro:nbd=$logged_uri"
refused_export "x:size=16M:nbd=$logged_uri"
refused_export "x:format=qcow2:file=$q"
refused_export "x:ro:format=qcow2:file=$q"
refused_export "x:format=qcow2"
refused_export "x:size=1M:format=qcow2"
refused_export "x:format=qcow2:nbd=$logged_uri"
refused_export "x:from=g:nbd=$logged_uri"
if grep -i 'connect' "$tmp/logged.log"; then
    fail "a refused export name connected to the :nbd= server"
fi
client "g" || fail "g after the refusals"
nbdinfo --size "$(uri g)" >/dev/null || fail "g is not served"
stop_server

# --- :nbd= with :file=, in either order. --------------------------------------
# Both take the rest of the string, so one holding the other is the two
# together, refused as a :file= path holding ':persist=' is - not "no
# such file", and not a load from the server that ignores the :file=.
bad name=x "nbd=.*(together|cannot go with)" "name=x:ro:file=$small:nbd=$src_uri"
bad name=x "file=.*(together|cannot go with)" \
    "name=x:ro:nbd=nbd+unix:///:file=$small?socket=$tmp/src.sock"
echo "formats-errors: $tried inputs tried"
