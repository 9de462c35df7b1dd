#!/usr/bin/env bash
# libFuzzer harnesses (Fuzz/): `fuzz.sh build` builds them with -sanitize=fuzzer,address,
# `fuzz.sh run SECONDS` builds and runs each for SECONDS from the seed corpus in Fuzz/corpus.
# A crash leaves its input in fuzz-out/; replay it with a normal build:
#   swift build --product FuzzConfig && .build/debug/FuzzConfig fuzz-out/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
seconds=${2:-30}
scratch=.build-fuzz
# gold crashes on libFuzzer's objects here; lld from the Swift toolchain links them.
lld=$(dirname "$(readlink -f "$(command -v swift)")")/ld.lld
toolset=$(mktemp)
trap 'rm -f "$toolset"' EXIT
printf '{ "schemaVersion": "1.0", "linker": { "path": "%s" } }\n' "$lld" > "$toolset"

targets=(FuzzListenerFilters:listener_filters FuzzConfig:config FuzzHttp1Request:http1_request FuzzHttp1Response:http1_response
         FuzzRespRequest:resp_request FuzzRespReply:resp_reply)
for t in "${targets[@]}"; do
  product=${t%%:*}
  swift build --scratch-path "$scratch" --toolset "$toolset" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING --product "$product" 2>&1 | grep -E "error|warning: unre" || true
  test -x "$scratch/debug/$product" || { echo "fuzz: $product did not build" >&2; exit 1; }
done
[ "$mode" = build ] && exit 0

mkdir -p fuzz-out
for t in "${targets[@]}"; do
  product=${t%%:*}
  corpus=${t##*:}
  work=$(mktemp -d)
  cp Fuzz/corpus/"$corpus"/* "$work"/
  echo "fuzz: $product for ${seconds}s"
  if ! "$scratch/debug/$product" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
       -artifact_prefix=fuzz-out/ -print_final_stats=1 "$work" > "fuzz-out/$product.log" 2>&1; then
    tail -n 40 "fuzz-out/$product.log" >&2
    echo "fuzz: $product FAILED (input in fuzz-out/)" >&2
    exit 1
  fi
  grep -E "stat::number_of_executed_units|Done" "fuzz-out/$product.log" | tail -n 2
  rm -rf "$work"
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
