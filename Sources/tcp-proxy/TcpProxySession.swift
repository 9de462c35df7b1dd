import Common

/// One proxied TCP connection: the terminal read filter of the downstream connection, and the
/// owner of the upstream connection it opens.
///
/// ```
/// client ──► downstream.readBuffer ──onData──► upstream.write (socket at once, rest queued)
/// client ◄── downstream.write ◄──onData── upstream.readBuffer ◄── server
///    a side's write queue over its high watermark ⇒ the other side stops reading (readDisable)
///    FIN from one side ⇒ shutdown(SHUT_WR) on the other once flushed (half-close)
///    both directions finished, or a reset, or a timeout ⇒ the session ends
/// ```
///
/// States: connecting (data from the client waits in its read buffer, bounded) → open →
/// closed. A failed or timed-out connect retries on another host, up to max_connect_attempts.
final class TcpProxySession: ReadFilter, ConnectionCallbacks, ActiveSession {
    let factory: TcpProxyFactory
    unowned(unsafe) let worker: Worker
    let downstream: Connection
    var context: DownstreamContext
    /// The cluster (this worker's view, of the generation the session started in).
    private var cluster: WorkerCluster?
    private var upstream: Connection?
    private var hostIndex = -1
    private var attempted: [Int] = []
    private var timer: Timer?
    private var connectStartMs: UInt64 = 0
    private var lastActivityMs: UInt64
    private var finished = false
    private var holdsCircuitBreaker = false
    /// Holding a slot of the pending-connects / retries circuit breakers.
    private var holdsPending = false
    private var holdsRetry = false
    private var upstreamConnected = false
    /// Envoy response flags for the access log.
    private var flags = ""

    init(factory: TcpProxyFactory, worker: Worker, downstream: Connection, context: DownstreamContext) {
        self.factory = factory; self.worker = worker; self.downstream = downstream; self.context = context
        self.lastActivityMs = context.startMs
    }

    private var stats: TcpProxyStats { factory.stats }

    // MARK: - ReadFilter

    func onNewConnection() -> FilterStatus {
        timer = Timer(worker.dispatcher) { [unowned self] in onTimer() }
        var rng = FastRandom(seed: context.connectionId &* 0x9e3779b97f4a7c15)
        let name = factory.pickCluster(&rng)
        guard let c = worker.clusters[name] else {
            worker.stats.inc(stats.downstreamCxNoRoute)
            flags = "NR"
            finish()
            return .stopIteration
        }
        cluster = c
        connectNext()
        return .stopIteration
    }

    func onData(_ buffer: Buffer, endStream: Bool) -> FilterStatus {
        lastActivityMs = monotonicMs()
        if let up = upstream, upstreamConnected {
            let n = buffer.count
            worker.stats.add(stats.downstreamCxRxBytesTotal, n)
            worker.stats.add(cluster!.snapshot.stats.upstreamCxTxBytesTotal, n)
            up.write(buffer, endStream: endStream)
        }
        // While connecting, bytes wait in the downstream read buffer (bounded by its limit).
        return .stopIteration
    }

    // MARK: - Upstream

    /// Picks a host not yet tried and starts connecting; ends the session when none is left.
    private func connectNext() {
        guard let c = cluster else { return }
        let cs = c.snapshot
        // A retry counts against max_retries while it is in flight; checked before the
        // balancer moves on, so a refused retry takes no pick from anyone.
        if !attempted.isEmpty {
            worker.stats.inc(cs.stats.upstreamRqRetry)
            if !holdsRetry {
                guard cs.retries.tryAcquire(limit: cs.config.maxRetries ?? Int.max) else {
                    worker.stats.inc(cs.stats.upstreamRqRetryOverflow)
                    flags = "UF,UO"
                    finish()
                    return
                }
                holdsRetry = true
            }
        }
        let key: UInt64? = factory.config.hashSourceIp ? context.remote.map { fnv1a64($0.ipBytes) } : nil
        guard let h = c.pick(hashKey: key, attempted: attempted) else {
            worker.stats.inc(cs.stats.upstreamCxNoneHealthy)
            flags = "UH"
            finish()
            return
        }
        if let max = cs.config.maxConnections {
            guard cs.openConnections.tryAcquire(limit: max) else {
                worker.stats.inc(cs.stats.upstreamCxOverflow)
                flags = "UO"
                finish()
                return
            }
            holdsCircuitBreaker = true
        }
        if !holdsPending {
            guard cs.pending.tryAcquire(limit: cs.config.maxPending ?? Int.max) else {
                worker.stats.inc(cs.stats.upstreamRqPendingOverflow)
                if holdsCircuitBreaker { cs.openConnections.release(); holdsCircuitBreaker = false }
                flags = "UO"
                finish()
                return
            }
            holdsPending = true
        }
        hostIndex = h
        attempted.append(h)
        let host = cs.hosts[h]
        c.onStart(h)
        worker.stats.inc(cs.stats.upstreamCxTotal)
        worker.stats.inc(cs.stats.upstreamCxActive)
        host.stats.inc(.cxTotal, worker.stats)
        host.stats.inc(.cxActive, worker.stats)
        connectStartMs = monotonicMs()
        // With TLS to the host, the PROXY header goes first in clear and "connected" means the
        // handshake finished (the connect timeout covers it; a failure retries like a refusal).
        var tls: (TlsContext, TlsStats)?
        var clear: [UInt8] = []
        var serverName: String?
        if let t = cs.config.tls {
            tls = (t.context, cs.stats.tls)
            if t.autoSni { serverName = context.serverName ?? downstream.tlsServerName }
            if let v = cs.config.sendProxyProtocol {
                clear = ProxyProtocol.encode(version: v, source: context.remote, destination: context.local)
            }
        }
        let (conn, err) = Connection.connect(worker: worker, to: host.address, bufferLimit: context.listener.config.bufferLimit,
                                             callbacks: self, tls: tls, clear: clear, serverName: serverName)
        guard let conn else {
            connectFailed(errno: err, timeout: false)
            return
        }
        upstream = conn
        timer?.arm(ms: cs.config.connectTimeoutMs)
    }

    /// Gives back the pending-connect and retry circuit breaker slots (connected, or done trying).
    private func releaseConnectSlots() {
        guard let cs = cluster?.snapshot else { return }
        if holdsPending { cs.pending.release(); holdsPending = false }
        if holdsRetry { cs.retries.release(); holdsRetry = false }
    }

    /// Undoes the accounting of the host being tried.
    private func releaseHost() {
        guard let c = cluster, hostIndex >= 0 else { return }
        let cs = c.snapshot
        c.onEnd(hostIndex)
        worker.stats.dec(cs.stats.upstreamCxActive)
        cs.hosts[hostIndex].stats.dec(.cxActive, worker.stats)
        worker.stats.inc(cs.stats.upstreamCxDestroy)
        if holdsCircuitBreaker { cs.openConnections.release(); holdsCircuitBreaker = false }
        hostIndex = -1
    }

    private func connectFailed(errno: Int32, timeout: Bool) {
        guard let c = cluster else { return }
        let cs = c.snapshot
        if timeout { worker.stats.inc(cs.stats.upstreamCxConnectTimeout) }
        worker.stats.inc(cs.stats.upstreamCxConnectFail)
        if hostIndex >= 0 {
            cs.hosts[hostIndex].stats.inc(.cxConnectFail, worker.stats)
            cs.hosts[hostIndex].outlier?.failure()
        }
        if let up = upstream { up.callbacks = nil; up.close(); upstream = nil }
        releaseHost()
        if attempted.count < factory.config.maxConnectAttempts && downstream.state == .open {
            connectNext()
            return
        }
        if factory.config.maxConnectAttempts > 1 { worker.stats.inc(cs.stats.upstreamCxConnectAttemptsExceeded) }
        flags = factory.config.maxConnectAttempts > 1 ? "UF,URX" : "UF"
        finish()
    }

    func onConnected(_ connection: Connection) {
        guard let c = cluster else { return }
        upstreamConnected = true
        releaseConnectSlots()
        worker.stats.record(c.snapshot.stats.upstreamCxConnectMs, monotonicMs() &- connectStartMs)
        if hostIndex >= 0 { c.snapshot.hosts[hostIndex].outlier?.success() }
        if let v = c.snapshot.config.sendProxyProtocol, c.snapshot.config.tls == nil {
            connection.write(bytes: ProxyProtocol.encode(version: v, source: context.remote, destination: context.local))
        }
        lastActivityMs = monotonicMs()
        armIdle()
        // No filter but us sees the bytes: bulk transfers may skip user space.
        if factory.config.splice && downstream.readFilters.count == 1 && downstream.writeFilters.isEmpty {
            downstream.spliceTarget = connection
            connection.spliceTarget = downstream
        }
        // Bytes (and a FIN) the client sent while we were connecting.
        if !downstream.readBuffer.isEmpty || downstream.readEOF {
            _ = onData(downstream.readBuffer, endStream: downstream.readEOF)
        }
        downstream.continueReading()
    }

    func onConnectFailed(_ connection: Connection, errno: Int32) {
        upstream = nil
        connectFailed(errno: errno, timeout: false)
    }

    /// Bytes from the upstream: straight to the client.
    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {
        lastActivityMs = monotonicMs()
        let n = buffer.count
        worker.stats.add(cluster!.snapshot.stats.upstreamCxRxBytesTotal, n)
        worker.stats.add(stats.downstreamCxTxBytesTotal, n)
        downstream.write(buffer, endStream: endStream)
    }

    func onSpliced(_ connection: Connection, bytes n: Int) {
        lastActivityMs = monotonicMs()
        guard let cs = cluster?.snapshot else { return }
        if connection === downstream {
            worker.stats.add(stats.downstreamCxRxBytesTotal, n)
            worker.stats.add(cs.stats.upstreamCxTxBytesTotal, n)
        } else {
            worker.stats.add(cs.stats.upstreamCxRxBytesTotal, n)
            worker.stats.add(stats.downstreamCxTxBytesTotal, n)
        }
    }

    // MARK: - Flow control

    func onAboveWriteBufferHighWatermark(_ connection: Connection) {
        if connection === downstream {
            upstream?.readDisable()
        } else {
            downstream.readDisable()
            worker.stats.inc(stats.downstreamFlowControlPausedReadingTotal)
        }
    }

    func onBelowWriteBufferLowWatermark(_ connection: Connection) {
        if connection === downstream {
            upstream?.readEnable()
        } else {
            downstream.readEnable()
            worker.stats.inc(stats.downstreamFlowControlResumedReadingTotal)
        }
    }

    // MARK: - Close

    func onClose(_ connection: Connection, remote: Bool) {
        if connection === downstream {
            if !downstream.finishedCleanly && flags.isEmpty { flags = "DC" }
            guard let up = upstream, up.state != .closed else { finish(); return }
            if !upstreamConnected { finish(); return }
            // The client went away: let the server's side finish what it has queued.
            if !downstream.finishedCleanly { up.closeAfterFlush() }
        } else {
            if !connection.finishedCleanly && flags.isEmpty { flags = "UC" }
            if downstream.state == .closed { finish(); return }
            if !connection.finishedCleanly {
                worker.stats.inc(stats.upstreamFlushTotal)
                downstream.closeAfterFlush()
            }
        }
        if downstream.state == .closed && (upstream?.state ?? .closed) == .closed { finish() }
    }

    func forceClose() { finish() }

    // MARK: - Timers

    private func armIdle() {
        let idle = factory.config.idleTimeoutMs
        var next = idle == 0 ? UInt64.max : idle
        if let max = factory.config.maxDurationMs {
            let left = max > (monotonicMs() &- context.startMs) ? max - (monotonicMs() &- context.startMs) : 0
            next = Swift.min(next, left)
        }
        if next != UInt64.max { timer?.arm(ms: Swift.max(next, 1)) }
    }

    private func onTimer() {
        let now = monotonicMs()
        if !upstreamConnected {
            connectFailed(errno: 110, timeout: true)  // ETIMEDOUT
            return
        }
        if let max = factory.config.maxDurationMs, now &- context.startMs >= max {
            worker.stats.inc(stats.maxDownstreamConnectionDuration)
            flags = "DT"
            finish()
            return
        }
        let idle = factory.config.idleTimeoutMs
        if idle > 0 && now &- lastActivityMs >= idle {
            worker.stats.inc(stats.idleTimeout)
            flags = "SI"
            finish()
            return
        }
        // Activity since arming: wait for what is left (one timer, never reset per byte).
        let idleLeft = idle == 0 ? UInt64.max : idle - (now &- lastActivityMs)
        var next = idleLeft
        if let max = factory.config.maxDurationMs { next = Swift.min(next, max - (now &- context.startMs)) }
        timer?.arm(ms: Swift.max(next, 1))
    }

    /// Ends the session once: closes what is open, settles stats, writes the access log.
    private func finish() {
        if finished { return }
        finished = true
        timer?.cancel()
        // The local address is looked up lazily: do it while the socket is still open.
        let logs = worker.accessLogs[context.listener.name]
        let localAddress = logs != nil ? context.local : nil
        let cs = cluster?.snapshot
        downstream.spliceTarget = nil
        upstream?.spliceTarget = nil
        if let up = upstream {
            up.callbacks = nil
            if up.state != .closed { up.close() }
            if upstreamConnected, let cs { worker.stats.record(cs.stats.upstreamCxLengthMs, monotonicMs() &- connectStartMs) }
            if let cs {
                worker.stats.inc(up.finishedCleanly || flags == "DC" || flags.isEmpty ? cs.stats.upstreamCxDestroyLocal : cs.stats.upstreamCxDestroyRemote)
            }
        }
        releaseHost()
        releaseConnectSlots()
        downstream.callbacks = nil
        if downstream.state != .closed { downstream.close() }
        if let logs {
            var e = AccessLogEntry()
            e.startWallMs = context.startWallMs
            e.durationMs = monotonicMs() &- context.startMs
            e.downstreamRemote = context.remote
            e.downstreamLocal = localAddress
            e.upstreamHost = attempted.last.flatMap { cs?.hosts[$0].address }
            e.cluster = cs?.name ?? ""
            e.bytesReceived = downstream.bytesRead
            e.bytesSent = downstream.bytesWritten
            e.responseFlags = flags
            e.connectionId = context.connectionId
            e.requestedServerName = context.serverName ?? downstream.tlsServerName
            e.downstreamTlsVersion = downstream.tlsVersion
            for l in logs { l.log(e) }
        }
        worker.downstreamClosed(context)
        worker.untrack(self)
    }
}
