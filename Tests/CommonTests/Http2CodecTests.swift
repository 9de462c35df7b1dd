import Testing
@testable import Common
@testable import HttpProxy

private func detect(_ s: String) -> CodecDetector.Guess { detect(Array(s.utf8)) }
private func detect(_ b: [UInt8]) -> CodecDetector.Guess { b.withUnsafeBytes { CodecDetector.detect($0) } }

@Test func everyPrefixOfThePrefaceWaitsAndTheWholeOneIsHttp2() {
    let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    #expect(preface.count == 24)
    for n in 0..<24 { #expect(detect(Array(preface[0..<n])) == .undecided, "prefix of \(n) bytes") }
    #expect(detect(preface) == .http2)
    #expect(detect(preface + [0, 0, 0x12, 4]) == .http2)
}

@Test func http1RequestsAreDecidedByTheirFirstDifferingByte() {
    #expect(detect("GET / HTTP/1.1\r\n") == .http1)
    #expect(detect("G") == .http1)
    #expect(detect("POST / HTTP/1.1\r\n") == .http1)
    #expect(detect("PUT") == .http1)
    #expect(detect("PATCH") == .http1)
    #expect(detect("P") == .undecided)
    #expect(detect("PRI / HTTP/1.1") == .http1)
    #expect(detect("PRI * HTTP/1.1\r\n") == .http1)
    #expect(detect("PRI * HTTP/2.0\r\n\r\nXX") == .http1)
}

private func config(_ http: String) -> String {
    """
    listeners:
      - name: edge
        address: 127.0.0.1:0
        http:
    \(http.split(separator: "\n", omittingEmptySubsequences: false).map { "      " + $0 }.joined(separator: "\n"))
    clusters:
      - { name: a, endpoints: ["127.0.0.1:1"] }

    """
}

private func load(_ http: String) throws -> HttpProxyConfig {
    let cfg = try ConfigLoader.load(yaml: config(http), parser: HttpProxyConfig.blockParser)
    return try #require(cfg.listeners[0].filter as? HttpProxyConfig)
}

private func error(_ http: String) -> String {
    do { _ = try ConfigLoader.load(yaml: config(http), parser: HttpProxyConfig.blockParser); return "no error" } catch { return error.description }
}

@Test func codecAndHttp2OptionsParseWithEnvoyDefaults() throws {
    let d = try load("routes: [{ match: { prefix: / }, cluster: a }]")
    #expect(d.codec == .auto)
    #expect(d.http2.maxConcurrentStreams == 100)
    #expect(d.http2.initialStreamWindowSize == 65535)
    #expect(d.http2.initialConnectionWindowSize == 1 << 20)
    #expect(HttpCodecChoice.auto.defaultAlpn == ["h2", "http/1.1"])
    #expect(HttpCodecChoice.http1.defaultAlpn == ["http/1.1"])
    #expect(HttpCodecChoice.http2.defaultAlpn == ["h2"])
    let c = try load("""
        routes: [{ match: { prefix: / }, cluster: a }]
        codec: http2
        http2_protocol_options: { max_concurrent_streams: 7, initial_stream_window_size: 1MiB, initial_connection_window_size: 2MiB, hpack_table_size: 0 }
        """)
    #expect(c.codec == .http2)
    #expect(c.http2.maxConcurrentStreams == 7)
    #expect(c.http2.initialStreamWindowSize == 1 << 20)
    #expect(c.http2.initialConnectionWindowSize == 2 << 20)
    #expect(c.http2.hpackTableSize == 0)
}

@Test func badHttp2OptionsNameTheirKeyPath() {
    #expect(error("routes: [{ match: { prefix: / }, cluster: a }]\ncodec: spdy").contains("listeners[0].http.codec"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a }]\nhttp2_protocol_options: { max_concurrent_streams: 0 }").contains("http2_protocol_options.max_concurrent_streams"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a }]\nhttp2_protocol_options: { initial_stream_window_size: 100 }").contains("initial_stream_window_size"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a }]\nhttp2_protocol_options: { initial_stream_window_size: 4GiB }").contains("initial_stream_window_size"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a }]\nhttp2_protocol_options: { bogus: 1 }").contains("bogus"))
}

@Test func floodGuardCountsConsecutiveEmptyDataFramesOnly() {
    var g = Http2FloodGuard()
    #expect(g.received(type: 0, length: 0, endStream: false) == .ok)
    #expect(g.received(type: 0, length: 10, endStream: false) == .ok)  // a payload resets the run
    #expect(g.received(type: 0, length: 0, endStream: false) == .ok)
    #expect(g.received(type: 0, length: 0, endStream: true) == .ok)    // END_STREAM is not empty
    #expect(g.received(type: 0, length: 0, endStream: false) == .ok)
    #expect(g.received(type: 0, length: 0, endStream: false) == .emptyFrames)
}

@Test func floodGuardBoundsPriorityFramesByStreamsOpened() {
    var g = Http2FloodGuard()
    for _ in 0..<100 { #expect(g.received(type: 2, length: 5, endStream: false) == .ok) }
    #expect(g.received(type: 2, length: 5, endStream: false) == .priorityFrames)
    var h = Http2FloodGuard()
    h.streamOpened()
    for _ in 0..<200 { #expect(h.received(type: 2, length: 5, endStream: false) == .ok) }
    #expect(h.received(type: 2, length: 5, endStream: false) == .priorityFrames)
}

@Test func floodGuardBoundsWindowUpdatesByDataSent() {
    var g = Http2FloodGuard()
    for _ in 0..<5 { #expect(g.received(type: 8, length: 4, endStream: false) == .ok) }
    #expect(g.received(type: 8, length: 4, endStream: false) == .windowUpdateFrames)
    var h = Http2FloodGuard()
    h.streamOpened()
    for _ in 0..<3 { h.dataSent() }
    // 5 + 2 × (1 + 10 × 3) = 67
    for _ in 0..<67 { #expect(h.received(type: 8, length: 4, endStream: false) == .ok) }
    #expect(h.received(type: 8, length: 4, endStream: false) == .windowUpdateFrames)
}

@Test func prematureResetsCloseOnlyPastHalfOfEnoughStreams() {
    var g = Http2FloodGuard()
    for _ in 0..<499 { g.streamOpened() }
    for _ in 0..<499 { #expect(g.prematureReset() == .ok) }  // fewer than 500 streams: never
    g.streamOpened()
    #expect(g.prematureReset() == .prematureResets)
    var h = Http2FloodGuard()
    for _ in 0..<1000 { h.streamOpened() }
    for _ in 0..<499 { #expect(h.prematureReset() == .ok) }
    #expect(h.prematureReset() == .prematureResets)  // 500 of 1000
}

@Test func grpcTimeoutParsesEveryUnitAndRefusesGarbage() {
    #expect(Grpc.timeoutMs("1H") == 3_600_000)
    #expect(Grpc.timeoutMs("2M") == 120_000)
    #expect(Grpc.timeoutMs("3S") == 3000)
    #expect(Grpc.timeoutMs("250m") == 250)
    #expect(Grpc.timeoutMs("1500u") == 2)
    #expect(Grpc.timeoutMs("1n") == 1)
    #expect(Grpc.timeoutMs("99999999S") == 99_999_999_000)
    #expect(Grpc.timeoutMs("123456789S") == nil)  // 9 digits
    #expect(Grpc.timeoutMs("S") == nil)
    #expect(Grpc.timeoutMs("10x") == nil)
    #expect(Grpc.timeoutMs("-1S") == nil)
    #expect(Grpc.timeoutMs("") == nil)
}

@Test func grpcStatusesAndMessagesForLocalReplies() {
    #expect(Grpc.status(http: 503) == 14)
    #expect(Grpc.status(http: 404) == 12)
    #expect(Grpc.status(http: 400) == 13)
    #expect(Grpc.status(http: 418) == 2)
    #expect(Grpc.percentEncoded("no healthy upstream") == "no healthy upstream")
    #expect(Grpc.percentEncoded("100% \u{e9}\n") == "100%25 %C3%A9%0A")
}

/// gRPC messages of many sizes (0 bytes to 70 KB) back to back, fed in random pieces (single
/// bytes, cuts inside the 5-byte prefix, several messages in one piece): every split counts
/// each message once.
@Test func grpcMessageCounterCountsMessagesWhateverThePieces() {
    var rng = FastRandom(seed: 42)
    for round in 0..<200 {
        var body: [UInt8] = []
        let messages = 1 + rng.below(40)
        for i in 0..<messages {
            let len = i % 7 == 0 ? 0 : (i % 11 == 0 ? 70_000 + rng.below(1000) : rng.below(300))
            body.append(UInt8(i & 1))
            body += [UInt8(len >> 24 & 0xFF), UInt8(len >> 16 & 0xFF), UInt8(len >> 8 & 0xFF), UInt8(len & 0xFF)]
            body += [UInt8](repeating: 0x5A, count: len)
        }
        var counter = GrpcMessageCounter()
        var at = 0
        while at < body.count {
            let piece = round % 5 == 0 ? 1 : 1 + rng.below(round % 2 == 0 ? 9 : 20_000)
            let end = min(body.count, at + piece)
            body[at..<end].withUnsafeBytes { counter.feed($0) }
            at = end
        }
        #expect(counter.count == messages, "round \(round)")
    }
}

@Test func keepaliveSchedulesPingsAndCountsAnyBytesAsLife() {
    var k = Http2Keepalive(Http2KeepaliveConfig(intervalMs: 1000, timeoutMs: 300))
    k.schedule(now: 0, random: 0)
    #expect(k.due(now: 999) == .wait(1000))
    #expect(k.due(now: 1000) == .ping)
    k.pinged(now: 1000)
    #expect(k.awaitingAck && k.due(now: 1299) == .wait(1300))
    k.received(now: 1200)  // a frame queued ahead of the ACK
    #expect(k.due(now: 1300) == .wait(1500))
    #expect(k.due(now: 1500) == .dead)
    k.acked(now: 1400, random: 149)  // jitter: up to 15% of the interval
    #expect(!k.awaitingAck && k.due(now: 1400) == .wait(2549))
    k.acked(now: 1500, random: 0)  // an ACK nobody waited for changes nothing
    #expect(k.due(now: 1500) == .wait(2549))
    #expect(!Http2Keepalive(Http2KeepaliveConfig()).enabled)
}
