#!/usr/bin/env bash
# The main job, end to end on this machine, with the embedded default (a
# local directory as the store — no cloud account):
#   1. builds zvmount and zvimg;
#   2. builds a small bootable Linux disk (Debian packages only, cached);
#   3. converts it to ZVHD2 with its sidecar index;
#   4. mounts it with zvmount (blocks fetched and decoded on demand);
#   5. boots a QEMU guest from a qcow2 overlay over the mounted raw file;
#   6. prints what happened: boot time, what the guest read, what was fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

step() { printf '\n== %s\n' "$*"; }

step "installing dependencies (skipped when present)"
ZV_SKIP_S3=1 scripts/install-deps.sh

step "building zvmount and zvimg"
cargo build --workspace --bins --quiet
BIN="$REPO/target/debug"

step "building the sample guest disk (cached under .cache/guest)"
GUEST_DIR="$(scripts/build-guest-image.sh)"
RAW="$GUEST_DIR/guest.raw"
EXPECTED="$(cat "$GUEST_DIR/guest.expected")"
MARKER="$(cat "$GUEST_DIR/guest.marker")"

WORK="$REPO/.cache/demo"
STORE="$WORK/store"
MNT="$WORK/mnt"
fusermount3 -uz "$MNT" 2>/dev/null || true
rm -rf "$WORK"
mkdir -p "$STORE" "$MNT"

step "converting to ZVHD2 (+ .zvidx sidecar)"
"$BIN/zvimg" convert --sidecar "$RAW" "$STORE/guest.zvhd2"
"$BIN/zvimg" info "$STORE/guest.zvhd2"

step "mounting $STORE/guest.zvhd2 on $MNT"
# A host cache of the demo's own (emptied above with the rest of $WORK), so
# every run shows a cold mount; by default zvmount shares /var/cache/zvmount.
"$BIN/zvmount" --cache-dir "$WORK/cache" "$STORE/guest.zvhd2" "$MNT" 2>"$WORK/zvmount.log" &
ZV_PID=$!
cleanup() {
  kill -TERM "$ZV_PID" 2>/dev/null || true
  wait "$ZV_PID" 2>/dev/null || true
  fusermount3 -uz "$MNT" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
  [ -e "$MNT/guest.raw" ] && break
  kill -0 "$ZV_PID" 2>/dev/null || { cat "$WORK/zvmount.log"; exit 1; }
  sleep 0.1
done
[ -e "$MNT/guest.raw" ] || { echo "mount did not appear"; cat "$WORK/zvmount.log"; exit 1; }
ls -l "$MNT"
qemu-img info "$MNT/guest.raw" | head -4

step "booting a guest (QEMU, TCG) from an overlay over $MNT/guest.raw"
qemu-img create -q -f qcow2 -b "$MNT/guest.raw" -F raw "$WORK/overlay.qcow2"
ACCEL="${ZV_ACCEL:-tcg}"
start=$(date +%s.%N)
timeout 300 qemu-system-x86_64 -accel "$ACCEL" -m 512 -smp 1 -nodefaults -no-user-config \
  -display none -no-reboot -serial "file:$WORK/boot.log" \
  -drive "file=$WORK/overlay.qcow2,format=qcow2,if=virtio" </dev/null || true
end=$(date +%s.%N)

step "what happened"
line="$(grep -a "$MARKER" "$WORK/boot.log" | tail -n1 | tr -d '\r' || true)"
stats="$(cat "$MNT/.zvmount-stats.json")"
image_bytes=$(stat -c %s "$STORE/guest.zvhd2")
disk_bytes=$(stat -c %s "$MNT/guest.raw")
python3 - "$line" "$EXPECTED" "$stats" "$image_bytes" "$disk_bytes" "$start" "$end" <<'PY'
import json, sys
line, expected, stats, image_bytes, disk_bytes, start, end = sys.argv[1:]
s = json.loads(stats)
mib = lambda n: f"{int(n) / 2**20:.1f} MiB"
print(f"boot to marker:        {float(end) - float(start):.1f} s (TCG)")
print(f"guest marker line:     {line or '(none: the guest did not finish booting)'}")
ok = line.endswith(expected)
print(f"guest checksum:        {'matches the disk' if ok else 'WRONG or missing'}")
print(f"disk / stored image:   {mib(disk_bytes)} / {mib(image_bytes)}")
print(f"fetched from store:    {mib(s.get('store_bytes', 0))} in {s.get('store_requests', 0)} requests "
      f"({100 * int(s.get('store_bytes', 0)) / int(image_bytes):.1f}% of the image)")
print(f"blocks fetched:        {s.get('blocks_fetched', 0)} ({s.get('blocks_prefetched', 0)} prefetched), "
      f"cache hits {s.get('mem_cache_hits', 0)}, misses {s.get('cache_misses', 0)}")
sys.exit(0 if ok else 1)
PY
