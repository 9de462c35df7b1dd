import Testing
@testable import Common

private func be16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

/// A ClientHello handshake message with optional SNI and ALPN extensions.
private func helloMessage(sni: String?, alpn: [String] = [], extra: [UInt8] = []) -> [UInt8] {
    var body: [UInt8] = [3, 3] + [UInt8](repeating: 7, count: 32)
    body += [32] + [UInt8](repeating: 1, count: 32)          // session id
    body += be16(4) + [0x13, 0x01, 0x13, 0x02]                // cipher suites
    body += [1, 0]                                            // compression: null
    var ext: [UInt8] = []
    if let sni {
        let name = Array(sni.utf8)
        let entry: [UInt8] = [0] + be16(name.count) + name
        let list = be16(entry.count) + entry
        ext += be16(0) + be16(list.count) + list
    }
    if !alpn.isEmpty {
        var l: [UInt8] = []
        for p in alpn { l += [UInt8(p.utf8.count)] + Array(p.utf8) }
        let list = be16(l.count) + l
        ext += be16(16) + be16(list.count) + list
    }
    ext += be16(43) + be16(3) + [2, 3, 4]                     // supported_versions
    ext += extra
    body += be16(ext.count) + ext
    return [1, UInt8(body.count >> 16), UInt8(body.count >> 8 & 0xFF), UInt8(body.count & 0xFF)] + body
}

/// The message in TLS records of at most `recordSize` bytes.
private func records(_ m: [UInt8], recordSize: Int = 16384) -> [UInt8] {
    var out: [UInt8] = []
    var i = 0
    while i < m.count {
        let n = min(recordSize, m.count - i)
        out += [0x16, 3, 1] + be16(n) + m[i..<(i + n)]
        i += n
    }
    return out
}

private func parse(_ b: [UInt8]) -> ClientHello.ParseResult { b.withUnsafeBytes { ClientHello.parse($0) } }

@Test func helloGivesServerNameAndAlpn() {
    let r = parse(records(helloMessage(sni: "API.Example.com.", alpn: ["h2", "http/1.1"])))
    #expect(r == .hello(.init(serverName: "api.example.com", alpn: ["h2", "http/1.1"])))
}

@Test func helloWithoutSni() {
    #expect(parse(records(helloMessage(sni: nil))) == .hello(.init(serverName: nil, alpn: [])))
}

@Test func helloNeedsMoreAtEveryCutAndSpansRecords() {
    let m = helloMessage(sni: "a.example.com", alpn: ["h2"])
    for size in [16384, 100, 7] {
        let full = records(m, recordSize: size)
        if full.count / (size + 5) + 1 > ClientHello.maxRecords {
            #expect(parse(full) == .invalid("ClientHello split over more than \(ClientHello.maxRecords) records"))
            continue
        }
        #expect(parse(full) == .hello(.init(serverName: "a.example.com", alpn: ["h2"])), "records of \(size)")
        for cut in 1..<full.count { #expect(parse(Array(full[0..<cut])) == .needMore, "cut \(cut) of records of \(size)") }
    }
}

@Test func notTlsIsDecidedOnTheFirstBytes() {
    #expect(parse(Array("GET / HTTP/1.1\r\n".utf8)) == .notTls)
    #expect(parse([0x16, 0x02]) == .notTls)
    #expect(parse([0x16]) == .needMore)
}

@Test(arguments: [
    ("bad host name", helloMessage(sni: "bad name.com")),
    ("empty label", helloMessage(sni: "a..b")),
    ("not a ClientHello", [2, 0, 0, 4, 3, 3, 0, 0]),
    ("repeated extension", helloMessage(sni: "x.com", extra: be16(43) + be16(3) + [2, 3, 4])),
    ("truncated extension", helloMessage(sni: "x.com", extra: be16(99) + be16(10))),
] as [(String, [UInt8])])
func malformedHellosAreInvalid(_ name: String, _ m: [UInt8]) {
    guard case .invalid = parse(records(m)) else { Issue.record("\(name): not refused"); return }
}

@Test func oversizedHelloIsTooLarge() {
    #expect(parse([0x16, 3, 1, 0, 4, 1, 0x01, 0x00, 0x00]) == .tooLarge)  // 64 KiB announced
}

@Test func serverNameTableOrder() {
    var t = ServerNameTable()
    let added = [t.add("api.example.com", chain: 0), t.add("*.example.com", chain: 1),
                 t.add("*.b.example.com", chain: 2), t.add("*.example.com", chain: 3)]
    #expect(added == [true, true, true, false])
    #expect(t.match("api.example.com") == 0)
    #expect(t.match("web.example.com") == 1)
    #expect(t.match("x.b.example.com") == 2)      // longest wildcard wins
    #expect(t.match("x.y.example.com") == 1)      // wildcards cover deeper names
    #expect(t.match("example.com") == nil)        // *.example.com is not example.com
    #expect(t.match(nil) == nil)
    t.setDefault(4)
    #expect(t.match("other.org") == 4 && t.match(nil) == 4)
}
