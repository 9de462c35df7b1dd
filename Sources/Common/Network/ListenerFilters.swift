/// The listener filters a connection passes before its filter chain is built, in order:
///
/// 1. PROXY protocol (`proxy_protocol: accept|optional`): reads the header a tier in front
///    sends before any data and rewrites the connection's addresses. A malformed header, or
///    none in `accept` mode, closes the connection (`downstream_cx_proxy_proto_error`); a
///    client too slow to send it counts `downstream_pre_cx_timeout` and is closed.
/// 2. TLS inspector (when a filter chain matches `server_names`): reads the ClientHello's
///    server name without consuming it and picks the chain. Not TLS, no SNI, or no hello
///    within `tls_inspector_timeout` (a server-speaks-first protocol): the default chain. No
///    chain for the name and no default: closed (`no_filter_chain_match`). A malformed hello:
///    closed (`tls_inspector.client_hello_invalid`).
///
/// 3. TLS handshake (when the chosen chain terminates TLS): the chain's filters start only once
///    the client finished its handshake, so a client that never does costs no upstream
///    connection; one slower than the chain's `tls.handshake_timeout` is closed
///    (`ssl.handshake_timeout`), a failed handshake counts `ssl.connection_error`.
///
/// The chain's filters then get the connection with every byte read so far: nothing is consumed
/// but the PROXY header, so TLS passes through untouched.
final class ListenerFilters: ActiveSession, ConnectionCallbacks {
    private enum Stage { case proxyProtocol, tlsInspector, tlsHandshake(chain: Int), done }
    unowned let worker: Worker
    let connection: Connection
    var context: DownstreamContext
    private var timer: Timer?
    private var stage = Stage.done

    init(worker: Worker, connection: Connection, context: DownstreamContext) {
        self.worker = worker; self.connection = connection; self.context = context
    }

    /// Runs the first filter the listener has. `Worker.accepted` calls this only when there is one.
    func start() {
        connection.callbacks = self
        timer = Timer(worker.dispatcher) { [unowned self] in onTimeout() }
        let cfg = context.listener.config
        if cfg.proxyProtocol != .off {
            stage = .proxyProtocol
            timer?.arm(ms: cfg.proxyProtocolTimeoutMs)
        } else {
            next()
        }
    }

    private var isDone: Bool { if case .done = stage { return true }; return false }

    private func startInspector() {
        stage = .tlsInspector
        timer?.arm(ms: context.listener.config.tlsInspectorTimeoutMs)
    }

    func forceClose() { fail() }

    private func fail() {
        guard !isDone else { return }
        stage = .done
        timer?.cancel()
        connection.callbacks = nil
        connection.close()
        worker.downstreamClosed(context)
        worker.untrack(self)
    }

    private func onTimeout() {
        let stats = context.listener.stats
        switch stage {
        case .proxyProtocol:
            worker.stats.inc(stats.downstreamPreCxTimeout)
            fail()
        case .tlsInspector:
            // Nothing that decides in time: a client waiting for the server to speak first.
            worker.stats.inc(stats.tlsInspectorTimeout)
            chain(context.listener.serverNames?.defaultChain)
        case .tlsHandshake:
            worker.stats.inc(stats.tls.handshakeTimeout)
            fail()
        case .done:
            break
        }
    }

    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {
        if case .proxyProtocol = stage { proxyProtocol(buffer, endStream: endStream) }
        if case .tlsInspector = stage { inspect(buffer, endStream: endStream) }
        // During the TLS handshake, bytes that came with it wait in the buffer for the chain.
    }

    func onTlsHandshake(_ connection: Connection) {
        guard case .tlsHandshake(let chain) = stage else { return }
        // mTLS: a presented certificate must carry a name the chain accepts.
        if let tls = context.listener.config.chains[chain].tls, !tls.matchSubjectAltNames.isEmpty,
           let peer = connection.tlsPeerCertificate, !peer.matches(tls.matchSubjectAltNames) {
            worker.stats.inc(context.listener.stats.tls.failVerifySan)
            return fail()
        }
        // The caller (the read that finished the handshake) delivers what came with it.
        handOff(chain: chain, redeliver: false)
    }

    private func proxyProtocol(_ buffer: Buffer, endStream: Bool) {
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
                next()
            } else {
                worker.stats.inc(stats.downstreamCxProxyProtoError)
                fail()
            }
        case .header(let h, let length):
            worker.stats.inc(h.version == 1 ? stats.proxyProtoV1Found : stats.proxyProtoV2Found)
            buffer.drain(length)
            if let s = h.source { context.remote = s }
            if let d = h.destination { context.local = d }
            next()
        }
    }

    /// After the PROXY header: the inspector, or the (only) chain.
    private func next() {
        if context.listener.serverNames != nil { startInspector() } else { chain(0) }
    }

    private func inspect(_ buffer: Buffer, endStream: Bool) {
        let stats = context.listener.stats
        guard let table = context.listener.serverNames else { return chain(0) }
        switch ClientHello.parse(buffer.readable) {
        case .needMore:
            if buffer.count >= ClientHello.maxBuffered {
                worker.stats.inc(stats.tlsInspectorClientHelloTooLarge)
                fail()
            } else if endStream {
                // The client finished sending before a whole hello: no name to route by.
                worker.stats.inc(stats.tlsInspectorTlsNotFound)
                chain(table.defaultChain)
            }
        case .notTls:
            worker.stats.inc(stats.tlsInspectorTlsNotFound)
            chain(table.defaultChain)
        case .tooLarge:
            worker.stats.inc(stats.tlsInspectorClientHelloTooLarge)
            fail()
        case .invalid:
            worker.stats.inc(stats.tlsInspectorClientHelloInvalid)
            fail()
        case .hello(let h):
            worker.stats.inc(stats.tlsInspectorTlsFound)
            worker.stats.inc(h.serverName == nil ? stats.tlsInspectorSniNotFound : stats.tlsInspectorSniFound)
            worker.stats.inc(h.alpn.isEmpty ? stats.tlsInspectorAlpnNotFound : stats.tlsInspectorAlpnFound)
            context.serverName = h.serverName
            chain(table.match(h.serverName))
        }
    }

    /// The connection takes filter chain `chain`: its TLS handshake first when it terminates
    /// TLS, else its filters at once. No chain: closed (`no_filter_chain_match`).
    private func chain(_ chain: Int?) {
        guard let chain else {
            worker.stats.inc(context.listener.stats.noFilterChainMatch)
            return fail()
        }
        let r = context.listener
        guard let tls = r.config.chains[chain].tls else { return handOff(chain: chain, redeliver: true) }
        guard connection.startTls(tls.context, stats: r.stats.tls) else {
            worker.stats.inc(r.stats.tls.connectionError)
            return fail()
        }
        stage = .tlsHandshake(chain: chain)
        timer?.arm(ms: tls.handshakeTimeoutMs)
        connection.redeliver()  // reads what is waiting: the ClientHello handed to OpenSSL, or a new edge
    }

    /// Gives the connection to a chain's filters, with the bytes read so far.
    private func handOff(chain: Int, redeliver: Bool) {
        stage = .done
        timer?.cancel()
        connection.callbacks = nil
        worker.untrack(self)
        context.listener.factories[chain].createFilters(worker: worker, connection: connection, context: context)
        if redeliver { connection.redeliver() }
    }

    func onClose(_ connection: Connection, remote: Bool) {
        guard !isDone else { return }
        stage = .done
        timer?.cancel()
        worker.downstreamClosed(context)
        worker.untrack(self)
    }

    func onConnected(_ connection: Connection) {}
    func onConnectFailed(_ connection: Connection, errno: Int32) {}
    func onAboveWriteBufferHighWatermark(_ connection: Connection) {}
    func onBelowWriteBufferLowWatermark(_ connection: Connection) {}
}
