"""Discovery results that are huge or hostile (issue 8, faults 1 and 2): an endpoints file with
25,000 hosts, churn through 100,000 distinct hosts, a set over `max_hosts`, a 40,000-key
mapping and a 100,000-endpoint file. The proxy keeps running, keeps the last good set when it
refuses one, answers its admin meanwhile, and relays throughout."""

import json
import os

from harness import Proxy, Server, connect, name_handler, read_line, tcp_config, wait_for


def write_file(path, doc):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))
    os.rename(tmp, path)


def many(n, first=0, port=9):
    # Addresses nobody listens on (discard port on 10.x never connected to: these hosts are
    # only members; the test talks to the real one, which comes first).
    return [{"address": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:{port}", "health_status": "UNHEALTHY"}
            for i in range(first, first + n)]


def config(path, extra=""):
    return tcp_config(None, workers=2, cluster=f"    discovery: file\n    path: {path}\n{extra}")


def relays(p):
    s = connect(p.addr())
    try:
        return read_line(s) == b"real\n"
    finally:
        s.close()


def test_huge_endpoint_sets_and_churn_are_served_or_refused(tmp_path):
    path = str(tmp_path / "eps.json")
    with Server(name_handler("real")) as up:
        real = {"address": up.endpoint}
        write_file(path, {"endpoints": [real]})
        with Proxy("tcp-proxy", config=config(path, "    max_hosts: 30000")) as p:
            assert relays(p)
            # 25,000 hosts (the real one healthy): used to exhaust the stats store (SIGILL).
            # Then churn: four sets of 25,000 different hosts, 100,000 distinct in all.
            for round_ in range(4):
                write_file(path, {"endpoints": [real] + many(24_999, first=round_ * 25_000)})
                p.wait_stat("cluster.backend.update_success", lambda v: v == round_ + 1, timeout=60)
                assert p.stat("cluster.backend.membership_total") == 25_000
                assert relays(p)
            # Only current hosts are shown; removed hosts' stats went with them.
            _, clusters = p.get("/clusters")
            assert clusters.count("::cx_total::") == 25_000
            assert "10.0.0.5:9" not in clusters  # from the first round only
            # Over max_hosts: refused with a message, the last good set stays.
            write_file(path, {"endpoints": [real] + many(30_000)})
            p.wait_stat("cluster.backend.update_rejected", lambda v: v == 1, timeout=60)
            assert p.stat("cluster.backend.update_failure") == 1
            assert p.stat("cluster.backend.membership_total") == 25_000
            assert "over max_hosts (30000)" in p.stderr()
            assert relays(p)
            assert p.proc.poll() is None


def test_max_hosts_in_config_is_checked(tmp_path):
    path = str(tmp_path / "eps.json")
    write_file(path, {"endpoints": many(11)})
    from harness import validate
    r = validate(config(path, "    max_hosts: 10"))
    assert r.returncode == 1
    assert "clusters[0].path" in r.stderr and "11 endpoints, over max_hosts (10)" in r.stderr, r.stderr
    r = validate(config(path, "    max_hosts: 0"))
    assert r.returncode == 1 and "clusters[0].max_hosts" in r.stderr, r.stderr


def test_hostile_mapping_and_100k_file_load_without_freezing_the_main_thread(tmp_path):
    """A 40,000-key mapping took 50 s of main-thread CPU (a quadratic duplicate-key check) and a
    100,000-endpoint file several seconds: admin, checks and reload froze. The deadlines below
    are generous liveness bounds (the work takes well under a second), not speed assertions."""
    path = str(tmp_path / "eps.json")
    with Server(name_handler("real")) as up:
        real = {"address": up.endpoint}
        write_file(path, {"endpoints": [real]})
        with Proxy("tcp-proxy", config=config(path)) as p:
            for fmt in ("json", "yaml"):
                keys = {f"k{i}": i for i in range(40_000)}
                doc = {"endpoints": [dict(real, **keys)]}
                text = json.dumps(doc) if fmt == "json" else \
                    "endpoints:\n  - address: \"%s\"\n" % up.endpoint + "".join(f"    k{i}: {i}\n" for i in range(40_000))
                before = p.stat("cluster.backend.update_failure")
                write_file(path, text)
                p.wait_stat("cluster.backend.update_failure", lambda v: v == before + 1, timeout=15)
                assert "endpoints[0].k0: unknown key" in p.stderr()
            # A duplicate key deep in a big mapping is found too.
            write_file(path, "endpoints:\n  - address: \"%s\"\n" % up.endpoint
                       + "".join(f"    k{i}: {i}\n" for i in range(40_000)) + "    k7: 1\n")
            p.wait_stat("cluster.backend.update_failure", lambda v: v == 3, timeout=15)
            assert relays(p)
            write_file(path, {"endpoints": [real] + many(99_999)})
            p.wait_stat("cluster.backend.membership_total", lambda v: v == 100_000, timeout=15)
            assert p.get("/ready")[0] == 200
            assert relays(p)
