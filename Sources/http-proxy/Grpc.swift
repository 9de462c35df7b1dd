import Common

/// gRPC facts the proxy needs: status codes for local replies, `grpc-timeout`, `grpc-message`.
enum Grpc {
    static let deadlineExceeded = 4
    static let unavailable = 14

    /// The gRPC status for an HTTP status the proxy answers with (Envoy's httpToGrpcStatus,
    /// as the gRPC spec's HTTP mapping).
    static func status(http: Int) -> Int {
        switch http {
        case 400: 13      // INTERNAL
        case 401: 16      // UNAUTHENTICATED
        case 403: 7       // PERMISSION_DENIED
        case 404: 12      // UNIMPLEMENTED
        case 429, 502, 503, 504: 14  // UNAVAILABLE
        default: 2        // UNKNOWN
        }
    }

    /// `application/grpc`, alone or with `+format` or parameters (as Envoy's
    /// isGrpcRequestHeaders): gRPC-Web (`application/grpc-web...`) carries its status in the
    /// body and is not gRPC here.
    static func isGrpcContentType(_ v: UnsafeRawBufferPointer) -> Bool {
        guard v.count >= 16, equalsLiteralIgnoringCase(UnsafeRawBufferPointer(rebasing: v[0..<16]), "application/grpc") else { return false }
        return v.count == 16 || v[16] == UInt8(ascii: "+") || v[16] == UInt8(ascii: ";")
    }

    /// `grpc-timeout` (1 to 8 digits and a unit: H, M, S, m, u, n) in ms, rounded up; nil when
    /// malformed (the header is then ignored, as gRPC servers do).
    static func timeoutMs(_ v: String) -> UInt64? {
        let b = Array(v.utf8)
        guard b.count >= 2, b.count <= 9, let unit = b.last else { return nil }
        var n: UInt64 = 0
        for c in b.dropLast() {
            guard c >= 0x30 && c <= 0x39 else { return nil }
            n = n * 10 + UInt64(c - 0x30)
        }
        switch unit {
        case UInt8(ascii: "H"): return n * 3_600_000
        case UInt8(ascii: "M"): return n * 60_000
        case UInt8(ascii: "S"): return n * 1000
        case UInt8(ascii: "m"): return n
        case UInt8(ascii: "u"): return (n + 999) / 1000
        case UInt8(ascii: "n"): return (n + 999_999) / 1_000_000
        default: return nil
        }
    }

    /// `grpc-message` percent-encoding (the gRPC spec: bytes outside 0x20...0x7E and `%`).
    static func percentEncoded(_ s: String) -> String {
        var out = ""
        for c in s.utf8 {
            if c >= 0x20 && c <= 0x7E && c != 0x25 {
                out.unicodeScalars.append(Unicode.Scalar(c))
            } else {
                let hex = Array("0123456789ABCDEF".utf8)
                out += "%" + String(UnicodeScalar(hex[Int(c >> 4)])) + String(UnicodeScalar(hex[Int(c & 15)]))
            }
        }
        return out
    }
}
