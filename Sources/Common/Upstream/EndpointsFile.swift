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
        guard let bytes = readFileBytes(path) else { throw ConfigError(keyPath, "cannot read endpoints file \"\(path)\"") }
        do {
            return try parse(bytes: bytes)
        } catch {
            throw ConfigError(keyPath, "endpoints file \"\(path)\": \(error.description)")
        }
    }

    /// The file's bytes: invalid UTF-8 is refused, not repaired (two different byte strings
    /// must not become the same `hash_key`).
    public static func parse(bytes: [UInt8]) throws(ConfigError) -> [EndpointConfig] {
        guard let text = String(validating: bytes, as: UTF8.self) else { throw ConfigError("", "not valid UTF-8") }
        return try parse(text)
    }

    public static func parse(_ text: String) throws(ConfigError) -> [EndpointConfig] {
        // JSON (what the health checker writes) takes a one-pass reader: 100,000 endpoints in a
        // fraction of a second, where the YAML node tree takes seconds.
        // Flow-style YAML (`{endpoints: [...]}`) starts with '{' too: what is not JSON is YAML.
        if text.utf8.first(where: { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 }) == UInt8(ascii: "{"),
           let root = try? JSONParser.parse(text) {
            return try endpoints(json: root)
        }
        let root = try ConfigValue.parse(yaml: text).mapping()
        _ = try root.optional("cluster")?.string()
        _ = root.optional("generated_at")
        var out: [EndpointConfig] = []
        for e in try root.required("endpoints").list() {
            let m = try e.mapping()
            var ep = EndpointConfig(address: try m.required("address").address())
            if ep.address.port == 0 { throw ConfigError("\(e.path).address", "an endpoint needs a port") }
            if let w = m.optional("weight") { ep.weight = try w.int(min: weights.lowerBound, max: weights.upperBound) }
            if let k = m.optional("hash_key") { ep.hashKey = try k.string() }
            if let h = m.optional("health_status") {
                ep.healthy = isServing(try h.oneOf(healthStatuses))
            }
            if let p = m.optional("priority") { ep.priority = try p.int(min: priorities.lowerBound, max: priorities.upperBound) }
            _ = m.optional("detail")
            try m.finish()
            out.append(ep)
        }
        try root.finish()
        return try unique(out)
    }

    /// An address listed twice would get double weight and show twice: refused.
    static func unique(_ eps: [EndpointConfig]) throws(ConfigError) -> [EndpointConfig] {
        var seen = Set<SocketAddress>(minimumCapacity: eps.count)
        for (i, e) in eps.enumerated() where !seen.insert(e.address).inserted {
            throw ConfigError("endpoints[\(i)].address", "\(e.address) is listed twice")
        }
        return eps
    }

    // The rules both readers (JSON and YAML) apply, kept in one place.
    static let weights = 1...128
    static let priorities = 0...127
    static let healthStatuses = ["HEALTHY", "UNHEALTHY", "DRAINING", "UNKNOWN"]
    /// UNKNOWN counts as healthy, as in Envoy.
    static func isServing(_ status: String) -> Bool { status == "HEALTHY" || status == "UNKNOWN" }

    static let topKeys = ["cluster", "generated_at", "endpoints"]
    static let endpointKeys = ["address", "weight", "hash_key", "health_status", "priority", "detail"]

    /// The keys of a JSON object, each known at most once: unknown and duplicate keys are errors
    /// naming their path (checked as they come, so a huge object fails at its first bad key).
    private static func fields(_ v: JSON, _ path: String, _ known: [String]) throws(ConfigError) -> [JSON?] {
        guard case .object(let pairs) = v else { throw ConfigError(path, "expected a mapping") }
        var out = [JSON?](repeating: nil, count: known.count)
        var seen = [Bool](repeating: false, count: known.count)
        for (k, value) in pairs {
            let kp = path.isEmpty ? k : "\(path).\(k)"
            guard let idx = known.firstIndex(of: k) else {
                throw ConfigError(kp, "unknown key (known here: \(known.sorted().joined(separator: ", ")))")
            }
            if seen[idx] { throw ConfigError(kp, "duplicate key") }
            seen[idx] = true
            if case .null = value { out[idx] = nil; continue }  // null is absent, as in YAML
            out[idx] = value
        }
        return out
    }

    private static func int(_ v: JSON, _ path: String, min: Int, max: Int) throws(ConfigError) -> Int {
        guard case .int(let i) = v else { throw ConfigError(path, "expected an integer") }
        guard i >= Int64(min) && i <= Int64(max) else { throw ConfigError(path, "\(i) is out of range \(min)...\(max)") }
        return Int(i)
    }

    private static func string(_ v: JSON, _ path: String) throws(ConfigError) -> String {
        guard case .string(let s) = v else { throw ConfigError(path, "expected a string") }
        return s
    }

    static func endpoints(json root: JSON) throws(ConfigError) -> [EndpointConfig] {
        let top = try fields(root, "", topKeys)
        if let c = top[0] { _ = try string(c, "cluster") }
        guard let epsValue = top[2] else { throw ConfigError("endpoints", "missing required key") }
        guard case .array(let eps) = epsValue else { throw ConfigError("endpoints", "expected a list") }
        var out: [EndpointConfig] = []
        out.reserveCapacity(eps.count)
        for (n, e) in eps.enumerated() {
            let path = "endpoints[\(n)]"
            let f = try fields(e, path, endpointKeys)
            guard let a = f[0] else { throw ConfigError("\(path).address", "missing required key") }
            let text = try string(a, "\(path).address")
            let address: SocketAddress
            do { address = try SocketAddress.parse(text) } catch { throw ConfigError("\(path).address", error.description) }
            var ep = EndpointConfig(address: address)
            if address.port == 0 { throw ConfigError("\(path).address", "an endpoint needs a port") }
            if let w = f[1] { ep.weight = try int(w, "\(path).weight", min: weights.lowerBound, max: weights.upperBound) }
            if let k = f[2] { ep.hashKey = try string(k, "\(path).hash_key") }
            if let h = f[3] {
                let s = try string(h, "\(path).health_status")
                guard healthStatuses.contains(s) else {
                    throw ConfigError("\(path).health_status", "\"\(s)\" is not one of \(healthStatuses.joined(separator: ", "))")
                }
                ep.healthy = isServing(s)
            }
            if let p = f[4] { ep.priority = try int(p, "\(path).priority", min: priorities.lowerBound, max: priorities.upperBound) }
            out.append(ep)
        }
        return try unique(out)
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
