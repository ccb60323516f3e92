#!/bin/sh
# Power cuts under ext4 in a libguestfs appliance (guestfish), on
# :volatile devices.
#
# Proves:
#  1. ext4 on disk0 (name=disk0:size=256M:volatile, made by guestfish
#     mkfs): files written and synced, more written after the sync (the
#     device then holds unflushed writes), power cut with keep=none:
#     e2fsck -f -n finds the file system clean and every synced file
#     reads back intact;
#  2. a loop of $ROUNDS cuts (20 by default) at random points of a
#     file-creating workload (files of known content, a metadata churn of
#     small files created and deleted in three directories, "sync -f"
#     after every third file, whose success the guest reports), each
#     armed with after_writes drawn so that it lands mid-workload (the
#     workload's write count is measured first on a device that is not
#     cut), keep=random with a random seed, in 4096-byte units (a disk
#     with 4 KiB physical sectors: ext4's 1 KiB superblock torn at 512
#     bytes fails its checksum whatever the journal did): with ext4's
#     barriers on (the default), every round is clean
#     (e2fsck -f -n after the journal's replay) and every file synced
#     before the cut is intact;
#  3. the same loop mounted with barrier=0 (ext4 then never flushes, so
#     fsync promises nothing), $ZROUNDS rounds (5 by default, units of
#     512 or 4096 at random), finds
#     damage, fsck errors or lost synced data, in at least one round:
#     the check can see what it is for.
#
# How it stays cheap under TCG (a boot takes ~1 min here): one appliance
# for everything, given every device as its own drive (a drive whose
# power was cut gives EIO until the appliance goes, so each round needs
# a fresh device).  The cuts of a batch are armed from the host at once
# (each device counts only its own writes), the batch's rounds run one
# after the other in one "debug sh" (mount, workload, umount: shell
# built-ins but for a few commands, as each exec costs ~0.1 s under
# TCG), and every check runs on the host, on a copy of what memblock
# holds after the cut (nbdcopy; e2fsck -E journal_only replays the
# journal as a mount would; e2fsck -f -n; debugfs dumps the synced
# files).  The choices come from a master seed, printed; POWERCUT_SEED=N
# repeats them.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/guestfs-env.sh"

for t in nbdcopy e2fsck debugfs mkfs.ext4 awk cmp sha256sum; do
    command -v $t >/dev/null || fail "$t is not installed"
done
ctl=$top/scripts/memblock-ctl
[ -x "$ctl" ] || fail "$ctl is not executable"

ROUNDS=${POWERCUT_ROUNDS:-20}
ZROUNDS=${POWERCUT_ZROUNDS:-5}
BATCH=5
NFILES=12                       # files per round, "sync -f" after every 3rd
seed=${POWERCUT_SEED:-$(od -An -tu4 -N4 /dev/urandom | tr -d ' ')}
echo "master seed $seed (POWERCUT_SEED=$seed repeats this run's choices)"

# rnd KEY LO HI: a number in [LO, HI] drawn from the master seed and KEY
# (any number), the same every time.
rnd() {
    awk -v s="$seed" -v k="$1" -v lo="$2" -v hi="$3" \
        'BEGIN { srand((s * 7919 + k * 104729) % 2147483647);
                 print lo + int(rand() * (hi - lo + 1)) }'
}

# The devices: disk0 for part 1; cb and cz measure the workload's
# writes (barriers on and off); r1.. and z1.. are the rounds'.  The
# rounds' devices start as one empty ext4 made here.
mkfs.ext4 -q -F -b 4096 -L pc "$tmp/base.img" 64M >"$tmp/mkfs.out" 2>&1 ||
    { cat "$tmp/mkfs.out"; fail "mkfs.ext4 failed"; }
img=$tmp/base.img
devs="cb cz"
i=1
while [ $i -le "$ROUNDS" ]; do
    devs="$devs r$i"; i=$((i + 1))
done
i=1
while [ $i -le "$ZROUNDS" ]; do
    devs="$devs z$i"; i=$((i + 1))
done
set -- name=disk0:size=256M:volatile
for d in $devs; do
    set -- "$@" "name=$d:size=64M:volatile:file=$img"
done
start_server fs control="$tmp/ctl.sock" "$@"
ctlsock=$tmp/ctl.sock

ctl() {
    "$ctl" -s "$ctlsock" "$@"
}

# status DEV KEY: a number from DEV's power_cut_status.
status() {
    ctl --json power-status "$1" >"$tmp/status.json" ||
        fail "power-status $1 failed"
    python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))[sys.argv[2]]
print(str(v).lower())' "$tmp/status.json" "$2"
}

# The appliance, in guestfish's remote mode so that the host can act
# between its commands.
gf() {
    timeout "$GUESTFS_TIMEOUT" guestfish --remote "$@"
}
eval "$(guestfish --listen)" || fail "guestfish --listen failed"
[ -n "${GUESTFISH_PID:-}" ] || fail "guestfish --listen gave no pid"
_pids="$_pids $GUESTFISH_PID"
for d in disk0 $devs; do
    gf add-drive "$d" protocol:nbd server:unix:"$sock" format:raw label:"$(echo "$d" | tr 0-9 a-j)" ||
        fail "add-drive $d failed"
done
start=$(date +%s)
# One boot with every drive: allow it more than one command's time (each
# drive adds seconds under TCG).
timeout $((GUESTFS_TIMEOUT * 4)) guestfish --remote run ||
    fail "guestfish run failed (exit $?)"
echo "appliance up with $(echo disk0 $devs | wc -w) drives after" \
     "$(( $(date +%s) - start )) s"
gf list-devices >"$tmp/devices" || fail "list-devices failed"
[ "$(wc -l <"$tmp/devices")" -eq "$(echo disk0 $devs | wc -w)" ] ||
    { cat "$tmp/devices"; fail "the appliance does not see every drive"; }
# guest_dev NAME: the guest's device of drive NAME, by its label (the
# guest's sdX names follow the order the kernel probes the drives in,
# which is not always the order they were added; labels are letters
# only, so digits become a-j).
guest_dev() {
    echo "/dev/disk/guestfs/$(echo "$1" | tr 0-9 a-j)"
}

# fetch DEV: copy DEV's state into $tmp/chk.img, replay its journal as
# a mount would, and run e2fsck -f -n on it: sets fsck_rc (0 clean) and
# leaves the output in $tmp/fsck.out.
fetch() {
    rm -f "$tmp/chk.img"
    nbdcopy "$(uri "$1")" "$tmp/chk.img" || fail "nbdcopy $1 failed"
    fsck_rc=0
    e2fsck -E journal_only -y "$tmp/chk.img" >"$tmp/fsck.out" 2>&1 ||
        fsck_rc=$?
    # 1: the journal was replayed (the file system changed): fine.
    if [ $fsck_rc -le 1 ]; then
        fsck_rc=0
        e2fsck -f -n "$tmp/chk.img" >"$tmp/fsck.out" 2>&1 || fsck_rc=$?
    fi
}

# --------------------------------------------------------------------
# 1. disk0: synced files survive keep=none, and the file system is clean.
head -c 3M /dev/urandom >"$tmp/a.bin"
head -c 1M /dev/urandom >"$tmp/b.bin"
head -c 4M /dev/urandom >"$tmp/late.bin"
sda=$(guest_dev disk0)
# commit=600: ext4 would otherwise commit (and flush) its journal every
# 5 s, and under TCG the unsynced part takes longer than that, leaving
# nothing unflushed to lose.
gf mkfs ext4 "$sda" && gf mount-options commit=600 "$sda" / &&
    gf write /hello "synced hello" &&
    gf mkdir /dir && gf upload "$tmp/a.bin" /dir/a.bin &&
    gf upload "$tmp/b.bin" /b.bin && gf sync ||
    fail "disk0: the synced part of the workload failed"
# Write back dirty pages within a second, without a flush (only fsync
# and journal commits flush), so that the unsynced part reaches the
# device as unflushed writes instead of staying in the guest's cache.
gf debug sh "echo 50 > /proc/sys/vm/dirty_expire_centisecs; echo 20 > /proc/sys/vm/dirty_writeback_centisecs" >/dev/null ||
    fail "disk0: cannot set the guest's writeback"
gf upload "$tmp/late.bin" /late.bin && gf write /hello2 "not synced" &&
    gf mkdir /dir2 || fail "disk0: the unsynced part of the workload failed"
i=0
while [ "$(status disk0 unflushed_writes)" -eq 0 ] && [ $i -lt 30 ]; do
    sleep 1; i=$((i + 1))
done
unflushed=$(status disk0 unflushed_writes)
[ "$unflushed" -gt 0 ] ||
    fail "disk0: no unflushed writes after the unsynced part (nothing to lose)"
ctl power-cut disk0 keep=none >"$tmp/cut.out" || fail "power-cut disk0 failed"
cat "$tmp/cut.out"
[ "$(status disk0 cuts)" = 1 ] || fail "disk0: power_cut_status counts no cut"
# The guest's disk is gone: umount may report I/O errors (expected).
gf debug sh "umount /sysroot 2>&1 || umount -l /sysroot 2>&1; echo umounted" \
    >"$tmp/umount.out" || fail "disk0: the guest could not umount"
fetch disk0
[ $fsck_rc -eq 0 ] ||
    { cat "$tmp/fsck.out"; fail "disk0: e2fsck -f -n after the cut: exit $fsck_rc"; }
debugfs -R "cat /hello" "$tmp/chk.img" >"$tmp/hello.out" 2>/dev/null ||
    fail "disk0: debugfs cat /hello failed"
[ "$(cat "$tmp/hello.out")" = "synced hello" ] ||
    { cat "$tmp/hello.out"; fail "disk0: /hello lost or damaged"; }
printf 'dump /dir/a.bin %s\ndump /b.bin %s\n' "$tmp/a.out" "$tmp/b.out" \
    >"$tmp/dump0"
debugfs -f "$tmp/dump0" "$tmp/chk.img" >/dev/null 2>&1 ||
    fail "disk0: debugfs dump failed"
cmp -s "$tmp/a.bin" "$tmp/a.out" || fail "disk0: synced /dir/a.bin differs"
cmp -s "$tmp/b.bin" "$tmp/b.out" || fail "disk0: synced /b.bin differs"
echo "disk0: cut with $unflushed unflushed writes: e2fsck clean, synced" \
     "files intact"

# --------------------------------------------------------------------
# 2, 3. The rounds.

# The guest's workload on one device: mount with OPTS at /mR, NFILES
# files of known content (line j of file i of round R: "round R file i
# line j ..."), small files created and deleted in a/ b/ c/, and
# "sync -f ." after every third file, reported as "R synced i" when it
# succeeds.  Then umount (after a cut it may fail: the disk is gone).
# Every line it prints starts with "R "; errors are expected after a cut.
cat >"$tmp/workload.sh" <<'EOF'
wl() {
    R=$1; dev=$2; opts=$3
    mkdir -p /m$R
    mount -t ext4 -o "$opts" "$dev" /m$R 2>/dev/null ||
        { echo "$R mount-failed"; return 0; }
    cd /m$R
    mkdir a b c 2>/dev/null
    i=0
    while [ $i -lt NFILES ]; do
        i=$((i + 1))
        n=$(( (i * 37 + R * 11) % 150 + 30 ))
        j=0
        while [ $j -lt $n ]; do
            j=$((j + 1))
            echo "round $R file $i line $j ................................"
        done >f$i 2>/dev/null
        for d in a b c; do
            echo "$R $i $d" >$d/t$i 2>/dev/null
            echo "$R $i $d" >>$d/log 2>/dev/null
        done
        if [ $((i % 3)) -eq 0 ]; then
            rm -f a/t$((i - 2)) b/t$((i - 1)) c/t$((i - 2)) 2>/dev/null
            sync -f . 2>/dev/null && echo "$R synced $i"
        fi
    done
    cd /
    umount /m$R 2>/dev/null || umount -l /m$R 2>/dev/null
    echo "$R end"
}
EOF
sed -i "s/NFILES/$NFILES/" "$tmp/workload.sh"

# expected R I: the content of file I of round R, as the guest wrote it.
expected() {
    awk -v R="$1" -v i="$2" 'BEGIN {
        n = (i * 37 + R * 11) % 150 + 30
        for (j = 1; j <= n; j++)
            printf "round %d file %d line %d ................................\n", R, i, j
    }'
}

# run_guest "DEV R OPTS"...: run the workload on each in one debug sh;
# output in $tmp/guest.out.
run_guest() {
    script=$(cat "$tmp/workload.sh")
    for spec in "$@"; do
        set -- $spec
        script="$script
wl $2 $(guest_dev "$1") $3"
    done
    gf debug sh "$script" >"$tmp/guest.out" 2>&1 ||
        { cat "$tmp/guest.out"; fail "the guest's workload failed to run"; }
}

# Measure the writes of one round's workload, barriers on and off.
run_guest "cb 9001 barrier=1" "cz 9002 barrier=0"
wb=$(status cb writes)
wz=$(status cz writes)
echo "one round's workload: $wb writes with barriers," \
     "$wz writes with barrier=0 ($(status cb flushes) and" \
     "$(status cz flushes) flushes)"
grep -q "^9001 synced $NFILES$" "$tmp/guest.out" ||
    { cat "$tmp/guest.out"; fail "the workload did not run through"; }
[ "$wb" -ge 20 ] && [ "$wz" -ge 20 ] ||
    fail "the workload writes too little to cut it in the middle"

# check_round PREFIX R MODE: check round R's device PREFIX$R after its
# cut; prints the round's line and sets damaged=yes|no.
check_round() {
    dev=$1$2; R=$2
    fired=mid
    if [ "$(status "$dev" armed)" = true ]; then
        # The workload ended before the N-th write: cut now.
        fired=late
        ctl power-cut "$dev" keep=random seed="$cseed" unit="$cunit" \
            >/dev/null || fail "power-cut $dev failed"
    fi
    [ "$(status "$dev" cuts)" = 1 ] || fail "$dev: no cut counted"
    ctl --json power-status "$dev" | python3 -c 'import json, sys
c = json.load(sys.stdin)["last_cut"]
print("%d kept, %d in part, %d lost" % (c["writes_kept"], c["writes_partial"],
                                        c["writes_lost"]))' >"$tmp/kept"
    synced=$(sed -n "s/^$R synced //p" "$tmp/guest.out" | tail -n 1)
    synced=${synced:-0}
    fetch "$dev"
    problems=""
    [ $fsck_rc -eq 0 ] || problems="e2fsck exit $fsck_rc"
    if [ "$synced" -gt 0 ]; then
        : >"$tmp/dumps"
        i=1
        while [ $i -le "$synced" ]; do
            rm -f "$tmp/got.$i"
            echo "dump /f$i $tmp/got.$i" >>"$tmp/dumps"
            i=$((i + 1))
        done
        # A file debugfs cannot dump (or an image it cannot open) is
        # missing below: that is the damage looked for, not an error.
        debugfs -f "$tmp/dumps" "$tmp/chk.img" >"$tmp/debugfs.out" 2>&1 ||
            echo "debugfs: exit $?" >>"$tmp/debugfs.out"
        lost=0
        i=1
        while [ $i -le "$synced" ]; do
            expected "$R" $i >"$tmp/want"
            cmp -s "$tmp/want" "$tmp/got.$i" 2>/dev/null ||
                lost=$((lost + 1))
            i=$((i + 1))
        done
        [ $lost -eq 0 ] ||
            problems="${problems:+$problems, }$lost of $synced synced files lost or damaged"
    fi
    damaged=no
    [ -z "$problems" ] || damaged=yes
    printf 'round %-3s %-9s seed=%-10s unit=%-4s after_writes=%-4s cut %-4s' \
        "$R" "$3" "$cseed" "$cunit" "$cn" "$fired"
    printf ' synced %2s files; writes %s: %s\n' "$synced" "$(cat "$tmp/kept")" \
        "${problems:-clean, synced files intact}"
    if [ "$damaged" = yes ] && [ $fsck_rc -ne 0 ]; then
        grep -E -v '^(Pass [0-9]|e2fsck [0-9])' "$tmp/fsck.out" | head -n 4 |
            sed 's/^/        /'
    fi
    [ "$fired" = mid ] && mid=$((mid + 1))
    return 0
}

# batch PREFIX MODE OPTS WRITES FIRST LAST: rounds FIRST..LAST on devices
# PREFIX$R, mounted with OPTS, each cut after a random number of writes
# in [2, 90% of WRITES]; counts damaged rounds in $bad.
batch() {
    prefix=$1; mode=$2; opts=$3; w=$4; bfirst=$5; blast=$6
    specs=""
    R=$bfirst
    while [ $R -le "$blast" ]; do
        k=$R; [ "$prefix" = z ] && k=$((R + 1000))
        cseed=$(rnd $((k * 3)) 1 4000000000)
        # With barriers, whole 4 KiB blocks, as a disk with 4 KiB
        # physical sectors writes them: ext4's 1 KiB superblock torn at
        # 512 bytes fails its checksum however well the journal flushed.
        if [ "$mode" = barriers ]; then
            cunit=4096
        else
            cunit=$(( $(rnd $((k * 3 + 1)) 0 1) ? 4096 : 512 ))
        fi
        cn=$(rnd $((k * 3 + 2)) 2 $((w * 9 / 10)))
        ctl power-cut "$prefix$R" keep=random seed="$cseed" unit="$cunit" \
            after-writes="$cn" >/dev/null || fail "arming $prefix$R failed"
        echo "$cseed $cunit $cn" >"$tmp/choice.$prefix$R"
        specs="$specs $prefix$R"
        R=$((R + 1))
    done
    set --
    for d in $specs; do
        set -- "$@" "$d ${d#?} $opts"
    done
    run_guest "$@"
    R=$bfirst
    while [ $R -le "$blast" ]; do
        read cseed cunit cn <"$tmp/choice.$prefix$R"
        check_round "$prefix" $R "$mode"
        [ "$damaged" = no ] || bad=$((bad + 1))
        R=$((R + 1))
    done
}

echo "--- $ROUNDS rounds with barriers (barrier=1)"
bad=0 mid=0
first=1
while [ $first -le "$ROUNDS" ]; do
    last=$((first + BATCH - 1)); [ $last -le "$ROUNDS" ] || last=$ROUNDS
    batch r barriers barrier=1 "$wb" $first $last
    first=$((last + 1))
done
barrier_bad=$bad barrier_mid=$mid

echo "--- $ZROUNDS rounds with barrier=0"
bad=0 mid=0 done_z=$ZROUNDS
first=1
while [ $first -le "$ZROUNDS" ]; do
    last=$((first + BATCH - 1)); [ $last -le "$ZROUNDS" ] || last=$ZROUNDS
    batch z barrier=0 barrier=0 "$wz" $first $last
    first=$((last + 1))
done
gf exit || fail "guestfish exit failed"

echo "barriers: $barrier_bad of $ROUNDS rounds damaged ($barrier_mid cut" \
     "mid-workload); barrier=0: $bad of $done_z rounds damaged ($mid cut" \
     "mid-workload)"
[ "$barrier_mid" -ge $((ROUNDS * 3 / 4)) ] ||
    fail "only $barrier_mid of $ROUNDS cuts landed mid-workload"
[ "$barrier_bad" -eq 0 ] ||
    fail "$barrier_bad rounds with barriers lost synced data or failed e2fsck"
[ "$bad" -gt 0 ] ||
    fail "barrier=0: no damage in $done_z rounds: the checks cannot tell a" \
         "file system that does not flush from one that does"
echo "powercut-fs: all checks passed"
