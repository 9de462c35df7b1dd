/// Per-request deadlines on one worker with no allocation per arm: a hashed timing wheel
/// (Varghese and Lauck; Netty's HashedWheelTimer, Kafka's purgatory) of `slotCount` buckets of
/// `tickMs` each. Entries live in parallel arrays reused through a free list and are linked
/// into their bucket, so `arm` and `cancel` are O(1) and allocate nothing once the arrays have
/// grown to the worker's peak of pending deadlines. A deadline further away than one turn of
/// the wheel stays in its bucket and is checked again each turn.
///
/// ```
///  buckets:  [0] → e7 → e2     [1] → ∅     [2] → e5 → ...     (slot = deadline tick % slotCount)
///  advance(now): every tick passed since the last call visits its bucket; entries whose
///  deadline passed are unlinked, freed, then fired (in the order they were visited)
/// ```
///
/// Resolution is `tickMs` (deadlines fire up to one tick late, never early). Pure: time comes
/// in through `advance(to:)`, so tests drive it without a loop; `TimerWheelDriver` ties it to a
/// worker's loop with one libevent timer. Confined to one thread.
public final class TimerWheel {
    /// An armed deadline. A stale handle (fired, cancelled, slot reused) is ignored by `cancel`.
    public struct Handle: Hashable, Sendable {
        let index: Int32
        let generation: UInt32
    }

    public let tickMs: UInt64
    public let slotCount: Int
    private var heads: [Int32]
    // Entry fields, by index.
    private var deadline: [UInt64] = []
    private var token: [Int] = []
    private var next: [Int32] = []
    private var prev: [Int32] = []
    private var bucketOf: [Int32] = []
    private var generation: [UInt32] = []
    private var freeHead: Int32 = -1
    /// The last tick `advance` processed.
    private var currentTick: UInt64
    /// Deadlines armed now.
    public private(set) var count = 0
    /// Expired tokens of one `advance`, reused.
    private var expired: [Int] = []

    public init(tickMs: UInt64 = 10, slotCount: Int = 512, nowMs: UInt64) {
        precondition(tickMs > 0 && slotCount > 0, "a wheel needs ticks and slots")
        self.tickMs = tickMs
        self.slotCount = slotCount
        heads = Array(repeating: -1, count: slotCount)
        currentTick = nowMs / tickMs
    }

    /// Arms a deadline `afterMs` from `nowMs`; `token` comes back to `advance`'s callback.
    @discardableResult
    public func arm(afterMs: UInt64, nowMs: UInt64, token t: Int) -> Handle {
        let due = nowMs &+ afterMs
        // Never in a bucket already passed: at the earliest, the next tick.
        let tick = max((due + tickMs - 1) / tickMs, currentTick + 1)
        let i: Int32
        if freeHead >= 0 {
            i = freeHead
            freeHead = next[Int(i)]
        } else {
            i = Int32(deadline.count)
            deadline.append(0); token.append(0); next.append(-1); prev.append(-1)
            bucketOf.append(-1); generation.append(0)
        }
        let k = Int(i)
        deadline[k] = due
        token[k] = t
        let b = Int32(Int(tick % UInt64(slotCount)))
        bucketOf[k] = b
        prev[k] = -1
        next[k] = heads[Int(b)]
        if next[k] >= 0 { prev[Int(next[k])] = i }
        heads[Int(b)] = i
        count += 1
        return Handle(index: i, generation: generation[k])
    }

    /// Disarms `h` if it is still armed. True when it was.
    @discardableResult
    public func cancel(_ h: Handle) -> Bool {
        let k = Int(h.index)
        guard k < deadline.count, generation[k] == h.generation, bucketOf[k] >= 0 else { return false }
        unlinkAndFree(k)
        return true
    }

    /// Whether `h` is still armed.
    public func isArmed(_ h: Handle) -> Bool {
        let k = Int(h.index)
        return k < deadline.count && generation[k] == h.generation && bucketOf[k] >= 0
    }

    /// Processes every tick up to `nowMs`: each expired deadline's token goes to `fire`, after
    /// all of this call's expired entries were unlinked (so `fire` may arm or cancel freely).
    public func advance(to nowMs: UInt64, _ fire: (Int) -> Void) {
        let target = nowMs / tickMs
        guard target > currentTick else { return }
        expired.removeAll(keepingCapacity: true)
        // More ticks than buckets: one visit of every bucket covers them all.
        let steps = min(target - currentTick, UInt64(slotCount))
        var tick = target - steps + 1
        while tick <= target {
            var i = heads[Int(tick % UInt64(slotCount))]
            while i >= 0 {
                let k = Int(i)
                let n = next[k]
                if deadline[k] <= nowMs {
                    expired.append(token[k])
                    unlinkAndFree(k)
                }
                i = n
            }
            tick += 1
        }
        currentTick = target
        for t in expired { fire(t) }
    }

    /// When the next tick with anything to do may be: nil when nothing is armed.
    public var nextTickMs: UInt64? { count == 0 ? nil : (currentTick + 1) * tickMs }

    private func unlinkAndFree(_ k: Int) {
        let b = Int(bucketOf[k])
        if prev[k] >= 0 { next[Int(prev[k])] = next[k] } else { heads[b] = next[k] }
        if next[k] >= 0 { prev[Int(next[k])] = prev[k] }
        bucketOf[k] = -1
        generation[k] &+= 1
        next[k] = freeHead
        freeHead = Int32(k)
        count -= 1
    }
}

/// Drives a `TimerWheel` from a worker's loop: one libevent timer, armed for the next tick
/// only while deadlines are pending (an idle worker takes no wake-ups). Owners arm through
/// `arm`, which starts the ticking when needed; `onExpire` gets each expired token.
public final class TimerWheelDriver {
    public let wheel: TimerWheel
    private var timer: Timer?
    private var ticking = false
    private let onExpire: (Int) -> Void

    public init(dispatcher: Dispatcher, tickMs: UInt64 = 10, onExpire: @escaping (Int) -> Void) {
        wheel = TimerWheel(tickMs: tickMs, nowMs: monotonicMs())
        self.onExpire = onExpire
        timer = Timer(dispatcher) { [unowned self] in tick() }
    }

    @discardableResult
    public func arm(afterMs: UInt64, token: Int) -> TimerWheel.Handle {
        let h = wheel.arm(afterMs: afterMs, nowMs: monotonicMs(), token: token)
        if !ticking { ticking = true; timer?.arm(ms: wheel.tickMs) }
        return h
    }

    @discardableResult
    public func cancel(_ h: TimerWheel.Handle) -> Bool { wheel.cancel(h) }

    private func tick() {
        wheel.advance(to: monotonicMs(), onExpire)
        if wheel.count > 0 { timer?.arm(ms: wheel.tickMs) } else { ticking = false }
    }
}
