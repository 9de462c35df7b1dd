/// The endpoints file of `file` discovery, YAML or JSON (JSON is YAML):
///
/// ```json
/// {"cluster": "api", "endpoints": [
///   {"address": "10.0.0.5:80", "weight": 1, "health_status": "HEALTHY"},
///   {"address": "10.0.0.6:80", "health_status": "UNHEALTHY"}]}
/// ```
/// `health-checker --endpoints-out` writes it (atomically, by rename); proxies re-read it
/// when it is replaced. `health_status` is HEALTHY (default), UNHEALTHY, DRAINING or
/// UNKNOWN (treated as healthy, as Envoy does).
public enum EndpointsFile {
    public static func load(path: String, keyPath: String) throws(ConfigError) -> [EndpointConfig] {
        guard let text = readFile(path) else { throw ConfigError(keyPath, "cannot read endpoints file \"\(path)\"") }
        do {
            return try parse(text)
        } catch {
            throw ConfigError(keyPath, "endpoints file \"\(path)\": \(error.description)")
        }
    }

    public static func parse(_ text: String) throws(ConfigError) -> [EndpointConfig] {
        let root = try ConfigValue.parse(yaml: text).mapping()
        _ = try root.optional("cluster")?.string()
        _ = root.optional("generated_at")
        var out: [EndpointConfig] = []
        for e in try root.required("endpoints").list() {
            let m = try e.mapping()
            var ep = EndpointConfig(address: try m.required("address").address())
            if ep.address.port == 0 { throw ConfigError("\(e.path).address", "an endpoint needs a port") }
            if let w = m.optional("weight") { ep.weight = try w.int(min: 1, max: 128) }
            if let k = m.optional("hash_key") { ep.hashKey = try k.string() }
            if let h = m.optional("health_status") {
                ep.healthy = ["HEALTHY", "UNKNOWN"].contains(try h.oneOf(["HEALTHY", "UNHEALTHY", "DRAINING", "UNKNOWN"]))
            }
            if let p = m.optional("priority") { ep.priority = try p.int(min: 0, max: 127) }
            _ = m.optional("detail")
            try m.finish()
            out.append(ep)
        }
        try root.finish()
        return out
    }

    /// The file's text for a set of endpoints with their health.
    public static func render(cluster: String, endpoints: [(EndpointConfig, Bool, String)]) -> String {
        JSON.object([
            ("cluster", .string(cluster)),
            ("generated_at", .string(iso8601(wallMs()))),
            ("endpoints", .array(endpoints.map { e, healthy, detail in
                var f: [(String, JSON)] = [("address", .string(e.address.description)), ("weight", .int(Int64(e.weight)))]
                if e.priority != 0 { f.append(("priority", .int(Int64(e.priority)))) }
                if let k = e.hashKey { f.append(("hash_key", .string(k))) }
                f += [("health_status", .string(healthy ? "HEALTHY" : "UNHEALTHY")), ("detail", .string(detail))]
                return .object(f)
            })),
        ]).serialized(pretty: true) + "\n"
    }
}
