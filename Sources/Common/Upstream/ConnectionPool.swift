/// What a pool driver asks of its owner (the per-worker cluster view for one host, or a test).
/// Every method runs on the pool's worker. The owner keeps per-connection state (the codec
/// client) in arrays indexed by `PoolConnectionID.slot`.
public protocol ConnectionPoolCallbacks: AnyObject {
    /// The owner's record of a request waiting for a connection (a router's upstream request,
    /// a Redis command batch). Held by the pool only while the request is queued.
    associatedtype Waiter

    /// Open connection `id` through the host connector (connect, connect timeout, TLS, PROXY
    /// header) and create its codec client; then report `connected(id, capacity:)` or
    /// `connectFailed`. A connect that fails at once may be reported from inside this call.
    func poolConnect(_ id: PoolConnectionID)
    /// Close `id`'s client now (idle, drained, or a connect no longer wanted). The pool has
    /// already forgotten it: do not report its close back.
    func poolClose(_ id: PoolConnectionID)
    /// A queued request got a connection: start it on `id`'s client. `exclusive`: the connection
    /// is the request's for good; close it and report `connectionClosed` when done.
    func poolAttach(_ waiter: Waiter, to id: PoolConnectionID, exclusive: Bool)
    /// A queued request will get no connection from this pool; the owner may retry elsewhere.
    func poolFail(_ waiter: Waiter, _ reason: PoolFailureReason)
}

/// The thin driver that binds a `PoolStateMachine` to a worker: it reads the clock, keeps the
/// waiters of queued requests and one idle `Timer` per connection slot, and performs the
/// machine's actions through `ConnectionPoolCallbacks`. All decisions are the machine's.
///
/// Threading: confined to one worker; every method runs on `dispatcher`'s thread. Re-entrant:
/// a callback may call back into the pool (a connect that fails at once, a retry that checks
/// out again); the new actions run after the current ones, in order, with no recursion.
public final class ConnectionPool<Callbacks: ConnectionPoolCallbacks, Stats: PoolStatsSink> {
    /// The decisions and the bookkeeping.
    public private(set) var machine: PoolStateMachine<Stats>
    /// The owner; it outlives the pool.
    public unowned(unsafe) let callbacks: Callbacks
    private let dispatcher: Dispatcher
    /// Actions not yet performed (reused: no allocation once grown).
    private var actions: [PoolAction] = []
    /// An action loop is running further up the stack.
    private var running = false
    /// Waiters of queued requests, by request slot.
    /// Keyed by the full id, not the slot: a batch may free a slot and the owner's retry (run
    /// inside an earlier action of the same batch) may get it back before the batch names the
    /// old request; by slot alone the old request's news went to the new one (review of issue 8).
    private var waiters: [PoolRequestID: Callbacks.Waiter] = [:]
    /// Idle timers by connection slot (created once per slot), and the generation each was armed for.
    private var timers: [Timer?] = []
    private var timerGenerations: [UInt32] = []

    /// An empty pool on `dispatcher`'s worker, reporting to `callbacks` (not retained: the owner
    /// outlives the pool).
    public init(dispatcher: Dispatcher, config: PoolConfig, stats: Stats, callbacks: Callbacks) {
        self.dispatcher = dispatcher
        self.callbacks = callbacks
        machine = PoolStateMachine(config: config, stats: stats)
    }

    /// No connection and no queued request (`machine.isIdle`), and no action loop running or
    /// action waiting to be delivered: an owner may free the pool.
    public var isQuiescent: Bool { !running && actions.isEmpty && waiters.isEmpty && machine.isIdle }

    /// Timers go before the dispatcher whose event_base they live in.
    deinit { timers.removeAll() }

    /// A request wants a connection. `.attached(id)`: start it on `id` now (no callback comes).
    /// `.queued`: `poolAttach` or `poolFail` will name `waiter` later (possibly before this
    /// returns, when a connect fails at once); `cancel` withdraws it. `.failed`: refused now.
    public func checkout(_ waiter: Callbacks.Waiter, exclusive: Bool = false) -> PoolCheckoutResult {
        let result = machine.checkout(exclusive: exclusive, nowMs: monotonicMs(), into: &actions)
        if case .queued(let r) = result { waiters[r] = waiter }
        run()
        return result
    }

    /// Withdraws a queued request (its downstream went away). False if it was no longer queued.
    @discardableResult
    public func cancel(_ id: PoolRequestID) -> Bool {
        guard machine.cancel(id) else { return false }
        waiters[id] = nil
        return true
    }

    /// See `PoolStateMachine.setExpectedCapacity`.
    public func setExpectedCapacity(_ n: Int) { machine.setExpectedCapacity(n) }

    /// The connect of `id` finished; its client takes `capacity` concurrent requests.
    public func connected(_ id: PoolConnectionID, capacity: Int) {
        machine.connected(id, capacity: capacity, nowMs: monotonicMs(), into: &actions)
        run()
    }

    /// The connect of `id` failed or timed out.
    public func connectFailed(_ id: PoolConnectionID, _ failure: PoolConnectFailure) {
        machine.connectFailed(id, failure, nowMs: monotonicMs(), into: &actions)
        run()
    }

    /// A request on pooled connection `id` finished and the connection stays usable.
    public func requestFinished(_ id: PoolConnectionID) {
        machine.requestFinished(id, nowMs: monotonicMs(), into: &actions)
        run()
    }

    /// The client of `id` changed its capacity (HTTP/2 SETTINGS).
    public func capacityChanged(_ id: PoolConnectionID, capacity: Int) {
        machine.capacityChanged(id, capacity: capacity, nowMs: monotonicMs(), into: &actions)
        run()
    }

    /// The peer of `id` takes no new requests (GOAWAY, `Connection: close`).
    public func goAway(_ id: PoolConnectionID) {
        machine.goAway(id, nowMs: monotonicMs(), into: &actions)
        run()
    }

    /// `id` closed under the pool (peer, error, or an exclusive owner done with it).
    public func connectionClosed(_ id: PoolConnectionID) {
        timers.withSlot(id.slot) { $0?.cancel() }
        machine.connectionClosed(id, nowMs: monotonicMs(), into: &actions)
        run()
    }

    /// The host was removed or turned unhealthy (Envoy's drainConnections).
    public func drainConnections() {
        machine.drainConnections(nowMs: monotonicMs(), into: &actions)
        run()
    }

    private func idleTimerFired(slot: Int32) {
        let id = PoolConnectionID(slot: slot, generation: timerGenerations[Int(slot)])
        machine.idleTimerFired(id, nowMs: monotonicMs(), into: &actions)
        run()
    }

    /// Performs the queued actions in order; nested events append to the same buffer.
    private func run() {
        if running { return }
        running = true
        var i = 0
        while i < actions.count {
            let action = actions[i]
            i += 1
            switch action {
            case .connect(let c):
                callbacks.poolConnect(c)
            case .attach(let r, let c, let exclusive):
                guard let w = takeWaiter(r) else { preconditionFailure("attach for a request with no waiter: \(r)") }
                callbacks.poolAttach(w, to: c, exclusive: exclusive)
            case .fail(let r, let reason):
                guard let w = takeWaiter(r) else { preconditionFailure("fail for a request with no waiter: \(r)") }
                callbacks.poolFail(w, reason)
            case .close(let c):
                timers.withSlot(c.slot) { $0?.cancel() }
                callbacks.poolClose(c)
            case .armIdleTimer(let c, let ms):
                armTimer(c, ms: ms)
            }
        }
        actions.removeAll(keepingCapacity: true)
        running = false
    }

    private func takeWaiter(_ r: PoolRequestID) -> Callbacks.Waiter? { waiters.removeValue(forKey: r) }

    private func armTimer(_ c: PoolConnectionID, ms: UInt64) {
        let slot = Int(c.slot)
        while timers.count <= slot { timers.append(nil); timerGenerations.append(0) }
        if timers[slot] == nil {
            let s = c.slot
            timers[slot] = Timer(dispatcher) { [unowned self] in self.idleTimerFired(slot: s) }
        }
        timerGenerations[slot] = c.generation
        timers[slot]!.arm(ms: ms)
    }
}

extension Array where Element == Timer? {
    /// Runs `body` on the timer of `slot` when that slot has one.
    fileprivate mutating func withSlot(_ slot: Int32, _ body: (Timer?) -> Void) {
        let i = Int(slot)
        if i < count { body(self[i]) }
    }
}
