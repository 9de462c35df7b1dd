import Glibc

/// Why an HTTP/1.1 message was refused. Each has its own counter (`http1.<statName>`) and a
/// status for a request (a response's error is always a 502 to the client).
public enum Http1Error: Int, CaseIterable, Sendable, Error {
    case headersTooLarge, tooManyHeaders
    case badRequestLine, badMethod, badTarget, badVersion, unsupportedVersion
    case badStatusLine
    case bareLF, bareCR, nul, obsFold, whitespaceBeforeColon, whitespaceBeforeFirstHeader
    case badHeaderName, badHeaderValue
    case missingHost, duplicateHost, badHost
    case contentLengthAndTransferEncoding, badContentLength, conflictingContentLength
    case badTransferEncoding, transferEncodingHttp10, connectWithBody
    case badChunkSize, chunkSizeOverflow, badChunkExtension, chunkLineTooLong, badChunkTerminator
    case badTrailer, trailersTooLarge

    /// The counter's name (under `http.<prefix>.http1.` or `cluster.<name>.http1.`).
    public var statName: String {
        switch self {
        case .headersTooLarge: "headers_too_large"
        case .tooManyHeaders: "too_many_headers"
        case .badRequestLine: "invalid_request_line"
        case .badMethod: "invalid_method"
        case .badTarget: "invalid_target"
        case .badVersion: "invalid_version"
        case .unsupportedVersion: "unsupported_version"
        case .badStatusLine: "invalid_status_line"
        case .bareLF: "bare_lf"
        case .bareCR: "bare_cr"
        case .nul: "nul_byte"
        case .obsFold: "obs_fold"
        case .whitespaceBeforeColon: "whitespace_before_colon"
        case .whitespaceBeforeFirstHeader: "whitespace_before_first_header"
        case .badHeaderName: "invalid_header_name"
        case .badHeaderValue: "invalid_header_value"
        case .missingHost: "missing_host"
        case .duplicateHost: "duplicate_host"
        case .badHost: "invalid_host"
        case .contentLengthAndTransferEncoding: "content_length_and_transfer_encoding"
        case .badContentLength: "invalid_content_length"
        case .conflictingContentLength: "conflicting_content_length"
        case .badTransferEncoding: "invalid_transfer_encoding"
        case .transferEncodingHttp10: "transfer_encoding_http10"
        case .connectWithBody: "connect_with_body"
        case .badChunkSize: "invalid_chunk_size"
        case .chunkSizeOverflow: "chunk_size_overflow"
        case .badChunkExtension: "invalid_chunk_extension"
        case .chunkLineTooLong: "chunk_line_too_long"
        case .badChunkTerminator: "invalid_chunk_terminator"
        case .badTrailer: "invalid_trailer"
        case .trailersTooLarge: "trailers_too_large"
        }
    }

    /// The status a client gets for a request refused for this reason.
    public var status: Int {
        switch self {
        case .headersTooLarge, .tooManyHeaders, .trailersTooLarge: 431
        case .unsupportedVersion: 505
        default: 400
        }
    }
}

/// How a message's body is delimited (RFC 9112 section 6).
public enum BodyFraming: Equatable, Sendable {
    /// No body.
    case none
    /// `Content-Length` bytes.
    case length(UInt64)
    /// `Transfer-Encoding: chunked`.
    case chunked
    /// Until the connection closes (a response with neither header).
    case close
    /// The connection becomes a tunnel (a 2xx to CONNECT, a 101): bytes both ways, unparsed.
    case tunnel
}

/// What the head of a message says beyond its headers.
public struct Http1Head: Sendable {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var minorVersion = 1
    /// Responses: the status code.
    public var status = 0
    public var framing = BodyFraming.none
    /// The connection may carry another message after this one.
    public var keepAlive = true
    /// `Expect: 100-continue` (requests).
    public var expectContinue = false
    /// An `Upgrade` header with `upgrade` in `Connection` (requests), or a 101 (responses).
    public var upgrade = false
    /// Requests: CONNECT.
    public var isConnect = false
    /// Requests: HEAD (its response has no body).
    public var isHead = false
    /// Requests: the target was in absolute form (`GET http://host/path`).
    public var absoluteForm = false
    /// Lowercase names listed in `Connection` other than close/keep-alive/upgrade: hop-by-hop
    /// headers to remove before forwarding (RFC 9110 7.6.1). Rare, so a String list is fine.
    public var connectionTokens: [String] = []

    public init() {}
}

/// Character classes of RFC 9110 as arithmetic on constants: no table behind a lazy global
/// (each access to one cost a `swift_once` check per byte in the profile).
@usableFromInline enum HttpChars {
    /// tchar (token characters): a 128-bit set as two words.
    @inline(__always) @usableFromInline static func isToken(_ c: UInt8) -> Bool {
        if c < 64 { return (0x03ff_6cfa_0000_0000 as UInt64) >> UInt64(c) & 1 != 0 }
        if c < 128 { return (0x57ff_ffff_c7ff_fffe as UInt64) >> UInt64(c - 64) & 1 != 0 }
        return false
    }
    /// field-vchar, SP and HTAB (obs-text included): what a field value may hold.
    @inline(__always) @usableFromInline static func isFieldValue(_ c: UInt8) -> Bool {
        (c >= 0x20 && c != 0x7F) || c == 0x09
    }
    /// Skips 8 bytes at a time while none is a control byte (< 0x20) or DEL; stops at the word
    /// holding one (the CR that ends a value, an HTAB, a bad byte) or near the end, where the
    /// byte loop goes on. SWAR: `(w - 0x20…) & ~w & 0x80…` flags a byte under 0x20 (obs-text,
    /// ≥ 0x80, is never flagged); the same test on `w ^ 0x7F…` flags DEL. A borrow can flag a
    /// byte above a real hit, never without one, so a flagged word only means "look closer".
    @inline(__always) @usableFromInline static func skipPlainValueBytes(_ b: UnsafeRawBufferPointer, from start: Int) -> Int {
        guard let base = b.baseAddress else { return start }
        var i = start
        let n = b.count
        while i + 8 <= n {
            let w = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let control = (w &- 0x2020_2020_2020_2020) & ~w
            let x = w ^ 0x7F7F_7F7F_7F7F_7F7F
            let del = (x &- 0x0101_0101_0101_0101) & ~x
            if (control | del) & 0x8080_8080_8080_8080 != 0 { break }
            i += 8
        }
        return i
    }
    /// What a request-target may hold: visible ASCII.
    @inline(__always) @usableFromInline static func isTarget(_ c: UInt8) -> Bool { c &- 0x21 < 0x5E }
}

/// A strict HTTP/1.1 head parser (RFC 9112) that works in place on the connection's buffer.
/// It waits for the whole head (`\r\n\r\n`, resuming the search where the last call stopped,
/// so a head that arrives a byte at a time costs linear work), then validates it in one pass
/// and copies it into a `HeaderMap` with one memcpy (names lowercased). Anything ambiguous is
/// an error, never a guess: the caller answers 400/431/505 (requests) or 502 (responses) and
/// closes.
public struct Http1HeadParser: Sendable {
    /// Most bytes of request/status line and headers together (431 beyond).
    public var maxHeadBytes: Int
    /// Most header lines (431 beyond).
    public var maxHeaders: Int
    /// Where the search for the end of the head resumes.
    private var scanned = 0

    public init(maxHeadBytes: Int = 60 * 1024, maxHeaders: Int = 100) {
        self.maxHeadBytes = maxHeadBytes; self.maxHeaders = maxHeaders
    }

    /// Forgets a partial scan (the next message starts).
    public mutating func reset() { scanned = 0 }

    public enum Result: Equatable, Sendable {
        /// More bytes are needed.
        case incomplete
        /// The head is parsed; it took `consumed` bytes from the front of the input.
        case complete(consumed: Int)
        case error(Http1Error)
    }

    /// Parses a request head from `bytes` into `headers` (reset first) and `head`.
    public mutating func parseRequest(_ bytes: UnsafeRawBufferPointer, headers: HeaderMap, head: inout Http1Head) -> Result {
        // Empty lines before a request line are skipped (RFC 9112 2.2), a few at most.
        var skip = 0
        while skip + 1 < bytes.count && bytes[skip] == 0x0D && bytes[skip + 1] == 0x0A && skip < 8 { skip += 2 }
        if skip >= bytes.count { return .incomplete }
        // `scanned` is relative to the bytes after the skipped lines (the same count each call).
        let body = UnsafeRawBufferPointer(rebasing: bytes[skip...])
        switch findEnd(body) {
        case .incomplete: return .incomplete
        case .error(let e): return .error(e)
        case .complete(let end):
            scanned = 0
            headers.reset()
            head = Http1Head()
            if let e = Http1HeadParser.parseRequestHead(UnsafeRawBufferPointer(rebasing: body[..<end]), headers: headers,
                                                        head: &head, maxHeaders: maxHeaders) {
                return .error(e)
            }
            return .complete(consumed: skip + end)
        }
    }

    /// Parses a response head; `request` says what was asked (HEAD and CONNECT change framing).
    public mutating func parseResponse(_ bytes: UnsafeRawBufferPointer, headers: HeaderMap, head: inout Http1Head,
                                       requestWasHead: Bool, requestWasConnect: Bool) -> Result {
        switch findEnd(bytes) {
        case .incomplete: return .incomplete
        case .error(let e): return .error(e)
        case .complete(let end):
            scanned = 0
            headers.reset()
            head = Http1Head()
            if let e = Http1HeadParser.parseResponseHead(UnsafeRawBufferPointer(rebasing: bytes[..<end]), headers: headers, head: &head,
                                                         maxHeaders: maxHeaders, requestWasHead: requestWasHead,
                                                         requestWasConnect: requestWasConnect) {
                return .error(e)
            }
            return .complete(consumed: end)
        }
    }

    private enum End { case incomplete, complete(Int), error(Http1Error) }

    /// Finds the end of the head (one past its empty line). Every LF must follow a CR.
    private mutating func findEnd(_ b: UnsafeRawBufferPointer) -> End {
        guard let base = b.baseAddress else { return .incomplete }
        var i = scanned
        let n = b.count
        while i < n {
            guard let p = memchr(base + i, 0x0A, n - i) else { break }
            let lf = base.distance(to: UnsafeRawPointer(p))
            if lf == 0 || b[lf - 1] != 0x0D { return .error(.bareLF) }
            if lf + 1 > maxHeadBytes { return .error(.headersTooLarge) }
            // An empty line: the CRLF right after the previous line's LF.
            if lf >= 3 && b[lf - 2] == 0x0A { return .complete(lf + 1) }
            if lf == 1 { return .error(.badRequestLine) }  // a head that starts with an empty line
            i = lf + 1
            scanned = i
        }
        if n > maxHeadBytes { return .error(.headersTooLarge) }
        return .incomplete
    }

    // MARK: - Head validation

    /// Parses `GET /path HTTP/1.1\r\n` then the header lines.
    static func parseRequestHead(_ b: UnsafeRawBufferPointer, headers: HeaderMap, head: inout Http1Head, maxHeaders: Int) -> Http1Error? {
        let n = b.count
        var i = 0
        // method
        while i < n && HttpChars.isToken(b[i]) { i += 1 }
        if i == 0 || i >= n { return .badMethod }
        if b[i] != 0x20 { return b[i] == 0x0D || b[i] == 0x09 ? .badRequestLine : .badMethod }
        let methodEnd = i
        i += 1
        // target
        let targetStart = i
        while i < n && HttpChars.isTarget(b[i]) { i += 1 }
        if i == targetStart || i >= n || b[i] != 0x20 { return i < n && b[i] == 0 ? .nul : .badTarget }
        let targetEnd = i
        i += 1
        // version
        guard let (minor, vEnd) = parseVersion(b, at: i) else {
            return looksLikeVersion(b, at: i) ? .unsupportedVersion : .badVersion
        }
        guard vEnd + 1 < n && b[vEnd] == 0x0D && b[vEnd + 1] == 0x0A else { return .badRequestLine }
        head.minorVersion = minor
        let lineEnd = vEnd + 2

        // The pseudo-headers go first in the store, then the header block is copied as is.
        let method = UnsafeRawBufferPointer(rebasing: b[0..<methodEnd])
        let target = UnsafeRawBufferPointer(rebasing: b[targetStart..<targetEnd])
        head.isConnect = equalsLiteral(method, "CONNECT")
        head.isHead = equalsLiteral(method, "HEAD")
        let ms = headers.appendStorage(method)
        headers.addEntry(nameStart: 0, nameLength: 0, valueStart: ms, valueLength: method.count, known: .method)
        var authorityFromTarget: (Int, Int)?
        if head.isConnect {
            guard isConnectTarget(target) else { return .badTarget }
            let s = headers.appendStorage(target)
            authorityFromTarget = (s, target.count)
        } else if target[0] == 0x2F {
            let s = headers.appendStorage(target)
            headers.addEntry(nameStart: 0, nameLength: 0, valueStart: s, valueLength: target.count, known: .path)
        } else if target.count == 1 && target[0] == 0x2A {
            if !equalsLiteral(method, "OPTIONS") { return .badTarget }
            let s = headers.appendStorage(target)
            headers.addEntry(nameStart: 0, nameLength: 0, valueStart: s, valueLength: 1, known: .path)
        } else {
            // absolute-form: scheme "://" authority [path]; the authority replaces Host.
            guard let (scheme, authority, path) = splitAbsolute(target) else { return .badTarget }
            head.absoluteForm = true
            let ss = headers.appendStorage(UnsafeRawBufferPointer(rebasing: target[scheme]))
            headers.lowercaseStorage(start: ss, length: scheme.count)
            headers.addEntry(nameStart: 0, nameLength: 0, valueStart: ss, valueLength: scheme.count, known: .scheme)
            let a = headers.appendStorage(UnsafeRawBufferPointer(rebasing: target[authority]))
            authorityFromTarget = (a, authority.count)
            if path.isEmpty {
                let s = headers.appendStorage(UnsafeRawBufferPointer(start: slashByte, count: 1))
                headers.addEntry(nameStart: 0, nameLength: 0, valueStart: s, valueLength: 1, known: .path)
            } else {
                let s = headers.appendStorage(UnsafeRawBufferPointer(rebasing: target[path]))
                headers.addEntry(nameStart: 0, nameLength: 0, valueStart: s, valueLength: path.count, known: .path)
            }
        }
        if let e = parseHeaderLines(b, from: lineEnd, headers: headers, maxHeaders: maxHeaders, hostAsAuthority: authorityFromTarget == nil) {
            return e
        }
        // Host: exactly one in HTTP/1.1 (RFC 9112 3.2); an absolute target's authority wins.
        let hosts = headers.count(of: .authority) + headers.count(of: .host)
        if hosts > 1 { return .duplicateHost }
        if hosts == 0 && minor == 1 && !head.isConnect { return .missingHost }
        if let (s, len) = authorityFromTarget {
            headers.remove(.host)
            headers.addEntry(nameStart: 0, nameLength: 0, valueStart: s, valueLength: len, known: .authority)
        }
        if let a = headers.first(.authority), !headers.withValue(a, isValidAuthority) { return .badHost }
        if let e = requestFraming(headers, &head) { return e }
        return nil
    }

    /// `HTTP/1.1 200 OK\r\n` then the header lines.
    static func parseResponseHead(_ b: UnsafeRawBufferPointer, headers: HeaderMap, head: inout Http1Head, maxHeaders: Int,
                                  requestWasHead: Bool, requestWasConnect: Bool) -> Http1Error? {
        let n = b.count
        guard let (minor, vEnd) = parseVersion(b, at: 0) else { return .badStatusLine }
        head.minorVersion = minor
        guard vEnd + 4 < n, b[vEnd] == 0x20 else { return .badStatusLine }
        var status = 0
        for j in (vEnd + 1)...(vEnd + 3) {
            let d = b[j] &- 0x30
            if d > 9 { return .badStatusLine }
            status = status * 10 + Int(d)
        }
        if status < 100 || status > 599 { return .badStatusLine }
        head.status = status
        var i = vEnd + 4
        // The reason phrase (may be empty, and the space before it may be missing).
        if b[i] == 0x20 {
            i += 1
            while i < n && (HttpChars.isFieldValue(b[i])) { i += 1 }
        }
        guard i + 1 < n, b[i] == 0x0D, b[i + 1] == 0x0A else { return b[i] == 0 ? .nul : .badStatusLine }
        let ss = headers.appendStorage(UnsafeRawBufferPointer(rebasing: b[(vEnd + 1)..<(vEnd + 4)]))
        headers.addEntry(nameStart: 0, nameLength: 0, valueStart: ss, valueLength: 3, known: .status)
        if let e = parseHeaderLines(b, from: i + 2, headers: headers, maxHeaders: maxHeaders, hostAsAuthority: false) { return e }
        return responseFraming(headers, &head, requestWasHead: requestWasHead, requestWasConnect: requestWasConnect)
    }

    /// Validates the header lines in `b[from...]` (each ends in CRLF; the last line is empty)
    /// and adds them to `headers` over one copy of the block.
    static func parseHeaderLines(_ b: UnsafeRawBufferPointer, from: Int, headers: HeaderMap, maxHeaders: Int,
                                 hostAsAuthority: Bool) -> Http1Error? {
        let n = b.count
        let block = UnsafeRawBufferPointer(rebasing: b[from..<n])
        let base = headers.appendStorage(block) - from  // storage offset of b[0]
        let firstEntry = headers.entries.count
        var i = from
        var lines = 0
        while i < n {
            if b[i] == 0x0D {  // the empty line ends the head
                if i + 2 != n { return .badHeaderName }
                headers.lowercaseNames(fromEntry: firstEntry)
                return nil
            }
            if b[i] == 0x20 || b[i] == 0x09 { return lines == 0 ? .whitespaceBeforeFirstHeader : .obsFold }
            lines += 1
            if lines > maxHeaders { return .tooManyHeaders }
            let nameStart = i
            while i < n && HttpChars.isToken(b[i]) { i += 1 }
            if i >= n { return .badHeaderName }
            if b[i] != 0x3A {
                if b[i] == 0x20 || b[i] == 0x09 { return .whitespaceBeforeColon }
                return b[i] == 0 ? .nul : .badHeaderName
            }
            if i == nameStart { return .badHeaderName }
            let nameEnd = i
            i += 1
            while i < n && (b[i] == 0x20 || b[i] == 0x09) { i += 1 }
            let valueStart = i
            i = HttpChars.skipPlainValueBytes(b, from: i)
            while i < n && HttpChars.isFieldValue(b[i]) { i += 1 }
            var valueEnd = i
            guard i + 1 < n else { return .badHeaderValue }
            if b[i] != 0x0D { return b[i] == 0 ? .nul : (b[i] == 0x0A ? .bareLF : .badHeaderValue) }
            if b[i + 1] != 0x0A { return .bareCR }
            while valueEnd > valueStart && (b[valueEnd - 1] == 0x20 || b[valueEnd - 1] == 0x09) { valueEnd -= 1 }
            // Classified from the bytes as they came (any case); lowercased in one pass at the end.
            var known = KnownHeader.classify(UnsafeRawBufferPointer(rebasing: b[nameStart..<nameEnd]), ignoringCase: true)
            if hostAsAuthority && known == .host { known = .authority }
            headers.addEntry(nameStart: base + nameStart, nameLength: nameEnd - nameStart,
                             valueStart: base + valueStart, valueLength: valueEnd - valueStart, known: known)
            i += 2
        }
        return .badHeaderName
    }

    // MARK: - Framing

    /// Decides a request's body framing (RFC 9112 6.3) and connection semantics.
    static func requestFraming(_ h: HeaderMap, _ head: inout Http1Head) -> Http1Error? {
        connectionSemantics(h, &head)
        let te = h.has(.transferEncoding)
        let cl = h.has(.contentLength)
        if te {
            if head.minorVersion == 0 { return .transferEncodingHttp10 }
            if cl { return .contentLengthAndTransferEncoding }
            if !singleChunked(h) { return .badTransferEncoding }
            head.framing = .chunked
        } else if cl {
            switch contentLength(h) {
            case .failure(let e): return e
            case .success(let len): head.framing = len == 0 ? .none : .length(len)
            }
        }
        if let e = h.first(.expect), h.valueEqualsIgnoringCase(e, "100-continue"), head.minorVersion == 1 {
            head.expectContinue = true
        }
        // CONNECT has no content (RFC 9110 9.3.6): framing bytes would become tunnel bytes.
        if head.isConnect {
            if head.framing != .none || te { return .connectWithBody }
            head.framing = .none
        }
        return nil
    }

    /// Decides a response's framing (RFC 9112 6.3, in its order).
    static func responseFraming(_ h: HeaderMap, _ head: inout Http1Head, requestWasHead: Bool, requestWasConnect: Bool) -> Http1Error? {
        connectionSemantics(h, &head)
        let te = h.has(.transferEncoding)
        let cl = h.has(.contentLength)
        var length: UInt64?
        if cl {
            switch contentLength(h) {
            case .failure(let e): return e
            case .success(let len): length = len
            }
        }
        if te {
            if cl { return .contentLengthAndTransferEncoding }
            if head.minorVersion == 0 { return .transferEncodingHttp10 }
            if !singleChunked(h) { return .badTransferEncoding }
        }
        let s = head.status
        if s == 101 { head.upgrade = true; head.framing = .tunnel; return nil }
        if s < 200 || s == 204 || s == 304 || requestWasHead { head.framing = .none; return nil }
        if requestWasConnect && s < 300 { head.framing = .tunnel; return nil }
        if te { head.framing = .chunked } else if let length { head.framing = length == 0 ? .none : .length(length) } else {
            head.framing = .close
            head.keepAlive = false
        }
        return nil
    }

    /// Exactly one Transfer-Encoding line, and it is `chunked`.
    static func singleChunked(_ h: HeaderMap) -> Bool {
        guard let f = h.first(.transferEncoding), h.count(of: .transferEncoding) == 1 else { return false }
        return h.valueEqualsIgnoringCase(f, "chunked")
    }

    /// The single value of every Content-Length line: digits only, no list, all equal.
    static func contentLength(_ h: HeaderMap) -> Swift.Result<UInt64, Http1Error> {
        var value: UInt64?
        for i in h.all(.contentLength) {
            let v: UInt64? = h.withValue(i) { b in
                if b.isEmpty || b.count > 18 { return nil }
                var x: UInt64 = 0
                for c in b {
                    let d = c &- 0x30
                    if d > 9 { return nil }
                    x = x * 10 + UInt64(d)
                }
                return x
            }
            guard let v else { return .failure(.badContentLength) }
            if let value, value != v { return .failure(.conflictingContentLength) }
            value = v
        }
        // Identical duplicates are one (RFC 9110 8.6): forward only the first, written plainly
        // (`0003` goes on as `3`, so no peer reads it another way).
        let first = h.first(.contentLength)
        for i in h.all(.contentLength) where i != first { h.remove(at: i) }
        if let v = value, let first, h.withValue(first, { $0.count > 1 && $0[0] == 0x30 }) {
            h.set(.contentLength, String(v))
        }
        return .success(value ?? 0)
    }

    /// Keep-alive by version and `Connection` tokens; `Upgrade` with `Connection: upgrade`.
    static func connectionSemantics(_ h: HeaderMap, _ head: inout Http1Head) {
        var close = false, keepAlive = false, upgrade = false
        for i in h.all(.connection) {
            h.withValue(i) { v in
                var start = 0
                for j in 0...v.count where j == v.count || v[j] == 0x2C {
                    var s = start, e = j
                    while s < e && (v[s] == 0x20 || v[s] == 0x09) { s += 1 }
                    while e > s && (v[e - 1] == 0x20 || v[e - 1] == 0x09) { e -= 1 }
                    start = j + 1
                    if s == e { continue }
                    let t = UnsafeRawBufferPointer(rebasing: v[s..<e])
                    if equalsLiteralIgnoringCase(t, "close") { close = true } else if equalsLiteralIgnoringCase(t, "keep-alive") {
                        keepAlive = true
                    } else if equalsLiteralIgnoringCase(t, "upgrade") { upgrade = true } else if head.connectionTokens.count < 32 {
                        head.connectionTokens.append(String(decoding: t, as: UTF8.self).lowercased())
                    }
                }
            }
        }
        head.keepAlive = head.minorVersion == 1 ? !close : (keepAlive && !close)
        head.upgrade = upgrade && h.has(.upgrade) && head.minorVersion == 1  // HTTP/1.0 ignores Upgrade (RFC 9110 7.8)
    }

    // MARK: - Pieces

    /// `HTTP/1.1` or `HTTP/1.0` at `i`: (minor, index after it).
    static func parseVersion(_ b: UnsafeRawBufferPointer, at i: Int) -> (Int, Int)? {
        guard i + 8 <= b.count else { return nil }
        let v = UnsafeRawBufferPointer(rebasing: b[i..<(i + 8)])
        if equalsLiteral(v, "HTTP/1.1") { return (1, i + 8) }
        if equalsLiteral(v, "HTTP/1.0") { return (0, i + 8) }
        return nil
    }

    /// `HTTP/d.d` with other digits: a version we do not speak (505), not garbage (400).
    static func looksLikeVersion(_ b: UnsafeRawBufferPointer, at i: Int) -> Bool {
        guard i + 8 <= b.count, equalsLiteral(UnsafeRawBufferPointer(rebasing: b[i..<(i + 5)]), "HTTP/") else { return false }
        return b[i + 5] &- 0x30 <= 9 && b[i + 6] == 0x2E && b[i + 7] &- 0x30 <= 9
    }

    /// `scheme://authority/path?query` → ranges (path may be empty). Only http and https.
    static func splitAbsolute(_ t: UnsafeRawBufferPointer) -> (Range<Int>, Range<Int>, Range<Int>)? {
        var i = 0
        while i < t.count && t[i] != 0x3A { i += 1 }
        let scheme = 0..<i
        let s = UnsafeRawBufferPointer(rebasing: t[scheme])
        guard equalsLiteralIgnoringCase(s, "http") || equalsLiteralIgnoringCase(s, "https") else { return nil }
        guard i + 3 <= t.count, t[i + 1] == 0x2F, t[i + 2] == 0x2F else { return nil }
        let aStart = i + 3
        var j = aStart
        while j < t.count && t[j] != 0x2F && t[j] != 0x3F { j += 1 }
        if j == aStart { return nil }
        // No userinfo (RFC 9110 4.2.4: a sender must not send it).
        if t[aStart..<j].contains(0x40) { return nil }
        if j < t.count && t[j] == 0x3F { return nil }  // a query with no path: refuse rather than guess
        return (scheme, aStart..<j, j..<t.count)
    }
}

private let slashLiteral: StaticString = "/"
private var slashByte: UnsafeRawPointer { UnsafeRawPointer(slashLiteral.utf8Start) }

/// A CONNECT target (RFC 9110 9.3.6, and HTTP/2's `:authority` of a CONNECT): authority-form
/// only, `host:port` with the port 1-65535.
public func isConnectTarget(_ target: UnsafeRawBufferPointer) -> Bool {
    guard let colon = target.lastIndex(of: 0x3A), colon > 0, !target.contains(0x2F) else { return false }
    let port = target[(colon + 1)...]
    guard !port.isEmpty, port.count <= 5, port.allSatisfy({ $0 &- 0x30 < 10 }),
          let p = Int(String(decoding: port, as: UTF8.self)), p >= 1, p <= 65535 else { return false }
    return true
}

/// RFC 3986 authority as a Host value: reg-name or IP literal characters and a port; no space,
/// no userinfo, not empty.
public func isValidAuthority(_ v: UnsafeRawBufferPointer) -> Bool {
    if v.isEmpty { return false }
    for c in v {
        let ok = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
            || c == 0x2D || c == 0x2E || c == 0x5F || c == 0x7E  // - . _ ~
            || c == 0x21 || c == 0x24 || (c >= 0x26 && c <= 0x2C) || c == 0x3B || c == 0x3D  // sub-delims
            || c == 0x25 || c == 0x3A || c == 0x5B || c == 0x5D  // % : [ ]
        if !ok { return false }
    }
    return true
}

/// Whether `b` is exactly `literal`.
@inline(__always)
public func equalsLiteral(_ b: UnsafeRawBufferPointer, _ literal: StaticString) -> Bool {
    b.count == literal.utf8CodeUnitCount && (b.count == 0 || memcmp(b.baseAddress!, literal.utf8Start, b.count) == 0)
}

/// Whether `b` is `literal` ignoring ASCII case (`literal` lowercase).
@inline(__always)
public func equalsLiteralIgnoringCase(_ b: UnsafeRawBufferPointer, _ literal: StaticString) -> Bool {
    guard b.count == literal.utf8CodeUnitCount else { return false }
    let l = literal.utf8Start
    for j in 0..<b.count where asciiLower(b[j]) != l[j] { return false }
    return true
}
