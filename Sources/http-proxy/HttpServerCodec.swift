import Common

/// What an `HttpStream` needs from the downstream connection that carries it: the HTTP/1.1
/// `HttpConnectionManager` (one stream at a time) or the HTTP/2 `Http2ConnectionManager` (many
/// streams multiplexed). Every method runs on the connection's worker.
protocol HttpServerCodec: AnyObject {
    var worker: Worker { get }
    /// The listener's factory of the newest config generation this connection has seen.
    var factory: HttpProxyFactory { get }
    /// Settable: its local address is looked up lazily.
    var context: DownstreamContext { get set }
    var connection: Connection { get }
    var workerState: HttpWorkerState { get }
    func nextRandom() -> UInt64

    // The response of `s`, after the encoder filters.
    func encodeHeaders(_ s: HttpStream, _ h: HeaderMap, endStream: Bool)
    func encodeData(_ s: HttpStream, _ data: Buffer, endStream: Bool)
    func encodeTrailers(_ s: HttpStream, _ t: HeaderMap)
    /// The whole response of `s` was handed over.
    func streamComplete(_ s: HttpStream)
    /// `s` ends abruptly (HTTP/1.1: the connection closes; HTTP/2: RST_STREAM).
    func resetStream(_ s: HttpStream)
    /// Output produced outside the codec's own events (an upstream's response) goes out
    /// (HTTP/1.1: written now; HTTP/2: once per loop turn).
    func flushOutput()

    /// Flow control of one stream's request body: stop and resume taking it from the client
    /// (HTTP/1.1: the connection's reads; HTTP/2: the stream's window). Counted: every
    /// `readDisable` is matched by one `readEnable`.
    func readDisable(_ s: HttpStream)
    func readEnable(_ s: HttpStream)
    /// Request body bytes the router may hold for a stream before it pauses it.
    var streamFlowLimit: Int { get }
    /// The codec's timer fires no later than `deadline` (monotonic ms).
    func armDeadline(_ deadline: UInt64, if condition: Bool)
    /// The stream idle timeout in force for `s` (the route's `idle_timeout` replaces the
    /// listener's `stream_idle_timeout`; 0: none).
    func setStreamIdleTimeout(_ s: HttpStream, _ ms: UInt64)
}

/// The parts of request handling both codecs share: forwarding headers, the trusted client,
/// and the stats and access log of a finished stream.
enum HttpConnectionShared {
    /// X-Forwarded-For, X-Forwarded-Proto, X-Request-Id and Via (docs/http-proxy.md).
    /// `viaVersion` is the protocol version as Via writes it ("1.1 ", "1.0 ", "2 ").
    static func addForwardingHeaders(_ h: HeaderMap, settings: HttpSettings, remoteIp: String?, connection: Connection,
                                     viaVersion: String, rng: SecureRandom) {
        let tls = connection.tlsVersion != nil
        forwardClientCert(h, settings: settings, connection: connection)
        if settings.useRemoteAddress, var ip = remoteIp {
            ip.withUTF8 { h.appendToList(.xForwardedFor, UnsafeRawBufferPointer($0)) }
            h.set(.xForwardedProto, tls ? "https" : "http")
        } else if !h.has(.xForwardedProto) {
            h.add(.xForwardedProto, tls ? "https" : "http")
        }
        if settings.generateRequestId {
            let keep = h.first(.xRequestId).map { i in
                (settings.preserveExternalRequestId || !settings.useRemoteAddress) && h.withValue(i) { RequestId.isValid($0) }
            } ?? false
            if !keep {
                h.remove(.xRequestId)
                RequestId.generate(rng) { h.add(UnsafeRawBufferPointer(start: xRequestIdName.utf8Start, count: xRequestIdName.utf8CodeUnitCount), $0) }
            }
        }
        if let via = settings.via { h.add(.via, viaVersion + via) }
    }

    private static let xRequestIdName: StaticString = "x-request-id"

    /// `x-forwarded-client-cert` per `forward_client_cert_details` (Envoy's modes). Added before
    /// routing, so header matchers can route on the client's verified identity.
    static func forwardClientCert(_ h: HeaderMap, settings: HttpSettings, connection: Connection) {
        let mode = settings.forwardClientCert
        if mode == .forwardOnly || mode == .alwaysForwardOnly { return }
        let peer = connection.tlsVersion == nil || !connection.tlsVerifiesClients ? nil
            : connection.tlsPeerCertificate.flatMap { $0.verified ? $0 : nil }
        guard let peer, mode == .appendForward || mode == .sanitizeSet else {
            if h.first(named: "x-forwarded-client-cert") != nil { h.remove("x-forwarded-client-cert") }
            return
        }
        let mine = xfccElement(peer, by: connection.tlsLocalUris.first, details: settings.clientCertDetails)
        if mode == .appendForward, let old = h.value("x-forwarded-client-cert") {
            h.set("x-forwarded-client-cert", old + "," + mine)
        } else {
            h.set("x-forwarded-client-cert", mine)
        }
    }

    /// One XFCC element: `By=...;Hash=...;Subject="...";URI=...;DNS=...;Cert="..."`.
    static func xfccElement(_ p: PeerCertificate, by: String?, details: ClientCertDetails) -> String {
        var parts: [String] = []
        if let by { parts.append("By=" + by) }
        parts.append("Hash=" + p.sha256)
        if details.cert { parts.append("Cert=\"" + urlEncoded(p.pem) + "\"") }
        if details.subject { parts.append("Subject=" + quoted(p.subject)) }
        if details.uri { for u in p.uris { parts.append("URI=" + xfccValue(u)) } }
        if details.dns { for d in p.dnsNames { parts.append("DNS=" + xfccValue(d)) } }
        return parts.joined(separator: ";")
    }

    /// A quoted-string (RFC 9110 5.6.4): `\` and `"` escaped, so nothing inside can end it.
    static func quoted(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            if c == "\\" || c == "\"" { out.unicodeScalars.append("\\") }
            out.unicodeScalars.append(c)
        }
        return out + "\""
    }

    /// A value as is when it holds none of XFCC's separators, else quoted (Envoy's rule).
    static func xfccValue(_ s: String) -> String {
        s.unicodeScalars.contains { $0 == "," || $0 == ";" || $0 == "=" || $0 == "\"" || $0 == "\\" || $0 == " " } ? quoted(s) : s
    }

    private static func urlEncoded(_ s: String) -> String {
        var out = ""
        let hex = Array("0123456789ABCDEF".utf8)
        for c in s.utf8 {
            let unreserved = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x2E || c == 0x5F || c == 0x7E
            if unreserved { out.unicodeScalars.append(Unicode.Scalar(c)) } else {
                out += "%" + String(UnicodeScalar(hex[Int(c >> 4)])) + String(UnicodeScalar(hex[Int(c & 15)]))
            }
        }
        return out
    }

    /// The client address Envoy calls "trusted": with `use_remote_address` the entry
    /// `xff_num_trusted_hops` places left of the peer this proxy appended to X-Forwarded-For;
    /// without it, that many places from the right of the list the client sent. Falls back to the
    /// socket peer when the list is shorter or the entry is not an IP. Drives
    /// `%DOWNSTREAM_REMOTE_ADDRESS%` (logs, header values) and `hash_policy: source_ip`.
    static func trustedClient(_ h: HeaderMap, settings: HttpSettings) -> SocketAddress? {
        guard let i = h.first(.xForwardedFor) else { return nil }
        let entries = h.value(at: i).split(separator: ",").map { $0.trimmingCharacters(in: " ") }
        let index = entries.count - 1 - settings.xffNumTrustedHops
        guard index >= 0 else { return nil }
        let ip = entries[index]
        return try? SocketAddress.parse(ip.contains(":") ? "[\(ip)]:0" : "\(ip):0")
    }

    /// Stats and the access log of a finished stream (the caller makes sure it runs once).
    static func settle(_ s: HttpStream, stats: HttpConnectionManagerStats, worker: Worker, context: inout DownstreamContext,
                       connection: Connection) {
        let st = worker.stats
        st.dec(stats.downstreamRqActive)
        st.inc(stats.downstreamRqCompleted)
        let cls = s.info.responseCode / 100
        if cls >= 1 && cls <= 5 { st.inc(stats.downstreamRqByClass[cls]) }
        st.record(stats.downstreamRqTime, monotonicMs() &- s.info.startMs)
        if let logs = worker.accessLogs[context.listener.name] {
            var e = AccessLogEntry()
            e.startWallMs = s.info.startWallMs
            e.durationMs = monotonicMs() &- s.info.startMs
            e.downstreamRemote = s.info.trustedClient ?? context.remote
            e.downstreamLocal = context.local
            e.upstreamHost = s.info.upstreamHost
            e.cluster = s.info.clusterName
            e.bytesReceived = s.info.bytesReceived
            e.bytesSent = s.info.bytesSent
            e.responseCode = s.info.responseCode
            e.responseFlags = s.info.responseFlags
            e.connectionId = context.connectionId
            e.requestedServerName = context.serverName ?? connection.tlsServerName
            e.downstreamTlsVersion = connection.tlsVersion
            e.protocolName = s.info.protocolName
            e.requestHeaders = s.requestHeaders
            e.responseHeaders = s.responseHeaders
            for l in logs { l.log(e) }
        }
    }
}

/// Requests on a connection opened before a reload use the new route table, filters and
/// settings (Envoy's route config provider): one pointer compare per request, a lookup by
/// listener name only when the worker's snapshot changed. A listener the reload removed keeps
/// its old generation (its connections drain).
struct FactoryTracker {
    /// The worker's config snapshot last looked at, and this connection's filter chain in it.
    private var seenSnapshot: ObjectIdentifier?
    private let chainIndex: Int

    init(worker: Worker, factory: HttpProxyFactory, context: DownstreamContext) {
        seenSnapshot = worker.snapshot.map { ObjectIdentifier($0) }
        chainIndex = context.listener.factories.firstIndex { ($0 as AnyObject) === factory } ?? 0
    }

    /// The listener's factory in the worker's newest snapshot when it differs from `current`.
    mutating func newer(_ worker: Worker, _ current: HttpProxyFactory, _ context: DownstreamContext) -> HttpProxyFactory? {
        guard let snap = worker.snapshot else { return nil }
        let id = ObjectIdentifier(snap)
        if id == seenSnapshot { return nil }
        seenSnapshot = id
        guard let r = snap.listeners[context.listener.name], chainIndex < r.factories.count,
              let f = r.factories[chainIndex] as? HttpProxyFactory, f !== current else { return nil }
        return f
    }
}

/// One timer per connection serving every deadline it has (headers, request, idle, route
/// timeouts): `arm` makes it fire no later than a deadline; the owner checks them all when it
/// fires and arms the next.
final class DeadlineTimer {
    private let timer: Timer
    private var armedAt: UInt64 = 0

    init(_ dispatcher: Dispatcher, _ fire: @escaping () -> Void) { timer = Timer(dispatcher, fire) }

    /// Fires no later than `deadline` (monotonic ms; 0: nothing to do).
    func arm(_ deadline: UInt64) {
        guard deadline > 0 else { return }
        if armedAt != 0 && armedAt <= deadline { return }
        armedAt = deadline
        let now = monotonicMs()
        timer.arm(ms: deadline > now ? deadline - now : 1)
    }

    /// Called first when it fires: nothing is armed any more.
    func fired() { armedAt = 0 }

    func cancel() { timer.cancel() }
}
