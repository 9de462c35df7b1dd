import CShim
import Glibc
import Synchronization

/// A counter handle: a slot index resolved once at config time. Increment through a worker's
/// `StatsSlab`; never look a stat up by name in the data path.
public struct Counter: Sendable, Hashable { public let slot: Int }
/// A gauge handle (a value that goes up and down; per-thread parts are summed on read).
public struct Gauge: Sendable, Hashable { public let slot: Int }
/// A histogram handle: slots for count, sum, then one per bucket of `Histogram.bucketsMs`.
public struct Histogram: Sendable, Hashable {
    public let slot: Int
    /// Envoy's default bucket bounds, in milliseconds.
    public static let bucketsMs: [Double] = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
                                             10000, 30000, 60000, 300000, 600000, 1800000, 3600000]
    static var slotCount: Int { 2 + bucketsMs.count }
}

/// The kind of a registered stat.
public enum StatKind: Sendable { case counter, gauge, histogram }

/// One thread's stat values. Only its owning thread writes (relaxed load + store, no RMW);
/// the admin thread reads with relaxed loads and sums over threads.
public final class StatsSlab: @unchecked Sendable {  // raw memory, single writer, relaxed atomics via CShim
    @usableFromInline let slots: UnsafeMutablePointer<UInt64>
    let capacity: Int
    /// The owning thread's index in its store (0 = main thread, 1...N = workers): the row it
    /// writes in per-object stats such as `HostStats`.
    public let thread: Int

    init(capacity: Int, thread: Int) {
        self.capacity = capacity
        self.thread = thread
        slots = .allocate(capacity: capacity)
        slots.initialize(repeating: 0, count: capacity)
    }

    deinit { slots.deallocate() }

    @inlinable public func inc(_ c: Counter) { cshim_slot_add(slots + c.slot, 1) }
    @inlinable public func add(_ c: Counter, _ n: Int) { cshim_slot_add(slots + c.slot, UInt64(n)) }
    @inlinable public func inc(_ g: Gauge) { cshim_slot_add(slots + g.slot, 1) }
    @inlinable public func dec(_ g: Gauge) { cshim_slot_sub(slots + g.slot, 1) }
    @inlinable public func add(_ g: Gauge, _ n: Int) { cshim_slot_add(slots + g.slot, UInt64(n)) }
    /// Lowers a gauge by `n` (n ≥ 0).
    @inlinable public func sub(_ g: Gauge, _ n: Int) { cshim_slot_sub(slots + g.slot, UInt64(n)) }
    @inlinable public func set(_ g: Gauge, _ v: Int) { cshim_slot_store(slots + g.slot, UInt64(bitPattern: Int64(v))) }
    /// Records a value (milliseconds) into a histogram.
    public func record(_ h: Histogram, _ ms: UInt64) {
        cshim_slot_add(slots + h.slot, 1)
        cshim_slot_add(slots + h.slot + 1, ms)
        let v = Double(ms)
        var i = 0
        for b in Histogram.bucketsMs { if v <= b { break }; i += 1 }
        if i < Histogram.bucketsMs.count { cshim_slot_add(slots + h.slot + 2 + i, 1) }
    }

    @inline(__always) func load(_ slot: Int) -> UInt64 { cshim_slot_load(slots + slot) }
}

/// All stats of the process: names registered at config time, and one slab per thread
/// (index 0 = main thread, 1...N = workers). Thread-safe; reads sum over slabs.
public final class StatsStore: Sendable {
    private struct Entry: Sendable { let name: String; let kind: StatKind; let slot: Int }
    private struct Registry: Sendable {
        var byName: [String: Entry] = [:]
        var nextSlot = 0
    }
    private let registry = Locked(Registry())
    /// One slab per thread.
    public let slabs: [StatsSlab]
    /// Slots per slab: the most stats (histograms count 21) the process can register. Per-host
    /// stats are not here (`HostStats`), so this bounds clusters and listeners, not hosts.
    public static let capacity = 65536
    /// Slots at the end of every slab that absorb the writes of stats registered after the
    /// store was full: such stats read 0 and are counted, never a crash.
    static let sinkSlots = 32
    /// `server.stats_overflow`: stats that could not be registered (the store was full). The
    /// first stat registered, so its slot is known before the registry is.
    public let overflow = Counter(slot: 0)

    public init(threads: Int) {
        slabs = (0..<threads).map { StatsSlab(capacity: StatsStore.capacity, thread: $0) }
        let c = counter("server.stats_overflow")
        precondition(c == overflow, "server.stats_overflow must be the first stat")
    }

    /// The slab of the main thread.
    public var mainSlab: StatsSlab { slabs[0] }

    private func register(_ name: String, _ kind: StatKind, slots: Int) -> Int {
        registry.withLock { r in
            if let e = r.byName[name] {
                precondition(e.kind == kind, "stat \(name) registered twice with different kinds")
                return e.slot
            }
            if r.nextSlot + slots > StatsStore.capacity - StatsStore.sinkSlots {
                // Full (a config with thousands of clusters): the stat works but is not kept.
                cshim_slot_add(slabs[0].slots + overflow.slot, 1)
                return StatsStore.capacity - StatsStore.sinkSlots
            }
            let e = Entry(name: name, kind: kind, slot: r.nextSlot)
            r.nextSlot += slots
            r.byName[name] = e
            return e.slot
        }
    }

    public func counter(_ name: String) -> Counter { Counter(slot: register(name, .counter, slots: 1)) }
    public func gauge(_ name: String) -> Gauge { Gauge(slot: register(name, .gauge, slots: 1)) }
    public func histogram(_ name: String) -> Histogram {
        Histogram(slot: register(name, .histogram, slots: Histogram.slotCount))
    }

    /// A counter or gauge value summed over threads (gauges as signed).
    public func value(_ name: String) -> Int64? {
        guard let e = registry.withLock({ $0.byName[name] }) else { return nil }
        return sum(e.slot)
    }

    private func sum(_ slot: Int) -> Int64 {
        var total: UInt64 = 0
        for s in slabs { total &+= s.load(slot) }
        return Int64(bitPattern: total)
    }

    /// A merged histogram: count, sum and cumulative-free per-bucket counts.
    public struct HistogramValue: Sendable {
        public let count: UInt64
        public let sum: UInt64
        public let buckets: [UInt64]
    }

    /// A snapshot of every stat, sorted by name.
    public struct Snapshot: Sendable {
        public var counters: [(String, Int64)] = []
        public var gauges: [(String, Int64)] = []
        public var histograms: [(String, HistogramValue)] = []
    }

    public func snapshot() -> Snapshot {
        let entries = registry.withLock { Array($0.byName.values) }.sorted { $0.name < $1.name }
        var snap = Snapshot()
        for e in entries {
            switch e.kind {
            case .counter: snap.counters.append((e.name, sum(e.slot)))
            case .gauge: snap.gauges.append((e.name, sum(e.slot)))
            case .histogram:
                let buckets = (0..<Histogram.bucketsMs.count).map { UInt64(bitPattern: sum(e.slot + 2 + $0)) }
                snap.histograms.append((e.name, HistogramValue(
                    count: UInt64(bitPattern: sum(e.slot)), sum: UInt64(bitPattern: sum(e.slot + 1)), buckets: buckets)))
            }
        }
        return snap
    }
}

/// One upstream host's counters, owned by the cluster's runtime on the main thread and shared by
/// every snapshot that lists the host, so they survive health flips and reloads; freed with the
/// last snapshot that names the host (a host removed by discovery releases them: churn in DNS
/// or in an endpoints file cannot exhaust anything). One cache line per thread: a worker writes
/// only its own row (relaxed atomics, no RMW), readers sum the rows.
public final class HostStats: @unchecked Sendable {  // raw memory, one writer per row, relaxed atomics via CShim
    /// The per-host stats, by slot in a row. Envoy's names, shown by /clusters.
    public enum Field: Int, CaseIterable, Sendable {
        case cxTotal, cxActive, cxConnectFail, rqTotal, rqActive, rqError, rqTimeout, rqSuccess
        public var name: String {
            switch self {
            case .cxTotal: "cx_total"
            case .cxActive: "cx_active"
            case .cxConnectFail: "cx_connect_fail"
            case .rqTotal: "rq_total"
            case .rqActive: "rq_active"
            case .rqError: "rq_error"
            case .rqTimeout: "rq_timeout"
            case .rqSuccess: "rq_success"
            }
        }
        /// Gauges go up and down; the rest only count.
        public var isGauge: Bool { self == .cxActive || self == .rqActive }
    }
    static let rowSlots = 8
    @usableFromInline let slots: UnsafeMutablePointer<UInt64>
    private let threads: Int

    /// Rows for `threads` threads (the store's slab count).
    public init(threads: Int) {
        self.threads = threads
        // Cache-line aligned, so two workers' rows never share a line.
        let raw = UnsafeMutableRawPointer.allocate(byteCount: threads * HostStats.rowSlots * 8, alignment: 64)
        slots = raw.bindMemory(to: UInt64.self, capacity: threads * HostStats.rowSlots)
        slots.initialize(repeating: 0, count: threads * HostStats.rowSlots)
    }

    deinit { slots.deallocate() }

    @inlinable public func inc(_ f: Field, _ slab: StatsSlab) { cshim_slot_add(slots + (slab.thread &* 8 &+ f.rawValue), 1) }
    @inlinable public func dec(_ f: Field, _ slab: StatsSlab) { cshim_slot_sub(slots + (slab.thread &* 8 &+ f.rawValue), 1) }

    /// The value summed over threads (gauges as signed).
    public func value(_ f: Field) -> Int64 {
        var total: UInt64 = 0
        for t in 0..<threads { total &+= cshim_slot_load(slots + t * HostStats.rowSlots + f.rawValue) }
        return Int64(bitPattern: total)
    }
}
