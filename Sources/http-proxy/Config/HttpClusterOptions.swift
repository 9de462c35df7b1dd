import Common

/// `clusters[i].http_protocol_options` (Envoy's `common_http_protocol_options`): how the
/// cluster's upstream connection pools treat their connections (docs/config.md).
struct HttpClusterOptions: ClusterOptionsConfig {
    /// `idle_timeout` (default 1h; 0 = never): a pooled connection unused this long closes.
    var idleTimeoutMs: UInt64? = 3_600_000
    /// `max_requests_per_connection` (default unlimited): a connection that served this many
    /// requests closes after the last one (`upstream_cx_max_requests`).
    var maxRequestsPerConnection: Int?

    var configKey: String { "http_protocol_options" }

    var dump: JSON {
        var f: [(String, JSON)] = [("idle_timeout", .string(idleTimeoutMs.map { "\($0)ms" } ?? "0s"))]
        if let m = maxRequestsPerConnection { f.append(("max_requests_per_connection", .int(Int64(m)))) }
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
        try m.finish()
        return o
    }
}
