"""http-proxy as a TLS front proxy (issue 11, must-show 4): client certificates (mTLS) checked
against a CA, a CRL and subject-alt-name matchers, the verified identity forwarded to the
origin as X-Forwarded-Client-Cert (Envoy's modes) and usable by routes; a client certificate
toward an upstream that requires one. Certificates come from a small PKI made here with the
`cryptography` library (not the proxy's OpenSSL code); clients are curl and Python ssl."""

import datetime
import hashlib
import json
import os
import ssl
import socket
import subprocess
import tempfile

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import Proxy, wait_for
from h2_peers import RecordingOrigin

NAME = "api.example.com"


class Pki:
    """Two CAs (the trusted one and another), the proxy's server certificate, client
    certificates, and a CRL revoking one of them. Files under a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pki-")
        self.ca, self.ca_key = self._ca("Test CA")
        self.other, self.other_key = self._ca("Other CA")
        self.revoked_serial = x509.random_serial_number()
        self.files = {}
        self.files["ca"] = self._write("ca.pem", self.ca)
        self.files["server"] = self._leaf("server", NAME, self.ca, self.ca_key, dns=[NAME], uris=["spiffe://proxy.test/edge"])
        self.files["client"] = self._leaf("client", "client-a", self.ca, self.ca_key, dns=["client-a.example"], uris=["spiffe://test/client-a"])
        self.files["admin"] = self._leaf("admin", "admin", self.ca, self.ca_key, uris=["spiffe://test/admin"])
        self.files["other"] = self._leaf("other", "client-a", self.other, self.other_key, uris=["spiffe://test/client-a"])
        self.files["wrong-san"] = self._leaf("wrong-san", "intruder", self.ca, self.ca_key, uris=["spiffe://elsewhere/x"])
        self.files["revoked"] = self._leaf("revoked", "revoked", self.ca, self.ca_key, uris=["spiffe://test/revoked"],
                                           serial=self.revoked_serial)
        self.files["crl"] = self._crl()

    def _key(self):
        return ec.generate_private_key(ec.SECP256R1())

    def _ca(self, cn):
        key = self._key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        now = datetime.datetime.now(datetime.timezone.utc)
        c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                          encipher_only=False, decipher_only=False), critical=True)
             .sign(key, hashes.SHA256()))
        return c, key

    def _write(self, fname, obj):
        path = os.path.join(self.dir, fname)
        with open(path, "wb") as f:
            f.write(obj.public_bytes(serialization.Encoding.PEM))
        return path

    def _leaf(self, label, cn, ca, ca_key, dns=(), uris=(), serial=None):
        key = self._key()
        now = datetime.datetime.now(datetime.timezone.utc)
        sans = [x509.DNSName(d) for d in dns] + [x509.UniformResourceIdentifier(u) for u in uris]
        c = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                                                               x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tests")]))
             .issuer_name(ca.subject).public_key(key.public_key()).serial_number(serial or x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.SubjectAlternativeName(sans), critical=False)
             .sign(ca_key, hashes.SHA256()))
        cert_path = self._write(label + ".pem", c)
        key_path = os.path.join(self.dir, label + ".key")
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        der = c.public_bytes(serialization.Encoding.DER)
        return {"cert": cert_path, "key": key_path, "sha256": hashlib.sha256(der).hexdigest()}

    def _crl(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        revoked = x509.RevokedCertificateBuilder().serial_number(self.revoked_serial).revocation_date(now).build()
        crl = (x509.CertificateRevocationListBuilder().issuer_name(self.ca.subject).last_update(now - datetime.timedelta(minutes=5))
               .next_update(now + datetime.timedelta(days=1)).add_revoked_certificate(revoked).sign(self.ca_key, hashes.SHA256()))
        return self._write("crl.pem", crl)


@pytest.fixture(scope="module")
def pki():
    return Pki()


def config(pki, origin, xfcc="sanitize_set", require=True, extra_tls="", routes=None):
    f = pki.files
    routes = routes or "      routes: [{ match: { prefix: / }, cluster: web }]\n"
    return f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    tls:
      cert: "{f['server']['cert']}"
      key: "{f['server']['key']}"
      client_ca: "{f['ca']}"
      require_client_certificate: {str(require).lower()}
      crl: "{f['crl']}"
      match_subject_alt_names: [{{ prefix: "spiffe://test/" }}]
{extra_tls}    http:
      forward_client_cert_details: {xfcc}
      set_current_client_cert_details: {{ subject: true, uri: true, dns: true }}
{routes}clusters:
  - name: web
    endpoints: [{origin.endpoint}]
    http_protocol_options: {{ idle_timeout: 1s }}
"""


def curl(p, pki, who=None, path="/echo", http2=False, headers=()):
    """curl over TLS to the proxy, as client `who` (None: no certificate): (exit, body, stderr)."""
    port = p.addr()[1]
    argv = ["curl", "-sS", "--max-time", "10", "--cacert", pki.files["ca"], "--resolve", f"{NAME}:{port}:127.0.0.1",
            "--http2" if http2 else "--http1.1"]
    if who:
        argv += ["--cert", pki.files[who]["cert"], "--key", pki.files[who]["key"]]
    for h in headers:
        argv += ["-H", h]
    argv.append(f"https://{NAME}:{port}{path}")
    r = subprocess.run(argv, capture_output=True, timeout=20)
    return r.returncode, r.stdout, r.stderr.decode()


def xfcc_seen(origin):
    req = origin.requests[-1]
    return {k.lower(): v for k, v in req[2].items()}.get("x-forwarded-client-cert")


def test_a_client_without_a_certificate_is_refused(pki):
    with RecordingOrigin() as o, Proxy("http-proxy", config=config(pki, o)) as p:
        rc, body, err = curl(p, pki, None)
        assert rc != 0, body
        wait_for(lambda: p.stat("listener.main.ssl.fail_verify_no_cert") == 1, what="fail_verify_no_cert")
        assert o.requests == []


def test_a_certificate_from_another_ca_is_refused(pki):
    with RecordingOrigin() as o, Proxy("http-proxy", config=config(pki, o)) as p:
        rc, body, err = curl(p, pki, "other")
        assert rc != 0, body
        wait_for(lambda: p.stat("listener.main.ssl.fail_verify_error") == 1, what="fail_verify_error")
        assert o.requests == []


def test_a_revoked_certificate_is_refused(pki):
    with RecordingOrigin() as o, Proxy("http-proxy", config=config(pki, o)) as p:
        rc, body, err = curl(p, pki, "revoked")
        assert rc != 0, body
        wait_for(lambda: p.stat("listener.main.ssl.fail_verify_error") == 1, what="fail_verify_error")
        assert o.requests == []


def test_a_certificate_whose_names_match_no_matcher_is_refused(pki):
    with RecordingOrigin() as o, Proxy("http-proxy", config=config(pki, o)) as p:
        rc, body, err = curl(p, pki, "wrong-san")
        assert rc != 0, body
        wait_for(lambda: p.stat("listener.main.ssl.fail_verify_san") == 1, what="fail_verify_san")
        assert o.requests == []


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_a_good_certificate_passes_and_the_origin_sees_xfcc(pki, http2):
    with RecordingOrigin() as o, Proxy("http-proxy", config=config(pki, o)) as p:
        # A client-sent XFCC must not survive (sanitize_set replaces it).
        rc, body, err = curl(p, pki, "client", http2=http2, headers=["x-forwarded-client-cert: By=evil;Hash=00"])
        assert rc == 0, err
        xfcc = xfcc_seen(o)
        c = pki.files["client"]
        assert xfcc == (f'By=spiffe://proxy.test/edge;Hash={c["sha256"]};Subject="O=Tests,CN=client-a";'
                        "URI=spiffe://test/client-a;DNS=client-a.example"), xfcc
        assert p.stat("listener.main.ssl.handshake") == 1


def test_xfcc_modes(pki):
    c = pki.files["client"]
    sent = "By=upstream;Hash=aa"
    with RecordingOrigin() as o:
        with Proxy("http-proxy", config=config(pki, o, xfcc="sanitize")) as p:
            assert curl(p, pki, "client", headers=[f"x-forwarded-client-cert: {sent}"])[0] == 0
            assert xfcc_seen(o) is None
        with Proxy("http-proxy", config=config(pki, o, xfcc="forward_only")) as p:
            assert curl(p, pki, "client", headers=[f"x-forwarded-client-cert: {sent}"])[0] == 0
            assert xfcc_seen(o) == sent
        with Proxy("http-proxy", config=config(pki, o, xfcc="append_forward")) as p:
            assert curl(p, pki, "client", headers=[f"x-forwarded-client-cert: {sent}"])[0] == 0
            assert xfcc_seen(o).startswith(sent + ",By=spiffe://proxy.test/edge;Hash=" + c["sha256"])
        # Without a client certificate (not required here), append_forward sanitizes.
        with Proxy("http-proxy", config=config(pki, o, xfcc="append_forward", require=False)) as p:
            assert curl(p, pki, None, headers=[f"x-forwarded-client-cert: {sent}"])[0] == 0
            assert xfcc_seen(o) is None


def test_routes_can_match_the_verified_identity(pki):
    routes = """      routes:
        - match: { prefix: /admin, headers: [{ name: x-forwarded-client-cert, contains: "URI=spiffe://test/admin" }] }
          cluster: web
        - match: { prefix: /admin }
          direct_response: { status: 403, body: "admins only" }
        - match: { prefix: / }
          cluster: web
"""
    with RecordingOrigin() as o, Proxy("http-proxy", config=config(pki, o, routes=routes)) as p:
        rc, body, _ = curl(p, pki, "client", path="/admin")
        assert rc == 0 and body == b"admins only"
        rc, body, _ = curl(p, pki, "admin", path="/admin")
        assert rc == 0 and json.loads(body)["path"] == "/admin"
        # A client cannot claim the identity with its own header.
        rc, body, _ = curl(p, pki, "client", path="/admin", headers=["x-forwarded-client-cert: URI=spiffe://test/admin"])
        assert rc == 0 and body == b"admins only"


class MtlsOrigin:
    """An HTTPS origin on Python ssl that requires a client certificate from the test CA and
    answers with the client's certificate subject."""

    def __init__(self, pki):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.files["server"]["cert"], pki.files["server"]["key"])
        self.ctx.load_verify_locations(pki.files["ca"])
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.subjects = []
        self.failures = 0
        import threading
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(c, server_side=True) as t:
                    t.settimeout(10)
                    cn = dict(x[0] for x in t.getpeercert()["subject"])["commonName"]
                    self.subjects.append(cn)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        d = t.recv(4096)
                        if not d:
                            break
                        data += d
                    body = cn.encode()
                    t.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            except (ssl.SSLError, OSError):
                self.failures += 1

    def close(self):
        self.sock.close()


def test_the_proxy_presents_a_client_certificate_to_an_upstream_that_requires_one(pki):
    o = MtlsOrigin(pki)
    try:
        f = pki.files
        cfg = f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    http:
      routes: [{{ match: {{ prefix: / }}, cluster: secure }}]
clusters:
  - name: secure
    endpoints: [{o.endpoint}]
    tls: {{ sni: {NAME}, ca: "{f['ca']}", cert: "{f['client']['cert']}", key: "{f['client']['key']}" }}
    http_protocol_options: {{ idle_timeout: 1s }}
"""
        with Proxy("http-proxy", config=cfg) as p:
            r = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{p.addr()[1]}/"], capture_output=True, timeout=20)
            assert r.returncode == 0 and r.stdout == b"client-a", r.stderr
            assert o.subjects == ["client-a"]
        # Without the certificate the upstream refuses the handshake: a connect failure (503).
        cfg2 = cfg.replace(f', cert: "{f["client"]["cert"]}", key: "{f["client"]["key"]}"', "")
        with Proxy("http-proxy", config=cfg2) as p:
            r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                                f"http://127.0.0.1:{p.addr()[1]}/"], capture_output=True, timeout=20)
            assert r.stdout == b"503"
    finally:
        o.close()


def test_client_ca_options_without_client_ca_are_config_errors(pki, tmp_path):
    from harness import validate
    f = pki.files
    cfg = f"""listeners:
  - name: main
    address: 127.0.0.1:0
    tls: {{ cert: "{f['server']['cert']}", key: "{f['server']['key']}", require_client_certificate: true }}
    http:
      routes: [{{ match: {{ prefix: / }}, cluster: web }}]
clusters:
  - {{ name: web, endpoints: ["127.0.0.1:1"] }}
"""
    r = validate(cfg, "http-proxy")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "listeners[0].tls.require_client_certificate" in out and "client_ca" in out, out


def plain_curl(p, path, host="shop.example.com", headers=()):
    argv = ["curl", "-sS", "-i", "--max-time", "10", "-H", f"Host: {host}"]
    for h in headers:
        argv += ["-H", h]
    r = subprocess.run(argv + [f"http://127.0.0.1:{p.addr()[1]}{path}"], capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return int(lines[0].split()[1]), {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}, body


def test_https_redirect_by_flag():
    with Proxy("http-proxy", args=["--listen", "127.0.0.1:0", "--https-redirect", "--admin", "127.0.0.1:0"]) as p:
        status, h, _ = plain_curl(p, "/cart/items?id=7")
        assert status == 301 and h["location"] == "https://shop.example.com/cart/items?id=7"
        assert p.stat("http.main.rq_redirect") == 1


def test_require_tls_redirects_plain_requests():
    with RecordingOrigin() as o:
        cfg = f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    http:
      use_remote_address: false
      virtual_hosts:
        - name: shop
          domains: ["*"]
          require_tls: all
          routes: [{{ match: {{ prefix: / }}, cluster: web }}]
clusters:
  - name: web
    endpoints: [{o.endpoint}]
    http_protocol_options: {{ idle_timeout: 1s }}
"""
        with Proxy("http-proxy", config=cfg) as p:
            status, h, _ = plain_curl(p, "/a?b=c")
            assert status == 301 and h["location"] == "https://shop.example.com/a?b=c"
            assert o.requests == []
            # Behind a TLS tier that says so (use_remote_address: false trusts X-Forwarded-Proto).
            status, h, body = plain_curl(p, "/a", headers=["X-Forwarded-Proto: https"])
            assert status == 200 and json.loads(body)["path"] == "/a"


def test_hsts_header_on_the_tls_listener(pki):
    f = pki.files
    with RecordingOrigin() as o:
        cfg = f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    tls: {{ cert: "{f['server']['cert']}", key: "{f['server']['key']}" }}
    http:
      routes:
        - match: {{ prefix: / }}
          cluster: web
          response_headers_to_add:
            - header: {{ key: strict-transport-security, value: "max-age=31536000; includeSubDomains" }}
clusters:
  - name: web
    endpoints: [{o.endpoint}]
    http_protocol_options: {{ idle_timeout: 1s }}
"""
        with Proxy("http-proxy", config=cfg) as p:
            port = p.addr()[1]
            r = subprocess.run(["curl", "-sS", "-D", "-", "-o", "/dev/null", "--max-time", "10", "--cacert", f["ca"],
                                "--resolve", f"{NAME}:{port}:127.0.0.1", f"https://{NAME}:{port}/x"], capture_output=True, timeout=20)
            assert r.returncode == 0, r.stderr
            assert b"strict-transport-security: max-age=31536000; includeSubDomains" in r.stdout, r.stdout


def tls_listener_config(pki, origin, tls_extra):
    f = pki.files
    return f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    tls:
      cert: "{f['server']['cert']}"
      key: "{f['server']['key']}"
{tls_extra}    http:
      routes: [{{ match: {{ prefix: / }}, cluster: web }}]
clusters:
  - name: web
    endpoints: [{origin.endpoint}]
    http_protocol_options: {{ idle_timeout: 1s }}
"""


def client_context(pki, version):
    ctx = ssl.create_default_context(cafile=pki.files["ca"])
    ctx.maximum_version = version
    return ctx


def get_over_tls(p, ctx, session=None):
    """One HTTP/1.1 GET over Python ssl; the SSLSocket's session and whether it was reused."""
    s = socket.create_connection(p.addr(), timeout=10)
    with ctx.wrap_socket(s, server_hostname=NAME, session=session) as t:
        t.sendall(f"GET /x HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            d = t.recv(65536)
            if not d:
                break
            data += d
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
        return t.session, t.session_reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_instances_sharing_ticket_keys_resume_each_others_sessions(pki, tmp_path, version):
    keys = tmp_path / "ticket.key"
    keys.write_bytes(os.urandom(80))
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(80))
    with RecordingOrigin() as o:
        shared = f'      session_ticket_keys: ["{keys}"]\n'
        with Proxy("http-proxy", config=tls_listener_config(pki, o, shared)) as a, \
                Proxy("http-proxy", config=tls_listener_config(pki, o, shared)) as b, \
                Proxy("http-proxy", config=tls_listener_config(pki, o, f'      session_ticket_keys: ["{other}", "{keys}"]\n')) as c, \
                Proxy("http-proxy", config=tls_listener_config(pki, o, f'      session_ticket_keys: ["{other}"]\n')) as d:
            ctx = client_context(pki, version)
            sess, reused = get_over_tls(a, ctx)
            assert not reused and sess is not None and sess.has_ticket
            assert get_over_tls(b, ctx, session=sess)[1], "B did not resume A's session"
            # An instance that has the key only to decrypt (rotation) still resumes it.
            assert get_over_tls(c, ctx, session=sess)[1]
            # One without the key makes a full handshake.
            assert not get_over_tls(d, ctx, session=sess)[1]
            wait_for(lambda: b.stat("listener.main.ssl.session_reused") == 1, what="session_reused on B")


def test_a_ticket_key_file_of_the_wrong_size_is_a_config_error(pki, tmp_path):
    from harness import validate
    bad = tmp_path / "short.key"
    bad.write_bytes(os.urandom(48))
    with RecordingOrigin() as o:
        r = validate(tls_listener_config(pki, o, f'      session_ticket_keys: ["{bad}"]\n'), "http-proxy")
    assert r.returncode == 1 and "listeners[0].tls.session_ticket_keys[0]" in r.stdout + r.stderr and "80 bytes" in r.stdout + r.stderr


def ocsp_response(pki, tmp_path):
    from cryptography.x509 import ocsp, load_pem_x509_certificate
    with open(pki.files["server"]["cert"], "rb") as f:
        server = load_pem_x509_certificate(f.read())
    now = datetime.datetime.now(datetime.timezone.utc)
    r = (ocsp.OCSPResponseBuilder()
         .add_response(cert=server, issuer=pki.ca, algorithm=hashes.SHA1(), cert_status=ocsp.OCSPCertStatus.GOOD,
                       this_update=now, next_update=now + datetime.timedelta(days=1), revocation_time=None, revocation_reason=None)
         .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.ca)
         .sign(pki.ca_key, hashes.SHA256()))
    path = tmp_path / "ocsp.der"
    path.write_bytes(r.public_bytes(serialization.Encoding.DER))
    return path


def s_client_status(p, pki):
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.addr()[1]}", "-servername", NAME, "-status",
                        "-CAfile", pki.files["ca"]], input=b"", capture_output=True, timeout=20)
    return r.stdout.decode(errors="replace")


def test_ocsp_staple_from_a_file(pki, tmp_path):
    with RecordingOrigin() as o:
        with Proxy("http-proxy", config=tls_listener_config(pki, o, f'      ocsp_staple: "{ocsp_response(pki, tmp_path)}"\n')) as p:
            out = s_client_status(p, pki)
            assert "OCSP Response Status: successful" in out, out
            assert "Cert Status: good" in out, out
        with Proxy("http-proxy", config=tls_listener_config(pki, o, "")) as p:
            assert "OCSP response: no response sent" in s_client_status(p, pki)


def serial_seen(p, pki):
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.addr()[1]}", "-servername", NAME],
                       input=b"", capture_output=True, timeout=20)
    x = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=r.stdout, capture_output=True, timeout=20)
    text = x.stdout.decode().strip().split("=")[-1]
    return int(text, 16) if text else None  # compared as numbers: openssl pads odd-length hex


def test_a_replaced_certificate_is_served_without_sighup(pki, tmp_path):
    import shutil
    f = pki.files
    cert_path, key_path = tmp_path / "edge.pem", tmp_path / "edge.key"
    shutil.copy(f["server"]["cert"], cert_path)
    shutil.copy(f["server"]["key"], key_path)
    with RecordingOrigin() as o:
        cfg = tls_listener_config(pki, o, "").replace(f["server"]["cert"], str(cert_path)).replace(f["server"]["key"], str(key_path))
        with Proxy("http-proxy", config=cfg) as p:
            before = serial_seen(p, pki)
            # A renewed certificate: a new leaf and key, written beside and renamed into place.
            new = pki._leaf("renewed", NAME, pki.ca, pki.ca_key, dns=[NAME])
            shutil.copy(new["key"], tmp_path / "edge.key.new")
            os.rename(tmp_path / "edge.key.new", key_path)
            shutil.copy(new["cert"], tmp_path / "edge.pem.new")
            os.rename(tmp_path / "edge.pem.new", cert_path)
            with open(new["cert"], "rb") as fh:
                want = x509.load_pem_x509_certificate(fh.read()).serial_number
            assert want != before
            wait_for(lambda: serial_seen(p, pki) == want, timeout=15, what="the new certificate served")
            assert p.stat("server.reload_success") >= 1
            # A broken file changes nothing: the running certificate stays.
            with open(tmp_path / "edge.pem.bad", "w") as fh:
                fh.write("not a certificate")
            os.rename(tmp_path / "edge.pem.bad", cert_path)
            p.wait_stat("server.reload_rejected", lambda v: v >= 1, timeout=15)
            assert serial_seen(p, pki) == want


# --- Review faults (issue 11, second review)

def test_a_session_from_a_listener_with_other_client_checks_does_not_resume(pki, tmp_path):
    # Two instances share ticket keys but trust different client CAs: a session made with a
    # good certificate on A must not let the same client skip B's check (a full handshake, which
    # B's CA refuses).
    keys = tmp_path / "ticket.key"
    keys.write_bytes(os.urandom(80))
    other_ca = pki._write("other-ca.pem", pki.other)
    f = pki.files
    with RecordingOrigin() as o:
        tls_a = f'      client_ca: "{f["ca"]}"\n      require_client_certificate: true\n      session_ticket_keys: ["{keys}"]\n'
        tls_b = f'      client_ca: "{other_ca}"\n      require_client_certificate: true\n      session_ticket_keys: ["{keys}"]\n'
        with Proxy("http-proxy", config=tls_listener_config(pki, o, tls_a)) as a, \
                Proxy("http-proxy", config=tls_listener_config(pki, o, tls_b)) as b:
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                ctx = client_context(pki, version)
                ctx.load_cert_chain(f["client"]["cert"], f["client"]["key"])
                sess, reused = get_over_tls(a, ctx)
                assert sess is not None and not reused
                assert get_over_tls(a, ctx, session=sess)[1], "A should resume its own session"
                with pytest.raises((ssl.SSLError, ConnectionResetError, AssertionError)):
                    get_over_tls(b, ctx, session=sess)
            assert b.stat("listener.main.ssl.session_reused") == 0
            assert len(o.requests) == 2 * 2


def test_a_san_holding_a_comma_is_one_name(pki):
    evil = pki._leaf("evil", "evil", pki.ca, pki.ca_key, uris=["spiffe://evil/x,spiffe://test/admin"])
    pki.files["evil"] = evil
    with RecordingOrigin() as o:
        strict = config(pki, o).replace('match_subject_alt_names: [{ prefix: "spiffe://test/" }]',
                                        'match_subject_alt_names: [{ exact: "spiffe://test/admin" }]')
        with Proxy("http-proxy", config=strict) as p:
            rc, body, err = curl(p, pki, "evil")
            assert rc != 0, body
            wait_for(lambda: p.stat("listener.main.ssl.fail_verify_san") == 1, what="fail_verify_san")
        loose = config(pki, o).replace('match_subject_alt_names: [{ prefix: "spiffe://test/" }]',
                                       'match_subject_alt_names: [{ prefix: "spiffe://" }]')
        with Proxy("http-proxy", config=loose) as p:
            rc, body, err = curl(p, pki, "evil")
            assert rc == 0, err
            xfcc = xfcc_seen(o)
            # One URI, quoted because it holds a comma: not two identities.
            assert 'URI="spiffe://evil/x,spiffe://test/admin"' in xfcc, xfcc
            assert ";URI=spiffe://test/admin" not in xfcc


def test_a_quote_in_the_subject_cannot_end_the_xfcc_quoted_string(pki):
    crafted = pki._leaf("crafted", 'a",By=spiffe://forged;Hash=00;Subject="x', pki.ca, pki.ca_key, uris=["spiffe://test/q"])
    pki.files["crafted"] = crafted
    with RecordingOrigin() as o, Proxy("http-proxy", config=config(pki, o)) as p:
        rc, body, err = curl(p, pki, "crafted")
        assert rc == 0, err
        xfcc = xfcc_seen(o)
        # Parse the element as a proxy downstream would: quoted-strings with backslash escapes.
        fields, i, cur, key = [], 0, "", None
        while i < len(xfcc):
            ch = xfcc[i]
            if ch == '"':
                i += 1
                while xfcc[i] != '"':
                    if xfcc[i] == "\\":
                        i += 1
                    cur += xfcc[i]
                    i += 1
            elif ch == "=" and key is None:
                key, cur = cur, ""
            elif ch in ";,":
                fields.append((key, cur, ch))
                key, cur = None, ""
            else:
                cur += ch
            i += 1
        fields.append((key, cur, ""))
        assert [k for k, _, _ in fields] == ["By", "Hash", "Subject", "URI", "DNS"][:len(fields)], fields
        assert all(sep != "," for _, _, sep in fields), "a second element was injected"
        subject = dict((k, v) for k, v, _ in fields)["Subject"]
        assert subject.startswith('O=Tests,CN=a\\"') and "By=spiffe://forged" in subject, subject
