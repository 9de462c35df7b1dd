import Testing
@testable import Common

private func hosts(_ weights: [Int]) -> [Host] {
    let store = StatsStore(threads: 1)
    return weights.enumerated().map { i, w in
        let a = try! SocketAddress.parse("10.0.\(i / 250).\(i % 250 + 1):80")  // test fixture, not input
        return Host(address: a, weight: w, healthy: true, stats: HostStats(store: store, cluster: "t", address: a))
    }
}

@Test func smoothWeightedRoundRobinIsExact() {
    let lb = RoundRobinLoadBalancer(hosts: hosts([5, 1, 1]), seed: 0)
    var counts = [0, 0, 0]
    var seq: [Int] = []
    for _ in 0..<7000 { let h = lb.pick(hashKey: nil, attempted: [])!; counts[h] += 1; if seq.count < 7 { seq.append(h) } }
    #expect(counts == [5000, 1000, 1000])
    // Smooth: the heavy host is never picked more than 3 times in a row in nginx's sequence.
    #expect(seq == [0, 0, 1, 0, 2, 0, 0])
}

@Test func roundRobinSkipsAttempted() {
    let lb = RoundRobinLoadBalancer(hosts: hosts([1, 1, 1]), seed: 0)
    for _ in 0..<10 { #expect(lb.pick(hashKey: nil, attempted: [0, 1]) == 2) }
}

@Test func weightedRandomWithinTolerance() {
    let lb = RandomLoadBalancer(hosts: hosts([1, 2, 7]), seed: 42)
    var counts = [0, 0, 0]
    for _ in 0..<100_000 { counts[lb.pick(hashKey: nil, attempted: [])!] += 1 }
    #expect(abs(counts[0] - 10_000) < 1000 && abs(counts[1] - 20_000) < 1500 && abs(counts[2] - 70_000) < 2000)
}

@Test func leastRequestPrefersIdleHosts() {
    let lb = LeastRequestLoadBalancer(hosts: hosts([1, 1, 1, 1]), seed: 7)
    for _ in 0..<50 { lb.onStart(0) }
    var picks0 = 0
    for _ in 0..<1000 { if lb.pick(hashKey: nil, attempted: []) == 0 { picks0 += 1 } }
    #expect(picks0 == 0)
}

@Test func maglevIsConsistentAndBalanced() {
    let hs = hosts(Array(repeating: 1, count: 10))
    let t1 = MaglevTable.build(hosts: hs)
    var share = Array(repeating: 0, count: 10)
    for h in t1 { share[Int(h)] += 1 }
    #expect(share.allSatisfy { abs($0 - 6553) < 700 })
    // Adding a host moves about 1/11 of the slots.
    let t2 = MaglevTable.build(hosts: hosts(Array(repeating: 1, count: 11)))
    let moved = zip(t1, t2).filter { $0 != $1 }.count
    #expect(Double(moved) / Double(t1.count) < 0.15)
    let lb = MaglevLoadBalancer(table: t1, hosts: hs, seed: 1)
    #expect(lb.pick(hashKey: 12345, attempted: []) == lb.pick(hashKey: 12345, attempted: []))
}

@Test func maglevHonoursWeights() {
    let t = MaglevTable.build(hosts: hosts([1, 3]))
    let heavy = t.filter { $0 == 1 }.count
    #expect(abs(Double(heavy) / Double(t.count) - 0.75) < 0.02)
}
