"""tcp-proxy's filter chains by TLS server name (TLS passthrough): the ClientHello picks the
chain, the encrypted bytes reach the backend untouched. Backends are Python's ssl module
(OpenSSL) with their own certificates; clients are `openssl s_client` and Python ssl."""

import socket
import ssl

import pytest

from harness import Proxy, Server, echo_handler, read_line, validate, wait_for
from tls_peers import TlsServer, py_client, s_client

CHAINS = """
admin: {{ address: 127.0.0.1:0 }}
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    tls_inspector_timeout: 300ms
{extra}
    filter_chains:
      - name: api
        match: {{ server_names: [api.example.com] }}
        tcp: {{ cluster: api }}
      - name: web
        match: {{ server_names: ["*.example.com", www.example.org] }}
        tcp: {{ cluster: web }}
{default}
clusters:
  - name: api
    endpoints: [ "{api}" ]
  - name: web
    endpoints: [ "{web}" ]
  - name: plain
    endpoints: [ "{plain}" ]
"""

DEFAULT = """      - name: other
        tcp: { cluster: plain }"""


def chains(api, web, plain, default=True, extra=""):
    return CHAINS.format(api=api.endpoint, web=web.endpoint, plain=plain.endpoint,
                         default=DEFAULT if default else "", extra=extra)


@pytest.fixture
def backends():
    api, web = TlsServer("api.example.com"), TlsServer("web.example.com")
    plain = Server(echo_handler)
    yield api, web, plain
    for s in (api, web, plain):
        s.close()


def test_server_names_pick_the_chain_and_tls_passes_through(backends):
    api, web, plain = backends
    with Proxy("tcp-proxy", config=chains(api, web, plain)) as p:
        # Exact name; each handshake verifies the backend's own certificate end to end.
        rc, out, err = s_client(p.addr(), "api.example.com", "api.example.com")
        assert rc == 0 and out.startswith("api.example.com sni=api.example.com"), err
        # Wildcards, at any depth, and names in other case.
        for name in ("web.example.com", "x.y.example.com", "WWW.Example.ORG"):
            rc, out, err = s_client(p.addr(), name, "web.example.com")
            assert rc == 0 and out.startswith("web.example.com sni=" + name), (name, err)
        assert py_client(p.addr(), "api.example.com", "api.example.com").startswith("api.example.com")
        assert p.stat("listener.main.tls_inspector.sni_found") == 5
        assert p.stat("tcp.main.api.downstream_cx_total") == 2
        assert p.stat("tcp.main.web.downstream_cx_total") == 3


def test_plain_tcp_and_unknown_names_take_the_default_chain(backends):
    api, web, plain = backends
    with Proxy("tcp-proxy", config=chains(api, web, plain)) as p:
        c = socket.create_connection(p.addr(), timeout=10)
        c.sendall(b"hello\n")
        assert read_line(c) == b"hello\n"
        c.close()
        # TLS for a name no chain has: the default chain's backend (an echo) gets the exact
        # ClientHello bytes, unmodified.
        hello = client_hello("unknown.org")
        c = socket.create_connection(p.addr(), timeout=10)
        c.sendall(hello)
        got = b""
        while len(got) < len(hello):
            got += c.recv(65536)
        assert got == hello
        c.close()
        assert p.stat("listener.main.tls_inspector.tls_not_found") == 1
        assert p.stat("tcp.main.other.downstream_cx_total") == 2


def client_hello(name):
    """A real ClientHello from Python's ssl (OpenSSL), captured through a memory BIO."""
    ctx = ssl.create_default_context()
    out, inc = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_without_a_default_chain_unmatched_connections_are_closed(backends):
    api, web, plain = backends
    with Proxy("tcp-proxy", config=chains(api, web, plain, default=False)) as p:
        rc, out, err = s_client(p.addr(), "nobody.org", "api.example.com")
        assert rc != 0 and "api.example.com" not in out
        rc, out, err = s_client(p.addr(), None, "api.example.com")
        assert rc != 0
        p.wait_stat("listener.main.no_filter_chain_match", lambda v: v == 2)
        assert p.stat("listener.main.tls_inspector.sni_not_found") == 1
        # Server-speaks-first clients wait in vain: after the timeout there is no chain either.
        c = socket.create_connection(p.addr(), timeout=10)
        assert c.recv(10) == b""
        assert p.stat("listener.main.tls_inspector.timeout") == 1
        # The proxy is fine: a good name still works.
        rc, out, err = s_client(p.addr(), "api.example.com", "api.example.com")
        assert rc == 0, err


def test_server_speaks_first_gets_the_default_chain_after_the_timeout(backends):
    api, web, _ = backends

    def banner(c, server):
        c.sendall(b"220 smtp ready\r\n")
        echo_handler(c, server)
    with Server(banner) as smtp, Proxy("tcp-proxy", config=chains(api, web, smtp)) as p:
        c = socket.create_connection(p.addr(), timeout=10)
        assert read_line(c) == b"220 smtp ready\r\n"
        assert p.stat("listener.main.tls_inspector.timeout") == 1
        c.sendall(b"QUIT\r\n")
        assert read_line(c) == b"QUIT\r\n"
        c.close()  # before the proxy stops: an open session would wait out the drain


def test_malformed_and_oversized_hellos_are_closed_and_counted(backends):
    api, web, plain = backends
    with Proxy("tcp-proxy", config=chains(api, web, plain)) as p:
        bad = bytes([0x16, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0, 0])  # a ClientHello too short to hold its random
        huge = bytes([0x16, 3, 1, 0, 4, 1, 1, 0, 0])             # announces 64 KiB
        for msg in (bad, huge):
            c = socket.create_connection(p.addr(), timeout=10)
            c.sendall(msg)
            assert c.recv(10) == b""
            c.close()
        p.wait_stat("listener.main.tls_inspector.client_hello_invalid", lambda v: v == 1)
        p.wait_stat("listener.main.tls_inspector.client_hello_too_large", lambda v: v == 1)
        assert plain.connections == 0 and api.connections == 0
        rc, out, err = s_client(p.addr(), "api.example.com", "api.example.com")
        assert rc == 0, err


def test_proxy_protocol_then_sni(backends):
    api, web, plain = backends
    with Proxy("tcp-proxy", config=chains(api, web, plain, extra="    proxy_protocol: accept")) as p:
        line = py_client(p.addr(), "api.example.com", "api.example.com",
                         pre=b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 443\r\n")
        assert line.startswith("api.example.com sni=api.example.com")
        assert p.stat("listener.main.proxy_proto.v1.found") == 1
        dump = p.get("/config_dump")[1]
        assert '"server_names"' in dump and '"api.example.com"' in dump


BROKEN = [
    ("both", "    tcp: { cluster: plain }\n", "listeners[0].tcp: give either filter_chains or a `tcp` block, not both"),
    ("duplicate_name", None, 'listeners[0].filter_chains[1].match.server_names[1]: "api.example.com" is matched by an earlier chain'),
    ("two_defaults", None, "listeners[0].filter_chains[3].match: chains 2 and 3 both lack match.server_names"),
    ("bad_wildcard", None, 'listeners[0].filter_chains[0].match.server_names[0]: "a.*.com": give a host name'),
    ("unknown_cluster", None, 'listeners[0].filter_chains[0].tcp.cluster: unknown cluster "nope"'),
]


@pytest.mark.parametrize("name,extra,expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_chains_name_the_key(name, extra, expected):
    good = CHAINS.format(api="127.0.0.1:1", web="127.0.0.1:2", plain="127.0.0.1:3", default=DEFAULT, extra="")
    text = {
        "both": lambda: good.replace("    filter_chains:", extra + "    filter_chains:"),
        "duplicate_name": lambda: good.replace("www.example.org", "api.example.com"),
        "two_defaults": lambda: good.replace(DEFAULT, DEFAULT + "\n      - name: again\n        tcp: { cluster: plain }"),
        "bad_wildcard": lambda: good.replace("[api.example.com]", "[a.*.com]"),
        "unknown_cluster": lambda: good.replace("tcp: { cluster: api }", "tcp: { cluster: nope }", 1),
    }[name]()
    r = validate(text)
    assert r.returncode == 1 and expected in r.stderr, r.stderr


def test_udp_proxy_refuses_filter_chains():
    text = """
listeners:
  - name: dns
    address: 127.0.0.1:0
    filter_chains:
      - udp: { cluster: c }
clusters:
  - name: c
    endpoints: [ "127.0.0.1:53" ]
"""
    r = validate(text, binary="udp-proxy")
    assert r.returncode == 1 and "listeners[0].filter_chains: udp-proxy listens on UDP" in r.stderr, r.stderr


def test_access_log_names_the_requested_server(backends):
    api, web, plain = backends
    log = '    access_log: [ { path: /dev/stdout, format: "sni=%REQUESTED_SERVER_NAME% tls=%DOWNSTREAM_TLS_VERSION% %UPSTREAM_CLUSTER%\\n" } ]'
    with Proxy("tcp-proxy", config=chains(api, web, plain, extra=log)) as p:
        rc, out, err = s_client(p.addr(), "web.example.com", "web.example.com")
        assert rc == 0, err
        c = socket.create_connection(p.addr(), timeout=10)
        c.sendall(b"plain\n")
        assert read_line(c) == b"plain\n"
        c.close()
        # Passed through: the name is known, the TLS version is not ours to know.
        wait_for(lambda: "sni=web.example.com tls=- web" in p.stdout(), what="the passthrough log line")
        wait_for(lambda: "sni=- tls=- plain" in p.stdout(), what="the plain log line")
