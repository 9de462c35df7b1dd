/// PROXY protocol v1 and v2 (haproxy.org's proxy-protocol.txt): parsing what a client (or a
/// tier in front) sends first, and encoding what we send to upstreams. Pure functions over
/// bytes, no I/O; the parser never assumes the header arrives in one read.
public enum ProxyProtocol {
    /// The v2 signature: \r\n\r\n\0\r\nQUIT\n.
    public static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// v1 lines are at most 107 bytes with the CRLF.
    public static let v1MaxLength = 107
    /// The largest v2 header we accept: signature + 4 + 65535 bytes of addresses and TLVs.
    public static let v2MaxLength = 16 + 65535

    /// A parsed header.
    public struct Header: Sendable, Equatable {
        /// The original client and the address it connected to; nil for LOCAL / UNKNOWN.
        public var source: SocketAddress?
        public var destination: SocketAddress?
        public var version: Int
        public init(source: SocketAddress?, destination: SocketAddress?, version: Int) {
            self.source = source; self.destination = destination; self.version = version
        }
    }

    /// What the parser saw in the bytes so far.
    public enum ParseResult: Sendable, Equatable {
        /// Not enough bytes yet to decide.
        case needMore
        /// No PROXY header: the bytes do not start like one (only meaningful in optional mode).
        case notProxy
        /// A malformed header: the connection must be closed.
        case invalid(String)
        /// A header of `length` bytes.
        case header(Header, length: Int)
    }

    /// Parses the start of a connection's bytes.
    public static func parse(_ b: UnsafeRawBufferPointer) -> ParseResult {
        if b.isEmpty { return .needMore }
        // Decide between v1, v2 and neither on the prefix seen so far.
        let v1Prefix: [UInt8] = Array("PROXY ".utf8)
        let n1 = min(b.count, v1Prefix.count)
        if (0..<n1).allSatisfy({ b[$0] == v1Prefix[$0] }) {
            return n1 < v1Prefix.count ? .needMore : parseV1(b)
        }
        let n2 = min(b.count, v2Signature.count)
        if (0..<n2).allSatisfy({ b[$0] == v2Signature[$0] }) {
            return n2 < v2Signature.count ? .needMore : parseV2(b)
        }
        return .notProxy
    }

    static func parseV1(_ b: UnsafeRawBufferPointer) -> ParseResult {
        // Find CRLF within the first 107 bytes.
        var end = -1
        let limit = min(b.count, v1MaxLength)
        var i = 0
        while i < limit {
            if b[i] == 0x0D {
                if i + 1 == limit { break }
                if b[i + 1] == 0x0A { end = i; break }
                return .invalid("v1: CR without LF")
            }
            if b[i] == 0x0A || b[i] == 0 { return .invalid("v1: bad byte in header line") }
            i += 1
        }
        if end < 0 {
            return b.count >= v1MaxLength ? .invalid("v1: header longer than 107 bytes") : .needMore
        }
        let line = String(decoding: UnsafeRawBufferPointer(rebasing: b[0..<end]), as: UTF8.self)
        let parts = line.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count >= 2 else { return .invalid("v1: too few fields") }
        switch parts[1] {
        case "UNKNOWN":
            return .header(Header(source: nil, destination: nil, version: 1), length: end + 2)
        case "TCP4", "TCP6":
            guard parts.count == 6 else { return .invalid("v1: expected 6 fields") }
            let v6 = parts[1] == "TCP6"
            guard let sp = port(parts[4]), let dp = port(parts[5]) else { return .invalid("v1: bad port") }
            let wrap: (Substring) -> String = { v6 ? "[\($0)]" : String($0) }
            guard !parts[2].contains(":") || v6, !parts[3].contains(":") || v6,
                  let src = try? SocketAddress.parse("\(wrap(parts[2])):\(sp)"),
                  let dst = try? SocketAddress.parse("\(wrap(parts[3])):\(dp)"),
                  src.family == (v6 ? .inet6 : .inet), dst.family == src.family
            else { return .invalid("v1: bad address") }
            return .header(Header(source: src, destination: dst, version: 1), length: end + 2)
        default:
            return .invalid("v1: unknown protocol \"\(parts[1].prefix(16))\"")
        }
    }

    /// Ports in v1 are decimal without leading zeros, 0...65535.
    static func port(_ s: Substring) -> Int? {
        guard !s.isEmpty, s.count <= 5, s.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              !(s.count > 1 && s.first == "0"), let v = Int(s), v <= 65535 else { return nil }
        return v
    }

    static func parseV2(_ b: UnsafeRawBufferPointer) -> ParseResult {
        guard b.count >= 16 else { return .needMore }
        let verCmd = b[12]
        guard verCmd >> 4 == 2 else { return .invalid("v2: version \(verCmd >> 4)") }
        let cmd = verCmd & 0x0F
        guard cmd <= 1 else { return .invalid("v2: command \(cmd)") }
        let fam = b[13]
        let len = Int(b[14]) << 8 | Int(b[15])
        let total = 16 + len
        guard b.count >= total else { return .needMore }
        if cmd == 0 {  // LOCAL: health checks from the tier in front; keep the real addresses.
            return .header(Header(source: nil, destination: nil, version: 2), length: total)
        }
        switch fam {
        case 0x11, 0x12:  // TCP4, UDP4
            guard len >= 12 else { return .invalid("v2: short IPv4 block") }
            let src = SocketAddress(ipv4: in_addr(b, 16), port: UInt16(b[24]) << 8 | UInt16(b[25]))
            let dst = SocketAddress(ipv4: in_addr(b, 20), port: UInt16(b[26]) << 8 | UInt16(b[27]))
            return .header(Header(source: src, destination: dst, version: 2), length: total)
        case 0x21, 0x22:  // TCP6, UDP6
            guard len >= 36 else { return .invalid("v2: short IPv6 block") }
            let src = SocketAddress(ipv6: in6_addr(b, 16), port: UInt16(b[48]) << 8 | UInt16(b[49]))
            let dst = SocketAddress(ipv6: in6_addr(b, 32), port: UInt16(b[50]) << 8 | UInt16(b[51]))
            return .header(Header(source: src, destination: dst, version: 2), length: total)
        case 0x00, 0x31, 0x32:  // UNSPEC, UNIX: addresses not usable as IP; served as-is.
            return .header(Header(source: nil, destination: nil, version: 2), length: total)
        default:
            return .invalid("v2: address family 0x\(String(fam, radix: 16))")
        }
    }

    private static func in_addr(_ b: UnsafeRawBufferPointer, _ off: Int) -> Glibc.in_addr {
        var a = Glibc.in_addr()
        withUnsafeMutableBytes(of: &a) { for i in 0..<4 { $0[i] = b[off + i] } }
        return a
    }

    private static func in6_addr(_ b: UnsafeRawBufferPointer, _ off: Int) -> Glibc.in6_addr {
        var a = Glibc.in6_addr()
        withUnsafeMutableBytes(of: &a) { for i in 0..<16 { $0[i] = b[off + i] } }
        return a
    }

    /// Encodes a header for `source` → `destination`. Mixed or unix families encode as
    /// UNKNOWN (v1) / LOCAL (v2) per the spec.
    public static func encode(version: ProxyProtocolVersion, source: SocketAddress?, destination: SocketAddress?) -> [UInt8] {
        let usable = source != nil && destination != nil && source!.family == destination!.family && source!.family != .unix
        switch version {
        case .v1:
            guard usable, let s = source, let d = destination else { return Array("PROXY UNKNOWN\r\n".utf8) }
            let proto = s.family == .inet ? "TCP4" : "TCP6"
            return Array("PROXY \(proto) \(s.host) \(d.host) \(s.port) \(d.port)\r\n".utf8)
        case .v2:
            var out = v2Signature
            guard usable, let s = source, let d = destination else {
                out += [0x20, 0x00, 0x00, 0x00]
                return out
            }
            let v4 = s.family == .inet
            out += [0x21, v4 ? 0x11 : 0x21, 0x00, v4 ? 12 : 36]
            out += s.ipBytes
            out += d.ipBytes
            out += [UInt8(s.port >> 8), UInt8(s.port & 0xff), UInt8(d.port >> 8), UInt8(d.port & 0xff)]
            return out
        }
    }
}

import Glibc
