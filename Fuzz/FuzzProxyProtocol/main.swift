// libFuzzer harness for the PROXY protocol parser. Built by scripts/fuzz.sh with
// -sanitize=fuzzer,address -DFUZZING; a normal build replays the files given as arguments.
import Common
import Glibc

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    switch ProxyProtocol.parse(bytes) {
    case .header(let h, let length):
        precondition(length > 0 && length <= size, "header length outside the input")
        // Whatever parsed must encode and parse back to the same addresses.
        if let s = h.source, let d = h.destination, s.family == d.family {
            let again = ProxyProtocol.encode(version: h.version == 1 ? .v1 : .v2, source: s, destination: d)
            let back = again.withUnsafeBytes { ProxyProtocol.parse($0) }
            guard case .header(let h2, _) = back, h2.source == s, h2.destination == d else {
                preconditionFailure("round trip changed the header")
            }
        }
    case .needMore, .notProxy, .invalid:
        break
    }
    return 0
}

#if FUZZING
/// libFuzzer's driver references this symbol by name.
@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 { fuzzOne(data, size) }
#endif

runFuzzer(fuzzOne)
