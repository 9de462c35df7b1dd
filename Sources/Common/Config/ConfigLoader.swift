/// What a binary tells the loader about its listener block.
public struct FilterBlockParser: Sendable {
    /// The binary's name, for messages ("tcp-proxy").
    public let binary: String
    /// The block key it understands under each listener ("tcp").
    public let key: String
    /// Parses the block. `listenerName` is the default stat prefix.
    public let parse: @Sendable (ConfigMap, _ listenerName: String) throws(ConfigError) -> any ListenerFilterConfig

    public init(binary: String, key: String,
                parse: @escaping @Sendable (ConfigMap, String) throws(ConfigError) -> any ListenerFilterConfig) {
        self.binary = binary; self.key = key; self.parse = parse
    }
}

/// Turns YAML into a checked `ProxyConfig`. Every failure names the key path; nothing half-valid
/// comes out.
public enum ConfigLoader {
    /// Blocks other binaries understand; found in a listener, they are a clear error, not "unknown".
    static let otherBlocks = ["tcp", "udp", "http", "redis"]

    public static func load(yaml: String, parser: FilterBlockParser) throws(ConfigError) -> ProxyConfig {
        let root = try ConfigValue.parse(yaml: yaml).mapping()
        var cfg = ProxyConfig()
        if let admin = root.optional("admin") {
            let m = try admin.mapping()
            cfg.adminAddress = try m.required("address").address()
            try m.finish()
        }
        if let w = root.optional("workers") { cfg.workers = try w.int(min: 1, max: 256) }
        if let d = root.optional("drain_timeout") { cfg.drainTimeoutMs = try d.durationMs() }

        let clusterList = try root.optional("clusters")?.list() ?? []
        var names = Set<String>()
        for c in clusterList {
            let cluster = try parseCluster(c)
            guard names.insert(cluster.name).inserted else {
                throw ConfigError("\(c.path).name", "duplicate cluster name \"\(cluster.name)\"")
            }
            cfg.clusters.append(cluster)
        }

        let listenerList = try root.required("listeners").list()
        if listenerList.isEmpty { throw ConfigError("listeners", "at least one listener is needed") }
        var lnames = Set<String>()
        var addrs = Set<SocketAddress>()
        for l in listenerList {
            let listener = try parseListener(l, parser: parser)
            guard lnames.insert(listener.name).inserted else {
                throw ConfigError("\(l.path).name", "duplicate listener name \"\(listener.name)\"")
            }
            guard listener.address.port == 0 || addrs.insert(listener.address).inserted else {
                throw ConfigError("\(l.path).address", "address \(listener.address) is used by another listener")
            }
            for ref in listener.filter.clusterReferences where !names.contains(ref.name) {
                let known = names.sorted().joined(separator: ", ")
                throw ConfigError(ref.path, "unknown cluster \"\(ref.name)\" (clusters: \(known.isEmpty ? "none" : known))")
            }
            try listener.filter.validate(clusters: cfg.clusters, path: "\(l.path).\(parser.key)")
            cfg.listeners.append(listener)
        }
        try root.finish()
        return cfg
    }

    static func parseCluster(_ v: ConfigValue) throws(ConfigError) -> ClusterConfig {
        let m = try v.mapping()
        let name = try m.required("name").string()
        guard isIdentifier(name) else {
            throw ConfigError("\(v.path).name", "\"\(name)\": use letters, digits, '_', '-' and '.' only")
        }
        var c = ClusterConfig(name: name)
        if let d = m.optional("discovery") {
            c.discovery = try d.oneOf(["static"])
        }
        let eps = try m.required("endpoints").list()
        if eps.isEmpty { throw ConfigError("\(v.path).endpoints", "at least one endpoint is needed") }
        for e in eps { c.endpoints.append(try parseEndpoint(e)) }
        if let p = m.optional("lb_policy") {
            let s = try p.oneOf(LbPolicy.allCases.map(\.rawValue))
            c.lbPolicy = LbPolicy(rawValue: s)!
        }
        if let t = m.optional("connect_timeout") {
            c.connectTimeoutMs = try t.durationMs()
            if c.connectTimeoutMs == 0 { throw t.fail("must be greater than 0") }
        }
        if let p = m.optional("send_proxy_protocol") {
            c.sendProxyProtocol = ProxyProtocolVersion(rawValue: try p.oneOf(["v1", "v2"]))
        }
        if let cb = m.optional("circuit_breakers") {
            let cm = try cb.mapping()
            if let mc = cm.optional("max_connections") { c.maxConnections = try mc.int(min: 1) }
            try cm.finish()
        }
        try m.finish()
        return c
    }

    static func parseEndpoint(_ v: ConfigValue) throws(ConfigError) -> EndpointConfig {
        if case .scalar = v.node { return EndpointConfig(address: try v.address()) }
        let m = try v.mapping()
        var e = EndpointConfig(address: try m.required("address").address())
        if let w = m.optional("weight") { e.weight = try w.int(min: 1, max: 128) }
        try m.finish()
        if e.address.port == 0 { throw ConfigError("\(v.path).address", "an endpoint needs a port") }
        return e
    }

    static func parseListener(_ v: ConfigValue, parser: FilterBlockParser) throws(ConfigError) -> ListenerConfig {
        let m = try v.mapping()
        let name = try m.optional("name")?.string() ?? "listener_\(v.path.split(separator: "[").last?.dropLast() ?? "0")"
        guard isIdentifier(name) else {
            throw ConfigError("\(v.path).name", "\"\(name)\": use letters, digits, '_', '-' and '.' only")
        }
        let address = try m.required("address").address()
        let block: ConfigMap
        if let b = m.optional(parser.key) {
            block = try b.mapping()
        } else {
            if let other = otherBlocks.first(where: { $0 != parser.key && m.keys.contains($0) }) {
                throw ConfigError("\(v.path).\(other)", "\(parser.binary) does not serve `\(other)` listeners; it needs a `\(parser.key)` block")
            }
            throw ConfigError("\(v.path).\(parser.key)", "missing required key")
        }
        var l = ListenerConfig(name: name, address: address, filter: try parser.parse(block, name))
        try block.finish()
        if let p = m.optional("proxy_protocol") {
            l.proxyProtocol = ProxyProtocolMode(rawValue: try p.oneOf(["off", "accept", "optional"]))!
        }
        if let t = m.optional("proxy_protocol_timeout") {
            l.proxyProtocolTimeoutMs = try t.durationMs()
            if l.proxyProtocolTimeoutMs == 0 { throw t.fail("must be greater than 0") }
        }
        if let mc = m.optional("max_connections") { l.maxConnections = try mc.int(min: 1) }
        if let b = m.optional("connection_balance") {
            l.connectionBalance = ConnectionBalance(rawValue: try b.oneOf(["kernel", "exact"]))!
        }
        if let b = m.optional("per_connection_buffer_limit") { l.bufferLimit = try b.bytes(min: 1024, max: 1 << 30) }
        if let b = m.optional("backlog") { l.backlog = try b.int(min: 1, max: 65535) }
        if let logs = m.optional("access_log") {
            for a in try logs.list() { l.accessLogs.append(try parseAccessLog(a)) }
        }
        try m.finish()
        return l
    }

    static func parseAccessLog(_ v: ConfigValue) throws(ConfigError) -> AccessLogConfig {
        let m = try v.mapping()
        var a = AccessLogConfig(path: try m.required("path").string())
        if let f = m.optional("format") {
            a.format = try f.string()
            do { _ = try AccessLogFormat(a.format!) } catch { throw f.fail(error.description) }
        }
        if let j = m.optional("json_format") {
            if a.format != nil { throw j.fail("give either format or json_format, not both") }
            let jm = try j.mapping()
            var fields: [(String, String)] = []
            for k in jm.keys {
                let fv = try jm.required(k)
                let s = try fv.string()
                do { _ = try AccessLogFormat(s) } catch { throw fv.fail(error.description) }
                fields.append((k, s))
            }
            try jm.finish()
            a.jsonFormat = fields
        }
        try m.finish()
        return a
    }

    static func isIdentifier(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 95 || c == 45 || c == 46
        }
    }
}
