#!/usr/bin/env bash
# The anchor for health-10k.sh: HAProxy's checker (tcp connect checks, inter 1s) against the
# same 10,000 loopback endpoints, CPU measured the same way.
set -euo pipefail
N=${N:-10000}; WARMUP=${WARMUP:-5}; WINDOW=${WINDOW:-15}
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0",0)); print(s.getsockname()[1])')
python3 - "$PORT" <<'PY' & pids+=($!)
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(65535)
while True:
    c, _ = s.accept(); c.close()
PY
python3 - "$N" "$PORT" > "$work/haproxy.cfg" <<'PY'
import sys
n, port = int(sys.argv[1]), sys.argv[2]
print("global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 500ms\n  timeout client 5s\n  timeout server 5s\n  timeout check 500ms")
print(f"frontend fe\n  bind 127.0.0.1:{int(port) + 1 if int(port) < 65535 else int(port) - 1}\n  default_backend fleet")
print("backend fleet")
for i in range(n):
    print(f"  server s{i} 127.{1 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}:{port} check inter 1s rise 2 fall 3")
PY
ulimit -n "$(ulimit -Hn)"
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & HP=$!; pids+=($HP)
sleep "$WARMUP"
hz=$(getconf CLK_TCK)
c0=$(awk '{print $14+$15}' /proc/$HP/stat); t0=$(date +%s.%N)
sleep "$WINDOW"
c1=$(awk '{print $14+$15}' /proc/$HP/stat); t1=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' /proc/$HP/status)
python3 -c "print(f'haproxy: endpoints $N, CPU {($c1-$c0)/$hz/($t1-$t0)*100:.1f}% of one core, RSS {$rss/1024:.1f} MiB')"
