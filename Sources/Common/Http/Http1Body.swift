import Glibc

/// Decodes a chunked body (RFC 9112 7.1) incrementally from whatever bytes have arrived:
/// data is handed out in place (no copy), chunk lines and trailers are validated strictly.
/// Sizes beyond 2^60, extensions that are not `;token[=token|quoted]`, a missing CRLF after
/// data, or a line longer than `maxLineBytes` are errors, never guesses.
public struct ChunkedDecoder: Sendable {
    private enum State: Sendable { case size, data(UInt64), dataCRLF, trailers, done }
    private var state = State.size
    /// Longest chunk-size line (size and extensions).
    public var maxLineBytes = 4096
    /// Most bytes of trailer lines.
    public var maxTrailerBytes = 16 * 1024
    private var trailerBytes = 0
    private var trailerLines = 0
    /// Most trailer lines.
    public var maxTrailers = 100

    public init() {}

    public var isDone: Bool { if case .done = state { return true } else { return false } }

    public enum Event {
        /// Body bytes (in place: valid until the input changes).
        case data(UnsafeRawBufferPointer)
    }

    public enum Result: Equatable, Sendable {
        /// Consumed `consumed` bytes; more are needed.
        case more(consumed: Int)
        /// The body ended (trailers included) after `consumed` bytes.
        case done(consumed: Int)
        case error(Http1Error)
    }

    /// Consumes what it can of `b`, calling `onData` for body bytes; trailers go to `trailers`
    /// (made on the first one kept; lowercase names, framing headers dropped). The caller keeps
    /// `trailers` across calls: trailer lines can arrive in several reads.
    public mutating func decode(_ b: UnsafeRawBufferPointer, trailers: inout HeaderMap?, onData: (UnsafeRawBufferPointer) -> Void) -> Result {
        var i = 0
        let n = b.count
        while i < n {
            switch state {
            case .size:
                guard let lf = findLF(b, from: i) else {
                    if n - i > maxLineBytes { return .error(.chunkLineTooLong) }
                    return .more(consumed: i)
                }
                if lf - i > maxLineBytes { return .error(.chunkLineTooLong) }
                if lf == i || b[lf - 1] != 0x0D { return .error(lf == i ? .badChunkSize : .bareLF) }
                switch ChunkedDecoder.parseSizeLine(UnsafeRawBufferPointer(rebasing: b[i..<(lf - 1)])) {
                case .failure(let e): return .error(e)
                case .success(let size):
                    i = lf + 1
                    state = size == 0 ? .trailers : .data(size)
                }
            case .data(let left):
                let take = Int(min(UInt64(n - i), left))
                onData(UnsafeRawBufferPointer(rebasing: b[i..<(i + take)]))
                i += take
                state = left == UInt64(take) ? .dataCRLF : .data(left - UInt64(take))
            case .dataCRLF:
                if n - i < 2 { return .more(consumed: i) }
                if b[i] != 0x0D || b[i + 1] != 0x0A { return .error(.badChunkTerminator) }
                i += 2
                state = .size
            case .trailers:
                guard let lf = findLF(b, from: i) else {
                    if trailerBytes + (n - i) > maxTrailerBytes { return .error(.trailersTooLarge) }
                    return .more(consumed: i)
                }
                if lf == i || b[lf - 1] != 0x0D { return .error(.bareLF) }
                trailerBytes += lf + 1 - i
                if trailerBytes > maxTrailerBytes { return .error(.trailersTooLarge) }
                if lf == i + 1 {  // the empty line: the message ends
                    state = .done
                    return .done(consumed: lf + 1)
                }
                trailerLines += 1
                if trailerLines > maxTrailers { return .error(.trailersTooLarge) }
                // One line, validated like a header line (the same rules, the same parser).
                let line = UnsafeRawBufferPointer(rebasing: b[i...(lf)])
                if let e = ChunkedDecoder.addTrailer(line, to: &trailers) { return .error(e) }
                i = lf + 1
            case .done:
                return .done(consumed: i)
            }
        }
        if case .done = state { return .done(consumed: i) }
        return .more(consumed: i)
    }

    private func findLF(_ b: UnsafeRawBufferPointer, from i: Int) -> Int? {
        guard i < b.count, let p = memchr(b.baseAddress! + i, 0x0A, b.count - i) else { return nil }
        return b.baseAddress!.distance(to: UnsafeRawPointer(p))
    }

    /// `1a;name=value;flag` (without the CRLF) → the size.
    static func parseSizeLine(_ l: UnsafeRawBufferPointer) -> Swift.Result<UInt64, Http1Error> {
        var i = 0
        var size: UInt64 = 0
        // Leading zeros are allowed (RFC 9112 7.1) and do not count toward the digit limit;
        // the line's own length limit bounds them.
        var significant = 0
        while i < l.count, let d = hexValue(l[i]) {
            if size != 0 || d != 0 { significant += 1 }
            if significant > 15 { return .failure(.chunkSizeOverflow) }  // 15 hex digits: < 2^60
            size = size << 4 | UInt64(d)
            i += 1
        }
        if i == 0 { return .failure(.badChunkSize) }
        // Right after the digits only `;` or whitespace may follow: "1g" is a bad size.
        if i < l.count && l[i] != 0x3B && l[i] != 0x20 && l[i] != 0x09 { return .failure(.badChunkSize) }
        // chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
        while i < l.count {
            while i < l.count && (l[i] == 0x20 || l[i] == 0x09) { i += 1 }
            if i == l.count { return .failure(.badChunkExtension) }  // trailing whitespace alone
            if l[i] != 0x3B { return .failure(.badChunkExtension) }
            i += 1
            while i < l.count && (l[i] == 0x20 || l[i] == 0x09) { i += 1 }
            let ns = i
            while i < l.count && HttpChars.isToken(l[i]) { i += 1 }
            if i == ns { return .failure(.badChunkExtension) }
            var j = i
            while j < l.count && (l[j] == 0x20 || l[j] == 0x09) { j += 1 }
            if j < l.count && l[j] == 0x3D {
                i = j + 1
                while i < l.count && (l[i] == 0x20 || l[i] == 0x09) { i += 1 }
                if i < l.count && l[i] == 0x22 {
                    i += 1
                    var closed = false
                    while i < l.count {
                        let c = l[i]
                        if c == 0x22 { closed = true; i += 1; break }
                        if c == 0x5C {  // quoted-pair
                            i += 1
                            if i >= l.count || !HttpChars.isFieldValue(l[i]) { return .failure(.badChunkExtension) }
                        } else if !HttpChars.isFieldValue(c) || c == 0x7F { return .failure(.badChunkExtension) }
                        i += 1
                    }
                    if !closed { return .failure(.badChunkExtension) }
                } else {
                    let vs = i
                    while i < l.count && HttpChars.isToken(l[i]) { i += 1 }
                    if i == vs { return .failure(.badChunkExtension) }
                }
            }
        }
        return .success(size)
    }

    @inline(__always) static func hexValue(_ c: UInt8) -> UInt8? {
        if c &- 0x30 < 10 { return c &- 0x30 }
        let l = c | 0x20
        if l &- 0x61 < 6 { return l &- 0x61 + 10 }
        return nil
    }

    /// Validates one trailer line (`name: value\r\n`) and adds it unless it is a framing or
    /// routing header a trailer must not carry (RFC 9110 6.5.1).
    static func addTrailer(_ line: UnsafeRawBufferPointer, to trailers: inout HeaderMap?) -> Http1Error? {
        let scratch = HeaderMap()
        // The line plus an empty line is a header block of one line.
        var block = [UInt8](line)
        block.append(contentsOf: [0x0D, 0x0A])
        let e = block.withUnsafeBytes { Http1HeadParser.parseHeaderLines($0, from: 0, headers: scratch, maxHeaders: 1, hostAsAuthority: false) }
        if let e { return e == .whitespaceBeforeFirstHeader ? .obsFold : (e == .tooManyHeaders ? .badTrailer : e) }
        guard let i = scratch.entries.indices.first else { return nil }
        switch scratch.entries[i].known {
        case .contentLength, .transferEncoding, .host, .authority, .connection, .te, .trailer, .keepAlive, .upgrade: return nil
        default: break
        }
        let t = trailers ?? HeaderMap()
        trailers = t
        scratch.withName(i) { n in scratch.withValue(i) { v in t.add(n, v) } }
        return nil
    }
}

/// Writes HTTP/1.1 heads and chunk framing into a `Buffer`.
public enum Http1Encoder {
    /// `METHOD path HTTP/1.1`, `host`, then every live non-pseudo header, then the empty line.
    public static func writeRequestHead(_ h: HeaderMap, into out: Buffer) {
        var s = HeadWriter(out)
        if let m = h.first(.method) { h.withValue(m) { s.put($0) } }
        s.put(" ")
        if let p = h.first(.path) { h.withValue(p) { s.put($0) } } else if let a = h.first(.authority) {
            h.withValue(a) { s.put($0) }  // CONNECT's authority-form
        }
        s.put(" HTTP/1.1\r\n")
        if let a = h.first(.authority) {
            s.put("host: ")
            h.withValue(a) { s.put($0) }
            s.put("\r\n")
        }
        writeFields(h, &s)
        s.put("\r\n")
        s.finish()
    }

    /// `HTTP/1.x status reason`, then the headers and the empty line.
    public static func writeResponseHead(_ h: HeaderMap, status: Int, minorVersion: Int = 1, into out: Buffer) {
        var s = HeadWriter(out)
        s.put(minorVersion == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
        s.putInt(status)
        s.put(" ")
        s.put(reasonPhrase(status))
        s.put("\r\n")
        writeFields(h, &s)
        s.put("\r\n")
        s.finish()
    }

    private static func writeFields(_ h: HeaderMap, _ s: inout HeadWriter) {
        h.storage.withUnsafeBytes { st in
            for e in h.entries where !e.removed && !e.known.isPseudo {
                s.put(UnsafeRawBufferPointer(rebasing: st[Int(e.nameStart)..<Int(e.nameStart + e.nameLength)]))
                s.put(": ")
                s.put(UnsafeRawBufferPointer(rebasing: st[Int(e.valueStart)..<Int(e.valueStart + e.valueLength)]))
                s.put("\r\n")
            }
        }
    }

    /// The chunk header for `n` bytes of data (`1a\r\n`).
    public static func writeChunkHeader(_ n: Int, into out: Buffer) {
        var s = HeadWriter(out)
        s.putHex(n)
        s.put("\r\n")
        s.finish()
    }

    /// The CRLF that ends a chunk's data.
    public static func writeChunkEnd(into out: Buffer) {
        var s = HeadWriter(out)
        s.put("\r\n")
        s.finish()
    }

    /// The last chunk, trailers, and the empty line.
    public static func writeLastChunk(trailers: HeaderMap?, into out: Buffer) {
        var s = HeadWriter(out)
        s.put("0\r\n")
        if let t = trailers { writeFields(t, &s) }
        s.put("\r\n")
        s.finish()
    }

    /// A short reason phrase for common codes ("Unknown" otherwise: clients ignore it).
    public static func reasonPhrase(_ status: Int) -> StaticString {
        switch status {
        case 100: "Continue"
        case 101: "Switching Protocols"
        case 200: "OK"
        case 201: "Created"
        case 202: "Accepted"
        case 204: "No Content"
        case 206: "Partial Content"
        case 301: "Moved Permanently"
        case 302: "Found"
        case 303: "See Other"
        case 304: "Not Modified"
        case 307: "Temporary Redirect"
        case 308: "Permanent Redirect"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 406: "Not Acceptable"
        case 407: "Proxy Authentication Required"
        case 409: "Conflict"
        case 410: "Gone"
        case 412: "Precondition Failed"
        case 415: "Unsupported Media Type"
        case 416: "Range Not Satisfiable"
        case 421: "Misdirected Request"
        case 422: "Unprocessable Content"
        case 425: "Too Early"
        case 426: "Upgrade Required"
        case 428: "Precondition Required"
        case 408: "Request Timeout"
        case 411: "Length Required"
        case 413: "Payload Too Large"
        case 414: "URI Too Long"
        case 417: "Expectation Failed"
        case 429: "Too Many Requests"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        case 505: "HTTP Version Not Supported"
        default: "Unknown"
        }
    }
}

/// Appends pieces to a buffer's tail, growing it as needed.
struct HeadWriter {
    let out: Buffer
    private var region: UnsafeMutableRawBufferPointer
    private var used = 0

    init(_ out: Buffer) {
        self.out = out
        region = out.reserve(1024)
    }

    private mutating func ensure(_ n: Int) {
        if region.count - used >= n { return }
        out.commit(used)
        used = 0
        region = out.reserve(max(n, 1024))
    }

    mutating func put(_ b: UnsafeRawBufferPointer) {
        if b.isEmpty { return }
        ensure(b.count)
        (region.baseAddress! + used).copyMemory(from: b.baseAddress!, byteCount: b.count)
        used += b.count
    }

    mutating func put(_ s: StaticString) {
        put(UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    mutating func putInt(_ v: Int) {
        ensure(20)
        var x = v, digits = 0, t = v
        repeat { digits += 1; t /= 10 } while t > 0
        let p = region.baseAddress! + used
        for k in stride(from: digits - 1, through: 0, by: -1) { p.storeBytes(of: UInt8(0x30 + x % 10), toByteOffset: k, as: UInt8.self); x /= 10 }
        used += digits
    }

    mutating func putHex(_ v: Int) {
        ensure(16)
        var digits = 0, t = v
        repeat { digits += 1; t >>= 4 } while t > 0
        let p = region.baseAddress! + used
        var x = v
        let hex: StaticString = "0123456789abcdef"
        for k in stride(from: digits - 1, through: 0, by: -1) {
            p.storeBytes(of: hex.utf8Start[x & 15], toByteOffset: k, as: UInt8.self)
            x >>= 4
        }
        used += digits
    }

    func finish() { out.commit(used) }
}
