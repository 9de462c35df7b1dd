/// An active health check as data (HAProxy's tcp-check idea): connect, then a list of send /
/// expect steps. The protocol kinds are preset step lists. Built at config time, immutable.
public struct HealthCheckConfig: Sendable {
    public enum Kind: String, Sendable, CaseIterable { case tcp, http, redis, udp, grpc }
    public var kind: Kind
    /// What to do after connecting (TCP kinds) or instead of connecting (UDP: send, expect).
    public var steps: [CheckStep] = []
    /// `interval` (default 5s): between checks of a host in a steady state.
    public var intervalMs: UInt64 = 5000
    /// `unhealthy_interval` (default: interval): between checks while the host is down.
    public var unhealthyIntervalMs: UInt64?
    /// `edge_interval` (default: interval): while a host is between states (some successes
    /// while down, or failures while up), check faster so a flip is decided sooner.
    public var edgeIntervalMs: UInt64?
    /// `timeout` (default 1s): for the whole check, connect included.
    public var timeoutMs: UInt64 = 1000
    /// `rise` / `fall` (default 2 / 3, as HAProxy): consecutive results needed to flip, for
    /// every kind of failure alike (a bad HTTP status does not fail a host at once).
    public var rise = 2
    public var fall = 3
    /// `interval_jitter` (default 0): up to this much is added to each interval, at random.
    public var intervalJitterMs: UInt64 = 0
    /// `initial_jitter` (default 0): the first check waits up to this long, so a fleet of
    /// checkers does not hit a host at the same instant.
    public var initialJitterMs: UInt64 = 0
    /// A short text for logs and tables ("http GET /healthz", "tcp connect").
    public var summary: String = ""
    /// gRPC: the service asked about ("" = the server as a whole) and the :authority
    /// (default: the host's address).
    public var grpcService = ""
    public var grpcAuthority: String?
    /// TLS for the check (the cluster's `tls`, with ALPN h2 for gRPC); nil: plain.
    public var tls: TlsContext?

    public init(kind: Kind) { self.kind = kind }

    /// The interval to wait before the next check, for a host in `state`.
    public func interval(for state: HealthState) -> UInt64 {
        if state.inTransition, let e = edgeIntervalMs { return e }
        if !state.healthy, let u = unhealthyIntervalMs { return u }
        return intervalMs
    }

    /// Preset step lists.
    public static func http(method: String = "GET", path: String, host: String?, statuses: [ClosedRange<Int>]) -> [CheckStep] {
        var req = "\(method) \(path) HTTP/1.1\r\nHost: \(host ?? "localhost")\r\n"
        req += "User-Agent: proxies-health-checker/\(toolkitVersion)\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        return [.send(Array(req.utf8)), .expect(.httpStatus(statuses))]
    }

    /// Redis: PING must answer PONG; with a key, EXISTS key must answer 0 (setting the key
    /// drains the host for maintenance, as Envoy's redis health checker does).
    public static func redis(key: String?) -> [CheckStep] {
        var steps: [CheckStep] = [.send(Array("*1\r\n$4\r\nPING\r\n".utf8)), .expect(.redisSimple("PONG"))]
        if let key {
            let k = Array(key.utf8)
            steps.append(.send(Array("*2\r\n$6\r\nEXISTS\r\n$\(k.count)\r\n".utf8) + k + Array("\r\n".utf8)))
            steps.append(.expect(.redisInteger(0)))
        }
        return steps
    }
}

/// One step after connecting.
public enum CheckStep: Sendable, Equatable {
    case send([UInt8])
    case expect(Matcher)
}

/// How received bytes are judged.
public enum Matcher: Sendable, Equatable {
    /// The response starts with these bytes.
    case prefix([UInt8])
    /// The bytes appear somewhere in the first 16 KiB.
    case contains([UInt8])
    /// An HTTP/1.x status line whose code is in one of the ranges.
    case httpStatus([ClosedRange<Int>])
    /// A RESP simple string (`+PONG`).
    case redisSimple(String)
    /// A RESP integer (`:0`).
    case redisInteger(Int)
    /// Any response at all (UDP echo-style checks).
    case any

    public enum Verdict: Equatable { case pass, fail(String), needMore }

    /// The most a check reads before deciding.
    public static let maxResponse = 16 * 1024

    /// Judges the bytes received so far; `eof`: no more will come.
    public func judge(_ b: [UInt8], eof: Bool) -> Verdict {
        switch self {
        case .any:
            return b.isEmpty ? (eof ? .fail("empty response") : .needMore) : .pass
        case .prefix(let p):
            let n = min(b.count, p.count)
            if b[0..<n].elementsEqual(p[0..<n]) {
                return n == p.count ? .pass : (eof ? .fail("short response") : .needMore)
            }
            return .fail("unexpected response \(printable(b))")
        case .contains(let p):
            if contains(b, p) { return .pass }
            if eof || b.count >= Matcher.maxResponse { return .fail("expected text not found in \(printable(b))") }
            return .needMore
        case .httpStatus(let ranges):
            guard let eol = b.firstIndex(of: 0x0A) else {
                if eof || b.count >= Matcher.maxResponse { return .fail(b.isEmpty ? "no response" : "no HTTP status line") }
                return .needMore
            }
            let line = String(decoding: b[..<eol], as: UTF8.self).trimmingCharacters(in: "\r")
            let parts = line.split(separator: " ", maxSplits: 2)
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]), (100...999).contains(code) else {
                return .fail("not an HTTP response: \(printable(Array(b[..<eol])))")
            }
            return ranges.contains { $0.contains(code) } ? .pass : .fail("HTTP status \(code)")
        case .redisSimple(let s):
            return lineVerdict(b, eof: eof) { $0 == "+" + s ? nil : "Redis replied \($0)" }
        case .redisInteger(let i):
            return lineVerdict(b, eof: eof) { $0 == ":\(i)" ? nil : "Redis replied \($0)" }
        }
    }

    private func lineVerdict(_ b: [UInt8], eof: Bool, _ check: (String) -> String?) -> Verdict {
        guard let cr = b.firstIndex(of: 0x0D), cr + 1 < b.count, b[cr + 1] == 0x0A else {
            if eof || b.count >= Matcher.maxResponse { return .fail(b.isEmpty ? "no response" : "incomplete reply") }
            return .needMore
        }
        if let why = check(String(decoding: b[..<cr], as: UTF8.self)) { return .fail(why) }
        return .pass
    }

    private func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
        if needle.isEmpty { return true }
        if hay.count < needle.count { return false }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] {
            if hay[i..<(i + needle.count)].elementsEqual(needle) { return true }
        }
        return false
    }
}

/// Up to 64 bytes of a response, escaped for a log line.
func printable(_ b: [UInt8]) -> String {
    var s = "\""
    for c in b.prefix(64) {
        if c >= 0x20 && c < 0x7F && c != 0x22 && c != 0x5C { s.unicodeScalars.append(UnicodeScalar(c)) }
        else if c == 0x0D { s += "\\r" } else if c == 0x0A { s += "\\n" }
        else { s += "\\x" + (c < 16 ? "0" : "") + String(c, radix: 16) }
    }
    return s + (b.count > 64 ? "...\"" : "\"")
}

extension String {
    func trimmingCharacters(in c: Character) -> String {
        var s = Substring(self)
        while s.last == c { s = s.dropLast() }
        while s.first == c { s = s.dropFirst() }
        return String(s)
    }
}

/// The outcome of one check, naming the layer that failed (HAProxy's check status codes).
public enum CheckResult: Sendable, Equatable {
    case passed(latencyMs: UInt64)
    /// L4: connection refused, reset, unreachable.
    case l4Connect(String)
    /// L4: the connect did not finish in time.
    case l4Timeout
    /// L6: the TLS handshake failed (a certificate that does not verify, a protocol mismatch).
    case l6(String)
    /// L6: connected, but the TLS handshake did not finish in time.
    case l6Timeout
    /// L7: connected, but no complete answer in time.
    case l7Timeout
    /// L7: an answer that does not match.
    case l7Response(String)

    public var passed: Bool { if case .passed = self { return true }; return false }

    /// HAProxy's short code: L7OK, L4CON, L4TOUT, L7TOUT, L7RSP (L7STS for HTTP statuses).
    public var code: String {
        switch self {
        case .passed: return "L7OK"
        case .l4Connect: return "L4CON"
        case .l4Timeout: return "L4TOUT"
        case .l6: return "L6RSP"
        case .l6Timeout: return "L6TOUT"
        case .l7Timeout: return "L7TOUT"
        case .l7Response(let why): return why.hasPrefix("HTTP status") ? "L7STS" : "L7RSP"
        }
    }

    public var detail: String {
        switch self {
        case .passed(let ms): return "ok in \(ms) ms"
        case .l4Connect(let why): return why
        case .l4Timeout: return "connect timeout"
        case .l6(let why): return "TLS: " + why
        case .l6Timeout: return "TLS handshake timeout"
        case .l7Timeout: return "response timeout"
        case .l7Response(let why): return why
        }
    }
}

/// A host's health as rise/fall counters decide it. Pure; tested without I/O.
public struct HealthState: Sendable, Equatable {
    public private(set) var healthy: Bool
    /// Consecutive passes while unhealthy / failures while healthy.
    public private(set) var streak = 0
    public private(set) var last: CheckResult?
    let rise: Int
    let fall: Int

    /// Hosts start healthy (as HAProxy's servers do), so a restart does not refuse traffic;
    /// `fall` failures take one out.
    public init(rise: Int, fall: Int, healthy: Bool = true) {
        self.rise = rise; self.fall = fall; self.healthy = healthy
    }

    /// A change counts only after `rise` passes in a row (down → up) or `fall` failures in a
    /// row (up → down), whatever the failure kind. Returns true when the state flipped.
    public mutating func record(_ r: CheckResult) -> Bool {
        last = r
        if r.passed == healthy { streak = 0; return false }
        streak += 1
        if streak >= (healthy ? fall : rise) {
            healthy.toggle()
            streak = 0
            return true
        }
        return false
    }

    /// Some results point the other way, not enough yet to flip.
    public var inTransition: Bool { streak > 0 }
}
