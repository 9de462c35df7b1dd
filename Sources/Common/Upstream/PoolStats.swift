import CShim

/// Stats a pool reports, by Envoy's names (`cluster.<name>.<stat>`). The state machine only says
/// which changed; a `PoolStatsSink` decides where they go (a worker's slab, or plain ints in tests).
public enum PoolCounter: Int, CaseIterable, Sendable {
    /// Requests attached to a connection (`upstream_rq_total`).
    case rqTotal
    /// Requests that had to queue (`upstream_rq_pending_total`).
    case rqPendingTotal
    /// Requests refused by `max_pending_requests` or `max_requests` (`upstream_rq_pending_overflow`).
    case rqPendingOverflow
    /// Queued requests failed by a connect failure or a drain (`upstream_rq_pending_failure_eject`).
    case rqPendingFailureEject
    /// Queued requests cancelled by their owner (`upstream_rq_cancelled`).
    case rqCancelled
    /// Connections opened (`upstream_cx_total`).
    case cxTotal
    /// Connects not made because of `max_connections` (`upstream_cx_overflow`).
    case cxOverflow
    /// Connections closed by the idle timeout (`upstream_cx_idle_timeout`).
    case cxIdleTimeout
    /// Connections drained by `max_requests_per_connection` (`upstream_cx_max_requests`).
    case cxMaxRequests
    /// Connections the peer told to go away: GOAWAY, `Connection: close` (`upstream_cx_close_notify`).
    case cxCloseNotify
    /// Connections gone, for any reason, connect failures included (`upstream_cx_destroy`).
    case cxDestroy

    /// Envoy's stat name.
    public var name: String {
        switch self {
        case .rqTotal: "upstream_rq_total"
        case .rqPendingTotal: "upstream_rq_pending_total"
        case .rqPendingOverflow: "upstream_rq_pending_overflow"
        case .rqPendingFailureEject: "upstream_rq_pending_failure_eject"
        case .rqCancelled: "upstream_rq_cancelled"
        case .cxTotal: "upstream_cx_total"
        case .cxOverflow: "upstream_cx_overflow"
        case .cxIdleTimeout: "upstream_cx_idle_timeout"
        case .cxMaxRequests: "upstream_cx_max_requests"
        case .cxCloseNotify: "upstream_cx_close_notify"
        case .cxDestroy: "upstream_cx_destroy"
        }
    }
}

/// Gauges a pool moves up and down; each returns to 0 when the pool is empty.
public enum PoolGauge: Int, CaseIterable, Sendable {
    /// Requests on connections, exclusive ones included (`upstream_rq_active`).
    case rqActive
    /// Requests waiting for a connection (`upstream_rq_pending_active`).
    case rqPendingActive
    /// Open or connecting connections (`upstream_cx_active`).
    case cxActive

    /// Envoy's stat name.
    public var name: String {
        switch self {
        case .rqActive: "upstream_rq_active"
        case .rqPendingActive: "upstream_rq_pending_active"
        case .cxActive: "upstream_cx_active"
        }
    }
}

/// Where a pool's stat changes go. Implementations are value types the state machine is generic
/// over (no existential call per request). Confined to the pool's worker.
public protocol PoolStatsSink {
    /// A counter went up by `n`.
    mutating func count(_ counter: PoolCounter, _ n: Int)
    /// A gauge moved by `delta` (negative: down).
    mutating func adjust(_ gauge: PoolGauge, _ delta: Int)
}

/// The pool's stats as plain integers: what tests assert on, and a sink for a pool with no
/// stats store.
public struct PoolCounters: PoolStatsSink, Equatable, Sendable {
    /// Counter values, indexed by `PoolCounter.rawValue`.
    public private(set) var counters = [Int](repeating: 0, count: PoolCounter.allCases.count)
    /// Gauge values, indexed by `PoolGauge.rawValue`.
    public private(set) var gauges = [Int](repeating: 0, count: PoolGauge.allCases.count)

    /// All zero.
    public init() {}

    /// A counter's value.
    public subscript(_ c: PoolCounter) -> Int { counters[c.rawValue] }
    /// A gauge's value.
    public subscript(_ g: PoolGauge) -> Int { gauges[g.rawValue] }

    /// Adds `n` to the counter.
    public mutating func count(_ counter: PoolCounter, _ n: Int) { counters[counter.rawValue] += n }
    /// Moves the gauge by `delta`.
    public mutating func adjust(_ gauge: PoolGauge, _ delta: Int) { gauges[gauge.rawValue] += delta }
}

/// Handles of a pool's stats in a `StatsStore`, resolved once at config time (registering a name
/// twice returns the same slot, so these add up with `ClusterStats`' handles of the same names).
public struct PoolStatHandles: Sendable {
    /// Indexed by `PoolCounter.rawValue`.
    public let counters: [Counter]
    /// Indexed by `PoolGauge.rawValue`.
    public let gauges: [Gauge]

    /// `prefix`: the scope, e.g. `"cluster.api."`.
    public init(store: StatsStore, prefix: String) {
        counters = PoolCounter.allCases.map { store.counter(prefix + $0.name) }
        gauges = PoolGauge.allCases.map { store.gauge(prefix + $0.name) }
    }
}

/// The production sink: a worker's stats slab and the resolved handles. Confined to that worker.
public struct SlabPoolStats: PoolStatsSink {
    /// The worker's slab (single writer: this worker).
    public let slab: StatsSlab
    /// The cluster's pool stats.
    public let handles: PoolStatHandles

    /// `slab`: the pool's worker's slab.
    public init(slab: StatsSlab, handles: PoolStatHandles) { self.slab = slab; self.handles = handles }

    /// Adds `n` to the counter in the slab.
    @inline(__always) public mutating func count(_ counter: PoolCounter, _ n: Int) {
        slab.add(handles.counters[counter.rawValue], n)
    }

    /// Moves the gauge's per-worker part by `delta` (summed over workers on read).
    @inline(__always) public mutating func adjust(_ gauge: PoolGauge, _ delta: Int) {
        let g = handles.gauges[gauge.rawValue]
        if delta == 1 { slab.inc(g) } else if delta == -1 { slab.dec(g) } else {
            cshim_slot_add(slab.slots + g.slot, UInt64(bitPattern: Int64(delta)))  // two's complement: wraps down
        }
    }
}
