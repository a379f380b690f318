#!/usr/bin/env bash
# Copy-engine benchmark: OPC vs cp (+ fsync), QuickOPC re-copy vs full copy, 4k random-write IOPS under
# SnapOPC+ and EC vs no session and fio on a file (the ceiling), server RSS with 100 sessions on 200 thin
# 10 GiB volumes; issue 20's targets with PASS/MISS.
# Usage: scripts/bench/copy.sh [--only opc,quickopc,iops,rss] [--reps N] [--size 2GiB] [--runtime SECONDS] [--json FILE] [--node-args FLAGS] [--no-ceiling] [--ceiling-engine ENGINE]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f dist/emulator/cli/arraylab.js ] || npm run build
exec node scripts/bench/copy.mjs "$@"
