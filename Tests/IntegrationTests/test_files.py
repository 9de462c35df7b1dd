"""Files written from config paths (issue 8, fault 6): the ready file and `endpoints_out` are
replaced through a fresh, exclusively created temp file, so a symlink planted by another local
user at a predictable name cannot make the proxy overwrite a file of its choosing."""

import json
import os
import signal
import tempfile

from harness import Proxy, Server, echo_handler, tcp_config, wait_for

VICTIM = "precious, owned by root\n"


def plant(link, victim):
    with open(victim, "w") as f:
        f.write(VICTIM)
    os.symlink(victim, link)


def test_ready_file_is_not_written_through_a_planted_symlink():
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=tcp_config([up.endpoint])) as p:
            victim = os.path.join(p.tmp, "victim")
            plant(p.ready_file + ".tmp", victim)
            p.signal(signal.SIGHUP)  # rewrites the ready file
            p.wait_stat("server.reload_success", lambda v: v == 1)
            ready = wait_for(lambda: (r := p.reread_ready()) and r["generation"] == 2 and r, what="ready file rewritten")
            assert "main" in ready["listeners"]
            assert open(victim).read() == VICTIM
            assert not os.path.islink(p.ready_file)
        # No temp file is left behind.
        left = [n for n in os.listdir(p.tmp) if os.path.basename(p.ready_file) in n and n != os.path.basename(p.ready_file)]
        assert left == [os.path.basename(p.ready_file) + ".tmp"]  # only the planted link


def test_endpoints_out_is_not_written_through_a_planted_symlink():
    d = tempfile.mkdtemp(prefix="eps-out-")
    out = os.path.join(d, "hosts.json")
    victim = os.path.join(d, "victim")
    plant(out + ".tmp", victim)
    with Server(echo_handler) as up:
        cfg = tcp_config([up.endpoint], cluster=f"    endpoints_out: {out}")
        with Proxy("tcp-proxy", config=cfg) as p:
            wait_for(lambda: os.path.exists(out), what="endpoints_out written")
            assert open(victim).read() == VICTIM
            doc = json.load(open(out))
            assert up.endpoint in json.dumps(doc)
            # A reload writes it again, still not through the link.
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_success", lambda v: v == 1)
            assert open(victim).read() == VICTIM
    assert sorted(os.listdir(d)) == ["hosts.json", "hosts.json.tmp", "victim"]
