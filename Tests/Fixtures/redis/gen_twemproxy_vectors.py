#!/usr/bin/env python3
"""Writes twemproxy_placement.txt: where nutcracker (Debian's 0.5.0, /usr/sbin/nutcracker) puts
each of ~300 keys, for every hash function x {modula, ketama} x {equal weights, weights 1,2,1,3,1},
with hash_tag "{}". The Swift tests (RedisTwemproxyHashTests) check our hash functions and
distributions put every key on the same shard.

How: 5 redis-servers and one nutcracker per run, all on 127.0.0.1 ports picked by the kernel;
every key is SET through nutcracker, then each server is asked for its keys (KEYS *). Only the
processes this script starts are killed, by PID. Takes about a minute.
Run from anywhere: python3 Tests/Fixtures/redis/gen_twemproxy_vectors.py"""
import os, random, shutil, socket, subprocess, sys, tempfile, time

HASHES = ['one_at_a_time', 'md5', 'crc16', 'crc32', 'crc32a', 'fnv1_64', 'fnv1a_64', 'fnv1_32', 'fnv1a_32',
          'hsieh', 'murmur', 'jenkins']
WEIGHTS = {'equal': [1, 1, 1, 1, 1], 'weighted': [1, 2, 1, 3, 1]}
NAMES = ['s0', 's1', 's2', 's3', 's4']
DEADLINE = time.time() + 600
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'twemproxy_placement.txt')


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    p = s.getsockname()[1]
    s.close()
    return p


def keys():
    rnd = random.Random(10)  # fixed: the fixture must not change from run to run
    ks = [b'foo', b'bar', b'a', b'ab', b'abc', b'abcd', b'hello world', b'\xff', b'\xff\xe9', b'\x80abc',
          b'\xe9t\xe9', b'{user1000}.following', b'{user1000}.followers', b'a{}b{c}', b'{}', b'x{{y}',
          b'a{b', b'}a{b}', b'\xff{\xe9\xff}\x01']
    for n in range(1, 40):  # every length mod 4 and 12 (hsieh, murmur, jenkins tails)
        ks.append(bytes(rnd.randrange(1, 256) for _ in range(n)))
    for _ in range(150):
        n = rnd.randrange(1, 24)
        ks.append(bytes(rnd.choice(b'abcdefghijklmnopqrstuvwxyz0123456789:_-') for _ in range(n)))
    for _ in range(80):
        n = rnd.randrange(1, 30)
        ks.append(bytes(rnd.randrange(1, 256) for _ in range(n)))
    for _ in range(10):
        ks.append(bytes(rnd.randrange(32, 127) for _ in range(rnd.randrange(100, 463))))
    seen, out = set(), []
    for k in ks:
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out


def cmd(*args):
    out = b'*%d\r\n' % len(args)
    for a in args:
        out += b'$%d\r\n%s\r\n' % (len(a), a)
    return out


def read_reply(f):
    line = f.readline()
    t, rest = line[:1], line[1:-2]
    if t == b'*':
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    if t == b'$':
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if t == b':':
        return int(rest)
    if t in (b'+', b'-'):
        return (t + rest).decode('latin-1')
    raise RuntimeError('bad reply %r' % line)


def connect(port):
    while time.time() < DEADLINE:
        try:
            s = socket.create_connection(('127.0.0.1', port), timeout=10)
            return s, s.makefile('rb')
        except OSError:
            time.sleep(0.05)
    raise RuntimeError('timeout connecting to %d' % port)


def main():
    for tool in ('nutcracker', 'redis-server'):
        if not shutil.which(tool) and not os.path.exists('/usr/sbin/' + tool):
            sys.exit('%s not found' % tool)
    nutcracker = shutil.which('nutcracker') or '/usr/sbin/nutcracker'
    tmp = tempfile.mkdtemp(prefix='twem-vectors-')
    procs = []
    try:
        ports = [free_port() for _ in NAMES]
        for p in ports:
            procs.append(subprocess.Popen(['redis-server', '--port', str(p), '--bind', '127.0.0.1', '--save', '',
                                           '--appendonly', 'no', '--dir', tmp], stdout=subprocess.DEVNULL))
        servers = [connect(p) for p in ports]
        ks = keys()
        runs = []
        for dist in ('modula', 'ketama'):
            for wname, weights in WEIGHTS.items():
                for h in HASHES:
                    runs.append((dist, h, wname, weights))
        table = {k: [] for k in ks}
        for dist, h, wname, weights in runs:
            for s, f in servers:
                s.sendall(cmd(b'FLUSHALL'))
                read_reply(f)
            lport, sport = free_port(), free_port()
            conf = os.path.join(tmp, 'nc.yml')
            with open(conf, 'w') as c:
                c.write('pool:\n  listen: 127.0.0.1:%d\n  hash: %s\n  hash_tag: "{}"\n  distribution: %s\n'
                        '  redis: true\n  auto_eject_hosts: false\n  timeout: 5000\n  servers:\n' % (lport, h, dist))
                for p, w, n in zip(ports, weights, NAMES):
                    c.write('   - 127.0.0.1:%d:%d %s\n' % (p, w, n))
            nc = subprocess.Popen([nutcracker, '-c', conf, '-s', str(sport), '-a', '127.0.0.1',
                                   '-o', os.path.join(tmp, 'nc.log')])
            try:
                s, f = connect(lport)
                s.sendall(b''.join(cmd(b'SET', k, b'1') for k in ks))
                for k in ks:
                    r = read_reply(f)
                    if r != '+OK':
                        raise RuntimeError('SET %r through nutcracker: %r' % (k, r))
                s.close()
            finally:
                nc.kill()
                nc.wait()
            where = {}
            for i, (s, f) in enumerate(servers):
                s.sendall(cmd(b'KEYS', b'*'))
                for k in read_reply(f):
                    where[k] = i
            for k in ks:
                table[k].append(where[k])
            print('%s %s %s done' % (dist, h, wname), file=sys.stderr)
        with open(OUT, 'w') as out:
            out.write('# Written by gen_twemproxy_vectors.py: nutcracker 0.5.0, hash_tag "{}", 5 servers named s0..s4.\n')
            out.write('# Columns: key (hex), then the server index nutcracker chose in each run:\n')
            out.write('runs ' + ' '.join('%s/%s/%s' % (d, h, w) for d, h, w, _ in runs) + '\n')
            for wname, weights in WEIGHTS.items():
                out.write('weights %s %s\n' % (wname, ','.join(map(str, weights))))
            for k in ks:
                out.write('%s %s\n' % (k.hex(), ' '.join(map(str, table[k]))))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
