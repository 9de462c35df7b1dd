import Common

/// `redis-proxy --twemproxy nutcracker.yml`: reads twemproxy's own YAML and turns each pool into
/// a listener and a cluster of ours (docs/redis-proxy.md, "Coming from twemproxy"), so a user
/// switches without rewriting the file and keys stay where nutcracker put them. Errors name the
/// twemproxy key (`alpha.servers[1]: ...`). Read again on SIGHUP, like `--config`.
enum TwemproxyConfig {
    /// The largest file read (a twemproxy config is a few KiB).
    static let maxBytes = 4 << 20

    static func translate(path: String) throws(ConfigError) -> String {
        let where_ = "--twemproxy \(path)"
        guard let text = readFile(path) else { throw ConfigError(where_, "cannot read the file") }
        if text.utf8.count > maxBytes { throw ConfigError(where_, "larger than \(maxBytes >> 20) MiB") }
        let root: ConfigMap
        do { root = try ConfigValue.parse(yaml: text).mapping() } catch { throw ConfigError("\(where_): \(error.path)", error.message, line: error.line) }
        if root.keys.isEmpty { throw ConfigError(where_, "no pools") }
        var listeners: [JSON] = []
        var clusters: [JSON] = []
        do {
            for name in root.keys {
                guard let v = root.optional(name) else { continue }
                let (l, c) = try pool(name, try v.mapping())
                listeners.append(l)
                clusters.append(c)
            }
        } catch {
            throw ConfigError("\(where_): \(error.path)", error.message, line: error.line)
        }
        return JSON.object([("listeners", .array(listeners)), ("clusters", .array(clusters))]).serialized()
    }

    /// One pool: its listener (named after the pool) and its cluster (same name).
    private static func pool(_ name: String, _ m: ConfigMap) throws(ConfigError) -> (JSON, JSON) {
        let listenV = try m.required("listen")
        var listen = try listenV.string()
        if listen.hasPrefix("/") {
            // nutcracker's "/path [mode]": our listeners take `unix:/path`; the file gets the
            // process's umask (a mode is refused rather than ignored).
            let words = listen.split(separator: " ", omittingEmptySubsequences: true)
            if words.count > 1 { throw listenV.fail("a unix socket mode (\"\(words[1])\") is not supported; remove it (the socket file gets the process's umask)") }
            listen = "unix:" + listen
        }
        var block: [(String, JSON)] = [("cluster", .string(name))]
        if let v = m.optional("redis"), try !v.bool() { throw v.fail("memcached pools are not supported (redis: true only)") }
        if let v = m.optional("redis_db"), try v.int() != 0 { throw v.fail("only database 0 is served") }
        if let v = m.optional("hash") { block.append(("hash", .string(try v.oneOf(TwemproxyHash.allCases.map(\.rawValue))))) }
        if let v = m.optional("hash_tag") {
            let t = try v.string()
            if t.utf8.count != 2 { throw v.fail("\"\(t)\" is not a hash tag (two characters, like \"{}\")") }
            block.append(("hash_tag", .string(t)))
        }
        if let v = m.optional("distribution") { block.append(("distribution", .string(try v.oneOf(["ketama", "modula", "random"])))) }
        // twemproxy's durations are milliseconds.
        if let v = m.optional("timeout") { block.append(("op_timeout", .string("\(try v.int(min: 1, max: 86_400_000))ms"))) }
        if let v = m.optional("server_retry_timeout") { block.append(("server_retry_timeout", .string("\(try v.int(min: 1, max: 86_400_000))ms"))) }
        if let v = m.optional("server_failure_limit") { block.append(("server_failure_limit", .int(Int64(try v.int(min: 1, max: 1000))))) }
        if let v = m.optional("auto_eject_hosts") { block.append(("auto_eject_hosts", .bool(try v.bool()))) }
        if let v = m.optional("preconnect") { block.append(("preconnect", .bool(try v.bool()))) }
        if let v = m.optional("server_connections") { block.append(("server_connections", .int(Int64(try v.int(min: 1, max: 64))))) }
        if let v = m.optional("redis_auth") { block.append(("auth_password", .string(try v.string()))) }
        // Kernel and client limits twemproxy has and we handle our own way.
        for k in ["backlog", "client_connections", "tcpkeepalive"] { _ = m.optional(k) }
        let serversV = try m.required("servers")
        let items = try serversV.list()
        if items.isEmpty { throw serversV.fail("at least one server is needed") }
        var endpoints: [JSON] = []
        var names = Set<String>()
        for item in items {
            let spec = try item.string()
            // host:port:weight [name]
            let words = spec.split(separator: " ", omittingEmptySubsequences: true)
            guard words.count == 1 || words.count == 2 else { throw item.fail("\"\(spec)\" is not host:port:weight [name]") }
            let parts = words[0].split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 3, let port = Int(parts[1]), (1...65535).contains(port), let weight = Int(parts[2]), (1...128).contains(weight),
                  !parts[0].isEmpty else {
                throw item.fail("\"\(spec)\" is not host:port:weight [name] (a port 1..65535, a weight 1..128)")
            }
            let host = String(parts[0])
            // nutcracker's default name: host:port, or the host alone on memcached's 11211.
            let serverName = words.count == 2 ? String(words[1]) : (port == 11211 ? host : "\(host):\(port)")
            guard names.insert(serverName).inserted else { throw item.fail("duplicate server name \"\(serverName)\"") }
            endpoints.append(.object([("address", .string("\(host):\(port)")), ("weight", .int(Int64(weight))), ("hash_key", .string(serverName))]))
        }
        try m.finish()
        let listener = JSON.object([("name", .string(name)), ("address", .string(listen)), ("redis", .object(block))])
        let cluster = JSON.object([("name", .string(name)), ("endpoints", .array(endpoints))])
        return (listener, cluster)
    }
}
