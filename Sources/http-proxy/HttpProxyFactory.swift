import Common
import Glibc

/// The connection manager's settings for one listener in one config generation (from the
/// `http` block; docs/config.md).
struct HttpSettings: Sendable {
    var requestHeadersTimeoutMs: UInt64
    var requestTimeoutMs: UInt64
    var streamIdleTimeoutMs: UInt64
    var idleTimeoutMs: UInt64
    var maxRequestHeadersBytes: Int
    var maxHeadersCount: Int
    var maxRequestBodyBuffer: Int
    var useRemoteAddress: Bool
    var xffNumTrustedHops: Int
    var generateRequestId: Bool
    var alwaysSetRequestIdInResponse: Bool
    var preserveExternalRequestId: Bool
    var via: String?
    /// The listener's per-connection buffer limit (filters buffer at most this much).
    var bufferLimit: Int
    var codec: HttpCodecChoice
    var http2: Http2ProtocolOptions
    var drainTimeoutMs: UInt64
    var forwardClientCert: ForwardClientCert
    var clientCertDetails: ClientCertDetails
}

/// Builds http connection managers for one listener in one config generation: the parsed
/// block, its stat handles, the route table, the filters, and each routed cluster's slot and
/// request stats, resolved once on the main thread.
final class HttpProxyFactory: FilterFactory {
    let config: HttpProxyConfig
    let settings: HttpSettings
    let stats: HttpConnectionManagerStats
    let routeTable: RouteTable
    /// By index into `routeTable.clusterNames`.
    let clusterSlots: [Int]
    let clusterStats: [UpstreamRequestStats]
    let filterFactories: [HttpFilterFactory]

    init(listener: ListenerConfig, block: any ListenerFilterConfig, clusters: [String: ClusterSnapshot], store: StatsStore) {
        guard let c = block as? HttpProxyConfig else { preconditionFailure("http-proxy listener without an http block") }
        config = c
        settings = HttpSettings(
            requestHeadersTimeoutMs: c.requestHeadersTimeoutMs, requestTimeoutMs: c.requestTimeoutMs,
            streamIdleTimeoutMs: c.streamIdleTimeoutMs, idleTimeoutMs: c.idleTimeoutMs,
            maxRequestHeadersBytes: c.maxRequestHeadersKb * 1024, maxHeadersCount: c.maxHeadersCount,
            maxRequestBodyBuffer: c.maxRequestBodyBuffer, useRemoteAddress: c.useRemoteAddress,
            xffNumTrustedHops: c.xffNumTrustedHops, generateRequestId: c.generateRequestId,
            alwaysSetRequestIdInResponse: c.alwaysSetRequestIdInResponse,
            preserveExternalRequestId: c.preserveExternalRequestId, via: c.via, bufferLimit: listener.bufferLimit,
            codec: c.codec, http2: c.http2, drainTimeoutMs: c.drainTimeoutMs,
            forwardClientCert: c.forwardClientCert, clientCertDetails: c.clientCertDetails)
        stats = HttpConnectionManagerStats(store: store, prefix: c.statPrefix)
        routeTable = c.routeTable
        // Validation made every routed cluster exist; a missing one gets a slot no worker has.
        clusterSlots = c.routeTable.clusterNames.map { clusters[$0]?.slot ?? Int.max }
        clusterStats = c.routeTable.clusterNames.map { UpstreamRequestStats(store: store, cluster: $0) }
        let statsCopy = stats
        filterFactories = c.httpFilters.map { f -> HttpFilterFactory in
            switch f {
            case .healthCheck(let h): return HealthCheckFilterFactory(config: h, stats: statsCopy)
            case .headerMutation(let m): return HeaderMutationFilterFactory(config: m)
            case .grpcStats(let g): return GrpcStatsFilterFactory(config: g, clusters: c.routeTable.clusterNames, store: store)
            }
        }
    }

    func createFilters(worker: Worker, connection: Connection, context: DownstreamContext) {
        let http2: Bool
        switch settings.codec {
        case .http1: http2 = false
        case .http2: http2 = true
        case .auto:
            if connection.tlsVersion != nil {
                http2 = connection.tlsAlpn == "h2"
            } else {
                switch CodecDetector.detect(connection.readBuffer.readable) {
                case .http1: http2 = false
                case .http2: http2 = true
                case .undecided:
                    // Fewer bytes than the preface's, all matching it so far: wait for more.
                    let d = CodecDetector(factory: self, worker: worker, connection: connection, context: context)
                    connection.readFilters = [d]
                    connection.callbacks = d
                    worker.track(d)
                    d.start()
                    return
                }
            }
        }
        install(http2: http2, worker: worker, connection: connection, context: context)
    }

    /// Hands the connection to the HTTP/1.1 or HTTP/2 connection manager.
    func install(http2: Bool, worker: Worker, connection: Connection, context: DownstreamContext) {
        let cm: ReadFilter & ConnectionCallbacks & ActiveSession
        if http2 {
            cm = Http2ConnectionManager(factory: self, worker: worker, connection: connection, context: context)
        } else {
            cm = HttpConnectionManager(factory: self, worker: worker, connection: connection, context: context)
        }
        connection.readFilters = [cm]
        connection.callbacks = cm
        worker.track(cm)
        _ = cm.onNewConnection()
        // Bytes that came with the connection (after a PROXY header or a TLS handshake).
        if connection.state == .open && (!connection.readBuffer.isEmpty || connection.readEOF) {
            _ = cm.onData(connection.readBuffer, endStream: connection.readEOF)
        }
    }
}

/// `codec: auto` on a cleartext listener: HTTP/2 when the client opens with the connection
/// preface (prior knowledge, RFC 9113 3.3), HTTP/1.1 otherwise. Most connections are decided
/// by their first read; one whose bytes so far are a strict prefix of the preface waits here.
final class CodecDetector: ReadFilter, ConnectionCallbacks, ActiveSession {
    enum Guess { case http1, http2, undecided }

    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    /// A mismatch at any byte is HTTP/1; all 24 bytes matching is HTTP/2; a matching prefix
    /// (or nothing yet) is undecided.
    static func detect(_ b: UnsafeRawBufferPointer) -> Guess {
        let n = min(b.count, preface.count)
        for i in 0..<n where b[i] != preface[i] { return .http1 }
        return n == preface.count ? .http2 : .undecided
    }

    let factory: HttpProxyFactory
    unowned(unsafe) let worker: Worker
    let connection: Connection
    let context: DownstreamContext
    private var timer: Timer?
    private var done = false

    init(factory: HttpProxyFactory, worker: Worker, connection: Connection, context: DownstreamContext) {
        self.factory = factory; self.worker = worker; self.connection = connection; self.context = context
    }

    func start() {
        // A client that sends part of the preface and stalls is bounded like a slow request head.
        let ms = factory.settings.requestHeadersTimeoutMs
        if ms > 0 {
            let t = Timer(worker.dispatcher) { [unowned self] in
                worker.stats.inc(factory.stats.downstreamRqHeaderTimeout)
                close()
            }
            timer = t
            t.arm(ms: ms)
        }
        if connection.readEOF { close() }
    }

    func onNewConnection() -> FilterStatus { .stopIteration }

    func onData(_ buffer: Buffer, endStream: Bool) -> FilterStatus {
        if done { return .stopIteration }
        switch Self.detect(buffer.readable) {
        case .undecided:
            if connection.readEOF { close() }
        case let g:
            done = true
            timer?.cancel()
            worker.untrack(self)
            factory.install(http2: g == .http2, worker: worker, connection: connection, context: context)
        }
        return .stopIteration
    }

    private func close() {
        if done { return }
        done = true
        timer?.cancel()
        connection.callbacks = nil
        if connection.state != .closed { connection.close() }
        worker.downstreamClosed(context)
        worker.untrack(self)
    }

    func onConnected(_ connection: Connection) {}
    func onConnectFailed(_ connection: Connection, errno: Int32) {}
    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {}
    func onClose(_ connection: Connection, remote: Bool) { close() }
    func onAboveWriteBufferHighWatermark(_ connection: Connection) {}
    func onBelowWriteBufferLowWatermark(_ connection: Connection) {}
    func onDrain() { close() }
    func forceClose() { close() }
}

/// `X-Request-Id` values: a UUID v4 made here, or a client's kept when it looks sane.
enum RequestId {
    /// A random UUID (version 4), handed to `body` as bytes (no String per request).
    static func generate(_ rng: SecureRandom, _ body: (UnsafeRawBufferPointer) -> Void) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 36) { out in
            let p = out.baseAddress!
            let a = rng.nextUInt64(), b = rng.nextUInt64()
            // 8-4-4-4-12 hex digits: the version nibble is 4, the variant's top bits are 10.
            hex(a >> 32, 8, p)
            p[8] = 0x2D
            hex(a >> 16, 4, p + 9)
            p[13] = 0x2D
            hex(0x4000 | (a & 0x0FFF), 4, p + 14)
            p[18] = 0x2D
            hex(0x8000 | (b >> 48 & 0x3FFF), 4, p + 19)
            p[23] = 0x2D
            hex(b, 12, p + 24)
            body(UnsafeRawBufferPointer(out))
        }
    }

    /// The low `n` nibbles of `v` as lowercase hex at `p`.
    @inline(__always) private static func hex(_ v: UInt64, _ n: Int, _ p: UnsafeMutablePointer<UInt8>) {
        var v = v
        var i = n - 1
        while i >= 0 {
            let d = UInt8(truncatingIfNeeded: v & 15)
            p[i] = d < 10 ? 0x30 + d : 0x57 + d
            v >>= 4
            i -= 1
        }
    }

    /// A random UUID (version 4) as a String (tests, logs).
    static func generate(_ rng: SecureRandom) -> String {
        var s = ""
        generate(rng) { s = String(decoding: $0, as: UTF8.self) }
        return s
    }

    /// 1 to 128 characters of letters, digits, `-`, `_`, `.`: anything else is replaced.
    static func isValid(_ v: UnsafeRawBufferPointer) -> Bool {
        guard !v.isEmpty && v.count <= 128 else { return false }
        for c in v {
            let ok = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F || c == 0x2E
            if !ok { return false }
        }
        return true
    }
}

/// Applies a `HeaderMutation` (removals first, then additions by their append action) with
/// format tokens filled from the stream.
enum HeaderMutator {
    static func apply(_ m: HeaderMutation, to h: HeaderMap, stream: HttpStream) {
        for name in m.remove { h.remove(name) }
        for a in m.add {
            let value = a.literal ?? format(a.value, stream)
            switch a.action {
            case .appendIfExistsOrAdd: h.add(a.name, value)
            case .addIfAbsent: if h.indices(of: a.name).isEmpty { h.add(a.name, value) }
            case .overwriteIfExistsOrAdd: h.set(a.name, value)
            case .overwriteIfExists: if !h.indices(of: a.name).isEmpty { h.set(a.name, value) }
            }
        }
    }

    static func format(_ parts: [HeaderValuePart], _ s: HttpStream) -> String {
        var out = ""
        for p in parts {
            switch p {
            case .literal(let l): out += l
            case .downstreamRemoteAddress(let withPort):
                if let r = s.info.trustedClient ?? s.cm.context.remote { out += withPort ? r.description : r.host }
            case .downstreamLocalAddress(let withPort):
                if let l = s.cm.context.local { out += withPort ? l.description : l.host }
            case .requestHeader(let name): out += s.requestHeaders.value(name) ?? ""
            case .upstreamHost: out += s.info.upstreamHost?.description ?? ""
            case .protocol: out += s.info.protocolName
            case .hostname: out += hostName
            case .requestedServerName: out += s.cm.context.serverName ?? s.cm.connection.tlsServerName ?? ""
            }
        }
        return out
    }

    static let hostName: String = {
        var buf = [CChar](repeating: 0, count: 256)
        gethostname(&buf, 255)
        return String(cString: buf)
    }()
}
