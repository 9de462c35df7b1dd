import Testing
@testable import Common

private func hosts(_ weights: [Int]) -> [Host] {
    return weights.enumerated().map { i, w in
        let a = try! SocketAddress.parse("10.0.\(i / 250).\(i % 250 + 1):80")  // test fixture, not input
        return Host(address: a, weight: w, hashKey: a.description, healthy: true, stats: HostStats(threads: 1))
    }
}

@Test func weightedRoundRobinIsExactAndSmooth() {
    let lb = RoundRobinLoadBalancer(hosts: hosts([5, 1, 1]), seed: 0)
    var counts = [0, 0, 0]
    var seq: [Int] = []
    for _ in 0..<7000 { let h = lb.pick(hashKey: nil, attempted: [])!; counts[h] += 1; seq.append(h) }
    #expect(counts == [5000, 1000, 1000])
    // nginx's smooth sequence, also across cycles: the heavy host never runs more than twice.
    #expect(Array(seq.prefix(14)) == [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0])
    var run = 0, longest = 0
    for h in seq { run = h == 0 ? run + 1 : 0; longest = max(longest, run) }
    #expect(longest <= 4)
}

@Test func weightedRoundRobinSpreadOver100kPicksWithinTolerance() {
    let weights = (0..<50).map { $0 % 7 + 1 }
    let lb = RoundRobinLoadBalancer(hosts: hosts(weights), seed: 3)
    var counts = Array(repeating: 0, count: weights.count)
    for _ in 0..<100_000 { counts[lb.pick(hashKey: nil, attempted: [])!] += 1 }
    let total = weights.reduce(0, +)
    for (i, w) in weights.enumerated() {
        let expected = 100_000.0 * Double(w) / Double(total)
        #expect(abs(Double(counts[i]) - expected) <= 1.0 + expected * 0.001, "host \(i): \(counts[i]) vs \(expected)")
    }
}

@Test func leastRequestSpreadOver100kPicksWithinTolerance() {
    // With every request still open, P2C keeps the active counts per weight level.
    let weights = [1, 1, 2, 4]
    let lb = LeastRequestLoadBalancer(hosts: hosts(weights), seed: 5)
    var counts = [0, 0, 0, 0]
    for _ in 0..<100_000 { let h = lb.pick(hashKey: nil, attempted: [])!; counts[h] += 1; lb.onStart(h) }
    for (i, w) in weights.enumerated() {
        let expected = 100_000.0 * Double(w) / 8
        #expect(abs(Double(counts[i]) - expected) / expected < 0.05, "host \(i): \(counts[i]) vs \(expected)")
    }
}

@Test func edfFallbackKeepsWeights() {
    // Beyond the schedule's size limit, EDF keeps the shares exact.
    let lb = RoundRobinLoadBalancer(hosts: hosts([3, 1]), schedule: [], seed: 0)
    var counts = [0, 0]
    for _ in 0..<4000 { counts[lb.pick(hashKey: nil, attempted: [])!] += 1 }
    #expect(counts == [3000, 1000])
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
}

/// A keyed pick is the key's place, not luck: balancers with different seeds (as two workers
/// have) agree on every key, and different keys spread over every host.
private func expectKeyedPicksStickAndSpread(_ make: (UInt64) -> LoadBalancer, hosts n: Int) {
    let one = make(1), other = make(99)
    var counts = Array(repeating: 0, count: n)
    for k in 0..<10_000 {
        let key = fnv1a64(Array("client-\(k)".utf8))
        let h = one.pick(hashKey: key, attempted: [])!
        #expect(other.pick(hashKey: key, attempted: []) == h)
        #expect(one.pick(hashKey: key, attempted: []) == h)
        counts[h] += 1
    }
    // 1,000 per host on average; each gets at least half of that.
    #expect(counts.allSatisfy { $0 >= 500 }, "\(counts)")
}

@Test func maglevKeyedPicksStickAndSpread() {
    let hs = hosts(Array(repeating: 1, count: 10))
    let table = MaglevTable.build(hosts: hs)
    expectKeyedPicksStickAndSpread({ MaglevLoadBalancer(table: table, hosts: hs, seed: $0) }, hosts: 10)
}

@Test func ringHashKeyedPicksStickAndSpread() {
    let ring = KetamaRing(hosts: hosts(Array(repeating: 1, count: 10)))
    expectKeyedPicksStickAndSpread({ RingHashLoadBalancer(ring: ring, seed: $0) }, hosts: 10)
}

@Test func maglevHonoursWeights() {
    let t = MaglevTable.build(hosts: hosts([1, 3]))
    let heavy = t.filter { $0 == 1 }.count
    #expect(abs(Double(heavy) / Double(t.count) - 0.75) < 0.02)
}

private func prioritized(_ spec: [(priority: Int, healthy: Bool)]) -> [Host] {
    return spec.enumerated().map { i, s in
        let a = try! SocketAddress.parse("10.1.0.\(i + 1):80")  // test fixture, not input
        return Host(address: a, weight: 1, hashKey: a.description, healthy: s.healthy,
                    stats: HostStats(threads: 1), priority: s.priority)
    }
}

@Test func priorityLoadsFollowEnvoysOverprovisioning() {
    func loads(_ spec: [(Int, Bool)]) -> [Int] {
        let hs = prioritized(spec.map { (priority: $0.0, healthy: $0.1) })
        return ClusterSnapshot.priorityLoads(hosts: hs, priorities: Set(hs.map(\.priority)).sorted(), overprovisioning: 140)
    }
    #expect(loads([(0, true), (0, true), (1, true)]) == [100, 0])
    #expect(loads([(0, true), (0, false), (1, true)]) == [70, 30])     // 50% x 1.4
    #expect(loads([(0, false), (0, false), (1, true)]) == [0, 100])
    #expect(loads([(0, true), (0, false), (0, false), (1, false)]) == [100, 0])  // 46% alone: scaled up
    #expect(loads([(0, false), (1, false)]) == [0, 0])
    // One healthy host among 200 is 0.7% x 1.4: it must not round down to "nothing healthy".
    #expect(loads([(0, true)] + Array(repeating: (0, false), count: 199)) == [100])
    #expect(loads([(0, true)] + Array(repeating: (0, false), count: 199) + [(1, true)]) == [1, 99])
}
