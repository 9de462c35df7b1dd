import Common
import Glibc

// The request side of RESP2, as redis-server 7.0 reads it (networking.c, processMultibulkBuffer
// and processInlineBuffer): multibulk requests (`*N\r\n$len\r\n...\r\n`, what every client
// library sends) are forwarded as their original bytes, so the parser only finds where each
// argument lies; inline requests (what `redis-cli` in a pipe and `telnet` send) are decoded
// with sdssplitargs' quoting rules and re-encoded as multibulk before forwarding.

/// Limits on one request. The defaults are redis-server's, so a client that works against
/// Redis works through the proxy.
public struct RespRequestLimits: Sendable, Equatable {
    /// Longest bulk argument (`proto-max-bulk-len`, 512 MB).
    public var maxBulkLength: Int
    /// Most arguments in a multibulk request. Redis 7 refuses a count above INT_MAX (older
    /// releases, before 4.0, capped it at 1024*1024); it does not preallocate from the count,
    /// and neither do we: argument slots grow as arguments arrive, so a huge count alone costs
    /// nothing and memory is bounded by `maxRequestBytes`.
    public var maxMultibulkLength: Int
    /// Longest inline request line and longest `*N`/`$N` count line (PROTO_INLINE_MAX_SIZE, 64 KiB).
    public var maxLineLength: Int
    /// Most bytes in one request (`client-query-buffer-limit`, 1 GiB). Redis closes a client
    /// whose query buffer passes it; we refuse the request as soon as its declared size passes
    /// it, before buffering. It also keeps argument offsets within 32 bits.
    public var maxRequestBytes: Int

    public init(maxBulkLength: Int = 512 * 1024 * 1024, maxMultibulkLength: Int = Int(Int32.max),
                maxLineLength: Int = 64 * 1024, maxRequestBytes: Int = 1 << 30) {
        self.maxBulkLength = maxBulkLength; self.maxMultibulkLength = maxMultibulkLength
        self.maxLineLength = maxLineLength; self.maxRequestBytes = min(maxRequestBytes, Int(UInt32.max))
    }
}

/// Why a request was refused. The client gets `-ERR <message>` and the connection closes (as
/// Redis does); each reason has its own counter (`statName`).
public enum RespRequestError: Equatable, Sendable, Error {
    /// `*` count not an integer (Redis's string2ll: no sign `+`, no leading zero, no spaces), or above INT_MAX.
    case invalidMultibulkLength
    /// A `*` count line longer than `maxLineLength` with no CR.
    case tooBigMultibulkCount
    /// A `$` count line longer than `maxLineLength` with no CR.
    case tooBigBulkCount
    /// An argument that does not start with `$`; carries the byte found.
    case expectedDollar(UInt8)
    /// A `$` count that is not an integer, negative, or above `maxBulkLength`.
    case invalidBulkLength
    /// Before AUTH (when the proxy requires it): more than 10 arguments, as Redis 7.
    case unauthenticatedMultibulkLength
    /// Before AUTH (when the proxy requires it): an argument above 16 KiB, as Redis 7.
    case unauthenticatedBulkLength
    /// An inline line longer than `maxLineLength`, or with a NUL byte in it (Redis never
    /// finds the end of such a line, since it searches with strchr, and refuses it with this
    /// message once 64 KiB have piled up; we refuse it at once).
    case tooBigInlineRequest
    /// An inline line with an unterminated quote, or a closing quote not followed by a space.
    case unbalancedQuotes
    /// Ours, stricter than Redis: a bulk argument not followed by CRLF, or a count line whose CR
    /// is not followed by LF. Redis skips those two bytes unread; a proxy that shares upstream
    /// connections between clients must never guess at framing.
    case missingCRLF
    /// Ours: the request's declared size passes `maxRequestBytes`.
    case requestTooLarge

    /// The counter's name (under `redis.<prefix>.protocol_error.`).
    public var statName: String {
        switch self {
        case .invalidMultibulkLength: "invalid_multibulk_length"
        case .tooBigMultibulkCount: "too_big_mbulk_count_string"
        case .tooBigBulkCount: "too_big_bulk_count_string"
        case .expectedDollar: "expected_dollar"
        case .invalidBulkLength: "invalid_bulk_length"
        case .unauthenticatedMultibulkLength: "unauthenticated_multibulk_length"
        case .unauthenticatedBulkLength: "unauthenticated_bulk_length"
        case .tooBigInlineRequest: "too_big_inline_request"
        case .unbalancedQuotes: "unbalanced_quotes"
        case .missingCRLF: "missing_crlf"
        case .requestTooLarge: "request_too_large"
        }
    }

    /// The whole error reply, `-ERR Protocol error: ...\r\n`, byte for byte as redis-server 7.0
    /// sends it (checked against it with raw sockets). Bytes, not a String: the `expected '$'`
    /// message quotes a raw byte, which may not be UTF-8 (Redis turns only CR and LF into spaces).
    public var reply: [UInt8] {
        let text: String
        switch self {
        case .invalidMultibulkLength: text = "invalid multibulk length"
        case .tooBigMultibulkCount: text = "too big mbulk count string"
        case .tooBigBulkCount: text = "too big bulk count string"
        case .expectedDollar(let b):
            let shown: UInt8 = b == 0x0D || b == 0x0A ? 0x20 : b
            return Array("-ERR Protocol error: expected '$', got '".utf8) + [shown] + Array("'\r\n".utf8)
        case .invalidBulkLength: text = "invalid bulk length"
        case .unauthenticatedMultibulkLength: text = "unauthenticated multibulk length"
        case .unauthenticatedBulkLength: text = "unauthenticated bulk length"
        case .tooBigInlineRequest: text = "too big inline request"
        case .unbalancedQuotes: text = "unbalanced quotes in request"
        case .missingCRLF: text = "expected CRLF after bulk argument"
        case .requestTooLarge: text = "request too large"
        }
        return Array("-ERR Protocol error: \(text)\r\n".utf8)
    }
}

/// One parsed request.
public struct RespRequest: Equatable, Sendable {
    /// The request's bytes in the input: forward these (multibulk), then drain
    /// `range.upperBound` bytes.
    public var range: Range<Int>
    /// An inline request: its arguments were decoded into the parser's scratch space and it
    /// must be re-encoded (`RespRequestParser.writeMultibulk`) before forwarding.
    public var isInline: Bool
    /// Number of arguments (at least 1).
    public var argCount: Int
}

/// Where each argument of the last request lies: offset and length pairs, 8 bytes per argument,
/// kept (with their capacity) from one request to the next, so steady state allocates nothing.
public struct RespArguments: Sendable {
    @usableFromInline var slots: [UInt64] = []

    public init() {}

    public var count: Int { slots.count }

    /// Argument `i`'s byte range (in the input for multibulk, in the scratch space for inline).
    @inlinable public subscript(i: Int) -> Range<Int> {
        let s = slots[i]
        let offset = Int(truncatingIfNeeded: s >> 32), length = Int(truncatingIfNeeded: s & 0xFFFF_FFFF)
        return offset..<(offset + length)
    }

    @inlinable mutating func append(offset: Int, length: Int) {
        slots.append(UInt64(truncatingIfNeeded: offset) << 32 | UInt64(truncatingIfNeeded: length))
    }

    @inlinable mutating func removeAll() { slots.removeAll(keepingCapacity: true) }
}

/// An incremental, resumable RESP2 request parser that works in place on the connection's
/// input. Contract: each call gets the bytes from the first unconsumed one (the same start
/// until a result other than `.incomplete`; the region may have moved in memory, positions are
/// offsets) and parses on from where the previous call stopped, so a 512 MB bulk arriving in
/// 16 KiB reads costs constant work per read. After `.request`, the arguments stay valid until
/// the next call; the caller drains `range.upperBound` bytes. After `.ignored(n)` (Redis's
/// silently skipped `*0`, `*-1` and blank inline lines) it drains `n`. After `.error` it sends
/// `error.reply` and closes; call `reset()` before any reuse. One per connection, one worker.
public struct RespRequestParser: Sendable {
    public var limits: RespRequestLimits
    /// Redis's limits for a connection that has not authenticated yet (when the proxy requires
    /// AUTH): at most 10 arguments of at most 16 KiB each.
    public var unauthenticated = false
    /// The last request's arguments.
    public private(set) var arguments = RespArguments()
    /// Decoded inline arguments (escapes make them differ from the input); reused.
    private var scratch: [UInt8] = []

    private enum Phase: Sendable { case start, multibulkCount, bulkCount, bulkData, inline }
    private var phase = Phase.start
    /// Offset of the next byte to parse (the start of the current line or bulk).
    private var pos = 0
    /// Where the search for the current line's end resumes.
    private var scan = 0
    /// Arguments still to read.
    private var remaining = 0
    /// Length of the bulk being read.
    private var bulkLength = 0
    /// The last request was inline: its arguments are in `scratch`.
    private var lastWasInline = false

    public init(limits: RespRequestLimits = RespRequestLimits()) { self.limits = limits }

    public enum Result: Equatable, Sendable {
        /// More bytes are needed.
        case incomplete
        case request(RespRequest)
        /// A request Redis skips without a reply (`*0`, `*-1`, any `*` count ≤ 0, a blank
        /// inline line): drain this many bytes.
        case ignored(consumed: Int)
        case error(RespRequestError)
    }

    /// Forgets a partial request (after an error, or to parse another stream).
    public mutating func reset() {
        phase = .start; pos = 0; scan = 0; remaining = 0; bulkLength = 0
        arguments.removeAll()
    }

    /// Parses on; see the type's contract.
    public mutating func parse(_ input: UnsafeRawBufferPointer) -> Result {
        guard let base = input.baseAddress else { return .incomplete }
        let n = input.count
        while true {
            switch phase {
            case .start:
                if n == 0 { return .incomplete }
                arguments.removeAll()
                pos = 0; scan = 0
                phase = base.load(as: UInt8.self) == UInt8(ascii: "*") ? .multibulkCount : .inline
            case .inline:
                return parseInline(base, n)
            case .multibulkCount:
                // The count line: `*` then an integer, up to the first CR (as Redis).
                let count: Int64, next: Int
                switch headerLine(base, n, tooBig: .tooBigMultibulkCount, dollar: false) {
                case .line(let v, let end):
                    guard let v, v <= Int64(Int32.max), v <= Int64(limits.maxMultibulkLength) else { return fail(.invalidMultibulkLength) }
                    count = v; next = end
                case .needMore: return .incomplete
                case .error(let e): return fail(e)
                }
                if unauthenticated && count > 10 { return fail(.unauthenticatedMultibulkLength) }
                pos = next; scan = pos
                if count <= 0 { phase = .start; return .ignored(consumed: pos) }
                remaining = Int(count)
                phase = .bulkCount
            case .bulkCount:
                let len: Int64, next: Int
                switch headerLine(base, n, tooBig: .tooBigBulkCount, dollar: true) {
                case .line(let v, let end):
                    guard let v, v >= 0, v <= Int64(limits.maxBulkLength) else { return fail(.invalidBulkLength) }
                    len = v; next = end
                case .needMore: return .incomplete
                case .error(let e): return fail(e)
                }
                if unauthenticated && len > 16384 { return fail(.unauthenticatedBulkLength) }
                pos = next
                bulkLength = Int(len)
                if pos + bulkLength + 2 > limits.maxRequestBytes { return fail(.requestTooLarge) }
                phase = .bulkData
            case .bulkData:
                // No scan: wait until the bulk and its CRLF are all here.
                if n - pos < bulkLength + 2 { return .incomplete }
                let end = pos + bulkLength
                guard base.load(fromByteOffset: end, as: UInt8.self) == 0x0D,
                      base.load(fromByteOffset: end + 1, as: UInt8.self) == 0x0A else { return fail(.missingCRLF) }
                arguments.append(offset: pos, length: bulkLength)
                pos = end + 2; scan = pos
                remaining -= 1
                if remaining == 0 {
                    phase = .start
                    lastWasInline = false
                    return .request(RespRequest(range: 0..<pos, isInline: false, argCount: arguments.count))
                }
                phase = .bulkCount
            }
        }
    }

    private enum LineEnd { case found(Int), needMore, error(RespRequestError) }
    private enum HeaderLine { case line(Int64?, next: Int), needMore, error(RespRequestError) }

    /// A `*count` or `$len` line starting at `pos`: its integer (nil when it is not one, as
    /// Redis's string2ll) and where the next line starts. Redis's order: a `$` line's type byte
    /// is checked once the whole line is in, then the LF.
    @inline(__always)
    private mutating func headerLine(_ base: UnsafeRawPointer, _ n: Int, tooBig: RespRequestError, dollar: Bool) -> HeaderLine {
        let r: Int
        switch findCR(base, n, tooBig: tooBig) {
        case .found(let at): r = at
        case .needMore: return .needMore
        case .error(let e): return .error(e)
        }
        if dollar {
            let first = base.load(fromByteOffset: pos, as: UInt8.self)
            guard first == UInt8(ascii: "$") else { return .error(.expectedDollar(first)) }
        }
        guard base.load(fromByteOffset: r + 1, as: UInt8.self) == 0x0A else { return .error(.missingCRLF) }
        return .line(string2ll(base + pos + 1, r - pos - 1), next: r + 2)
    }

    /// Finds the CR that ends the line starting at `pos`, resuming at `scan`; a line longer
    /// than `maxLineLength` is refused whether or not its CR is in (so the result does not
    /// depend on how the bytes were split into reads). A CR at the end needs one more byte.
    @inline(__always)
    private mutating func findCR(_ base: UnsafeRawPointer, _ n: Int, tooBig: RespRequestError) -> LineEnd {
        let from = max(scan, pos)
        guard from < n, let hit = memchr(base + from, 0x0D, n - from) else {
            scan = n
            return n - pos > limits.maxLineLength ? .error(tooBig) : .needMore
        }
        let r = UnsafeRawPointer(hit) - base
        scan = r
        if r - pos > limits.maxLineLength { return .error(tooBig) }
        return r + 1 < n ? .found(r) : .needMore
    }

    private mutating func fail(_ e: RespRequestError) -> Result {
        phase = .start
        return .error(e)
    }

    // MARK: - Inline

    /// An inline line ends at LF (a CR before it is dropped). Redis searches with strchr, which
    /// stops at a NUL; such a line never completes there, so it is refused here at once.
    private mutating func parseInline(_ base: UnsafeRawPointer, _ n: Int) -> Result {
        var i = scan
        let limit = min(n, limits.maxLineLength + 1)
        while i < limit {
            let c = base.load(fromByteOffset: i, as: UInt8.self)
            if c == 0x0A { break }
            if c == 0 { return fail(.tooBigInlineRequest) }
            i += 1
        }
        scan = i
        if i == limit {
            return i > limits.maxLineLength ? fail(.tooBigInlineRequest) : .incomplete
        }
        var lineEnd = i
        if lineEnd > 0 && base.load(fromByteOffset: lineEnd - 1, as: UInt8.self) == 0x0D { lineEnd -= 1 }
        phase = .start
        guard splitArgs(UnsafeRawBufferPointer(start: base, count: lineEnd)) else { return .error(.unbalancedQuotes) }
        if arguments.count == 0 { return .ignored(consumed: i + 1) }
        lastWasInline = true
        return .request(RespRequest(range: 0..<(i + 1), isInline: true, argCount: arguments.count))
    }

    /// Redis's sdssplitargs: arguments separated by blanks; `"..."` with `\xHH`, `\n`, `\r`,
    /// `\t`, `\b`, `\a` and `\<any>` escapes; `'...'` with only `\'`; a quote may open in the
    /// middle of an argument (`a"b c"` is `ab c`), and a closing quote must be followed by a
    /// blank or the end. Unquoted arguments end only at space, tab, CR or LF (not at VT or FF,
    /// which still count as blanks between arguments). Decoded bytes go to `scratch`.
    private mutating func splitArgs(_ line: UnsafeRawBufferPointer) -> Bool {
        scratch.removeAll(keepingCapacity: true)
        arguments.removeAll()
        let n = line.count
        @inline(__always) func at(_ i: Int) -> UInt8 { i < n ? line[i] : 0 }
        var p = 0
        while true {
            while p < n && isCSpace(line[p]) { p += 1 }
            if p >= n { return true }
            let start = scratch.count
            var inDouble = false, inSingle = false, done = false
            while !done {
                let c = at(p)
                if inDouble {
                    if c == UInt8(ascii: "\\") && at(p + 1) == UInt8(ascii: "x"), let hi = hexValue(at(p + 2)), let lo = hexValue(at(p + 3)) {
                        scratch.append(hi << 4 | lo)
                        p += 3
                    } else if c == UInt8(ascii: "\\") && p + 1 < n {
                        p += 1
                        switch line[p] {
                        case UInt8(ascii: "n"): scratch.append(0x0A)
                        case UInt8(ascii: "r"): scratch.append(0x0D)
                        case UInt8(ascii: "t"): scratch.append(0x09)
                        case UInt8(ascii: "b"): scratch.append(0x08)
                        case UInt8(ascii: "a"): scratch.append(0x07)
                        case let other: scratch.append(other)
                        }
                    } else if c == UInt8(ascii: "\"") {
                        if p + 1 < n && !isCSpace(line[p + 1]) { return false }
                        done = true
                    } else if p >= n {
                        return false
                    } else {
                        scratch.append(c)
                    }
                } else if inSingle {
                    if c == UInt8(ascii: "\\") && at(p + 1) == UInt8(ascii: "'") {
                        p += 1
                        scratch.append(UInt8(ascii: "'"))
                    } else if c == UInt8(ascii: "'") {
                        if p + 1 < n && !isCSpace(line[p + 1]) { return false }
                        done = true
                    } else if p >= n {
                        return false
                    } else {
                        scratch.append(c)
                    }
                } else {
                    switch c {
                    case 0x20, 0x0A, 0x0D, 0x09, 0: done = true
                    case UInt8(ascii: "\""): inDouble = true
                    case UInt8(ascii: "'"): inSingle = true
                    default: scratch.append(c)
                    }
                }
                if p < n { p += 1 }
            }
            arguments.append(offset: start, length: scratch.count - start)
        }
    }

    // MARK: - Access and re-encoding

    /// Calls `body` with argument `i` of the last request: a slice of `input` (multibulk) or of
    /// the decoded inline scratch space.
    public func withArgument<R>(_ i: Int, in input: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        let r = arguments[i]
        if lastWasInline {
            return scratch.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[r])) }
        }
        return body(UnsafeRawBufferPointer(rebasing: input[r]))
    }

    /// Appends the last request as a multibulk request (how an inline request is forwarded:
    /// Redis behind the proxy sees what a client library would have sent).
    public func writeMultibulk(argCount: Int, in input: UnsafeRawBufferPointer, into out: Buffer) {
        RespWriter.arrayHeader(argCount, into: out)
        for i in 0..<argCount { withArgument(i, in: input) { RespWriter.bulk($0, into: out) } }
    }
}

/// Redis's string2ll (util.c): an optional `-`, then digits with no leading zero ("0" alone is
/// fine, "-0" is not), no `+`, no spaces, within Int64. nil when it is not such a number.
@inline(__always)
public func string2ll(_ p: UnsafeRawPointer, _ len: Int) -> Int64? {
    if len <= 0 || len > 20 { return nil }
    var i = 0
    let negative = p.load(as: UInt8.self) == UInt8(ascii: "-")
    if negative { i = 1; if len == 1 { return nil } }
    let first = p.load(fromByteOffset: i, as: UInt8.self)
    if first == UInt8(ascii: "0") { return len == 1 ? 0 : nil }
    guard first &- UInt8(ascii: "1") < 9 else { return nil }
    var v = UInt64(first &- UInt8(ascii: "0"))
    i += 1
    while i < len {
        let d = p.load(fromByteOffset: i, as: UInt8.self) &- UInt8(ascii: "0")
        guard d < 10 else { return nil }
        let (m, o1) = v.multipliedReportingOverflow(by: 10)
        let (s, o2) = m.addingReportingOverflow(UInt64(d))
        if o1 || o2 { return nil }
        v = s
        i += 1
    }
    if negative {
        if v > UInt64(Int64.max) + 1 { return nil }
        return v == UInt64(Int64.max) + 1 ? Int64.min : -Int64(v)
    }
    return v > UInt64(Int64.max) ? nil : Int64(v)
}

/// C's isspace in the C locale: space, \t, \n, \v, \f, \r.
@inline(__always) func isCSpace(_ c: UInt8) -> Bool { c == 0x20 || (c >= 0x09 && c <= 0x0D) }

@inline(__always) func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
    default: nil
    }
}
