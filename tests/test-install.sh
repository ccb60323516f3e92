#!/bin/sh
# `make install` puts the plugin where nbdkit looks for "memblock" and the
# man page beside the others; the installed plugin loads and serves.
. "$(dirname "$0")/lib.sh"

plugindir=$(pkg-config --variable=plugindir nbdkit)
[ -n "$plugindir" ] || fail "pkg-config cannot find nbdkit's plugindir"
dest=$tmp/root
make -s -C "$top" install DESTDIR="$dest" PREFIX=/usr >"$tmp/make.log" 2>&1 ||
    { cat "$tmp/make.log"; fail "make install"; }

so=$dest$plugindir/nbdkit-memblock-plugin.so
[ -x "$so" ] || fail "no plugin at $so"
[ -s "$dest/usr/share/man/man1/nbdkit-memblock.1" ] || fail "no man page"
man -l "$dest/usr/share/man/man1/nbdkit-memblock.1" 2>/dev/null |
    grep -q "CONNECT STRINGS" || fail "man page lacks CONNECT STRINGS"

nbdkit "$so" --dump-plugin >"$tmp/dump"
expect_grep '^name=memblock$' "$tmp/dump"
expect_grep '^memblock_default_size=16777216$' "$tmp/dump"
expect_grep '^thread_model=parallel$' "$tmp/dump"
nbdkit "$so" --help >"$tmp/help"
expect_grep 'max-memory=SIZE' "$tmp/help"

start_plugin inst "$so" name=disk0
nbdsh -u "$(uri disk0)" -c 'h.pwrite(b"installed", 0); assert h.pread(9, 0) == b"installed"' ||
    fail "installed plugin does not serve"

# memblock-ctl and its man page, run against the installed plugin.
ctl=$dest/usr/bin/memblock-ctl
[ -x "$ctl" ] || fail "no memblock-ctl at $ctl"
[ -s "$dest/usr/share/man/man1/memblock-ctl.1" ] || fail "no memblock-ctl man page"
man -l "$dest/usr/share/man/man1/memblock-ctl.1" 2>/dev/null |
    grep -q "snapshot" || fail "memblock-ctl man page lacks snapshot"
start_plugin ictl "$so" control="$tmp/ictl.ctl" name=disk1:size=1M
"$ctl" -s "$tmp/ictl.ctl" snapshot disk1=disk1@0 >"$tmp/ctl.out" ||
    fail "installed memblock-ctl snapshot"
"$ctl" -s "$tmp/ictl.ctl" list >"$tmp/ctl.out" || fail "installed memblock-ctl list"
expect_grep '^disk1@0 +1\.0M +yes' "$tmp/ctl.out"
