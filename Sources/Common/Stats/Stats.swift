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

    init(capacity: Int) {
        self.capacity = capacity
        slots = .allocate(capacity: capacity)
        slots.initialize(repeating: 0, count: capacity)
    }

    deinit { slots.deallocate() }

    @inlinable public func inc(_ c: Counter) { cshim_slot_add(slots + c.slot, 1) }
    @inlinable public func add(_ c: Counter, _ n: Int) { cshim_slot_add(slots + c.slot, UInt64(n)) }
    @inlinable public func inc(_ g: Gauge) { cshim_slot_add(slots + g.slot, 1) }
    @inlinable public func dec(_ g: Gauge) { cshim_slot_sub(slots + g.slot, 1) }
    @inlinable public func add(_ g: Gauge, _ n: Int) { cshim_slot_add(slots + g.slot, UInt64(n)) }
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
    /// Slots per slab: the most stats (histograms count 21) the process can register.
    public static let capacity = 65536

    public init(threads: Int) {
        slabs = (0..<threads).map { _ in StatsSlab(capacity: StatsStore.capacity) }
    }

    /// The slab of the main thread.
    public var mainSlab: StatsSlab { slabs[0] }

    private func register(_ name: String, _ kind: StatKind, slots: Int) -> Int {
        registry.withLock { r in
            if let e = r.byName[name] {
                precondition(e.kind == kind, "stat \(name) registered twice with different kinds")
                return e.slot
            }
            precondition(r.nextSlot + slots <= StatsStore.capacity, "stats capacity exhausted")
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
