// libFuzzer harness for the reply reader over hiredis (Sources/redis-proxy/Protocol/ReplyReader.swift).
// Checks, beyond "no crash": reply lengths add up to at most the input; element ranges lie inside
// their reply, in order and without gaps; feeding byte by byte, or in two pieces, gives exactly
// the results of feeding everything at once. Built by scripts/fuzz.sh.
import Common
import RedisProtocol

typealias Step = (RespReplyReader.Result, [Range<Int>])

func readAll(_ bytes: UnsafeRawBufferPointer, pieces: [Int]) -> [Step] {
    let r = RespReplyReader(maxReplyBytes: 2048)
    var out: [Step] = []
    var at = 0
    var total = 0
    for n in pieces {
        r.feed(UnsafeRawBufferPointer(rebasing: bytes[at..<(at + n)]))
        at += n
        while true {
            r.collectElements = true
            let res = r.next()
            if res == .incomplete { break }
            out.append((res, r.elementRanges))
            guard case .reply(let reply) = res else { return out }
            precondition(reply.length > 0, "empty reply")
            total += reply.length
            precondition(total <= at, "replies longer than the input fed")
            var expect = -1
            for e in r.elementRanges {
                precondition(e.lowerBound >= 0 && e.upperBound <= reply.length && e.lowerBound < e.upperBound, "element outside its reply")
                precondition(expect < 0 || e.lowerBound == expect, "gap between elements")
                expect = e.upperBound
            }
            precondition(r.elementRanges.isEmpty || (reply.type == .array && r.elementRanges.count == reply.elementCount
                                                      && expect == reply.length), "elements do not cover the array")
        }
    }
    return out
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let whole = readAll(bytes, pieces: [size])
    let single = readAll(bytes, pieces: Array(repeating: 1, count: size))
    precondition(whole.map(\.0) == single.map(\.0) && whole.map(\.1) == single.map(\.1),
                 "byte by byte \(single.map(\.0)) vs whole \(whole.map(\.0))")
    if size > 1 {
        let cut = Int(bytes[0]) % size
        let two = readAll(bytes, pieces: [cut, size - cut])
        precondition(two.map(\.0) == whole.map(\.0), "two pieces differ from whole")
    }
    return 0
}

#if FUZZING
/// libFuzzer's driver references this symbol by name.
@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 { fuzzOne(data, size) }
#endif

runFuzzer(fuzzOne)
