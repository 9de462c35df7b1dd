/// The TLS ClientHello, read without terminating TLS (Envoy's tls_inspector, HAProxy's
/// `req.ssl_sni`, nginx's `ssl_preread`): the server name and ALPN protocols a client asks for,
/// so a listener can pick a filter chain and pass the encrypted bytes through untouched.
/// Pure functions over bytes, no I/O; the hello may arrive in pieces and span several records.
public enum ClientHello {
    /// Handshake message bytes we wait for at most (Envoy's default is the same 16 KiB order;
    /// real hellos, post-quantum key shares included, are under 2 KiB).
    public static let maxLength = 16 * 1024
    /// Records a hello may be split over (real clients use one; each costs a 5-byte header).
    public static let maxRecords = 16
    /// The most bytes `parse` can ask for before deciding.
    public static let maxBuffered = maxRecords * 5 + 4 + maxLength

    public struct Hello: Sendable, Equatable {
        /// The server_name extension's host name, lowercased, without a trailing dot.
        public var serverName: String?
        /// The application_layer_protocol_negotiation extension's protocols, in order.
        public var alpn: [String]
        public init(serverName: String?, alpn: [String]) { self.serverName = serverName; self.alpn = alpn }
    }

    public enum ParseResult: Sendable, Equatable {
        /// Not enough bytes yet to decide.
        case needMore
        /// The bytes do not start a TLS handshake: plain TCP (or some other protocol).
        case notTls
        /// A TLS handshake record whose ClientHello is malformed: close the connection.
        case invalid(String)
        /// The hello would be longer than `maxLength`.
        case tooLarge
        case hello(Hello)
    }

    /// Parses the start of a connection's bytes.
    public static func parse(_ b: UnsafeRawBufferPointer) -> ParseResult {
        if b.isEmpty { return .needMore }
        // A handshake record (22) of TLS 1.x (version major 3); SSLv2 hellos are not TLS here.
        if b[0] != 0x16 { return .notTls }
        if b.count >= 2 && b[1] != 0x03 { return .notTls }
        // Reassemble the handshake message from as many records as it spans.
        var message: [UInt8] = []
        var need = -1  // the message's full length, once its header is in
        var at = 0
        var records = 0
        while need < 0 || message.count < need {
            guard b.count >= at + 5 else { return .needMore }
            records += 1
            if records > maxRecords { return .invalid("ClientHello split over more than \(maxRecords) records") }
            if b[at] != 0x16 { return .invalid("ClientHello interrupted by a non-handshake record") }
            if b[at + 1] != 0x03 { return .invalid("record version \(b[at + 1]).\(b[at + 2])") }
            let len = Int(b[at + 3]) << 8 | Int(b[at + 4])
            if len == 0 { return .invalid("empty handshake record") }
            if len > 16384 + 2048 { return .invalid("record length \(len)") }
            let avail = min(len, b.count - (at + 5))
            message.append(contentsOf: UnsafeRawBufferPointer(rebasing: b[(at + 5)..<(at + 5 + avail)]))
            if need < 0 && message.count >= 4 {
                if message[0] != 1 { return .invalid("first handshake message is type \(message[0]), not ClientHello") }
                need = 4 + (Int(message[1]) << 16 | Int(message[2]) << 8 | Int(message[3]))
                if need > maxLength { return .tooLarge }
            }
            if need >= 0 && message.count >= need { break }
            if avail < len { return .needMore }
            at += 5 + len
        }
        // Whatever follows the hello in its last record is not ours to judge.
        return message.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[4..<need])) }
    }

    /// The ClientHello body (RFC 8446 4.1.2): version, random, session id, cipher suites,
    /// compression methods, extensions.
    static func body(_ m: UnsafeRawBufferPointer) -> ParseResult {
        var r = Reader(m)
        guard r.skip(2 + 32) else { return .invalid("short ClientHello") }
        guard let sid = r.u8(), sid <= 32, r.skip(Int(sid)) else { return .invalid("bad session id") }
        guard let cs = r.u16(), cs >= 2, cs % 2 == 0, r.skip(Int(cs)) else { return .invalid("bad cipher suites") }
        guard let cm = r.u8(), cm >= 1, r.skip(Int(cm)) else { return .invalid("bad compression methods") }
        var hello = Hello(serverName: nil, alpn: [])
        if r.remaining == 0 { return .hello(hello) }  // no extensions (old clients)
        guard let extLen = r.u16(), Int(extLen) == r.remaining else { return .invalid("bad extensions length") }
        var seen = Set<UInt16>()
        while r.remaining > 0 {
            guard let type = r.u16(), let len = r.u16(), let data = r.take(Int(len)) else {
                return .invalid("truncated extension")
            }
            guard seen.insert(type).inserted else { return .invalid("extension \(type) repeated") }
            switch type {
            case 0:
                switch serverName(data) {
                case .success(let name): hello.serverName = name
                case .failure(let e): return .invalid(e.message)
                }
            case 16:
                guard let protocols = alpn(data) else { return .invalid("bad ALPN extension") }
                hello.alpn = protocols
            default:
                break
            }
        }
        return .hello(hello)
    }

    struct Failure: Error { let message: String }

    /// server_name (RFC 6066 3): a list of (type, name); the host_name entry (type 0).
    static func serverName(_ d: UnsafeRawBufferPointer) -> Result<String?, Failure> {
        var r = Reader(d)
        guard let listLen = r.u16(), Int(listLen) == r.remaining, listLen > 0 else { return .failure(Failure(message: "bad server_name list")) }
        var found: String?
        while r.remaining > 0 {
            guard let type = r.u8(), let len = r.u16(), let name = r.take(Int(len)) else {
                return .failure(Failure(message: "truncated server_name"))
            }
            if type != 0 || found != nil { continue }
            guard let h = hostName(name) else { return .failure(Failure(message: "server_name is not a host name")) }
            found = h
        }
        return .success(found)
    }

    /// A DNS host name as SNI carries it (RFC 6066: ASCII, no trailing dot; one is tolerated),
    /// lowercased. Anything else (empty, over 253 bytes, other bytes, empty labels) is refused.
    static func hostName(_ d: UnsafeRawBufferPointer) -> String? {
        var n = d.count
        if n > 0 && d[n - 1] == 0x2E { n -= 1 }
        guard n > 0 && n <= 253 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(n)
        var label = 0
        for i in 0..<n {
            var c = d[i]
            switch c {
            case 0x41...0x5A: c += 32
            case 0x61...0x7A, 0x30...0x39, 0x2D, 0x5F: break
            case 0x2E:
                if label == 0 { return nil }
                label = -1
            default: return nil
            }
            label += 1
            if label > 63 { return nil }
            out.append(c)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// ALPN (RFC 7301 3.1): a list of non-empty protocol names.
    static func alpn(_ d: UnsafeRawBufferPointer) -> [String]? {
        var r = Reader(d)
        guard let listLen = r.u16(), Int(listLen) == r.remaining, listLen >= 2 else { return nil }
        var out: [String] = []
        while r.remaining > 0 {
            guard let len = r.u8(), len > 0, let p = r.take(Int(len)) else { return nil }
            out.append(String(decoding: p, as: UTF8.self))
        }
        return out
    }

    /// A bounds-checked cursor.
    struct Reader {
        let b: UnsafeRawBufferPointer
        var at = 0
        init(_ b: UnsafeRawBufferPointer) { self.b = b }
        var remaining: Int { b.count - at }
        mutating func skip(_ n: Int) -> Bool {
            guard n <= remaining else { return false }
            at += n
            return true
        }
        mutating func u8() -> UInt8? {
            guard remaining >= 1 else { return nil }
            defer { at += 1 }
            return b[at]
        }
        mutating func u16() -> UInt16? {
            guard remaining >= 2 else { return nil }
            defer { at += 2 }
            return UInt16(b[at]) << 8 | UInt16(b[at + 1])
        }
        mutating func take(_ n: Int) -> UnsafeRawBufferPointer? {
            guard n <= remaining else { return nil }
            defer { at += n }
            return UnsafeRawBufferPointer(rebasing: b[at..<(at + n)])
        }
    }
}

/// Which filter chain a connection takes by its SNI (Envoy's filter_chain_match.server_names):
/// an exact name first, then the longest `*.suffix` wildcard, then the chain without names.
public struct ServerNameTable: Sendable {
    private var exact: [String: Int] = [:]
    /// Wildcards by their suffix with the dot (`*.example.com` → `.example.com`).
    private var wildcard: [String: Int] = [:]
    public private(set) var defaultChain: Int?

    public init() {}

    /// Adds a name (already validated and lowercased by the config loader); false if taken.
    public mutating func add(_ name: String, chain: Int) -> Bool {
        if name.hasPrefix("*.") {
            let suffix = String(name.dropFirst())
            if wildcard[suffix] != nil { return false }
            wildcard[suffix] = chain
        } else {
            if exact[name] != nil { return false }
            exact[name] = chain
        }
        return true
    }

    public mutating func setDefault(_ chain: Int) { defaultChain = chain }

    public func match(_ serverName: String?) -> Int? {
        guard let name = serverName else { return defaultChain }
        if let c = exact[name] { return c }
        // Longest suffix first: for a.b.example.com, .b.example.com then .example.com then .com.
        var i = name.startIndex
        while let dot = name[i...].firstIndex(of: ".") {
            if let c = wildcard[String(name[dot...])] { return c }
            i = name.index(after: dot)
        }
        return defaultChain
    }
}
