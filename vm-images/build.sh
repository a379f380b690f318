#!/usr/bin/env bash
# Builds the arraylab guest: Debian 12's cloud kernel (as vmlinux for PVH boot) and an initramfs with busybox,
# util-linux, e2fsprogs, xfsprogs, the kernel modules for virtio disks/SCSI/serial and xfs, the
# Node runtime and the agent, installed from its Debian package (scripts/package-agent.sh). No
# root filesystem.
#
#   bash vm-images/build.sh            # build into vm-images/build/, or say it is up to date
#   bash vm-images/build.sh --force    # rebuild even if the stamp matches
#   bash vm-images/build.sh --stamp    # print the stamp the image has to have, build nothing
#
# Outputs: build/vmlinux (or build/vmlinuz), build/initrd.img, build/image.json (kernel version, sizes, stamp).
# The stamp hashes this script, init, the package versions copied in and the agent's .deb (not
# dist/: a change to the emulator alone leaves the image as it is): it rebuilds only when one of
# them changes. Builds are serialised with a lock (tests in parallel workers may call it at
# once). Run as root (apt-get, chroot-free but dpkg-deb -x).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BUILD="$HERE/build"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
FORCE=0
PRINT_STAMP=0
case "${1:-}" in
  --force) FORCE=1 ;;
  --stamp) PRINT_STAMP=1 ;;
  "") ;;
  *) echo "vm-images: usage: build.sh [--force | --stamp]" >&2; exit 2 ;;
esac

mkdir -p "$BUILD"
exec 9>"$BUILD/.lock"
flock 9

started=$(date +%s.%N)
log() { echo "vm-images: $*"; }
die() { echo "vm-images: error: $*" >&2; exit 1; }

# --- build-host packages, installed only when missing ------------------------------------------
HOST_PACKAGES=(
  busybox-static    # the guest's shell and small tools (static: no libraries to copy)
  cpio lz4          # the initramfs archive and its compression
  kmod              # depmod/modprobe -d to resolve module dependencies on the host
  qemu-system-x86   # to boot it (the launcher, emulator/vm/)
  util-linux mount e2fsprogs xfsprogs coreutils dash binutils  # tools copied in; strip
)
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
for p in "${HOST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
apt_updated=0
apt_update() { [ "$apt_updated" = 1 ] || { $SUDO apt-get update -qq; apt_updated=1; }; }
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the kernel package: the cloud metapackage's current dependency -----------------------------
resolve_kernel() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
KPKG=$(resolve_kernel)
if [ -z "$KPKG" ]; then apt_update; KPKG=$(resolve_kernel); fi
[ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package; check that Debian's package lists are reachable (apt-get update)"
KVER_PKG=$(apt-cache policy "$KPKG" | awk '/Candidate:/ { print $2 }')
KREL=${KPKG#linux-image-}   # e.g. 6.1.0-57-cloud-amd64: the module directory and uname -r

# --- what goes in, and the stamp ------------------------------------------------------------------
# Host paths copied into the guest (their shared libraries follow through ldd).
TOOLS=(
  mount umount fsfreeze blockdev losetup blkid lsblk findmnt   # util-linux
  mke2fs e2fsck tune2fs dumpe2fs                               # e2fsprogs
  mkfs.xfs xfs_repair xfs_db                                   # xfsprogs
  sync dd                                                      # coreutils: sync -f, dd iflag=nocache
  dash   # /bin/sh: busybox's ash runs its own applets before PATH (mount would be busybox's)
)
# Kernel modules copied in (with their dependencies). Built-ins of the cloud kernel (ext4, jbd2,
# crc32c, the 8250 serial console, devtmpfs) need nothing; these are =m in its config. /init
# loads BOOT_MODULES and then the drivers of the devices present (modalias); xfs on first mount.
MODULES=(virtio_pci virtio_blk virtio_scsi sd_mod virtio_console loop xfs)
BOOT_MODULES=(virtio_pci loop)
NODE=$(command -v node) || die "node is not installed; the guest carries the host's Node runtime"
NODE=$(readlink -f "$NODE")
NODE_PKG=$(dpkg -S "$NODE" 2>/dev/null | cut -d: -f1 || true)

pkg_versions() {
  for p in busybox-static util-linux mount e2fsprogs xfsprogs coreutils libc6 ${NODE_PKG:+"$NODE_PKG"}; do
    echo "$p=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo none)"
  done
  echo "$KPKG=$KVER_PKG"
  echo "node=$("$NODE" --version)"
}
# The agent: its Debian package, built (or found up to date) by scripts/package-agent.sh from
# agent/ and proto/ only. It is reproducible, so its hash changes only when what it holds does.
AGENT_DEB=$(bash "$REPO/scripts/package-agent.sh") || die "scripts/package-agent.sh failed; the guest carries the agent from its package"
AGENT_DEB_SHA=$(sha256sum "$AGENT_DEB" | cut -d' ' -f1)
STAMP=$(
  {
    sha256sum "$HERE/build.sh" "$HERE/init" | cut -d' ' -f1
    printf '%s\n' "${TOOLS[@]}" "${MODULES[@]}" "${BOOT_MODULES[@]}"
    pkg_versions
    echo "agent=${AGENT_DEB##*/} $AGENT_DEB_SHA"
  } | sha256sum | cut -d' ' -f1
)
if [ "$PRINT_STAMP" = 1 ]; then
  echo "$STAMP"
  exit 0
fi

print_sizes() {
  log "kernel $KREL ($KPKG $KVER_PKG)"
  local k="$BUILD/vmlinux"
  [ -f "$k" ] || k="$BUILD/vmlinuz"
  log "${k##*/} $(du -h "$k" | cut -f1), initrd.img $(du -h "$BUILD/initrd.img" | cut -f1) (unpacked $(cat "$BUILD/.unpacked" 2>/dev/null || echo '?'))"
}

if [ "$FORCE" = 0 ] && [ -f "$BUILD/stamp" ] && [ "$(cat "$BUILD/stamp")" = "$STAMP" ] \
   && { [ -f "$BUILD/vmlinux" ] || [ -f "$BUILD/vmlinuz" ]; } && [ -f "$BUILD/initrd.img" ] && [ -f "$BUILD/image.json" ]; then
  log "up to date (stamp ${STAMP:0:12})"
  print_sizes
  exit 0
fi
log "building (stamp ${STAMP:0:12})"

WORK="$BUILD/work"
rm -rf "$WORK"
mkdir -p "$WORK" "$BUILD/cache"

# vmlinux out of a bzImage: the payload's place and length are in the setup header (boot
# protocol 2.08+: setup_sects at 0x1f1, payload_offset at 0x248 and payload_length at 0x24c, from
# the protected-mode code at (setup_sects + 1) * 512); its compressor is known by its magic.
# Succeeds only if the result is an ELF with a PVH entry note (Xen note type 0x12), which is
# what lets qemu -kernel start it directly. Why it failed goes to $WORK/extract.err.
extract_vmlinux() {
  local bz=$1 out=$2 sects off len magic
  : > "$WORK/extract.err"
  sects=$(od -An -t u1 -j $((0x1f1)) -N 1 "$bz" | tr -d ' ')
  [ "$sects" = 0 ] && sects=4
  off=$(( (sects + 1) * 512 + $(od -An -t u4 -j $((0x248)) -N 4 "$bz" | tr -d ' ') ))
  len=$(od -An -t u4 -j $((0x24c)) -N 4 "$bz" | tr -d ' ')
  magic=$(tail -c +$((off + 1)) "$bz" | head -c 6 | od -An -t x1 | tr -d ' \n')
  local decompress
  case "$magic" in
    02214c18*) decompress="lz4 -dc" ;;
    1f8b*) decompress="gzip -dc" ;;
    fd377a585a00) decompress="xz -dc" ;;
    28b52ffd*) decompress="zstd -dc" ;;
    *) echo "unknown kernel payload compression (magic $magic)" > "$WORK/extract.err"; return 1 ;;
  esac
  # The build appends the uncompressed size after the stream; lz4 and gzip then exit non-zero
  # on the trailing bytes, so the result is judged by what came out, not by the exit status.
  tail -c +$((off + 1)) "$bz" | head -c "$len" | $decompress > "$out" 2>/dev/null || true
  if [ "$(head -c 4 "$out" | od -An -t x1 | tr -d ' \n')" != 7f454c46 ]; then
    echo "the payload did not decompress to an ELF file" > "$WORK/extract.err"; rm -f "$out"; return 1
  fi
  if ! readelf -n "$out" 2>/dev/null | grep -q '(0x00000012)'; then
    echo "the kernel has no PVH entry note (CONFIG_PVH)" > "$WORK/extract.err"; rm -f "$out"; return 1
  fi
}

# --- kernel: download once per version, extract vmlinuz and the modules -------------------------
deb=$(ls "$BUILD/cache/${KPKG}_"*"_amd64.deb" 2>/dev/null | grep -F "_${KVER_PKG//:/%3a}_" | head -1 || true)
if [ -z "$deb" ]; then
  log "downloading $KPKG $KVER_PKG"
  # apt-get download writes to the current directory; _apt cannot write here, which is fine as root.
  (cd "$BUILD/cache" && rm -f "${KPKG}_"*.deb && apt-get download "$KPKG" 2>&1 | grep -v "unsandboxed" || true)
  deb=$(ls "$BUILD/cache/${KPKG}_"*"_amd64.deb" 2>/dev/null | head -1 || true)
  [ -n "$deb" ] || die "apt-get download $KPKG failed; run apt-get update and check that the package exists"
fi
dpkg-deb -x "$deb" "$WORK/kernel"
KDIR="$WORK/kernel/lib/modules/$KREL"
[ -f "$WORK/kernel/boot/vmlinuz-$KREL" ] || die "$deb has no boot/vmlinuz-$KREL"
depmod -b "$WORK/kernel" "$KREL"

ROOT="$WORK/root"
mkdir -p "$ROOT"/{usr/bin,usr/sbin,usr/lib64,usr/lib/x86_64-linux-gnu,etc/arraylab,proc,sys,dev,run,tmp,mnt,root}
ln -s usr/bin "$ROOT/bin"; ln -s usr/sbin "$ROOT/sbin"; ln -s usr/lib "$ROOT/lib"; ln -s usr/lib64 "$ROOT/lib64"
chmod 1777 "$ROOT/tmp"

# Module files with their dependencies, then modules.dep for busybox modprobe.
: > "$ROOT/etc/arraylab/modules"
for name in "${MODULES[@]}"; do
  modprobe -d "$WORK/kernel" -S "$KREL" --show-depends "$name" >"$WORK/deps" 2>&1 \
    || die "kernel $KREL has no module $name: $(cat "$WORK/deps")"
  awk '$1 == "insmod" { print $2 }' "$WORK/deps" | while read -r ko; do
    rel=${ko#"$WORK/kernel"}
    mkdir -p "$ROOT$(dirname "$rel")"
    cp "$ko" "$ROOT$rel"
  done
done
printf '%s\n' "${BOOT_MODULES[@]}" > "$ROOT/etc/arraylab/modules"
# Scan SCSI LUNs before modprobe returns, so /dev/sdX exists when virtio_scsi is loaded.
mkdir -p "$ROOT/etc/modprobe.d"
echo "options scsi_mod scan=sync" > "$ROOT/etc/modprobe.d/arraylab.conf"
cp "$KDIR/modules.order" "$KDIR/modules.builtin" "$KDIR/modules.builtin.modinfo" "$ROOT/lib/modules/$KREL/" 2>/dev/null || true
depmod -b "$ROOT" "$KREL"

# --- binaries and their libraries -------------------------------------------------------------------
copy_file() {   # host path -> the same path in the guest (symlinks resolved)
  local dest="$ROOT$1"
  mkdir -p "$(dirname "$dest")"
  rm -f "$dest"
  cp -L "$1" "$dest"
}
copy_libs() {
  ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
    [ -e "$ROOT$lib" ] || copy_file "$lib"
  done
}
for tool in "${TOOLS[@]}"; do
  path=$(PATH=/usr/sbin:/usr/bin command -v "$tool") || die "$tool is not installed on the build host; install its Debian package (util-linux, mount, e2fsprogs, xfsprogs or coreutils)"
  real=$(readlink -f "$path")
  # Keep the tool's own name (mke2fs, not what it links to) and place.
  cp -L "$real" "$ROOT$path"
  copy_libs "$real"
done
ln -s dash "$ROOT/usr/bin/sh"
ln -s mke2fs "$ROOT/usr/sbin/mkfs.ext4"
ln -s e2fsck "$ROOT/usr/sbin/fsck.ext4"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$ROOT/etc/"

# busybox fills in every applet the real tools above do not provide.
cp /bin/busybox "$ROOT/usr/bin/busybox"
for applet in $(/bin/busybox --list-full); do
  case "$applet" in bin/*|sbin/*) target="$ROOT/usr/$applet" ;; *) target="$ROOT/$applet" ;; esac
  [ -e "$target" ] || [ -L "$target" ] || { mkdir -p "$(dirname "$target")"; ln -s /usr/bin/busybox "$target"; }
done

# Node, stripped of its debug info (about 90 MiB less to unpack at every boot).
cp "$NODE" "$ROOT/usr/bin/node"
strip --strip-all "$ROOT/usr/bin/node"
copy_libs "$NODE"

# --- the agent: its Debian package's files, where dpkg installs them ----------------------------------
# /usr/lib/arraylab-agent (the compiled agent/ and proto/, the .proto files, its npm packages) and
# /usr/bin/arraylab-agent. Left out: the systemd unit (no systemd here), the man page, the doc and
# the conffile /etc/arraylab-agent/agent.yaml (/init starts `arraylab-agent guest-serve`, which
# runs on the built-in defaults, as it always has).
dpkg-deb -x "$AGENT_DEB" "$WORK/agent"
cp -a "$WORK/agent/usr/lib/arraylab-agent" "$ROOT/usr/lib/"
cp -a "$WORK/agent/usr/bin/arraylab-agent" "$ROOT/usr/bin/"
[ -f "$ROOT/usr/bin/arraylab-agent" ] || die "$AGENT_DEB has no /usr/bin/arraylab-agent that resolves"
for native in $(find "$ROOT/usr/lib/arraylab-agent/node_modules" -name '*.node'); do copy_libs "$native"; done

# --- /init and the few files a libc program expects ---------------------------------------------------
cp "$HERE/init" "$ROOT/init"
chmod 755 "$ROOT/init"
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOT/etc/passwd"
echo "root:x:0:" > "$ROOT/etc/group"
echo "arraylab-guest" > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$ROOT/etc/hosts"
: > "$ROOT/etc/fstab"
ln -s /proc/self/mounts "$ROOT/etc/mtab"
cat > "$ROOT/etc/arraylab/image.env" <<EOF
ARRAYLAB_IMAGE_STAMP=$STAMP
ARRAYLAB_KERNEL=$KREL
EOF

# --- archive: reproducible (fixed owner and mtime, sorted) -------------------------------------------
EPOCH=${SOURCE_DATE_EPOCH:-0}
find "$ROOT" -exec touch -h -d "@$EPOCH" {} +
du -sh "$ROOT" | cut -f1 > "$BUILD/.unpacked"
# lz4 (legacy frame, the one the kernel reads): under TCG its decompression costs about what
# reading an uncompressed archive does, at half the size; gzip and zstd add 1-2 s to every boot.
(cd "$ROOT" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --reproducible --quiet) \
  | lz4 -l -9 -q > "$BUILD/initrd.img.tmp"
# The kernel as qemu boots it fastest: the uncompressed ELF, entered through its PVH note (the
# cloud kernel has CONFIG_PVH), skips the firmware's real-mode setup and the bzImage's
# self-decompression, about 0.5 s under TCG. bzImage (vmlinuz) if the kernel cannot do that.
KERNEL_OUT=vmlinuz
if extract_vmlinux "$WORK/kernel/boot/vmlinuz-$KREL" "$BUILD/vmlinux.tmp"; then
  KERNEL_OUT=vmlinux
  rm -f "$BUILD/vmlinuz"
else
  log "booting the bzImage instead (slower): $(cat "$WORK/extract.err")"
  cp "$WORK/kernel/boot/vmlinuz-$KREL" "$BUILD/vmlinuz.tmp"
  rm -f "$BUILD/vmlinux"
fi
mv "$BUILD/initrd.img.tmp" "$BUILD/initrd.img"
mv "$BUILD/$KERNEL_OUT.tmp" "$BUILD/$KERNEL_OUT"
cat > "$BUILD/image.json" <<EOF
{
  "kernel": "$KERNEL_OUT",
  "initrd": "initrd.img",
  "kernelRelease": "$KREL",
  "kernelPackage": "$KPKG",
  "kernelPackageVersion": "$KVER_PKG",
  "node": "$("$NODE" --version)",
  "agent": true,
  "agentPackage": "${AGENT_DEB##*/}",
  "agentPackageSha256": "$AGENT_DEB_SHA",
  "stamp": "$STAMP"
}
EOF
echo "$STAMP" > "$BUILD/stamp"
rm -rf "$WORK"

log "built in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $started }") s"
print_sizes
