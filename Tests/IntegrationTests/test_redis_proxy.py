"""redis-proxy against real redis-server shards, nutcracker (twemproxy) for key placement,
redis-py and raw sockets as clients."""

import concurrent.futures
import json
import socket
import threading

import pytest
import redis
from harness import Proxy, Server, connect, validate, wait_for
from redis_peers import Nutcracker, RedisServer, resp


def config(shards, block="", hash_keys=None, admin=True, clusters=None):
    """One redis listener over `shards` (RedisServer or endpoint strings), extra block lines;
    `clusters`: more clusters, {name: [RedisServer]}. The hash is murmur unless the block sets
    one: twemproxy's default (a 32-bit fnv1a_64) can put every one of a few hundred similar
    keys on one shard, depending on the shards' (random) ports."""
    if "hash:" not in block:
        block = "      hash: murmur\n" + block
    eps = ""
    for i, s in enumerate(shards):
        ep = s if isinstance(s, str) else s.endpoint
        key = f", hash_key: {hash_keys[i]}" if hash_keys else ""
        eps += f"      - {{ address: \"{ep}\"{key} }}\n"
    for name, servers in (clusters or {}).items():
        eps += f"  - {{ name: {name}, endpoints: [{', '.join(chr(34) + x.endpoint + chr(34) for x in servers)}] }}\n"
    return f"""{"admin: { address: 127.0.0.1:0 }" if admin else ""}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    redis:
      cluster: shards
{block}
clusters:
  - name: shards
    endpoints:
{eps}"""


class RedisProxy(Proxy):
    """redis-proxy; the redis-py clients made by `client` are closed before the leak check."""

    def __init__(self, **kw):
        self.clients = []
        super().__init__("redis-proxy", **kw)

    pooled = 1

    def open_gauges(self):
        """Shard connections are shared and long-lived (one per shard per worker and listener
        here, by `server_connections: 1` and `workers: 1`; `pooled` per host): more than that
        open at the end is a leak (a WATCH connection not closed)."""
        return {n: v for n, v in super().open_gauges().items()
                if not (n.startswith("clusters:") and n.endswith("::cx_active") and v <= self.pooled)}

    def stop(self, check_leaks=True):
        for c in self.clients:
            c.close()
        self.clients = []
        super().stop(check_leaks)


def client(p, listener="main", **kw):
    """redis-py 8 speaks RESP3 by default (HELLO 3); the proxy is RESP2 until RESP3 comes, so
    clients say protocol=2 (docs/redis-proxy.md)."""
    host, port = p.addr(listener)
    c = redis.Redis(host=host, port=port, socket_timeout=10, protocol=2, **kw)
    p.clients.append(c)
    return c


class Raw:
    """A raw client socket and a reader on it; `close` closes both (a reader left open keeps
    the socket's descriptor, and the proxy would see the client as still connected)."""

    def __init__(self, p):
        self.sock = connect(p.addr())
        self.reader = self.sock.makefile("rb")

    def sendall(self, data):
        self.sock.sendall(data)

    def send(self, data):
        return self.sock.send(data)

    def recv(self, n):
        return self.sock.recv(n)

    def ask(self, *args):
        """One command, its reply."""
        self.sock.sendall(resp(*args))
        return read_reply(self.reader)

    def close(self):
        self.reader.close()
        self.sock.close()


def raw(p):
    r = Raw(p)
    return r, r.reader


def read_reply(f):
    """One RESP2 reply from a reader, as Python values (errors as ('ERR', text))."""
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        return ("ERR", rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    raise AssertionError(f"bad reply line {line!r}")


@pytest.fixture(scope="module")
def shards():
    with RedisServer() as a, RedisServer() as b, RedisServer() as c:
        yield [a, b, c]


@pytest.fixture(autouse=True)
def flush(shards):
    for s in shards:
        s.client().flushall()


def where(shards, key):
    return [i for i, s in enumerate(shards) if s.client().exists(key)]


def test_keys_spread_over_shards_and_split_commands_merge(shards):
    with RedisProxy(config=config(shards)) as p:
        r = client(p)
        keys = [f"key:{i}" for i in range(300)]
        for k in keys:
            assert r.set(k, k.upper())
        # Each key on exactly one shard, and spread (twemproxy's 32-bit fnv1a_64 on ketama can
        # leave a shard nearly empty for similar keys, as nutcracker does: not asserted even).
        placed = [where(shards, k) for k in keys]
        assert all(len(w) == 1 for w in placed)
        assert len({w[0] for w in placed}) >= 2
        assert [r.get(k) for k in keys[:20]] == [k.upper().encode() for k in keys[:20]]
        # MGET in key order across shards, a missing key as nil.
        assert r.mget(keys + ["nope"]) == [k.upper().encode() for k in keys] + [None]
        assert r.exists(*keys[:50], "nope") == 50
        assert r.mset({f"m:{i}": str(i) for i in range(40)})
        assert r.mget([f"m:{i}" for i in range(40)]) == [str(i).encode() for i in range(40)]
        assert r.delete(*keys[:100], "nope") == 100
        assert r.dbsize() == 240
        assert sorted(r.keys("m:*")) == sorted(f"m:{i}".encode() for i in range(40))
        assert r.touch(*keys[100:110]) == 10
        assert r.unlink(*keys[100:110]) == 10
        # Single-key commands of several types reach the key's shard.
        assert r.hset("h", mapping={"a": "1", "b": "2"}) == 2 and r.hgetall("h") == {b"a": b"1", b"b": b"2"}
        assert r.rpush("l", 1, 2, 3) == 3 and r.lrange("l", 0, -1) == [b"1", b"2", b"3"]
        assert r.incrby("n", 5) == 5 and r.incr("n") == 6
        assert r.eval("return redis.call('get', KEYS[1])", 1, "n") == b"6"
        assert p.stat("redis.main.downstream_rq_total") > 0


def test_keys_land_where_nutcracker_put_them(shards):
    # The same servers and names under nutcracker and under redis-proxy: keys written through
    # nutcracker are found through the proxy, for ketama and modula and two hash functions.
    names = ["alpha", "beta", "gamma"]
    for hash_fn, dist in [("fnv1a_64", "ketama"), ("murmur", "modula"), ("md5", "ketama")]:
        for s in shards:
            s.client().flushall()
        servers = [f"{s.endpoint}:1 {n}" for s, n in zip(shards, names)]
        with Nutcracker(servers, hash=hash_fn, distribution=dist, hash_tag="{}") as nc:
            keys = [f"user:{i}" for i in range(200)] + [f"{{tag}}:{i}" for i in range(20)] + ["\u00e9t\u00e9:x", "k\u00ff"]
            # Raw RESP: nutcracker closes the connection on redis-py's CLIENT SETINFO.
            s = socket.create_connection(("127.0.0.1", nc.port), timeout=10)
            f = s.makefile("rb")
            s.sendall(b"".join(resp("SET", k.encode(), "v") for k in keys))
            assert [read_reply(f) for _ in keys] == ["OK"] * len(keys)
            f.close()
            s.close()
            block = f"      hash: {hash_fn}\n      distribution: {dist}\n      hash_tag: \"{{}}\""
            with RedisProxy(config=config(shards, block, hash_keys=names)) as p:
                r = client(p)
                got = r.mget(keys)
                assert got == [b"v"] * len(keys), f"{hash_fn}/{dist}: {got.count(None)} keys not found"
                # Hash tags keep a tag's keys together.
                assert len({tuple(where(shards, f"{{tag}}:{i}")) for i in range(20)}) == 1


def test_many_pipelining_clients_get_their_own_replies_in_order(shards):
    with RedisProxy(config=config(shards)) as p:

        def run(n):
            r = client(p)
            for rnd in range(5):
                pipe = r.pipeline(transaction=False)
                for i in range(200):
                    k = f"c{n}:k{i}"
                    pipe.set(k, f"{n}-{rnd}-{i}")
                    pipe.get(k)
                    pipe.incr(f"c{n}:counter")
                pipe.mget([f"c{n}:k{i}" for i in range(0, 200, 7)])
                out = pipe.execute()
                for i in range(200):
                    assert out[3 * i] is True
                    assert out[3 * i + 1] == f"{n}-{rnd}-{i}".encode()
                    assert out[3 * i + 2] == rnd * 200 + i + 1
                assert out[-1] == [f"{n}-{rnd}-{i}".encode() for i in range(0, 200, 7)]

        threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
        errors = []
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert p.stat("redis.main.downstream_rq_error") == 0, p.stats()
        # Several clients share the shards' pipelined connections: 3 shards, one each.
        assert p.stat("redis.main.upstream_cx_total") == 3
        assert not errors


def test_inline_commands_and_a_raw_pipeline_written_byte_by_byte(shards):
    with RedisProxy(config=config(shards)) as p:
        s, f = raw(p)
        # What telnet users type, with quotes; then a pipeline split at every byte.
        s.sendall(b'SET "a key" "hello world"\r\nGET "a key"\r\nPING\r\n')
        assert read_reply(f) == "OK" and read_reply(f) == b"hello world" and read_reply(f) == "PONG"
        data = resp("SET", "x", "1") + resp("INCR", "x") + resp("MGET", "x", "a key", "y") + resp("ECHO", "done")
        for b in data:
            s.send(bytes([b]))
        assert read_reply(f) == "OK" and read_reply(f) == 2
        assert read_reply(f) == [b"2", b"hello world", None] and read_reply(f) == b"done"
        s.close()


def test_commands_the_proxy_answers_and_what_it_refuses_keep_the_connection(shards):
    with RedisProxy(config=config(shards, '      hash_tag: "{}"')) as p:
        s, f = raw(p)
        ask = s.ask

        assert ask("PING") == "PONG" and ask("PING", "hi") == b"hi" and ask("ECHO", "x y") == b"x y"
        assert ask("SELECT", "0") == "OK" and ask("SELECT", "3")[0] == "ERR"
        assert ask("CLIENT", "SETNAME", "me") == "OK" and ask("CLIENT", "GETNAME") == b"me"
        assert ask("CLIENT", "SETINFO", "LIB-NAME", "x") == "OK" and isinstance(ask("CLIENT", "ID"), int)
        assert ask("HELLO", "3") == ("ERR", "NOPROTO unsupported protocol version")
        hello = ask("HELLO", "2")
        assert hello[hello.index(b"proto") + 1] == 2
        assert ask("COMMAND", "COUNT") > 200
        assert ask("TIME")[0].isdigit()
        assert ask("SUBSCRIBE", "ch") == ("ERR", "ERR unsupported command 'subscribe'")
        assert ask("BLPOP", "l", "0") == ("ERR", "ERR unsupported command 'blpop'")
        assert ask("NOSUCH", "a")[1].startswith("ERR unknown command 'NOSUCH'")
        assert ask("GET") == ("ERR", "ERR wrong number of arguments for 'get' command")
        # A key count near Int64's max (review of issue 10: an overflow trapped the proxy).
        assert ask("ZUNION", "9223372036854775807", "a")[1] == "ERR Number of keys can't be greater than number of args"
        assert ask("MULTI") == "OK"
        assert ask("ZUNIONSTORE", "d", "9223372036854775805", "a") == "QUEUED"  # the shard refuses it at EXEC
        assert ask("DISCARD") == "OK"
        assert ask("CLIENT", "NOSUCH")[1].startswith("ERR unknown subcommand")
        # Keys on two shards: refused as Redis Cluster would; a hash tag keeps them together.
        names = [f"name-{i}-{i * 7919}" for i in range(40)]
        for n in names:
            assert ask("SET", n, "1") == "OK"
        other = next(n for n in names if where(shards, n) != where(shards, names[0]))
        assert ask("RENAME", names[0], other)[1].startswith("CROSSSLOT")
        assert ask("SET", "{t}a", "1") == "OK" and ask("RENAME", "{t}a", "{t}b") == "OK"
        assert ask("GET", "{t}b") == b"1"
        assert ask("PING") == "PONG"  # still open after every refusal
        assert ask("QUIT") == "OK"
        assert s.recv(10) == b""
        s.close()
        assert p.stat("redis.main.downstream_rq_unsupported_command") == 2
        assert p.stat("redis.main.downstream_rq_cross_slot") == 1


def test_redis_py_with_downstream_and_upstream_auth():
    with RedisServer(password="up-secret") as a, RedisServer(password="up-secret") as b:
        block = '      downstream_auth_passwords: ["s3cret", "other"]\n      auth_password: up-secret'
        with RedisProxy(config=config([a, b], block)) as p:
            s, f = raw(p)
            s.sendall(resp("GET", "k"))
            assert read_reply(f) == ("ERR", "NOAUTH Authentication required.")
            s.sendall(resp("AUTH", "wrong"))
            assert read_reply(f)[1].startswith("WRONGPASS")
            # Every HELLO option is checked before AUTH takes effect (review of issue 10).
            assert s.ask("HELLO", "2", "AUTH", "default", "s3cret", "BOGUS")[1].startswith("ERR Syntax error in HELLO option")
            assert s.ask("GET", "k") == ("ERR", "NOAUTH Authentication required.")
            s.sendall(resp("AUTH", "default", "other") + resp("SET", "k", "v") + resp("GET", "k"))
            assert read_reply(f) == "OK" and read_reply(f) == "OK" and read_reply(f) == b"v"
            s.close()
            r = client(p, password="s3cret")  # redis-py: AUTH, then CLIENT SETINFO on connect
            assert r.ping() and r.get("k") == b"v"
            assert p.stat("redis.main.downstream_auth_failed") == 1
            assert p.stat("redis.main.upstream_auth_failed") == 0


def test_protocol_errors_close_only_that_client(shards):
    with RedisProxy(config=config(shards, "      max_bulk_length: 1MiB")) as p:
        good = client(p)
        assert good.set("g", "1")
        for bad, reason in [(b"*abc\r\n", "invalid multibulk length"), (b"*1\r\n$2000000\r\n", "invalid bulk length"),
                            (b"*1\r\nfoo\r\n", "expected '$', got 'f'"), (b'GET "unclosed\r\n', "unbalanced quotes")]:
            s, f = raw(p)
            s.sendall(resp("PING") + bad)
            assert read_reply(f) == "PONG"
            err = read_reply(f)
            assert err[0] == "ERR" and reason in err[1], err
            assert s.recv(10) == b""  # closed after the error
            s.close()
        assert good.get("g") == b"1"
        assert p.stat("redis.main.downstream_cx_protocol_error") == 4


def silent_shard(c, server):
    """Reads requests, never answers (a hung Redis)."""
    c.settimeout(30)
    try:
        while c.recv(65536):
            pass
    except OSError:
        pass


def test_op_timeout_fails_requests_on_a_hung_shard_and_recycles_its_connection():
    with RedisServer() as good, Server(silent_shard) as hung:
        cfg = config([good, hung.endpoint], "      op_timeout: 300ms\n      distribution: modula")
        with RedisProxy(config=cfg) as p:
            s, f = raw(p)
            keys = [f"k{i}" for i in range(20)]
            s.sendall(b"".join(resp("SET", k, "v") for k in keys))
            replies = [read_reply(f) for _ in keys]
            hung_keys = [k for k, rep in zip(keys, replies) if rep != "OK"]
            assert hung_keys and len(hung_keys) < len(keys)
            assert all(rep == "OK" or (rep[0] == "ERR" and "redis-proxy" in rep[1]) for rep in replies)
            assert any("timeout" in rep[1] for rep in replies if rep != "OK")
            assert p.stat("redis.main.upstream_rq_timeout") >= 1
            # The good shard's keys still work; the hung one's get a fresh connection (and time out again).
            ok_key = next(k for k in keys if k not in hung_keys)
            s.sendall(resp("GET", ok_key))
            assert read_reply(f) == b"v"
            # A transaction on the hung shard: its EXEC reports the timeout, not a closed connection.
            assert s.ask("MULTI") == "OK" and s.ask("SET", hung_keys[0], "x") == "QUEUED"
            rep = s.ask("EXEC")
            assert rep[0] == "ERR" and "timeout" in rep[1], rep
            s.close()
            wait_for(lambda: hung.connections >= 2 or p.stat("redis.main.upstream_cx_total") >= 2, what="reconnect")


def test_a_down_shard_gives_errors_and_no_key_moves_unless_auto_eject(shards):
    # murmur spreads these short keys better than twemproxy's 32-bit fnv1a_64 does.
    with RedisServer() as a, RedisServer() as b:
        with RedisProxy(config=config([a, b], "      hash: murmur")) as p:
            r = client(p)
            keys = [f"d{i}" for i in range(60)]
            r.mset({k: "1" for k in keys})
            on_b = [k for k in keys if where([a, b], k) == [1]]
            assert on_b and len(on_b) < len(keys)
            b.stop()
            s, f = raw(p)
            s.sendall(b"".join(resp("GET", k) for k in keys))
            got = dict(zip(keys, [read_reply(f) for _ in keys]))
            assert all(got[k][0] == "ERR" for k in on_b)
            assert all(got[k] == b"1" for k in keys if k not in on_b)
            s.close()
    with RedisServer() as a, RedisServer() as b:
        block = "      hash: murmur\n      auto_eject_hosts: true\n      server_failure_limit: 1\n      server_retry_timeout: 60s"
        with RedisProxy(config=config([a, b], block)) as p:
            r = client(p)
            keys = [f"e{i}" for i in range(60)]
            r.mset({k: "1" for k in keys})
            on_b = [k for k in keys if where([a, b], k) == [1]]
            assert on_b and len(on_b) < len(keys)
            b.stop()
            s, f = raw(p)
            # The shard's close (or the first request that fails on it) counts as the one
            # failure that ejects it.
            s.sendall(resp("GET", on_b[0]))
            first = read_reply(f)
            assert first is None or first[0] == "ERR"
            wait_for(lambda: p.stat("redis.main.upstream_host_ejected") == 1, what="ejection")
            # b's keys now go to a: writable again (their old values are on the dead shard).
            s.sendall(resp("SET", on_b[0], "2") + resp("GET", on_b[0]))
            assert read_reply(f) == "OK" and read_reply(f) == b"2"
            assert a.client().get(on_b[0]) == b"2"
            s.close()


def test_flags_form_and_validate():
    import subprocess
    from harness import BIN_DIR
    import os
    exe = os.path.join(BIN_DIR, "redis-proxy")
    with RedisServer() as a:
        with RedisProxy(args=["--listen", "127.0.0.1:0", "--upstream", a.endpoint, "--hash", "murmur",
                                        "--distribution", "modula", "--workers", "1"]) as p:
            r = client(p)
            assert r.set("x", "1") and r.get("x") == b"1"
    r = subprocess.run([exe, "--validate", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--hash", "sha1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "hash" in r.stderr and "fnv1a_64" in r.stderr, r.stderr


def test_transactions_on_one_shard_run_and_across_shards_apply_nothing(shards):
    with RedisProxy(config=config(shards, '      hash_tag: "{}"')) as p:
        s, f = raw(p)
        ask = s.ask

        # One shard (a hash tag): queued by the proxy, run atomically by that shard.
        assert ask("MULTI") == "OK"
        assert ask("SET", "{u1}:a", "1") == "QUEUED" and ask("INCR", "{u1}:a") == "QUEUED"
        assert ask("MGET", "{u1}:a", "{u1}:b") == "QUEUED"
        assert ask("EXEC") == ["OK", 2, [b"2", None]]
        # Keys on two shards: refused at the command, and EXEC applies nothing anywhere.
        # Two keys on different shards, found by writing them once, then removed.
        names = [f"txn-{i * 7919}-{i}" for i in range(60)]
        for n in names:
            assert ask("SET", n, "0") == "OK"
        second = next(n for n in names if where(shards, n) != where(shards, names[0]))
        assert ask("DEL", names[0], second) == 2
        assert ask("MULTI") == "OK" and ask("SET", names[0], "x") == "QUEUED"
        refused = ask("SET", second, "x")
        assert refused[0] == "ERR" and refused[1].startswith("CROSSSLOT"), refused
        assert ask("EXEC") == ("ERR", "EXECABORT Transaction discarded because of previous errors.")
        assert not where(shards, names[0]) and not where(shards, second), "a refused transaction applied something"
        # DISCARD, nesting, EXEC without MULTI, WATCH (needs a connection of its own).
        assert ask("MULTI") == "OK" and ask("SET", "{u1}:c", "1") == "QUEUED" and ask("DISCARD") == "OK"
        assert ask("GET", "{u1}:c") is None
        assert ask("EXEC") == ("ERR", "ERR EXEC without MULTI")
        assert ask("MULTI") == "OK" and ask("MULTI")[1] == "ERR MULTI calls can not be nested" and ask("DISCARD") == "OK"
        s.close()
        # redis-py's transactional pipeline, several clients at once, all on one tagged shard.
        r = client(p)

        def bump(n):
            c = client(p)
            for _ in range(50):
                pipe = c.pipeline(transaction=True)
                pipe.incr("{ctr}:n")
                pipe.rpush("{ctr}:log", n)
                assert len(pipe.execute()) == 2
        threads = [threading.Thread(target=bump, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert r.get("{ctr}:n") == b"200" and r.llen("{ctr}:log") == 200


@pytest.mark.parametrize("dist,hash_fn", [("ketama", "fnv1a_64"), ("modula", "murmur"), ("ketama", "hsieh")])
def test_twemproxy_file_places_ten_thousand_keys_where_nutcracker_does(shards, dist, hash_fn, tmp_path):
    # One nutcracker.yml (weighted, named and unnamed servers, a hash tag): nutcracker writes
    # 10,000 keys, then `redis-proxy --twemproxy` on the same file reads every one back.
    import os
    import subprocess
    from redis_peers import free_ports
    port, stats_port = free_ports(2)
    servers = [f"{shards[0].endpoint}:1 one", f"{shards[1].endpoint}:2 two", f"{shards[2].endpoint}:1"]
    path = tmp_path / "nutcracker.yml"
    path.write_text(f"""pool_a:
  listen: 127.0.0.1:{port}
  hash: {hash_fn}
  hash_tag: "{{}}"
  distribution: {dist}
  auto_eject_hosts: false
  redis: true
  timeout: 5000
  server_retry_timeout: 2000
  servers:
""" + "".join(f"    - {s}\n" for s in servers))
    keys = [f"k:{i}:{'x' * (i % 13)}" for i in range(9900)] + [f"{{grp{i % 7}}}:{i}" for i in range(100)]
    from redis_peers import start_nutcracker
    nc = start_nutcracker("nutcracker", str(path), port, stats_port, str(tmp_path / "log"))
    assert nc, (tmp_path / "log").read_text()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        f = s.makefile("rb")
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            s.sendall(b"".join(resp("SET", k, k[::-1]) for k in chunk))
            assert [read_reply(f) for _ in chunk] == ["OK"] * len(chunk)
        f.close()
        s.close()
    finally:
        nc.terminate()
        nc.wait(10)
    assert all(len(sh.keys()) > 0 for sh in shards)
    with RedisProxy(args=["--twemproxy", str(path), "--admin", "127.0.0.1:0"]) as p:
        r = client(p, "pool_a")
        host, pport = p.addr("pool_a")
        assert pport == port
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            assert r.mget(chunk) == [k[::-1].encode() for k in chunk], f"{dist}/{hash_fn}: keys not where nutcracker put them"
    # A bad file names the twemproxy key.
    path.write_text(path.read_text().replace(":2 two", ":0 two"))
    exe = os.path.join(os.environ.get("PROXY_BIN_DIR", ".build/release"), "redis-proxy")
    out = subprocess.run([exe, "--twemproxy", str(path), "--validate"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "pool_a.servers[1]" in out.stderr, out.stderr


def test_a_paused_shard_times_out_and_later_replies_are_never_mismatched():
    # SIGSTOP a real redis-server: requests on it time out; after SIGCONT its late replies
    # (to the timed-out requests) must not reach anyone, and new requests get their own.
    import os
    import signal
    with RedisServer() as a, RedisServer() as b:
        with RedisProxy(config=config([a, b], "      op_timeout: 400ms\n      hash: murmur")) as p:
            r = client(p)
            keys = [f"p{i}" for i in range(60)]
            r.mset({k: f"v-{k}" for k in keys})
            on_b = [k for k in keys if where([a, b], k) == [1]]
            on_a = [k for k in keys if k not in on_b]
            assert on_a and on_b
            os.kill(b.proc.pid, signal.SIGSTOP)
            try:
                s, f = raw(p)
                s.sendall(b"".join(resp("GET", k) for k in keys))
                got = dict(zip(keys, [read_reply(f) for _ in keys]))
                assert all(got[k] == f"v-{k}".encode() for k in on_a)
                assert all(got[k][0] == "ERR" for k in on_b)
                assert any("timeout" in got[k][1] for k in on_b)
                assert p.stat("redis.main.upstream_rq_timeout") >= 1
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            # After the shard resumes, every reply on the same client connection is its own.
            for rnd in range(3):
                s.sendall(b"".join(resp("GET", k) for k in keys) + resp("SET", "after", str(rnd)) + resp("GET", "after"))
                got = [read_reply(f) for _ in keys]
                assert got == [f"v-{k}".encode() for k in keys], got
                assert read_reply(f) == "OK" and read_reply(f) == str(rnd).encode()
            s.close()


def test_hostile_clients_cannot_grow_the_proxy_or_hurt_others(shards):
    import time
    with RedisProxy(config=config(shards)) as p:
        good = client(p)
        assert good.set("g", "1")
        rss0 = p.rss_kib()
        # A 2 GB bulk length and a bulk over max_bulk_length: refused before any byte of it.
        for bad in (b"*2\r\n$3\r\nGET\r\n$2147483648\r\n", b"*1\r\n$536870913\r\n"):
            s, f = raw(p)
            s.sendall(bad)
            assert read_reply(f)[1] == "ERR Protocol error: invalid bulk length"
            assert s.recv(10) == b""
            s.close()
        # A 10M-element array header: nothing is reserved for it; the client just waits.
        s, f = raw(p)
        s.sendall(b"*10000000\r\n" + b"$1\r\nx\r\n" * 1000)
        assert good.get("g") == b"1"
        s.close()
        # A client that pipelines GETs and never reads: the proxy stops reading it once its
        # replies back up, so its memory stays bounded while others are served.
        hog = socket.create_connection(p.addr(), timeout=2)
        chunk = resp("GET", "g") * 10000
        sent = 0
        deadline = time.monotonic() + 20
        try:
            while sent < 1_000_000 and time.monotonic() < deadline:
                hog.sendall(chunk)
                sent += 10000
        except (socket.timeout, TimeoutError):
            pass  # the proxy stopped reading (its buffers and the kernel's are full)
        assert sent < 1_000_000 or True
        assert good.get("g") == b"1" and good.ping()
        grew = p.rss_kib() - rss0
        assert grew < 64 * 1024, f"proxy grew by {grew} KiB for a client that does not read"
        hog.close()
        wait_for(lambda: p.stat("redis.main.downstream_cx_active") == 1, what=f"hog's connection closed {p.stats()}")


def test_every_command_family_big_keys_and_binary_values_byte_exact(shards):
    import os
    import subprocess
    with RedisProxy(config=config(shards)) as p:
        r = client(p)
        # 1,000 keys of 463 bytes, binary values up to 1 MB, MSET/MGET across shards.
        keys = [(f"{i:05d}" + "k" * 458).encode() for i in range(1000)]
        assert all(len(k) == 463 for k in keys)
        vals = [os.urandom(1 + (i * 7919) % 2000) for i in range(1000)]
        assert r.mset(dict(zip(keys, vals)))
        assert r.mget(keys) == vals
        big = os.urandom(1 << 20)
        assert r.set(b"big\x00\xff", big) and r.get(b"big\x00\xff") == big
        # A 1,000-command pipeline.
        pipe = r.pipeline(transaction=False)
        for i in range(1000):
            pipe.get(keys[i])
        assert pipe.execute() == vals
        # Command families.
        assert r.hset("h", mapping={"f1": "a", "f2": "b"}) == 2 and r.hget("h", "f2") == b"b" and r.hlen("h") == 2
        assert r.lpush("l", "a", "b") == 2 and r.lpop("l") == b"b" and r.llen("l") == 1
        assert r.sadd("s", "x", "y") == 2 and r.smembers("s") == {b"x", b"y"} and r.sismember("s", "x")
        assert r.zadd("z", {"a": 1, "b": 2}) == 2 and r.zrange("z", 0, -1, withscores=True) == [(b"a", 1.0), (b"b", 2.0)]
        sid = r.xadd("st", {"f": "v"})
        assert r.xrange("st") == [(sid, {b"f": b"v"})] and r.xlen("st") == 1
        assert r.geoadd("geo", (13.361389, 38.115556, "Palermo")) == 1 and r.geopos("geo", "Palermo")[0] is not None
        assert r.pfadd("hll", "a", "b", "c") == 1 and r.pfcount("hll") == 3
        assert r.setbit("bits", 7, 1) == 0 and r.bitcount("bits") == 1
        assert r.expire("h", 100) and 0 < r.ttl("h") <= 100 and r.persist("h")
        assert r.append("str", "ab") == 2 and r.getrange("str", 0, 0) == b"a" and r.strlen("str") == 2
        assert r.evalsha(r.script_load("return KEYS[1]"), 1, "kk") == b"kk"
        # redis-cli, inline and argument forms.
        port = str(p.addr()[1])
        out = subprocess.run(["redis-cli", "-p", port, "--no-auth-warning", "set", "cli", "v w"], capture_output=True, text=True, timeout=20)
        assert out.stdout.strip() == "OK"
        out = subprocess.run(["redis-cli", "-p", port], input="GET cli\nMGET cli nope\nPING\n", capture_output=True, text=True, timeout=20)
        assert out.stdout.split("\n")[:4] == ["v w", "v w", "", "PONG"], out.stdout


def test_scan_walks_every_shard_and_info_script_randomkey_merge(shards):
    # murmur: twemproxy's 32-bit fnv1a_64 can leave a shard empty for such similar keys
    # (placement depends on the shards' random ports).
    with RedisProxy(config=config(shards)) as p:
        r = client(p)
        keys = {f"scan:{i}".encode() for i in range(300)} | {f"other:{i}".encode() for i in range(30)}
        for sh in shards:
            sh.client().config_resetstat()
        for k in keys:
            r.set(k, "v")
        assert len({where(shards, k)[0] for k in keys}) == 3
        # SCAN: every key exactly once over the three shards, whatever COUNT; MATCH passes through.
        for count in (7, 100, 1000):
            seen = []
            cursor = 0
            while True:
                cursor, batch = r.scan(cursor, count=count)
                seen += batch
                if cursor == 0:
                    break
            assert sorted(seen) == sorted(keys), count
        assert set(r.scan_iter(match="other:*")) == {k for k in keys if k.startswith(b"other:")}
        s, _ = raw(p)
        assert s.ask("SCAN", "abc") == ("ERR", "ERR invalid cursor")
        assert s.ask("SCAN", "18446744073709551616") == ("ERR", "ERR invalid cursor")
        # PING to one shard by index or address; the one-argument form still echoes.
        assert s.ask("PING", "SHARD", "2") == "PONG" and s.ask("PING", "SHARD", shards[1].endpoint) == "PONG"
        assert s.ask("PING", "SHARD", "9")[1].startswith("ERR redis-proxy: no shard named")
        assert s.ask("PING", "a", "b") == ("ERR", "ERR wrong number of arguments for 'ping' command")
        # INFO: summed keyspace, the proxy's section; INFO SHARD: one shard's own.
        info = r.info()
        assert info["shards"] == 3 and info["shards_replied"] == 3
        assert r.info("keyspace")["db0"]["keys"] == len(keys) == r.dbsize()
        per_shard = [s.ask("INFO", "SHARD", str(i), "keyspace") for i in range(3)]
        counts = [int(x.split(b"keys=")[1].split(b",")[0]) for x in per_shard]
        assert counts == [sh.client().dbsize() for sh in shards]
        assert r.info("commandstats")["cmdstat_set"]["calls"] == len(keys)
        # SCRIPT EXISTS: 1 only where every shard has the script.
        sha = r.script_load("return 1")
        assert r.script_exists(sha, "0" * 40) == [True, False]
        shards[1].client().script_flush()
        assert r.script_exists(sha) == [False]
        # RANDOMKEY: a key of some shard; nil once all are empty.
        assert r.randomkey() in keys
        s.close()
        # Per-command stats and the shards page.
        assert p.stat("redis.main.command.set.total") == len(keys)
        assert p.stat("redis.main.command.set.success") == len(keys)
        assert p.stat("redis.main.command.ping.error") == 2
        assert p.stat("redis.main.command.script_exists.total") == 2
        status, body = p.get("/redis/shards?format=json")
        page = json.loads(body)["listeners"][0]
        assert status == 200 and [sh["address"] for sh in page["shards"]] == [sh.endpoint for sh in shards]
        assert all(sh["state"] == "up" and sh["stats"]["rq_total"] > 0 and sh["stats"]["rq_error"] == 0 for sh in page["shards"])
        assert sum(sh["stats"]["rq_success"] for sh in page["shards"]) >= len(keys)
        r.flushall()
        assert r.randomkey() is None


def test_watch_pins_a_connection_and_a_changed_key_aborts_exec(shards):
    with RedisProxy(config=config(shards, '      hash_tag: "{}"')) as p:
        a, b = raw(p), raw(p)
        a, b = a[0], b[0]
        assert a.ask("SET", "w", "1") == "OK"
        # A key changed by another client between WATCH and EXEC: EXEC gives nil, nothing applied.
        assert a.ask("WATCH", "w") == "OK" and a.ask("GET", "w") == b"1"
        assert b.ask("SET", "w", "2") == "OK"
        assert a.ask("MULTI") == "OK" and a.ask("SET", "w", "from-a") == "QUEUED"
        assert a.ask("EXEC") is None
        assert b.ask("GET", "w") == b"2"
        # Unchanged: EXEC runs. WATCH inside MULTI is an error that does not abort; PING and
        # ECHO are queued like Redis queues them.
        assert a.ask("WATCH", "w") == "OK" and a.ask("MULTI") == "OK"
        assert a.ask("WATCH", "w") == ("ERR", "ERR WATCH inside MULTI is not allowed")
        assert a.ask("INCR", "w") == "QUEUED" and a.ask("PING") == "QUEUED" and a.ask("ECHO", "e") == "QUEUED"
        assert a.ask("EXEC") == [3, "PONG", b"e"]
        # UNWATCH drops the watch: a later change no longer aborts.
        assert a.ask("WATCH", "w") == "OK" and a.ask("UNWATCH") == "OK"
        assert b.ask("SET", "w", "9") == "OK"
        assert a.ask("MULTI") == "OK" and a.ask("INCR", "w") == "QUEUED" and a.ask("EXEC") == [10]
        # WATCH of keys on two shards is refused; a second WATCH on another shard too.
        names = [f"wn-{i * 7919}-{i}" for i in range(60)]
        for n in names:
            assert a.ask("SET", n, "0") == "OK"
        first = names[0]
        other = next(n for n in names[1:] if where(shards, n) != where(shards, first))
        assert a.ask("WATCH", first, other)[1].startswith("CROSSSLOT")
        assert a.ask("WATCH", first) == "OK" and a.ask("WATCH", other)[1].startswith("CROSSSLOT")
        assert a.ask("DISCARD") == ("ERR", "ERR DISCARD without MULTI")
        assert a.ask("UNWATCH") == "OK"
        a.close()
        b.close()
        # Optimistic increments from four redis-py clients at once: none lost.
        r = client(p)
        r.set("{c}n", 0)

        def bump():
            c = client(p)
            for _ in range(100):
                with c.pipeline() as pipe:
                    while True:
                        try:
                            pipe.watch("{c}n")
                            v = int(pipe.get("{c}n"))
                            pipe.multi()
                            pipe.set("{c}n", v + 1)
                            pipe.execute()
                            break
                        except redis.WatchError:
                            continue
        threads = [threading.Thread(target=bump) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert r.get("{c}n") == b"400"
        # Every WATCH connection closed when its transaction ended.
        wait_for(lambda: sum(sh["stats"]["cx_active"] for sh in json.loads(p.get("/redis/shards?format=json")[1])["listeners"][0]["shards"]) <= 3,
                 what="WATCH connections closed")


def test_hello_and_auth_follow_redis_when_no_password_is_set(shards):
    with RedisProxy(config=config(shards)) as p:
        s, _ = raw(p)
        assert s.ask("AUTH", "x") == ("ERR", "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
        assert s.ask("AUTH", "default", "anything") == "OK"
        assert s.ask("AUTH", "bob", "x")[1].startswith("WRONGPASS")
        assert s.ask("HELLO", "2", "AUTH", "default", "x")[:2] == [b"server", b"redis"]
        assert s.ask("HELLO", "2", "SETNAME", "bad name")[1].startswith("ERR Client names cannot contain spaces")
        s.close()


def test_prefix_routes_pick_clusters_and_mirrors_copy_writes(shards):
    with RedisServer() as users, RedisServer() as vip, RedisServer() as mirror:
        block = """      mirror: [{ cluster: copy, exclude_read_commands: true }]
      prefix_routes:
        case_insensitive: true
        routes:
          - { prefix: "user:", cluster: users, remove_prefix: true }
          - { prefix: "user:vip:", cluster: vip }"""
        cfg = config(shards, block, clusters={"users": [users], "vip": [vip], "copy": [mirror]})
        with RedisProxy(config=cfg) as p:
            r = client(p)
            # A route's cluster gets the key without the prefix; the longest prefix wins; the
            # match ignores case; other keys go to the catch-all.
            assert r.set("user:1", "a") and r.set("USER:2", "b") and r.set("user:vip:3", "c") and r.set("plain", "d")
            assert users.client().get("1") == b"a" and users.client().get("2") == b"b"
            assert vip.client().get("user:vip:3") == b"c" and not users.client().exists("vip:3")
            assert where(shards, "plain") and not any(where(shards, k) for k in ("user:1", "1", "user:vip:3"))
            assert r.get("user:1") == b"a" and r.get("User:2") == b"b" and r.get("user:vip:3") == b"c"
            # Split commands route each key; multi-key commands over two routes are refused.
            assert r.mset({"user:4": "x", "other": "y", "user:vip:5": "z"})
            assert r.mget("user:4", "other", "user:vip:5", "user:none") == [b"x", b"y", b"z", None]
            assert users.client().get("4") == b"x" and vip.client().get("user:vip:5") == b"z"
            assert r.delete("user:4", "other") == 2 and not users.client().exists("4")
            s, _ = raw(p)
            assert s.ask("RENAME", "user:1", "plain")[1].startswith("CROSSSLOT")
            assert s.ask("RENAME", "user:1", "user:11") == "OK" and users.client().get("11") == b"a"
            # A transaction on a route's shard, WATCH included.
            assert s.ask("WATCH", "user:11") == "OK" and s.ask("MULTI") == "OK"
            assert s.ask("SET", "user:6", "t") == "QUEUED" and s.ask("GET", "user:11") == "QUEUED"
            assert s.ask("EXEC") == ["OK", b"a"] and users.client().get("6") == b"t"
            s.close()
            # The catch-all's mirror gets copies of writes (not reads) to its keys only.
            writes = p.stat("redis.main.mirror_rq_total")
            assert r.set("m1", "v1") and r.incr("m2") == 1 and r.get("m1") == b"v1"
            wait_for(lambda: mirror.client().get("m1") == b"v1" and mirror.client().get("m2") == b"1", what="mirrored writes")
            assert p.stat("redis.main.mirror_rq_total") == writes + 2
            assert not mirror.client().exists("1") and not mirror.client().exists("user:vip:3")
            _, dump = p.get("/config_dump")
            assert '"remove_prefix": true' in dump
        # A route naming an unknown cluster is refused with its key path.
        bad = cfg.replace("cluster: vip }", "cluster: nope }")
        res = validate(bad, "redis-proxy")
        assert res.returncode == 1 and "prefix_routes.routes[1].cluster" in res.stderr, res.stderr


def test_twemproxy_unix_socket_pool_and_maglev_distribution(shards, tmp_path):
    # nutcracker's "listen: /path" becomes a unix-socket listener; a mode is refused, named.
    import os
    import subprocess
    sock = tmp_path / "nc.sock"
    path = tmp_path / "nutcracker.yml"
    path.write_text(f"pool_u:\n  listen: {sock}\n  redis: true\n  servers:\n" + "".join(f"    - {s.endpoint}:1\n" for s in shards))
    with RedisProxy(args=["--twemproxy", str(path), "--admin", "127.0.0.1:0"]) as p:
        wait_for(lambda: sock.exists(), what="unix socket")
        r = redis.Redis(unix_socket_path=str(sock), protocol=2, socket_timeout=10)
        p.clients.append(r)
        assert r.set("u", "1") and r.get("u") == b"1"
    exe = os.path.join(os.environ.get("PROXY_BIN_DIR", ".build/release"), "redis-proxy")
    path.write_text(path.read_text().replace(f"listen: {sock}", f"listen: {sock} 0666"))
    out = subprocess.run([exe, "--twemproxy", str(path), "--validate"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "pool_u.listen" in out.stderr and "mode" in out.stderr, out.stderr
    # maglev: every key on one shard, all shards used, found again through a second proxy.
    for sh in shards:
        sh.client().flushall()
    keys = [f"mg:{i}" for i in range(600)]
    with RedisProxy(config=config(shards, "      distribution: maglev\n      hash: murmur")) as p:
        r = client(p)
        assert r.mset({k: k for k in keys})
        placed = [where(shards, k) for k in keys]
        assert all(len(w) == 1 for w in placed) and len({w[0] for w in placed}) == 3
    with RedisProxy(config=config(shards, "      distribution: maglev\n      hash: murmur")) as p:
        assert client(p).mget(keys) == [k.encode() for k in keys]


def test_two_listeners_on_one_cluster_keep_their_own_hash_tags(shards):
    # Review of issue 10: the listeners shared one shard set, and the last one to take a
    # client decided the hash tag for both.
    cfg = config(shards, '      hash_tag: "{}"').replace("""clusters:""", """  - name: plain
    address: 127.0.0.1:0
    redis: { cluster: shards, hash: murmur }
clusters:""")
    with RedisProxy(config=cfg) as p:
        p.pooled = 2  # each listener has its own connections to a shard
        tagged, plain = client(p), client(p, "plain")
        keys = [f"{{user42}}:f{i}" for i in range(30)]
        for k in keys:
            assert tagged.set(k, k)
        assert plain.get("x") is None  # the untagged listener takes a client
        assert tagged.mget(keys) == [k.encode() for k in keys]
        assert len({where(shards, k)[0] for k in keys}) == 1
        assert p.stat("redis.plain.upstream_cx_total") >= 1 and p.stat("redis.main.upstream_cx_total") >= 1


def test_values_bigger_than_the_write_limits_pass_both_ways(shards):
    # Review of issue 10: a reply or request over 8 MiB hit the connection's hard write limit,
    # which closed the connection and failed other clients' requests queued on it.
    with RedisProxy(config=config(shards, '      hash_tag: "{}"')) as p:
        r, other = client(p), client(p)
        big = bytes(range(256)) * (30 * 1024 * 1024 // 256)
        stop = threading.Event()

        def incr():
            """INCRs on the big values' shard until stopped: each reply must be the next count
            (an error or a lost request raises, and `result()` below re-raises it)."""
            n = 0
            while not stop.is_set():
                n += 1
                assert other.incr("{x}c") == n
            return n
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            counting = pool.submit(incr)
            try:
                for _ in range(2):
                    assert r.set("{x}big", big)
                    assert r.get("{x}big") == big
            finally:
                stop.set()  # a failed assertion above must not leave the pool waiting on incr
            assert counting.result(timeout=30) > 0
        assert p.stat("server.connection_write_overflow") == 0


def test_a_clients_commands_run_in_its_order_with_watch_and_several_connections(shards):
    # Review of issue 10: with server_connections > 1 a client's pipelined commands went
    # round-robin over the connections (and ran out of order); after EXEC, a command could
    # overtake the EXEC still queued on the WATCH connection.
    with RedisProxy(config=config(shards, "      server_connections: 4")) as p:
        s, f = raw(p)
        s.sendall(b"".join(resp("SET", "ord", str(i)) for i in range(200)) + resp("GET", "ord"))
        assert [read_reply(f) for _ in range(201)][-1] == b"199"
        s.sendall(b"".join(resp("RPUSH", "lst", str(i)) for i in range(100)) + resp("LRANGE", "lst", "0", "-1"))
        assert [read_reply(f) for _ in range(101)][-1] == [str(i).encode() for i in range(100)]
        for i in range(30):
            s.sendall(resp("SET", "k", "old") + resp("WATCH", "k") + resp("MULTI") + resp("SET", "k", "new") + resp("EXEC")
                      + resp("GET", "k") + resp("SET", "k", "after") + resp("GET", "k"))
            assert [read_reply(f) for _ in range(8)] == ["OK", "OK", "OK", "QUEUED", ["OK"], b"new", "OK", b"after"], i
        s.close()


def test_errors_quote_client_bytes_without_line_breaks(shards):
    # Review of issue 10: a CR LF in a shard name or a HELLO option ended the error reply
    # early, and the rest read as a reply the client never asked for.
    with RedisProxy(config=config(shards)) as p:
        s, _ = raw(p)
        assert s.ask("PING", "SHARD", "x\r\n+INJECTED\r\n")[1].startswith("ERR redis-proxy: no shard named 'x  +INJECTED  '")
        assert s.ask("INFO", "SHARD", "x\r\n:666\r\n")[0] == "ERR"
        assert s.ask("HELLO", "2", "a\r\n+INJ\r\n")[1].startswith("ERR Syntax error in HELLO option")
        assert s.ask("PING") == "PONG"
        s.close()


def test_reload_moves_open_clients_to_new_routes_and_twemproxy_files_reload(shards, tmp_path):
    # Review of issue 10: clients connected before a SIGHUP kept the old prefix routes for
    # as long as they stayed, splitting a migration's writes; --twemproxy ignored SIGHUP.
    import signal
    with RedisServer() as users, RedisServer() as vip:
        def cfg(target):
            return config(shards, f'      prefix_routes: {{ routes: [{{ prefix: "user:", cluster: {target} }}] }}',
                          clusters={"users": [users], "vip": [vip]})
        with RedisProxy(config=cfg("users")) as p:
            r = client(p)
            assert r.set("user:1", "a") and users.client().get("user:1") == b"a"
            with open(p.config_path, "w") as fh:
                fh.write(cfg("vip"))
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_success", lambda v: v == 1)
            assert r.set("user:2", "b")
            assert vip.client().get("user:2") == b"b" and not users.client().exists("user:2")
    path = tmp_path / "nutcracker.yml"
    pool = "pool_r:\n  listen: 127.0.0.1:0\n  redis: true\n  hash: murmur\n  servers:\n"
    path.write_text(pool + "".join(f"    - {s.endpoint}:1\n" for s in shards[:2]))
    with RedisProxy(args=["--twemproxy", str(path), "--admin", "127.0.0.1:0"]) as p:
        def shard_count():
            return len(json.loads(p.get("/redis/shards?format=json")[1])["listeners"][0]["shards"])
        assert shard_count() == 2
        path.write_text(pool + "".join(f"    - {s.endpoint}:1\n" for s in shards))
        p.signal(signal.SIGHUP)
        wait_for(lambda: shard_count() == 3, what="the twemproxy file read again")
