# memblock: libguestfs environment for the guestfish tests; source it
# after tests/lib.sh (it uses $tmp and fail).
#
# Uses the direct backend (qemu run by libguestfs itself).  Whether KVM
# works is decided by a quick probe, once per boot: /dev/kvm can exist
# and still fail (qemu aborts with "failed to set MSR", or the kernel
# hangs as it starts), and then the appliance must run under TCG
# (LIBGUESTFS_BACKEND_SETTINGS=force_tcg).
# The answer is cached in /tmp/memblock-guestfs-accel2.BOOT_ID.
# A caller's own LIBGUESTFS_BACKEND_SETTINGS is kept as it is.

LIBGUESTFS_BACKEND=direct
export LIBGUESTFS_BACKEND

# Per-launch temporary files (overlays) go under the test's $tmp, so they
# go even when a launch is killed; the appliance cache stays where it was.
LIBGUESTFS_CACHEDIR=${LIBGUESTFS_CACHEDIR:-${LIBGUESTFS_TMPDIR:-${TMPDIR:-/var/tmp}}}
LIBGUESTFS_TMPDIR=$tmp
export LIBGUESTFS_CACHEDIR LIBGUESTFS_TMPDIR

# guestfs_probe_accel: print "kvm" if qemu can boot a Linux kernel under
# KVM with the CPU model libguestfs uses there, else "tcg".  Creating the
# vCPU is not enough: on some hosts KVM runs the BIOS and then hangs as
# the kernel starts, so the probe boots /boot's kernel (no initrd: it
# panics at once after printing its banner) and waits for the banner.
guestfs_probe_accel() {
    kernel=$(ls /boot/vmlinuz-* 2>/dev/null | tail -n 1)
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ] || [ -z "$kernel" ]; then
        echo tcg
        return
    fi
    # The subshell keeps the shell's "Aborted" notice out of the log.
    if (timeout 15 qemu-system-x86_64 -machine accel=kvm -cpu max,la57=off \
            -m 256 -nodefaults -display none -no-reboot -serial stdio \
            -kernel "$kernel" -append "console=ttyS0 panic=-1" </dev/null |
        grep -a -q -m 1 'Linux version') >/dev/null 2>&1; then
        echo kvm
    else
        echo tcg
    fi
}

command -v guestfish >/dev/null ||
    fail "guestfish is not installed (scripts/install-deps.sh installs it)"
command -v qemu-system-x86_64 >/dev/null ||
    fail "qemu-system-x86_64 is not installed (a guestfish dependency)"
ls /boot/vmlinuz-* >/dev/null 2>&1 ||
    fail "no kernel in /boot for the libguestfs appliance (install linux-image-amd64)"

_boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
_accel_cache=/tmp/memblock-guestfs-accel2.$_boot_id
guestfs_accel=$(cat "$_accel_cache" 2>/dev/null || :)
case "$guestfs_accel" in
    kvm|tcg) ;;
    *)
        guestfs_accel=$(guestfs_probe_accel)
        # Atomic replace, so concurrent runs never read half a file.
        echo "$guestfs_accel" >"$_accel_cache.$$"
        mv -f "$_accel_cache.$$" "$_accel_cache"
        ;;
esac
if [ "$guestfs_accel" = tcg ] && [ -z "${LIBGUESTFS_BACKEND_SETTINGS:-}" ]; then
    LIBGUESTFS_BACKEND_SETTINGS=force_tcg
    export LIBGUESTFS_BACKEND_SETTINGS
fi
echo "libguestfs: backend direct, accelerator $guestfs_accel" \
     "(settings: ${LIBGUESTFS_BACKEND_SETTINGS:-none})"

# Seconds allowed for one guestfish run that launches the appliance.
GUESTFS_TIMEOUT=${GUESTFS_TIMEOUT:-180}

# guestfish_run NAME ARGS...: run guestfish with the script on stdin,
# output in $tmp/NAME.out; fails the test on error or timeout.
guestfish_run() {
    gname=$1; shift
    start=$(date +%s)
    rc=0
    timeout "$GUESTFS_TIMEOUT" guestfish "$@" \
        >"$tmp/$gname.out" 2>"$tmp/$gname.err" || rc=$?
    echo "guestfish $gname: exit $rc after $(( $(date +%s) - start )) s"
    if [ $rc -ne 0 ]; then
        cat "$tmp/$gname.out" "$tmp/$gname.err"
        [ $rc -ne 124 ] || fail "guestfish $gname: over $GUESTFS_TIMEOUT s"
        fail "guestfish $gname failed (exit $rc)"
    fi
}

# check_output NAME EXPECTED: the guestfish output must be exactly that.
check_output() {
    printf '%s\n' "$2" >"$tmp/$1.want"
    diff -u "$tmp/$1.want" "$tmp/$1.out" ||
        fail "guestfish $1: output differs from the expected (above)"
}

