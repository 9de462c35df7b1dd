import Testing
@testable import Common

private func parse(_ bytes: [UInt8]) -> ProxyProtocol.ParseResult {
    bytes.withUnsafeBytes { ProxyProtocol.parse($0) }
}

@Test func v1HeaderParsesAddressesAndLength() throws {
    let text = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET"
    guard case .header(let h, let len) = parse(Array(text.utf8)) else { Issue.record("no header"); return }
    #expect(len == text.utf8.count - 3)
    #expect(h.source?.description == "192.0.2.1:56324")
    #expect(h.destination?.description == "198.51.100.2:443")
    #expect(h.version == 1)
}

@Test func v1Tcp6AndUnknown() {
    guard case .header(let h, _) = parse(Array("PROXY TCP6 2001:db8::1 ::1 1 2\r\n".utf8)) else { Issue.record("no header"); return }
    #expect(h.source?.description == "[2001:db8::1]:1")
    guard case .header(let u, let n) = parse(Array("PROXY UNKNOWN ffff\r\n".utf8)) else { Issue.record("no header"); return }
    #expect(u.source == nil && n == 20)
}

@Test func v1NeedsMoreUntilCRLF() {
    let full = Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8)
    for cut in 1..<full.count { #expect(parse(Array(full[0..<cut])) == .needMore, "cut \(cut)") }
}

@Test(arguments: [
    "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
])
func v1Malformed(_ text: String) {
    if case .invalid = parse(Array(text.utf8)) {} else { Issue.record("accepted \(text.debugDescription)") }
}

@Test func v1TooLongIsInvalid() {
    if case .invalid = parse(Array(("PROXY " + String(repeating: "A", count: 120)).utf8)) {} else { Issue.record("accepted") }
}

@Test func notProxyIsRecognisedEarly() {
    #expect(parse(Array("GET / HTTP/1.1\r\n".utf8)) == .notProxy)
    #expect(parse([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0B]) == .notProxy)
    #expect(parse(Array("PRO".utf8)) == .needMore)
}

@Test func v2RoundTripIPv4AndIPv6() throws {
    for (s, d) in [("10.1.2.3:4000", "10.9.9.9:80"), ("[2001:db8::7]:4000", "[::1]:443")] {
        let src = try SocketAddress.parse(s), dst = try SocketAddress.parse(d)
        var bytes = ProxyProtocol.encode(version: .v2, source: src, destination: dst)
        let n = bytes.count
        bytes += Array("tail".utf8)
        guard case .header(let h, let len) = parse(bytes) else { Issue.record("no header"); return }
        #expect(len == n)
        #expect(h.source == src && h.destination == dst && h.version == 2)
        for cut in 1..<n { #expect(parse(Array(bytes[0..<cut])) == .needMore) }
    }
}

@Test func v1RoundTrip() throws {
    let src = try SocketAddress.parse("[2001:db8::7]:4000"), dst = try SocketAddress.parse("[::1]:443")
    let bytes = ProxyProtocol.encode(version: .v1, source: src, destination: dst)
    guard case .header(let h, _) = parse(bytes) else { Issue.record("no header"); return }
    #expect(h.source == src && h.destination == dst)
}

@Test func v2LocalAndMixedFamilies() throws {
    let local = ProxyProtocol.encode(version: .v2, source: nil, destination: nil)
    guard case .header(let h, let len) = parse(local) else { Issue.record("no header"); return }
    #expect(h.source == nil && len == 16)
    let mixed = ProxyProtocol.encode(version: .v1, source: try .parse("1.2.3.4:1"), destination: try .parse("[::1]:2"))
    #expect(String(decoding: mixed, as: UTF8.self) == "PROXY UNKNOWN\r\n")
}

@Test func v2BadVersionCommandFamilyAndShortBlocks() {
    var base = ProxyProtocol.v2Signature
    #expect({ if case .invalid = parse(base + [0x31, 0x11, 0, 12] + Array(repeating: 0, count: 12)) { return true }; return false }())
    #expect({ if case .invalid = parse(base + [0x22, 0x11, 0, 12] + Array(repeating: 0, count: 12)) { return true }; return false }())
    #expect({ if case .invalid = parse(base + [0x21, 0x11, 0, 4] + Array(repeating: 0, count: 4)) { return true }; return false }())
    #expect({ if case .invalid = parse(base + [0x21, 0x41, 0, 0]) { return true }; return false }())
    base += [0x21, 0x11, 0xff, 0xff]
    #expect(parse(base) == .needMore)
}
