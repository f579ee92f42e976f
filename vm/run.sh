#!/usr/bin/env bash
# `make vm-test`: boots Debian 12 (systemd, pure cgroup v2) in qemu with the build of this checkout on a second
# disk; the guest installs it with `make install`, runs it with systemctl and checks it (vm/guest-check.sh),
# printing VMTEST lines on the serial console, then powers off. This script prints those lines, a summary, and
# exits 0 only if every check passed. Run from the checkout after `make`, as root.
#
# Environment: VM_ACCEL=kvm|tcg (default: KVM if a quick probe boots a kernel with it, else TCG),
# VM_TIMEOUT seconds (default 1500), VM_MEMORY MiB (default 2048), VM_CPUS (default 2), VM_DIR (target/vm).
set -euo pipefail

die() { echo "vm/run.sh: $*" >&2; exit 1; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || die "needs root (debootstrap for the guest image)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
for f in target/release/taskcell rootfs/build.sh runtime/js dist/taskcell.service dist/config.json vm/guest-check.sh; do
    [ -e "$f" ] || die "$f is missing (run make first)"
done

VM_DIR=${VM_DIR:-target/vm}
TIMEOUT=${VM_TIMEOUT:-1500}
MEMORY=${VM_MEMORY:-2048}
CPUS=${VM_CPUS:-2}
began=$(date +%s)

bash vm/build-image.sh "$VM_DIR"
vm=$(cd "$VM_DIR" && pwd)
log=$vm/console.log
bundle=$vm/bundle.tar
qemu_pid=
cleanup() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$qemu_pid" 2>/dev/null || true
    fi
    rm -f "$bundle"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The guest's second disk: a plain tar of what `make install` needs (the guest reads it with tar -xf /dev/vdb).
tar --owner=0 --group=0 -cf "$bundle" Makefile target/release/taskcell rootfs/build.sh runtime/js dist vm/guest-check.sh

# KVM hangs right after the kernel's decompression on some hosts: boot the kernel alone (it panics at once for
# want of a root) and use KVM only if that panic shows up within a few seconds.
accel=${VM_ACCEL:-}
if [ -z "$accel" ]; then
    accel=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        probe=$(timeout -s KILL 15 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -display none -no-reboot \
            -serial stdio -kernel "$vm/vmlinuz" -append "console=ttyS0 panic=-1" </dev/null 2>&1 || true)
        if grep -q "Kernel panic" <<<"$probe"; then accel=kvm; fi
    fi
fi
case $accel in
    kvm) cpu=host ;;
    tcg) cpu=qemu64 ;;
    *) die "VM_ACCEL must be kvm or tcg" ;;
esac
echo "vm: booting Debian 12 with $accel, $CPUS cpus, $MEMORY MiB (serial log: $log)"

: >"$log"
qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -smp "$CPUS" -m "$MEMORY" -nodefaults -display none -no-reboot \
    -serial "file:$log" \
    -kernel "$vm/vmlinuz" -initrd "$vm/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 quiet loglevel=3 systemd.show_status=false panic=-1" \
    -drive "file=$vm/base.qcow2,if=virtio,format=qcow2,snapshot=on" \
    -drive "file=$bundle,if=virtio,format=raw,readonly=on" \
    </dev/null >"$vm/qemu.log" 2>&1 &
qemu_pid=$!

# Follow the console: show the VMTEST lines as they come, stop at power-off or the deadline.
shown=0
deadline=$((began + TIMEOUT))
while kill -0 "$qemu_pid" 2>/dev/null; do
    lines=$(tr -d '\r' <"$log" | grep -a '^VMTEST ' || true)
    count=$(grep -c . <<<"$lines" || true)
    if [ "$count" -gt "$shown" ]; then
        tail -n $((count - shown)) <<<"$lines" | sed 's/^VMTEST /  /'
        shown=$count
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "vm: no power-off after ${TIMEOUT} s: killing the VM"
        break
    fi
    sleep 2
done
cleanup
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=

lines=$(tr -d '\r' <"$log" | grep -a '^VMTEST ' || true)
count=$(grep -c . <<<"$lines" || true)
if [ "$count" -gt "$shown" ]; then tail -n $((count - shown)) <<<"$lines" | sed 's/^VMTEST /  /'; fi
passes=$(grep -c '^VMTEST PASS ' <<<"$lines" || true)
fails=$(grep -c '^VMTEST FAIL ' <<<"$lines" || true)
elapsed=$(($(date +%s) - began))
if ! grep -q '^VMTEST DONE ' <<<"$lines"; then
    echo "vm: the guest did not finish its checks; the end of its console:"
    tr -d '\r' <"$log" | tail -n 40 | sed 's/^/  | /'
    [ -s "$vm/qemu.log" ] && sed 's/^/  qemu: /' "$vm/qemu.log"
    echo "vm-test: FAIL ($passes passed, $fails failed, unfinished) in ${elapsed} s with $accel"
    exit 1
fi
if [ "$fails" -gt 0 ]; then
    echo "vm-test: FAIL ($passes passed, $fails failed) in ${elapsed} s with $accel"
    grep '^VMTEST FAIL ' <<<"$lines" | sed 's/^VMTEST /  /'
    exit 1
fi
echo "vm-test: PASS ($passes checks) in ${elapsed} s with $accel"
