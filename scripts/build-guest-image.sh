#!/usr/bin/env bash
# Builds the bootable test guest for zvmount's end-to-end test and boot
# benchmark, from Debian packages only, without mounts or loop devices.
#
#   scripts/build-guest-image.sh [--data-mib N] [OUT_DIR]
#
# OUT_DIR defaults to $REPO/.cache/guest/<hash of this script, scripts/guest/*
# and the arguments>/; an existing complete build there is reused. The path of
# the output directory is printed as the last line on stdout. It holds:
#   guest.raw        the disk: MBR + syslinux, p1 FAT16 (kernel, initrd),
#                    p2 ext4 root; 2 GiB virtual (more for --data-mib > 1024)
#   guest.expected   the sha256 the guest prints after its marker
#   guest.marker     the marker prefix, "ZVMOUNT-BOOT-OK"
#   guest.data-mib   N, the MiB of unread random data in the image
#   kernel.version   the Debian kernel package version inside
#
# The guest: a busybox initramfs loads the virtio modules and switch_roots to
# the ext4 root, whose /init reads ~90 MiB of payload (the kernel's module
# tree) in a fixed shuffled order, prints "ZVMOUNT-BOOT-OK <sha256>" on the
# serial console and powers off. --data-mib puts N MiB (default 128) of
# incompressible random data in /data that the guest never reads: an
# installed system holds far more than its boot reads, and the benchmark
# grows N to compare lazy boot with a full download as images grow.
#
# Needs (scripts/install-deps.sh): busybox-static, syslinux, mtools,
# dosfstools, fdisk, e2fsprogs, cpio, python3, apt-get with package lists.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
GUEST_SRC="$SCRIPT_DIR/guest"
MARKER="ZVMOUNT-BOOT-OK"

# Only the output directory goes to stdout (callers capture it); every
# tool's chatter goes to stderr.
exec 3>&1 1>&2

die() { echo "build-guest-image: $*" >&2; exit 1; }
log() { echo "build-guest-image: $*" >&2; }

data_mib=128
out_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data-mib) [ $# -ge 2 ] || die "--data-mib needs a value"; data_mib="$2"; shift 2 ;;
    --data-mib=*) data_mib="${1#*=}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&3; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$out_dir" ] || die "more than one OUT_DIR given"; out_dir="$1"; shift ;;
  esac
done
[[ "$data_mib" =~ ^[0-9]+$ ]] || die "--data-mib must be a whole number of MiB, got '$data_mib'"

for tool in busybox sfdisk mkfs.fat mcopy syslinux mkfs.ext4 cpio python3 dpkg-deb apt-get sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found; run scripts/install-deps.sh"
done
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$MBR_BIN" ] || die "$MBR_BIN not found; run scripts/install-deps.sh (syslinux-common)"

# The cache key covers everything that decides the image's content.
script_hash="$( { cat "$0"; for f in "$GUEST_SRC"/*; do echo "== $f"; cat "$f"; done; } | sha256sum | cut -c1-16)"
key="$(echo "$script_hash data_mib=$data_mib" | sha256sum | cut -c1-16)"
if [ -z "$out_dir" ]; then
  out_dir="$REPO/.cache/guest/$key"
  # Builds by an older version of this script are never used again.
  for old in "$REPO"/.cache/guest/*/; do
    [ -f "$old/.script" ] && [ "$(cat "$old/.script")" != "$script_hash" ] && rm -rf "$old"
  done
fi
if [ -f "$out_dir/.complete" ] && [ "$(cat "$out_dir/.complete")" = "$key" ]; then
  log "reusing $out_dir"
  echo "$out_dir" >&3
  exit 0
fi

mkdir -p "$out_dir"
rm -f "$out_dir/.complete"
work="$(mktemp -d "${TMPDIR:-/tmp}/zv-guest.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- kernel: the package linux-image-cloud-amd64 currently depends on --------
kpkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
if [ -z "$kpkg" ]; then
  log "no package lists; running apt-get update"
  apt-get update -qq || die "apt-get update failed"
  kpkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
fi
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
deb_cache="$REPO/.cache/debs"
mkdir -p "$deb_cache"
deb="$(ls "$deb_cache/${kpkg}"_*.deb 2>/dev/null | head -n1 || true)"
if [ -z "$deb" ]; then
  log "downloading $kpkg"
  (cd "$deb_cache" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" >/dev/null) \
    || die "apt-get download $kpkg failed"
  deb="$(ls "$deb_cache/${kpkg}"_*.deb | head -n1)"
fi
dpkg-deb -x "$deb" "$work/kernel"
kver="${kpkg#linux-image-}"
vmlinuz="$work/kernel/boot/vmlinuz-$kver"
moddir="$work/kernel/lib/modules/$kver"
[ -f "$vmlinuz" ] && [ -d "$moddir" ] || die "$deb does not hold boot/vmlinuz-$kver and lib/modules/$kver"

# --- initramfs: busybox + the six virtio modules -----------------------------
ird="$work/initramfs"
mkdir -p "$ird/bin" "$ird/modules"
cp "$(command -v busybox)" "$ird/bin/busybox"
ln -s busybox "$ird/bin/sh"
for m in virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  src="$(find "$moddir" -name "$m.ko" | head -n1)"
  [ -n "$src" ] || die "module $m.ko not in $kpkg"
  cp "$src" "$ird/modules/"
done
install -m 0755 "$GUEST_SRC/initramfs-init" "$ird/init"
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -9n > "$work/initrd.img"

# --- root filesystem tree ----------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,payload}
cp "$(command -v busybox)" "$root/bin/busybox"
# Symlink every applet except busybox itself (a self-link loops at boot).
busybox --list-full | while read -r applet; do
  [ "$(basename "$applet")" = busybox ] && continue
  [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
install -m 0755 "$GUEST_SRC/rootfs-init" "$root/init"
cp -a "$moddir" "$root/payload/modules"
# The read order: every payload file, shuffled with a fixed seed, so each
# build of the same inputs reads the same scattered pattern.
(cd "$root" && find payload -type f | LC_ALL=C sort) | python3 -c '
import random, sys
files = sys.stdin.read().split()
random.Random(20240611).shuffle(files)
print("\n".join(files))' > "$root/payload.list"
expected="$(cd "$root" && xargs cat < payload.list | sha256sum | cut -d" " -f1)"
if [ "$data_mib" -gt 0 ]; then
  mkdir -p "$root/data"
  left=$data_mib; i=0
  while [ "$left" -gt 0 ]; do
    chunk=$(( left < 256 ? left : 256 ))
    head -c "$((chunk * 1024 * 1024))" /dev/urandom > "$root/data/random-$i.bin"
    left=$((left - chunk)); i=$((i + 1))
  done
fi

# --- the disk: MBR, p1 FAT16 boot (64 MiB), p2 ext4 root ----------------------
# 2 GiB, or enough for the data plus ~1 GiB of free space.
need_mib=$(( data_mib + data_mib / 16 + 1024 ))
virt_mib=$(( need_mib > 2048 ? need_mib : 2048 ))
img="$work/guest.raw"
truncate -s "${virt_mib}M" "$img"
p1_start=2048                        # sectors
p1_sectors=$(( 64 * 2048 ))
p2_start=$(( p1_start + p1_sectors ))
printf 'label: dos\n%s,%s,6,*\n%s,,83\n' "$p1_start" "$p1_sectors" "$p2_start" \
  | sfdisk -q --no-reread --no-tell-kernel "$img" >/dev/null
dd if="$MBR_BIN" of="$img" bs=440 count=1 conv=notrunc status=none
p1_off=$(( p1_start * 512 ))
mkfs.fat -F 16 -n ZVBOOT --offset "$p1_start" "$img" $(( p1_sectors / 2 )) >/dev/null 2>&1 \
  || die "mkfs.fat failed"
export MTOOLS_SKIP_CHECK=1
mcopy -i "$img@@$p1_off" "$vmlinuz" ::/vmlinuz
mcopy -i "$img@@$p1_off" "$work/initrd.img" ::/initrd.img
mcopy -i "$img@@$p1_off" "$GUEST_SRC/syslinux.cfg" ::/syslinux.cfg
syslinux --offset "$p1_off" --install "$img"
p2_off=$(( p2_start * 512 ))
p2_kib=$(( (virt_mib * 1024 * 1024 - p2_off) / 1024 ))
# Eager inode-table/journal init: otherwise the guest kernel zeroes them in
# the background after mount, writing tens of MB the benchmark would count.
mkfs.ext4 -q -F -L zvroot -E "offset=$p2_off,lazy_itable_init=0,lazy_journal_init=0" \
  -d "$root" "$img" "${p2_kib}k"

mv "$img" "$out_dir/guest.raw"
echo "$expected" > "$out_dir/guest.expected"
echo "$MARKER" > "$out_dir/guest.marker"
echo "$data_mib" > "$out_dir/guest.data-mib"
echo "$kpkg $(dpkg-deb -f "$deb" Version)" > "$out_dir/kernel.version"
echo "$script_hash" > "$out_dir/.script"
echo "$key" > "$out_dir/.complete"
log "built $out_dir/guest.raw (${virt_mib} MiB virtual, $(du -m "$out_dir/guest.raw" | cut -f1) MiB used, data ${data_mib} MiB)"
echo "$out_dir" >&3
