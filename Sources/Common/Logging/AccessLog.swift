import CLibevent
import Glibc

/// What one finished connection (or request) tells the access log. Filled by the filter, off
/// the per-byte path, only when an access log is configured.
public struct AccessLogEntry {
    public var startWallMs: UInt64 = 0
    public var durationMs: UInt64 = 0
    public var downstreamRemote: SocketAddress?
    public var downstreamLocal: SocketAddress?
    public var upstreamHost: SocketAddress?
    public var upstreamLocal: SocketAddress?
    public var cluster: String = ""
    public var bytesReceived: UInt64 = 0
    public var bytesSent: UInt64 = 0
    public var responseCode: Int = 0
    /// Envoy's response flags ("UF", "UO", "UH", "URX", "NR", "DT", "SI", "DPE"), comma-free.
    public var responseFlags: String = ""
    public var connectionId: UInt64 = 0
    /// The TLS server name the client asked for (SNI), from the inspector or the handshake.
    public var requestedServerName: String?
    /// The TLS version agreed with the client when the proxy terminated TLS ("TLSv1.3").
    public var downstreamTlsVersion: String?
    /// HTTP: "HTTP/1.1", "HTTP/1.0", "HTTP/2" (`%PROTOCOL%`).
    public var protocolName: String?
    /// HTTP: the request and response headers, for `%REQ(x)%` and `%RESP(x)%` (pseudo-headers
    /// too: `%REQ(:METHOD)%`, `%REQ(:PATH)%`, `%REQ(:AUTHORITY)%`).
    public var requestHeaders: HeaderMap?
    public var responseHeaders: HeaderMap?
    public init() {}
}

/// One piece of an Envoy-style format string: text, or the `COMMAND` / `COMMAND(arg)` between
/// two percent signs.
public enum FormatPiece: Sendable, Equatable {
    case literal(String)
    case command(String)
}

/// Splits an Envoy-style format string into literal text and `%COMMAND%` pieces (`%%` is a
/// percent sign). Shared by access logs and http-proxy's header values; each gives the
/// commands their meaning.
public func formatPieces(_ text: String) throws(AccessLogFormat.ParseError) -> [FormatPiece] {
    var pieces: [FormatPiece] = []
    var lit = ""
    var i = text.startIndex
    while i < text.endIndex {
        let c = text[i]
        if c != "%" { lit.append(c); i = text.index(after: i); continue }
        let after = text.index(after: i)
        if after < text.endIndex && text[after] == "%" { lit.append("%"); i = text.index(after: after); continue }
        guard let end = text[after...].firstIndex(of: "%") else {
            throw AccessLogFormat.ParseError(description: "unterminated %COMMAND% in format")
        }
        if !lit.isEmpty { pieces.append(.literal(lit)); lit = "" }
        pieces.append(.command(String(text[after..<end])))
        i = text.index(after: end)
    }
    if !lit.isEmpty { pieces.append(.literal(lit)) }
    return pieces
}

/// A parsed Envoy-style format string: literal text and `%COMMAND%` / `%COMMAND(arg)%` tokens.
public struct AccessLogFormat: Sendable {
    enum Token: Sendable {
        case literal(String)
        case startTime
        case duration
        case downstreamRemote(withPort: Bool)
        case downstreamLocal(withPort: Bool)
        case upstreamHost
        case upstreamLocal
        case upstreamCluster
        case bytesReceived
        case bytesSent
        case responseCode
        case responseFlags
        case connectionId
        case hostname
        case requestedServerName
        case downstreamTlsVersion
        case protocolName
        /// `%REQ(name)%` / `%RESP(name)%`, lowercase name, optional max length (`%REQ(x):10%`).
        case requestHeader(String, Int?)
        case responseHeader(String, Int?)
    }
    let tokens: [Token]

    /// Envoy's default TCP format, minus the HTTP fields.
    public static let defaultTcp = "[%START_TIME%] %DOWNSTREAM_REMOTE_ADDRESS% -> %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%\n"

    public struct ParseError: Error, CustomStringConvertible { public let description: String }

    public init(_ text: String) throws(ParseError) {
        var tokens: [Token] = []
        for piece in try formatPieces(text) {
            switch piece {
            case .literal(let s): tokens.append(.literal(s))
            case .command(let cmd): tokens.append(try AccessLogFormat.token(cmd))
            }
        }
        self.tokens = tokens
    }

    static func token(_ cmd: String) throws(ParseError) -> Token {
        switch cmd {
        case "START_TIME": return .startTime
        case "DURATION": return .duration
        case "DOWNSTREAM_REMOTE_ADDRESS": return .downstreamRemote(withPort: true)
        case "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": return .downstreamRemote(withPort: false)
        case "DOWNSTREAM_LOCAL_ADDRESS": return .downstreamLocal(withPort: true)
        case "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": return .downstreamLocal(withPort: false)
        case "UPSTREAM_HOST": return .upstreamHost
        case "UPSTREAM_LOCAL_ADDRESS": return .upstreamLocal
        case "UPSTREAM_CLUSTER": return .upstreamCluster
        case "BYTES_RECEIVED": return .bytesReceived
        case "BYTES_SENT": return .bytesSent
        case "RESPONSE_CODE": return .responseCode
        case "RESPONSE_FLAGS": return .responseFlags
        case "CONNECTION_ID": return .connectionId
        case "HOSTNAME": return .hostname
        case "REQUESTED_SERVER_NAME": return .requestedServerName
        case "DOWNSTREAM_TLS_VERSION": return .downstreamTlsVersion
        case "PROTOCOL": return .protocolName
        default:
            for (prefix, isRequest) in [("REQ(", true), ("RESP(", false)] where cmd.hasPrefix(prefix) {
                guard let close = cmd.lastIndex(of: ")") else { break }
                let name = cmd[cmd.index(cmd.startIndex, offsetBy: prefix.count)..<close].lowercased()
                var maxLen: Int?
                let rest = cmd[cmd.index(after: close)...]
                if !rest.isEmpty {
                    guard rest.first == ":", let n = Int(rest.dropFirst()), n > 0 else { break }
                    maxLen = n
                }
                // `%REQ(a?b)%`: a, else b (Envoy's alternative header).
                if name.isEmpty || name.contains(" ") { break }
                return isRequest ? .requestHeader(name, maxLen) : .responseHeader(name, maxLen)
            }
            throw ParseError(description: "unknown format command %\(cmd)%")
        }
    }

    /// Appends the formatted entry to `out`.
    func format(_ e: AccessLogEntry, into out: inout String) {
        for t in tokens {
            switch t {
            case .literal(let s): out += s
            case .startTime: out += iso8601(e.startWallMs)
            case .duration: out += String(e.durationMs)
            case .downstreamRemote(let p): out += addr(e.downstreamRemote, withPort: p)
            case .downstreamLocal(let p): out += addr(e.downstreamLocal, withPort: p)
            case .upstreamHost: out += addr(e.upstreamHost, withPort: true)
            case .upstreamLocal: out += addr(e.upstreamLocal, withPort: true)
            case .upstreamCluster: out += e.cluster.isEmpty ? "-" : e.cluster
            case .bytesReceived: out += String(e.bytesReceived)
            case .bytesSent: out += String(e.bytesSent)
            case .responseCode: out += String(e.responseCode)
            case .responseFlags: out += e.responseFlags.isEmpty ? "-" : e.responseFlags
            case .connectionId: out += String(e.connectionId)
            case .hostname: out += AccessLogFormat.hostname
            case .requestedServerName: out += e.requestedServerName ?? "-"
            case .downstreamTlsVersion: out += e.downstreamTlsVersion ?? "-"
            case .protocolName: out += e.protocolName ?? "-"
            case .requestHeader(let n, let max): out += AccessLogFormat.header(e.requestHeaders, n, max)
            case .responseHeader(let n, let max): out += AccessLogFormat.header(e.responseHeaders, n, max)
            }
        }
    }

    /// Whether this token's value is a number (kept unquoted in JSON logs).
    var isNumeric: Bool {
        guard tokens.count == 1 else { return false }
        switch tokens[0] {
        case .duration, .bytesReceived, .bytesSent, .responseCode, .connectionId: return true
        default: return false
        }
    }

    static let hostname: String = {
        var buf = [CChar](repeating: 0, count: 256)
        gethostname(&buf, 255)
        return String(cString: buf)
    }()

    /// A header's first value, `a?b` meaning a, else b; "-" when absent.
    static func header(_ h: HeaderMap?, _ spec: String, _ max: Int?) -> String {
        guard let h else { return "-" }
        for name in spec.split(separator: "?") {
            if let v = h.value(String(name)) {
                if let max, v.count > max { return String(v.prefix(max)) }
                return v
            }
        }
        return "-"
    }

    private func addr(_ a: SocketAddress?, withPort: Bool) -> String {
        guard let a else { return "-" }
        return withPort ? a.description : a.host
    }
}

/// `2026-11-26T21:32:47.123Z` from milliseconds since the epoch.
public func iso8601(_ ms: UInt64) -> String {
    var t = time_t(ms / 1000)
    var tm = tm()
    gmtime_r(&t, &tm)
    func p(_ v: Int32, _ w: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s }
    return "\(p(tm.tm_year + 1900, 4))-\(p(tm.tm_mon + 1, 2))-\(p(tm.tm_mday, 2))T\(p(tm.tm_hour, 2)):\(p(tm.tm_min, 2)):\(p(tm.tm_sec, 2)).\(p(Int32(ms % 1000), 3))Z"
}

/// Envoy's access-log file stats (`access_log_file.*`), one set for every access log of the
/// process; each worker counts in its own slab.
public struct AccessLogStats: Sendable {
    /// Flushes that wrote bytes.
    public let writeCompleted: Counter
    /// Writes refused by the file with an error other than "would block" (a full disk, a pipe
    /// with no reader); the lines stay buffered.
    public let writeFailed: Counter
    /// Bytes waiting in the workers' buffers now.
    public let writeTotalBuffered: Gauge
    /// Lines (entries) and bytes thrown away because the buffer was full (the file did not take
    /// them fast enough), the file could not be opened, or the proxy stopped with them unwritten.
    public let droppedLines: Counter
    public let droppedBytes: Counter

    public init(store: StatsStore) {
        writeCompleted = store.counter("access_log_file.write_completed")
        writeFailed = store.counter("access_log_file.write_failed")
        writeTotalBuffered = store.gauge("access_log_file.write_total_buffered")
        droppedLines = store.counter("access_log_file.dropped_lines")
        droppedBytes = store.counter("access_log_file.dropped_bytes")
    }
}

/// One worker's access log sink for one file: lines are formatted into a buffer and written
/// in batches (at 4 KiB, or by the flush timer every second), never one write per connection.
///
/// Never blocks its worker: files are opened `O_NONBLOCK`, so a pipe or FIFO whose reader
/// stalls takes what it can; the rest stays buffered (whole lines, plus the unwritten tail of
/// the line a short write cut) and is written as soon as the file takes bytes again (a write
/// event on the worker's loop) or on the next flush. Past `bufferLimit` buffered
/// bytes, new lines are dropped whole and counted (`access_log_file.dropped_lines`,
/// `dropped_bytes`): a reader never sees half a line. `/dev/stdout` and `/dev/stderr` are the
/// process's own descriptors and are left blocking (they are shared with the process's logger).
public final class AccessLogWriter {
    /// Bytes one worker buffers for one log before it drops new lines.
    public static let defaultBufferLimit = 1 << 20
    let path: String
    let format: AccessLogFormat?
    let json: [(String, AccessLogFormat)]?
    private let slab: StatsSlab
    private let stats: AccessLogStats
    private let bufferLimit: Int
    private var fd: Int32 = -1
    /// Buffered bytes; `buf[start...]` is not written yet.
    private var buf: [UInt8] = []
    private var start = 0
    /// Where the oldest line not wholly written begins (`start` when none was cut short).
    private var headStart = 0
    /// End offsets in `buf` of the buffered lines; `ends[endsHead...]` are not wholly written.
    private var ends: [Int] = []
    private var endsHead = 0
    /// The file refused bytes ("would block", or an error): new lines wait for `writable` or the
    /// flush timer instead of trying a write each.
    private var stalled = false
    /// The worker's loop, to wait for a stalled file to take bytes again (none in unit tests:
    /// then only `flush` retries).
    private let dispatcher: Dispatcher?
    /// One-shot EV_WRITE on `fd` while stalled.
    private var writable: OpaquePointer?
    /// One formatted line (reused).
    private var line = ""

    public init(config: AccessLogConfig, slab: StatsSlab, stats: AccessLogStats, dispatcher: Dispatcher?,
                bufferLimit: Int = AccessLogWriter.defaultBufferLimit) {
        path = config.path
        self.dispatcher = dispatcher
        self.slab = slab
        self.stats = stats
        self.bufferLimit = bufferLimit
        if let j = config.jsonFormat {
            json = j.compactMap { k, v in (try? AccessLogFormat(v)).map { (k, $0) } }
            format = nil
        } else {
            json = nil
            format = try? AccessLogFormat(config.format ?? AccessLogFormat.defaultTcp)
        }
        reopen()
    }

    deinit {
        flush()
        dropBuffered(lines: ends.count - endsHead)
        if let e = writable { event_free(e) }
        if fd > 2 { close(fd) }
    }

    /// Bytes buffered and not written yet.
    public var buffered: Int { buf.count - start }

    /// A reload replaced `old`, which logged to the same file: its unwritten lines (and the
    /// tail of a line a short write cut) continue here, in order, so a stalled reader still gets
    /// whole lines across reloads. Call before this writer logs anything.
    public func takeOver(_ old: AccessLogWriter) {
        guard old.path == path, buf.isEmpty, old.buffered > 0 else { return }
        buf = Array(old.buf[old.headStart...])
        start = old.start - old.headStart
        headStart = 0
        ends = old.ends[old.endsHead...].map { $0 - old.headStart }
        endsHead = 0
        // The gauge moves with the bytes: the old writer forgets them without counting a drop.
        old.buf.removeAll(); old.ends.removeAll()
        old.start = 0; old.headStart = 0; old.endsHead = 0
        flush()
    }

    /// Opens (again) the file: SIGUSR1 calls this after log rotation. A line the old file got
    /// only part of is not finished in the new one (it is counted as dropped).
    public func reopen() {
        flush()
        if start > headStart, endsHead < ends.count {
            // The old file holds the start of this line; its tail alone would be half a line.
            let rest = ends[endsHead] - start
            slab.inc(stats.droppedLines)
            slab.add(stats.droppedBytes, rest)
            slab.sub(stats.writeTotalBuffered, rest)
            start = ends[endsHead]
            endsHead += 1
            headStart = start
            compact()
        }
        if let e = writable { event_free(e); writable = nil }
        if fd > 2 { close(fd) }
        switch path {
        case "/dev/stdout": fd = 1
        case "/dev/stderr": fd = 2
        default: fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0o644)
        }
        stalled = false
    }

    public func log(_ e: AccessLogEntry) {
        line.removeAll(keepingCapacity: true)
        if let json {
            var fields: [(String, JSON)] = []
            for (k, f) in json {
                var s = ""
                f.format(e, into: &s)
                if f.isNumeric, let n = Int64(s) { fields.append((k, .int(n))) } else { fields.append((k, .string(s))) }
            }
            line = JSON.object(fields).serialized() + "\n"
        } else if let format {
            format.format(e, into: &line)
        }
        let n = line.utf8.count
        if n == 0 { return }
        if buffered + n > bufferLimit {
            slab.inc(stats.droppedLines)
            slab.add(stats.droppedBytes, n)
            return
        }
        line.withUTF8 { buf.append(contentsOf: $0) }
        ends.append(buf.count)
        slab.add(stats.writeTotalBuffered, n)
        if buffered >= 4096 && !stalled { write() }
    }

    /// Writes what is buffered, as far as the file takes it without blocking (the flush timer,
    /// a reload, shutdown).
    public func flush() {
        stalled = false
        write()
    }

    private func write() {
        guard start < buf.count else { return }
        guard fd >= 0 else {
            // Never opened (a FIFO with no reader, a bad path): nothing will take these.
            dropBuffered(lines: ends.count - endsHead)
            return
        }
        let before = start
        while start < buf.count {
            let n = buf.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + start, $0.count - start) }
            if n > 0 { start += n; continue }
            if n < 0 && errno == EINTR { continue }
            // Either way new lines stop trying; the flush timer (or the write event) retries.
            stalled = true
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { waitWritable() } else { slab.inc(stats.writeFailed) }
            break
        }
        if start > before {
            slab.inc(stats.writeCompleted)
            slab.sub(stats.writeTotalBuffered, start - before)
        }
        while endsHead < ends.count && ends[endsHead] <= start {
            headStart = ends[endsHead]
            endsHead += 1
        }
        compact()
    }

    /// Arms a one-shot write event: the rest goes out as soon as the reader makes room.
    private func waitWritable() {
        guard let dispatcher else { return }
        if writable == nil {
            writable = event_new(dispatcher.base, fd, Int16(EV_WRITE), { _, _, ctx in
                Unmanaged<AccessLogWriter>.fromOpaque(ctx!).takeUnretainedValue().flush()
            }, Unmanaged.passUnretained(self).toOpaque())
        }
        if let e = writable, event_pending(e, Int16(EV_WRITE), nil) == 0 { event_add(e, nil) }
    }

    /// Forgets written bytes: at once when all are written, else once they are most of the buffer.
    private func compact() {
        if start == buf.count {
            buf.removeAll(keepingCapacity: buf.capacity <= 65536)
            ends.removeAll(keepingCapacity: true)
            start = 0; headStart = 0; endsHead = 0
        } else if headStart >= 65536 && headStart * 2 >= buf.count {
            let k = headStart
            buf.removeFirst(k)
            ends.removeFirst(endsHead)
            for i in ends.indices { ends[i] -= k }
            start -= k; headStart = 0; endsHead = 0
        }
    }

    /// Counts the buffered lines (`lines` of them) as dropped and empties the buffer.
    private func dropBuffered(lines: Int) {
        let n = buffered
        guard n > 0 else { return }
        slab.add(stats.droppedLines, lines)
        slab.add(stats.droppedBytes, n)
        slab.sub(stats.writeTotalBuffered, n)
        start = buf.count
        compact()
    }
}
