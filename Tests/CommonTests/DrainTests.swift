import Testing
@testable import Common

/// A session that records what the worker tells it.
private final class FakeSession: ActiveSession {
    var drained = 0
    var closed = 0
    func onDrain() { drained += 1 }
    func forceClose() { closed += 1 }
}

/// A session that keeps the default (a TCP relay has nothing to say when draining).
private final class QuietSession: ActiveSession {
    var closed = 0
    func forceClose() { closed += 1 }
}

@Test func drainTellsEverySessionOnceAndCloseAllEndsThem() {
    let store = StatsStore(threads: 2)
    let worker = Worker(index: 0, stats: store.slabs[1], serverStats: ServerStats(store: store))
    let a = FakeSession(), b = FakeSession(), quiet = QuietSession()
    worker.track(a); worker.track(b); worker.track(quiet)
    #expect(!worker.draining)
    worker.drain()
    #expect(worker.draining)
    #expect(a.drained == 1 && b.drained == 1)
    worker.drain()  // a second SIGTERM or /drain_listeners: nothing new to say
    #expect(a.drained == 1 && b.drained == 1)
    // A session that ended is not told anything.
    worker.untrack(b)
    worker.closeAll()
    #expect(a.closed == 1 && b.closed == 0 && quiet.closed == 1)
}
