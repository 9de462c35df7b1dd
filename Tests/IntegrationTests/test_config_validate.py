"""--validate: broken configs exit 1 naming the key path; a good one exits 0 (Must show 7)."""

import os
import subprocess

import pytest

from harness import BIN_DIR, validate

GOOD = """
admin: { address: 127.0.0.1:9901 }
workers: 2
drain_timeout: 10s
listeners:
  - name: edge
    address: 0.0.0.0:5432
    proxy_protocol: optional
    max_connections: 1000
    per_connection_buffer_limit: 256KiB
    access_log: [ { path: /dev/stdout, format: "%START_TIME% %BYTES_SENT%\\n" } ]
    tcp: { cluster: db, idle_timeout: 10m, max_connect_attempts: 3 }
clusters:
  - name: db
    lb_policy: least_request
    connect_timeout: 250ms
    send_proxy_protocol: v2
    endpoints: [ "10.0.0.1:5432", { address: "[::1]:5432", weight: 3 } ]
"""

# (name, replacement of GOOD or whole text, expected key path and words in the message)
BROKEN = [
    ("bad_port", GOOD.replace("10.0.0.1:5432", "10.0.0.1:99999"), 'clusters[0].endpoints[0]: "10.0.0.1:99999": port out of range'),
    ("unknown_key", GOOD.replace("max_connections: 1000", "max_conections: 1000"), "listeners[0].max_conections: unknown key"),
    ("unknown_cluster", GOOD.replace("cluster: db,", "cluster: dbx,"), 'listeners[0].tcp.cluster: unknown cluster "dbx"'),
    ("bad_duration", GOOD.replace("idle_timeout: 10m", "idle_timeout: 10 minutes"), "listeners[0].tcp.idle_timeout:"),
    ("bare_number_duration", GOOD.replace("connect_timeout: 250ms", "connect_timeout: 250"), "clusters[0].connect_timeout:"),
    ("missing_address", GOOD.replace("    address: 0.0.0.0:5432\n", ""), "listeners[0].address: missing required key"),
    ("missing_endpoints", GOOD.replace('    endpoints: [ "10.0.0.1:5432", { address: "[::1]:5432", weight: 3 } ]\n', ""), "clusters[0].endpoints: missing required key"),
    ("wrong_type_workers", GOOD.replace("workers: 2", "workers: two"), 'workers: expected an integer, got "two"'),
    ("wrong_type_listeners", "listeners: { name: edge }\n", "listeners: expected a list, got a mapping"),
    ("bad_lb", GOOD.replace("least_request", "fastest"), 'clusters[0].lb_policy: "fastest" is not one of'),
    ("weight_range", GOOD.replace("weight: 3", "weight: 0"), "clusters[0].endpoints[1].weight: 0 is out of range"),
    ("bad_proxy_protocol", GOOD.replace("proxy_protocol: optional", "proxy_protocol: maybe"), "listeners[0].proxy_protocol:"),
    ("bad_size", GOOD.replace("256KiB", "256KB"), "listeners[0].per_connection_buffer_limit:"),
    ("duplicate_cluster", GOOD + "  - name: db\n    endpoints: [ \"10.0.0.2:1\" ]\n", 'clusters[1].name: duplicate cluster name "db"'),
    ("unknown_log_command", GOOD.replace("%BYTES_SENT%", "%BYTES_SEND%"), "listeners[0].access_log[0].format: unknown format command %BYTES_SEND%"),
    ("ipv6_without_brackets", GOOD.replace("[::1]:5432", "::1:5432"), "clusters[0].endpoints[1].address:"),
    ("http_block_in_tcp_proxy", GOOD.replace("tcp: { cluster: db, idle_timeout: 10m, max_connect_attempts: 3 }", "http: { routes: [] }"), "listeners[0].http: tcp-proxy does not serve `http` listeners"),
    ("hash_needs_maglev", GOOD.replace("max_connect_attempts: 3 }", "max_connect_attempts: 3, hash_policy: source_ip }"), "listeners[0].tcp.hash_policy: source_ip hashing needs"),
    ("yaml_syntax", "listeners: [ { name: a\n", "YAML syntax error"),
    ("file_discovery_missing_file", GOOD.replace('    endpoints: [ "10.0.0.1:5432", { address: "[::1]:5432", weight: 3 } ]', "    discovery: file\n    path: /nonexistent/eps.json"), 'clusters[0].path: cannot read endpoints file "/nonexistent/eps.json"'),
    ("health_check_two_kinds", GOOD.replace("    send_proxy_protocol: v2", "    send_proxy_protocol: v2\n    health_check: { tcp: {}, http: {} }"), "clusters[0].health_check: give one check kind, not tcp and http"),
    ("attempts_range", GOOD.replace("max_connect_attempts: 3", "max_connect_attempts: 0"), "listeners[0].tcp.max_connect_attempts: 0 is out of range"),
]


def test_good_config_validates():
    r = validate(GOOD)
    assert r.returncode == 0, r.stderr
    assert "config OK" in r.stdout


@pytest.mark.parametrize("name,text,expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_names_the_key(name, text, expected):
    r = validate(text)
    assert r.returncode == 1, f"{name}: exit {r.returncode}, stderr {r.stderr}"
    assert expected in r.stderr, f"{name}: {r.stderr}"


def test_flags_errors_name_the_flag():
    tp = os.path.join(BIN_DIR, "tcp-proxy")
    r = subprocess.run([tp, "--listen", "127.0.0.1:70000", "--upstream", "127.0.0.1:1", "--validate"], capture_output=True, text=True)
    assert r.returncode == 1 and "port out of range (from flags)" in r.stderr
    r = subprocess.run([tp, "--listen", "127.0.0.1:7000", "--validate"], capture_output=True, text=True)
    assert r.returncode == 1 and "--upstream" in r.stderr
    r = subprocess.run([tp, "--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:1", "--lb", "nope", "--validate"], capture_output=True, text=True)
    assert r.returncode == 1 and "lb_policy" in r.stderr
    r = subprocess.run([tp, "--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:1", "--validate"], capture_output=True, text=True)
    assert r.returncode == 0


def test_version_flag():
    r = subprocess.run([os.path.join(BIN_DIR, "tcp-proxy"), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip()
