#!/usr/bin/env bash
# The README's first command ends here: two upstreams on loopback, a tcp-proxy in front of
# them with its admin page, some traffic, and what to try next. Ctrl-C stops everything.
# DEMO_SECONDS=N stops by itself after N seconds (for scripted runs).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.build/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
A=$(port); B=$(port)
python3 scripts/demo_upstream.py alpha "$A" & pids+=($!); PID_A=$!
python3 scripts/demo_upstream.py beta "$B" & pids+=($!); PID_B=$!

# The health checker watches both upstreams and writes the endpoints file the proxy follows.
"$BIN/health-checker" --upstream "127.0.0.1:$A,127.0.0.1:$B" --check tcp --interval 500ms --timeout 200ms \
  --rise 2 --fall 2 --cluster echo --endpoints-out "$work/echo-endpoints.json" --admin 127.0.0.1:0 \
  --ready-file "$work/hc-ready.json" 2> "$work/health-events.log" & pids+=($!)
for _ in $(seq 100); do [ -s "$work/echo-endpoints.json" ] && break; sleep 0.1; done

cat > "$work/tcp-proxy.yaml" <<YAML
admin: { address: 127.0.0.1:0 }
workers: 2
listeners:
  - name: demo
    address: 127.0.0.1:0
    access_log: [ { path: $work/access.log } ]
    tcp: { cluster: echo, idle_timeout: 5m, max_connect_attempts: 2 }
clusters:
  - name: echo
    lb_policy: round_robin
    connect_timeout: 1s
    discovery: file
    path: $work/echo-endpoints.json
YAML
"$BIN/tcp-proxy" --config "$work/tcp-proxy.yaml" --ready-file "$work/ready.json" 2> "$work/tcp-proxy.log" & pids+=($!)
for _ in $(seq 100); do [ -s "$work/ready.json" ] && break; sleep 0.1; done
LISTEN=$(python3 -c "import json;print(json.load(open('$work/ready.json'))['listeners']['demo'])")
ADMIN=$(python3 -c "import json;print(json.load(open('$work/ready.json'))['admin'])")
LPORT=${LISTEN##*:}

HC_ADMIN=$(python3 -c "import json;print(json.load(open('$work/hc-ready.json'))['admin'])")
echo "== tcp-proxy on $LISTEN, balancing over alpha (127.0.0.1:$A) and beta (127.0.0.1:$B)"
echo "== health-checker (admin http://$HC_ADMIN) feeds it through $work/echo-endpoints.json"
echo "== sending 6 connections through it:"
for i in 1 2 3 4 5 6; do
  python3 - "$LPORT" "$i" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
greeting = s.recv(100).decode().strip()
s.sendall(f"message {sys.argv[2]}".encode())
echo = s.recv(100).decode()
print(f"   connection {sys.argv[2]}: {greeting!r}, echoed {echo!r}")
s.close()
PY
done
sleep 1.2  # let the access log flush (once a second)
echo
echo "== counters (admin: http://$ADMIN/stats?filter=^tcp|^cluster):"
curl -s "http://$ADMIN/stats?filter=%5Etcp%7C%5Ecluster.echo.upstream_cx_total" | sed 's/^/   /'
echo
echo "== access log ($work/access.log):"
sed 's/^/   /' "$work/access.log" | head -3
cat <<MSG

MSG

# --- http-proxy: two web upstreams, two routes (the API route retries), one access log ---
W1=$(port); W2=$(port)
python3 scripts/demo_web.py web-1 "$W1" & pids+=($!)
python3 scripts/demo_web.py web-2 "$W2" & pids+=($!)
cat > "$work/http-proxy.yaml" <<YAML
admin: { address: 127.0.0.1:0 }
workers: 2
listeners:
  - name: web
    address: 127.0.0.1:0
    access_log: [ { path: $work/http-access.log, format: "%START_TIME% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %DURATION%ms\n" } ]
    http:
      http_filters: [ { name: health_check, path: /healthz } ]
      routes:
        - match: { prefix: /api/ }
          cluster: api
          timeout: 2s
          retry_policy: { retry_on: "5xx,connect-failure", num_retries: 2 }
        - match: { prefix: / }
          cluster: site
clusters:
  - name: api
    endpoints: [127.0.0.1:$W1, 127.0.0.1:$W2]
  - name: site
    endpoints: [127.0.0.1:$W1]
YAML
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$W1/" && curl -s -o /dev/null "http://127.0.0.1:$W2/" && break; sleep 0.1; done
"$BIN/http-proxy" --config "$work/http-proxy.yaml" --ready-file "$work/http-ready.json" 2> "$work/http-proxy.log" & pids+=($!)
for _ in $(seq 100); do [ -s "$work/http-ready.json" ] && break; sleep 0.1; done
HLISTEN=$(python3 -c "import json;print(json.load(open('$work/http-ready.json'))['listeners']['web'])")
HADMIN=$(python3 -c "import json;print(json.load(open('$work/http-ready.json'))['admin'])")
echo "== http-proxy on $HLISTEN: /api/ over web-1 and web-2 with retries, the rest to web-1"
for path in /index.html /api/users /api/flaky /api/flaky /healthz; do
  printf '   GET %-13s -> %s' "$path" "$(curl -s -w ' (%{http_code})' "http://$HLISTEN$path" | tr -d '\n')"
  echo
done
echo "== the same port speaks HTTP/2 (h2c, prior knowledge): $(curl -s --http2-prior-knowledge -o /dev/null -w 'HTTP/%{http_version} %{http_code}' "http://$HLISTEN/index.html")"
echo "== retries so far: $(curl -s "http://$HADMIN/stats?filter=%5Ecluster.api.upstream_rq_retry%24")"
sleep 1.2
echo "== its access log ($work/http-access.log):"
sed 's/^/   /' "$work/http-access.log" | head -5

# --- redis-proxy: two redis-servers as shards, keys where nutcracker would put them ---
R1=$(port); R2=$(port)
for rp in "$R1" "$R2"; do
  redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no --daemonize no > "$work/redis-$rp.log" 2>&1 & pids+=($!)
done
for _ in $(seq 100); do redis-cli -p "$R1" ping >/dev/null 2>&1 && redis-cli -p "$R2" ping >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/redis-proxy" --listen 127.0.0.1:0 --upstream "127.0.0.1:$R1,127.0.0.1:$R2" --hash murmur --hash-tag '{}' --admin 127.0.0.1:0 \
  --ready-file "$work/redis-ready.json" 2> "$work/redis-proxy.log" & pids+=($!)
for _ in $(seq 100); do [ -s "$work/redis-ready.json" ] && break; sleep 0.1; done
RLISTEN=$(python3 -c "import json;print(json.load(open('$work/redis-ready.json'))['listeners']['main'])")
RADMIN=$(python3 -c "import json;print(json.load(open('$work/redis-ready.json'))['admin'])")
RPORT=${RLISTEN##*:}
echo "== redis-proxy on $RLISTEN over two redis-servers (127.0.0.1:$R1, 127.0.0.1:$R2)"
for i in 1 2 3 4 5 6; do redis-cli -p "$RPORT" set "user:$i" "name-$i" > /dev/null; done
echo "   MGET user:1..6 -> $(redis-cli -p "$RPORT" mget user:1 user:2 user:3 user:4 user:5 user:6 | tr '\n' ' ')"
echo "   keys per shard: 127.0.0.1:$R1 has $(redis-cli -p "$R1" dbsize), 127.0.0.1:$R2 has $(redis-cli -p "$R2" dbsize); DBSIZE via the proxy: $(redis-cli -p "$RPORT" dbsize)"
echo "   MULTI/EXEC on one shard ({cart} hash tag): $(printf 'MULTI\nINCR {cart}:n\nINCR {cart}:n\nEXEC\n' | redis-cli -p "$RPORT" | tr '\n' ' ')"
echo "   SUBSCRIBE (not yet): $(redis-cli -p "$RPORT" subscribe ch 2>&1 | head -1)"

cat <<MSG

Try it yourself while this runs (Ctrl-C to stop):
   redis-cli -p $RPORT                         # a sharded Redis: SCAN, INFO, MGET, transactions on one shard
   curl http://$RADMIN/redis/shards            # each shard's state and request counts
   curl -v http://$HLISTEN/api/flaky          # a 503 retried into a 200 (see RESPONSE_FLAGS URX in the log)
   curl http://$HLISTEN/healthz               # answered by the proxy; POST http://$HADMIN/healthcheck/fail flips it
   curl "http://$HADMIN/stats?filter=%5Ehttp%7Cupstream_rq"   # http-proxy's stats
   nc 127.0.0.1 $LPORT                      # talk to alpha or beta through the proxy
   kill $PID_A                              # stop alpha: within a second the checker marks it down,
   cat $work/echo-endpoints.json            #   rewrites this file, and every connection goes to beta
   tail -f $work/health-events.log          # health flips as JSON lines
   curl http://$HC_ADMIN/clusters     # the checker's view: health and last check per host
   curl http://$ADMIN/                 # the admin page: /stats /clusters /listeners /ready /config_dump
   curl http://$ADMIN/stats/prometheus
   curl http://$ADMIN/clusters
   kill -HUP $(python3 -c "import json;print(json.load(open('$work/ready.json'))['pid'])")   # reload $work/tcp-proxy.yaml
   Docs: README.md, docs/tcp-proxy.md, docs/http-proxy.md, docs/redis-proxy.md, docs/health-checker.md, docs/config.md
MSG
if [ -n "${DEMO_SECONDS:-}" ]; then sleep "$DEMO_SECONDS"; else wait; fi
