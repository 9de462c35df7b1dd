/// Picks a host for a new upstream connection or request. One instance per worker per
/// cluster generation (its state is the worker's own: no locks).
public protocol LoadBalancer: AnyObject {
    /// A host index, avoiding `attempted` when another host is available; nil when the cluster
    /// has no healthy host. `hashKey`: from the protocol's hash policy (source IP, header, key).
    func pick(hashKey: UInt64?, attempted: [Int]) -> Int?
    /// A request/connection to host `index` started or ended (least_request uses it).
    func onStart(_ index: Int)
    func onEnd(_ index: Int)
}

extension LoadBalancer {
    public func onStart(_ index: Int) {}
    public func onEnd(_ index: Int) {}
}

/// Builds a worker's balancer for a cluster snapshot.
public func makeLoadBalancer(_ cluster: ClusterSnapshot, seed: UInt64) -> LoadBalancer {
    switch cluster.config.lbPolicy {
    case .roundRobin: return RoundRobinLoadBalancer(hosts: cluster.hosts, seed: seed)
    case .random: return RandomLoadBalancer(hosts: cluster.hosts, seed: seed)
    case .leastRequest: return LeastRequestLoadBalancer(hosts: cluster.hosts, seed: seed)
    case .maglev: return MaglevLoadBalancer(table: cluster.maglevTable, hosts: cluster.hosts, seed: seed)
    }
}

/// Indices of healthy hosts (all hosts when the flag is absent).
func healthyIndices(_ hosts: [Host]) -> [Int] { hosts.indices.filter { hosts[$0].healthy } }

/// Smooth weighted round robin (nginx's): each pick adds every host's weight to its credit and
/// takes the host with the most credit, which pays the total back. Equal weights reduce to a
/// plain rotating index. Workers start at different offsets so they do not move in lockstep.
public final class RoundRobinLoadBalancer: LoadBalancer {
    private let healthy: [Int]
    private let weights: [Int]
    private var credit: [Int]
    private let total: Int
    private let uniform: Bool
    private var next: Int

    public init(hosts: [Host], seed: UInt64) {
        healthy = healthyIndices(hosts)
        weights = healthy.map { hosts[$0].weight }
        credit = Array(repeating: 0, count: healthy.count)
        total = weights.reduce(0, +)
        uniform = Set(weights).count <= 1
        next = healthy.isEmpty ? 0 : Int(seed % UInt64(healthy.count))
    }

    public func pick(hashKey: UInt64?, attempted: [Int]) -> Int? {
        if healthy.isEmpty { return nil }
        for _ in 0..<healthy.count {
            let h = pickOnce()
            if !attempted.contains(h) { return h }
        }
        return pickOnce()
    }

    private func pickOnce() -> Int {
        if uniform {
            let h = healthy[next]
            next += 1
            if next == healthy.count { next = 0 }
            return h
        }
        var best = 0
        for i in 0..<credit.count {
            credit[i] += weights[i]
            if credit[i] > credit[best] { best = i }
        }
        credit[best] -= total
        return healthy[best]
    }
}

/// Weighted random: a prefix-sum search.
public final class RandomLoadBalancer: LoadBalancer {
    private let healthy: [Int]
    private let prefix: [Int]
    private var rng: FastRandom

    public init(hosts: [Host], seed: UInt64) {
        healthy = healthyIndices(hosts)
        var acc = 0
        prefix = healthy.map { acc += hosts[$0].weight; return acc }
        rng = FastRandom(seed: seed)
    }

    public func pick(hashKey: UInt64?, attempted: [Int]) -> Int? {
        guard let total = prefix.last else { return nil }
        for _ in 0..<4 {
            let r = rng.below(total)
            var lo = 0, hi = prefix.count - 1
            while lo < hi { let mid = (lo + hi) / 2; if prefix[mid] > r { hi = mid } else { lo = mid + 1 } }
            if !attempted.contains(healthy[lo]) { return healthy[lo] }
        }
        return healthy.first { !attempted.contains($0) } ?? healthy[0]
    }
}

/// Least request, power of two choices: two random healthy hosts, the one with fewer active
/// requests per unit of weight wins. Counts are this worker's own.
public final class LeastRequestLoadBalancer: LoadBalancer {
    private let healthy: [Int]
    private let weights: [Int]
    private var active: [Int]
    private var rng: FastRandom

    public init(hosts: [Host], seed: UInt64) {
        healthy = healthyIndices(hosts)
        weights = hosts.map(\.weight)
        active = Array(repeating: 0, count: hosts.count)
        rng = FastRandom(seed: seed)
    }

    public func pick(hashKey: UInt64?, attempted: [Int]) -> Int? {
        if healthy.isEmpty { return nil }
        if healthy.count == 1 { return healthy[0] }
        for _ in 0..<4 {
            let a = healthy[rng.below(healthy.count)]
            var b = healthy[rng.below(healthy.count - 1)]
            if b == a { b = healthy[healthy.count - 1] }
            // Compare active/weight without division.
            let h = active[a] * weights[b] <= active[b] * weights[a] ? a : b
            if !attempted.contains(h) { return h }
            let other = h == a ? b : a
            if !attempted.contains(other) { return other }
        }
        return healthy.first { !attempted.contains($0) } ?? healthy[0]
    }

    public func onStart(_ index: Int) { active[index] += 1 }
    public func onEnd(_ index: Int) { active[index] -= 1 }
}

/// Maglev consistent hashing (Google's paper, Envoy's table size 65537 and weighting): a key
/// maps to `table[hash % size]`; a host change moves about 1/N of the keys. Without a hash key
/// it picks a random slot.
public final class MaglevLoadBalancer: LoadBalancer {
    private let table: [Int32]
    private let hosts: [Host]
    private var rng: FastRandom

    public init(table: [Int32], hosts: [Host], seed: UInt64) {
        self.table = table; self.hosts = hosts; rng = FastRandom(seed: seed)
    }

    public func pick(hashKey: UInt64?, attempted: [Int]) -> Int? {
        if table.isEmpty { return nil }
        var key = hashKey ?? rng.next()
        for _ in 0..<8 {
            let h = Int(table[Int(key % UInt64(table.count))])
            if !attempted.contains(h) { return h }
            key = mix64(key)
        }
        return Int(table[Int(key % UInt64(table.count))])
    }
}

/// Builds Maglev lookup tables.
public enum MaglevTable {
    public static let size = 65537

    /// Each healthy host fills slots along its own permutation, in turns weighted by its weight.
    public static func build(hosts: [Host], size: Int = MaglevTable.size) -> [Int32] {
        let live = healthyIndices(hosts)
        if live.isEmpty { return [] }
        let m = UInt64(size)
        let offsets = live.map { fnv1a64(Array(hosts[$0].address.description.utf8)) % m }
        let skips = live.map { fnv1a64(Array(hosts[$0].address.description.utf8), seed: 0x84222325cbf29ce4) % (m - 1) + 1 }
        let maxW = Double(live.map { hosts[$0].weight }.max()!)
        let norm = live.map { Double(hosts[$0].weight) / maxW }
        var next = Array(repeating: UInt64(0), count: live.count)
        var filled = Array(repeating: 0.0, count: live.count)
        var table = Array(repeating: Int32(-1), count: size)
        var count = 0
        var iteration = 1.0
        while count < size {
            for i in 0..<live.count {
                if filled[i] >= iteration * norm[i] { continue }
                filled[i] += 1
                var c = (offsets[i] + next[i] * skips[i]) % m
                while table[Int(c)] >= 0 { next[i] += 1; c = (offsets[i] + next[i] * skips[i]) % m }
                table[Int(c)] = Int32(live[i])
                next[i] += 1
                count += 1
                if count == size { break }
            }
            iteration += 1
        }
        return table
    }
}
