#!/bin/sh
# `make deb` builds the Debian package: its files and control fields, its
# maintainer scripts, lintian, the unit under systemd-analyze verify, the
# start script's nbdkit command lines, and the extracted plugin, start
# script and memblock-ctl serving, saving a :persist= device at SIGTERM
# and loading it again.  Starting the unit itself needs systemd as PID 1
# and a system to change: not done here.
. "$(dirname "$0")/lib.sh"

plugindir=$(pkg-config --variable=plugindir nbdkit)
[ -n "$plugindir" ] || fail "pkg-config cannot find nbdkit's plugindir"

# Build (about 40 s).  The source tree must stay as it was.
before=$(cd "$top" && git status --porcelain 2>/dev/null || :)
make -s -C "$top" deb >"$tmp/deb.log" 2>&1 || { tail -n 40 "$tmp/deb.log"; fail "make deb"; }
after=$(cd "$top" && git status --porcelain 2>/dev/null || :)
[ "$before" = "$after" ] || fail "make deb changed the source tree: $after"
version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
deb=$top/build/deb/nbdkit-plugin-memblock_${version}_$(dpkg --print-architecture).deb
[ -f "$deb" ] || { ls "$top/build/deb"; fail "no $deb"; }

# The files.
dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|' >"$tmp/files"
for f in "$plugindir/nbdkit-memblock-plugin.so" \
         /usr/bin/memblock-ctl \
         /usr/libexec/memblock/memblock-start \
         /usr/share/man/man1/nbdkit-memblock.1.gz \
         /usr/share/man/man1/memblock-ctl.1.gz \
         /lib/systemd/system/memblock@.service \
         /usr/lib/sysusers.d/memblock.conf \
         /etc/memblock/example.conf \
         /usr/share/doc/nbdkit-plugin-memblock/copyright; do
    grep -qxF "$f" "$tmp/files" || { cat "$tmp/files"; fail "$f not in the package"; }
done
# Nothing from the build tree, nothing under /usr/local.
if grep -E '^/usr/local|/build/|\.o$|/tests?/' "$tmp/files"; then
    fail "stray files in the package"
fi

# The control fields.
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = nbdkit-plugin-memblock ] || fail "Package: $(field Package)"
depends=$(field Depends)
for lib in 'libc6' 'libzstd1' 'liblz4-1' 'libnbd0' 'libjson-c5' 'nbdkit' 'python3'; do
    echo "$depends" | tr ',' '\n' | grep -Eq "^ *$lib( |\$)" ||
        fail "Depends lacks $lib: $depends"
done
echo "$depends" | grep -q qemu && fail "qemu in Depends: $depends"
field Recommends | grep -Eq '(^|, )qemu-utils(,|$)' || fail "Recommends: $(field Recommends)"

# Maintainer scripts: /etc/memblock/example.conf a conffile, the memblock
# user made at configure, and no running instance stopped or restarted
# by an upgrade or a removal (it would lose its devices).
mkdir "$tmp/ctrl"
dpkg-deb -e "$deb" "$tmp/ctrl"
grep -qxF /etc/memblock/example.conf "$tmp/ctrl/conffiles" || fail "example.conf is not a conffile"
expect_grep 'systemd-sysusers .*memblock\.conf' "$tmp/ctrl/postinst"
for s in preinst postinst prerm postrm; do
    [ -f "$tmp/ctrl/$s" ] || continue
    if grep -En 'deb-systemd-invoke|systemctl .*(stop|restart)|deb-systemd-helper +enable' "$tmp/ctrl/$s"; then
        fail "$s stops, restarts or enables the service"
    fi
done

# Lintian: no errors, no warnings (justified overrides live in debian/).
lintian --fail-on error,warning "$deb" >"$tmp/lintian" 2>&1 || {
    cat "$tmp/lintian"; fail "lintian"; }
if grep -E '^[EW]: ' "$tmp/lintian"; then fail "lintian errors or warnings"; fi

# The extracted package.
root=$tmp/root
dpkg-deb -x "$deb" "$root"
so=$root$plugindir/nbdkit-memblock-plugin.so
ctl=$root/usr/bin/memblock-ctl
start=$root/usr/libexec/memblock/memblock-start
[ -f "$so" ] && [ -x "$ctl" ] && [ -x "$start" ] || fail "extracted files missing"
man -l "$root/usr/share/man/man1/nbdkit-memblock.1.gz" 2>/dev/null |
    grep -q "CONNECT STRINGS" || fail "man page lacks CONNECT STRINGS"
man -l "$root/usr/share/man/man1/memblock-ctl.1.gz" 2>/dev/null |
    grep -q "snapshot" || fail "memblock-ctl man page lacks snapshot"

# The unit, verified as installed: systemd-analyze verify --root needs
# the system's own units (sysinit.target ...) in that root, and checks
# ExecStart= binaries and Documentation= pages (MANPATH) there.
unit=$root/lib/systemd/system/memblock@.service
for want in '^Type=exec$' '^ExecStart=/usr/libexec/memblock/memblock-start %i$' \
            '^ExecStartPost=/usr/libexec/memblock/memblock-start --wait %i$' \
            '^User=memblock$' '^RuntimeDirectory=memblock/%i$' \
            '^StateDirectory=memblock/%i$' '^LimitMEMLOCK=infinity$' \
            '^KillSignal=SIGTERM$' '^TimeoutStopSec=' '^ProtectSystem=strict$' \
            '^ProtectHome=read-only$' '^PrivateTmp=yes$' '^NoNewPrivileges=yes$'; do
    expect_grep "$want" "$unit"
done
cp -an /lib/systemd/system/. "$root/lib/systemd/system/"
MANPATH=$root/usr/share/man systemd-analyze verify --root="$root" memblock@test.service \
    >"$tmp/verify" 2>&1 || { cat "$tmp/verify"; fail "systemd-analyze verify"; }
if [ -s "$tmp/verify" ]; then cat "$tmp/verify"; fail "systemd-analyze verify warned"; fi
# ... and it does catch a missing ExecStart binary.
mv "$start" "$start.away"
if MANPATH=$root/usr/share/man systemd-analyze verify --root="$root" memblock@test.service \
    >"$tmp/verify" 2>&1; then
    fail "systemd-analyze verify passed without memblock-start"
fi
mv "$start.away" "$start"
expect_grep '^u memblock ' "$root/usr/lib/sysusers.d/memblock.conf"

# The start script: the example configuration's command line.
env -u MEMBLOCK_CONFDIR -u MEMBLOCK_RUNDIR -u MEMBLOCK_PLUGIN -u NBDKIT \
    MEMBLOCK_CONFDIR="$root/etc/memblock" "$start" --dry-run example >"$tmp/args" ||
    fail "memblock-start --dry-run example"
cat >"$tmp/want" <<'EOF'
nbdkit
-f
-U
/run/memblock/example/nbd.sock
memblock
name=disk0:size=1G
name=scratch:size=4G
name=cache:size=1G:persist=/var/lib/memblock/example/cache.raw
dynamic=true
max-memory=8G
control=/run/memblock/example/control.sock
EOF
diff -u "$tmp/want" "$tmp/args" || fail "example.conf's nbdkit command line"
# The example configuration is valid: nbdkit accepts its parameters.
sed -n '6,$p' "$tmp/args" | grep -v '^control=' >"$tmp/params"

# Options, whitespace, CRLF, a path with blanks, control= given, a port
# given, no newline at the end.
mkdir -p "$tmp/etc" "$tmp/run/t1" "$tmp/run/t2" "$tmp/state"
printf '%s\n' '  # a comment' '' '--threads=4	 ' \
    'name=a b:size=1M:file=/srv/x y.raw' '-r' '   --port=10809' \
    'control=/run/elsewhere.sock' >"$tmp/etc/opts.conf"
printf 'name=c\r\n#--verbose\nmax-memory=1G' >>"$tmp/etc/opts.conf"
MEMBLOCK_CONFDIR=$tmp/etc NBDKIT=/usr/sbin/nbdkit MEMBLOCK_PLUGIN=/x/p.so \
    "$start" --dry-run opts >"$tmp/args" || fail "memblock-start --dry-run opts"
printf '%s\n' /usr/sbin/nbdkit -f --threads=4 -r --port=10809 /x/p.so \
    'name=a b:size=1M:file=/srv/x y.raw' control=/run/elsewhere.sock name=c \
    max-memory=1G >"$tmp/want"
diff -u "$tmp/want" "$tmp/args" || fail "opts.conf's nbdkit command line"
# NBDKIT=echo runs the same command line.
MEMBLOCK_CONFDIR=$tmp/etc NBDKIT=echo "$start" opts >"$tmp/echo" || fail "NBDKIT=echo"
[ "$(cat "$tmp/echo")" = "-f --threads=4 -r --port=10809 memblock name=a b:size=1M:file=/srv/x y.raw control=/run/elsewhere.sock name=c max-memory=1G" ] ||
    fail "NBDKIT=echo printed: $(cat "$tmp/echo")"

# Refusals: bad instance names, no configuration, bad usage.
for bad in '' '../x' 'a/b' '.hidden' 'a b' 'x;y'; do
    MEMBLOCK_CONFDIR=$tmp/etc expect_fail "instance '$bad'" "$start" --dry-run "$bad"
done
MEMBLOCK_CONFDIR=$tmp/etc "$start" --dry-run missing 2>"$tmp/err" >/dev/null &&
    fail "a missing configuration was accepted"
expect_grep "cannot read $tmp/etc/missing.conf" "$tmp/err"
expect_fail "no instance" "$start"
expect_fail "two instances" "$start" a b
expect_fail "unknown flag" "$start" --bogus a

# The extracted plugin, started by the extracted start script as the
# unit would start it, managed with the extracted memblock-ctl.
cat >"$tmp/etc/t1.conf" <<EOF
# as /etc/memblock/t1.conf
name=disk0:size=16M
name=keep:size=1M:persist=$tmp/state/keep.raw
--threads=4
EOF
run_instance() { # INSTANCE: start it in the background, wait until it is ready
    MEMBLOCK_CONFDIR=$tmp/etc MEMBLOCK_RUNDIR=$tmp/run MEMBLOCK_PLUGIN=$so \
        "$start" "$1" >"$tmp/$1.log" 2>&1 &
    inst_pid=$!
    _pids="$_pids $inst_pid"
    MAINPID=$inst_pid MEMBLOCK_CONFDIR=$tmp/etc MEMBLOCK_RUNDIR=$tmp/run \
        timeout 60 "$start" --wait "$1" || { cat "$tmp/$1.log"; fail "memblock-start --wait $1"; }
}
run_instance t1
nbd=$tmp/run/t1/nbd.sock
control=$tmp/run/t1/control.sock
[ -S "$nbd" ] || fail "no NBD socket at $nbd"
# Opened to the group (memblock) by --wait, the unit's ExecStartPost=.
[ "$(stat -c %a "$nbd")" = 770 ] || fail "NBD socket mode $(stat -c %a "$nbd")"
[ "$(stat -c %a "$control")" = 600 ] || fail "control socket mode $(stat -c %a "$control")"
nbdsh -u "$(uri disk0 "$nbd")" -c 'h.pwrite(b"packaged", 0); assert h.pread(8, 0) == b"packaged"' ||
    fail "the packaged plugin does not serve"
nbdsh -u "$(uri keep "$nbd")" -c 'h.pwrite(b"persisted", 4096); h.flush()' ||
    fail "write to keep"
"$ctl" -s "$control" snapshot disk0=disk0@0 >"$tmp/ctl.out" || fail "memblock-ctl snapshot"
"$ctl" -s "$control" list >"$tmp/ctl.out" || fail "memblock-ctl list"
expect_grep '^disk0@0 +16M +yes' "$tmp/ctl.out"
expect_grep '^keep +1\.0M +no' "$tmp/ctl.out"
# A clean stop (systemd's SIGTERM) saves :persist= devices.
kill -TERM "$inst_pid"
wait "$inst_pid" || { cat "$tmp/t1.log"; fail "nbdkit exited $? at SIGTERM"; }
[ -f "$tmp/state/keep.raw" ] || { cat "$tmp/t1.log"; fail "keep not saved at SIGTERM"; }
[ ! -e "$control" ] || fail "control socket left behind"
[ "$(dd if="$tmp/state/keep.raw" bs=1 skip=4096 count=9 2>/dev/null)" = persisted ] ||
    fail "keep.raw lacks what was written"
run_instance t1
nbdsh -u "$(uri keep "$nbd")" -c 'assert h.pread(9, 4096) == b"persisted"' ||
    fail "keep not loaded again"
kill -TERM "$inst_pid"; wait "$inst_pid" || fail "second stop"

# The example's parameters are accepted by the packaged plugin (with
# its paths moved into $tmp).
sed -e "s|/var/lib/memblock/example/|$tmp/state/|" "$tmp/params" >"$tmp/etc/t2.conf"
run_instance t2
"$ctl" -s "$tmp/run/t2/control.sock" list >"$tmp/ctl.out" || fail "memblock-ctl list (t2)"
expect_grep '^cache +1\.0G' "$tmp/ctl.out"
kill -TERM "$inst_pid"; wait "$inst_pid" || fail "stop t2"

# --wait gives up when the server dies before it is ready.
echo 'bogus-parameter=1' >"$tmp/etc/t3.conf"
mkdir -p "$tmp/run/t3"
MEMBLOCK_CONFDIR=$tmp/etc MEMBLOCK_RUNDIR=$tmp/run MEMBLOCK_PLUGIN=$so \
    "$start" t3 >"$tmp/t3.log" 2>&1 &
bad_pid=$!
_pids="$_pids $bad_pid"
if MAINPID=$bad_pid MEMBLOCK_CONFDIR=$tmp/etc MEMBLOCK_RUNDIR=$tmp/run \
    timeout 30 "$start" --wait t3 2>"$tmp/err"; then
    fail "--wait succeeded for a server that failed"
fi
expect_grep 'stopped before it was ready' "$tmp/err"
