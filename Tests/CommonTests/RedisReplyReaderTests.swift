import Testing
@testable import RedisProtocol

/// Feeds `stream` in pieces of `step` bytes (0: all at once) and collects every result,
/// collecting element ranges for every reply.
private func read(_ stream: [UInt8], step: Int = 0, maxReplyBytes: Int = 1 << 20, elements: Bool = true)
    -> [(RespReplyReader.Result, [Range<Int>])] {
    let r = RespReplyReader(maxReplyBytes: maxReplyBytes)
    var out: [(RespReplyReader.Result, [Range<Int>])] = []
    var i = 0
    r.collectElements = elements
    while i < stream.count {
        let n = step == 0 ? stream.count : min(step, stream.count - i)
        stream[i..<(i + n)].withUnsafeBytes { r.feed($0) }
        i += n
        while true {
            let res = r.next()
            if res == .incomplete { break }
            out.append((res, r.elementRanges))
            if case .error = res { return out }
            r.collectElements = elements
        }
    }
    return out
}

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

@Test func replyLengthsTypesAndIntegers() {
    let stream = bytes("+OK\r\n-ERR no\r\n:42\r\n:-7\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n")
    let got = read(stream, elements: false).map(\.0)
    #expect(got == [
        .reply(RespReply(length: 5, type: .status, integer: 0, elementCount: 0)),
        .reply(RespReply(length: 9, type: .error, integer: 0, elementCount: 0)),
        .reply(RespReply(length: 5, type: .integer, integer: 42, elementCount: 0)),
        .reply(RespReply(length: 5, type: .integer, integer: -7, elementCount: 0)),
        .reply(RespReply(length: 9, type: .bulk, integer: 0, elementCount: 0)),
        .reply(RespReply(length: 5, type: .nilBulk, integer: 0, elementCount: 0)),
        .reply(RespReply(length: 5, type: .nilArray, integer: 0, elementCount: 0)),
        .reply(RespReply(length: 4, type: .array, integer: 0, elementCount: 0)),
        .reply(RespReply(length: 6, type: .bulk, integer: 0, elementCount: 0)),
    ])
}

@Test func elementRangesOfATopLevelArray() {
    // An MGET-like reply with a nil and an error, then a nested SCAN-like reply.
    let mget = "*4\r\n$1\r\na\r\n$-1\r\n-ERR x\r\n:5\r\n"
    let scan = "*2\r\n$2\r\n17\r\n*2\r\n$1\r\nk\r\n$-1\r\n"
    let stream = bytes(mget + scan)
    for step in [0, 1, 3, 7] {
        let got = read(stream, step: step)
        #expect(got.count == 2, "step \(step)")
        guard got.count == 2 else { continue }
        #expect(got[0].0 == .reply(RespReply(length: mget.utf8.count, type: .array, integer: 0, elementCount: 4)))
        let els = got[0].1.map { String(decoding: stream[$0], as: UTF8.self) }
        #expect(els == ["$1\r\na\r\n", "$-1\r\n", "-ERR x\r\n", ":5\r\n"], "step \(step)")
        let base = mget.utf8.count
        let els2 = got[1].1.map { String(decoding: stream[(base + $0.lowerBound)..<(base + $0.upperBound)], as: UTF8.self) }
        #expect(els2 == ["$2\r\n17\r\n", "*2\r\n$1\r\nk\r\n$-1\r\n"], "step \(step)")
    }
}

@Test func replyReaderByteByByteEqualsOneShot() {
    var s = "*3\r\n*1\r\n+a\r\n$5\r\nhello\r\n:1\r\n+PONG\r\n$10\r\n0123456789\r\n"
    s += String(repeating: ":1\r\n", count: 300)  // past hiredis's 1 KiB buffer compaction
    s += "$2000\r\n" + String(repeating: "x", count: 2000) + "\r\n*2\r\n$-1\r\n*-1\r\n"
    let stream = bytes(s)
    let whole = read(stream)
    #expect(whole.count == 305)
    var total = 0
    for (res, _) in whole { if case .reply(let r) = res { total += r.length } }
    #expect(total == stream.count)
    for step in [1, 2, 5, 1000] {
        let pieces = read(stream, step: step)
        #expect(pieces.map(\.0) == whole.map(\.0), "step \(step)")
        #expect(pieces.map(\.1) == whole.map(\.1), "step \(step)")
    }
}

@Test func nestingBeyondHiredisLimitIsAnError() {
    let seven = String(repeating: "*1\r\n", count: 7) + ":1\r\n"
    #expect(read(bytes(seven)).first?.0 == .reply(RespReply(length: seven.utf8.count, type: .array, integer: 0, elementCount: 1)))
    let nine = String(repeating: "*1\r\n", count: 9) + ":1\r\n"
    guard case .error(.protocolError(let m)) = read(bytes(nine)).last?.0 else { Issue.record("no error"); return }
    #expect(m.contains("depth > 7"), "\(m)")
}

@Test func hostileRepliesAreRefused() {
    guard case .error(.protocolError(let m)) = read(bytes("%1\r\n")).first?.0 else { Issue.record("no error"); return }
    #expect(m.contains("got \"%\""), "\(m)")
    // A bulk announced at 2 GB errors out once more than the limit is buffered, not at 2 GB.
    let head = bytes("$2000000000\r\n") + [UInt8](repeating: 0x61, count: 5000)
    #expect(read(head, step: 1000, maxReplyBytes: 4096).last?.0 == .error(.replyTooLarge))
    #expect(read(bytes("*3000000000\r\n")).last.map { if case .error = $0.0 { true } else { false } } == true)
    // Ten million elements announced: nothing allocated up front, just waiting for them.
    #expect(read(bytes("*10000000\r\n:1\r\n")).isEmpty)
}
