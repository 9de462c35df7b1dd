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

/// One host's connections (or requests) in flight on one worker, kept by address across cluster
/// snapshots: a health flip or a reload rebuilds the balancers, not what is in flight, so
/// least_request keeps seeing the load that connections of older generations still put on a host.
public final class HostLoad {
    public var active = 0
    public init() {}
}

/// Builds a worker's balancer for one priority level of a cluster. `loads`: the worker's
/// in-flight counts per host (index as in the snapshot), shared across levels and generations.
public func makeLoadBalancer(_ level: PriorityLevel, policy: LbPolicy, seed: UInt64, loads: [HostLoad]? = nil) -> LoadBalancer {
    switch policy {
    case .roundRobin: return RoundRobinLoadBalancer(hosts: level.hosts, schedule: level.wrrSchedule, seed: seed)
    case .random: return RandomLoadBalancer(hosts: level.hosts, seed: seed)
    case .leastRequest: return LeastRequestLoadBalancer(hosts: level.hosts, loads: loads, seed: seed)
    case .maglev: return MaglevLoadBalancer(table: level.maglevTable, hosts: level.hosts, seed: seed)
    case .ringHash: return RingHashLoadBalancer(ring: level.ring ?? KetamaRing(hosts: []), seed: seed)
    }
}

/// Indices of healthy hosts (all hosts when the flag is absent).
func healthyIndices(_ hosts: [Host]) -> [Int] { hosts.indices.filter { hosts[$0].healthy } }

/// Weighted round robin. Equal weights rotate an index. Unequal weights follow nginx's smooth
/// weighted round robin (weights 5,1,1 give 0 0 1 0 2 0 0): its whole cycle is computed once
/// per cluster snapshot (`WrrSchedule`), so a pick is an array step, O(1), whatever the host
/// count. When a cycle would be too large to build (sum of weights × hosts over 16M), picks
/// fall back to earliest-deadline-first on a heap (Envoy's EDF), O(log n).
/// Workers start at their own offsets so they do not move in lockstep.
public final class RoundRobinLoadBalancer: LoadBalancer {
    private let healthy: [Int]
    private let uniform: Bool
    private var next: Int
    /// The precomputed smooth cycle (host indices), shared by workers.
    private let schedule: [Int32]
    /// EDF fallback: heap of (deadline, position in `healthy`), and each position's step.
    private var heap: [(UInt64, Int)] = []
    private var steps: [UInt64] = []
    private static let scale: UInt64 = 1 << 32

    public init(hosts: [Host], schedule: [Int32]? = nil, seed: UInt64) {
        healthy = healthyIndices(hosts)
        let weights = healthy.map { hosts[$0].weight }
        uniform = Set(weights).count <= 1
        self.schedule = uniform ? [] : (schedule ?? WrrSchedule.build(hosts: hosts))
        let cycle = uniform ? healthy.count : max(self.schedule.count, 1)
        next = cycle == 0 ? 0 : Int(seed % UInt64(cycle))
        if !uniform && self.schedule.isEmpty {
            steps = weights.map { RoundRobinLoadBalancer.scale / UInt64($0) }
            heap = steps.enumerated().map { ($0.element / 2, $0.offset) }
            heap.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        }
    }

    public func pick(hashKey: UInt64?, attempted: [Int]) -> Int? {
        if healthy.isEmpty { return nil }
        for _ in 0..<healthy.count {
            let h = pickOnce()
            if !attempted.contains(h) { return h }
        }
        return pickOnce()
    }

    @inline(__always) private func pickOnce() -> Int {
        if uniform {
            let h = healthy[next]
            next += 1
            if next == healthy.count { next = 0 }
            return h
        }
        if !schedule.isEmpty {
            let h = Int(schedule[next])
            next += 1
            if next == schedule.count { next = 0 }
            return h
        }
        return healthy[pickWeighted()]
    }

    private func pickWeighted() -> Int {
        let (deadline, i) = heap[0]
        var d = deadline &+ steps[i]
        if d >= 1 << 62 {  // rebase long before overflow
            let base = heap.map(\.0).min() ?? 0
            for k in heap.indices { heap[k].0 -= base }
            d -= base
        }
        heap[0] = (d, i)
        siftDown(0)
        return i
    }

    private func less(_ a: (UInt64, Int), _ b: (UInt64, Int)) -> Bool { a.0 < b.0 || (a.0 == b.0 && a.1 < b.1) }

    private func siftDown(_ start: Int) {
        var i = start
        let n = heap.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < n && less(heap[l], heap[m]) { m = l }
            if r < n && less(heap[r], heap[m]) { m = r }
            if m == i { return }
            heap.swapAt(i, m)
            i = m
        }
    }
}

/// nginx's smooth weighted round robin, one whole cycle (sum of weights picks) at a time.
public enum WrrSchedule {
    /// The most work (sum of weights × hosts) spent building a cycle; beyond, EDF is used.
    public static let maxWork = 16 << 20

    /// Host indices in pick order for one cycle, or [] when weights are equal (a plain
    /// rotation serves) or the cycle is too large to build.
    public static func build(hosts: [Host]) -> [Int32] {
        let live = healthyIndices(hosts)
        let weights = live.map { hosts[$0].weight }
        let total = weights.reduce(0, +)
        guard Set(weights).count > 1, total * live.count <= maxWork else { return [] }
        var credit = Array(repeating: 0, count: live.count)
        var out: [Int32] = []
        out.reserveCapacity(total)
        for _ in 0..<total {
            var best = 0
            for i in 0..<credit.count {
                credit[i] += weights[i]
                if credit[i] > credit[best] { best = i }
            }
            credit[best] -= total
            out.append(Int32(live[best]))
        }
        return out
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
    /// In flight per host (this worker's; shared with other levels and later generations).
    private let active: [HostLoad]
    private var rng: FastRandom

    public init(hosts: [Host], loads: [HostLoad]? = nil, seed: UInt64) {
        healthy = healthyIndices(hosts)
        weights = hosts.map(\.weight)
        active = loads ?? hosts.map { _ in HostLoad() }
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
            let h = active[a].active * weights[b] <= active[b].active * weights[a] ? a : b
            if !attempted.contains(h) { return h }
            let other = h == a ? b : a
            if !attempted.contains(other) { return other }
        }
        return healthy.first { !attempted.contains($0) } ?? healthy[0]
    }

    public func onStart(_ index: Int) { active[index].active += 1 }
    public func onEnd(_ index: Int) { active[index].active -= 1 }
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
