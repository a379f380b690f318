#!/usr/bin/env bash
# Runs libiscsi's conformance suite (iscsi-test-cu, --dataloss) against arraylab, tgtd or any
# iSCSI LUN, and prints what really happened: tests passed, failed and skipped (libiscsi reports
# a skip as a pass; this counts it as a skip), then every failed and skipped test with its reason.
# The parser is the one test/iscsi/conformance.test.ts uses. Exit status 0 only if nothing failed.
#
# Usage: scripts/iscsi-conformance.sh [arraylab|tgtd|iscsi://HOST:PORT/IQN/LUN] [options]
#   --block-size 512|4096   block size of the LUN the script creates (default 512)
#   --size MiB              its size (default 128)
#   --tests FAMILY[.Suite]  only these tests (iscsi-test-cu -t), e.g. SCSI or ALL.Read10
#   --no-multipath          do not give the LUN twice (the MultipathIO suite is then skipped);
#                           the CI test gives it twice
#   --json FILE             also write the parsed result as JSON
#   --keep-output FILE      also keep iscsi-test-cu's raw output
# A URL's LUN is overwritten. For arraylab the script starts `arraylab serve` from dist/ (built
# if missing) with one thin volume; its log is printed if it fails to start.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=arraylab
BLOCK_SIZE=512
SIZE_MIB=128
TESTS=""
MULTIPATH=1
JSON_OUT=""
KEEP=""
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    arraylab|tgtd|iscsi://*) TARGET="$1"; shift ;;
    --block-size) BLOCK_SIZE="$2"; shift 2 ;;
    --size) SIZE_MIB="${2%MiB}"; shift 2 ;;
    --tests) TESTS="$2"; shift 2 ;;
    --no-multipath) MULTIPATH=0; shift ;;
    --json) JSON_OUT="$2"; shift 2 ;;
    --keep-output) KEEP="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "iscsi-conformance: unknown argument $1; give arraylab, tgtd or an iscsi:// URL (see --help)" >&2; exit 2 ;;
  esac
done
case "$BLOCK_SIZE" in 512|4096) ;; *) echo "iscsi-conformance: --block-size must be 512 or 4096, not $BLOCK_SIZE" >&2; exit 2 ;; esac
[[ "$SIZE_MIB" =~ ^[1-9][0-9]*$ ]] || { echo "iscsi-conformance: --size $SIZE_MIB is not a whole number of MiB" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/arraylab-conformance.XXXXXX")
# shellcheck source=lib/iscsi-peers.sh
source scripts/lib/iscsi-peers.sh
trap 'peers_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

peers_need iscsi-test-cu libiscsi-bin
peers_need node nodejs
case "$TARGET" in
  arraylab) start_arraylab "$SIZE_MIB" "$BLOCK_SIZE" thin ;;
  tgtd) peers_need tgtd tgt; peers_need tgtadm tgt; start_tgtd conformance "$SIZE_MIB" "$BLOCK_SIZE" ;;
  *) URL="$TARGET" ;;
esac

args=(--dataloss -i iqn.2026-11.lab.arraylab.test:conformance-1 -I iqn.2026-11.lab.arraylab.test:conformance-2)
[ -n "$TESTS" ] && args+=(-t "$TESTS")
args+=("$URL")
[ "$MULTIPATH" = 1 ] && args+=("$URL")
echo "iscsi-conformance: iscsi-test-cu ${args[*]}" >&2
start=$(date +%s%N)
# iscsi-test-cu exits 0 even when tests fail; only the parser's counts decide.
iscsi-test-cu "${args[@]}" >"$WORK/output.txt" 2>&1 || true
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
iscsi-test-cu -l >"$WORK/listing.txt"
[ -n "$KEEP" ] && cp "$WORK/output.txt" "$KEEP"

node --input-type=module - "$WORK/output.txt" "$WORK/listing.txt" "$TESTS" "$elapsed_ms" "$TARGET" "$JSON_OUT" <<'EOF' || status=$?
import { readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
const [outputFile, listingFile, filter, ms, label, jsonOut] = process.argv.slice(2);
const { parseConformance, parseListing, formatConformance } = await import(pathToFileURL(resolve('test/support/conformanceParse.mjs')).href);
let r;
try {
  r = parseConformance(readFileSync(outputFile, 'utf8'), parseListing(readFileSync(listingFile, 'utf8'), filter || undefined), Number(ms));
} catch (err) {
  console.error(`iscsi-conformance: ${err.message}`);
  process.exit(1);
}
console.log(formatConformance(label, r));
if (jsonOut) {
  const { output, ...rest } = r;
  writeFileSync(jsonOut, JSON.stringify(rest, null, 2) + '\n');
  console.error(`iscsi-conformance: wrote ${jsonOut}`);
}
process.exit(r.failed === 0 ? 0 : 1);
EOF
exit "${status:-0}"
