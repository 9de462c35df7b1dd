import Synchronization

/// One upstream host as a config generation sees it. Immutable; shared by workers.
public struct Host: Sendable {
    public let address: SocketAddress
    public let weight: Int
    /// The name a hashing balancer places on its ring (`hash_key`, default "ip:port"); give
    /// twemproxy's server names here to keep its key placement.
    public let hashKey: String
    /// Health as discovery and checks report it (static hosts start healthy).
    public let healthy: Bool
    /// Per-host counters shown by /clusters.
    public let stats: HostStats
    /// The host's failure streak for outlier detection (nil when the cluster has none).
    public let outlier: OutlierCounter?
    /// Ejected by outlier detection (then `healthy` is false too).
    public let ejected: Bool
    /// Priority level (0 first).
    public let priority: Int

    public init(address: SocketAddress, weight: Int, hashKey: String, healthy: Bool, stats: HostStats,
                outlier: OutlierCounter? = nil, ejected: Bool = false, priority: Int = 0) {
        self.address = address; self.weight = weight; self.hashKey = hashKey; self.healthy = healthy; self.stats = stats
        self.outlier = outlier; self.ejected = ejected; self.priority = priority
    }

    /// The same host, eligible or not for one balancer's view.
    func with(healthy: Bool) -> Host {
        Host(address: address, weight: weight, hashKey: hashKey, healthy: healthy, stats: stats,
             outlier: outlier, ejected: ejected, priority: priority)
    }
}

/// Envoy's cluster stats, `cluster.<name>.*`.
public struct ClusterStats: Sendable {
    public let upstreamCxTotal: Counter
    public let upstreamCxActive: Gauge
    public let upstreamCxConnectFail: Counter
    public let upstreamCxConnectTimeout: Counter
    public let upstreamCxConnectAttemptsExceeded: Counter
    public let upstreamCxNoneHealthy: Counter
    public let upstreamCxOverflow: Counter
    public let upstreamCxRxBytesTotal: Counter
    public let upstreamCxTxBytesTotal: Counter
    public let upstreamCxDestroy: Counter
    public let upstreamCxDestroyLocal: Counter
    public let upstreamCxDestroyRemote: Counter
    public let upstreamCxConnectMs: Histogram
    public let upstreamCxLengthMs: Histogram
    public let membershipTotal: Gauge
    public let membershipHealthy: Gauge
    public let lbHealthyPanic: Counter
    public let upstreamRqPendingOverflow: Counter
    public let upstreamRqRetryOverflow: Counter
    public let upstreamRqRetry: Counter
    /// Picks made while outlier ejection had every host out (`ClusterSnapshot.allEjected`).
    public let lbAllEjected: Counter
    /// TLS to the hosts: `ssl.handshake`, `ssl.connection_error`.
    public let tls: TlsStats

    public init(store: StatsStore, cluster: String) {
        let p = "cluster.\(cluster)."
        upstreamCxTotal = store.counter(p + "upstream_cx_total")
        upstreamCxActive = store.gauge(p + "upstream_cx_active")
        upstreamCxConnectFail = store.counter(p + "upstream_cx_connect_fail")
        upstreamCxConnectTimeout = store.counter(p + "upstream_cx_connect_timeout")
        upstreamCxConnectAttemptsExceeded = store.counter(p + "upstream_cx_connect_attempts_exceeded")
        upstreamCxNoneHealthy = store.counter(p + "upstream_cx_none_healthy")
        upstreamCxOverflow = store.counter(p + "upstream_cx_overflow")
        upstreamCxRxBytesTotal = store.counter(p + "upstream_cx_rx_bytes_total")
        upstreamCxTxBytesTotal = store.counter(p + "upstream_cx_tx_bytes_total")
        upstreamCxDestroy = store.counter(p + "upstream_cx_destroy")
        upstreamCxDestroyLocal = store.counter(p + "upstream_cx_destroy_local")
        upstreamCxDestroyRemote = store.counter(p + "upstream_cx_destroy_remote")
        upstreamCxConnectMs = store.histogram(p + "upstream_cx_connect_ms")
        upstreamCxLengthMs = store.histogram(p + "upstream_cx_length_ms")
        membershipTotal = store.gauge(p + "membership_total")
        membershipHealthy = store.gauge(p + "membership_healthy")
        lbHealthyPanic = store.counter(p + "lb_healthy_panic")
        upstreamRqPendingOverflow = store.counter(p + "upstream_rq_pending_overflow")
        upstreamRqRetryOverflow = store.counter(p + "upstream_rq_retry_overflow")
        upstreamRqRetry = store.counter(p + "upstream_rq_retry")
        lbAllEjected = store.counter(p + "lb_all_ejected")
        tls = TlsStats(store: store, prefix: p)
    }
}

/// One priority level's view of a cluster for a balancer, with the tables hashing and weighted
/// policies need (built once, on the main thread).
public struct PriorityLevel: Sendable {
    public let priority: Int
    /// All of the cluster's hosts; those not eligible at this level are marked unhealthy.
    public let hosts: [Host]
    public let maglevTable: [Int32]
    public let ring: KetamaRing?
    public let wrrSchedule: [Int32]

    init(priority: Int, hosts: [Host], policy: LbPolicy) {
        self.priority = priority
        self.hosts = hosts
        maglevTable = policy == .maglev ? MaglevTable.build(hosts: hosts) : []
        ring = policy == .ringHash ? KetamaRing(hosts: hosts) : nil
        wrrSchedule = policy == .roundRobin ? WrrSchedule.build(hosts: hosts) : []
    }
}

extension ClusterSnapshot {
    /// Envoy's priority load: each level, in order, takes min(what is left, its health × the
    /// overprovisioning factor); when the levels together are under 100%, shares are scaled
    /// up so traffic still goes where health is.
    static func priorityLoads(hosts: [Host], priorities: [Int], overprovisioning: Int) -> [Int] {
        let health = priorities.map { p -> Int in
            let level = hosts.filter { $0.priority == p }
            if level.isEmpty { return 0 }
            let up = level.filter(\.healthy).count
            // A level with any healthy host keeps some traffic: 1 healthy host in 25,000 must not
            // round down to 0% and leave the cluster with "no healthy host".
            return up == 0 ? 0 : max(1, min(100, up * overprovisioning / level.count))
        }
        let total = health.reduce(0, +)
        if total == 0 { return Array(repeating: 0, count: priorities.count) }
        if total < 100 {
            var scaled = health.map { $0 * 100 / total }
            scaled[scaled.firstIndex { $0 > 0 }!] += 100 - scaled.reduce(0, +)
            return scaled
        }
        var left = 100
        return health.map { h in let l = min(left, h); left -= l; return l }
    }
}

/// A count shared by every worker (a cluster's open connections for its circuit breaker,
/// a listener's connections for `max_connections`).
public final class SharedCount: Sendable {
    private let value = Atomic<Int>(0)
    public init() {}
    /// Takes one unit if below `limit`; false when full.
    public func tryAcquire(limit: Int) -> Bool {
        let now = value.wrappingAdd(1, ordering: .relaxed).newValue
        if now > limit { value.wrappingSubtract(1, ordering: .relaxed); return false }
        return true
    }
    public func release() { value.wrappingSubtract(1, ordering: .relaxed) }
    public var current: Int { value.load(ordering: .relaxed) }
}

/// A cluster as one config generation sees it: immutable, built on the main thread, shared by
/// workers, which each build their own load balancer state from it.
public final class ClusterSnapshot: Sendable {
    public let config: ClusterConfig
    public let hosts: [Host]
    public let stats: ClusterStats
    /// Open upstream connections, across workers (circuit breaker).
    public let openConnections: SharedCount
    /// Connects in progress and retries in flight, across workers (circuit breakers).
    public let pending: SharedCount
    public let retries: SharedCount
    /// One balancer view per priority level in use (hosts outside the level, or unhealthy,
    /// are masked out; indices stay those of `hosts`), with its share of new traffic.
    public let levels: [PriorityLevel]
    /// Percent of new connections per level (sums to 100, or all 0 when nothing is healthy).
    public let loads: [Int]
    /// Fewer healthy hosts than `panic_threshold`: balancing ignores health.
    public let panic: Bool
    /// Outlier ejection alone would leave no host to try: ejected hosts take traffic anyway
    /// (Envoy keeps serving through panic mode; ours is off by default, so this is separate).
    /// Active checks and discovery still decide; only passive ejection is overridden.
    public let allEjected: Bool

    public var name: String { config.name }

    /// The cluster's slot in every worker's cluster table (`Worker.cluster(_:)`): given by the
    /// cluster manager once per name and never reused for another name, so a handle resolved at
    /// config time stays right across reloads and costs an array index per request.
    public let slot: Int

    /// `endpoints`: the live set (config or endpoints file); `healthy`: what active checks say;
    /// `outlier`: each host's streak counter and whether it is ejected now; `hostStats`: each
    /// host's counters (kept by the caller across snapshots; fresh ones when not given).
    public init(config: ClusterConfig, endpoints: [EndpointConfig], healthy: (SocketAddress) -> Bool,
                outlier: (SocketAddress) -> (OutlierCounter?, Bool) = { _ in (nil, false) },
                hostStats: ((SocketAddress) -> HostStats)? = nil,
                store: StatsStore, openConnections: SharedCount, pending: SharedCount = SharedCount(), retries: SharedCount = SharedCount(),
                slot: Int = 0) {
        self.config = config
        self.slot = slot
        self.pending = pending
        self.retries = retries
        let outliers = endpoints.map { outlier($0.address) }
        let up = endpoints.map { $0.healthy && healthy($0.address) }
        // Would ejection empty the cluster? Then it does not count for balancing.
        let ignoreEjection = up.contains(true) && !zip(up, outliers).contains { $0 && !$1.1 }
        allEjected = ignoreEjection
        self.hosts = endpoints.indices.map { i in
            let e = endpoints[i], (counter, ejected) = outliers[i]
            return Host(address: e.address, weight: e.weight, hashKey: e.hashKey ?? e.address.description,
                        healthy: up[i] && (!ejected || ignoreEjection),
                        stats: hostStats?(e.address) ?? HostStats(threads: store.slabs.count),
                        outlier: counter, ejected: ejected, priority: e.priority)
        }
        self.stats = ClusterStats(store: store, cluster: config.name)
        self.openConnections = openConnections
        let all = hosts, policy = config.lbPolicy
        let healthyCount = all.filter(\.healthy).count
        let inPanic = config.panicThreshold > 0 && !all.isEmpty && healthyCount * 100 < config.panicThreshold * all.count
        panic = inPanic
        if inPanic {
            levels = [PriorityLevel(priority: 0, hosts: all.map { $0.with(healthy: true) }, policy: policy)]
            loads = [100]
        } else {
            let priorities = Set(all.map(\.priority)).sorted()
            levels = priorities.map { p in
                PriorityLevel(priority: p, hosts: all.map { $0.with(healthy: $0.healthy && $0.priority == p) }, policy: policy)
            }
            loads = ClusterSnapshot.priorityLoads(hosts: all, priorities: priorities, overprovisioning: config.overprovisioningFactor)
        }
        store.mainSlab.set(stats.membershipTotal, hosts.count)
        store.mainSlab.set(stats.membershipHealthy, hosts.filter { $0.healthy && !$0.ejected }.count)
    }
}
