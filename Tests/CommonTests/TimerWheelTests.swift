import Testing
@testable import Common

@Test func wheelFiresAtTheFirstTickAtOrAfterTheDeadlineNeverEarly() {
    let w = TimerWheel(tickMs: 10, slotCount: 8, nowMs: 1000)
    w.arm(afterMs: 25, nowMs: 1000, token: 1)   // due 1025: fires at 1030
    w.arm(afterMs: 10, nowMs: 1000, token: 2)   // due 1010
    w.arm(afterMs: 0, nowMs: 1000, token: 3)    // due now: the next tick
    var fired: [Int] = []
    w.advance(to: 1009) { fired.append($0) }
    #expect(fired == [])
    w.advance(to: 1010) { fired.append($0) }
    #expect(Set(fired) == [2, 3])
    w.advance(to: 1029) { fired.append($0) }
    #expect(fired.count == 2)
    w.advance(to: 1030) { fired.append($0) }
    #expect(fired.last == 1 && w.count == 0 && w.nextTickMs == nil)
}

@Test func wheelKeepsDeadlinesBeyondOneTurnAndCatchesUpAfterALongGap() {
    let w = TimerWheel(tickMs: 10, slotCount: 8, nowMs: 0)   // one turn = 80 ms
    w.arm(afterMs: 205, nowMs: 0, token: 7)                  // 2.5 turns away, same bucket as 45
    w.arm(afterMs: 45, nowMs: 0, token: 8)
    var fired: [Int] = []
    for t in stride(from: 10, through: 200, by: 10) { w.advance(to: UInt64(t)) { fired.append($0) } }
    #expect(fired == [8])
    w.advance(to: 210) { fired.append($0) }
    #expect(fired == [8, 7])
    // A loop stalled for many turns: one advance fires everything due, keeps the rest.
    w.arm(afterMs: 30, nowMs: 210, token: 9)
    w.arm(afterMs: 5000, nowMs: 210, token: 10)
    w.advance(to: 3000) { fired.append($0) }
    #expect(fired == [8, 7, 9] && w.count == 1)
    w.advance(to: 5210) { fired.append($0) }
    #expect(fired == [8, 7, 9, 10] && w.count == 0)
}

@Test func wheelCancelIsO1AndStaleHandlesAreIgnored() {
    let w = TimerWheel(tickMs: 10, slotCount: 4, nowMs: 0)
    let a = w.arm(afterMs: 20, nowMs: 0, token: 1)
    let b = w.arm(afterMs: 20, nowMs: 0, token: 2)   // same bucket as a
    let c = w.arm(afterMs: 20, nowMs: 0, token: 3)
    #expect(w.cancel(b) && !w.cancel(b) && !w.isArmed(b))
    var fired: [Int] = []
    w.advance(to: 20) { fired.append($0) }
    #expect(Set(fired) == [1, 3] && !w.isArmed(a) && !w.isArmed(c))
    // The freed slots are reused; the old handles stay dead.
    let d = w.arm(afterMs: 10, nowMs: 20, token: 4)
    #expect(d.index == a.index || d.index == b.index || d.index == c.index)
    #expect(!w.cancel(a) && !w.cancel(c) && w.isArmed(d))
}

@Test func wheelCallbacksMayArmAndCancel() {
    let w = TimerWheel(tickMs: 10, slotCount: 8, nowMs: 0)
    var handles: [Int: TimerWheel.Handle] = [:]
    handles[1] = w.arm(afterMs: 10, nowMs: 0, token: 1)
    handles[2] = w.arm(afterMs: 10, nowMs: 0, token: 2)
    var fired: [Int] = []
    w.advance(to: 10) { t in
        fired.append(t)
        // Both expired in this call: cancelling the other one finds it already gone.
        _ = w.cancel(handles[3 - t]!)
        if t == 1 { handles[5] = w.arm(afterMs: 10, nowMs: 10, token: 5) }
    }
    #expect(Set(fired) == [1, 2])
    w.advance(to: 20) { fired.append($0) }
    #expect(fired.last == 5 && w.count == 0)
}

@Test func wheelDriverFiresOnTheLoopAndStopsTickingWhenIdle() {
    let store = StatsStore(threads: 2)
    let worker = Worker(index: 0, stats: store.slabs[1], serverStats: ServerStats(store: store))
    var fired: [Int] = []
    let d = TimerWheelDriver(dispatcher: worker.dispatcher, tickMs: 5) { fired.append($0) }
    let start = monotonicMs()
    d.arm(afterMs: 20, token: 1)
    let gone = d.arm(afterMs: 10, token: 2)
    d.cancel(gone)
    runLoop(worker.dispatcher) { !fired.isEmpty }
    #expect(fired == [1] && monotonicMs() - start >= 20)
    #expect(d.wheel.count == 0)
}
