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
final class TcpProxySession: ReadFilter, ConnectionCallbacks, ActiveSession, HostConnectorCallbacks {
    let factory: TcpProxyFactory
    unowned(unsafe) let worker: Worker
    let downstream: Connection
    var context: DownstreamContext
    /// The shared upstream path: picks, breakers, connect, retries, host accounting.
    private var connector: HostConnector?
    private var upstream: Connection?
    private var timer: Timer?
    private var lastActivityMs: UInt64
    private var finished = false
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
        let timer = Timer(worker.dispatcher) { [unowned self] in onTimer() }
        self.timer = timer
        var rng = FastRandom(seed: context.connectionId &* 0x9e3779b97f4a7c15)
        guard let c = worker.cluster(slot: factory.pickCluster(&rng)) else {
            worker.stats.inc(stats.downstreamCxNoRoute)
            flags = "NR"
            finish()
            return .stopIteration
        }
        let settings = HostConnector.Settings(
            hashKey: factory.config.hashSourceIp ? context.remote.map { fnv1a64($0.ipBytes) } : nil,
            maxAttempts: factory.config.maxConnectAttempts, bufferLimit: context.listener.config.bufferLimit,
            // The local address costs a getsockname: only when a PROXY header needs it.
            source: context.remote, destination: c.snapshot.config.sendProxyProtocol != nil ? context.local : nil,
            clientServerName: context.serverName ?? downstream.tlsServerName)
        let k = HostConnector(worker: worker, cluster: c, settings: settings, timer: timer, callbacks: self)
        connector = k
        k.start()
        return .stopIteration
    }

    func onData(_ buffer: Buffer, endStream: Bool) -> FilterStatus {
        lastActivityMs = monotonicMs()
        if let up = upstream, upstreamConnected {
            let n = buffer.count
            worker.stats.add(stats.downstreamCxRxBytesTotal, n)
            worker.stats.add(connector!.cluster.snapshot.stats.upstreamCxTxBytesTotal, n)
            up.write(buffer, endStream: endStream)
        }
        // While connecting, bytes wait in the downstream read buffer (bounded by its limit).
        return .stopIteration
    }

    // MARK: - HostConnectorCallbacks

    var upstreamStillWanted: Bool { downstream.state == .open }

    func onUpstreamFailed(flags f: String) {
        flags = f
        finish()
    }

    func onUpstreamConnected(_ connection: Connection) {
        upstream = connection
        upstreamConnected = true
        connection.callbacks = self
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

    // MARK: - ConnectionCallbacks (the upstream, once connected; the downstream)

    func onConnected(_ connection: Connection) {}
    func onConnectFailed(_ connection: Connection, errno: Int32) {}

    /// Bytes from the upstream: straight to the client.
    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {
        lastActivityMs = monotonicMs()
        let n = buffer.count
        worker.stats.add(connector!.cluster.snapshot.stats.upstreamCxRxBytesTotal, n)
        worker.stats.add(stats.downstreamCxTxBytesTotal, n)
        downstream.write(buffer, endStream: endStream)
    }

    func onSpliced(_ connection: Connection, bytes n: Int) {
        lastActivityMs = monotonicMs()
        guard let cs = connector?.cluster.snapshot else { return }
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
            connector?.connectTimedOut()
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
        downstream.spliceTarget = nil
        upstream?.spliceTarget = nil
        let cleanly = upstream?.finishedCleanly ?? false
        connector?.release(remoteClosed: !(cleanly || flags == "DC" || flags.isEmpty))
        downstream.callbacks = nil
        if downstream.state != .closed { downstream.close() }
        if let logs {
            var e = AccessLogEntry()
            e.startWallMs = context.startWallMs
            e.durationMs = monotonicMs() &- context.startMs
            e.downstreamRemote = context.remote
            e.downstreamLocal = localAddress
            e.upstreamHost = connector?.hostAddress
            e.cluster = connector?.cluster.snapshot.name ?? ""
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
