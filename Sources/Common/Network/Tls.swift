import Synchronization
import CShim

/// `cshim_tls_read`/`cshim_tls_write` results besides byte counts.
enum TlsResult {
    static let wantRead: Int32 = -1
    static let wantWrite: Int32 = -2
    static let error: Int32 = -3
}

/// TLS versions a context accepts at least.
public enum TlsVersion: String, Sendable {
    case tls12 = "TLSv1.2"
    case tls13 = "TLSv1.3"
    var wire: Int32 { self == .tls12 ? 0x0303 : 0x0304 }
}

public struct TlsError: Error, CustomStringConvertible {
    public let description: String
}

/// An OpenSSL context for one side of TLS: a server context per filter chain (certificate,
/// key, ALPN preference), or a client context per cluster. Built on the main thread when a
/// config loads (a reload re-reads the files), then shared by every worker's connections.
public final class TlsContext: @unchecked Sendable {  // thread boundary: an SSL_CTX is read-only after setup; SSL_new from any thread is safe
    let ctx: OpaquePointer
    /// ALPN names in wire format, owned here (the server's select callback points into it).
    private let alpnWire: UnsafeMutableRawBufferPointer?
    public let alpn: [String]
    public let minVersion: TlsVersion
    /// Client side: the server name sent (SNI) and verified.
    public let serverName: String?
    /// Server side: what the certificate says (for /certs and the expiry gauge).
    public let certificate: CertificateInfo?
    /// Unique for the process's life (never reused, unlike an address): keys session caches.
    public let id: UInt64

    private init(ctx: OpaquePointer, alpnWire: UnsafeMutableRawBufferPointer?, alpn: [String], minVersion: TlsVersion, serverName: String?) {
        self.ctx = ctx; self.alpnWire = alpnWire; self.alpn = alpn; self.minVersion = minVersion; self.serverName = serverName
        certificate = CertificateInfo(ctx)
        id = tlsContextIds.wrappingAdd(1, ordering: .relaxed).newValue
    }

    deinit {
        cshim_tls_ctx_free(ctx)
        alpnWire?.deallocate()
    }

    private static func wire(_ alpn: [String]) -> UnsafeMutableRawBufferPointer? {
        if alpn.isEmpty { return nil }
        let bytes = alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
        b.copyBytes(from: bytes)
        return b
    }

    /// A server context. Throws with OpenSSL's reason when a file does not load or the key
    /// does not match the certificate.
    public static func server(cert: String, key: String, alpn: [String], minVersion: TlsVersion,
                              clientValidation: ClientValidation? = nil, ticketKeys: [UInt8]? = nil,
                              ocspStaple: [UInt8]? = nil) throws(TlsError) -> TlsContext {
        let w = wire(alpn)
        var err = [CChar](repeating: 0, count: 512)
        let ctx = cshim_tls_server_ctx(cert, key, w.map { $0.baseAddress!.assumingMemoryBound(to: UInt8.self) }, UInt32(w?.count ?? 0),
                                       minVersion.wire, &err, err.count)
        guard let ctx else {
            w?.deallocate()
            throw TlsError(description: text(err))
        }
        let c = TlsContext(ctx: ctx, alpnWire: w, alpn: alpn, minVersion: minVersion, serverName: nil)
        // Sessions resume only where the same client-certificate checks apply (none, or these).
        var desc = Array("proxies:".utf8)
        if let v = clientValidation {
            guard cshim_tls_server_verify(ctx, v.caFile, v.require ? 1 : 0, v.crlFile, &err, err.count) == 1 else {
                throw TlsError(description: text(err))
            }
            desc += Array("mtls:\(v.require):\(v.identity)|".utf8)
            desc += readFileBytes(v.caFile) ?? []
            desc += [0]
            if let crl = v.crlFile { desc += readFileBytes(crl) ?? [] }
            c.verifiesClients = true
        }
        _ = desc.withUnsafeBufferPointer { cshim_tls_session_context(ctx, $0.baseAddress, $0.count) }
        if let k = ticketKeys, cshim_tls_ticket_keys(ctx, k, Int32(k.count / 80), &err, err.count) != 1 {
            throw TlsError(description: text(err))
        }
        if let o = ocspStaple, cshim_tls_ocsp_staple(ctx, o, o.count, &err, err.count) != 1 {
            throw TlsError(description: text(err))
        }
        return c
    }

    private static func text(_ b: [CChar]) -> String { String(decoding: b.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }

    /// Client certificates a server context asks for (mTLS). `identity`: what else decides
    /// whether a certificate passes (the name matchers), for the session id context.
    public struct ClientValidation: Sendable {
        public var caFile: String
        public var require: Bool
        public var crlFile: String?
        public var identity: String
        public init(caFile: String, require: Bool, crlFile: String?, identity: String = "") {
            self.caFile = caFile; self.require = require; self.crlFile = crlFile; self.identity = identity
        }
    }

    /// The context verifies client certificates (`client_ca`): only then is a peer's
    /// certificate an identity to forward.
    public private(set) var verifiesClients = false

    /// The URI SANs of this (server) context's own certificate: XFCC's `By`.
    public var ownUris: [String] {
        var buf = [CChar](repeating: 0, count: 2048)
        _ = cshim_tls_own_uris(ctx, &buf, buf.count)
        return PeerCertificate.names(buf)
    }

    /// A client context: verifies the server against `caFile` (nil: the system's CAs) and
    /// `serverName` unless `verify` is false.
    public static func client(caFile: String?, verify: Bool, serverName: String?, alpn: [String], minVersion: TlsVersion,
                              certificate: (cert: String, key: String)? = nil) throws(TlsError) -> TlsContext {
        let w = wire(alpn)
        defer { w?.deallocate() }  // the client context copies its ALPN list
        var err = [CChar](repeating: 0, count: 512)
        let ctx = cshim_tls_client_ctx(caFile, verify ? 1 : 0, w.map { $0.baseAddress!.assumingMemoryBound(to: UInt8.self) },
                                       UInt32(w?.count ?? 0), minVersion.wire, &err, err.count)
        guard let ctx else {
            throw TlsError(description: text(err))
        }
        let c = TlsContext(ctx: ctx, alpnWire: nil, alpn: alpn, minVersion: minVersion, serverName: serverName)
        if let certificate, cshim_tls_client_cert(ctx, certificate.cert, certificate.key, &err, err.count) != 1 {
            throw TlsError(description: text(err))
        }
        return c
    }
}

/// A certificate's identity and validity, read once when its context is built.
public struct CertificateInfo: Sendable {
    public let subject: String
    public let dnsNames: [String]
    public let serial: String
    /// Unix seconds.
    public let notBefore: Int64
    public let notAfter: Int64

    init?(_ ctx: OpaquePointer) {
        var subject = [CChar](repeating: 0, count: 512), dns = [CChar](repeating: 0, count: 4096)
        var serial = [CChar](repeating: 0, count: 128)
        var nb: Int64 = 0, na: Int64 = 0
        guard cshim_tls_cert_info(ctx, &subject, subject.count, &dns, dns.count, &serial, serial.count, &nb, &na) == 1 else { return nil }
        func text(_ b: [CChar]) -> String { String(decoding: b.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        self.subject = text(subject)
        dnsNames = text(dns).split(separator: ",").map(String.init)
        self.serial = text(serial)
        notBefore = nb; notAfter = na
    }

    /// Whole days from `nowSeconds` until it expires (negative once expired).
    public func daysUntilExpiration(nowSeconds: Int64) -> Int64 {
        let left = notAfter - nowSeconds
        return left >= 0 ? left / 86_400 : -((-left + 86_399) / 86_400)
    }
}

/// Listener stats for TLS termination (Envoy's `listener.<name>.ssl.*`).
public struct TlsStats: Sendable {
    /// mTLS: the client sent no certificate though one is required; its certificate did not
    /// verify (unknown CA, expired, revoked); its subject alternative names matched none of
    /// `match_subject_alt_names`.
    public let failVerifyNoCert: Counter
    public let failVerifyError: Counter
    public let failVerifySan: Counter
    public let handshake: Counter
    public let connectionError: Counter
    public let handshakeTimeout: Counter
    public let sessionReused: Counter
    public init(store: StatsStore, prefix: String) {
        sessionReused = store.counter(prefix + "ssl.session_reused")
        failVerifyNoCert = store.counter(prefix + "ssl.fail_verify_no_cert")
        failVerifyError = store.counter(prefix + "ssl.fail_verify_error")
        failVerifySan = store.counter(prefix + "ssl.fail_verify_san")
        handshake = store.counter(prefix + "ssl.handshake")
        connectionError = store.counter(prefix + "ssl.connection_error")
        handshakeTimeout = store.counter(prefix + "ssl.handshake_timeout")
    }
}

private let tlsContextIds = Atomic<UInt64>(0)

/// Where one worker keeps the newest session ticket of each (client context, server name), so
/// new connections to hosts resume (Envoy keeps one per cluster; with `auto_sni` the name changes
/// per connection, and a ticket issued for one name must not be offered to another). Confined
/// to its worker: no lock on the connect path. Bounded: past `capacity` names it starts afresh.
public final class TlsSessionCache {
    private struct Key: Hashable { let context: UInt64; let serverName: String }
    private var slots: [Key: TlsSessionSlot] = [:]
    static let capacity = 1024

    public init() {}

    func slot(context: TlsContext, serverName: String?) -> TlsSessionSlot? {
        let k = Key(context: context.id, serverName: serverName ?? "")
        if let s = slots[k] { return s }
        guard let s = TlsSessionSlot() else { return nil }
        if slots.count >= TlsSessionCache.capacity { slots.removeAll(keepingCapacity: true) }
        slots[k] = s
        return s
    }

    /// Forgets the slots of contexts that are gone (a reload replaced them).
    public func retain(contexts: Set<UInt64>) { slots = slots.filter { contexts.contains($0.key.context) } }
    var count: Int { slots.count }
}

/// One session slot (C memory), alive while its cache or a connection using it holds it.
final class TlsSessionSlot {
    let ptr: OpaquePointer
    init?() {
        guard let p = cshim_tls_session_slot_new() else { return nil }
        ptr = p
    }
    deinit { cshim_tls_session_slot_free(ptr) }
    var filled: Bool { cshim_tls_session_slot_filled(ptr) != 0 }
}

/// One connection's TLS state (owned by its `Connection`).
final class TlsTransport {
    let context: TlsContext  // keeps the ALPN list alive for the handshake
    let ssl: OpaquePointer
    let stats: TlsStats
    /// A client's session slot: must outlive `ssl`, which stores new tickets in it.
    private let sessionSlot: TlsSessionSlot?
    private var handshakeDone = false

    /// `serverName`: a client's SNI for this connection (default: the context's); `sessions`:
    /// the worker's cache a client resumes from (nil: no resumption).
    init?(context: TlsContext, fd: Int32, server: Bool, prefix: UnsafeRawBufferPointer, stats: TlsStats, serverName: String? = nil,
          sessions: TlsSessionCache? = nil) {
        let name = serverName ?? context.serverName
        let slot = server ? nil : sessions?.slot(context: context, serverName: name)
        guard let s = cshim_tls_new(context.ctx, fd, server ? 1 : 0, name, prefix.baseAddress, prefix.count, slot?.ptr) else {
            return nil
        }
        self.context = context; ssl = s; self.stats = stats; sessionSlot = slot
    }

    /// A TLS error happened: the session must not be resumed.
    private var broken = false

    deinit { cshim_tls_free(ssl, broken ? 0 : 1) }

    /// Counts the handshake once it has finished; true the one time it just did.
    @inline(__always) func noteProgress(_ slab: StatsSlab) -> Bool {
        if handshakeDone || cshim_tls_handshake_done(ssl) == 0 { return false }
        handshakeDone = true
        slab.inc(stats.handshake)
        if cshim_tls_session_reused(ssl) != 0 { slab.inc(stats.sessionReused) }
        return true
    }

    var isEstablished: Bool { handshakeDone }

    /// A fatal TLS error: counted; OpenSSL's error queue cleared for the next connection.
    func failed(_ slab: StatsSlab) {
        broken = true
        slab.inc(stats.connectionError)
        switch cshim_tls_failure_kind(ssl) {
        case 1: slab.inc(stats.failVerifyNoCert)
        case 2: slab.inc(stats.failVerifyError)
        default: break
        }
        var buf = [CChar](repeating: 0, count: 256)
        cshim_tls_last_error(&buf, buf.count)
    }

    /// The negotiated version ("TLSv1.3") and ALPN protocol ("" when none).
    var version: String { String(cString: cshim_tls_version(ssl)) }
    var serverName: String? {
        guard let p = cshim_tls_servername(ssl) else { return nil }
        return String(cString: p)
    }
    /// The peer's certificate (nil: none given), read once.
    lazy var peerCertificate: PeerCertificate? = PeerCertificate(ssl)

    var alpn: String {
        var buf = [CChar](repeating: 0, count: 256)
        let n = cshim_tls_alpn(ssl, &buf, Int32(buf.count))
        return String(decoding: buf.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A TLS peer's certificate as the handshake left it (mTLS clients): what XFCC forwards and
/// `match_subject_alt_names` checks.
public struct PeerCertificate: Sendable {
    public let verified: Bool
    /// RFC 2253.
    public let subject: String
    public let uris: [String]
    public let dnsNames: [String]
    /// SHA-256 of the DER form, lowercase hex.
    public let sha256: String
    public let pem: String

    init?(_ ssl: OpaquePointer) {
        var v: Int32 = 0
        var subject = [CChar](repeating: 0, count: 1024), uris = [CChar](repeating: 0, count: 2048)
        var dns = [CChar](repeating: 0, count: 2048), pem = [CChar](repeating: 0, count: 16384)
        var hash = [UInt8](repeating: 0, count: 32)
        guard cshim_tls_peer_cert(ssl, &v, &subject, subject.count, &uris, uris.count, &dns, dns.count, &hash, &pem, pem.count) == 1 else {
            return nil
        }
        func text(_ b: [CChar]) -> String { String(decoding: b.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        verified = v != 0
        self.subject = text(subject)
        self.uris = PeerCertificate.names(uris)
        dnsNames = PeerCertificate.names(dns)
        let hex = Array("0123456789abcdef".utf8)
        sha256 = String(decoding: hash.flatMap { [hex[Int($0 >> 4)], hex[Int($0 & 15)]] }, as: UTF8.self)
        self.pem = text(pem)
    }

    /// NUL-terminated names back to back (the shim's list; an empty name ends it).
    static func names(_ b: [CChar]) -> [String] {
        var out: [String] = []
        var start = 0
        for i in b.indices where b[i] == 0 {
            if i == start { break }
            out.append(String(decoding: b[start..<i].map { UInt8(bitPattern: $0) }, as: UTF8.self))
            start = i + 1
        }
        return out
    }

    /// Whether any DNS or URI name matches one of `matchers` (none: any certificate passes).
    public func matches(_ matchers: [SanMatcher]) -> Bool {
        if matchers.isEmpty { return true }
        for n in dnsNames + uris where matchers.contains(where: { $0.matches(n) }) { return true }
        return false
    }
}

/// `match_subject_alt_names` entries (Envoy's string matchers).
public enum SanMatcher: Sendable, Equatable {
    case exact(String), prefix(String), suffix(String), contains(String)

    public func matches(_ s: String) -> Bool {
        switch self {
        case .exact(let v): s == v
        case .prefix(let v): s.hasPrefix(v)
        case .suffix(let v): s.hasSuffix(v)
        case .contains(let v): s.contains(v)
        }
    }

    var dump: JSON {
        switch self {
        case .exact(let v): .object([("exact", .string(v))])
        case .prefix(let v): .object([("prefix", .string(v))])
        case .suffix(let v): .object([("suffix", .string(v))])
        case .contains(let v): .object([("contains", .string(v))])
        }
    }
}
