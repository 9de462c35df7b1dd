import CNghttp2
import Common

/// `connection_keepalive: {interval, timeout}` (Envoy's), on a listener's or a cluster's
/// HTTP/2 options: a PING every `interval` (0: none, the default) plus up to 15% at random; a
/// peer that sends nothing within `timeout` of one has its connection closed.
struct Http2KeepaliveConfig: Sendable, Equatable {
    var intervalMs: UInt64 = 0
    var timeoutMs: UInt64 = 20_000

    static func parse(_ v: ConfigValue) throws(ConfigError) -> Http2KeepaliveConfig {
        let m = try v.mapping()
        var c = Http2KeepaliveConfig()
        if let x = m.optional("interval") { c.intervalMs = try x.durationMs(min: 0, max: 86_400_000) }
        if let x = m.optional("timeout") { c.timeoutMs = try x.durationMs(min: 1, max: 3_600_000) }
        try m.finish()
        return c
    }

    var dump: JSON { .object([("interval", .string(formatDuration(intervalMs))), ("timeout", .string(formatDuration(timeoutMs)))]) }
}

/// One connection's PING schedule, as a pure state machine (the caller owns the timer, the
/// clock and the frames): PINGs every interval; while one is unanswered, any bytes from the
/// peer count as a sign of life (a busy peer's frames queued ahead of its ACK must not make
/// it look dead), as in Envoy.
struct Http2Keepalive {
    let config: Http2KeepaliveConfig
    private var pingSentMs: UInt64 = 0
    private var lastReceiveMs: UInt64 = 0
    private var nextPingMs: UInt64 = 0

    init(_ config: Http2KeepaliveConfig) { self.config = config }

    var enabled: Bool { config.intervalMs > 0 }
    /// A PING is out and not yet acknowledged.
    var awaitingAck: Bool { pingSentMs > 0 }

    enum Due: Equatable {
        /// Nothing to do before this deadline (absolute, ms).
        case wait(UInt64)
        /// Send a PING now (then `pinged`).
        case ping
        /// The peer sent nothing within the timeout of a PING.
        case dead
    }

    /// The next PING, `interval` plus up to 15% of it (`random` picks where) from `now`.
    mutating func schedule(now: UInt64, random: UInt64) {
        pingSentMs = 0
        nextPingMs = now &+ config.intervalMs &+ random % (config.intervalMs * 15 / 100 + 1)
    }

    func due(now: UInt64) -> Due {
        if pingSentMs > 0 {
            let deadline = max(pingSentMs, lastReceiveMs) &+ config.timeoutMs
            return now >= deadline ? .dead : .wait(deadline)
        }
        return now >= nextPingMs ? .ping : .wait(nextPingMs)
    }

    mutating func pinged(now: UInt64) { pingSentMs = now }

    mutating func received(now: UInt64) { lastReceiveMs = now }

    /// A PING ACK arrived: the next PING is scheduled (an ACK nobody waited for changes nothing).
    mutating func acked(now: UInt64, random: UInt64) {
        if pingSentMs > 0 { schedule(now: now, random: random) }
    }
}

extension Http2Keepalive {
    /// Queues a PING with 8 random opaque bytes on `session`.
    static func submitPing(_ session: OpaquePointer, random: UInt64) {
        var opaque = random
        _ = withUnsafeBytes(of: &opaque) { nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), $0.bindMemory(to: UInt8.self).baseAddress) }
    }
}
