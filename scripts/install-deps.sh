#!/usr/bin/env bash
# Installs everything zvmount's demo and tests use, on Debian 12 (bookworm).
# Idempotent: each step is skipped when its tool is already present.
#   scripts/install-deps.sh            FUSE, qemu, guest-image tools, s3s-fs
#   ZV_SKIP_S3=1 scripts/install-deps.sh   without the S3 server
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3 libfuse3-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v zstd >/dev/null || need_apt+=(zstd)
command -v busybox >/dev/null || need_apt+=(busybox-static)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v sfdisk >/dev/null || need_apt+=(fdisk)
command -v mcopy >/dev/null || need_apt+=(mtools)
command -v mkfs.fat >/dev/null || need_apt+=(dosfstools)
command -v syslinux >/dev/null || need_apt+=(syslinux syslinux-common)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v python3 >/dev/null || need_apt+=(python3)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
# promtool validates the /metrics exposition in tests/metrics.rs.
command -v promtool >/dev/null || need_apt+=(prometheus)
# fio: `zvimg bench read --passthrough` compares the mount with its cache file.
command -v fio >/dev/null || need_apt+=(fio)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)

qemu_missing=0
{ command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null; } || qemu_missing=1

if [ ${#need_apt[@]} -gt 0 ] || [ $qemu_missing -eq 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if [ $qemu_missing -eq 1 ] && [ ! -f /etc/apt/sources.list.d/bpo.sources ] \
     && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    # qemu-system from plain bookworm would remove the backports qemu-img the
    # machine ships; take both from backports, derived from the existing source.
    awk 'BEGIN{RS="";ORS="\n\n"} NR==1' /etc/apt/sources.list.d/debian.sources \
      | sed 's/^Suites:.*/Suites: bookworm-backports/' | $SUDO tee /etc/apt/sources.list.d/bpo.sources >/dev/null
  fi
  $SUDO apt-get update -qq
  if [ ${#need_apt[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  fi
  if [ $qemu_missing -eq 1 ]; then
    if [ -f /etc/apt/sources.list.d/bpo.sources ]; then
      $SUDO apt-get install -y -qq --no-install-recommends --no-remove -t bookworm-backports \
        qemu-system-x86 qemu-utils >/dev/null
    else
      $SUDO apt-get install -y -qq --no-install-recommends --no-remove qemu-system-x86 qemu-utils >/dev/null
    fi
  fi
fi

if [ "${ZV_SKIP_S3:-0}" != 1 ] && ! command -v s3s-fs >/dev/null; then
  # The S3-compatible server the tests run on 127.0.0.1; 0.14.1 is the last
  # release that builds with rustc 1.95.
  cargo install s3s-fs@0.14.1 --locked --features binary --quiet
fi

if ! command -v cargo-deb >/dev/null; then
  # Builds the .deb (both binaries, the systemd unit, man pages) that
  # scripts/test.sh unpacks and runs; 3.8.0 builds with rustc 1.95.
  cargo install cargo-deb@3.8.0 --locked --quiet
fi

# The fleet tests and `zvimg bench fleet` (tests/fleet_tier.rs): nginx as the
# caching tier (slice, proxy_cache_lock) and tinyproxy as a forward proxy for
# the HTTP_PROXY/NO_PROXY test. Neither package starts a service here.
fleet_apt=()
{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || fleet_apt+=(nginx)
{ command -v tinyproxy >/dev/null || [ -x /usr/bin/tinyproxy ]; } || fleet_apt+=(tinyproxy)
if [ ${#fleet_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${fleet_apt[@]}" >/dev/null
fi
