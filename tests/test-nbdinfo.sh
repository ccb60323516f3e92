#!/bin/sh
# nbdinfo against memblock.
#
# Proves that:
#  - nbdinfo --list (text and JSON) shows every declared device, in
#    declaration order, with its description ("SIZE, read-write" or
#    "read-only", then the memory it holds), size and read-only flag, a
#    UTF-8 name included;
#  - with dynamic=true a device created by a client's connection shows
#    up in the list too;
#  - nbdinfo --size gives each size, the default export being the first
#    device; --is read-only is true for a :ro device and a :ro export
#    only; an unknown export is refused and named in nbdkit's log;
#  - nbdinfo --map shows exactly the written 4 KiB pages as data and the
#    rest as holes (1 byte, chunk-crossing and last-page writes on a
#    4 GiB device), the same through a :ro export, with matching
#    --totals; after a trim the trimmed pages are holes again.
. "$(dirname "$0")/lib.sh"

command -v nbdinfo >/dev/null || fail "nbdinfo is not installed"
command -v nbdsh >/dev/null || fail "nbdsh is not installed"

start_server info chunk-size=1M name=disk0 name=scratch:size=4G \
    name=golden:ro:size=1M name=tiny:size=1000 'name=ünï:size=2M'
any="nbd+unix:///?socket=$sock"

# expect_list WHAT: the exports and descriptions that nbdinfo --list
# prints for the server on $sock must be the lines on stdin, in order.
expect_list() {
    cat >"$tmp/list.want"
    nbdinfo --list "nbd+unix:///?socket=$sock" >"$tmp/list.txt" ||
        fail "nbdinfo --list ($1) failed"
    grep -E '^export=|description:' "$tmp/list.txt" >"$tmp/list.got"
    diff -u "$tmp/list.want" "$tmp/list.got" || fail "nbdinfo --list ($1)"
}

# --list, text: every export with its description, in order.
expect_list static <<'EOF'
export="disk0":
	description: 16 MiB, read-write, 0 bytes in memory
export="scratch":
	description: 4 GiB, read-write, 0 bytes in memory
export="golden":
	description: 1 MiB, read-only, 0 bytes in memory
export="tiny":
	description: 1000 bytes, read-write, 0 bytes in memory
export="ünï":
	description: 2 MiB, read-write, 0 bytes in memory
EOF

# --list --json: names, descriptions, sizes, read-only flags.
nbdinfo --list --json "$any" >"$tmp/list.json" ||
    fail "nbdinfo --list --json failed"
/usr/bin/python3 - "$tmp/list.json" >"$tmp/json.got" <<'EOF' ||
import json, sys
for e in json.load(open(sys.argv[1], encoding="utf-8"))["exports"]:
    print(e["export-name"], e["description"], e["export-size"],
          e["is_read_only"], sep="|")
EOF
    fail "cannot parse nbdinfo --list --json output"
cat >"$tmp/json.want" <<'EOF'
disk0|16 MiB, read-write, 0 bytes in memory|16777216|False
scratch|4 GiB, read-write, 0 bytes in memory|4294967296|False
golden|1 MiB, read-only, 0 bytes in memory|1048576|True
tiny|1000 bytes, read-write, 0 bytes in memory|1000|False
ünï|2 MiB, read-write, 0 bytes in memory|2097152|False
EOF
diff -u "$tmp/json.want" "$tmp/json.got" || fail "nbdinfo --list --json (above)"

# --size, the default export, a percent-encoded UTF-8 name.
[ "$(nbdinfo --size "$any")" = 16777216 ] || fail "default export size"
[ "$(nbdinfo --size "$(uri scratch)")" = 4294967296 ] || fail "scratch size"
[ "$(nbdinfo --size "$(uri tiny)")" = 1000 ] || fail "tiny size"
[ "$(nbdinfo --size "$(uri %C3%BCn%C3%AF)")" = 2097152 ] || fail "ünï size"

# --is read-only: 0 means yes, 2 no.
nbdinfo --is read-only "$(uri golden)" || fail "golden is not read-only"
nbdinfo --is read-only "$(uri scratch:ro)" || fail "scratch:ro is not read-only"
rc=0; nbdinfo --is read-only "$(uri scratch)" || rc=$?
[ $rc -eq 2 ] || fail "scratch: --is read-only gave $rc, not 2 (no)"

# An unknown export is refused, and the log names it.
expect_fail "nbdinfo on an unknown export" nbdinfo "$(uri nosuch)"
expect_grep "export 'nosuch': no such device" "$log"

# --map: a fresh device is one hole.
[ "$(nbdinfo --map "$(uri scratch)")" = \
  "         0  4294967296    3  hole,zero" ] || fail "fresh scratch map"

# Scattered writes: a page at 0, 64 KiB across the 1 MiB chunk boundary,
# 1 byte at 3 GiB + 5, the last 8 KiB.
nbdsh -u "$(uri scratch)" \
    -c 'h.pwrite(b"x" * 4096, 0)' \
    -c 'h.pwrite(b"y" * 65536, 2**20 - 32768)' \
    -c 'h.pwrite(b"z", 3 * 2**30 + 5)' \
    -c 'h.pwrite(b"w" * 8192, 2**32 - 8192)' || fail "nbdsh writes failed"
cat >"$tmp/map.want" <<'EOF'
         0        4096    0  data
      4096     1011712    3  hole,zero
   1015808       65536    0  data
   1081344  3220144128    3  hole,zero
3221225472        4096    0  data
3221229568  1073729536    3  hole,zero
4294959104        8192    0  data
EOF
nbdinfo --map "$(uri scratch)" >"$tmp/map.got" || fail "nbdinfo --map failed"
diff -u "$tmp/map.want" "$tmp/map.got" || fail "nbdinfo --map (above)"
nbdinfo --map "$(uri scratch:ro)" >"$tmp/map.got" ||
    fail "nbdinfo --map on scratch:ro failed"
diff -u "$tmp/map.want" "$tmp/map.got" || fail "nbdinfo --map of :ro (above)"
nbdinfo --map --totals "$(uri scratch)" >"$tmp/totals.got" ||
    fail "nbdinfo --map --totals failed"
expect_grep '^ *81920 +0\.0% +0 data$' "$tmp/totals.got"
expect_grep '^ *4294885376 +100\.0% +3 hole,zero$' "$tmp/totals.got"

# Trim the chunk-crossing run and the 1-byte page: holes again.
nbdsh -u "$(uri scratch)" -c 'h.trim(65536, 2**20 - 32768)' \
    -c 'h.trim(4096, 3 * 2**30)' || fail "nbdsh trims failed"
cat >"$tmp/map.want" <<'EOF'
         0        4096    0  data
      4096  4294955008    3  hole,zero
4294959104        8192    0  data
EOF
nbdinfo --map "$(uri scratch)" >"$tmp/map.got" || fail "nbdinfo --map failed"
diff -u "$tmp/map.want" "$tmp/map.got" || fail "nbdinfo --map after trim (above)"
stop_server

# dynamic=true: a device made by a client is listed after the others.
start_server dyn dynamic=true name=first:size=1M
[ "$(nbdinfo --size "$(uri fresh:size=3M)")" = 3145728 ] ||
    fail "dynamic device fresh:size=3M has the wrong size"
expect_list dynamic <<'EOF'
export="first":
	description: 1 MiB, read-write, 0 bytes in memory
export="fresh":
	description: 3 MiB, read-write, 0 bytes in memory
EOF
echo "nbdinfo: all checks passed"
