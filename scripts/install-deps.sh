#!/usr/bin/env bash
# Installs every system package the project needs to build, test, fuzz and demo.
# Idempotent; run as root on Debian 12. The project owns this list: nothing may
# depend on a package installed by hand.
set -euo pipefail

PKGS=(
  # build: the four C libraries of the design card
  libevent-dev libssl-dev libnghttp2-dev libhiredis-dev pkg-config
  # http-proxy's route regexes (PCRE2 with JIT)
  libpcre2-dev
  # tests: real peers and tools
  haproxy curl openssl python3 procps iproute2 redis-server nutcracker dnsmasq-base
  # load tools that http-proxy tests drive (h2load, nghttp; wrk)
  nghttp2-client wrk
  # strace holds a worker thread in one http-proxy drain test (the event order of a race)
  strace
  make
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages ${missing[*]}; run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts daemons on install; the tests start their own instances.
  for svc in haproxy redis-server nutcracker; do
    if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
    service "$svc" stop >/dev/null 2>&1 || true
  done
fi
# From PyPI: pytest runs the integration tests; grpcio and its health service are the real
# gRPC peer the gRPC health check is tested against.
if ! python3 -c "import pytest" >/dev/null 2>&1; then
  python3 -m pip install -q "pytest>=7" >/dev/null
fi
if ! python3 -c "import grpc, grpc_health.v1.health" >/dev/null 2>&1; then
  python3 -m pip install -q grpcio grpcio-health-checking >/dev/null 2>&1
fi
# websockets: a real WebSocket client and server for http-proxy's Upgrade tests.
if ! python3 -c "import websockets" >/dev/null 2>&1; then
  python3 -m pip install -q websockets >/dev/null 2>&1
fi
# redis-py: the client most Python users put in front of redis-proxy (it sends CLIENT SETINFO
# on connect, pipelines, and probes HELLO).
if ! python3 -c "import redis" >/dev/null 2>&1; then
  python3 -m pip install -q redis >/dev/null 2>&1
fi
# h2 (with hpack, hyperframe): a raw HTTP/2 client for http-proxy's HTTP/2 tests (manual flow
# control, trailers, RST_STREAM, header fields curl and nghttp would not send).
if ! python3 -c "import h2" >/dev/null 2>&1; then
  python3 -m pip install -q h2 >/dev/null 2>&1
fi
# cryptography: the small PKI (CAs, client certificates, a CRL) of the TLS front-proxy tests.
if ! python3 -c "import cryptography.x509" >/dev/null 2>&1; then
  python3 -m pip install -q cryptography >/dev/null 2>&1
fi
echo "install-deps: ok"
