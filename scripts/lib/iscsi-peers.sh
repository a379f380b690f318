# Sourced by scripts/bench/iscsi.sh and scripts/iscsi-conformance.sh: starts iSCSI targets for a
# run and stops them all when the calling script exits. Set WORK (a temp dir the script owns)
# before sourcing; call peers_cleanup from the script's EXIT trap.
#
#   start_tgtd NAME SIZE_MIB BLOCK_SIZE        sets URL to its LUN 1 (tgt's LUN 0 is its controller)
#   start_arraylab SIZE_MIB BLOCK_SIZE PROV    sets URL to its LUN 0 (PROV: thin or thick)

PEER_PIDS=()
TGT_SOCKETS=()

peers_cleanup() {
  set +e
  # tgtd shrugs off SIGTERM while it has targets: delete them and the system, then it exits.
  for sock in "${TGT_SOCKETS[@]}"; do
    TGT_IPC_SOCKET="$sock" tgtadm -C 0 --lld iscsi --mode target --op delete --force --tid 1 >/dev/null 2>&1
    TGT_IPC_SOCKET="$sock" tgtadm -C 0 --lld iscsi --mode system --op delete >/dev/null 2>&1
  done
  for pid in "${PEER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PEER_PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  PEER_PIDS=()
  TGT_SOCKETS=()
}

peers_need() { command -v "$1" >/dev/null || { echo "$(basename "$0"): $1 is not installed; install Debian package $2 (scripts/setup.sh does)" >&2; exit 1; }; }

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# A private control socket (TGT_IPC_SOCKET) and a free loopback port: no clash with a packaged
# tgt service on 3260 or with another run.
start_tgtd() {
  local name=$1 size_mib=$2 block_size=$3
  local dir="$WORK/$name" port iqn="iqn.2026-11.lab.arraylab.run:$name"
  mkdir -p "$dir"
  truncate -s "${size_mib}M" "$dir/lun.img"
  port=$(free_port)
  TGT_IPC_SOCKET="$dir/socket" tgtd -f -C 0 --iscsi "portal=127.0.0.1:$port" >"$dir/tgtd.log" 2>&1 &
  PEER_PIDS+=($!)
  TGT_SOCKETS+=("$dir/socket")
  for _ in $(seq 1 100); do [ -S "$dir/socket.0" ] && break; sleep 0.1; done
  [ -S "$dir/socket.0" ] || { echo "$(basename "$0"): tgtd did not start; its log:" >&2; cat "$dir/tgtd.log" >&2; exit 1; }
  local adm=(env TGT_IPC_SOCKET="$dir/socket" tgtadm -C 0 --lld iscsi)
  "${adm[@]}" --mode target --op new --tid 1 --targetname "$iqn"
  "${adm[@]}" --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$dir/lun.img" --blocksize "$block_size"
  # --initiator-address ALL: every initiator (--initiator-name ALL would mean one named "ALL").
  "${adm[@]}" --mode target --op bind --tid 1 --initiator-address ALL
  URL="iscsi://127.0.0.1:$port/$iqn/1"
}

start_arraylab() {
  local size_mib=$1 block_size=$2 provisioning=$3
  local dir="$WORK/arraylab"
  [ -f dist/emulator/cli/arraylab.js ] || npm run --silent build
  mkdir -p "$dir"
  cat >"$dir/arraylab.yaml" <<EOF
dataDir: $dir/data
volumes:
  - name: lun0
    size: ${size_mib}MiB
    blockSize: $block_size
    provisioning: $provisioning
EOF
  ARRAYLAB_LOG_LEVEL="${ARRAYLAB_LOG_LEVEL:-warn}" node dist/emulator/cli/arraylab.js serve --json --config "$dir/arraylab.yaml" \
    --nbd 127.0.0.1:0 --api 127.0.0.1:0 --iscsi 127.0.0.1:0 >"$dir/serve.out" 2>"$dir/serve.log" &
  PEER_PIDS+=($!)
  for _ in $(seq 1 300); do [ -s "$dir/serve.out" ] && break; sleep 0.1; done
  local portal
  portal=$(node -e '
    const line = require("fs").readFileSync(process.argv[1], "utf8").split("\n")[0];
    const info = JSON.parse(line);
    if (!info.iscsi) { console.error("arraylab serve reported no iSCSI portal"); process.exit(1); }
    console.log(`${info.iscsi.host}:${info.iscsi.port}/${info.iscsi.targetName}`);' "$dir/serve.out") \
    || { echo "$(basename "$0"): arraylab serve did not start with iSCSI; its log ($dir/serve.log):" >&2; cat "$dir/serve.log" >&2; exit 1; }
  ARRAYLAB_LOG="$dir/serve.log"
  URL="iscsi://$portal/0"
}
