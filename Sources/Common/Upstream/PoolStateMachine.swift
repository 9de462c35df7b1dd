// The connection pool of one host on one worker, as a pure state machine: events in (a request
// arrives, a connect ends, a request finishes, a timer fires, the host goes away), actions out
// (connect, attach, fail, close, arm a timer). No I/O, no clock, no callbacks: `ConnectionPool`
// drives it with real connections; the tests drive it with a fake clock.
//
// Request flow:
//
//   owner (router, redis splitter) ── checkout(exclusive:) ──┐
//                                                            ▼
//   ┌─────────────────────────── PoolStateMachine ──────────────────────────────────────────┐
//   │ partial list: ready, 0 < active < capacity  ┐ head = most recently used  ─► .attached(cx)
//   │ idle list:    ready, active == 0            ┘ (exclusive: idle list only)  │ start on client
//   │ neither has room:                                                         │
//   │   max_pending_requests full ─────────────────────────────────────────────► .failed(.pendingOverflow)
//   │   else queue (normal FIFO | exclusive FIFO) ─► .queued(rq)                 │
//   │        demand > connecting capacity ─► max_connections? ─► .connect(cx) ─► host connector
//   │                                        └ full: upstream_cx_overflow, wait   │ (connect, TLS,
//   │   connected(cx, capacity) ◄──────────────────────────────────────────────────┘  PROXY, codec)
//   │   connected / requestFinished / capacityChanged ─► oldest queued ─► .attach(rq, cx)
//   │   connectFailed ─► .fail(rq, .connectFailure) for what connects in flight cannot take
//   │   last request done ─► .armIdleTimer(cx) ─► idleTimerFired after idle_timeout ─► .close(cx)
//   │   goAway | max_requests_per_connection | drainConnections ─► draining: no new requests,
//   │                                                            .close(cx) when the last ends
//   └────────────────────────────────────────────────────────────────────────────────────────┘
//
// A connection slot's life:
//
//   free ─► connecting ─ connected ─► ready ─ exclusive checkout ─► exclusive ─ connectionClosed ─► free
//              │                        │ draining ─ last request finished ─► .close ─► free
//              └─ connectFailed ─► free └ idle timeout, connectionClosed ─► free

/// The per-worker, per-host connection pool of every protocol, as a pure state machine.
///
/// One shape for all clients: a client declares its capacity when it connects (1 for HTTP/1.1,
/// the peer's MAX_CONCURRENT_STREAMS for HTTP/2, the pipeline depth for RESP) and may change it
/// (`capacityChanged` on SETTINGS) or stop taking requests (`goAway`). A checkout can be
/// exclusive (Redis blocking commands and pub/sub, HTTP upgrades): it takes an idle connection,
/// which leaves the pool for good (never returned: its protocol state changed; the owner closes
/// it and reports `connectionClosed`). It still counts in `max_connections` and `upstream_cx_active`.
///
/// Checkout prefers, in O(1): a connection already busy with room (packs HTTP/2 streams and RESP
/// pipelines onto few connections, as Envoy's ready list does), else the most recently used idle
/// one (LIFO, so the others reach their idle timeout and close). Queued requests are served in
/// arrival order from two intrusive FIFOs (normal, exclusive) whose heads are compared by sequence.
///
/// Threading: confined to one worker (a value owned by that worker's pool driver). Every event
/// appends the actions the driver must perform, in order, to `actions`; ids in stale events (a
/// connection or request the pool already forgot) are ignored, so late timers are harmless.
/// No allocation per request once the slot arrays and the action buffer have grown.
public struct PoolStateMachine<Stats: PoolStatsSink> {
    /// What a connection slot is doing.
    public enum ConnectionState: UInt8, Sendable {
        /// Unused slot.
        case free
        /// `.connect` emitted; waiting for `connected` or `connectFailed`.
        case connecting
        /// Serving pooled requests (or idle, or draining).
        case ready
        /// Given to one exclusive request; never returns to the pool.
        case exclusive
    }

    /// Which checkout list a ready connection is in.
    enum ListKind: UInt8 { case none, idle, partial }

    /// One connection's bookkeeping (one array element per slot; links are slot indices).
    struct ConnectionSlot {
        var generation: UInt32 = 0         // bumped on free; part of the id
        var state: ConnectionState = .free
        var draining = false               // takes no new requests; closed when active reaches 0
        var list: ListKind = .none         // the checkout list it is linked into
        var timerArmed = false             // an idle timer is running for it
        var capacity: Int32 = 0            // concurrent requests the client accepts now
        var active: Int32 = 0              // requests on it now
        var served = 0                     // requests it took in its life
        var idleSinceMs: UInt64 = 0        // when active last reached 0
        var prev: Int32 = -1               // list links
        var next: Int32 = -1
    }

    /// One queued request (links are slot indices in its FIFO).
    struct RequestSlot {
        var generation: UInt32 = 0         // bumped on free; part of the id
        var queued = false                 // linked in a FIFO (the id is live)
        var exclusive = false              // which FIFO
        var seq: UInt64 = 0                // arrival order across both FIFOs
        var prev: Int32 = -1
        var next: Int32 = -1
    }

    /// Head, tail and length of an intrusive list.
    struct List {
        var head: Int32 = -1
        var tail: Int32 = -1
        var count = 0
    }

    /// Limits and timeouts (fixed for the pool's life, but for `expectedCapacity`).
    public private(set) var config: PoolConfig
    /// Where stat changes go; tests read `PoolCounters` here.
    public var stats: Stats

    private var conns: [ConnectionSlot] = []
    private var freeConns: [Int32] = []
    private var requests: [RequestSlot] = []
    private var freeRequests: [Int32] = []
    /// Ready, not draining, no request, capacity > 0.
    private var idle = List()
    /// Ready, not draining, 0 < active < capacity.
    private var partial = List()
    /// Queued requests, oldest at the head.
    private var normalQueue = List()
    private var exclusiveQueue = List()
    private var nextSeq: UInt64 = 0

    /// Connections in `connecting` state.
    public private(set) var connectingCount = 0
    /// Connections in any state but `free`.
    public private(set) var connectionCount = 0
    /// Requests on connections (exclusive ones included).
    public private(set) var activeRequests = 0
    /// Requests waiting for a connection.
    public var pendingCount: Int { normalQueue.count + exclusiveQueue.count }
    /// No connection and no queued request: the owner may destroy the pool (after a host removal).
    public var isIdle: Bool { connectionCount == 0 && pendingCount == 0 }

    /// An empty pool: no connection, no queue. `config.expectedCapacity` must be at least 1.
    public init(config: PoolConfig, stats: Stats) {
        precondition(config.expectedCapacity >= 1, "expectedCapacity must be at least 1")
        self.config = config
        self.stats = stats
    }

    /// What a connection not yet connected is assumed to take from now on: an owner that learns
    /// its host's protocol per connection (ALPN) revises its guess. Queued requests get the
    /// connects they need at the next event.
    public mutating func setExpectedCapacity(_ n: Int) {
        precondition(n >= 1, "expectedCapacity must be at least 1")
        config.expectedCapacity = n
    }

    // MARK: - Events

    /// A request wants a connection. Attaches it at once when a connection has room (exclusive:
    /// an idle one), else queues it and asks for connects as the queue needs, else refuses it.
    public mutating func checkout(exclusive: Bool = false, nowMs: UInt64, into actions: inout [PoolAction]) -> PoolCheckoutResult {
        let c = Int(exclusive ? idle.head : (partial.head >= 0 ? partial.head : idle.head))
        if c >= 0 {
            guard acquireRequest() else {
                stats.count(.rqPendingOverflow, 1)
                return .failed(.requestOverflow)
            }
            attach(c, exclusive: exclusive)
            return .attached(connectionID(c))
        }
        if let b = config.maxPendingRequests, !b.count.tryAcquire(limit: b.limit) {
            stats.count(.rqPendingOverflow, 1)
            return .failed(.pendingOverflow)
        }
        let r = enqueue(exclusive: exclusive)
        stats.count(.rqPendingTotal, 1)
        stats.adjust(.rqPendingActive, 1)
        openConnectionsIfNeeded(into: &actions)
        return .queued(requestID(r))
    }

    /// The owner gave up on a queued request (its downstream went away, a timeout). Returns false
    /// when the id is no longer queued (already attached or failed). The connection opened for it,
    /// if any, stays: it serves the next request or closes at its idle timeout (Envoy's default).
    @discardableResult
    public mutating func cancel(_ id: PoolRequestID) -> Bool {
        guard let r = liveRequest(id) else { return false }
        dequeue(r)
        stats.count(.rqCancelled, 1)
        return true
    }

    /// A connect finished: the client is ready and takes `capacity` concurrent requests.
    public mutating func connected(_ id: PoolConnectionID, capacity: Int, nowMs: UInt64, into actions: inout [PoolAction]) {
        guard let c = liveConnection(id), conns[c].state == .connecting else { return }
        connectingCount -= 1
        conns[c].state = .ready
        conns[c].capacity = Int32(clamping: max(0, capacity))
        conns[c].idleSinceMs = nowMs
        if conns[c].draining {  // GOAWAY before we used it
            close(c, into: &actions)
            openConnectionsIfNeeded(into: &actions)
            return
        }
        relist(c)
        serveQueue(c, into: &actions)
        if conns[c].state == .ready && conns[c].active == 0 { becameIdle(c, nowMs: nowMs, into: &actions) }
        // A client smaller than expected (SETTINGS of 1) may leave demand uncovered.
        openConnectionsIfNeeded(into: &actions)
    }

    /// A connect failed or timed out. Queued requests that the connects still in flight cannot
    /// take are failed (youngest first, so the rest keep their order), with the reason, so the
    /// owner can retry them on another host. Busy connections are not counted as taking them:
    /// the host just failed a connect (Envoy purges all pending requests here).
    public mutating func connectFailed(_ id: PoolConnectionID, _ failure: PoolConnectFailure, nowMs: UInt64,
                                       into actions: inout [PoolAction]) {
        guard let c = liveConnection(id), conns[c].state == .connecting else { return }
        connectingCount -= 1
        free(c)
        let reason = failure.requestReason
        while demand() > connectingCount {
            let n = normalQueue.tail, e = exclusiveQueue.tail
            let r = Int(e >= 0 && (n < 0 || requests[Int(e)].seq > requests[Int(n)].seq) ? e : n)
            let rid = requestID(r)
            dequeue(r)
            stats.count(.rqPendingFailureEject, 1)
            actions.append(.fail(rid, reason))
        }
    }

    /// A request on a pooled connection finished (response complete, or reset by the codec while
    /// the connection stays usable). Hands the room to the oldest queued request, or lets the
    /// connection go idle; closes it if it was draining and this was its last request. Ignored for
    /// an exclusive connection: its request ends with `connectionClosed`.
    public mutating func requestFinished(_ id: PoolConnectionID, nowMs: UInt64, into actions: inout [PoolAction]) {
        guard let c = liveConnection(id), conns[c].state == .ready, conns[c].active > 0 else { return }
        conns[c].active -= 1
        endRequests(1)
        if conns[c].draining {
            if conns[c].active == 0 {
                close(c, into: &actions)
                openConnectionsIfNeeded(into: &actions)  // a max_connections slot came free
            }
            return
        }
        relist(c)
        serveQueue(c, into: &actions)
        if conns[c].state == .ready && conns[c].active == 0 { becameIdle(c, nowMs: nowMs, into: &actions) }
    }

    /// The client's capacity changed (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). Lower than the
    /// active count: no new requests until enough finish. Higher: queued requests move in.
    public mutating func capacityChanged(_ id: PoolConnectionID, capacity: Int, nowMs: UInt64, into actions: inout [PoolAction]) {
        guard let c = liveConnection(id), conns[c].state == .ready else { return }
        conns[c].capacity = Int32(clamping: max(0, capacity))
        if conns[c].draining { return }
        relist(c)
        serveQueue(c, into: &actions)
    }

    /// The peer will take no new requests on this connection (HTTP/2 GOAWAY, HTTP/1.1
    /// `Connection: close`, a codec protocol error): it drains, closing when its last request
    /// finishes, at once if it has none. Queued requests get a new connection if they need one.
    public mutating func goAway(_ id: PoolConnectionID, nowMs: UInt64, into actions: inout [PoolAction]) {
        guard let c = liveConnection(id), conns[c].state != .exclusive else { return }
        stats.count(.cxCloseNotify, 1)
        if conns[c].draining { return }
        conns[c].draining = true
        if conns[c].state == .ready {
            if conns[c].active == 0 { close(c, into: &actions) } else { relist(c) }
        }
        openConnectionsIfNeeded(into: &actions)
    }

    /// The connection closed under the pool (peer close, I/O error, or the owner of an exclusive
    /// connection is done with it). Its active requests end with it (the codec fails or retries
    /// them); a connecting one counts as a connect failure.
    public mutating func connectionClosed(_ id: PoolConnectionID, nowMs: UInt64, into actions: inout [PoolAction]) {
        guard let c = liveConnection(id) else { return }
        if conns[c].state == .connecting {
            connectFailed(id, .failed, nowMs: nowMs, into: &actions)
            return
        }
        let active = Int(conns[c].active)
        if active > 0 { endRequests(active) }
        free(c)
        openConnectionsIfNeeded(into: &actions)
    }

    /// The idle timer armed by `.armIdleTimer` fired. Closes the connection if it has had no
    /// request for `idle_timeout` (`upstream_cx_idle_timeout`); re-arms for the rest of the
    /// period if it was used and went idle again meanwhile; does nothing if it is busy.
    public mutating func idleTimerFired(_ id: PoolConnectionID, nowMs: UInt64, into actions: inout [PoolAction]) {
        guard let c = liveConnection(id), conns[c].state == .ready else { return }
        conns[c].timerArmed = false
        guard conns[c].active == 0, let timeout = config.idleTimeoutMs else { return }
        let idleFor = nowMs &- conns[c].idleSinceMs
        if nowMs >= conns[c].idleSinceMs && idleFor >= timeout {
            stats.count(.cxIdleTimeout, 1)
            close(c, into: &actions)
        } else {
            conns[c].timerArmed = true
            actions.append(.armIdleTimer(connectionID(c), ms: nowMs >= conns[c].idleSinceMs ? timeout - idleFor : timeout))
        }
    }

    /// Envoy's drainConnections, for a host removed or turned unhealthy: queued requests fail with
    /// `.drained` (oldest first; the owner may retry elsewhere), connecting and idle connections
    /// close, busy ones drain (no new requests, close after their last). Exclusive connections
    /// are left to their owners. The pool stays usable: a later checkout opens new connections
    /// (a host that turns healthy again); after a removal, destroy the pool once `isIdle`.
    public mutating func drainConnections(nowMs: UInt64, into actions: inout [PoolAction]) {
        while true {
            let n = normalQueue.head, e = exclusiveQueue.head
            if n < 0 && e < 0 { break }
            let r = Int(e >= 0 && (n < 0 || requests[Int(e)].seq < requests[Int(n)].seq) ? e : n)
            let rid = requestID(r)
            dequeue(r)
            stats.count(.rqPendingFailureEject, 1)
            actions.append(.fail(rid, .drained))
        }
        for c in conns.indices {
            switch conns[c].state {
            case .free: continue
            case .connecting:
                connectingCount -= 1
                close(c, into: &actions)
            case .ready:
                if conns[c].active == 0 { close(c, into: &actions) } else { conns[c].draining = true; relist(c) }
            case .exclusive:
                conns[c].draining = true
            }
        }
    }

    // MARK: - Inspection (tests, admin)

    /// A live connection's state, active requests, capacity and draining flag; nil once forgotten.
    public func connection(_ id: PoolConnectionID) -> (state: ConnectionState, active: Int, capacity: Int, draining: Bool)? {
        guard let c = liveConnection(id) else { return nil }
        let s = conns[c]
        return (s.state, Int(s.active), Int(s.capacity), s.draining)
    }

    // MARK: - Connections

    @inline(__always) private func connectionID(_ c: Int) -> PoolConnectionID {
        PoolConnectionID(slot: Int32(truncatingIfNeeded: c), generation: conns[c].generation)
    }

    @inline(__always) private func liveConnection(_ id: PoolConnectionID) -> Int? {
        let i = Int(id.slot)
        guard i >= 0, i < conns.count, conns[i].generation == id.generation, conns[i].state != .free else { return nil }
        return i
    }

    /// Connections needed by the queue: one per exclusive request, and enough expected capacity
    /// for the rest.
    @inline(__always) private func demand() -> Int {
        let e = config.expectedCapacity
        return exclusiveQueue.count + (normalQueue.count + e - 1) / e
    }

    /// Opens connects until those in flight cover the queue, or `max_connections` says no.
    private mutating func openConnectionsIfNeeded(into actions: inout [PoolAction]) {
        while connectingCount < demand() {
            if let b = config.maxConnections, !b.count.tryAcquire(limit: b.limit) {
                // As Envoy: a pool with no connection at all opens one anyway. Otherwise, with
                // the limit held by other workers' (or hosts') idle connections, its queue
                // would wait for a connection that never comes (review of issue 9).
                guard connectionCount == 0 else {
                    stats.count(.cxOverflow, 1)
                    return
                }
                _ = b.count.tryAcquire(limit: Int.max)
            }
            let c: Int
            if let f = freeConns.popLast() {
                c = Int(f)
            } else {
                c = conns.count
                conns.append(ConnectionSlot())
            }
            conns[c].state = .connecting
            connectingCount += 1
            connectionCount += 1
            stats.count(.cxTotal, 1)
            stats.adjust(.cxActive, 1)
            actions.append(.connect(connectionID(c)))
        }
    }

    /// Puts a request on `c` (room and the `max_requests` breaker already checked).
    private mutating func attach(_ i: Int, exclusive: Bool) {
        conns[i].active += 1
        conns[i].served += 1
        activeRequests += 1
        stats.count(.rqTotal, 1)
        stats.adjust(.rqActive, 1)
        if exclusive {
            conns[i].state = .exclusive
        } else if let max = config.maxRequestsPerConnection, conns[i].served >= max, !conns[i].draining {
            conns[i].draining = true
            stats.count(.cxMaxRequests, 1)
        }
        relist(i)
    }

    /// Moves queued requests onto `c` while it has room, oldest first; an exclusive request
    /// takes `c` only when it is idle.
    private mutating func serveQueue(_ i: Int, into actions: inout [PoolAction]) {
        while conns[i].state == .ready && !conns[i].draining && conns[i].active < conns[i].capacity {
            let n = normalQueue.head, e = exclusiveQueue.head
            let r: Int
            if e >= 0 && conns[i].active == 0 && (n < 0 || requests[Int(e)].seq < requests[Int(n)].seq) {
                r = Int(e)
            } else if n >= 0 {
                r = Int(n)
            } else {
                return
            }
            let exclusive = requests[r].exclusive
            let rid = requestID(r)
            dequeue(r)
            guard acquireRequest() else {
                stats.count(.rqPendingOverflow, 1)
                actions.append(.fail(rid, .requestOverflow))
                continue
            }
            attach(i, exclusive: exclusive)
            actions.append(.attach(rid, to: connectionID(i), exclusive: exclusive))
        }
    }

    /// `c` has no request now: start its idle clock, arming the timer unless one is running.
    private mutating func becameIdle(_ i: Int, nowMs: UInt64, into actions: inout [PoolAction]) {
        conns[i].idleSinceMs = nowMs
        guard let timeout = config.idleTimeoutMs, !conns[i].timerArmed else { return }
        conns[i].timerArmed = true
        actions.append(.armIdleTimer(connectionID(i), ms: timeout))
    }

    /// Asks the driver to close `c` and forgets it (no active request on it).
    private mutating func close(_ c: Int, into actions: inout [PoolAction]) {
        actions.append(.close(connectionID(c)))
        free(c)
    }

    /// Releases the slot and its `max_connections` unit.
    private mutating func free(_ i: Int) {
        unlinkConnection(i)
        conns[i].generation &+= 1
        conns[i].state = .free
        conns[i].draining = false
        conns[i].timerArmed = false
        conns[i].capacity = 0
        conns[i].active = 0
        conns[i].served = 0
        freeConns.append(Int32(truncatingIfNeeded: i))
        connectionCount -= 1
        config.maxConnections?.count.release()
        stats.adjust(.cxActive, -1)
        stats.count(.cxDestroy, 1)
    }

    /// `n` requests left their connections.
    private mutating func endRequests(_ n: Int) {
        activeRequests -= n
        stats.adjust(.rqActive, -n)
        if let b = config.maxRequests { for _ in 0..<n { b.count.release() } }
    }

    @inline(__always) private mutating func acquireRequest() -> Bool {
        guard let b = config.maxRequests else { return true }
        return b.count.tryAcquire(limit: b.limit)
    }

    /// Links `c` into the checkout list its state calls for (at the head: most recently used).
    private mutating func relist(_ c: Int) {
        let s = conns[c]
        let target: ListKind
        if s.state == .ready && !s.draining && s.active < s.capacity {
            target = s.active == 0 ? .idle : .partial
        } else {
            target = .none
        }
        if target == s.list { return }
        unlinkConnection(c)
        guard target != .none else { return }
        var l = target == .idle ? idle : partial
        let link = Int32(truncatingIfNeeded: c)
        conns[c].list = target
        conns[c].prev = -1
        conns[c].next = l.head
        if l.head >= 0 { conns[Int(l.head)].prev = link } else { l.tail = link }
        l.head = link
        l.count += 1
        if target == .idle { idle = l } else { partial = l }
    }

    private mutating func unlinkConnection(_ i: Int) {
        let kind = conns[i].list
        if kind == .none { return }
        var l = kind == .idle ? idle : partial
        let p = conns[i].prev, n = conns[i].next
        if p >= 0 { conns[Int(p)].next = n } else { l.head = n }
        if n >= 0 { conns[Int(n)].prev = p } else { l.tail = p }
        l.count -= 1
        if kind == .idle { idle = l } else { partial = l }
        conns[i].list = .none
        conns[i].prev = -1
        conns[i].next = -1
    }

    // MARK: - Queue

    @inline(__always) private func requestID(_ r: Int) -> PoolRequestID {
        PoolRequestID(slot: Int32(truncatingIfNeeded: r), generation: requests[r].generation)
    }

    @inline(__always) private func liveRequest(_ id: PoolRequestID) -> Int? {
        let i = Int(id.slot)
        guard i >= 0, i < requests.count, requests[i].generation == id.generation, requests[i].queued else { return nil }
        return i
    }

    /// Takes a request slot and links it at the tail of its FIFO.
    private mutating func enqueue(exclusive: Bool) -> Int {
        let i: Int
        if let f = freeRequests.popLast() {
            i = Int(f)
        } else {
            i = requests.count
            requests.append(RequestSlot())
        }
        let r = Int32(truncatingIfNeeded: i)
        var q = exclusive ? exclusiveQueue : normalQueue
        requests[i].queued = true
        requests[i].exclusive = exclusive
        requests[i].seq = nextSeq
        nextSeq &+= 1
        requests[i].next = -1
        requests[i].prev = q.tail
        if q.tail >= 0 { requests[Int(q.tail)].next = r } else { q.head = r }
        q.tail = r
        q.count += 1
        if exclusive { exclusiveQueue = q } else { normalQueue = q }
        return i
    }

    /// Unlinks a queued request, frees its slot (its id dies) and its `max_pending_requests` unit.
    private mutating func dequeue(_ i: Int) {
        let exclusive = requests[i].exclusive
        var q = exclusive ? exclusiveQueue : normalQueue
        let p = requests[i].prev, n = requests[i].next
        if p >= 0 { requests[Int(p)].next = n } else { q.head = n }
        if n >= 0 { requests[Int(n)].prev = p } else { q.tail = p }
        q.count -= 1
        if exclusive { exclusiveQueue = q } else { normalQueue = q }
        requests[i].queued = false
        requests[i].prev = -1
        requests[i].next = -1
        requests[i].generation &+= 1
        freeRequests.append(Int32(truncatingIfNeeded: i))
        config.maxPendingRequests?.count.release()
        stats.adjust(.rqPendingActive, -1)
    }
}
