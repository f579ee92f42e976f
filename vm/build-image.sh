#!/usr/bin/env bash
# Builds (or reuses) the Debian 12 guest for `make vm-test`: usage: vm/build-image.sh VM_DIR
#
# VM_DIR gets base.qcow2 (a compressed ext4 root: systemd, Debian's kernel and nodejs, make, curl,
# jq), vmlinuz and initrd.img (booted directly with -kernel/-initrd) and base.key. The image is
# reused while base.key matches this script's hash; vm/run.sh boots it with -snapshot, so it is
# never written to. Nothing of taskcell is in it: vm/run.sh brings the build on a second disk.
# Needs root (debootstrap, chroot), debootstrap, qemu-img and e2fsprogs; takes a few minutes once.
set -euo pipefail
umask 022

die() { echo "vm/build-image.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 VM_DIR"
[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot)"
for tool in debootstrap qemu-img mkfs.ext4; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install debootstrap qemu-utils e2fsprogs)"
done

mkdir -p "$1"
vm=$(cd "$1" && pwd)
key=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
if [ -f "$vm/base.qcow2" ] && [ -f "$vm/vmlinuz" ] && [ -f "$vm/initrd.img" ] &&
    [ "$(cat "$vm/base.key" 2>/dev/null)" = "$key" ]; then
    echo "vm: reusing $vm/base.qcow2"
    exit 0
fi

MIRROR=${VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,nodejs,make,curl,jq,procps,libssl3

root=$vm/base.tree
raw=$vm/base.raw
cleanup() {
    for m in "$root/proc" "$root/sys" "$root/dev"; do
        if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
    done
    rm -rf "$root" "$raw" "$vm/base.qcow2.new"
}
trap cleanup EXIT
cleanup
rm -f "$vm/base.key" "$vm/base.qcow2" "$vm/vmlinuz" "$vm/initrd.img"

echo "vm: debootstrap $SUITE from $MIRROR (a few minutes, once)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$vm/debootstrap.log" 2>&1 ||
    { tail -n 30 "$vm/debootstrap.log" >&2; die "debootstrap failed (log: $vm/debootstrap.log)"; }

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

echo taskcell-vm >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost taskcell-vm\n::1\tlocalhost\n' >"$root/etc/hosts"
: >"$root/etc/fstab" # the root comes from the kernel command line, mounted rw; nothing else
: >"$root/etc/machine-id"

# A small initramfs: only what mounting an ext4 root on virtio-blk needs.
cat >"$root/etc/initramfs-tools/conf.d/taskcell-vm" <<'EOF'
MODULES=list
COMPRESS=gzip
EOF
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >>"$root/etc/initramfs-tools/modules"
mount -t proc proc "$root/proc"
in_root update-initramfs -u -k all >/dev/null
umount "$root/proc"

# The guest's one job: unpack the bundle on the second disk and run its check script, whose lines go
# to the serial console; the machine powers off when it ends, however it ends.
cat >"$root/etc/systemd/system/taskcell-vm-check.service" <<'EOF'
[Unit]
Description=taskcell VM checks (make vm-test)
After=basic.target systemd-journald.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'rm -rf /root/taskcell && mkdir -p /root/taskcell && tar -C /root/taskcell -xf /dev/vdb && exec /root/taskcell/vm/guest-check.sh'
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=25min

[Install]
WantedBy=multi-user.target
EOF
in_root systemctl enable taskcell-vm-check.service >/dev/null 2>&1
# No login prompt on the console, nothing periodic.
in_root systemctl mask serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-timesyncd.service >/dev/null 2>&1 || true

# Keep it small: the kernel and initrd move out of the image; only the modules a virtio guest may load
# stay; no docs, no package caches.
cp "$(readlink -f "$root/vmlinuz")" "$vm/vmlinuz"
cp "$(readlink -f "$root/initrd.img")" "$vm/initrd.img"
for modules in "$root"/usr/lib/modules/*/; do
    version=$(basename "$modules")
    find "$modules/kernel" -mindepth 1 -maxdepth 1 ! -name fs ! -name lib ! -name crypto ! -name drivers \
        ! -name net -exec rm -rf {} +
    find "$modules/kernel/drivers" -mindepth 1 -maxdepth 1 ! -name virtio ! -name block ! -name char \
        ! -name net -exec rm -rf {} +
    find "$modules/kernel/drivers/net" -mindepth 1 -maxdepth 1 ! -name virtio_net.ko ! -name net_failover.ko \
        -exec rm -rf {} +
    in_root depmod -a "$version"
done
rm -rf "$root"/boot/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
    "$root"/var/lib/apt/lists/* "$root"/var/log/*.log

size=$(du -sm "$root" | cut -f1)
echo "vm: guest root is $size MiB; making the image"
mkfs.ext4 -q -F -L taskcell-vm -d "$root" "$raw" $((size + 1024))M
qemu-img convert -c -O qcow2 "$raw" "$vm/base.qcow2.new"
mv "$vm/base.qcow2.new" "$vm/base.qcow2"
echo "$key" >"$vm/base.key"
rm -f "$vm/debootstrap.log"
echo "vm: $vm/base.qcow2 ($(du -m "$vm/base.qcow2" | cut -f1) MiB), $(du -m "$vm/initrd.img" | cut -f1) MiB initrd"
