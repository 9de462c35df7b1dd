#!/usr/bin/env bash
# For ../shared/bench/run redis: runs redis-proxy with $WORKERS workers (default 2) instead of
# the --workers 1 the harness passes, to measure scaling:
#   WORKERS=2 ../shared/bench/run redis --layout none --ours w2=benchmarks/redis-proxy-workers.sh
set -euo pipefail
bin="$(dirname "$0")/../.build/release/redis-proxy"
args=()
skip=0
for a in "$@"; do
  if [ $skip = 1 ]; then skip=0; continue; fi
  if [ "$a" = "--workers" ]; then skip=1; continue; fi
  args+=("$a")
done
exec "$bin" "${args[@]}" --workers "${WORKERS:-2}"
