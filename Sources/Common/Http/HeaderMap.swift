import Glibc

/// Headers with a name the codecs, the connection manager and the router look at on every
/// request: found once while the block is parsed (or added), then read by index with no name
/// compare (Envoy's inline headers). Pseudo-headers carry the request and status line, so one
/// map serves HTTP/1.1 and HTTP/2 alike.
public enum KnownHeader: UInt8, CaseIterable, Sendable {
    case method, path, authority, scheme, status, `protocol`
    case host, contentLength, transferEncoding, connection, keepAlive, proxyConnection, te, trailer,
         upgrade, expect, xForwardedFor, xForwardedProto, xRequestId, via, cookie, http2Settings
    /// Not one of the above.
    case other

    /// The lowercase name.
    public var name: String {
        switch self {
        case .method: ":method"
        case .path: ":path"
        case .authority: ":authority"
        case .scheme: ":scheme"
        case .status: ":status"
        case .protocol: ":protocol"
        case .host: "host"
        case .contentLength: "content-length"
        case .transferEncoding: "transfer-encoding"
        case .connection: "connection"
        case .keepAlive: "keep-alive"
        case .proxyConnection: "proxy-connection"
        case .te: "te"
        case .trailer: "trailer"
        case .upgrade: "upgrade"
        case .expect: "expect"
        case .xForwardedFor: "x-forwarded-for"
        case .xForwardedProto: "x-forwarded-proto"
        case .xRequestId: "x-request-id"
        case .via: "via"
        case .cookie: "cookie"
        case .http2Settings: "http2-settings"
        case .other: ""
        }
    }

    /// A pseudo-header (`:method`, ...): never written as an HTTP/1.1 header line.
    public var isPseudo: Bool { rawValue <= KnownHeader.protocol.rawValue }

    /// The known header `name` is (lowercase, or any case with `ignoringCase`), or `.other`: a
    /// switch on the length and one compare against a literal (no table behind a lazy global).
    @inline(__always)
    public static func classify(_ name: UnsafeRawBufferPointer, ignoringCase: Bool = false) -> KnownHeader {
        @inline(__always) func equalsLiteral(_ b: UnsafeRawBufferPointer, _ l: StaticString) -> Bool {
            ignoringCase ? equalsLiteralIgnoringCase(b, l) : Common.equalsLiteral(b, l)
        }
        switch name.count {
        case 2: if equalsLiteral(name, "te") { return .te }
        case 3: if equalsLiteral(name, "via") { return .via }
        case 4: if equalsLiteral(name, "host") { return .host }
        case 5: if equalsLiteral(name, ":path") { return .path }
        case 6: if equalsLiteral(name, "expect") { return .expect }; if equalsLiteral(name, "cookie") { return .cookie }
        case 7: if equalsLiteral(name, ":method") { return .method }; if equalsLiteral(name, ":scheme") { return .scheme }; if equalsLiteral(name, ":status") { return .status }; if equalsLiteral(name, "trailer") { return .trailer }; if equalsLiteral(name, "upgrade") { return .upgrade }
        case 9: if equalsLiteral(name, ":protocol") { return .protocol }
        case 10: if equalsLiteral(name, ":authority") { return .authority }; if equalsLiteral(name, "connection") { return .connection }; if equalsLiteral(name, "keep-alive") { return .keepAlive }
        case 12: if equalsLiteral(name, "x-request-id") { return .xRequestId }
        case 14: if equalsLiteral(name, "content-length") { return .contentLength }; if equalsLiteral(name, "http2-settings") { return .http2Settings }
        case 15: if equalsLiteral(name, "x-forwarded-for") { return .xForwardedFor }
        case 16: if equalsLiteral(name, "proxy-connection") { return .proxyConnection }
        case 17: if equalsLiteral(name, "transfer-encoding") { return .transferEncoding }; if equalsLiteral(name, "x-forwarded-proto") { return .xForwardedProto }
        default: break
        }
        return .other
    }

}

/// Spare `HeaderMap`s of one worker: a map its owner (a codec, an upstream client) is done
/// with is given back, and handed out again, reset, once nobody else holds it (a stream, a
/// filter, a retry may keep it a while; `isKnownUniquelyReferenced` decides, so none is
/// reused early). Saves a request or response its map and both arrays (three allocations).
/// Bounded: at most `limit` spares per worker, none grown past `maxBytes` (a huge header
/// block); when full, the oldest spare is let go.
public final class HeaderMapCache {
    private var spares: [HeaderMap] = []
    private let limit: Int
    private static let maxBytes = 8192

    public init(limit: Int = 128) {
        self.limit = limit
        spares.reserveCapacity(limit)
    }

    /// A map to fill: a reset spare nobody holds any more, else a new one. Only the oldest
    /// few are looked at (the likeliest to be free), so maps held by long responses cost a
    /// request no more than that.
    public func take() -> HeaderMap {
        let n = min(spares.count, 8)
        var i = 0
        while i < n {
            if isKnownUniquelyReferenced(&spares[i]) {
                let m = spares.remove(at: i)
                m.reset()
                return m
            }
            i += 1
        }
        return HeaderMap()
    }

    /// The owner is done with `m` (others may still hold it).
    public func give(_ m: HeaderMap) {
        guard m.capacityBytes <= HeaderMapCache.maxBytes else { return }
        if spares.count >= limit { spares.removeFirst() }
        spares.append(m)
    }
}

/// One header: offsets of its name and value in the map's storage.
public struct HeaderEntry: Sendable {
    public var nameStart: UInt32
    public var nameLength: UInt32
    public var valueStart: UInt32
    public var valueLength: UInt32
    public var known: KnownHeader
    /// Removed: skipped by iteration and lookups (storage is not compacted).
    public var removed: Bool
}

/// The headers of one request or response (pseudo-headers included), in one byte store with
/// entries pointing into it: a parsed HTTP/1.1 block is copied in once (one memcpy, names
/// lowercased on the way), HTTP/2 headers are appended. Nothing becomes a `String` unless a
/// filter or a route asks (`string(_:)`). Known headers are found by index (`first(_:)`).
/// Confined to the stream's worker; reused across requests on a connection (`reset`).
public final class HeaderMap {
    /// Names and values, back to back.
    public private(set) var storage: [UInt8] = []
    /// In order of arrival or addition.
    public private(set) var entries: [HeaderEntry] = []
    /// First live entry per known header (index into `entries`), -1 when absent.
    private var firstIndex = InlineArray<24, Int32>(repeating: -1)
    /// Bytes of live names and values (a limit check for header lists).
    public private(set) var byteCount = 0
    /// Live entries.
    public private(set) var count = 0

    public init() {
        storage.reserveCapacity(512)
        entries.reserveCapacity(16)
    }

    /// Memory its arrays hold (a reused map keeps its capacity).
    public var capacityBytes: Int { storage.capacity + entries.capacity * MemoryLayout<HeaderEntry>.stride }

    /// Empties the map, keeping its capacity.
    public func reset() {
        storage.removeAll(keepingCapacity: true)
        entries.removeAll(keepingCapacity: true)
        for i in firstIndex.indices { firstIndex[i] = -1 }  // fixed size, no allocation
        byteCount = 0; count = 0
    }

    // MARK: - Adding

    /// Appends raw bytes to the store and returns their offset (for a codec that then calls
    /// `addEntry`): lets HTTP/1.1 copy a whole header block in one go.
    public func appendStorage(_ bytes: UnsafeRawBufferPointer) -> Int {
        let at = storage.count
        storage.append(contentsOf: bytes)
        return at
    }

    /// Lowercases the names of entries `from...` in place, in one pass over the store (an
    /// HTTP/1.1 block copied in as it arrived).
    public func lowercaseNames(fromEntry first: Int) {
        guard first < entries.count else { return }
        entries.withUnsafeBufferPointer { es in
            storage.withUnsafeMutableBufferPointer { p in
                for e in es[first...] where e.nameLength > 0 {
                    for i in Int(e.nameStart)..<Int(e.nameStart + e.nameLength) where p[i] &- 0x41 < 26 { p[i] |= 0x20 }
                }
            }
        }
    }

    /// Lowercases `length` bytes of the store at `start` (names of an HTTP/1.1 block).
    public func lowercaseStorage(start: Int, length: Int) {
        storage.withUnsafeMutableBufferPointer { p in
            for i in start..<(start + length) where p[i] >= 0x41 && p[i] <= 0x5A { p[i] |= 0x20 }
        }
    }

    /// Adds an entry for a name and value already in the store. The name must be lowercase.
    public func addEntry(nameStart: Int, nameLength: Int, valueStart: Int, valueLength: Int, known: KnownHeader? = nil) {
        let k = known ?? storage.withUnsafeBytes {
            KnownHeader.classify(UnsafeRawBufferPointer(rebasing: $0[nameStart..<(nameStart + nameLength)]))
        }
        if k != .other && firstIndex[Int(k.rawValue)] < 0 { firstIndex[Int(k.rawValue)] = Int32(entries.count) }
        entries.append(HeaderEntry(nameStart: UInt32(nameStart), nameLength: UInt32(nameLength),
                                   valueStart: UInt32(valueStart), valueLength: UInt32(valueLength), known: k, removed: false))
        byteCount += nameLength + valueLength
        count += 1
    }

    /// Adds `name: value` (name lowercased here).
    public func add(_ name: String, _ value: String) {
        var n = name, v = value
        n.withUTF8 { nb in v.withUTF8 { vb in add(UnsafeRawBufferPointer(nb), UnsafeRawBufferPointer(vb)) } }
    }

    /// Adds a header from bytes (name lowercased here).
    public func add(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) {
        let ns = appendStorage(name)
        lowercaseStorage(start: ns, length: name.count)
        let vs = appendStorage(value)
        addEntry(nameStart: ns, nameLength: name.count, valueStart: vs, valueLength: value.count)
    }

    /// Adds a known header.
    public func add(_ k: KnownHeader, _ value: String) { add(k.name, value) }

    /// Replaces every `name` header with one `name: value`.
    public func set(_ name: String, _ value: String) {
        remove(name)
        add(name, value)
    }

    public func set(_ k: KnownHeader, _ value: String) {
        remove(k)
        add(k.name, value)
    }

    // MARK: - Removing

    /// Removes entry `i`.
    public func remove(at i: Int) {
        guard !entries[i].removed else { return }
        entries[i].removed = true
        byteCount -= Int(entries[i].nameLength + entries[i].valueLength)
        count -= 1
        let k = entries[i].known
        if k != .other && firstIndex[Int(k.rawValue)] == Int32(i) {
            firstIndex[Int(k.rawValue)] = Int32(entries[(i + 1)...].firstIndex { !$0.removed && $0.known == k } ?? -1)
        }
    }

    /// Removes every header of a known name.
    public func remove(_ k: KnownHeader) {
        var i = Int(firstIndex[Int(k.rawValue)])
        if i < 0 { return }
        while i < entries.count {
            if entries[i].known == k && !entries[i].removed { remove(at: i) }
            i += 1
        }
    }

    /// Joins every `k` line into one comma-separated value and appends `suffix`
    /// (X-Forwarded-For), or adds the header with `suffix` when absent: bytes only, no String.
    public func appendToList(_ k: KnownHeader, _ suffix: UnsafeRawBufferPointer) {
        guard let i = first(k) else {
            let name = k.name
            var n = name
            n.withUTF8 { add(UnsafeRawBufferPointer($0), suffix) }
            return
        }
        // Every line of the list joins into the first (a second X-Forwarded-For line must not
        // keep a client-chosen address last), then the suffix.
        let start = storage.count
        var j = i
        while j < entries.count {
            let e = entries[j]
            if e.known == k && !e.removed {
                if e.valueLength > 0 {
                    if storage.count > start { storage.append(0x2C); storage.append(0x20) }
                    storage.append(contentsOf: storage[Int(e.valueStart)..<Int(e.valueStart + e.valueLength)])
                }
                if j != i { remove(at: j) }
            }
            j += 1
        }
        if storage.count > start { storage.append(0x2C); storage.append(0x20) }
        storage.append(contentsOf: suffix)
        let length = storage.count - start
        // The first entry keeps its place and name; only its value moves.
        byteCount += length - Int(entries[i].valueLength)
        entries[i].valueStart = UInt32(start)
        entries[i].valueLength = UInt32(length)
    }

    /// Removes the hop-by-hop headers of RFC 9110 7.6.1 (`connection`, `keep-alive`,
    /// `proxy-connection`, `te`, `transfer-encoding`, `upgrade`, `trailer`, `http2-settings`):
    /// one pass over the entries, no allocation. Names listed in `Connection` are the caller's.
    public func removeHopByHop() {
        for i in entries.indices where !entries[i].removed {
            switch entries[i].known {
            case .connection, .keepAlive, .proxyConnection, .te, .transferEncoding, .upgrade, .trailer, .http2Settings:
                remove(at: i)
            default: break
            }
        }
    }

    /// Removes every header named `name` (any case).
    public func remove(_ name: String) {
        for i in indices(of: name) { remove(at: i) }
    }

    // MARK: - Reading

    /// Index of the first live `k` header, or nil.
    @inline(__always) public func first(_ k: KnownHeader) -> Int? {
        let i = firstIndex[Int(k.rawValue)]
        return i < 0 ? nil : Int(i)
    }

    /// Whether a `k` header is present.
    @inline(__always) public func has(_ k: KnownHeader) -> Bool { firstIndex[Int(k.rawValue)] >= 0 }

    /// Live indices of `name` (any case), in order.
    public func indices(of name: String) -> [Int] {
        let lower = Array(name.lowercased().utf8)
        var k = lower.withUnsafeBytes { KnownHeader.classify($0) }
        // A request's Host is its :authority (HTTP/1.1's codec files it there, as HTTP/2 does).
        if k == .host && !has(.host) { k = .authority }
        var out: [Int] = []
        for (i, e) in entries.enumerated() where !e.removed {
            if k != .other { if e.known == k { out.append(i) }; continue }
            if Int(e.nameLength) == lower.count && nameEquals(i, lower) { out.append(i) }
        }
        return out
    }

    /// The first live entry named `lower` (a lowercase literal that is not a known header):
    /// no allocation, for per-request lookups of other headers.
    public func first(named lower: StaticString) -> Int? {
        let n = lower.utf8CodeUnitCount
        let p = UnsafeRawPointer(lower.utf8Start)
        return storage.withUnsafeBytes { s -> Int? in
            for i in entries.indices {
                let e = entries[i]
                if e.removed || e.known != .other || Int(e.nameLength) != n { continue }
                if memcmp(s.baseAddress! + Int(e.nameStart), p, n) == 0 { return i }
            }
            return nil
        }
    }

    /// Live indices of a known header, in order, without allocating (per-message paths).
    /// Removing the entry just returned is fine: removal does not move entries.
    public struct KnownIndices: Sequence, IteratorProtocol {
        let map: HeaderMap
        let k: KnownHeader
        var i: Int

        public mutating func next() -> Int? {
            guard i >= 0 else { return nil }
            let n = map.entries.count
            while i < n {
                let j = i
                i += 1
                let e = map.entries[j]
                if e.known == k && !e.removed { return j }
            }
            i = -1
            return nil
        }
    }

    /// See `KnownIndices`.
    public func all(_ k: KnownHeader) -> KnownIndices { KnownIndices(map: self, k: k, i: first(k) ?? -1) }

    /// How many live `k` headers there are.
    public func count(of k: KnownHeader) -> Int {
        var n = 0
        for _ in all(k) { n += 1 }
        return n
    }

    /// Live indices of a known header.
    public func indices(of k: KnownHeader) -> [Int] {
        guard let f = first(k) else { return [] }
        return (f..<entries.count).filter { entries[$0].known == k && !entries[$0].removed }
    }

    private func nameEquals(_ i: Int, _ lower: [UInt8]) -> Bool {
        let e = entries[i]
        return storage.withUnsafeBytes { s in
            lower.withUnsafeBytes { memcmp(s.baseAddress! + Int(e.nameStart), $0.baseAddress!, lower.count) == 0 }
        }
    }

    /// Runs `body` with the value bytes of entry `i` (valid only inside).
    @inline(__always)
    public func withValue<R>(_ i: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let e = entries[i]
        return try storage.withUnsafeBytes {
            try body(UnsafeRawBufferPointer(rebasing: $0[Int(e.valueStart)..<Int(e.valueStart + e.valueLength)]))
        }
    }

    /// Runs `body` with the name bytes of entry `i`.
    @inline(__always)
    public func withName<R>(_ i: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let e = entries[i]
        return try storage.withUnsafeBytes {
            try body(UnsafeRawBufferPointer(rebasing: $0[Int(e.nameStart)..<Int(e.nameStart + e.nameLength)]))
        }
    }

    /// Entry `i`'s value as a String (allocates: for filters, routes and logs).
    public func value(at i: Int) -> String { withValue(i) { String(decoding: $0, as: UTF8.self) } }
    /// Entry `i`'s name.
    public func name(at i: Int) -> String { withName(i) { String(decoding: $0, as: UTF8.self) } }

    /// The first value of a known header, as a String.
    public func value(_ k: KnownHeader) -> String? { first(k).map { value(at: $0) } }

    /// The first value of `name` (any case).
    public func value(_ name: String) -> String? { indices(of: name).first.map { value(at: $0) } }

    /// Whether entry `i`'s value equals `literal`, ignoring ASCII case.
    public func valueEqualsIgnoringCase(_ i: Int, _ literal: StaticString) -> Bool {
        withValue(i) { v in
            guard v.count == literal.utf8CodeUnitCount else { return false }
            let l = literal.utf8Start
            for j in 0..<v.count where asciiLower(v[j]) != asciiLower(l[j]) { return false }
            return true
        }
    }

    /// Live (name, value) pairs as Strings, for tests, dumps and logs.
    public var pairs: [(String, String)] {
        entries.indices.filter { !entries[$0].removed }.map { (name(at: $0), value(at: $0)) }
    }
}

/// `b` lowercased when it is an ASCII capital letter.
@inline(__always) public func asciiLower(_ b: UInt8) -> UInt8 { b &- 0x41 < 26 ? b | 0x20 : b }
