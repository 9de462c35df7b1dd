import Common

/// `clusters[i].http_protocol_options` (Envoy's `common_http_protocol_options`): how the
/// cluster's upstream connection pools treat their connections (docs/config.md).
struct HttpClusterOptions: ClusterOptionsConfig {
    /// `idle_timeout` (default 1h; 0 = never): a pooled connection unused this long closes.
    var idleTimeoutMs: UInt64? = 3_600_000
    /// `max_requests_per_connection` (default unlimited): a connection that served this many
    /// requests closes after the last one (`upstream_cx_max_requests`).
    var maxRequestsPerConnection: Int?
    /// `protocol` (default http1): what the proxy speaks to the cluster's hosts; `auto` lets
    /// each TLS connection's ALPN choose (h2, else HTTP/1.1), and is HTTP/1.1 in clear.
    var upstreamProtocol = UpstreamProtocol.http1
    /// `http2.max_concurrent_streams` (default 100): streams per upstream connection, at most
    /// (the host's own SETTINGS may lower it).
    var http2MaxConcurrentStreams = 100
    /// `http2.initial_stream_window_size` / `initial_connection_window_size`: how much of a
    /// response the proxy takes before its client reads it.
    var http2InitialStreamWindow = 65535
    var http2InitialConnectionWindow = 1 << 20
    /// `http2.connection_keepalive` (Envoy's): PINGs on each connection; one whose host sends
    /// nothing within the timeout of a PING is closed.
    var http2Keepalive = Http2KeepaliveConfig()

    enum UpstreamProtocol: String, Sendable { case http1, http2, auto }

    var configKey: String { "http_protocol_options" }

    var defaultAlpn: [String]? {
        switch upstreamProtocol {
        case .http1: nil
        case .http2: ["h2"]
        case .auto: ["h2", "http/1.1"]
        }
    }

    var dump: JSON {
        var f: [(String, JSON)] = [("idle_timeout", .string(idleTimeoutMs.map { "\($0)ms" } ?? "0s"))]
        if let m = maxRequestsPerConnection { f.append(("max_requests_per_connection", .int(Int64(m)))) }
        f.append(("protocol", .string(upstreamProtocol.rawValue)))
        if upstreamProtocol != .http1 {
            f.append(("http2", .object([("max_concurrent_streams", .int(Int64(http2MaxConcurrentStreams))),
                                        ("initial_stream_window_size", .int(Int64(http2InitialStreamWindow))),
                                        ("initial_connection_window_size", .int(Int64(http2InitialConnectionWindow))),
                                        ("connection_keepalive", http2Keepalive.dump)])))
        }
        return .object(f)
    }

    static let parser = ClusterOptionsParser(key: "http_protocol_options") { (v: ConfigValue) throws(ConfigError) -> any ClusterOptionsConfig in
        let m = try v.mapping()
        var o = HttpClusterOptions()
        if let t = m.optional("idle_timeout") {
            let ms = try t.durationMs()
            o.idleTimeoutMs = ms == 0 ? nil : ms
        }
        if let n = m.optional("max_requests_per_connection") { o.maxRequestsPerConnection = try n.int(min: 1, max: 1_000_000_000) }
        if let p = m.optional("protocol") { o.upstreamProtocol = UpstreamProtocol(rawValue: try p.oneOf(["http1", "http2", "auto"]))! }
        if let h = m.optional("http2") {
            let hm = try h.mapping()
            if let x = hm.optional("max_concurrent_streams") { o.http2MaxConcurrentStreams = try x.int(min: 1, max: 2_147_483_647) }
            if let x = hm.optional("initial_stream_window_size") { o.http2InitialStreamWindow = try x.bytes(min: 65535, max: 2_147_483_647) }
            if let x = hm.optional("initial_connection_window_size") { o.http2InitialConnectionWindow = try x.bytes(min: 65535, max: 2_147_483_647) }
            if let k = hm.optional("connection_keepalive") { o.http2Keepalive = try Http2KeepaliveConfig.parse(k) }
            try hm.finish()
        }
        try m.finish()
        return o
    }
}
