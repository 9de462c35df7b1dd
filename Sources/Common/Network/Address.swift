import Glibc

/// A socket address: IPv4, IPv6 or a unix path. Immutable and `Sendable`; parsed once at
/// config time, never in the data path.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// Raw sockaddr bytes (sockaddr_in, sockaddr_in6 or sockaddr_un).
    public let storage: [UInt8]

    public enum Family: Sendable { case inet, inet6, unix }
    public var family: Family {
        switch storage.withUnsafeBytes({ $0.load(as: sa_family_t.self) }) {
        case sa_family_t(AF_INET): return .inet
        case sa_family_t(AF_INET6): return .inet6
        default: return .unix
        }
    }

    public init(bytes: UnsafeRawPointer, length: Int) {
        storage = Array(UnsafeRawBufferPointer(start: bytes, count: length))
    }

    public init(ipv4 addr: in_addr, port: UInt16) {
        var s = sockaddr_in()
        s.sin_family = sa_family_t(AF_INET)
        s.sin_port = port.bigEndian
        s.sin_addr = addr
        storage = withUnsafeBytes(of: &s) { Array($0) }
    }

    public init(ipv6 addr: in6_addr, port: UInt16) {
        var s = sockaddr_in6()
        s.sin6_family = sa_family_t(AF_INET6)
        s.sin6_port = port.bigEndian
        s.sin6_addr = addr
        storage = withUnsafeBytes(of: &s) { Array($0) }
    }

    public init?(unixPath: String) {
        var s = sockaddr_un()
        s.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(unixPath.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: s.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &s.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
        }
        let len = MemoryLayout<sa_family_t>.size + bytes.count + 1
        storage = withUnsafeBytes(of: &s) { Array($0.prefix(len)) }
    }

    /// Parses `host:port`, `[v6]:port`, `:port` (all interfaces), or `unix:/path`. Host names are
    /// not resolved here (numeric addresses only); `localhost` maps to 127.0.0.1.
    public static func parse(_ text: String) throws(AddressError) -> SocketAddress {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard let a = SocketAddress(unixPath: path) else { throw .invalid("\"\(text)\": bad unix socket path") }
            return a
        }
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .invalid("\"\(text)\": missing ']'") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw .invalid("\"\(text)\": expected [address]:port") }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw .invalid("\"\(text)\": expected host:port")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.utf8.contains(UInt8(ascii: ":")) { throw .invalid("\"\(text)\": IPv6 addresses need brackets, [::1]:port") }
        }
        guard let port = Int(portText), !portText.isEmpty else { throw .invalid("\"\(text)\": port is not a number") }
        guard (0...65535).contains(port) else { throw .invalid("\"\(text)\": port out of range") }
        if host.isEmpty { host = "0.0.0.0" }
        if host == "localhost" { host = "127.0.0.1" }
        var a4 = in_addr()
        if inet_pton(AF_INET, String(host), &a4) == 1 { return SocketAddress(ipv4: a4, port: UInt16(port)) }
        var a6 = in6_addr()
        if inet_pton(AF_INET6, String(host), &a6) == 1 { return SocketAddress(ipv6: a6, port: UInt16(port)) }
        throw .invalid("\"\(text)\": not a numeric IP address (host names need DNS discovery)")
    }

    public var port: UInt16 {
        get {
            storage.withUnsafeBytes { p in
                switch family {
                case .inet: return UInt16(bigEndian: p.load(as: sockaddr_in.self).sin_port)
                case .inet6: return UInt16(bigEndian: p.load(fromByteOffset: 0, as: sockaddr_in6.self).sin6_port)
                case .unix: return 0
                }
            }
        }
    }

    /// The same address with another port.
    public func with(port: UInt16) -> SocketAddress {
        var copy = storage
        if family != .unix { copy[2] = UInt8(port >> 8); copy[3] = UInt8(port & 0xff) }
        return copy.withUnsafeBytes { SocketAddress(bytes: $0.baseAddress!, length: $0.count) }
    }

    /// The IP bytes (4 or 16), empty for unix.
    public var ipBytes: [UInt8] {
        switch family {
        case .inet: return Array(storage[4..<8])
        case .inet6: return Array(storage[8..<24])
        case .unix: return []
        }
    }

    /// Whether only this host can connect: 127.0.0.0/8, `::1`, an IPv4-mapped 127.x address,
    /// or a unix socket. `0.0.0.0` and `::` (every interface) are not.
    public var isLoopback: Bool {
        storage.withUnsafeBytes { p -> Bool in
            switch family {
            case .inet:
                return UInt32(bigEndian: p.load(as: sockaddr_in.self).sin_addr.s_addr) >> 24 == 127
            case .inet6:
                var a = p.load(as: sockaddr_in6.self).sin6_addr
                return withUnsafeBytes(of: &a) { b in
                    if b.prefix(15).allSatisfy({ $0 == 0 }) && b[15] == 1 { return true }
                    return b.prefix(10).allSatisfy { $0 == 0 } && b[10] == 0xff && b[11] == 0xff && b[12] == 127
                }
            case .unix:
                return true
            }
        }
    }

    /// The host part as text ("127.0.0.1", "::1", or the unix path).
    public var host: String {
        storage.withUnsafeBytes { p -> String in
            var buf = [CChar](repeating: 0, count: 64)
            switch family {
            case .inet:
                var a = p.load(as: sockaddr_in.self).sin_addr
                inet_ntop(AF_INET, &a, &buf, 64)
            case .inet6:
                var a = p.load(as: sockaddr_in6.self).sin6_addr
                inet_ntop(AF_INET6, &a, &buf, 64)
            case .unix:
                let path = p.dropFirst(MemoryLayout<sa_family_t>.size).prefix { $0 != 0 }
                return String(decoding: path, as: UTF8.self)
            }
            return String(cString: buf)
        }
    }

    public var description: String {
        switch family {
        case .inet: return "\(host):\(port)"
        case .inet6: return "[\(host)]:\(port)"
        case .unix: return "unix:\(host)"
        }
    }

    /// Calls `body` with a sockaddr pointer and its length.
    public func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        storage.withUnsafeBytes { p in
            body(p.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(p.count))
        }
    }

    /// The local address of a socket.
    public static func local(of fd: Int32) -> SocketAddress? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard rc == 0 else { return nil }
        return withUnsafeBytes(of: &ss) { SocketAddress(bytes: $0.baseAddress!, length: Int(len)) }
    }
}

/// Why an address did not parse.
public enum AddressError: Error, Sendable, CustomStringConvertible {
    case invalid(String)
    public var description: String { if case .invalid(let m) = self { return m }; return "" }
}
