/// A circuit breaker a pool shares with others: a count (usually one per cluster, shared by
/// every worker's pools of that cluster) and its limit. A pool with no breaker for a resource
/// touches no atomic for it (the common, unlimited case costs nothing cross-thread).
public struct PoolBreaker: Sendable {
    /// The shared count (relaxed atomics; a worker may overshoot by nothing: `tryAcquire` undoes).
    public let count: SharedCount
    /// The most the count may reach.
    public let limit: Int
    /// `count` is shared by every pool the limit covers (the cluster's, across workers).
    public init(count: SharedCount, limit: Int) { self.count = count; self.limit = limit }
}

/// The limits and timeouts of one per-worker, per-host pool. Immutable; built once per cluster
/// generation on the main thread and shared by the workers' pools.
public struct PoolConfig: Sendable {
    /// Requests a connection is assumed to take before its client declared its real capacity:
    /// 1 for HTTP/1.1, the configured `max_concurrent_streams` for HTTP/2 (the peer's SETTINGS
    /// may lower it), the pipeline depth for RESP. Decides how many connects a queue needs.
    public var expectedCapacity: Int
    /// `idle_timeout`: a connection with no request for this long is closed. Default 1 h
    /// (Envoy's upstream `common_http_protocol_options.idle_timeout`); nil = never.
    public var idleTimeoutMs: UInt64?
    /// `max_requests_per_connection`: a connection that took this many requests takes no more
    /// and closes when its last one finishes (`upstream_cx_max_requests`). nil = unlimited.
    public var maxRequestsPerConnection: Int?
    /// `circuit_breakers.max_connections`: at the limit, requests queue instead of opening
    /// connections (`upstream_cx_overflow`). Counts connecting, ready and exclusive connections.
    public var maxConnections: PoolBreaker?
    /// `circuit_breakers.max_pending_requests`: queued requests; a request over it fails at once
    /// (`upstream_rq_pending_overflow`).
    public var maxPendingRequests: PoolBreaker?
    /// `circuit_breakers.max_requests`: requests attached to connections; a request that would
    /// go over it fails (`upstream_rq_pending_overflow`, as Envoy counts it).
    public var maxRequests: PoolBreaker?

    /// Defaults: 1 h idle timeout, everything else unlimited.
    public init(expectedCapacity: Int, idleTimeoutMs: UInt64? = 3_600_000, maxRequestsPerConnection: Int? = nil,
                maxConnections: PoolBreaker? = nil, maxPendingRequests: PoolBreaker? = nil, maxRequests: PoolBreaker? = nil) {
        self.expectedCapacity = expectedCapacity
        self.idleTimeoutMs = idleTimeoutMs
        self.maxRequestsPerConnection = maxRequestsPerConnection
        self.maxConnections = maxConnections
        self.maxPendingRequests = maxPendingRequests
        self.maxRequests = maxRequests
    }
}
