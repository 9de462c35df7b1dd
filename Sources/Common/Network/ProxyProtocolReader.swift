/// The PROXY protocol listener filter: reads the header a tier in front sends before any data,
/// rewrites the connection's addresses, then hands the connection to the listener's filters
/// with whatever bytes followed the header. A malformed header, or none in `accept` mode,
/// closes the connection and counts `downstream_cx_proxy_proto_error`; a client too slow to
/// send it counts `downstream_pre_cx_timeout`.
final class ProxyProtocolReader: ActiveSession, ConnectionCallbacks {
    unowned let worker: Worker
    let connection: Connection
    var context: DownstreamContext
    private var timer: Timer?
    private var done = false

    init(worker: Worker, connection: Connection, context: DownstreamContext) {
        self.worker = worker; self.connection = connection; self.context = context
    }

    func start() {
        connection.callbacks = self
        timer = Timer(worker.dispatcher) { [unowned self] in
            worker.stats.inc(context.listener.stats.downstreamPreCxTimeout)
            fail()
        }
        timer?.arm(ms: context.listener.config.proxyProtocolTimeoutMs)
    }

    func forceClose() { fail() }

    private func fail() {
        guard !done else { return }
        done = true
        timer?.cancel()
        connection.callbacks = nil
        connection.close()
        worker.downstreamClosed(context)
        worker.untrack(self)
    }

    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {
        guard !done else { return }
        let stats = context.listener.stats
        switch ProxyProtocol.parse(buffer.readable) {
        case .needMore:
            if endStream || buffer.count >= ProxyProtocol.v2MaxLength {
                worker.stats.inc(stats.downstreamCxProxyProtoError)
                fail()
            }
        case .invalid:
            worker.stats.inc(stats.downstreamCxProxyProtoError)
            fail()
        case .notProxy:
            if context.listener.config.proxyProtocol == .optional {
                worker.stats.inc(stats.proxyProtoNotFound)
                handOff(endStream: endStream)
            } else {
                worker.stats.inc(stats.downstreamCxProxyProtoError)
                fail()
            }
        case .header(let h, let length):
            worker.stats.inc(h.version == 1 ? stats.proxyProtoV1Found : stats.proxyProtoV2Found)
            buffer.drain(length)
            if let s = h.source { context.remote = s }
            if let d = h.destination { context.local = d }
            handOff(endStream: endStream)
        }
    }

    private func handOff(endStream: Bool) {
        done = true
        timer?.cancel()
        connection.callbacks = nil
        worker.untrack(self)
        context.listener.factory.createFilters(worker: worker, connection: connection, context: context)
        connection.redeliver()
    }

    func onClose(_ connection: Connection, remote: Bool) {
        guard !done else { return }
        done = true
        timer?.cancel()
        worker.downstreamClosed(context)
        worker.untrack(self)
    }

    func onConnected(_ connection: Connection) {}
    func onConnectFailed(_ connection: Connection, errno: Int32) {}
    func onAboveWriteBufferHighWatermark(_ connection: Connection) {}
    func onBelowWriteBufferLowWatermark(_ connection: Connection) {}
}
