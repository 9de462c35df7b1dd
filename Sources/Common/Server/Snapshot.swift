/// Envoy's listener stats, `listener.<name>.*`.
public struct ListenerStats: Sendable {
    public let downstreamCxTotal: Counter
    public let downstreamCxActive: Gauge
    public let downstreamCxDestroy: Counter
    public let downstreamCxOverflow: Counter
    public let downstreamCxAcceptError: Counter
    public let downstreamCxLengthMs: Histogram
    public let downstreamPreCxTimeout: Counter
    public let downstreamCxProxyProtoError: Counter
    public let proxyProtoV1Found: Counter
    public let proxyProtoV2Found: Counter
    public let proxyProtoNotFound: Counter
    public let noFilterChainMatch: Counter
    public let tlsInspectorTlsFound: Counter
    public let tlsInspectorTlsNotFound: Counter
    public let tlsInspectorSniFound: Counter
    public let tlsInspectorSniNotFound: Counter
    public let tlsInspectorAlpnFound: Counter
    public let tlsInspectorAlpnNotFound: Counter
    public let tlsInspectorClientHelloTooLarge: Counter
    public let tlsInspectorClientHelloInvalid: Counter
    public let tlsInspectorTimeout: Counter
    /// TLS termination: `ssl.handshake`, `ssl.connection_error`.
    public let tls: TlsStats

    public init(store: StatsStore, listener: String) {
        let p = "listener.\(listener)."
        downstreamCxTotal = store.counter(p + "downstream_cx_total")
        downstreamCxActive = store.gauge(p + "downstream_cx_active")
        downstreamCxDestroy = store.counter(p + "downstream_cx_destroy")
        downstreamCxOverflow = store.counter(p + "downstream_cx_overflow")
        downstreamCxAcceptError = store.counter(p + "downstream_cx_accept_error")
        downstreamCxLengthMs = store.histogram(p + "downstream_cx_length_ms")
        downstreamPreCxTimeout = store.counter(p + "downstream_pre_cx_timeout")
        downstreamCxProxyProtoError = store.counter(p + "downstream_cx_proxy_proto_error")
        proxyProtoV1Found = store.counter(p + "proxy_proto.v1.found")
        proxyProtoV2Found = store.counter(p + "proxy_proto.v2.found")
        proxyProtoNotFound = store.counter(p + "proxy_proto.not_found")
        noFilterChainMatch = store.counter(p + "no_filter_chain_match")
        tlsInspectorTlsFound = store.counter(p + "tls_inspector.tls_found")
        tlsInspectorTlsNotFound = store.counter(p + "tls_inspector.tls_not_found")
        tlsInspectorSniFound = store.counter(p + "tls_inspector.sni_found")
        tlsInspectorSniNotFound = store.counter(p + "tls_inspector.sni_not_found")
        tlsInspectorAlpnFound = store.counter(p + "tls_inspector.alpn_found")
        tlsInspectorAlpnNotFound = store.counter(p + "tls_inspector.alpn_not_found")
        tlsInspectorClientHelloTooLarge = store.counter(p + "tls_inspector.client_hello_too_large")
        tlsInspectorClientHelloInvalid = store.counter(p + "tls_inspector.client_hello_invalid")
        tlsInspectorTimeout = store.counter(p + "tls_inspector.timeout")
        tls = TlsStats(store: store, prefix: p)
    }
}

/// Process-wide stats, `server.*`.
public struct ServerStats: Sendable {
    public let live: Gauge
    public let uptime: Gauge
    public let concurrency: Gauge
    public let totalConnections: Gauge
    public let reloadSuccess: Counter
    public let reloadRejected: Counter
    /// Connections closed because their queued output passed the hard cap (a producer that
    /// ignored the watermarks): memory stays bounded whatever a filter does.
    public let connectionWriteOverflow: Counter
    /// `access_log_file.*`, counted by every worker's access logs.
    public let accessLog: AccessLogStats

    public init(store: StatsStore) {
        accessLog = AccessLogStats(store: store)
        live = store.gauge("server.live")
        uptime = store.gauge("server.uptime")
        concurrency = store.gauge("server.concurrency")
        totalConnections = store.gauge("server.total_connections")
        reloadSuccess = store.counter("server.reload_success")
        reloadRejected = store.counter("server.reload_rejected")
        connectionWriteOverflow = store.counter("server.connection_write_overflow")
    }
}

/// Makes the per-connection filter state for one listener. Built once per config generation on
/// the main thread (resolving stat handles, clusters), shared by workers.
public protocol FilterFactory: Sendable {
    /// Called on a worker for each new downstream connection once listener filters (PROXY
    /// protocol) are done. The factory installs the connection's read filters; the terminal
    /// filter owns the session and calls `worker.track`.
    func createFilters(worker: Worker, connection: Connection, context: DownstreamContext)
}

/// A factory for datagram listeners (udp-proxy): takes over each worker's bound UDP socket.
public protocol DatagramFilterFactory: FilterFactory {
    /// Called on the worker for its socket of this listener. The returned object owns the
    /// socket and is dropped (`stop`) when the listener goes away; sessions may outlive it.
    func attach(worker: Worker, fd: Int32, listener: ListenerRuntime) -> DatagramListener
}

/// A worker's UDP listener, owned by the worker.
public protocol DatagramListener: AnyObject {
    /// A reload brought a new generation of this listener.
    func update(_ listener: ListenerRuntime)
    /// Stop receiving and close the socket.
    func stop()
}

extension DatagramFilterFactory {
    public func createFilters(worker: Worker, connection: Connection, context: DownstreamContext) {
        preconditionFailure("datagram listeners have no connections")
    }
}

/// Where a downstream connection came from, after listener filters.
public struct DownstreamContext {
    /// The client: the PROXY header's source when one was given, else the socket peer.
    public var remote: SocketAddress?
    /// The address the client connected to: the PROXY header's destination when given, else
    /// the socket's own address, looked up only when asked (a getsockname per use, not per accept).
    public var local: SocketAddress? {
        mutating get {
            if !localKnown { localValue = SocketAddress.local(of: fd); localKnown = true }
            return localValue
        }
        set { localValue = newValue; localKnown = true }
    }
    private var localValue: SocketAddress?
    private var localKnown = false
    /// The downstream socket (for the lazy local address).
    let fd: Int32
    public var listener: ListenerRuntime
    public var startMs: UInt64
    public var startWallMs: UInt64
    public var connectionId: UInt64
    /// The TLS server name the inspector found in the ClientHello (nil: none, or not inspected).
    public var serverName: String?

    init(remote: SocketAddress?, fd: Int32, listener: ListenerRuntime, startMs: UInt64, startWallMs: UInt64, connectionId: UInt64) {
        self.remote = remote; self.fd = fd; self.listener = listener
        self.startMs = startMs; self.startWallMs = startWallMs; self.connectionId = connectionId
    }
}

/// One listener in one config generation.
public final class ListenerRuntime: Sendable {
    public let config: ListenerConfig
    public let stats: ListenerStats
    /// Connections open on this listener across workers and generations (max_connections).
    public let openConnections: SharedCount
    /// One factory per filter chain (`config.chains`, same order).
    public let factories: [any FilterFactory]
    /// Chain by TLS server name; nil when no chain matches on names (no inspection).
    public let serverNames: ServerNameTable?

    public init(config: ListenerConfig, stats: ListenerStats, openConnections: SharedCount, factories: [any FilterFactory]) {
        self.config = config; self.stats = stats; self.openConnections = openConnections; self.factories = factories
        if config.inspectsTls {
            var t = ServerNameTable()
            for (i, c) in config.chains.enumerated() {
                if c.serverNames.isEmpty { t.setDefault(i) }
                for n in c.serverNames { _ = t.add(n, chain: i) }
            }
            serverNames = t
        } else {
            serverNames = nil
        }
        hasListenerFilters = config.proxyProtocol != .off || serverNames != nil || config.chains.contains { $0.tls != nil }
    }

    /// Connections pass `ListenerFilters` first: a PROXY header to read, a ClientHello to
    /// inspect, or a TLS handshake to finish before the chain's filters start. (Decided once
    /// here, not per accept.)
    public let hasListenerFilters: Bool

    /// The first chain's factory (the only one without `filter_chains`).
    public var factory: any FilterFactory { factories[0] }
    public var name: String { config.name }
}

/// Everything workers need from one config generation. Immutable; posted to every worker.
public final class ServerSnapshot: Sendable {
    public let generation: Int
    public let config: ProxyConfig
    public let listeners: [String: ListenerRuntime]
    public let clusters: [String: ClusterSnapshot]

    public init(generation: Int, config: ProxyConfig, listeners: [String: ListenerRuntime], clusters: [String: ClusterSnapshot]) {
        self.generation = generation; self.config = config; self.listeners = listeners; self.clusters = clusters
    }
}
