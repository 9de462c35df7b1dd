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
    public init() {}
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
    }
    let tokens: [Token]

    /// Envoy's default TCP format, minus the HTTP fields.
    public static let defaultTcp = "[%START_TIME%] %DOWNSTREAM_REMOTE_ADDRESS% -> %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%\n"

    public struct ParseError: Error, CustomStringConvertible { public let description: String }

    public init(_ text: String) throws(ParseError) {
        var tokens: [Token] = []
        var lit = ""
        var i = text.startIndex
        while i < text.endIndex {
            let c = text[i]
            if c != "%" { lit.append(c); i = text.index(after: i); continue }
            let after = text.index(after: i)
            if after < text.endIndex && text[after] == "%" { lit.append("%"); i = text.index(after: after); continue }
            guard let end = text[after...].firstIndex(of: "%") else {
                throw ParseError(description: "unterminated %COMMAND% in format")
            }
            let cmd = String(text[after..<end])
            if !lit.isEmpty { tokens.append(.literal(lit)); lit = "" }
            tokens.append(try AccessLogFormat.token(cmd))
            i = text.index(after: end)
        }
        if !lit.isEmpty { tokens.append(.literal(lit)) }
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
        default: throw ParseError(description: "unknown format command %\(cmd)%")
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

/// One worker's access log sink for one file: lines are formatted into a buffer and written
/// in batches (at 4 KiB, or by the flush timer every second), never one write per connection.
public final class AccessLogWriter {
    let path: String
    let format: AccessLogFormat?
    let json: [(String, AccessLogFormat)]?
    private var fd: Int32 = -1
    private var pending = ""

    public init(config: AccessLogConfig) {
        path = config.path
        if let j = config.jsonFormat {
            json = j.compactMap { k, v in (try? AccessLogFormat(v)).map { (k, $0) } }
            format = nil
        } else {
            json = nil
            format = try? AccessLogFormat(config.format ?? AccessLogFormat.defaultTcp)
        }
        reopen()
    }

    deinit { flush(); if fd > 2 { close(fd) } }

    /// Opens (again) the file: SIGUSR1 calls this after log rotation.
    public func reopen() {
        flush()
        if fd > 2 { close(fd) }
        switch path {
        case "/dev/stdout": fd = 1
        case "/dev/stderr": fd = 2
        default: fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        }
    }

    public func log(_ e: AccessLogEntry) {
        if let json {
            var fields: [(String, JSON)] = []
            for (k, f) in json {
                var s = ""
                f.format(e, into: &s)
                if f.isNumeric, let n = Int64(s) { fields.append((k, .int(n))) } else { fields.append((k, .string(s))) }
            }
            pending += JSON.object(fields).serialized() + "\n"
        } else if let format {
            format.format(e, into: &pending)
        }
        if pending.utf8.count >= 4096 { flush() }
    }

    /// Writes what is buffered.
    public func flush() {
        guard !pending.isEmpty, fd >= 0 else { pending = ""; return }
        var s = pending
        pending = ""
        s.withUTF8 { p in
            var off = 0
            while off < p.count {
                let n = write(fd, p.baseAddress! + off, p.count - off)
                if n <= 0 { if n < 0 && errno == EINTR { continue }; break }
                off += n
            }
        }
    }
}
