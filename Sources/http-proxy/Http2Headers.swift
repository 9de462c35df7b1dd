import CNghttp2
import Common

/// Header lists for nghttp2 from a `HeaderMap`, shared by the server (responses, trailers) and
/// the client (requests, trailers): pseudo-headers first, connection-specific fields left out
/// (RFC 9113 8.2.2), names lowercase. The nv entries point into the map's store and a scratch
/// block; both live while `body` runs, and nghttp2 copies them in its `submit_*` calls.
enum Http2Headers {
    /// Response or trailer fields, `:status` first when given.
    static func withFields(_ h: HeaderMap, status: Int?, _ body: (UnsafePointer<nghttp2_nv>, Int) -> Void) {
        var pseudo: [(String, String)] = []
        if let status { pseudo.append((":status", String(status))) }
        build(h, pseudo: pseudo, keepTe: false, body)
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
