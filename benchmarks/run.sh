#!/usr/bin/env bash
# Runs the shared side-by-side benchmark (../shared/bench) against our release binaries and
# keeps the table and JSON under benchmarks/out/ (not committed; copy the tables you keep
# into RESULTS.md with the date and what changed).
#   benchmarks/run.sh                 # tcp, 3 rounds
#   benchmarks/run.sh tcp --repeat 5  # any ../shared/bench/run options after the scenario
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_DIR:-../shared/bench}
scenario=${1:-tcp}
shift || true
case "$scenario" in
  tcp) bin=tcp-proxy ;;
  udp) bin=udp-proxy ;;
  http1|http2) bin=http-proxy ;;
  redis) bin=redis-proxy ;;
  *) echo "usage: $0 tcp|udp|http1|http2|redis [run options]" >&2; exit 2 ;;
esac
[ -x ".build/release/$bin" ] || swift build -c release --product "$bin"
if [ "$(id -u)" = 0 ]; then "$bench/setup" >/dev/null; fi
mkdir -p benchmarks/out
stamp=$(date -u +%Y%m%d-%H%M%S)
"$bench/run" "$scenario" --ours "ours=$PWD/.build/release/$bin" --repeat 3 \
  --json "benchmarks/out/$scenario-$stamp.json" "$@" | tee "benchmarks/out/$scenario-$stamp.txt"
