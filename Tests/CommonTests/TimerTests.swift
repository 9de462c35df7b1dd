import Testing
@testable import Common

/// A timer on a real loop, and how often it fired.
private final class Probe {
    var fired = 0
    var firedAt: UInt64 = 0
}

private func probe(_ d: Dispatcher) -> (Timer, Probe) {
    let p = Probe()
    let t = Timer(d) { p.fired += 1; p.firedAt = monotonicMs() }
    return (t, p)
}

@Test func armedTimerFiresOnceAfterItsDelay() {
    let d = Dispatcher(name: "timer-test")
    let (t, p) = probe(d)
    let start = monotonicMs()
    t.arm(ms: 30)
    #expect(t.isArmed)
    #expect(runLoop(d) { p.fired > 0 })
    #expect(p.fired == 1 && !t.isArmed)
    #expect(p.firedAt - start >= 20, "fired after \(p.firedAt - start) ms")  // coarse clock: a few ms
    // One-shot: a later timer fires and this one has not again.
    let (later, q) = probe(d)
    later.arm(ms: 60)
    #expect(runLoop(d) { q.fired > 0 })
    #expect(p.fired == 1)
}

@Test func cancelledTimerNeverFires() {
    let d = Dispatcher(name: "timer-test")
    let (t, p) = probe(d)
    let (sentinel, s) = probe(d)
    t.arm(ms: 10)
    sentinel.arm(ms: 80)  // well after `t` would have fired
    t.cancel()
    #expect(!t.isArmed)
    #expect(runLoop(d) { s.fired > 0 })
    #expect(p.fired == 0)
    t.cancel()  // cancelling an idle timer is harmless
    // A cancelled timer can be armed again.
    t.arm(ms: 10)
    #expect(runLoop(d) { p.fired > 0 })
    #expect(p.fired == 1)
}

@Test func rearmingReplacesTheDeadline() {
    let d = Dispatcher(name: "timer-test")
    let (t, p) = probe(d)
    // Armed for an hour, re-armed for 10 ms: it fires once, soon (the loop gives up after 5 s).
    t.arm(ms: 3_600_000)
    t.arm(ms: 10)
    #expect(runLoop(d) { p.fired > 0 })
    // Armed for 10 ms, pushed back to 150 ms: the earlier deadline is gone.
    let (sentinel, s) = probe(d)
    let start = monotonicMs()
    t.arm(ms: 10)
    t.arm(ms: 150)
    sentinel.arm(ms: 60)
    #expect(runLoop(d) { s.fired > 0 })
    #expect(p.fired == 1, "the replaced 10 ms deadline fired")
    #expect(runLoop(d) { p.fired > 1 })
    #expect(p.fired == 2 && p.firedAt - start >= 140)
}

@Test func timerRearmedFromItsCallbackRepeats() {
    // How periodic work is done (the access-log flush): the callback arms its own timer again.
    let d = Dispatcher(name: "timer-test")
    var ticks = 0
    var t: Timer?
    t = Timer(d) {
        ticks += 1
        if ticks < 3 { t?.arm(ms: 5) }
    }
    t?.arm(ms: 5)
    #expect(runLoop(d) { ticks == 3 })
    #expect(t?.isArmed == false)
    // ... and stops when it does not.
    let (sentinel, s) = probe(d)
    sentinel.arm(ms: 40)
    #expect(runLoop(d) { s.fired > 0 })
    #expect(ticks == 3)
    t = nil
}
