// libFuzzer harness for the RESP request parser (Sources/redis-proxy/Protocol/RequestParser.swift).
// Checks, beyond "no crash": every request's range lies in the input and every multibulk
// argument inside its request; the input fed one byte more per call (a slow client) gives
// exactly the results and arguments of feeding it whole; an inline request re-encodes as a
// multibulk request that parses back to the same arguments. Built by scripts/fuzz.sh.
import Common
import RedisProtocol

typealias Step = (RespRequestParser.Result, [[UInt8]])

/// Parses `bytes` to the end (or the first error), each call seeing everything not yet drained
/// when `growing` is false, or one more byte per call when it is true.
func parseAll(_ bytes: UnsafeRawBufferPointer, growing: Bool) -> [Step] {
    var p = RespRequestParser(limits: RespRequestLimits(maxBulkLength: 1 << 20, maxLineLength: 512, maxRequestBytes: 1 << 21))
    var out: [Step] = []
    var start = 0
    var end = growing ? 0 : bytes.count
    while start <= bytes.count && end <= bytes.count {
        let input = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
        let r = p.parse(input)
        switch r {
        case .incomplete:
            if !growing || end == bytes.count { return out }
            end += 1
        case .request(let req):
            precondition(req.range.lowerBound == 0 && req.range.upperBound <= input.count && req.argCount == p.arguments.count && req.argCount > 0,
                         "request range outside the input")
            if !req.isInline {
                for i in 0..<req.argCount { precondition(p.arguments[i].upperBound <= req.range.upperBound, "argument outside its request") }
            }
            out.append((r, (0..<req.argCount).map { i in p.withArgument(i, in: input) { Array($0) } }))
            checkCommandLayer(p, req, input)
            if req.isInline { checkReencoding(p, req, input, out.last?.1 ?? []) }
            start += req.range.upperBound
        case .ignored(let n):
            precondition(n > 0 && n <= input.count, "ignored range outside the input")
            out.append((r, []))
            start += n
        case .error:
            out.append((r, []))
            return out
        }
        if end < start { end = start }
        if !growing { end = bytes.count }
    }
    return out
}

/// The command layer on what the parser let through: the command and subcommand lookups, the
/// arity check, and the key positions a request's own counts give (ZUNION's numkeys near
/// Int64's max once overflowed in the proxy): every key index inside the request.
func checkCommandLayer(_ p: RespRequestParser, _ req: RespRequest, _ input: UnsafeRawBufferPointer) {
    guard var id = p.withArgument(0, in: input, { RedisCommands.lookup($0) }) else { return }
    if case .container = id.kind {
        guard req.argCount >= 2, let sub = p.withArgument(1, in: input, { RedisCommands.lookup(subcommand: $0, of: id) }) else { return }
        id = sub
    }
    _ = id.arityAccepts(req.argCount)
    for k in id.keys(argCount: req.argCount, integerAt: { i in p.withArgument(i, in: input) { string2ll($0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, $0.count) } }) {
        precondition(k >= 1 && k < req.argCount, "key index \(k) outside a request of \(req.argCount) arguments")
    }
}

func checkReencoding(_ p: RespRequestParser, _ req: RespRequest, _ input: UnsafeRawBufferPointer, _ args: [[UInt8]]) {
    let out = Buffer(pool: BlockPool(blockSize: 4096, maxFree: 1))
    p.writeMultibulk(argCount: req.argCount, in: input, into: out)
    var q = RespRequestParser()
    let again = q.parse(out.readable)
    guard case .request(let r2) = again, !r2.isInline, r2.range.upperBound == out.count else {
        preconditionFailure("re-encoded inline request did not parse: \(again)")
    }
    let args2 = (0..<r2.argCount).map { i in q.withArgument(i, in: out.readable) { Array($0) } }
    precondition(args2 == args, "re-encoding changed the arguments")
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let whole = parseAll(bytes, growing: false)
    let pieces = parseAll(bytes, growing: true)
    precondition(whole.count == pieces.count, "\(whole.count) results whole, \(pieces.count) byte by byte")
    for (a, b) in zip(whole, pieces) {
        precondition(a.0 == b.0 && a.1 == b.1, "byte by byte \(b.0) vs whole \(a.0)")
    }
    return 0
}

#if FUZZING
/// libFuzzer's driver references this symbol by name.
@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 { fuzzOne(data, size) }
#endif

runFuzzer(fuzzOne)
