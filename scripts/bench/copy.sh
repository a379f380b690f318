#!/usr/bin/env bash
# Copy-engine benchmark: OPC vs cp, QuickOPC re-copy vs full copy, 4k random-write IOPS under
# SnapOPC+ and EC vs no session, server RSS with 100 sessions on 200 thin 10 GiB volumes.
# Usage: scripts/bench/copy.sh [--only opc,quickopc,iops,rss] [--reps N] [--size 2GiB] [--runtime SECONDS] [--json FILE] [--node-args FLAGS]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f dist/emulator/cli/arraylab.js ] || npm run build
exec node scripts/bench/copy.mjs "$@"
