"""strict_dns discovery against a real DNS server on loopback (dnsmasq) whose answer changes
(issue 3, Must show 2)."""

import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from harness import Proxy, Server, connect, free_port, name_handler, recv_exact, wait_for

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


class Dnsmasq:
    def __init__(self, records):
        self.dir = tempfile.mkdtemp(prefix="dnsmasq-")
        self.hosts = os.path.join(self.dir, "hosts")
        self.port = free_port()
        self.write(records)
        self.proc = subprocess.Popen([DNSMASQ, "--keep-in-foreground", f"--port={self.port}", "--listen-address=127.0.0.1",
                                      "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}",
                                      "--local-ttl=1", "--conf-file=/dev/null", "--user=root", "--pid-file=",
                                      "--log-facility=-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def write(self, records):
        with open(self.hosts, "w") as f:
            f.write("".join(f"{ip} {name}\n" for name, ip in records))

    def change(self, records):
        self.write(records)
        self.proc.send_signal(signal.SIGHUP)  # dnsmasq re-reads --addn-hosts on SIGHUP

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def dns():
    if not os.path.exists(DNSMASQ):
        pytest.skip("dnsmasq not installed")
    d = Dnsmasq([("svc.test", "127.0.0.2")])
    yield d
    d.stop()


def names(p, n=6):
    seen = set()
    for _ in range(n):
        s = connect(p.addr())
        seen.add(recv_exact(s, 2, timeout=5).decode().strip())
        s.close()
    return seen


def test_strict_dns_follows_answers_keeps_open_connections_and_survives_outages(dns):
    port = free_port()
    with Server(name_handler("2"), port=port, host="127.0.0.2") as two, \
         Server(name_handler("3"), port=port, host="127.0.0.3") as three:
        cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    tcp: {{ cluster: svc }}
clusters:
  - name: svc
    discovery: strict_dns
    dns_resolvers: [ "127.0.0.1:{dns.port}" ]
    dns_lookup_family: v4_only
    dns_refresh_rate: 200ms
    endpoints: [ "svc.test:{port}" ]
"""
        with Proxy("tcp-proxy", config=cfg) as p:
            p.wait_stat("cluster.svc.membership_total", lambda v: v == 1, timeout=10)
            assert names(p) == {"2"}
            held = connect(p.addr())
            assert recv_exact(held, 2) == b"2\n"

            # Both records: both hosts serve.
            dns.change([("svc.test", "127.0.0.2"), ("svc.test", "127.0.0.3")])
            p.wait_stat("cluster.svc.membership_total", lambda v: v == 2, timeout=10)
            wait_for(lambda: names(p, 8) == {"2", "3"}, timeout=10, what="both hosts used")

            # Only .3: .2 leaves; the connection opened to .2 is not touched.
            dns.change([("svc.test", "127.0.0.3")])
            p.wait_stat("cluster.svc.membership_total", lambda v: v == 1, timeout=10)
            assert names(p) == {"3"}
            held.sendall(b"still")
            assert recv_exact(held, 5) == b"still"

            # DNS goes away: the last good set keeps serving, failures are counted.
            failures = p.stat("cluster.svc.update_failure")
            dns.stop()
            p.wait_stat("cluster.svc.update_failure", lambda v: v > failures, timeout=15)
            assert p.stat("cluster.svc.membership_total") == 1
            assert names(p) == {"3"}
            assert "DNS lookup failed" in p.stderr()
            held.close()


def test_strict_dns_config_errors():
    import subprocess as sp
    from harness import BIN_DIR
    bad = """
listeners: [ { name: m, address: "127.0.0.1:0", tcp: { cluster: c } } ]
clusters:
  - { name: c, discovery: strict_dns, endpoints: [ "svc.test" ] }
"""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(bad)
    r = sp.run([os.path.join(BIN_DIR, "tcp-proxy"), "--config", f.name, "--validate"], capture_output=True, text=True)
    assert r.returncode == 1 and 'clusters[0].endpoints[0]: "svc.test": expected name:port' in r.stderr


def test_logical_dns_uses_one_address_that_follows_the_name(dns):
    port = free_port()
    with Server(name_handler("2"), port=port, host="127.0.0.2"), Server(name_handler("3"), port=port, host="127.0.0.3"):
        cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    tcp: {{ cluster: svc }}
clusters:
  - name: svc
    discovery: logical_dns
    dns_resolvers: [ "127.0.0.1:{dns.port}" ]
    dns_lookup_family: v4_only
    dns_refresh_rate: 200ms
    endpoints: [ "svc.test:{port}" ]
"""
        with Proxy("tcp-proxy", config=cfg) as p:
            p.wait_stat("cluster.svc.membership_total", lambda v: v == 1, timeout=10)
            assert names(p) == {"2"}
            dns.change([("svc.test", "127.0.0.3"), ("svc.test", "127.0.0.2")])
            wait_for(lambda: names(p, 2) == {"3"} or names(p, 2) == {"2"}, timeout=5, what="one address")
            dns.change([("svc.test", "127.0.0.3")])
            wait_for(lambda: names(p, 3) == {"3"}, timeout=10, what="the new address")
            assert p.stat("cluster.svc.membership_total") == 1
