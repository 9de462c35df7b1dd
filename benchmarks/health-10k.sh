#!/usr/bin/env bash
# health-checker checking 10,000 TCP endpoints on loopback every second: CPU share of one
# core and RSS over a measured window (issue 3's benchmark; results in RESULTS.md).
# Endpoints are 10,000 distinct addresses 127.0.X.Y on one listener bound to all interfaces.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
WARMUP=${WARMUP:-5}
WINDOW=${WINDOW:-15}
BIN=.build/release/health-checker
[ -x "$BIN" ] || swift build -c release --product health-checker
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0",0)); print(s.getsockname()[1])')
python3 - "$PORT" <<'PY' & pids+=($!)
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(65535)
while True:
    c, _ = s.accept(); c.close()
PY
python3 - "$N" "$PORT" > "$work/checks.yaml" <<'PY'
import sys
n, port = int(sys.argv[1]), sys.argv[2]
eps = [f'"127.{1 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}:{port}"' for i in range(n)]
print("admin: { address: 127.0.0.1:0 }")
print("clusters:")
print("  - name: fleet")
print("    endpoints: [" + ", ".join(eps) + "]")
print("    health_check: { interval: 1s, timeout: 500ms, initial_jitter: 1s, interval_jitter: 100ms, rise: 2, fall: 3, tcp: {} }")
PY
"$BIN" --config "$work/checks.yaml" --ready-file "$work/ready.json" --log-level warning 2>"$work/hc.log" & HC=$!; pids+=($HC)
for _ in $(seq 200); do [ -s "$work/ready.json" ] && break; sleep 0.1; done
ADMIN=$(python3 -c "import json;print(json.load(open('$work/ready.json'))['admin'])")
sleep "$WARMUP"
cpu() { awk '{print $14+$15}' "/proc/$HC/stat"; }
stat() { curl -s "http://$ADMIN/stats" | awk -v k="$1" -F': ' '$1==k {print $2}'; }
c0=$(cpu); a0=$(stat cluster.fleet.health_check.attempt); t0=$(date +%s.%N)
sleep "$WINDOW"
c1=$(cpu); a1=$(stat cluster.fleet.health_check.attempt); t1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$HC/status")
python3 - "$c0" "$c1" "$t0" "$t1" "$hz" "$a0" "$a1" "$rss" "$N" "$(stat cluster.fleet.health_check.healthy)" "$(stat cluster.fleet.health_check.failure)" <<'PY'
import sys
c0, c1, t0, t1, hz, a0, a1, rss, n, healthy, fail = sys.argv[1:]
secs = float(t1) - float(t0)
cpu = (int(c1) - int(c0)) / int(hz) / secs * 100
rate = (int(a1) - int(a0)) / secs
print(f"endpoints {n}, window {secs:.1f}s: {rate:.0f} checks/s, CPU {cpu:.1f}% of one core, RSS {int(rss)/1024:.1f} MiB, "
      f"healthy {healthy}/{n}, failures so far {fail}")
PY
