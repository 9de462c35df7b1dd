import CNghttp2

/// One `grpc.health.v1.Health/Check` call over HTTP/2 cleartext (prior knowledge), on a socket
/// the probe already connected. nghttp2 frames it; the probe moves the bytes (`output()` to
/// send, `input(_:)` for what arrived). Passing needs HTTP 200, grpc-status 0 and SERVING.
final class GrpcHealthExchange {
    private var session: OpaquePointer?
    /// The request message: a gRPC frame holding HealthCheckRequest { service }.
    private let body: [UInt8]
    private var bodySent = 0
    private var status = 0
    private var grpcStatus: Int?
    private var grpcMessage = ""
    private var response: [UInt8] = []
    /// Set once the stream closed: the verdict.
    private(set) var result: CheckResult?

    init?(service: String, authority: String) {
        let name = Array(service.utf8)
        var msg: [UInt8] = []
        if !name.isEmpty { msg = [0x0A] + varint(UInt64(name.count)) + name }  // field 1, length-delimited
        body = [0, UInt8(msg.count >> 24 & 0xff), UInt8(msg.count >> 16 & 0xff), UInt8(msg.count >> 8 & 0xff), UInt8(msg.count & 0xff)] + msg

        var cbs: OpaquePointer?
        guard nghttp2_session_callbacks_new(&cbs) == 0 else { return nil }
        defer { nghttp2_session_callbacks_del(cbs) }
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, _, name, namelen, value, valuelen, _, user in
            let me = Unmanaged<GrpcHealthExchange>.fromOpaque(user!).takeUnretainedValue()
            let n = String(decoding: UnsafeBufferPointer(start: name, count: namelen), as: UTF8.self)
            let v = String(decoding: UnsafeBufferPointer(start: value, count: valuelen), as: UTF8.self)
            switch n {
            case ":status": me.status = Int(v) ?? 0
            case "grpc-status": me.grpcStatus = Int(v)
            case "grpc-message": me.grpcMessage = String(v.prefix(200))
            default: break
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, _, data, len, user in
            let me = Unmanaged<GrpcHealthExchange>.fromOpaque(user!).takeUnretainedValue()
            if me.response.count + len <= 64 * 1024 { me.response += UnsafeBufferPointer(start: data, count: len) }
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, _, errorCode, user in
            let me = Unmanaged<GrpcHealthExchange>.fromOpaque(user!).takeUnretainedValue()
            me.result = me.verdict(resetCode: errorCode)
            return 0
        }
        guard nghttp2_session_client_new(&session, cbs, Unmanaged.passUnretained(self).toOpaque()) == 0 else { return nil }
        _ = nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil, 0)

        let headers: [(String, String)] = [(":method", "POST"), (":scheme", "http"), (":path", "/grpc.health.v1.Health/Check"),
                                           (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers"),
                                           ("user-agent", "proxies-health-checker/\(toolkitVersion)")]
        var prd = nghttp2_data_provider()
        prd.read_callback = { _, _, buf, length, flags, _, user in
            let me = Unmanaged<GrpcHealthExchange>.fromOpaque(user!).takeUnretainedValue()
            let n = min(length, me.body.count - me.bodySent)
            me.body.withUnsafeBufferPointer { buf!.update(from: $0.baseAddress! + me.bodySent, count: n) }
            me.bodySent += n
            if me.bodySent == me.body.count { flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue) }
            return n
        }
        // Names and values in one block that lives until nghttp2 has copied them (in submit).
        let bytes = headers.flatMap { Array($0.0.utf8) + Array($0.1.utf8) }
        let block = UnsafeMutablePointer<UInt8>.allocate(capacity: bytes.count)
        defer { block.deallocate() }
        block.initialize(from: bytes, count: bytes.count)
        var nva: [nghttp2_nv] = []
        var off = 0
        for (n, v) in headers {
            let nl = n.utf8.count, vl = v.utf8.count
            nva.append(nghttp2_nv(name: block + off, value: block + off + nl, namelen: nl, valuelen: vl,
                                  flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
            off += nl + vl
        }
        let stream = nghttp2_submit_request(session, nil, &nva, nva.count, &prd, nil)
        if stream < 0 { return nil }
    }

    deinit { if let s = session { nghttp2_session_del(s) } }

    /// Bytes nghttp2 wants on the wire now.
    func output() -> [UInt8] {
        var out: [UInt8] = []
        while true {
            var p: UnsafePointer<UInt8>?
            let n = nghttp2_session_mem_send(session, &p)
            if n <= 0 { break }
            out += UnsafeBufferPointer(start: p, count: n)
        }
        return out
    }

    /// Feeds received bytes; false when the peer spoke something that is not HTTP/2.
    func input(_ bytes: [UInt8]) -> Bool {
        let n = bytes.withUnsafeBufferPointer { nghttp2_session_mem_recv(session, $0.baseAddress, $0.count) }
        if n < 0 && result == nil { result = .l7Response("not an HTTP/2 gRPC server (\(String(cString: nghttp2_strerror(Int32(n)))))") }
        return n >= 0
    }

    private func verdict(resetCode: UInt32) -> CheckResult {
        if resetCode != 0 { return .l7Response("stream reset (HTTP/2 error \(resetCode))") }
        if status != 200 { return .l7Response("HTTP status \(status)") }
        guard let g = grpcStatus else { return .l7Response("no grpc-status") }
        if g != 0 { return .l7Response("grpc-status \(g)\(grpcMessage.isEmpty ? "" : " " + grpcMessage)") }
        // One gRPC frame: flag, 4-byte length, HealthCheckResponse { status = 1 (varint) }.
        guard response.count >= 5, response[0] == 0 else { return .l7Response("bad gRPC response frame") }
        let len = Int(response[1]) << 24 | Int(response[2]) << 16 | Int(response[3]) << 8 | Int(response[4])
        guard response.count >= 5 + len else { return .l7Response("short gRPC response") }
        var serving = 0  // proto3 default: UNKNOWN
        var i = 5
        while i < 5 + len {
            let tag = response[i]; i += 1
            guard let (v, used) = readVarint(response, i, end: 5 + len) else { return .l7Response("bad protobuf") }
            if tag == 0x08 { serving = Int(v); i += used } else if tag & 7 == 0 { i += used } else if tag & 7 == 2 { i += used + Int(v) } else {
                return .l7Response("bad protobuf")
            }
        }
        let names = [0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"]
        return serving == 1 ? .passed(latencyMs: 0) : .l7Response("gRPC health \(names[serving] ?? String(serving))")
    }
}

private func varint(_ v: UInt64) -> [UInt8] {
    var v = v, out: [UInt8] = []
    repeat { var b = UInt8(v & 0x7f); v >>= 7; if v != 0 { b |= 0x80 }; out.append(b) } while v != 0
    return out
}

private func readVarint(_ b: [UInt8], _ start: Int, end: Int) -> (UInt64, Int)? {
    var v: UInt64 = 0, shift: UInt64 = 0, i = start
    while i < end && shift < 64 {
        let c = b[i]; i += 1
        v |= UInt64(c & 0x7f) << shift
        if c & 0x80 == 0 { return (v, i - start) }
        shift += 7
    }
    return nil
}
