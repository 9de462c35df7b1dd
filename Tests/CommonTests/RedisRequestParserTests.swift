import Testing
import Common
@testable import RedisProtocol

/// Parses `bytes` in one call; returns the result and the arguments as byte arrays.
private func parseOnce(_ bytes: [UInt8], limits: RespRequestLimits = RespRequestLimits(), unauthenticated: Bool = false)
    -> (RespRequestParser.Result, [[UInt8]]) {
    var p = RespRequestParser(limits: limits)
    p.unauthenticated = unauthenticated
    return bytes.withUnsafeBytes { input in
        let r = p.parse(input)
        guard case .request(let req) = r else { return (r, []) }
        return (r, (0..<req.argCount).map { i in p.withArgument(i, in: input) { Array($0) } })
    }
}

private func parseOnce(_ text: String) -> (RespRequestParser.Result, [[UInt8]]) { parseOnce(Array(text.utf8)) }

private func args(_ text: String) -> [String] {
    parseOnce(text).1.map { String(decoding: $0, as: UTF8.self) }
}

private func error(_ text: String) -> RespRequestError? {
    if case .error(let e) = parseOnce(text).0 { return e }
    return nil
}

private func replyText(_ e: RespRequestError?) -> String { e.map { String(decoding: $0.reply, as: UTF8.self) } ?? "no error" }

/// Feeds `bytes` one byte more per call, as a slow client would, draining after each result;
/// returns every result with its arguments.
private func parseByteByByte(_ bytes: [UInt8]) -> [(RespRequestParser.Result, [[UInt8]])] {
    var p = RespRequestParser()
    var out: [(RespRequestParser.Result, [[UInt8]])] = []
    var start = 0
    var end = start
    while end <= bytes.count {
        let r = bytes[start..<end].withUnsafeBytes { input -> (RespRequestParser.Result, [[UInt8]]) in
            let r = p.parse(input)
            guard case .request(let req) = r else { return (r, []) }
            return (r, (0..<req.argCount).map { i in p.withArgument(i, in: input) { Array($0) } })
        }
        switch r.0 {
        case .incomplete: end += 1
        case .request(let req): out.append(r); start += req.range.upperBound
        case .ignored(let n): out.append(r); start += n
        case .error: out.append(r); return out
        }
        if end < start { end = start }
    }
    return out
}

@Test func multibulkArgumentsPointIntoTheInput() {
    let text = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n"
    let (r, a) = parseOnce(text)
    #expect(r == .request(RespRequest(range: 0..<31, isInline: false, argCount: 3)))
    #expect(a == [Array("SET".utf8), Array("k".utf8), Array("hello".utf8)])
}

@Test func emptyAndBinaryBulksAreArguments() {
    let bytes: [UInt8] = Array("*2\r\n$0\r\n\r\n$4\r\n".utf8) + [0, 0xFF, 0x0D, 0x0A] + [0x0D, 0x0A]
    let (r, a) = parseOnce(bytes)
    #expect(r == .request(RespRequest(range: 0..<bytes.count, isInline: false, argCount: 2)))
    #expect(a == [[], [0, 0xFF, 0x0D, 0x0A]])
}

@Test func zeroAndNegativeCountsAreSkippedAsRedisDoes() {
    #expect(parseOnce("*0\r\n*1\r\n$4\r\nPING\r\n").0 == .ignored(consumed: 4))
    #expect(parseOnce("*-1\r\n").0 == .ignored(consumed: 5))
    #expect(parseOnce("*-5\r\n").0 == .ignored(consumed: 5))
    #expect(parseOnce("\r\n").0 == .ignored(consumed: 2))
    #expect(parseOnce("   \n").0 == .ignored(consumed: 4))
}

// Expected replies below were captured from redis-server 7.0.15 over a raw socket.
@Test func countErrorsMatchRedis() {
    for bad in ["*abc\r\n", "*+1\r\n", "*01\r\n", "*\r\n", "*-0\r\n", "*2147483648\r\n", "*99999999999999999999\r\n"] {
        #expect(replyText(error(bad)) == "-ERR Protocol error: invalid multibulk length\r\n", "\(bad)")
    }
    #expect(parseOnce("*2147483647\r\n").0 == .incomplete)
    #expect(replyText(error("*1\r\nX\r\n")) == "-ERR Protocol error: expected '$', got 'X'\r\n")
    #expect(replyText(error("*1\r\n\r\n")) == "-ERR Protocol error: expected '$', got ' '\r\n")
    #expect(error("*1\r\n\u{1}\r\n") == .expectedDollar(1))
    for bad in ["*1\r\n$-1\r\n", "*1\r\n$04\r\n", "*1\r\n$\r\n", "*1\r\n$536870913\r\n", "*1\r\n$1x\r\n"] {
        #expect(replyText(error(bad)) == "-ERR Protocol error: invalid bulk length\r\n", "\(bad)")
    }
    #expect(parseOnce("*1\r\n$536870912\r\n").0 == .incomplete)
}

@Test func framingIsStricterThanRedis() {
    // Redis skips the two bytes after a bulk and after a count line's CR unread; we refuse.
    #expect(error("*1\r\n$4\r\nPINGxx") == .missingCRLF)
    #expect(error("*1\rX$4\r\nPING\r\n") == .missingCRLF)
    #expect(error("*1\r\n$4\rXPING\r\n") == .missingCRLF)
}

@Test func longLinesAreRefusedWhateverTheReadSizes() {
    let big = RespRequestLimits()
    #expect(error(String(repeating: "x", count: 70000)) == .tooBigInlineRequest)
    #expect(error("ECHO " + String(repeating: "x", count: 70000) + "\r\n") == .tooBigInlineRequest)
    #expect(error("*" + String(repeating: "1", count: 70000)) == .tooBigMultibulkCount)
    #expect(error("*1\r\n$" + String(repeating: "1", count: 70000)) == .tooBigBulkCount)
    #expect(error("*1\r\n" + String(repeating: "x", count: 70000)) == .tooBigBulkCount)
    // A line of exactly the limit is fine.
    let exact = "ECHO " + String(repeating: "x", count: big.maxLineLength - 6) + "\r\n"
    #expect(args(exact).count == 2)
    #expect(error("ECHO " + String(repeating: "x", count: big.maxLineLength - 5) + "\r\n") == .tooBigInlineRequest)
}

@Test func limitsAreConfigurable() {
    let small = RespRequestLimits(maxBulkLength: 3, maxMultibulkLength: 2, maxLineLength: 16, maxRequestBytes: 40)
    #expect(parseOnce(Array("*3\r\n".utf8), limits: small).0 == .error(.invalidMultibulkLength))
    #expect(parseOnce(Array("*1\r\n$4\r\n".utf8), limits: small).0 == .error(.invalidBulkLength))
    #expect(parseOnce(Array("*2\r\n$3\r\nabc\r\n$3\r\nabc\r\n".utf8), limits: small).0 != .error(.requestTooLarge))
    let tiny = RespRequestLimits(maxRequestBytes: 20)
    #expect(parseOnce(Array("*2\r\n$3\r\nabc\r\n$3\r\n".utf8), limits: tiny).0 == .error(.requestTooLarge))
    #expect(parseOnce(Array(("PING " + String(repeating: "a", count: 12) + "\n").utf8), limits: small).0 == .error(.tooBigInlineRequest))
}

@Test func unauthenticatedClientsGetRedisSmallLimits() {
    let eleven = "*11\r\n"
    #expect(parseOnce(Array(eleven.utf8), unauthenticated: true).0 == .error(.unauthenticatedMultibulkLength))
    #expect(parseOnce(Array("*1\r\n$16385\r\n".utf8), unauthenticated: true).0 == .error(.unauthenticatedBulkLength))
    #expect(parseOnce(Array("*1\r\n$16384\r\n".utf8), unauthenticated: true).0 == .incomplete)
    #expect(replyText(.unauthenticatedMultibulkLength) == "-ERR Protocol error: unauthenticated multibulk length\r\n")
}

@Test func inlineQuotingFollowsSdssplitargs() {
    #expect(args("SET k v\r\n") == ["SET", "k", "v"])
    #expect(args("  PING  \n") == ["PING"])
    #expect(args("ECHO \"a\\x41\\n\\q\"\r\n") == ["ECHO", "aA\nq"])
    #expect(args("ECHO 'a\\'b'\r\n") == ["ECHO", "a'b"])
    #expect(args("ECHO 'a\\nb'\r\n") == ["ECHO", "a\\nb"])
    #expect(args("ECHO \"\\x4\"\r\n") == ["ECHO", "x4"])
    #expect(args("ECHO a\u{0B}b\r\n") == ["ECHO", "a\u{0B}b"])          // VT does not end a word
    #expect(args("ECHO\u{0B}a\r\n") == ["ECHO\u{0B}a"])
    #expect(args("ECHO \"\"\r\n") == ["ECHO", ""])
    #expect(args("ECHO a\"b c\"\r\n") == ["ECHO", "ab c"])              // a quote may open mid-word
    #expect(args("ECHO a\rb\r\n") == ["ECHO", "a", "b"])                 // CR inside the line separates
    #expect(parseOnce(Array("ECHO \"\\xff\\xE9\"\n".utf8)).1 == [Array("ECHO".utf8), [0xFF, 0xE9]])
    for bad in ["\"PING\"x\r\n", "\"PI\r\n", "ECHO a\"b c\"d\r\n", "ECHO \"a\\\"\r\n", "ECHO 'a\r\n", "ECHO 'a'b\r\n"] {
        #expect(replyText(error(bad)) == "-ERR Protocol error: unbalanced quotes in request\r\n", "\(bad)")
    }
    // Redis's strchr never finds the end of a line with a NUL in it: refused at once here.
    #expect(parseOnce(Array("ECHO a".utf8) + [0] + Array("b\r\n".utf8)).0 == .error(.tooBigInlineRequest))
}

@Test func inlineRequestsReEncodeAsMultibulk() {
    let bytes = Array("set \"a b\" '\\'c'\r\n".utf8)
    var p = RespRequestParser()
    let pool = BlockPool(blockSize: 256, maxFree: 1)
    let out = Buffer(pool: pool)
    bytes.withUnsafeBytes { input in
        guard case .request(let req) = p.parse(input) else { Issue.record("not parsed"); return }
        #expect(req.isInline && req.range == 0..<bytes.count)
        p.writeMultibulk(argCount: req.argCount, in: input, into: out)
    }
    #expect(Array(out.readable) == Array("*3\r\n$3\r\nset\r\n$3\r\na b\r\n$2\r\n'c\r\n".utf8))
}

@Test func requestParserByteByByteEqualsOneShot() {
    let stream = Array(("*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n*0\r\nPING\r\nECHO \"x y\"\n\r\n*1\r\n$4\r\nPING\r\n"
                        + "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n*1\r\n$2\r\nabXY").utf8)
    // One shot per request, draining as we go.
    var whole: [(RespRequestParser.Result, [[UInt8]])] = []
    var p = RespRequestParser()
    var start = 0
    loop: while true {
        let r = stream[start...].withUnsafeBytes { input -> (RespRequestParser.Result, [[UInt8]]) in
            let r = p.parse(input)
            guard case .request(let req) = r else { return (r, []) }
            return (r, (0..<req.argCount).map { i in p.withArgument(i, in: input) { Array($0) } })
        }
        whole.append(r)
        switch r.0 {
        case .request(let req): start += req.range.upperBound
        case .ignored(let n): start += n
        default: break loop
        }
    }
    let pieces = parseByteByByte(stream)
    #expect(pieces.count == whole.count)
    for (a, b) in zip(pieces, whole) { #expect(a.0 == b.0 && a.1 == b.1) }
    #expect(pieces.last?.0 == .error(.missingCRLF))
    #expect(whole.count == 8)
}

@Test func bigBulkIsNotRescanned() {
    // A 1 MB bulk fed in 16 KiB steps: every call before the last is .incomplete, and the
    // arguments come out right. (Linear time is by construction: the bulk phase only compares
    // counts; this guards the resumption state.)
    let value = [UInt8](repeating: 0x61, count: 1 << 20)
    let bytes = Array("*2\r\n$3\r\nSET\r\n$\(value.count)\r\n".utf8) + value + [0x0D, 0x0A]
    var p = RespRequestParser()
    var end = 0
    var result = RespRequestParser.Result.incomplete
    while result == .incomplete && end < bytes.count {
        end = min(bytes.count, end + 16384)
        result = bytes[0..<end].withUnsafeBytes { p.parse($0) }
    }
    #expect(result == .request(RespRequest(range: 0..<bytes.count, isInline: false, argCount: 2)))
    #expect(p.arguments[1] == (bytes.count - 2 - value.count)..<(bytes.count - 2))
}

@Test func string2llIsRedisExact() {
    func s2ll(_ s: String) -> Int64? { Array(s.utf8).withUnsafeBytes { string2ll($0.baseAddress!, $0.count) } }
    #expect(s2ll("0") == 0 && s2ll("-1") == -1 && s2ll("9223372036854775807") == Int64.max)
    #expect(s2ll("-9223372036854775808") == Int64.min)
    #expect(s2ll("9223372036854775808") == nil && s2ll("-9223372036854775809") == nil)
    #expect(s2ll("") == nil && s2ll("-") == nil && s2ll("+1") == nil && s2ll("01") == nil && s2ll("-0") == nil && s2ll(" 1") == nil)
}
