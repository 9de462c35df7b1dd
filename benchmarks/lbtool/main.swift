// lbtool: load-balancer placement and microbenchmarks (not a test; see benchmarks/RESULTS.md).
//   lbtool place ring_hash|maglev HOST[=WEIGHT][/HASHKEY],... KEY...   print "KEY HOST" per key
//                (keys hashed with twemproxy's fnv1a_64, as nutcracker's `hash: fnv1a_64`)
//   lbtool bench [SECONDS_PER_CASE]   ns per pick for each policy with 10 and 1,000 hosts
import Common
import Glibc

func hosts(_ spec: String) -> [Host] {
    return spec.split(separator: ",").map { item in
        var rest = Substring(item)
        var hashKey: String?
        if let slash = rest.firstIndex(of: "/") { hashKey = String(rest[rest.index(after: slash)...]); rest = rest[..<slash] }
        var weight = 1
        if let eq = rest.firstIndex(of: "=") { weight = Int(rest[rest.index(after: eq)...]) ?? 1; rest = rest[..<eq] }
        guard let a = try? SocketAddress.parse(String(rest)) else {
            FileHandleOut.stderr("lbtool: bad host \(rest)\n"); exit(2)
        }
        return Host(address: a, weight: weight, hashKey: hashKey ?? a.description, healthy: true,
                    stats: HostStats(threads: 1))
    }
}

func nowNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

let args = CommandLine.arguments
guard args.count >= 2 else { FileHandleOut.stderr("usage: lbtool place POLICY HOSTS KEY... | lbtool bench [SECONDS]\n"); exit(2) }

switch args[1] {
case "place":
    guard args.count >= 4 else { exit(2) }
    let hs = hosts(args[3])
    let ring = KetamaRing(hosts: hs)
    let table = MaglevTable.build(hosts: hs)
    for key in args[4...] {
        let h = twemproxyFnv1a64(Array(key.utf8))
        let idx = args[2] == "maglev" ? Int(table[Int(UInt64(h) % UInt64(table.count))]) : ring.lookup(h)!
        FileHandleOut.stdout("\(key) \(hs[idx].hashKey)\n")
    }
case "bench":
    let seconds = args.count > 2 ? Double(args[2]) ?? 0.5 : 0.5
    FileHandleOut.stdout("policy          hosts   ns/pick\n")
    for n in [10, 1000] {
        let hs = hosts((0..<n).map { "10.\($0 / 250).\($0 % 250).1:80=\($0 % 3 + 1)" }.joined(separator: ","))
        let uniform = hosts((0..<n).map { "10.\($0 / 250).\($0 % 250).1:80" }.joined(separator: ","))
        let cases: [(String, LoadBalancer)] = [
            ("round_robin", RoundRobinLoadBalancer(hosts: uniform, seed: 1)),
            ("round_robin_w", RoundRobinLoadBalancer(hosts: hs, seed: 1)),
            ("random", RandomLoadBalancer(hosts: hs, seed: 1)),
            ("least_request", LeastRequestLoadBalancer(hosts: hs, seed: 1)),
            ("maglev", MaglevLoadBalancer(table: MaglevTable.build(hosts: hs), hosts: hs, seed: 1)),
            ("ring_hash", RingHashLoadBalancer(ring: KetamaRing(hosts: hs), seed: 1)),
        ]
        for (name, lb) in cases {
            var sink = 0
            var key: UInt64 = 0x9e3779b97f4a7c15
            var picks = 0
            let start = nowNs()
            let deadline = start + UInt64(seconds * 1e9)
            var t = start
            while t < deadline {
                for _ in 0..<10_000 {
                    key = key &* 6364136223846793005 &+ 1442695040888963407
                    sink &+= lb.pick(hashKey: key, attempted: []) ?? 0
                }
                picks += 10_000
                t = nowNs()
            }
            let ns = Double(t - start) / Double(picks)
            let pad = String(repeating: " ", count: max(0, 16 - name.count))
            FileHandleOut.stdout("\(name)\(pad)\(n)\(n == 10 ? "      " : "    ")\(String(format: ns))\n")
            if sink == 42 { FileHandleOut.stdout("") }
        }
    }
default:
    exit(2)
}

func String(format ns: Double) -> String {
    let r = (ns * 10).rounded() / 10
    return "\(r)"
}
