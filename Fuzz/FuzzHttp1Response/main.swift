// libFuzzer harness for the HTTP/1.1 response parser (what an upstream sends is untrusted too).
// The first byte picks the request kind (GET, HEAD, CONNECT); the rest is the response. Checks:
// pieces parse as the whole; a parsed head re-encodes and parses back to the same status and
// framing. Built by scripts/fuzz.sh.
import Common

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 1 else { return 0 }
    let kind = data![0] % 3
    let bytes = UnsafeRawBufferPointer(start: data! + 1, count: size - 1)
    let isHead = kind == 1, isConnect = kind == 2
    func parse(_ p: inout Http1HeadParser, _ b: UnsafeRawBufferPointer, _ h: HeaderMap, _ head: inout Http1Head) -> Http1HeadParser.Result {
        p.parseResponse(b, headers: h, head: &head, requestWasHead: isHead, requestWasConnect: isConnect)
    }
    var p = Http1HeadParser(maxHeadBytes: 2048, maxHeaders: 20)
    let h = HeaderMap()
    var head = Http1Head()
    let whole = parse(&p, bytes, h, &head)
    if bytes.count > 1 {
        let cut = Int(bytes[0]) % bytes.count
        var p2 = Http1HeadParser(maxHeadBytes: 2048, maxHeaders: 20)
        let h2 = HeaderMap()
        var head2 = Http1Head()
        if parse(&p2, UnsafeRawBufferPointer(rebasing: bytes[0..<cut]), h2, &head2) == .incomplete {
            precondition(parse(&p2, bytes, h2, &head2) == whole, "pieces differ from whole")
        }
    }
    guard case .complete(let consumed) = whole else { return 0 }
    precondition(consumed > 0 && consumed <= bytes.count, "consumed outside the input")
    let out = Buffer(pool: BlockPool(blockSize: 4096, maxFree: 4))
    Http1Encoder.writeResponseHead(h, status: head.status, minorVersion: head.minorVersion, into: out)
    var p3 = Http1HeadParser(maxHeadBytes: 1 << 20, maxHeaders: 1000)
    let h3 = HeaderMap()
    var head3 = Http1Head()
    precondition(parse(&p3, out.readable, h3, &head3) == .complete(consumed: out.count), "re-encoded head did not parse")
    precondition(head3.status == head.status && head3.framing == head.framing, "round trip changed status or framing")
    return 0
}

#if FUZZING
/// libFuzzer's driver references this symbol by name.
@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 { fuzzOne(data, size) }
#endif

runFuzzer(fuzzOne)
