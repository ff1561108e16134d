#!/usr/bin/env bash
# The test suite. Fast checks first, so a formatting slip or a lint fails in
# seconds rather than after the long tests: rustfmt, clippy (warnings are
# errors; every library crate warns on missing docs), rustdoc (warnings
# are errors too). Then it installs what it needs, builds, builds the
# bootable guest image (cached), and runs every test — unit, format, store
# against a real S3-compatible server on 127.0.0.1, real FUSE mounts, and a
# real QEMU boot.
#   scripts/test.sh            everything
#   scripts/test.sh --quick    without the guest image and the boot test
#   scripts/test.sh --lint     only the fast checks
set -euo pipefail
cd "$(dirname "$0")/.."

mode=all
case "${1:-}" in
  --quick) mode=quick ;;
  --lint) mode=lint ;;
  "") ;;
  *) echo "usage: $0 [--quick|--lint]" >&2; exit 2 ;;
esac

for tool in fmt clippy; do
  cargo "$tool" --version >/dev/null 2>&1 || rustup component add "${tool/fmt/rustfmt}"
done

echo "== rustfmt"
cargo fmt --all --check

echo "== clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== rustdoc"
# Any warning fails: a missing doc comment, a broken or private link.
RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -D warnings" \
  cargo doc --workspace --no-deps --quiet

[ $mode = lint ] && exit 0

echo "== installing dependencies (skipped when present)"
scripts/install-deps.sh

echo "== building"
cargo build --workspace --all-targets --quiet

if [ $mode = all ]; then
  echo "== building the guest image (cached under .cache/guest)"
  ZV_GUEST_DIR="$(scripts/build-guest-image.sh)"
  export ZV_GUEST_DIR ZV_REQUIRE_E2E=1
  echo "   guest image: $ZV_GUEST_DIR"
fi

echo "== packaging: man pages, completions, .deb (unpacked and run)"
# The dev build above is what goes in: a packaging check, not a release
# (`cargo deb -p zvmount` alone builds and packs release binaries).
cargo run --quiet -p xtask -- dist packaging/generated
deb_dir="$(mktemp -d)"
cargo deb -p zvmount --no-build --profile dev --fast --output "$deb_dir" >/dev/null
deb_root="$(mktemp -d)"
dpkg -x "$deb_dir"/zvmount_*.deb "$deb_root"
"$deb_root/usr/bin/zvmount" --version
"$deb_root/usr/bin/zvimg" --version
test -f "$deb_root/lib/systemd/system/zvmount@.service"
# cargo-deb gzips man pages in some versions and modes.
ls "$deb_root"/usr/share/man/man1/zvmount.1* >/dev/null
test -f "$deb_root/usr/share/bash-completion/completions/zvimg"
rm -rf "$deb_dir" "$deb_root"

echo "== tests"
cargo test --workspace --no-fail-fast
