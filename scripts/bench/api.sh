#!/usr/bin/env bash
# Control-API access-control cost (issue 17): auth on vs off, side by side in one run.
# Usage: scripts/bench/api.sh [--calls N] [--rounds N] [--backend file|memory] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f dist/emulator/auth/ApiGuard.js ] || npm run build
exec node scripts/bench/api.mjs "$@"
