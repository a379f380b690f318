#!/usr/bin/env bash
# One-shot set-up on a fresh Debian 12 machine (run as root, or with sudo available):
# the Debian packages of every real peer arraylab is tested against, then the npm
# dependencies (better-sqlite3 builds from source, about a minute) and the build.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  qemu-utils            # qemu-img, qemu-io, qemu-nbd
  qemu-system-common    # qemu-storage-daemon (FUSE export of an NBD/iSCSI volume)
  qemu-block-extra      # qemu's iSCSI and other block drivers
  libiscsi-bin          # iscsi-test-cu (conformance suite), iscsi-ls, iscsi-inq, iscsi-readcapacity16
  tgt                   # tgtd, the reference iSCSI target (tests run their own on private ports)
  nbdkit                # reference NBD server for benchmarks
  libnbd-bin            # nbdinfo, nbdcopy, nbdfuse
  python3-libnbd        # nbdsh and the python bindings (Debian's /usr/bin/python3)
  fio                   # fio with its nbd engine
  e2fsprogs xfsprogs    # mkfs and fsck for ext4 and xfs
  fuse3                 # FUSE mounts for qemu-storage-daemon and nbdfuse
  util-linux mount      # losetup, fallocate, mount
  openssl               # test certificates for NBD STARTTLS
  procps                # ps, for memory measurements
  jq                    # JSON on the command line (README.md's examples)
  build-essential python3 # node-gyp builds better-sqlite3 from source
  qemu-system-x86       # guests on the array (emulator/vm, vm-images)
  busybox-static cpio lz4 kmod binutils dash  # the guest image build (vm-images/build.sh)
  dpkg-dev pandoc       # the agent's Debian package (scripts/package-agent.sh): dpkg-shlibdeps, the man page
  chromium              # the dashboard's browser tests (headless, driven by puppeteer-core)
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Where systemd runs, installing tgt starts a tgt service listening on 0.0.0.0:3260, the port
# arraylab's built-in config serves iSCSI on. The tests never use it (each starts its own tgtd
# with a private control socket and port): in CI stop it; elsewhere say what holds the port.
if [ -d /run/systemd/system ] && systemctl is-active --quiet tgt 2>/dev/null; then
  if [ -n "${CI:-}" ]; then
    echo "setup: stopping and disabling the tgt service (it holds port 3260; tests run their own tgtd)"
    $SUDO systemctl disable --now tgt
  else
    echo "setup: note: the tgt service is running on port 3260, which arraylab's built-in config also uses; stop it with: sudo systemctl disable --now tgt"
  fi
fi

# /dev/fuse and loop devices are needed by the filesystem tests.
[ -e /dev/fuse ] || $SUDO modprobe fuse 2>/dev/null || echo "setup: warning: /dev/fuse is missing; filesystem tests will fail"

# npm ci rebuilds better-sqlite3 from source (about a minute): skip it when node_modules was
# installed from this very package-lock.json, and just rebuild arraylab itself.
stamp=node_modules/.arraylab-setup-stamp
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock_hash" ] && [ -z "${CI:-}" ]; then
  echo "setup: node_modules is current; building arraylab"
  npm run --silent build
else
  echo "setup: npm ci (builds better-sqlite3 from source, then arraylab)"
  npm ci --no-audit --no-fund
  echo "$lock_hash" > "$stamp"
fi
