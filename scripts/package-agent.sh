#!/usr/bin/env bash
# Builds the host agent alone as a Debian package, with nothing of the emulator in it:
# build/agent/arraylab-agent_VERSION_ARCH.deb (VERSION from package.json, ARCH: amd64 here).
#
#   bash scripts/package-agent.sh            # build it, or say it is up to date
#   bash scripts/package-agent.sh --force    # rebuild even if the stamp matches
#   bash scripts/package-agent.sh --out DIR  # build into DIR instead of build/agent/
#
# Prints the .deb's path on stdout (and what it does on stderr): vm-images/build.sh installs it
# into the guest image. What the package holds:
#
#   /usr/lib/arraylab-agent/agent/, proto/  the compiled agent/ and proto/ projects (tsc -b agent),
#                                           with the .proto files
#   /usr/lib/arraylab-agent/node_modules/   the npm packages those files import, with their
#                                           dependencies (scripts/lib/agent-files.mjs)
#   /usr/lib/arraylab-agent/package.json    name arraylab-agent, the version, "type": "module"
#   /usr/bin/arraylab-agent                 -> ../lib/arraylab-agent/agent/cli/arraylab-agent.js
#   /usr/lib/systemd/system/arraylab-agent.service   agent/deploy/ (installed, not enabled)
#   /etc/arraylab-agent/agent.yaml          agent/deploy/agent.yaml, a conffile
#   /usr/share/man/man8/arraylab-agent.8.gz agent/README.md through pandoc
#   /usr/share/doc/arraylab-agent/copyright the licenses, of the npm packages too
#
# Node.js is the host's, not bundled: Depends: nodejs of the build's major version (better-sqlite3
# is a native module, built by npm ci for that Node's ABI), from package.json's engines minimum.
#
# Cached and reproducible like vm-images/build.sh: the stamp hashes the compiled files, the
# .proto files, the installed npm tree, the man page's source, agent/deploy/, package.json, the
# tool versions and this script; the same stamp does nothing. File times are SOURCE_DATE_EPOCH,
# or the time of the last commit that touched agent/, proto/ or the packaging scripts, so a
# change elsewhere (emulator/) never changes the .deb. Runs are serialised with a lock.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT="$REPO/build/agent"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
FORCE=0

log() { echo "package-agent: $*" >&2; }
die() { echo "package-agent: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --out) [ -n "${2:-}" ] || die "--out needs a directory"; OUT=$(mkdir -p "$2" && cd "$2" && pwd); shift ;;
    *) die "unknown argument $1 (usage: package-agent.sh [--force] [--out DIR])" ;;
  esac
  shift
done

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
started=$(date +%s.%N)
cd "$REPO"

# --- build-host tools, installed only when missing ----------------------------------------------
HOST_PACKAGES=(
  dpkg-dev   # dpkg-shlibdeps: the native module's library dependencies (dpkg-deb is in dpkg)
  pandoc     # the man page, from agent/README.md
  binutils   # strip
)
missing=()
for p in "${HOST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v node >/dev/null || die "node is not installed; the package is built with (and for) the host's Node.js"
[ -x node_modules/.bin/tsc ] || die "node_modules is missing; run npm ci (or bash scripts/setup.sh)"

# --- compile the agent and the contract (only those two projects) --------------------------------
node_modules/.bin/tsc -b agent >&2 || die "tsc -b agent failed (its errors are above); the package is built from agent/ and proto/ as they are"

NAME=arraylab-agent
VERSION=$(node -p 'require("./package.json").version')
ARCH=$(dpkg --print-architecture)
DEB="$OUT/${NAME}_${VERSION}_${ARCH}.deb"

# The Node.js the package needs: the build's major (the native module's ABI), at least the
# engines minimum of package.json.
NODE_VERSION=$(node -p 'process.versions.node')
NODE_ABI=$(node -p 'process.versions.modules')
NODE_MAJOR=${NODE_VERSION%%.*}
ENGINE_MIN=$(node -p '(require("./package.json").engines?.node ?? "").replace(/^>=\s*/, "")')
[ -n "$ENGINE_MIN" ] || die "package.json has no engines.node of the form >=X.Y"
[ "$NODE_MAJOR" -ge "${ENGINE_MIN%%.*}" ] || die "node $NODE_VERSION is older than package.json's engines.node (>=$ENGINE_MIN)"
NODE_MIN=$NODE_MAJOR
[ "${ENGINE_MIN%%.*}" = "$NODE_MAJOR" ] && NODE_MIN=$ENGINE_MIN
NODE_DEPENDS="nodejs (>= $NODE_MIN), nodejs (<< $((NODE_MAJOR + 1)))"

if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  EPOCH=$SOURCE_DATE_EPOCH
else
  EPOCH=$(git -C "$REPO" log -1 --format=%ct -- agent proto scripts/package-agent.sh scripts/lib/agent-files.mjs 2>/dev/null || true)
  EPOCH=${EPOCH:-0}
fi
export SOURCE_DATE_EPOCH=$EPOCH   # dpkg-deb: the ar members' times, and tar times clamped to it

# --- the stamp ----------------------------------------------------------------------------------
files_hash() {   # sha256 over the contents of the files found under the given paths
  find "$@" -type f ! -name '*.map' ! -name '*.d.ts' ! -name '.tsbuildinfo' -print0 2>/dev/null \
    | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1
}
STAMP=$(
  {
    sha256sum scripts/package-agent.sh scripts/lib/agent-files.mjs package.json agent/README.md | cut -d' ' -f1
    echo "compiled=$(files_hash dist/agent dist/proto)"
    echo "protos=$(find proto -name '*.proto' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
    echo "deploy=$(files_hash agent/deploy)"
    echo "npm=$(sha256sum node_modules/.package-lock.json | cut -d' ' -f1) $(find node_modules -name '*.node' -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1)"
    echo "node=$NODE_VERSION arch=$ARCH epoch=$EPOCH"
    echo "pandoc=$(pandoc --version | head -1) dpkg=$(dpkg-deb --version | head -1)"
  } | sha256sum | cut -d' ' -f1
)
if [ "$FORCE" = 0 ] && [ -f "$DEB" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "up to date: ${DEB#"$REPO"/} (stamp ${STAMP:0:12}, $(du -h "$DEB" | cut -f1))"
  echo "$DEB"
  exit 0
fi
log "building ${DEB#"$REPO"/} (stamp ${STAMP:0:12})"

WORK="$OUT/work"
rm -rf "$WORK"
ROOT="$WORK/root"
LIB="$ROOT/usr/lib/$NAME"
mkdir -p "$LIB" "$ROOT/DEBIAN" "$ROOT/usr/bin" "$ROOT/usr/lib/systemd/system" "$ROOT/etc/$NAME" \
  "$ROOT/usr/share/man/man8" "$ROOT/usr/share/doc/$NAME"

# --- the agent: compiled files, .proto files, npm packages ---------------------------------------
node scripts/lib/agent-files.mjs stage "$LIB" > "$WORK/packages"
cat > "$LIB/package.json" <<EOF
{
  "name": "$NAME",
  "version": "$VERSION",
  "description": "The arraylab host agent, as installed by the $NAME Debian package.",
  "license": "Apache-2.0",
  "private": true,
  "type": "module"
}
EOF
ln -s "../lib/$NAME/agent/cli/arraylab-agent.js" "$ROOT/usr/bin/arraylab-agent"
for native in $(find "$LIB/node_modules" -name '*.node'); do strip --strip-unneeded "$native"; done

# --- systemd unit, default config, man page, copyright -------------------------------------------
cp agent/deploy/arraylab-agent.service "$ROOT/usr/lib/systemd/system/"
cp agent/deploy/agent.yaml "$ROOT/etc/$NAME/agent.yaml"
echo "/etc/$NAME/agent.yaml" > "$ROOT/DEBIAN/conffiles"

# The README's first line is "# arraylab-agent(8) — WHAT": the man page's NAME line.
whatis=$(sed -n '1s/^# arraylab-agent(8) — //p' agent/README.md)
[ -n "$whatis" ] || die "agent/README.md must begin with '# arraylab-agent(8) — ...' (the man page's NAME line)"
{
  printf '# NAME\n\narraylab-agent - %s\n\n# DESCRIPTION\n\n' "$whatis"
  tail -n +2 agent/README.md | sed 's/^##/#/'
} > "$WORK/man.md"
pandoc -f gfm -t man -s -M title=ARRAYLAB-AGENT -M section=8 -M date="$(date -u -d "@$EPOCH" +%Y-%m-%d)" \
  -M footer="$NAME $VERSION" -M header="arraylab" "$WORK/man.md" -o "$WORK/arraylab-agent.8"
gzip -9n < "$WORK/arraylab-agent.8" > "$ROOT/usr/share/man/man8/arraylab-agent.8.gz"

{
  cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: arraylab

Files: *
Copyright: the arraylab authors
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
  # One stanza per npm package: "NAME VERSION DIR LICENSE" lines from agent-files.mjs.
  while read -r pkg pver dir lic; do
    printf '\nFiles: usr/lib/%s/%s/*\nCopyright: the authors of %s %s\nLicense: %s\n See %s/ for its license file.\n' \
      "$NAME" "$dir" "$pkg" "$pver" "$lic" "/usr/lib/$NAME/$dir"
  done < "$WORK/packages"
} > "$ROOT/usr/share/doc/$NAME/copyright"

# --- maintainer scripts: systemd learns of the unit; nothing is enabled or started ---------------
# (The agent needs the array's address in /etc/arraylab-agent/agent.yaml first.) They do nothing
# when installing into another root (DPKG_ROOT) or where systemd does not run.
cat > "$ROOT/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  # An upgrade restarts a running daemon on the new code (a running backup finishes first).
  systemctl try-restart arraylab-agent.service || true
fi
exit 0
EOF
cat > "$ROOT/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl stop arraylab-agent.service || true
fi
exit 0
EOF
cat > "$ROOT/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# The agent's records in /var/lib/arraylab-agent (the backup catalog) are kept, also on purge.
set -e
if [ "$1" = purge ]; then
  rm -f "${DPKG_ROOT:-}/etc/systemd/system/multi-user.target.wants/arraylab-agent.service"
fi
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
EOF

# --- control ---------------------------------------------------------------------------------------
# Library dependencies of the native module; its V8 and Node symbols come from node itself.
mkdir -p "$WORK/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$NAME" "$NAME" > "$WORK/debian/control"
shlibs=$(cd "$WORK" && find "$LIB/node_modules" -name '*.node' -print0 | xargs -0 -r dpkg-shlibdeps -O --ignore-missing-info 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
find "$ROOT" -path "$ROOT/DEBIAN" -prune -o -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
chmod 0755 "$ROOT/DEBIAN" "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm" "$LIB/agent/cli/arraylab-agent.js"
chmod 0644 "$ROOT/DEBIAN/conffiles"
installed_kib=$(du -sk --apparent-size --exclude=DEBIAN "$ROOT" | cut -f1)
cat > "$ROOT/DEBIAN/control" <<EOF
Package: $NAME
Version: $VERSION
Architecture: $ARCH
Maintainer: arraylab developers <arraylab@invalid>
Section: admin
Priority: optional
Depends: $NODE_DEPENDS${shlibs:+, $shlibs}, util-linux, mount, coreutils
Installed-Size: $installed_kib
Description: arraylab host agent: backup pre/post-processing, generations, restore
 arraylab-agent does the host side of arraylab backups: it locks, freezes or
 flushes the filesystems of transaction volumes, dismounts backup volumes,
 runs hook scripts, and keeps backup generations, history and restore. It
 talks to an arraylab array over gRPC; arraylab-agent serve (the systemd unit
 arraylab-agent.service, installed but not enabled) offers the same over gRPC.
 .
 It runs on the host's Node.js, which this package does not include: the
 nodejs package, $NODE_MIN or a later $NODE_MAJOR.x (Debian 13's own nodejs, or
 NodeSource's node_$NODE_MAJOR.x on Debian 12, whose own nodejs is 18). The
 better-sqlite3 native module inside is built for Node $NODE_MAJOR's ABI
 (NODE_MODULE_VERSION $NODE_ABI): no other major version of Node can load it.
EOF

# --- build: reproducible (sorted, owner root, times clamped to SOURCE_DATE_EPOCH) ----------------
find "$ROOT" -exec touch -h -d "@$EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB.tmp" >/dev/null
mv "$DEB.tmp" "$DEB"
echo "$STAMP" > "$OUT/stamp"
rm -rf "$WORK"
log "built in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $started }") s: ${DEB#"$REPO"/} ($(du -h "$DEB" | cut -f1), $(( installed_kib / 1024 )) MiB installed; Depends: $NODE_DEPENDS${shlibs:+, $shlibs}, util-linux, mount, coreutils)"
echo "$DEB"
