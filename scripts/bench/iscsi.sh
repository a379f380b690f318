#!/usr/bin/env bash
# iSCSI benchmark: arraylab against tgtd, side by side in one run, driven by `qemu-img bench`
# over iscsi:// (qemu's libiscsi initiator): 4k read and write at QD16, 1 MiB read and write at
# QD8. Both targets get a LUN of the same size with 512-byte blocks, backed by files on the
# same filesystem, each written once in full before anything is measured. Each figure is the
# median of --reps runs, peers alternating; the ratio arraylab/tgtd is what compares across
# machines. Beside each row: the machine's ceiling, fio run directly on a prefilled file of the
# same size in the same work directory (io_uring, else psync; buffered), the same block size,
# depth, pattern (sequential, as qemu-img bench) and amount, measured in each rep with the peers.
# Targets (issue 20): 1 MiB read and write >= 1.50x tgtd, PASS or MISS; the 4k rows are
# informational. The last line counts them: "targets: N PASS, M MISS". Everything the script
# starts is stopped when it exits, however it exits.
#
# Usage: scripts/bench/iscsi.sh [--size MiB] [--reps N] [--count-4k N] [--count-1m N] [--dir DIR]
#                               [--subject arraylab|tgtd] [--baseline DIR] [--json FILE]
#                               [--no-ceiling] [--ceiling-engine ENGINE]
#   --size MiB       LUN size in MiB (default 1024)
#   --dir DIR        where the backing files go (default $TMPDIR or /tmp); both peers use it
#   --subject tgtd   measure a second tgtd in arraylab's place: a harness check, ratios ≈ 1
#   --baseline DIR   compare with the arraylab built in DIR (a checkout of another commit)
#                    instead of tgtd: a before/after of a change, under the same load
#   --no-ceiling     skip fio on the file; --ceiling-engine ENGINE: fio engine for it
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

CEILING=1
CEILING_ENGINE=""

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
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
    --no-ceiling) CEILING=0; shift ;;
    --ceiling-engine) CEILING_ENGINE="$2"; shift 2 ;;
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
[ "$CEILING" = 0 ] || peers_need fio fio
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

# The machine's ceiling: fio straight on a file in $WORK (the peers' filesystem), no target in
# between. ceiling SIZE DEPTH COUNT [-w]: prints the seconds COUNT requests took (COUNT / IOPS).
CEILING_FILE="$WORK/ceiling.img"
fio_json() { node -e '
  let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
    const j = JSON.parse(s.slice(s.indexOf("{"))).jobs[0];
    if (j.error) { console.error(`fio error ${j.error}`); process.exit(1); }
    const side = process.argv[1] === "-w" ? j.write : j.read;
    console.log((Number(process.argv[2]) / side.iops).toFixed(6));
  });' -- "$@"; }
ceiling() {
  local size=$1 depth=$2 count=$3 flag=${4:-} out
  out=$(fio --name=ceiling --filename="$CEILING_FILE" --ioengine="$CEILING_ENGINE" --direct=0 --invalidate=0 --size="${SIZE_MIB}M" \
    --rw="$([ "$flag" = -w ] && echo write || echo read)" --bs="$size" --iodepth="$depth" --io_size=$((count * size)) \
    --output-format=json 2>&1) || { echo "bench: fio on $CEILING_FILE failed:" >&2; echo "$out" >&2; exit 1; }
  fio_json "${flag:-r}" "$count" <<<"$out"
}
if [ "$CEILING" = 1 ]; then
  if [ -z "$CEILING_ENGINE" ]; then
    truncate -s 1M "$WORK/probe.img"
    if fio --name=probe --filename="$WORK/probe.img" --ioengine=io_uring --rw=read --bs=4k --size=1M --output-format=json >/dev/null 2>&1; then
      CEILING_ENGINE=io_uring
    else
      CEILING_ENGINE=psync
    fi
    rm -f "$WORK/probe.img"
  fi
  ceiling 1048576 8 "$SIZE_MIB" -w >/dev/null
fi

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
    if [ "$CEILING" = 1 ]; then
      s=$(ceiling "$size" "$depth" "$count" $flag)
      SECS[$t,ceiling]="${SECS[$t,ceiling]:-} $s"
      echo "  rep $rep $name ceiling (fio on the file): ${s}s" >&2
    fi
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# Targets hold against tgtd only: with --subject tgtd or --baseline there are none to check.
TARGETS_APPLY=0
[ "$SUBJECT_LABEL" = arraylab ] && [ "$REFERENCE_LABEL" = tgtd ] && TARGETS_APPLY=1
CEIL_HEAD="ceiling (fio on the file)"
echo
echo "Targets (issue 20): 1 MiB read and write >= 1.50x tgtd (qemu-img bench); 4k rows informational"
[ "$CEILING" = 1 ] && echo "$CEIL_HEAD: fio --ioengine=$CEILING_ENGINE --direct=0 --invalidate=0, sequential, same bs, depth and count, on a prefilled ${SIZE_MIB} MiB file in $BASE_DIR, beside the LUNs' files"
printf '%-14s %30s %30s %15s %10s %6s' "test" "$SUBJECT_LABEL" "$REFERENCE_LABEL" "$SUBJECT_LABEL/$REFERENCE_LABEL" "target" "result"
[ "$CEILING" = 1 ] && printf ' %30s %16s' "$CEIL_HEAD" "$SUBJECT_LABEL/ceiling"
echo
json_rows=()
PASS=0
MISS=0
for t in "${!TESTS[@]}"; do
  IFS='|' read -r name size depth count flag <<<"${TESTS[$t]}"
  ss=$(median <<<"${SECS[$t,subject]}")
  rs=$(median <<<"${SECS[$t,reference]}")
  read -r s_iops s_mibs r_iops r_mibs ratio < <(awk -v c="$count" -v sz="$size" -v a="$ss" -v b="$rs" \
    'BEGIN { printf "%.0f %.1f %.0f %.1f %.2f\n", c/a, c*sz/1048576/a, c/b, c*sz/1048576/b, b/a }')
  if [ "$size" = 1048576 ]; then
    target=">= 1.50x"
    if [ "$TARGETS_APPLY" = 1 ]; then
      result=$(awk -v a="$ss" -v b="$rs" 'BEGIN { print (b/a >= 1.5 ? "PASS" : "MISS") }')
      [ "$result" = PASS ] && PASS=$((PASS + 1)) || MISS=$((MISS + 1))
    else
      result="n/a"
    fi
  else
    target="info"; result="-"
  fi
  printf '%-14s %12s IOPS %6s MiB/s %12s IOPS %6s MiB/s %15s %10s %6s' "$name" "$s_iops" "$s_mibs" "$r_iops" "$r_mibs" "$ratio" "$target" "$result"
  ceil_json=""
  if [ "$CEILING" = 1 ]; then
    cs=$(median <<<"${SECS[$t,ceiling]}")
    read -r c_iops c_mibs c_pct < <(awk -v c="$count" -v sz="$size" -v a="$ss" -v x="$cs" \
      'BEGIN { printf "%.0f %.1f %.0f\n", c/x, c*sz/1048576/x, 100*x/a }')
    printf ' %12s IOPS %6s MiB/s %15s%%' "$c_iops" "$c_mibs" "$c_pct"
    ceil_json=",\"ceiling\":{\"engine\":\"$CEILING_ENGINE\",\"seconds\":$cs,\"iops\":$c_iops,\"mibPerSec\":$c_mibs,\"subjectPercent\":$c_pct}"
  fi
  echo
  json_rows+=("{\"test\":\"$name\",\"blockBytes\":$size,\"depth\":$depth,\"count\":$count,\"subject\":{\"name\":\"$SUBJECT_LABEL\",\"seconds\":$ss,\"iops\":$s_iops,\"mibPerSec\":$s_mibs},\"$REFERENCE_LABEL\":{\"seconds\":$rs,\"iops\":$r_iops,\"mibPerSec\":$r_mibs},\"ratio\":$ratio,\"target\":\"$target\",\"result\":\"$result\"$ceil_json}")
done
echo
echo "targets: $PASS PASS, $MISS MISS"
if [ -n "$JSON_OUT" ]; then
  (IFS=,; echo "{\"sizeMiB\":$SIZE_MIB,\"reps\":$REPS,\"results\":[${json_rows[*]}],\"summary\":{\"pass\":$PASS,\"miss\":$MISS}}") >"$JSON_OUT"
  echo "bench: wrote $JSON_OUT" >&2
fi
