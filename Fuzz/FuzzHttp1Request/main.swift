// libFuzzer harness for the HTTP/1.1 request parser and the chunked decoder (Sources/Common/Http).
// Checks, beyond "no crash": the input fed in two pieces parses exactly as in one; a parsed head
// encodes and parses back to the same method, target, authority and framing; a chunked body
// decodes the same in one piece and byte by byte. Built by scripts/fuzz.sh.
import Common

func parseWhole(_ b: UnsafeRawBufferPointer, _ h: HeaderMap, _ head: inout Http1Head) -> Http1HeadParser.Result {
    var p = Http1HeadParser(maxHeadBytes: 2048, maxHeaders: 20)
    return p.parseRequest(b, headers: h, head: &head)
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let h = HeaderMap()
    var head = Http1Head()
    let whole = parseWhole(bytes, h, &head)
    // Fed in two pieces: the first call sees a prefix, the second everything.
    if size > 1 {
        let cut = Int(bytes[0]) % size
        var p = Http1HeadParser(maxHeadBytes: 2048, maxHeaders: 20)
        let h2 = HeaderMap()
        var head2 = Http1Head()
        let first = p.parseRequest(UnsafeRawBufferPointer(rebasing: bytes[0..<cut]), headers: h2, head: &head2)
        if first == .incomplete {
            let second = p.parseRequest(bytes, headers: h2, head: &head2)
            precondition(second == whole, "pieces \(second) vs whole \(whole)")
        }
    }
    guard case .complete(let consumed) = whole else { return 0 }
    precondition(consumed > 0 && consumed <= size, "consumed outside the input")
    checkChunked(bytes, from: consumed, head)
    // Round trip through the encoder (an HTTP/1.0 request may have no Host; 1.1 needs one).
    guard h.has(.authority) else { return 0 }
    let pool = BlockPool(blockSize: 4096, maxFree: 4)
    let out = Buffer(pool: pool)
    Http1Encoder.writeRequestHead(h, into: out)
    let h3 = HeaderMap()
    var head3 = Http1Head()
    var p3 = Http1HeadParser(maxHeadBytes: 1 << 20, maxHeaders: 1000)
    let again = p3.parseRequest(out.readable, headers: h3, head: &head3)
    precondition(again == .complete(consumed: out.count), "re-encoded head did not parse: \(again)")
    precondition(h3.value(.method) == h.value(.method) && h3.value(.path) == h.value(.path)
                 && h3.value(.authority) == h.value(.authority), "round trip changed the request line")
    precondition(head3.framing == head.framing || head.minorVersion == 0, "round trip changed the framing")
    return 0
}

/// A chunked body decodes the same in one piece and byte by byte.
func checkChunked(_ bytes: UnsafeRawBufferPointer, from consumed: Int, _ head: Http1Head) {
    if head.framing == .chunked {
        let rest = UnsafeRawBufferPointer(rebasing: bytes[consumed...])
        var d1 = ChunkedDecoder()
        var body1: [UInt8] = []
        var t1: HeaderMap?
        let r1 = d1.decode(rest, trailers: &t1) { body1 += $0 }
        var d2 = ChunkedDecoder()
        var body2: [UInt8] = []
        var pending: [UInt8] = []
        var r2 = ChunkedDecoder.Result.more(consumed: 0)
        var t2: HeaderMap?
        for b in rest {
            pending.append(b)
            r2 = pending.withUnsafeBytes { d2.decode($0, trailers: &t2) { body2 += $0 } }
            if case .more(let c) = r2 { pending.removeFirst(c) } else { break }
        }
        switch (r1, r2) {
        case (.done, .done):
            precondition(body1 == body2, "chunked body differs by piece size")
            let text = { (t: HeaderMap?) in (t?.pairs ?? []).map { $0.0 + ": " + $0.1 } }
            precondition(text(t1) == text(t2), "chunked trailers differ by piece size")
        case (.error(let a), .error(let b)): precondition(a == b, "chunked error differs by piece size")
        case (.more, .more): precondition(body1 == body2, "chunked prefix differs by piece size")
        default: preconditionFailure("chunked result differs by piece size: \(r1) vs \(r2)")
        }
    }
}

#if FUZZING
/// libFuzzer's driver references this symbol by name.
@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 { fuzzOne(data, size) }
#endif

runFuzzer(fuzzOne)
