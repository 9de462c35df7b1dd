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

    public init(address: SocketAddress, weight: Int, hashKey: String, healthy: Bool, stats: HostStats,
                outlier: OutlierCounter? = nil, ejected: Bool = false) {
        self.address = address; self.weight = weight; self.hashKey = hashKey; self.healthy = healthy; self.stats = stats
        self.outlier = outlier; self.ejected = ejected
    }
}

/// Per-host counters (registered under a hidden `_host.` prefix, shown by /clusters).
public struct HostStats: Sendable {
    public let cxTotal: Counter
    public let cxActive: Gauge
    public let cxConnectFail: Counter

    public init(store: StatsStore, cluster: String, address: SocketAddress) {
        let p = "_host.\(cluster).\(address)."
        cxTotal = store.counter(p + "cx_total")
        cxActive = store.gauge(p + "cx_active")
        cxConnectFail = store.counter(p + "cx_connect_fail")
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
    /// The Maglev lookup table (host indices), built once when the policy needs it.
    public let maglevTable: [Int32]
    /// The ketama ring, built once when the policy is ring_hash.
    public let ring: KetamaRing?
    /// One cycle of smooth weighted round robin, built once when weights differ.
    public let wrrSchedule: [Int32]

    public var name: String { config.name }

    /// `endpoints`: the live set (config or endpoints file); `healthy`: what active checks say;
    /// `outlier`: each host's streak counter and whether it is ejected now.
    public init(config: ClusterConfig, endpoints: [EndpointConfig], healthy: (SocketAddress) -> Bool,
                outlier: (SocketAddress) -> (OutlierCounter?, Bool) = { _ in (nil, false) },
                store: StatsStore, openConnections: SharedCount) {
        self.config = config
        self.hosts = endpoints.map {
            let (counter, ejected) = outlier($0.address)
            return Host(address: $0.address, weight: $0.weight, hashKey: $0.hashKey ?? $0.address.description,
                        healthy: $0.healthy && healthy($0.address) && !ejected,
                        stats: HostStats(store: store, cluster: config.name, address: $0.address),
                        outlier: counter, ejected: ejected)
        }
        self.stats = ClusterStats(store: store, cluster: config.name)
        self.openConnections = openConnections
        self.maglevTable = config.lbPolicy == .maglev ? MaglevTable.build(hosts: hosts) : []
        self.ring = config.lbPolicy == .ringHash ? KetamaRing(hosts: hosts) : nil
        self.wrrSchedule = config.lbPolicy == .roundRobin ? WrrSchedule.build(hosts: hosts) : []
        store.mainSlab.set(stats.membershipTotal, hosts.count)
        store.mainSlab.set(stats.membershipHealthy, hosts.filter(\.healthy).count)
    }
}
