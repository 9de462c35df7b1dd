// libFuzzer harness for the listener filters' parsers: the PROXY protocol header and the TLS
// ClientHello (SNI, ALPN), both fed every input. Built by scripts/fuzz.sh with
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
    switch ClientHello.parse(bytes) {
    case .hello(let h):
        // A name is a lowercased host name, and bytes after a complete hello change nothing.
        if let n = h.serverName {
            precondition(!n.isEmpty && n.utf8.count <= 253, "server name length")
            precondition(n.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E },
                         "server name bytes")
            var t = ServerNameTable()
            _ = t.add("*.com", chain: 0)
            _ = t.add(n, chain: 1)
            precondition(t.match(n) == 1, "exact name not matched")
        }
        var longer = Array(bytes)
        longer += [0x16, 0x03, 0x01, 0x00, 0x05]
        precondition(longer.withUnsafeBytes { ClientHello.parse($0) } == .hello(h), "trailing bytes changed the hello")
    case .needMore, .notTls, .invalid, .tooLarge:
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
