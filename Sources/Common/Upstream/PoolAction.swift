/// The vocabulary of `PoolStateMachine`: the ids it hands out, the actions it asks its driver to
/// perform, and why a request failed. Plain values: no I/O, no references.

/// A connection slot of one pool. `slot` indexes the driver's own per-connection arrays (the
/// client, its idle timer); `generation` changes each time the slot is reused, so an event for
/// a connection the pool already forgot (a late timer, a close after `.close`) is ignored.
public struct PoolConnectionID: Hashable, Sendable, CustomStringConvertible {
    /// Index into the pool's (and the driver's) per-connection arrays.
    public let slot: Int32
    /// Bumped when the slot is freed.
    public let generation: UInt32
    /// Ids come from the pool; tests build them to name the slots they expect.
    public init(slot: Int32, generation: UInt32) { self.slot = slot; self.generation = generation }
    /// `cx<slot>.<generation>`, for logs and test failures.
    public var description: String { "cx\(slot).\(generation)" }
}

/// A queued request of one pool (only requests that had to wait get one). `slot` indexes the
/// driver's waiter table; the id dies when the request is attached, failed or cancelled.
public struct PoolRequestID: Hashable, Sendable, CustomStringConvertible {
    /// Index into the pool's (and the driver's) per-request arrays.
    public let slot: Int32
    /// Bumped when the slot is freed.
    public let generation: UInt32
    /// Ids come from the pool; tests build them to name the slots they expect.
    public init(slot: Int32, generation: UInt32) { self.slot = slot; self.generation = generation }
    /// `rq<slot>.<generation>`, for logs and test failures.
    public var description: String { "rq\(slot).\(generation)" }
}

/// Why the pool gave up on a request. The owner decides what the downstream sees (503, -ERR)
/// and whether to retry on another host (every reason but the two overflows is worth a retry).
public enum PoolFailureReason: Hashable, Sendable {
    /// `max_pending_requests` reached: the request was not queued (`upstream_rq_pending_overflow`).
    case pendingOverflow
    /// `max_requests` reached when the request would have been attached (Envoy counts it as
    /// `upstream_rq_pending_overflow` too).
    case requestOverflow
    /// The connection it waited for failed to connect, and the connections still connecting
    /// cannot take it (`upstream_rq_pending_failure_eject`).
    case connectFailure
    /// Same, by the connect timeout.
    case connectTimeout
    /// `drainConnections` (host removed, host unhealthy, pool shutting down): the queued
    /// request is handed back (`upstream_rq_pending_failure_eject`).
    case drained
}

/// How a connect attempt ended without a usable client (reported by the host connector).
public enum PoolConnectFailure: Hashable, Sendable {
    /// Refused, reset, TLS handshake failed, PROXY header not written...
    case failed
    /// The connector's `connect_timeout` fired.
    case timeout

    var requestReason: PoolFailureReason { self == .timeout ? .connectTimeout : .connectFailure }
}

/// What `PoolStateMachine.checkout` did with a new request, at once.
public enum PoolCheckoutResult: Hashable, Sendable {
    /// A connection with room took it now: start the request on that client. The common case;
    /// it costs no request slot.
    case attached(PoolConnectionID)
    /// No connection had room: the request waits under this id until an `.attach` or `.fail`
    /// action names it, or the owner cancels it.
    case queued(PoolRequestID)
    /// Refused at once (breakers): nothing was queued.
    case failed(PoolFailureReason)
}

/// One thing the driver must do, in order. Actions name connections and queued requests by id.
public enum PoolAction: Hashable, Sendable {
    /// Open a new connection for this slot (host connector: connect, TLS, PROXY header, codec);
    /// answer with `connected` or `connectFailed`.
    case connect(PoolConnectionID)
    /// Start the queued request on this client. `exclusive`: the connection is the request's
    /// for good (it never comes back to the pool; the owner closes it and reports `connectionClosed`).
    case attach(PoolRequestID, to: PoolConnectionID, exclusive: Bool)
    /// Fail the queued request (its id is dead after this).
    case fail(PoolRequestID, PoolFailureReason)
    /// Close this connection (idle, drained, or connecting when no longer wanted). The pool
    /// already forgot it: the driver must not report `connectionClosed` for it.
    case close(PoolConnectionID)
    /// (Re)arm this connection's idle timer to fire `idleTimerFired` after `ms` milliseconds.
    /// The pool never asks to cancel it: a timer that fires on a busy connection does nothing.
    case armIdleTimer(PoolConnectionID, ms: UInt64)
}
