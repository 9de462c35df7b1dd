import Testing
@testable import Common

// The pool's state machine, driven with a fake clock and no I/O: every test asserts the exact
// actions each event produced and the counters, so a changed decision fails it.

/// Connection id of a slot (generation 0 unless reused).
private func cx(_ slot: Int32, _ generation: UInt32 = 0) -> PoolConnectionID {
    PoolConnectionID(slot: slot, generation: generation)
}

/// Request id of a slot (generation 0 unless reused).
private func rq(_ slot: Int32, _ generation: UInt32 = 0) -> PoolRequestID {
    PoolRequestID(slot: slot, generation: generation)
}

/// A state machine, a fake clock, and each event's actions returned.
private final class Harness {
    var pool: PoolStateMachine<PoolCounters>
    var now: UInt64 = 10_000

    init(_ config: PoolConfig) { pool = PoolStateMachine(config: config, stats: PoolCounters()) }

    var stats: PoolCounters { pool.stats }

    func checkout(exclusive: Bool = false) -> (PoolCheckoutResult, [PoolAction]) {
        var a: [PoolAction] = []
        let r = pool.checkout(exclusive: exclusive, nowMs: now, into: &a)
        return (r, a)
    }

    func cancel(_ r: PoolRequestID) -> Bool { pool.cancel(r) }

    func connected(_ c: PoolConnectionID, capacity: Int) -> [PoolAction] {
        var a: [PoolAction] = []
        pool.connected(c, capacity: capacity, nowMs: now, into: &a)
        return a
    }

    func connectFailed(_ c: PoolConnectionID, _ f: PoolConnectFailure = .failed) -> [PoolAction] {
        var a: [PoolAction] = []
        pool.connectFailed(c, f, nowMs: now, into: &a)
        return a
    }

    func finished(_ c: PoolConnectionID) -> [PoolAction] {
        var a: [PoolAction] = []
        pool.requestFinished(c, nowMs: now, into: &a)
        return a
    }

    func capacity(_ c: PoolConnectionID, _ n: Int) -> [PoolAction] {
        var a: [PoolAction] = []
        pool.capacityChanged(c, capacity: n, nowMs: now, into: &a)
        return a
    }

    func goAway(_ c: PoolConnectionID) -> [PoolAction] {
        var a: [PoolAction] = []
        pool.goAway(c, nowMs: now, into: &a)
        return a
    }

    func closed(_ c: PoolConnectionID) -> [PoolAction] {
        var a: [PoolAction] = []
        pool.connectionClosed(c, nowMs: now, into: &a)
        return a
    }

    func idleTimer(_ c: PoolConnectionID) -> [PoolAction] {
        var a: [PoolAction] = []
        pool.idleTimerFired(c, nowMs: now, into: &a)
        return a
    }

    func drain() -> [PoolAction] {
        var a: [PoolAction] = []
        pool.drainConnections(nowMs: now, into: &a)
        return a
    }

    /// Envoy's teardown check: once every connection is gone, every gauge is back to 0.
    func expectGaugesZero(sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(pool.isIdle, sourceLocation: sourceLocation)
        for g in PoolGauge.allCases {
            #expect(stats[g] == 0, "\(g.name)", sourceLocation: sourceLocation)
        }
        #expect(stats[.cxTotal] == stats[.cxDestroy], sourceLocation: sourceLocation)
    }
}

private let http1 = PoolConfig(expectedCapacity: 1, idleTimeoutMs: 60_000)
private let http2 = PoolConfig(expectedCapacity: 100, idleTimeoutMs: 60_000)

// MARK: - Capacity

@Test func http1ClientTakesOneRequestAtATimeAndReusesTheMostRecentlyUsed() {
    let h = Harness(http1)
    var (r, a) = h.checkout()
    #expect(r == .queued(rq(0)))
    #expect(a == [.connect(cx(0))])
    #expect(h.connected(cx(0), capacity: 1) == [.attach(rq(0), to: cx(0), exclusive: false)])

    // cx0 is busy: a second request needs a second connection.
    (r, a) = h.checkout()
    #expect(r == .queued(rq(0, 1)))  // the request slot was reused
    #expect(a == [.connect(cx(1))])
    // cx0 frees first: the queued request takes it; cx1 comes up to nothing and idles.
    #expect(h.finished(cx(0)) == [.attach(rq(0, 1), to: cx(0), exclusive: false)])
    #expect(h.connected(cx(1), capacity: 1) == [.armIdleTimer(cx(1), ms: 60_000)])
    #expect(h.finished(cx(0)) == [.armIdleTimer(cx(0), ms: 60_000)])

    // Both idle: checkout takes the most recently used (cx0), then the other.
    (r, a) = h.checkout()
    #expect(r == .attached(cx(0)) && a.isEmpty)
    (r, a) = h.checkout()
    #expect(r == .attached(cx(1)) && a.isEmpty)
    #expect(h.pool.connection(cx(0))! == (.ready, 1, 1, false))

    #expect(h.stats[.rqTotal] == 4)
    #expect(h.stats[.rqPendingTotal] == 2)
    #expect(h.stats[.cxTotal] == 2)
    #expect(h.stats[.rqActive] == 2)
    #expect(h.stats[.rqPendingActive] == 0)
    #expect(h.stats[.cxActive] == 2)
}

@Test func http2ClientTakesDeclaredCapacityAndPacksStreams() {
    let h = Harness(http2)
    #expect(h.checkout() == (.queued(rq(0)), [.connect(cx(0))]))
    // Expected capacity 100: the next two wait for the same connect.
    #expect(h.checkout() == (.queued(rq(1)), []))
    #expect(h.checkout() == (.queued(rq(2)), []))
    // The peer allows only 2 streams: the third needs another connection.
    #expect(h.connected(cx(0), capacity: 2) == [
        .attach(rq(0), to: cx(0), exclusive: false),
        .attach(rq(1), to: cx(0), exclusive: false),
        .connect(cx(1)),
    ])
    // SETTINGS raises it to 3 before cx1 is up: the third moves in.
    #expect(h.capacity(cx(0), 3) == [.attach(rq(2), to: cx(0), exclusive: false)])
    #expect(h.connected(cx(1), capacity: 100) == [.armIdleTimer(cx(1), ms: 60_000)])
    // cx0 is full; cx1 is idle, then partly busy: new streams pack onto it.
    #expect(h.checkout() == (.attached(cx(1)), []))
    #expect(h.checkout() == (.attached(cx(1)), []))
    // A stream ends on cx0: busy connections with room come before idle ones, newest first.
    #expect(h.finished(cx(0)) == [])
    #expect(h.checkout() == (.attached(cx(0)), []))
    #expect(h.pool.connection(cx(0))! == (.ready, 3, 3, false))
    #expect(h.pool.connection(cx(1))! == (.ready, 2, 100, false))
    #expect(h.stats[.rqTotal] == 6)
    #expect(h.stats[.rqActive] == 5)
    #expect(h.stats[.cxTotal] == 2)
    // cx1 goes idle (the most recently used), cx0 has room again: the busy one still comes first,
    // so cx1 can reach its idle timeout.
    #expect(h.finished(cx(1)) == [])
    #expect(h.finished(cx(1)) == [])  // idle again; the timer armed when it came up still runs
    #expect(h.finished(cx(0)) == [])
    #expect(h.checkout() == (.attached(cx(0)), []))
}

@Test func aRevisedExpectedCapacityDecidesLaterConnects() {
    // protocol: auto: one request per connect until a host's ALPN said h2.
    let h = Harness(http1)
    #expect(h.checkout() == (.queued(rq(0)), [.connect(cx(0))]))
    #expect(h.checkout() == (.queued(rq(1)), [.connect(cx(1))]))
    h.pool.setExpectedCapacity(100)
    #expect(h.pool.config.expectedCapacity == 100)
    // Two connects in flight now cover far more than the queue: no third.
    #expect(h.checkout() == (.queued(rq(2)), []))
    #expect(h.connected(cx(0), capacity: 100) == [
        .attach(rq(0), to: cx(0), exclusive: false),
        .attach(rq(1), to: cx(0), exclusive: false),
        .attach(rq(2), to: cx(0), exclusive: false),
    ])
    // Back to one (the host now says http/1.1): each queued request needs its own connect,
    // opened at the next event.
    h.pool.setExpectedCapacity(1)
    #expect(h.checkout() == (.attached(cx(0)), []))
    #expect(h.connected(cx(1), capacity: 1) == [.armIdleTimer(cx(1), ms: 60_000)])
}

@Test func capacityLoweredBelowActiveTakesNoRequestUntilBelowIt() {
    let h = Harness(http2)
    _ = h.checkout()
    _ = h.connected(cx(0), capacity: 4)
    #expect(h.checkout() == (.attached(cx(0)), []))
    #expect(h.checkout() == (.attached(cx(0)), []))
    #expect(h.pool.connection(cx(0))!.active == 3)
    // SETTINGS_MAX_CONCURRENT_STREAMS = 1 with 3 streams open.
    #expect(h.capacity(cx(0), 1) == [])
    #expect(h.checkout() == (.queued(rq(0, 1)), [.connect(cx(1))]))
    #expect(h.finished(cx(0)) == [])  // 2 left, over capacity
    #expect(h.finished(cx(0)) == [])  // 1 left, at capacity
    #expect(h.finished(cx(0)) == [.attach(rq(0, 1), to: cx(0), exclusive: false)])
    // Capacity back up: room again at once.
    #expect(h.capacity(cx(0), 10) == [])
    #expect(h.checkout() == (.attached(cx(0)), []))
    #expect(h.connected(cx(1), capacity: 10) == [.armIdleTimer(cx(1), ms: 60_000)])
    // Capacity 0 on an idle connection: it takes nothing, the other does.
    #expect(h.finished(cx(0)) == [])
    #expect(h.finished(cx(0)) == [.armIdleTimer(cx(0), ms: 60_000)])
    #expect(h.capacity(cx(0), 0) == [])
    #expect(h.checkout() == (.attached(cx(1)), []))
}

// MARK: - Pending queue and breakers

@Test func pendingQueueIsBoundedAndOverflowIsCounted() {
    let pending = SharedCount()
    let h = Harness(PoolConfig(expectedCapacity: 1, idleTimeoutMs: nil,
                               maxConnections: PoolBreaker(count: SharedCount(), limit: 1),
                               maxPendingRequests: PoolBreaker(count: pending, limit: 2)))
    #expect(h.checkout() == (.queued(rq(0)), [.connect(cx(0))]))
    #expect(h.checkout() == (.queued(rq(1)), []))  // max_connections: wait, no connect
    #expect(h.stats[.cxOverflow] == 1)
    #expect(h.checkout() == (.failed(.pendingOverflow), []))
    #expect(h.stats[.rqPendingOverflow] == 1)
    #expect(h.stats[.rqPendingActive] == 2)
    #expect(h.stats[.rqPendingTotal] == 2)
    #expect(pending.current == 2)
    // Cancelling one frees a place in the queue.
    #expect(h.cancel(rq(1)))
    #expect(pending.current == 1)
    #expect(h.checkout() == (.queued(rq(1, 1)), []))
    #expect(h.stats[.cxOverflow] == 2)
    // Attaching frees places too.
    #expect(h.connected(cx(0), capacity: 1) == [.attach(rq(0), to: cx(0), exclusive: false)])
    #expect(pending.current == 1)
    #expect(h.finished(cx(0)) == [.attach(rq(1, 1), to: cx(0), exclusive: false)])
    #expect(pending.current == 0)
    #expect(h.stats[.rqPendingOverflow] == 1)
}

@Test func maxRequestsBreakerRefusesAttachAsEnvoyCountsIt() {
    let requests = SharedCount()
    let h = Harness(PoolConfig(expectedCapacity: 10, idleTimeoutMs: nil,
                               maxRequests: PoolBreaker(count: requests, limit: 2)))
    #expect(h.checkout() == (.queued(rq(0)), [.connect(cx(0))]))
    #expect(h.checkout() == (.queued(rq(1)), []))
    #expect(h.checkout() == (.queued(rq(2)), []))
    // Room for 10 streams, but only 2 requests may be active: the third is failed on attach.
    #expect(h.connected(cx(0), capacity: 10) == [
        .attach(rq(0), to: cx(0), exclusive: false),
        .attach(rq(1), to: cx(0), exclusive: false),
        .fail(rq(2), .requestOverflow),
    ])
    #expect(h.checkout() == (.failed(.requestOverflow), []))
    #expect(h.stats[.rqPendingOverflow] == 2)  // Envoy's name for both breakers
    #expect(requests.current == 2)
    #expect(h.finished(cx(0)) == [])
    #expect(requests.current == 1)
    #expect(h.checkout() == (.attached(cx(0)), []))
    #expect(h.stats[.rqActive] == 2)
    #expect(h.stats[.rqPendingActive] == 0)
}

@Test func cancelledQueuedRequestIsNeverAttached() {
    let h = Harness(http1)
    #expect(h.checkout() == (.queued(rq(0)), [.connect(cx(0))]))
    #expect(h.checkout() == (.queued(rq(1)), [.connect(cx(1))]))
    #expect(h.cancel(rq(0)))
    #expect(!h.cancel(rq(0)))  // already gone
    #expect(h.stats[.rqCancelled] == 1)
    #expect(h.stats[.rqPendingActive] == 1)
    // The first connection serves the request still waiting; the second one, opened for the
    // cancelled request, stays and idles (Envoy's default cancel policy).
    #expect(h.connected(cx(0), capacity: 1) == [.attach(rq(1), to: cx(0), exclusive: false)])
    #expect(h.connected(cx(1), capacity: 1) == [.armIdleTimer(cx(1), ms: 60_000)])
    #expect(!h.cancel(rq(1)))  // attached: not cancellable here
    #expect(h.stats[.rqCancelled] == 1)
    #expect(h.stats[.rqTotal] == 1)
    #expect(h.stats[.cxActive] == 2)
}

// MARK: - Idle timeout

@Test func idleConnectionClosesAfterIdleTimeoutOnFakeClock() {
    let h = Harness(PoolConfig(expectedCapacity: 1, idleTimeoutMs: 1000))
    _ = h.checkout()
    #expect(h.connected(cx(0), capacity: 1) == [.attach(rq(0), to: cx(0), exclusive: false)])
    let t0 = h.now
    h.now = t0 + 100
    #expect(h.finished(cx(0)) == [.armIdleTimer(cx(0), ms: 1000)])
    // Used again and idle again at t0+800: the armed timer is kept, not re-armed.
    h.now = t0 + 600
    #expect(h.checkout() == (.attached(cx(0)), []))
    h.now = t0 + 800
    #expect(h.finished(cx(0)) == [])
    // The timer fires at t0+1100, 300 ms into the new idle period: re-armed for the rest.
    h.now = t0 + 1100
    #expect(h.idleTimer(cx(0)) == [.armIdleTimer(cx(0), ms: 700)])
    #expect(h.stats[.cxIdleTimeout] == 0)
    // A timer that fires while the connection is busy does nothing; going idle re-arms it.
    h.now = t0 + 1500
    #expect(h.checkout() == (.attached(cx(0)), []))
    h.now = t0 + 1800
    #expect(h.idleTimer(cx(0)) == [])
    h.now = t0 + 1900
    #expect(h.finished(cx(0)) == [.armIdleTimer(cx(0), ms: 1000)])
    h.now = t0 + 2899
    #expect(h.idleTimer(cx(0)) == [.armIdleTimer(cx(0), ms: 1)])
    h.now = t0 + 2900
    #expect(h.idleTimer(cx(0)) == [.close(cx(0))])
    #expect(h.stats[.cxIdleTimeout] == 1)
    #expect(h.stats[.cxDestroy] == 1)
    // A late timer for the forgotten connection is ignored.
    #expect(h.idleTimer(cx(0)) == [])
    h.expectGaugesZero()
}

// MARK: - Host removal / unhealthy

@Test func hostRemovalClosesIdleAndDrainsBusyConnections() {
    let h = Harness(http1)
    _ = h.checkout()
    _ = h.checkout()
    _ = h.connected(cx(0), capacity: 1)
    _ = h.connected(cx(1), capacity: 1)
    #expect(h.finished(cx(1)) == [.armIdleTimer(cx(1), ms: 60_000)])
    // cx0 busy, cx1 idle.
    #expect(h.drain() == [.close(cx(1))])
    #expect(h.pool.connection(cx(0))! == (.ready, 1, 1, true))
    #expect(h.pool.connection(cx(1)) == nil)
    // A draining connection takes nothing new: a request now opens a new connection (slots reused).
    #expect(h.checkout() == (.queued(rq(1, 1)), [.connect(cx(1, 1))]))
    // The busy one closes after its last request, handing nothing to the queue.
    #expect(h.finished(cx(0)) == [.close(cx(0))])
    #expect(h.connected(cx(1, 1), capacity: 1) == [.attach(rq(1, 1), to: cx(1, 1), exclusive: false)])
    #expect(h.stats[.cxDestroy] == 2)
    #expect(h.stats[.cxActive] == 1)
    #expect(h.finished(cx(1, 1)) == [.armIdleTimer(cx(1, 1), ms: 60_000)])
    #expect(h.drain() == [.close(cx(1, 1))])
    h.expectGaugesZero()
}

@Test func hostRemovalFailsQueuedRequestsAndClosesConnects() {
    let h = Harness(http2)
    _ = h.checkout()
    _ = h.checkout()
    #expect(h.drain() == [.fail(rq(0), .drained), .fail(rq(1), .drained), .close(cx(0))])
    #expect(h.stats[.rqPendingFailureEject] == 2)
    // The connect finishing later is for a forgotten slot: ignored.
    #expect(h.connected(cx(0), capacity: 100) == [])
    h.expectGaugesZero()
}

// MARK: - Exclusive checkout

@Test func exclusiveCheckoutTakesAnIdleConnectionForGood() {
    let h = Harness(http2)
    _ = h.checkout()
    #expect(h.connected(cx(0), capacity: 10) == [.attach(rq(0), to: cx(0), exclusive: false)])
    // cx0 has room but is not idle: an exclusive request (SUBSCRIBE, Upgrade) waits for its own.
    #expect(h.checkout(exclusive: true) == (.queued(rq(0, 1)), [.connect(cx(1))]))
    #expect(h.checkout() == (.attached(cx(0)), []))
    #expect(h.connected(cx(1), capacity: 10) == [.attach(rq(0, 1), to: cx(1), exclusive: true)])
    #expect(h.pool.connection(cx(1))! == (.exclusive, 1, 10, false))
    // Normal requests never land on it, even with cx0 full.
    _ = h.capacity(cx(0), 2)
    #expect(h.checkout() == (.queued(rq(0, 2)), [.connect(cx(2))]))
    // Its request does not "finish" back into the pool; host removal leaves it to its owner.
    #expect(h.finished(cx(1)) == [])
    #expect(h.drain() == [.fail(rq(0, 2), .drained), .close(cx(2))])
    #expect(h.pool.connection(cx(1))! == (.exclusive, 1, 10, true))
    #expect(h.stats[.rqActive] == 3)
    // The owner closes it when the session ends.
    #expect(h.closed(cx(1)) == [])
    #expect(h.stats[.rqActive] == 2)
    #expect(h.finished(cx(0)) == [])
    #expect(h.finished(cx(0)) == [.close(cx(0))])
    h.expectGaugesZero()
}

@Test func exclusiveRequestOlderThanNormalOnesTakesTheFirstIdleConnection() {
    let h = Harness(http2)
    #expect(h.checkout(exclusive: true) == (.queued(rq(0)), [.connect(cx(0))]))
    // Demand is one connection per exclusive request plus expected capacity for the rest: the
    // normal request cannot count on the connection the exclusive one will take.
    #expect(h.checkout() == (.queued(rq(1)), [.connect(cx(1))]))
    // The older exclusive request takes the first connection up, whole.
    #expect(h.connected(cx(0), capacity: 100) == [.attach(rq(0), to: cx(0), exclusive: true)])
    #expect(h.connected(cx(1), capacity: 100) == [.attach(rq(1), to: cx(1), exclusive: false)])
    // Idle connection available: an exclusive checkout is immediate.
    #expect(h.finished(cx(1)) == [.armIdleTimer(cx(1), ms: 60_000)])
    #expect(h.checkout(exclusive: true) == (.attached(cx(1)), []))
    #expect(h.pool.connection(cx(1))!.state == .exclusive)
}

// MARK: - max_requests_per_connection, max_connections

@Test func maxRequestsPerConnectionDrainsAfterNRequests() {
    let h = Harness(PoolConfig(expectedCapacity: 1, idleTimeoutMs: 60_000, maxRequestsPerConnection: 2))
    _ = h.checkout()
    #expect(h.connected(cx(0), capacity: 1) == [.attach(rq(0), to: cx(0), exclusive: false)])
    #expect(h.finished(cx(0)) == [.armIdleTimer(cx(0), ms: 60_000)])
    #expect(h.checkout() == (.attached(cx(0)), []))  // its second and last
    #expect(h.stats[.cxMaxRequests] == 1)
    #expect(h.pool.connection(cx(0))!.draining)
    #expect(h.checkout() == (.queued(rq(0, 1)), [.connect(cx(1))]))
    #expect(h.finished(cx(0)) == [.close(cx(0))])
    #expect(h.connected(cx(1), capacity: 1) == [.attach(rq(0, 1), to: cx(1), exclusive: false)])
    #expect(h.stats[.cxMaxRequests] == 1)
    #expect(h.stats[.cxTotal] == 2)
    #expect(h.stats[.cxDestroy] == 1)
}

@Test func maxConnectionsQueuesRequestsInsteadOfConnecting() {
    // One breaker for the cluster, shared by two hosts' pools (or two workers).
    let connections = SharedCount()
    let config = PoolConfig(expectedCapacity: 1, idleTimeoutMs: nil, maxConnections: PoolBreaker(count: connections, limit: 2))
    let a = Harness(config)
    let b = Harness(config)
    #expect(a.checkout() == (.queued(rq(0)), [.connect(cx(0))]))
    #expect(b.checkout() == (.queued(rq(0)), [.connect(cx(0))]))
    #expect(connections.current == 2)
    #expect(a.checkout() == (.queued(rq(1)), []))
    #expect(a.checkout() == (.queued(rq(2)), []))
    #expect(a.stats[.cxOverflow] == 2)
    #expect(a.stats[.cxTotal] == 1)
    // The one connection serves the queue in order.
    #expect(a.connected(cx(0), capacity: 1) == [.attach(rq(0), to: cx(0), exclusive: false)])
    #expect(a.finished(cx(0)) == [.attach(rq(1), to: cx(0), exclusive: false)])
    // b's connection fails: a unit comes free, and a's next event uses it.
    #expect(b.connectFailed(cx(0)) == [.fail(rq(0), .connectFailure)])
    #expect(connections.current == 1)
    #expect(a.goAway(cx(0)) == [.connect(cx(1))])
    #expect(a.finished(cx(0)) == [.close(cx(0))])
    #expect(a.connected(cx(1), capacity: 1) == [.attach(rq(2), to: cx(1), exclusive: false)])
    #expect(connections.current == 1)
    b.expectGaugesZero()
}

@Test func aPoolWithNoConnectionOpensOneEvenWhenOthersHoldTheLimit() {
    // Worker a holds the cluster's only connection (idle); worker b's pool has none. b's
    // request must not wait for a connection that a will never give back.
    let connections = SharedCount()
    let config = PoolConfig(expectedCapacity: 1, idleTimeoutMs: nil, maxConnections: PoolBreaker(count: connections, limit: 1))
    let a = Harness(config)
    let b = Harness(config)
    #expect(a.checkout() == (.queued(rq(0)), [.connect(cx(0))]))
    #expect(a.connected(cx(0), capacity: 1) == [.attach(rq(0), to: cx(0), exclusive: false)])
    #expect(a.finished(cx(0)) == [])
    #expect(b.checkout() == (.queued(rq(0)), [.connect(cx(0))]))
    #expect(connections.current == 2)
    // A second connection for b is refused: it has one.
    #expect(b.checkout() == (.queued(rq(1)), []))
    #expect(b.stats[.cxOverflow] == 1)
    #expect(b.connected(cx(0), capacity: 1) == [.attach(rq(0), to: cx(0), exclusive: false)])
    #expect(b.finished(cx(0)) == [.attach(rq(1), to: cx(0), exclusive: false)])
}

// MARK: - Connect failure, GOAWAY, peer close

@Test func connectFailureFailsQueuedRequestsOtherConnectsCannotTake() {
    let h = Harness(http1)
    _ = h.checkout()
    _ = h.checkout()
    _ = h.checkout()
    #expect(h.stats[.cxTotal] == 3)
    // Three waiting, two connects left: the youngest fails, with the timeout as its reason.
    #expect(h.connectFailed(cx(1), .timeout) == [.fail(rq(2), .connectTimeout)])
    #expect(h.connected(cx(0), capacity: 1) == [.attach(rq(0), to: cx(0), exclusive: false)])
    // One waiting, no connect left: it fails (busy cx0 does not count: the host just failed).
    #expect(h.connectFailed(cx(2)) == [.fail(rq(1), .connectFailure)])
    #expect(h.stats[.rqPendingFailureEject] == 2)
    #expect(h.stats[.cxDestroy] == 2)
    #expect(h.stats[.cxActive] == 1)
    #expect(h.stats[.rqPendingActive] == 0)
    #expect(h.pool.pendingCount == 0)
}

@Test func connectFailureOfTheOnlyHttp2ConnectFailsEveryWaiterYoungestFirst() {
    let h = Harness(http2)
    for i in 0..<4 { #expect(h.checkout().0 == .queued(rq(Int32(i)))) }
    #expect(h.stats[.cxTotal] == 1)
    #expect(h.connectFailed(cx(0)) == [
        .fail(rq(3), .connectFailure), .fail(rq(2), .connectFailure),
        .fail(rq(1), .connectFailure), .fail(rq(0), .connectFailure),
    ])
    h.expectGaugesZero()
}

@Test func goAwayDrainsTheClientAndQueuedRequestsGetANewConnection() {
    let h = Harness(http2)
    _ = h.checkout()
    _ = h.connected(cx(0), capacity: 10)
    #expect(h.checkout() == (.attached(cx(0)), []))
    #expect(h.goAway(cx(0)) == [])
    #expect(h.stats[.cxCloseNotify] == 1)
    #expect(h.pool.connection(cx(0))! == (.ready, 2, 10, true))
    #expect(h.checkout() == (.queued(rq(0, 1)), [.connect(cx(1))]))
    #expect(h.capacity(cx(0), 100) == [])  // a draining client takes nothing, whatever SETTINGS say
    #expect(h.finished(cx(0)) == [])
    #expect(h.finished(cx(0)) == [.close(cx(0))])
    #expect(h.connected(cx(1), capacity: 10) == [.attach(rq(0, 1), to: cx(1), exclusive: false)])
    // GOAWAY on an idle connection closes it at once.
    #expect(h.finished(cx(1)) == [.armIdleTimer(cx(1), ms: 60_000)])
    #expect(h.goAway(cx(1)) == [.close(cx(1))])
    h.expectGaugesZero()
}

@Test func peerCloseEndsItsRequestsAndReplacesItForTheQueue() {
    let h = Harness(PoolConfig(expectedCapacity: 2, idleTimeoutMs: nil,
                               maxConnections: PoolBreaker(count: SharedCount(), limit: 1)))
    _ = h.checkout()
    _ = h.checkout()
    #expect(h.connected(cx(0), capacity: 2) == [
        .attach(rq(0), to: cx(0), exclusive: false), .attach(rq(1), to: cx(0), exclusive: false),
    ])
    #expect(h.checkout() == (.queued(rq(1, 1)), []))  // at max_connections
    #expect(h.closed(cx(0)) == [.connect(cx(0, 1))])
    #expect(h.stats[.rqActive] == 0)
    #expect(h.connected(cx(0, 1), capacity: 2) == [.attach(rq(1, 1), to: cx(0, 1), exclusive: false)])
    #expect(h.closed(cx(0, 1)) == [])
    h.expectGaugesZero()
}

// MARK: - Stats hook and driver

@Test func slabSinkWritesEnvoyNamedStats() {
    let store = StatsStore(threads: 1)
    let handles = PoolStatHandles(store: store, prefix: "cluster.api.")
    var pool = PoolStateMachine(config: http1, stats: SlabPoolStats(slab: store.mainSlab, handles: handles))
    var a: [PoolAction] = []
    _ = pool.checkout(nowMs: 0, into: &a)
    _ = pool.checkout(nowMs: 0, into: &a)
    pool.connected(cx(0), capacity: 1, nowMs: 0, into: &a)
    #expect(store.value("cluster.api.upstream_rq_total") == 1)
    #expect(store.value("cluster.api.upstream_rq_pending_total") == 2)
    #expect(store.value("cluster.api.upstream_rq_pending_active") == 1)
    #expect(store.value("cluster.api.upstream_cx_total") == 2)
    a.removeAll()
    pool.drainConnections(nowMs: 0, into: &a)  // fails one, closes the connect, drains cx0
    pool.connectionClosed(cx(0), nowMs: 0, into: &a)
    #expect(store.value("cluster.api.upstream_rq_pending_active") == 0)
    #expect(store.value("cluster.api.upstream_rq_active") == 0)
    #expect(store.value("cluster.api.upstream_cx_active") == 0)
    #expect(store.value("cluster.api.upstream_cx_destroy") == 2)
    #expect(store.value("cluster.api.upstream_rq_pending_failure_eject") == 1)
}

/// Records what the driver asked for; fails connects at once when told to.
private final class FakeOwner: ConnectionPoolCallbacks {
    typealias Waiter = String
    var log: [String] = []
    var failConnectsAtOnce = false
    weak var pool: ConnectionPool<FakeOwner, PoolCounters>?

    func poolConnect(_ id: PoolConnectionID) {
        log.append("connect \(id)")
        if failConnectsAtOnce { pool?.connectFailed(id, .failed) }
    }
    func poolClose(_ id: PoolConnectionID) { log.append("close \(id)") }
    func poolAttach(_ waiter: String, to id: PoolConnectionID, exclusive: Bool) { log.append("attach \(waiter) \(id)") }
    func poolFail(_ waiter: String, _ reason: PoolFailureReason) { log.append("fail \(waiter) \(reason)") }
}

@Test func driverPerformsActionsInOrderAndIsReentrant() {
    let dispatcher = Dispatcher(name: "pool-test")
    let owner = FakeOwner()
    let pool = ConnectionPool(dispatcher: dispatcher, config: PoolConfig(expectedCapacity: 1, idleTimeoutMs: 5000),
                              stats: PoolCounters(), callbacks: owner)
    owner.pool = pool
    #expect(pool.checkout("a") == .queued(rq(0)))
    #expect(pool.checkout("b") == .queued(rq(1)))
    pool.connected(cx(1), capacity: 1)
    pool.connected(cx(0), capacity: 1)
    #expect(owner.log == ["connect cx0.0", "connect cx1.0", "attach a cx1.0", "attach b cx0.0"])
    // A connect that fails inside poolConnect: the failure runs after the connect action,
    // and the waiter hears of it before checkout returns.
    owner.log.removeAll()
    owner.failConnectsAtOnce = true
    #expect(pool.checkout("c") == .queued(rq(1, 1)))
    #expect(owner.log == ["connect cx2.0", "fail c connectFailure"])
    // Idle timers are armed on real libevent timers; a GOAWAY closes the idle connection.
    owner.log.removeAll()
    pool.requestFinished(cx(0))
    pool.goAway(cx(0))
    #expect(owner.log == ["close cx0.0"])
    pool.connectionClosed(cx(1))
    #expect(pool.machine.isIdle)
    #expect(pool.machine.stats[.cxActive] == 0)
}

/// An owner that retries a failed request at once, inside `poolFail` (allowed re-entrancy).
private final class RetryingOwner: ConnectionPoolCallbacks {
    typealias Waiter = String
    var log: [String] = []
    weak var pool: ConnectionPool<RetryingOwner, PoolCounters>?

    func poolConnect(_ id: PoolConnectionID) { log.append("connect \(id)") }
    func poolClose(_ id: PoolConnectionID) { log.append("close \(id)") }
    func poolAttach(_ waiter: String, to id: PoolConnectionID, exclusive: Bool) { log.append("attach \(waiter) \(id)") }
    func poolFail(_ waiter: String, _ reason: PoolFailureReason) {
        log.append("fail \(waiter)")
        if !waiter.hasSuffix("-retry") { _ = pool?.checkout(waiter + "-retry") }
    }
}

@Test func aRetryInsidePoolFailNeverTakesAnotherRequestsNews() {
    // Two requests wait on one connect (capacity 2); it fails; the owner retries each inside
    // poolFail. The retry may reuse a slot the same batch freed: each request must still hear
    // its own failure once, and the retries must be attached when a connect succeeds (this
    // crashed with "attach for a request with no waiter" when waiters were kept by slot).
    let dispatcher = Dispatcher(name: "pool-test")
    let owner = RetryingOwner()
    let pool = ConnectionPool(dispatcher: dispatcher, config: PoolConfig(expectedCapacity: 2, idleTimeoutMs: 5000),
                              stats: PoolCounters(), callbacks: owner)
    owner.pool = pool
    _ = pool.checkout("A")
    _ = pool.checkout("B")
    pool.connectFailed(cx(0), .failed)
    let fails = owner.log.filter { $0.hasPrefix("fail") }.sorted()
    #expect(fails == ["fail A", "fail B"])
    let connects = owner.log.filter { $0.hasPrefix("connect") }
    owner.log.removeAll()
    for c in connects.dropFirst() {
        let id = c.dropFirst("connect cx".count).split(separator: ".")
        pool.connected(PoolConnectionID(slot: Int32(id[0])!, generation: UInt32(id[1])!), capacity: 2)
    }
    #expect(owner.log.filter { $0.hasPrefix("attach") }.map { $0.split(separator: " ")[1] }.sorted() == ["A-retry", "B-retry"])
}
