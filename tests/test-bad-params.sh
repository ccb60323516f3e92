#!/bin/sh
# Every bad parameter and connect string is refused at start-up: nbdkit
# exits non-zero (not by a signal: exit code < 128) within a time limit,
# prints only "nbdkit: ... error:" lines (one from the plugin, plus one
# from nbdkit_parse_size for a bad size), and one of them names the
# problem.  Good values next to the limits are accepted, so the table
# cannot pass by refusing everything.
. "$(dirname "$0")/lib.sh"

tried=0

# run_nbdkit ARGS...: start nbdkit on a private socket; if it comes up it
# runs `true` and exits 0 at once.  Output in $tmp/out, status in $rc.
# The socket is in $tmp, not `-U -`: for that nbdkit makes a directory
# /tmp/nbdkitXXXXXX and leaves it behind when the plugin refuses to start.
run_nbdkit() {
    rc=0
    rm -f "$tmp/run.sock"
    timeout -k 5 30 ${NBDKIT_WRAPPER:-} nbdkit -U "$tmp/run.sock" ${NBDKIT_EXTRA:-} \
        "$MEMBLOCK_SO" "$@" --run true >"$tmp/out" 2>&1 || rc=$?
    tried=$((tried + 1))
}

# bad PATTERN ARGS...: ARGS must be refused with a line containing PATTERN.
bad() {
    pattern=$1; shift
    run_nbdkit "$@"
    what="nbdkit memblock $(printf '%s ' "$@" | cut -c1-80)"
    [ $rc -ne 124 ] && [ $rc -ne 137 ] ||
        fail "$what: nbdkit hung (killed after 30 s)"
    [ $rc -ne 0 ] || fail "$what: accepted"
    [ $rc -lt 128 ] || { cat "$tmp/out"; fail "$what: crashed (exit $rc)"; }
    lines=$(wc -l <"$tmp/out")
    errors=$(grep -c '^nbdkit: .*error: ' "$tmp/out" || :)
    if [ "$lines" -lt 1 ] || [ "$lines" -gt 2 ] || [ "$errors" -ne "$lines" ]; then
        cat "$tmp/out"; fail "$what: expected 1 or 2 nbdkit error lines"
    fi
    grep -F -q -- "$pattern" "$tmp/out" ||
        { cat "$tmp/out"; fail "$what: no line names '$pattern'"; }
}

# good ARGS...: ARGS must be accepted.
good() {
    run_nbdkit "$@"
    [ $rc -eq 0 ] ||
        { cat "$tmp/out"; fail "nbdkit memblock $*: refused (exit $rc)"; }
}

long256=$(printf '%0256d' 0 | tr 0 n)
long257=${long256}x
tab=$(printf 'a\tb')
nl=$(printf 'a\nb.')
nl=${nl%.}
esc=$(printf 'a\033[31m')
del=$(printf 'a\177')
ctl1=$(printf 'a\001')
c1=$(printf 'a\302\205')            # U+0085, a C1 control
bad_utf8=$(printf 'a\377')
overlong=$(printf '\300\257')        # '/' encoded in two bytes
surrogate=$(printf '\355\240\200')

# Unknown keys.
bad "'foo'"                foo=1
bad "'Size'"               Size=1M
bad "'chunk_size'"         chunk_size=1M

# size=: negative, garbage, past 2^63-1, repeated.
bad "size=-1"              size=-1
bad "size=abc"             size=abc
bad "size=:"               size=
bad "size=12Q"             size=12Q
bad "size=1.5M"            size=1.5M
bad "size=0x10"            size=0x10
bad "size=9223372036854775808" size=9223372036854775808
bad "size=8E"              size=8E
bad "size=99999999999999999999" size=99999999999999999999
bad "size=16777216P"       size=16777216P
bad "size: given more"     size=1M size=2M

# chunk-size=: not a power of two, out of range, garbage.
bad "chunk-size=3000"      chunk-size=3000
bad "chunk-size=12K"       chunk-size=12K
bad "chunk-size=0"         chunk-size=0
bad "chunk-size=2K"        chunk-size=2K
bad "chunk-size=2G"        chunk-size=2G
bad "chunk-size=1E"        chunk-size=1E
bad "chunk-size=-4K"       chunk-size=-4K
bad "chunk-size=big"       chunk-size=big
bad "chunk-size: given"    chunk-size=4K chunk-size=8K

# max-memory=: garbage, negative, too small.
bad "max-memory=zz"        max-memory=zz
bad "max-memory=-5"        max-memory=-5
bad "max-memory=0"         max-memory=0
bad "max-memory=4095"      max-memory=4095
bad "max-memory=:"         max-memory=
bad "max-memory=9E"        max-memory=9E

# dynamic= and max-devices=.
bad "dynamic=maybe"        dynamic=maybe
bad "dynamic=:"            dynamic=
bad "max-devices=0"        max-devices=0
bad "max-devices=-1"       max-devices=-1
bad "max-devices=abc"      max-devices=abc
bad "max-devices=65537"    max-devices=65537
bad "max-devices=4294967297" max-devices=4294967297
bad "max-devices=2"        max-devices=2 name=a name=b name=c

# name=: empty, too long, '/', ':' misuse.
bad "name=: the device name is empty"  name=
bad "device name is empty" name=:ro
bad "device name is empty" name=:
bad "longer than 256"      "name=$long257"
bad "longer than 256"      "name=$long257:ro"
bad "may not contain '/'"  name=a/b
bad "may not contain '/'"  name=/
bad "may not contain '/'"  name=../x
bad "stray ':'"            name=a:
bad "stray ':'"            name=a::ro
bad "stray ':'"            name=a:ro:
bad "unknown option 'b'"   name=a:b:ro

# name=: control characters and bad UTF-8 (escaped in the message).
bad 'name=a\x09b'          "name=$tab"
bad 'name=a\x0ab'          "name=$nl"
bad 'name=a\x1b[31m'       "name=$esc"
bad 'name=a\x7f'           "name=$del"
bad 'name=a\x01'           "name=$ctl1"
bad 'name=a\xc2\x85'       "name=$c1"
bad 'name=a\xff'           "name=$bad_utf8"
bad 'name=\xc0\xaf'        "name=$overlong"
bad 'name=\xed\xa0\x80'    "name=$surrogate"

# Duplicates, :ro with :rw, unknown options, bad sizes in a connect string.
bad "'a' is declared twice" name=a name=a
bad "'a' is declared twice" name=a name=a:ro
bad "'a' is declared twice" name=a:size=1M a
bad "':ro' and ':rw'"      name=a:ro:rw
bad "':ro' and ':rw'"      name=a:rw:ro
bad "':ro' and ':rw'"      name=a:ro:ro
bad "unknown option 'xx'"  name=a:xx
bad "unknown option 'RO'"  name=a:RO
bad "unknown option 'size'" name=a:size
bad "unknown option 'size='" name=a:size=
bad "unknown option 'SIZE=1M'" name=a:SIZE=1M
bad "':size=' given twice" name=a:size=1M:size=1M
bad "bad size 'junk'"      name=a:size=junk
bad "bad size '-1'"        name=a:size=-1
bad "bad size '8E'"        name=a:size=8E
bad "size is too long"     "name=a:size=$long256"
# Compression needs chunks of at least one 16 KiB unit: the default
# codec and a device's own, each named.
bad "compress=zstd needs chunk-size" compress=zstd chunk-size=8K
bad "compress=lz4 needs chunk-size" chunk-size=4K compress=lz4
bad "name=a: :compress=lz4 needs chunk-size" name=a:compress=lz4 chunk-size=8K
bad "name=b: :compress=zstd needs" name=a chunk-size=4K name=b:compress=zstd
# A bare word is a name= (the magic key), checked the same way.
bad "name=a:ro:rw"         a:ro:rw
bad "may not contain '/'"  a/b

# Values at the limits are accepted.
good "name=$long256"
good "name=$(printf 'caf\303\251-\360\237\222\276')"   # UTF-8, 4-byte too
good size=0
good size=9223372036854775807
good name=big:size=9223372036854775807:ro
good chunk-size=4K
good chunk-size=1G max-memory=4K
good max-devices=65536
good max-devices=1 dynamic=true
good compress=zstd chunk-size=16K
good name=a:compress=none chunk-size=4K
good name=a:rw name=b:ro a2 name=%n%s
echo "bad-params: $tried command lines tried"
