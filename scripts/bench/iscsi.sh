#!/usr/bin/env bash
# iSCSI benchmark: arraylab against tgtd, side by side in one run, driven by `qemu-img bench`
# over iscsi:// (qemu's libiscsi initiator): 4k read and write at QD16, 1 MiB read and write at
# QD8. Both targets get a LUN of the same size with 512-byte blocks, backed by files on the
# same filesystem, each written once in full before anything is measured. Each figure is the
# median of --reps runs, peers alternating; the ratio arraylab/tgtd is what compares across
# machines. Everything the script starts is stopped when it exits, however it exits.
#
# Usage: scripts/bench/iscsi.sh [--size MiB] [--reps N] [--count-4k N] [--count-1m N] [--dir DIR]
#                               [--subject arraylab|tgtd] [--baseline DIR] [--json FILE]
#   --size MiB       LUN size in MiB (default 1024)
#   --dir DIR        where the backing files go (default $TMPDIR or /tmp); both peers use it
#   --subject tgtd   measure a second tgtd in arraylab's place: a harness check, ratios ≈ 1
#   --baseline DIR   compare with the arraylab built in DIR (a checkout of another commit)
#                    instead of tgtd: a before/after of a change, under the same load
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE_MIB=1024
REPS=3
COUNT_4K=100000
COUNT_1M=2000
BASE_DIR="${TMPDIR:-/tmp}"
SUBJECT=arraylab
JSON_OUT=""
BASELINE=""

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE_MIB="${2%MiB}"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --count-4k) COUNT_4K="$2"; shift 2 ;;
    --count-1m) COUNT_1M="$2"; shift 2 ;;
    --dir) BASE_DIR="$2"; shift 2 ;;
    --subject) SUBJECT="$2"; shift 2 ;;
    --json) JSON_OUT="$2"; shift 2 ;;
    --baseline) BASELINE="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench: unknown option $1; see --help" >&2; exit 2 ;;
  esac
done
for n in "$SIZE_MIB" "$REPS" "$COUNT_4K" "$COUNT_1M"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench: $n is not a positive whole number; --size is in MiB (e.g. 1024), --reps and --count-* are counts" >&2; exit 2; }
done
case "$SUBJECT" in arraylab|tgtd) ;; *) echo "bench: --subject must be arraylab or tgtd, not $SUBJECT" >&2; exit 2 ;; esac
[ -d "$BASE_DIR" ] || { echo "bench: --dir $BASE_DIR is not a directory" >&2; exit 2; }
[ -z "$BASELINE" ] || [ -f "$BASELINE/dist/emulator/cli/arraylab.js" ] || { echo "bench: --baseline $BASELINE has no dist/emulator/cli/arraylab.js; run npm run build there" >&2; exit 2; }

WORK=$(mktemp -d "$BASE_DIR/arraylab-bench-iscsi.XXXXXX")
# shellcheck source=../lib/iscsi-peers.sh
source scripts/lib/iscsi-peers.sh
trap 'peers_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

peers_need qemu-img qemu-utils
peers_need tgtd tgt
peers_need tgtadm tgt
peers_need node nodejs
# qemu-img's iscsi:// support is a module of its own.
qemu-img --help 2>/dev/null | grep -qw iscsi || { echo "bench: qemu-img has no iscsi driver; install Debian package qemu-block-extra" >&2; exit 1; }

# arraylab's volume is thick: on a thin one qemu asks GET LBA STATUS before reads, which it
# never does against tgtd's plain file, and the comparison would not be like for like.
if [ "$SUBJECT" = arraylab ]; then
  start_arraylab "$SIZE_MIB" 512 thick; SUBJECT_URL=$URL; SUBJECT_LABEL=arraylab
else
  start_tgtd subject "$SIZE_MIB" 512; SUBJECT_URL=$URL; SUBJECT_LABEL=tgtd-subject
fi
if [ -n "$BASELINE" ]; then
  # start_arraylab runs the build of the current directory, in $WORK/arraylab: the baseline's, in its own WORK.
  pushd "$BASELINE" >/dev/null
  WORK="$WORK/baseline" start_arraylab "$SIZE_MIB" 512 thick; REFERENCE_URL=$URL; REFERENCE_LABEL=baseline
  popd >/dev/null
else
  start_tgtd reference "$SIZE_MIB" 512; REFERENCE_URL=$URL; REFERENCE_LABEL=tgtd
fi

# bench URL SIZE DEPTH COUNT [-w]: prints seconds from qemu-img's "Run completed in X seconds."
bench() {
  local url=$1 size=$2 depth=$3 count=$4 out
  shift 4
  out=$(qemu-img bench -f raw -t none -c "$count" -d "$depth" -s "$size" "$@" "$url" 2>&1) \
    || { echo "bench: qemu-img bench failed on $url:" >&2; echo "$out" >&2; exit 1; }
  sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' <<<"$out"
}

echo "iscsi bench: ${SIZE_MIB} MiB LUNs, 512-byte blocks, files in $BASE_DIR, $REPS reps (median)" >&2
echo "  $SUBJECT_LABEL: $SUBJECT_URL" >&2
echo "  $REFERENCE_LABEL:  $REFERENCE_URL" >&2
# Write every block once, so both read from allocated data and neither gains from holes.
for url in "$SUBJECT_URL" "$REFERENCE_URL"; do bench "$url" 1048576 8 "$SIZE_MIB" -w >/dev/null; done

TESTS=("4k read QD16|4096|16|$COUNT_4K|" "4k write QD16|4096|16|$COUNT_4K|-w" "1M read QD8|1048576|8|$COUNT_1M|" "1M write QD8|1048576|8|$COUNT_1M|-w")
declare -A SECS
for rep in $(seq 1 "$REPS"); do
  for t in "${!TESTS[@]}"; do
    IFS='|' read -r name size depth count flag <<<"${TESTS[$t]}"
    # Alternate who goes first, so neither always runs on a warmer machine.
    if (( (rep + t) % 2 )); then order=(subject reference); else order=(reference subject); fi
    for peer in "${order[@]}"; do
      url=$SUBJECT_URL; [ "$peer" = reference ] && url=$REFERENCE_URL
      s=$(bench "$url" "$size" "$depth" "$count" $flag)
      [ -n "$s" ] || { echo "bench: qemu-img bench did not say how long $name took on $url" >&2; exit 1; }
      SECS[$t,$peer]="${SECS[$t,$peer]:-} $s"
      echo "  rep $rep $name $peer: ${s}s" >&2
    done
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf '\n%-14s %26s %26s %15s\n' "test" "$SUBJECT_LABEL" "$REFERENCE_LABEL" "$SUBJECT_LABEL/$REFERENCE_LABEL"
json_rows=()
for t in "${!TESTS[@]}"; do
  IFS='|' read -r name size depth count flag <<<"${TESTS[$t]}"
  ss=$(median <<<"${SECS[$t,subject]}")
  rs=$(median <<<"${SECS[$t,reference]}")
  read -r s_iops s_mibs r_iops r_mibs ratio < <(awk -v c="$count" -v sz="$size" -v a="$ss" -v b="$rs" \
    'BEGIN { printf "%.0f %.1f %.0f %.1f %.2f\n", c/a, c*sz/1048576/a, c/b, c*sz/1048576/b, b/a }')
  printf '%-14s %12s IOPS %6s MiB/s %12s IOPS %6s MiB/s %15s\n' "$name" "$s_iops" "$s_mibs" "$r_iops" "$r_mibs" "$ratio"
  json_rows+=("{\"test\":\"$name\",\"blockBytes\":$size,\"depth\":$depth,\"count\":$count,\"subject\":{\"name\":\"$SUBJECT_LABEL\",\"seconds\":$ss,\"iops\":$s_iops,\"mibPerSec\":$s_mibs},\"$REFERENCE_LABEL\":{\"seconds\":$rs,\"iops\":$r_iops,\"mibPerSec\":$r_mibs},\"ratio\":$ratio}")
done
if [ -n "$JSON_OUT" ]; then
  (IFS=,; echo "{\"sizeMiB\":$SIZE_MIB,\"reps\":$REPS,\"results\":[${json_rows[*]}]}") >"$JSON_OUT"
  echo "bench: wrote $JSON_OUT" >&2
fi
