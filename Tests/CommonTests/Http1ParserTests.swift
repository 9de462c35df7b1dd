import Testing
@testable import Common

/// Parses `text` as a request head in one go.
private func request(_ text: String, maxHeaders: Int = 100, maxBytes: Int = 60 * 1024) -> (Http1HeadParser.Result, HeaderMap, Http1Head) {
    var p = Http1HeadParser(maxHeadBytes: maxBytes, maxHeaders: maxHeaders)
    let h = HeaderMap()
    var head = Http1Head()
    let r = Array(text.utf8).withUnsafeBytes { p.parseRequest($0, headers: h, head: &head) }
    return (r, h, head)
}

private func response(_ text: String, head isHead: Bool = false, connect: Bool = false) -> (Http1HeadParser.Result, HeaderMap, Http1Head) {
    var p = Http1HeadParser()
    let h = HeaderMap()
    var head = Http1Head()
    let r = Array(text.utf8).withUnsafeBytes { p.parseResponse($0, headers: h, head: &head, requestWasHead: isHead, requestWasConnect: connect) }
    return (r, h, head)
}

private func requestError(_ text: String) -> Http1Error? {
    if case .error(let e) = request(text).0 { return e }
    return nil
}

@Test func parsesASimpleRequestIntoPseudoHeaders() {
    let text = "GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com\r\nX-Thing:  v  \r\nContent-Length: 5\r\n\r\nhello"
    let (r, h, head) = request(text)
    #expect(r == .complete(consumed: text.utf8.count - 5))
    #expect(h.value(.method) == "GET")
    #expect(h.value(.path) == "/a/b?x=1")
    #expect(h.value(.authority) == "Example.com")
    #expect(h.value("host") == "Example.com")
    #expect(h.value("x-thing") == "v")
    #expect(h.value("X-THING") == "v")
    #expect(head.framing == .length(5))
    #expect(head.keepAlive)
    #expect(head.minorVersion == 1)
}

@Test func aHeadArrivingOneByteAtATimeParsesOnce() {
    let text = Array("POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
    var p = Http1HeadParser()
    let h = HeaderMap()
    var head = Http1Head()
    for n in 1..<text.count {
        let r = text[0..<n].withUnsafeBytes { p.parseRequest($0, headers: h, head: &head) }
        #expect(r == .incomplete, "prefix of \(n) bytes")
    }
    let r = text.withUnsafeBytes { p.parseRequest($0, headers: h, head: &head) }
    #expect(r == .complete(consumed: text.count))
    #expect(head.framing == .chunked)
}

@Test func leadingEmptyLinesBeforeARequestAreSkipped() {
    let (r, h, _) = request("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
    #expect(r == .complete(consumed: 4 + 27))
    #expect(h.value(.path) == "/")
}

@Test func framingAmbiguitiesAreRefused() {
    // RFC 9112 6.1-6.3: each of these is a smuggling vector, never guessed.
    #expect(requestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n") == .contentLengthAndTransferEncoding)
    #expect(requestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n") == .conflictingContentLength)
    #expect(requestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n") == .badContentLength)
    #expect(requestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n") == .badContentLength)
    #expect(requestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n") == .badContentLength)
    #expect(requestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n") == .badTransferEncoding)
    #expect(requestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n") == .badTransferEncoding)
    #expect(requestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n") == .badTransferEncoding)
    #expect(requestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n") == .badTransferEncoding)
    #expect(requestError("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") == .transferEncodingHttp10)
    // Identical duplicates are one length, and only one is forwarded.
    let dup = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
    let (r, h, head) = request(dup)
    #expect(r == .complete(consumed: dup.utf8.count))
    #expect(head.framing == .length(3))
    #expect(h.indices(of: .contentLength).count == 1)
}

@Test func malformedLinesAreRefusedWithTheirOwnReason() {
    #expect(requestError("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n") == .obsFold)
    #expect(requestError("GET / HTTP/1.1\r\n Host: h\r\n\r\n") == .whitespaceBeforeFirstHeader)
    #expect(requestError("GET / HTTP/1.1\r\nHost : h\r\n\r\n") == .whitespaceBeforeColon)
    #expect(requestError("GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n") == .bareLF)
    #expect(requestError("GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n") == .bareCR)
    #expect(requestError("GET / HTTP/1.1\r\nHost: h\0\r\n\r\n") == .nul)
    #expect(requestError("GET / HTTP/1.1\r\nHo\"st: h\r\n\r\n") == .badHeaderName)
    #expect(requestError("GET / HTTP/1.1\r\n: h\r\n\r\n") == .badHeaderName)
    #expect(requestError("GET / HTTP/1.1\r\n\r\n") == .missingHost)
    #expect(requestError("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == .duplicateHost)
    #expect(requestError("G@T / HTTP/1.1\r\nHost: h\r\n\r\n") == .badMethod)
    #expect(requestError("GET  / HTTP/1.1\r\nHost: h\r\n\r\n") == .badTarget)
    #expect(requestError("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n") == .badVersion)
    #expect(requestError("GET / HTTP/1.1 \r\nHost: h\r\n\r\n") == .badRequestLine)
    #expect(requestError("GET / HTTP/2.0\r\nHost: h\r\n\r\n") == .unsupportedVersion)
    #expect(requestError("GET / HTTX/1.1\r\nHost: h\r\n\r\n") == .badVersion)
    #expect(requestError("GET foo HTTP/1.1\r\nHost: h\r\n\r\n") == .badTarget)
    #expect(requestError("GET * HTTP/1.1\r\nHost: h\r\n\r\n") == .badTarget)
    #expect(requestError("CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n") == .badTarget)
    #expect(requestError("GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n") == .badTarget)
    // HTTP/1.0 needs no Host.
    #expect(request("GET / HTTP/1.0\r\n\r\n").0 == .complete(consumed: 18))
}

@Test func limitsGive431() {
    let many = (0..<101).map { "X-\($0): v\r\n" }.joined()
    #expect(requestError("GET / HTTP/1.1\r\nHost: h\r\n" + many + "\r\n") == .tooManyHeaders)
    let (r, _, _) = request("GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "a", count: 2000), maxBytes: 1024)
    #expect(r == .error(.headersTooLarge))
    #expect(Http1Error.headersTooLarge.status == 431)
    #expect(Http1Error.badContentLength.status == 400)
}

@Test func absoluteFormTargetReplacesHost() {
    let (r, h, head) = request("GET http://Origin.example:8080/x?y HTTP/1.1\r\nHost: other\r\n\r\n")
    #expect(r != .incomplete)
    #expect(head.absoluteForm)
    #expect(h.value(.authority) == "Origin.example:8080")
    #expect(h.value(.path) == "/x?y")
    #expect(h.value(.scheme) == "http")
    #expect(h.indices(of: .authority).count == 1)
    let (_, h2, _) = request("GET http://o.example HTTP/1.1\r\nHost: o.example\r\n\r\n")
    #expect(h2.value(.path) == "/")
}

@Test func connectionSemanticsByVersion() {
    #expect(request("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").2.keepAlive == false)
    #expect(request("GET / HTTP/1.0\r\n\r\n").2.keepAlive == false)
    #expect(request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").2.keepAlive == true)
    let (_, _, head) = request("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade, X-Hop\r\nUpgrade: websocket\r\n\r\n")
    #expect(head.upgrade)
    #expect(head.connectionTokens == ["x-hop"])
    #expect(request("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n").2.expectContinue)
}

@Test func responseFramingFollowsRfc9112Order() {
    #expect(response("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").2.framing == .length(10))
    #expect(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").2.framing == .chunked)
    let close = response("HTTP/1.1 200 OK\r\n\r\n").2
    #expect(close.framing == .close && !close.keepAlive)
    #expect(response("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n").2.framing == .none)
    #expect(response("HTTP/1.1 304 Not Modified\r\n\r\n").2.framing == .none)
    #expect(response("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", head: true).2.framing == .none)
    #expect(response("HTTP/1.1 200 Connection established\r\n\r\n", connect: true).2.framing == .tunnel)
    #expect(response("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n").2.framing == .tunnel)
    #expect(response("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").1.value(.status) == "200")
    #expect(response("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n").0 == .error(.contentLengthAndTransferEncoding))
    #expect(response("HTTP/1.1 2OO OK\r\n\r\n").0 == .error(.badStatusLine))
    #expect(response("ICY 200 OK\r\n\r\n").0 == .error(.badStatusLine))
    #expect(response("HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n").0 == .error(.bareLF))
}

/// Decodes `chunks` fed in pieces of `step` bytes; returns the body and the trailers or the error.
private func dechunk(_ text: String, step: Int) -> (String, [(String, String)], Http1Error?) {
    var d = ChunkedDecoder()
    var trailers: HeaderMap?
    var body: [UInt8] = []
    var pending: [UInt8] = []
    let input = Array(text.utf8)
    var fed = 0
    while fed < input.count {
        let n = min(step, input.count - fed)
        pending += input[fed..<(fed + n)]
        fed += n
        let r = pending.withUnsafeBytes { d.decode($0, trailers: &trailers) { body += $0 } }
        switch r {
        case .error(let e): return ("", [], e)
        case .more(let c): pending.removeFirst(c)
        case .done(let c):
            pending.removeFirst(c)
            return (String(decoding: body, as: UTF8.self), trailers?.pairs ?? [], nil)
        }
    }
    return (String(decoding: body, as: UTF8.self), trailers?.pairs ?? [], .badChunkTerminator)
}

@Test func chunkedBodiesDecodeInAnyPieces() {
    let text = "5\r\nhello\r\n1a;name=val;q=\"a b\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 12\r\nContent-Length: 3\r\n\r\n"
    for step in [1, 2, 3, 7, 1000] {
        let (body, trailers, err) = dechunk(text, step: step)
        #expect(err == nil, "step \(step)")
        #expect(body == "helloabcdefghijklmnopqrstuvwxyz")
        #expect(trailers.count == 1 && trailers[0].0 == "x-sum" && trailers[0].1 == "12")  // framing trailer dropped
    }
}

@Test func malformedChunksAreRefused() {
    #expect(dechunk("g\r\n", step: 100).2 == .badChunkSize)
    #expect(dechunk("1g\r\nx\r\n0\r\n\r\n", step: 100).2 == .badChunkSize)
    #expect(dechunk("\r\n", step: 100).2 == .badChunkSize)
    #expect(dechunk("1000000000000000\r\n", step: 100).2 == .chunkSizeOverflow)
    // Leading zeros are not digits that overflow (RFC 9112 7.1).
    #expect(dechunk("0000000000000000005\r\nhello\r\n00\r\n\r\n", step: 3).0 == "hello")
    #expect(dechunk("5;\r\nhello\r\n", step: 100).2 == .badChunkExtension)
    #expect(dechunk("5;a=\"x\r\nhello\r\n", step: 100).2 == .badChunkExtension)
    #expect(dechunk("5 \r\nhello\r\n", step: 100).2 == .badChunkExtension)
    #expect(dechunk("5\nhello\r\n", step: 100).2 == .bareLF)
    #expect(dechunk("5\r\nhelloX\r\n", step: 100).2 == .badChunkTerminator)
    #expect(dechunk("1;" + String(repeating: "a", count: 5000), step: 100).2 == .chunkLineTooLong)
    #expect(dechunk("0\r\nX: a\r\n b\r\n\r\n", step: 100).2 == .obsFold)
    #expect(dechunk("0\r\nX : a\r\n\r\n", step: 100).2 == .whitespaceBeforeColon)
}

@Test func encoderWritesHeadsAndChunks() {
    let pool = BlockPool()
    let out = Buffer(pool: pool)
    let (_, h, _) = request("GET /x HTTP/1.1\r\nHost: h.example\r\nX-A: 1\r\n\r\n")
    h.add("via", "1.1 proxy")
    h.remove("x-a")
    Http1Encoder.writeRequestHead(h, into: out)
    Http1Encoder.writeChunkHeader(26, into: out)
    Http1Encoder.writeChunkEnd(into: out)
    Http1Encoder.writeLastChunk(trailers: nil, into: out)
    let s = String(decoding: out.readable, as: UTF8.self)
    #expect(s == "GET /x HTTP/1.1\r\nhost: h.example\r\nvia: 1.1 proxy\r\n\r\n1a\r\n\r\n0\r\n\r\n")
    let r = Buffer(pool: pool)
    let rh = HeaderMap()
    rh.add("content-length", "0")
    Http1Encoder.writeResponseHead(rh, status: 503, minorVersion: 0, into: r)
    #expect(String(decoding: r.readable, as: UTF8.self) == "HTTP/1.0 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
}

@Test func reviewFindingsOnTheCodec() {
    // Invalid Host values are refused, valid ones (IPv6 literal, port) pass.
    #expect(requestError("GET / HTTP/1.1\r\nHost: a b\r\n\r\n") == .badHost)
    #expect(requestError("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n") == .badHost)
    #expect(request("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").0 != .error(.badHost))
    // The head limit counts every byte of the head, the last LF included.
    let head = "GET / HTTP/1.1\r\nHost: h\r\nX: "
    let fill = 1024 - head.utf8.count - 4
    let exact = head + String(repeating: "a", count: fill) + "\r\n\r\n"
    #expect(exact.utf8.count == 1024)
    #expect(request(exact, maxBytes: 1024).0 == .complete(consumed: 1024))
    #expect(request(head + String(repeating: "a", count: fill + 1) + "\r\n\r\n", maxBytes: 1024).0 == .error(.headersTooLarge))
    // A Content-Length with leading zeros goes on written plainly.
    let (_, h, hd) = request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0003\r\n\r\n")
    #expect(hd.framing == .length(3) && h.value(.contentLength) == "3")
    // Status codes beyond 599 are not HTTP.
    #expect(response("HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n").0 == .error(.badStatusLine))
}

@Test func xForwardedForLinesJoinBeforeTheClientIsAppended() {
    let (_, h, _) = request("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\r\n")
    Array("127.0.0.1".utf8).withUnsafeBytes { h.appendToList(.xForwardedFor, $0) }
    #expect(h.indices(of: .xForwardedFor).count == 1)
    #expect(h.value(.xForwardedFor) == "6.6.6.6, 7.7.7.7, 127.0.0.1")
}

@Test func headerMapCacheReusesAMapOnlyOnceNobodyElseHoldsIt() {
    let cache = HeaderMapCache(limit: 2)
    var held: HeaderMap? = cache.take()
    held!.add("x-a", "1")
    cache.give(held!)
    // Still held by its stream: the next request gets a fresh map.
    let other = cache.take()
    #expect(other !== held && other.count == 0)
    let id = ObjectIdentifier(held!)
    held = nil
    // Let go: reused, and empty.
    let again = cache.take()
    #expect(ObjectIdentifier(again) == id && again.count == 0 && again.first(named: "x-a") == nil)
    // Bounded: a third spare pushes the oldest out; a grown map is not kept.
    cache.give(HeaderMap()); cache.give(HeaderMap()); cache.give(again)
    let big = HeaderMap()
    big.add("x-big", String(repeating: "b", count: 20_000))
    cache.give(big)
    #expect(cache.take() !== big)
}

@Test func knownIndicesSkipRemovedEntriesAndSurviveRemovalWhileIterating() {
    let h = HeaderMap()
    h.add("content-length", "3"); h.add("x", "y"); h.add("content-length", "3"); h.add("content-length", "03")
    #expect(h.count(of: .contentLength) == 3)
    var seen: [Int] = []
    for i in h.all(.contentLength) { seen.append(i); h.remove(at: i) }
    #expect(seen == [0, 2, 3] && h.count(of: .contentLength) == 0 && h.count == 1)
}
