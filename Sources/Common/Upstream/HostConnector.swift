import Glibc
/// Opens one upstream connection for one downstream (or, later, for a pool): the shared upstream
/// path of every binary (Envoy's upstream connect in tcp_proxy and its connection pools).
///
/// ```
/// start ─► pick a host (balancer, hash key, hosts already tried)
///       ─► breakers: max_connections, max_pending_requests, max_retries (on a retry)
///       ─► connect (TLS to the host after a clear PROXY header; "connected" = handshake done)
///            ├─ connected ─► onUpstreamConnected (host accounting stays until `release`)
///            └─ refused / timed out / TLS failed ─► outlier failure, retry on a host not
///               tried yet while attempts remain ─► else onUpstreamFailed(flags)
/// ```
///
/// What it counts (Envoy's names): `upstream_cx_total`, `_active`, `_destroy[_local|_remote]`,
/// `_connect_fail`, `_connect_timeout`, `_connect_attempts_exceeded`, `_none_healthy`,
/// `_overflow`, `upstream_rq_pending_overflow`, `upstream_rq_retry[_overflow]`, `_connect_ms`,
/// `_length_ms`, and the host's own counters. The owner keeps no upstream bookkeeping.
///
/// Confined to one worker. The owner's timer drives the connect timeout (`connectTimedOut`), so
/// a connection costs no second timer. After `onUpstreamConnected` the owner sets the
/// connection's callbacks to itself and calls `release` exactly once when it is done with it.
public final class HostConnector: ConnectionCallbacks {
    /// What a connect needs from its owner, fixed for the connector's life.
    public struct Settings {
        /// The balancer's key (source IP, header, Redis key), or nil.
        public var hashKey: UInt64?
        /// Hosts to try before giving up (tcp_proxy's `max_connect_attempts`).
        public var maxAttempts: Int
        /// The upstream connection's buffer limit (the downstream listener's).
        public var bufferLimit: Int
        /// The downstream's addresses, for a PROXY header.
        public var source: SocketAddress?
        public var destination: SocketAddress?
        /// The client's server name, for `auto_sni`.
        public var clientServerName: String?

        public init(hashKey: UInt64? = nil, maxAttempts: Int = 1, bufferLimit: Int, source: SocketAddress? = nil,
                    destination: SocketAddress? = nil, clientServerName: String? = nil) {
            self.hashKey = hashKey; self.maxAttempts = maxAttempts; self.bufferLimit = bufferLimit
            self.source = source; self.destination = destination; self.clientServerName = clientServerName
        }
    }

    public unowned(unsafe) let worker: Worker
    /// This worker's view of the cluster, of the generation the connector started in.
    public let cluster: WorkerCluster
    private let settings: Settings
    private unowned(unsafe) let callbacks: HostConnectorCallbacks
    /// The owner's timer, armed here for each attempt's connect timeout.
    private unowned(unsafe) let timer: Timer
    /// The host being tried or connected (index in `cluster.snapshot.hosts`), -1 when none.
    public private(set) var host = -1
    /// Hosts tried, in order (the last is the one connected or failed last).
    public private(set) var attempted: [Int] = []
    /// The connection being made or made.
    public private(set) var connection: Connection?
    public private(set) var connected = false
    private var connectStartMs: UInt64 = 0
    private var holdsConnection = false
    private var holdsPending = false
    private var holdsRetry = false
    private var done = false

    public init(worker: Worker, cluster: WorkerCluster, settings: Settings, timer: Timer, callbacks: HostConnectorCallbacks) {
        self.worker = worker; self.cluster = cluster; self.settings = settings; self.timer = timer; self.callbacks = callbacks
    }

    /// The host's address once one was tried.
    public var hostAddress: SocketAddress? { attempted.last.map { cluster.snapshot.hosts[$0].address } }

    /// Starts the first attempt. The result comes as a callback, maybe before this returns.
    public func start() { connectNext() }

    /// The owner's timer fired while connecting: this attempt timed out.
    public func connectTimedOut() {
        guard !connected, !done else { return }
        failed(errno: 110, timeout: true)  // ETIMEDOUT
    }

    /// The owner is done (the session ended): closes what is still being made, settles the
    /// host's accounting and the breakers. `remoteClosed`: the upstream ended it (for
    /// `upstream_cx_destroy_remote`). Idempotent.
    public func release(remoteClosed: Bool) {
        if done { return }
        done = true
        let cs = cluster.snapshot
        if let c = connection {
            c.callbacks = nil
            if c.state != .closed { c.close() }
            if connected { worker.stats.record(cs.stats.upstreamCxLengthMs, monotonicMs() &- connectStartMs) }
            worker.stats.inc(remoteClosed ? cs.stats.upstreamCxDestroyRemote : cs.stats.upstreamCxDestroyLocal)
        }
        releaseHost()
        releaseConnectSlots()
    }

    // MARK: - Attempts

    /// Picks a host not tried yet and starts connecting; reports failure when none is left.
    private func connectNext() {
        let cs = cluster.snapshot
        // A retry counts against max_retries while it is in flight; checked before the
        // balancer moves on, so a refused retry takes no pick from anyone.
        if !attempted.isEmpty {
            worker.stats.inc(cs.stats.upstreamRqRetry)
            if !holdsRetry {
                guard cs.retries.tryAcquire(limit: cs.config.maxRetries ?? Int.max) else {
                    worker.stats.inc(cs.stats.upstreamRqRetryOverflow)
                    return giveUp("UF,UO")
                }
                holdsRetry = true
            }
        }
        guard let h = cluster.pickHost(hashKey: settings.hashKey, attempted: attempted) else { return giveUp("UH") }
        // Cross-worker atomics only when a limit is set.
        if let max = cs.config.maxConnections {
            guard cs.openConnections.tryAcquire(limit: max) else {
                worker.stats.inc(cs.stats.upstreamCxOverflow)
                return giveUp("UO")
            }
            holdsConnection = true
        }
        if !holdsPending, let max = cs.config.maxPending {
            guard cs.pending.tryAcquire(limit: max) else {
                worker.stats.inc(cs.stats.upstreamRqPendingOverflow)
                if holdsConnection { cs.openConnections.release(); holdsConnection = false }
                return giveUp("UO")
            }
            holdsPending = true
        }
        host = h
        attempted.append(h)
        cluster.hostOpened(h, worker.stats)
        connectStartMs = monotonicMs()
        // With TLS to the host, the PROXY header goes first in clear and "connected" means the
        // handshake finished (the connect timeout covers it; a failure retries like a refusal).
        var tls: (TlsContext, TlsStats)?
        var clear: [UInt8] = []
        var serverName: String?
        if let t = cs.config.tls {
            tls = (t.context, cs.stats.tls)
            if t.autoSni { serverName = settings.clientServerName }
            if let v = cs.config.sendProxyProtocol {
                clear = ProxyProtocol.encode(version: v, source: settings.source, destination: settings.destination)
            }
        }
        let (conn, err) = Connection.connect(worker: worker, to: cs.hosts[h].address, bufferLimit: settings.bufferLimit,
                                             callbacks: self, tls: tls, clear: clear, serverName: serverName)
        guard let conn else { return failed(errno: err, timeout: false) }
        connection = conn
        timer.arm(ms: cs.config.connectTimeoutMs)
    }

    /// The attempt on `host` failed (every attempt has a host: it is set before connecting).
    private func failed(errno: Int32, timeout: Bool) {
        let cs = cluster.snapshot
        // Out of descriptors or ports is this process's trouble, not the host's: no outlier strike.
        cluster.hostConnectFailed(host, timeout: timeout, outlier: !isLocalConnectError(errno))
        if let c = connection { c.callbacks = nil; c.close(); connection = nil }
        releaseHost()
        if !callbacks.upstreamStillWanted { return giveUp("DC") }  // the client left: no retry, nothing exceeded
        if attempted.count < settings.maxAttempts { return connectNext() }
        if settings.maxAttempts > 1 { worker.stats.inc(cs.stats.upstreamCxConnectAttemptsExceeded) }
        giveUp(settings.maxAttempts > 1 ? "UF,URX" : "UF")
    }

    private func giveUp(_ flags: String) {
        releaseConnectSlots()
        callbacks.onUpstreamFailed(flags: flags)
    }

    /// Gives back the pending-connect and retry breaker slots (connected, or done trying).
    private func releaseConnectSlots() {
        let cs = cluster.snapshot
        if holdsPending { cs.pending.release(); holdsPending = false }
        if holdsRetry { cs.retries.release(); holdsRetry = false }
    }

    /// Undoes the accounting of the host being tried or used.
    private func releaseHost() {
        guard host >= 0 else { return }
        cluster.hostClosed(host, worker.stats)
        if holdsConnection { cluster.snapshot.openConnections.release(); holdsConnection = false }
        host = -1
    }

    // MARK: - ConnectionCallbacks (while connecting)

    public func onConnected(_ c: Connection) {
        let cs = cluster.snapshot
        connected = true
        releaseConnectSlots()
        worker.stats.record(cs.stats.upstreamCxConnectMs, monotonicMs() &- connectStartMs)
        cs.hosts[host].outlier?.success()
        if let v = cs.config.sendProxyProtocol, cs.config.tls == nil {
            c.write(bytes: ProxyProtocol.encode(version: v, source: settings.source, destination: settings.destination))
        }
        callbacks.onUpstreamConnected(c)
    }

    public func onConnectFailed(_ c: Connection, errno: Int32) {
        connection = nil
        failed(errno: errno, timeout: false)
    }

    // Nothing is read or written before the owner takes the connection over.
    public func onData(_ c: Connection, _ buffer: Buffer, endStream: Bool) {}
    public func onClose(_ c: Connection, remote: Bool) {}
    public func onAboveWriteBufferHighWatermark(_ c: Connection) {}
    public func onBelowWriteBufferLowWatermark(_ c: Connection) {}
}

/// What a `HostConnector` tells its owner. Called on the owner's worker.
public protocol HostConnectorCallbacks: AnyObject {
    /// Connected (TLS included). Set `connection.callbacks` to yourself now.
    func onUpstreamConnected(_ connection: Connection)
    /// No connection: every attempt failed or a breaker refused. `flags`: Envoy's response
    /// flags for the access log (UH no healthy host, UO overflow, UF connect failure, URX
    /// attempts exceeded).
    func onUpstreamFailed(flags: String)
    /// False once the downstream went away: no retry is started for nobody.
    var upstreamStillWanted: Bool { get }
}

/// Errors of `socket()`/`connect()` that say this process or machine is out of something
/// (descriptors, buffers, local ports), not that the host failed: they must not eject hosts.
public func isLocalConnectError(_ e: Int32) -> Bool {
    e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM || e == EADDRNOTAVAIL || e == EAGAIN
}
