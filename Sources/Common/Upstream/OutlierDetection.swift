import Synchronization

/// `clusters[i].outlier_detection`: passive ejection of hosts that keep failing.
public struct OutlierDetectionConfig: Sendable {
    /// `consecutive_failures` (default 5, Envoy's consecutive_5xx): connect failures, resets or
    /// (for HTTP) 5xx in a row that eject a host.
    public var consecutiveFailures = 5
    /// `base_ejection_time` (default 30s): an ejection lasts this × the host's ejection count.
    public var baseEjectionMs: UInt64 = 30_000
    /// `max_ejection_time` (default 300s): the cap on one ejection.
    public var maxEjectionMs: UInt64 = 300_000
    /// `max_ejection_percent` (default 10): at most this share of hosts ejected at once
    /// (at least one host may always be ejected).
    public var maxEjectionPercent = 10
    /// `interval` (default 10s, Envoy's): each interval, a host that is not ejected has its
    /// ejection multiplier lowered by one, so a host that recovered is forgiven over time.
    public var intervalMs: UInt64 = 10_000
    public init() {}
}

/// One host's failure streak, shared by every worker (relaxed atomics; a worker that sees the
/// streak reach the threshold reports it to the main thread, which decides).
public final class OutlierCounter: Sendable {
    private let streak = Atomic<Int>(0)
    public let threshold: Int
    /// Posts "this host reached the threshold" to the main thread.
    private let report: @Sendable () -> Void

    public init(threshold: Int, report: @escaping @Sendable () -> Void) {
        self.threshold = threshold; self.report = report
    }

    /// A failure (connect refused/timeout, reset, 5xx). Reports exactly once per streak.
    public func failure() {
        if streak.wrappingAdd(1, ordering: .relaxed).newValue == threshold { report() }
    }

    /// A success ends the streak (no write when there is none: no cache-line traffic).
    public func success() {
        if streak.load(ordering: .relaxed) != 0 { streak.store(0, ordering: .relaxed) }
    }

    public func reset() { streak.store(0, ordering: .relaxed) }
}

/// Envoy's outlier stats, `cluster.<name>.outlier_detection.*`.
struct OutlierStats: Sendable {
    let ejectionsActive: Gauge
    let ejectionsTotal: Counter
    let ejectionsEnforcedConsecutiveFailure: Counter
    let ejectionsOverflow: Counter

    init(store: StatsStore, cluster: String) {
        let p = "cluster.\(cluster).outlier_detection."
        ejectionsActive = store.gauge(p + "ejections_active")
        ejectionsTotal = store.counter(p + "ejections_total")
        ejectionsEnforcedConsecutiveFailure = store.counter(p + "ejections_enforced_consecutive_failure")
        ejectionsOverflow = store.counter(p + "ejections_overflow")
    }
}

/// A reference to a main-thread object, dereferenced only on the main thread (inside a closure
/// posted to the main dispatcher). The object outlives the process's loops.
public struct MainThreadRef<T: AnyObject>: @unchecked Sendable {  // thread boundary: dereferenced only on the main thread
    private let ptr: Unmanaged<T>
    public init(_ o: T) { ptr = .passUnretained(o) }
    public var object: T { ptr.takeUnretainedValue() }
}
