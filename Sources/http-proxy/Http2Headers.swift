import CNghttp2
import Common

/// Header lists for nghttp2 from a `HeaderMap`, shared by the server (responses, trailers) and
/// the client (requests, trailers): pseudo-headers first, connection-specific fields left out
/// (RFC 9113 8.2.2), names lowercase. The nv entries point into the map's store and a scratch
/// block; both live while `body` runs, and nghttp2 copies them in its `submit_*` calls.
enum Http2Headers {
    private static let statusName: StaticString = ":status"

    /// Response or trailer fields, `:status` first when given. No heap allocation: the list is
    /// on the stack (this runs once per response).
    static func withFields(_ h: HeaderMap, status: Int?, _ body: (UnsafePointer<nghttp2_nv>, Int) -> Void) {
        let flags = UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)
        withUnsafeTemporaryAllocation(of: nghttp2_nv.self, capacity: h.count + 1) { nva in
            var n = 0
            var digits: (UInt8, UInt8, UInt8) = (0, 0, 0)
            withUnsafeMutableBytes(of: &digits) { d in
                if let status, status >= 100 && status <= 999 {
                    d[0] = UInt8(0x30 + status / 100); d[1] = UInt8(0x30 + status / 10 % 10); d[2] = UInt8(0x30 + status % 10)
                    nva[n] = nghttp2_nv(name: UnsafeMutablePointer(mutating: statusName.utf8Start), value: d.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                        namelen: 7, valuelen: 3, flags: flags)
                    n += 1
                }
                h.storage.withUnsafeBufferPointer { st in
                    let base = UnsafeMutablePointer(mutating: st.baseAddress)
                    for e in h.entries where !e.removed && !skipped(e.known) {
                        guard let base, e.nameLength > 0 else { continue }
                        let name = base + Int(e.nameStart)
                        for i in 0..<Int(e.nameLength) where name[i] &- 0x41 < 26 { name[i] |= 0x20 }
                        nva[n] = nghttp2_nv(name: name, value: base + Int(e.valueStart), namelen: Int(e.nameLength),
                                            valuelen: Int(e.valueLength), flags: flags)
                        n += 1
                    }
                    body(UnsafePointer(nva.baseAddress!), n)
                }
            }
        }
    }

    /// Pseudo-headers (written separately) and connection-specific fields (RFC 9113 8.2.2).
    @inline(__always) private static func skipped(_ k: KnownHeader) -> Bool {
        switch k {
        case .status, .method, .path, .scheme, .authority, .protocol,
             .connection, .keepAlive, .proxyConnection, .transferEncoding, .upgrade, .http2Settings, .host, .trailer, .te:
            true
        default: false
        }
    }

    /// A request: `:method`, `:scheme`, `:authority`, `:path`, then its fields (`te` only as
    /// `trailers`, the one value HTTP/2 allows).
    static func withRequest(_ h: HeaderMap, scheme: String, _ body: (UnsafePointer<nghttp2_nv>, Int) -> Void) {
        var pseudo: [(String, String)] = [(":method", h.value(.method) ?? "GET"), (":scheme", scheme)]
        if let a = h.value(.authority) { pseudo.append((":authority", a)) }
        pseudo.append((":path", h.value(.path) ?? "/"))
        build(h, pseudo: pseudo, keepTe: true, body)
    }

    private static func build(_ h: HeaderMap, pseudo: [(String, String)], keepTe: Bool, _ body: (UnsafePointer<nghttp2_nv>, Int) -> Void) {
        var scratch: [UInt8] = []
        for (n, v) in pseudo { scratch += n.utf8; scratch += v.utf8 }
        var nva: [nghttp2_nv] = []
        nva.reserveCapacity(h.count + pseudo.count)
        let flags = UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)
        scratch.withUnsafeMutableBufferPointer { sb in
            var off = 0
            for (n, v) in pseudo {
                let nl = n.utf8.count, vl = v.utf8.count
                nva.append(nghttp2_nv(name: sb.baseAddress! + off, value: sb.baseAddress! + off + nl, namelen: nl, valuelen: vl, flags: flags))
                off += nl + vl
            }
            h.storage.withUnsafeBufferPointer { st in
                let base = UnsafeMutablePointer(mutating: st.baseAddress)
                for e in h.entries where !e.removed {
                    switch e.known {
                    case .status, .method, .path, .scheme, .authority, .protocol,
                         .connection, .keepAlive, .proxyConnection, .transferEncoding, .upgrade, .http2Settings, .host, .trailer:
                        continue
                    case .te:
                        guard keepTe, let base else { continue }
                        let v = UnsafeRawBufferPointer(start: base + Int(e.valueStart), count: Int(e.valueLength))
                        if !equalsLiteral(v, "trailers") { continue }
                    default: break
                    }
                    guard let base, e.nameLength > 0 else { continue }
                    let name = base + Int(e.nameStart)
                    // Names must be lowercase in HTTP/2; a mixed-case one (from config) is lowered in place.
                    for i in 0..<Int(e.nameLength) where name[i] &- 0x41 < 26 { name[i] |= 0x20 }
                    nva.append(nghttp2_nv(name: name, value: base + Int(e.valueStart), namelen: Int(e.nameLength),
                                          valuelen: Int(e.valueLength), flags: flags))
                }
                nva.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
            }
        }
    }
}
