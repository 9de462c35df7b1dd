import Glibc

/// What a binary tells the loader about its listener block.
public struct FilterBlockParser: Sendable {
    /// The binary's name, for messages ("tcp-proxy").
    public let binary: String
    /// The block key it understands under each listener ("tcp").
    public let key: String
    /// Parses the block. `listenerName` is the default stat prefix.
    public let parse: @Sendable (ConfigMap, _ listenerName: String) throws(ConfigError) -> any ListenerFilterConfig
    /// False for binaries without listeners (health-checker): `listeners` is then refused.
    public let hasListeners: Bool
    /// The binary's listeners are UDP sockets (udp-proxy), not TCP.
    public let datagram: Bool
    /// The binary's own cluster keys (redis-proxy's options, say): Common parses the rest of a
    /// cluster and hands this one key to the binary. Other binaries refuse it as unknown.
    public var clusterOptions: ClusterOptionsParser?
    /// The ALPN protocols a TLS listener offers when its `tls` block has no `alpn`, from the
    /// parsed block (http-proxy: h2 and http/1.1 by its `codec`). Nil: none.
    public var defaultAlpn: (@Sendable (any ListenerFilterConfig) -> [String])?

    public init(binary: String, key: String, hasListeners: Bool = true, datagram: Bool = false,
                clusterOptions: ClusterOptionsParser? = nil,
                parse: @escaping @Sendable (ConfigMap, String) throws(ConfigError) -> any ListenerFilterConfig) {
        self.binary = binary; self.key = key; self.parse = parse; self.hasListeners = hasListeners; self.datagram = datagram
        self.clusterOptions = clusterOptions
    }
}

/// Parses one binary-specific key of a cluster (`clusters[i].<key>`), so a binary adds cluster
/// options without Common growing a switch for it. The result rides in
/// `ClusterConfig.binaryOptions`; the binary casts it back to its own type.
public struct ClusterOptionsParser: Sendable {
    /// The key under each cluster ("redis").
    public let key: String
    public let parse: @Sendable (ConfigValue) throws(ConfigError) -> any ClusterOptionsConfig

    public init(key: String, parse: @escaping @Sendable (ConfigValue) throws(ConfigError) -> any ClusterOptionsConfig) {
        self.key = key; self.parse = parse
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
        if let h = root.optional("health_event_log") { cfg.healthEventLog = try h.string() }

        let clusterList = try root.optional("clusters")?.list() ?? []
        var names = Set<String>()
        for c in clusterList {
            let cluster = try parseCluster(c, options: parser.clusterOptions)
            guard names.insert(cluster.name).inserted else {
                throw ConfigError("\(c.path).name", "duplicate cluster name \"\(cluster.name)\"")
            }
            cfg.clusters.append(cluster)
        }

        if !parser.hasListeners {
            if let l = root.optional("listeners") { throw l.fail("\(parser.binary) has no listeners") }
            if cfg.clusters.isEmpty { throw ConfigError("clusters", "at least one cluster is needed") }
            try root.finish()
            return cfg
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
            for chain in listener.chains {
                for ref in chain.filter.clusterReferences where !names.contains(ref.name) {
                    let known = names.sorted().joined(separator: ", ")
                    throw ConfigError(ref.path, "unknown cluster \"\(ref.name)\" (clusters: \(known.isEmpty ? "none" : known))")
                }
                try chain.filter.validate(clusters: cfg.clusters, path: chain.path)
            }
            cfg.listeners.append(listener)
        }
        try root.finish()
        return cfg
    }

    static func parseCluster(_ v: ConfigValue, options: ClusterOptionsParser? = nil) throws(ConfigError) -> ClusterConfig {
        let m = try v.mapping()
        let name = try m.required("name").string()
        guard isIdentifier(name) else {
            throw ConfigError("\(v.path).name", "\"\(name)\": use letters, digits, '_', '-' and '.' only")
        }
        var c = ClusterConfig(name: name)
        if let d = m.optional("discovery") {
            c.discovery = try d.oneOf(["static", "file", "strict_dns", "logical_dns"])
        }
        if let x = m.optional("max_hosts") { c.maxHosts = try x.int(min: 1, max: 1_000_000) }
        if c.discovery == "strict_dns" || c.discovery == "logical_dns" {
            let eps = try m.required("endpoints").list()
            if eps.isEmpty { throw ConfigError("\(v.path).endpoints", "at least one endpoint is needed") }
            if c.discovery == "logical_dns" && eps.count != 1 {
                throw ConfigError("\(v.path).endpoints", "logical_dns takes exactly one name:port")
            }
            for e in eps {
                let text: ConfigValue
                var weight = 1
                var hashKey: String?
                if case .scalar = e.node { text = e } else {
                    let em = try e.mapping()
                    text = try em.required("address")
                    if let w = em.optional("weight") { weight = try w.int(min: 1, max: 128) }
                    if let k = em.optional("hash_key") { hashKey = try k.string() }
                    try em.finish()
                }
                guard var t = DnsTarget.parse(try text.string()) else {
                    throw text.fail("\"\(try text.string())\": expected name:port with a port of 1...65535")
                }
                t.weight = weight; t.hashKey = hashKey
                c.dnsTargets.append(t)
            }
            if let r = m.optional("dns_refresh_rate") { c.dnsRefreshMs = try positive(r) }
            if let r = m.optional("respect_dns_ttl") { c.respectDnsTtl = try r.bool() }
            if let f = m.optional("dns_lookup_family") {
                c.dnsLookupFamily = DnsLookupFamily(rawValue: try f.oneOf(["v4_only", "v6_only", "all"]))!
            }
            if let rs = m.optional("dns_resolvers") { for r in try rs.list() { c.dnsResolvers.append(try r.address()) } }
        } else if c.discovery == "file" {
            let p = try m.required("path")
            c.path = try p.string()
            if m.optional("endpoints") != nil {
                throw ConfigError("\(v.path).endpoints", "file discovery takes its endpoints from `path`")
            }
            // A missing or broken file at start is an error too: nothing half-valid starts.
            c.endpoints = try EndpointsFile.load(path: c.path!, keyPath: p.path)
            if c.endpoints.count > c.maxHosts {
                throw ConfigError(p.path, "endpoints file \"\(c.path!)\" has \(c.endpoints.count) endpoints, over max_hosts (\(c.maxHosts))")
            }
        } else {
            let eps = try m.required("endpoints").list()
            if eps.isEmpty { throw ConfigError("\(v.path).endpoints", "at least one endpoint is needed") }
            if eps.count > c.maxHosts {
                throw ConfigError("\(v.path).endpoints", "\(eps.count) endpoints, over max_hosts (\(c.maxHosts))")
            }
            for e in eps { c.endpoints.append(try parseEndpoint(e)) }
        }
        if let h = m.optional("health_check") { c.healthCheck = try parseHealthCheck(h) }
        if let o = m.optional("endpoints_out") { c.endpointsOut = try o.string() }
        if let od = m.optional("outlier_detection") {
            let om = try od.mapping()
            var o = OutlierDetectionConfig()
            if let x = om.optional("consecutive_failures") { o.consecutiveFailures = try x.int(min: 1, max: 1000) }
            if let x = om.optional("base_ejection_time") { o.baseEjectionMs = try positive(x) }
            if let x = om.optional("max_ejection_time") { o.maxEjectionMs = try positive(x) }
            if let x = om.optional("max_ejection_percent") { o.maxEjectionPercent = try x.int(min: 0, max: 100) }
            if let x = om.optional("interval") { o.intervalMs = try positive(x) }
            try om.finish()
            if o.maxEjectionMs < o.baseEjectionMs { throw ConfigError(od.child("max_ejection_time"), "must not be below base_ejection_time") }
            c.outlierDetection = o
        }
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
        if let options, let o = m.optional(options.key) { c.binaryOptions = try options.parse(o) }
        if let t = m.optional("tls") {
            let tls = try parseClientTls(t, defaultAlpn: c.binaryOptions?.defaultAlpn ?? [])
            c.tls = tls
            // Health checks speak to the hosts as the proxy does (Envoy's default): over TLS,
            // with h2 agreed for gRPC. UDP checks stay plain.
            if var h = c.healthCheck, h.kind != .udp {
                do {
                    h.tls = try TlsContext.client(caFile: tls.ca, verify: tls.verify, serverName: tls.sni,
                                                  alpn: h.kind == .grpc ? ["h2"] : [], minVersion: tls.minVersion)
                } catch {
                    throw t.fail(error.description)
                }
                c.healthCheck = h
            }
        }
        if let o = m.optional("overprovisioning_factor") { c.overprovisioningFactor = try o.int(min: 100, max: 1000) }
        if let p = m.optional("panic_threshold") { c.panicThreshold = try p.int(min: 0, max: 100) }
        if let cb = m.optional("circuit_breakers") {
            let cm = try cb.mapping()
            if let mc = cm.optional("max_connections") { c.maxConnections = try mc.int(min: 1) }
            if let mp = cm.optional("max_pending_requests") { c.maxPending = try mp.int(min: 1) }
            if let mr = cm.optional("max_retries") { c.maxRetries = try mr.int(min: 0) }
            try cm.finish()
        }
        try m.finish()
        return c
    }

    /// `clusters[i].health_check` (docs/config.md).
    public static func parseHealthCheck(_ v: ConfigValue) throws(ConfigError) -> HealthCheckConfig {
        let m = try v.mapping()
        let kinds = HealthCheckConfig.Kind.allCases.map(\.rawValue)
        let given = kinds.filter { m.keys.contains($0) }
        guard given.count == 1, let kindName = given.first, let kind = HealthCheckConfig.Kind(rawValue: kindName) else {
            throw v.fail(given.isEmpty ? "give one check kind: \(kinds.joined(separator: ", "))" : "give one check kind, not \(given.joined(separator: " and "))")
        }
        var h = HealthCheckConfig(kind: kind)
        if let x = m.optional("interval") { h.intervalMs = try positive(x) }
        if let x = m.optional("timeout") { h.timeoutMs = try positive(x) }
        if let x = m.optional("unhealthy_interval") { h.unhealthyIntervalMs = try positive(x) }
        if let x = m.optional("edge_interval") { h.edgeIntervalMs = try positive(x) }
        if let x = m.optional("interval_jitter") { h.intervalJitterMs = try x.durationMs() }
        if let x = m.optional("initial_jitter") { h.initialJitterMs = try x.durationMs() }
        if let x = m.optional("rise") { h.rise = try x.int(min: 1, max: 100) }
        if let x = m.optional("fall") { h.fall = try x.int(min: 1, max: 100) }
        let block = try m.required(kindName)
        let b: ConfigMap = block.isNull ? ConfigMap(path: block.path, pairs: []) : try block.mapping()
        switch kind {
        case .tcp, .udp:
            var steps: [CheckStep] = []
            let send = try bytesOption(b, "send")
            if let send { steps.append(.send(send)) }
            if let expect = try bytesOption(b, "expect") {
                steps.append(.expect(kind == .udp ? .contains(expect) : .prefix(expect)))
            } else if kind == .udp {
                steps.append(.expect(.any))
            }
            if kind == .udp && send == nil { throw ConfigError("\(block.path).send", "a UDP check needs something to send") }
            h.steps = steps
            h.summary = kind == .udp ? "udp send/expect" : (steps.isEmpty ? "tcp connect" : "tcp send/expect")
        case .http:
            let path = try b.optional("path")?.string() ?? "/"
            guard path.hasPrefix("/"), !path.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else {
                throw ConfigError("\(b.path).path", "\"\(path)\": must start with / and have no spaces or control characters")
            }
            let method = try b.optional("method")?.oneOf(["GET", "HEAD", "POST", "OPTIONS"]) ?? "GET"
            let host = try b.optional("host")?.string()
            if let host, host.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) {
                throw ConfigError("\(b.path).host", "no spaces or control characters")
            }
            var ranges: [ClosedRange<Int>] = []
            if let st = b.optional("expected_statuses") {
                for item in try st.list() { ranges.append(try statusRange(item)) }
                if ranges.isEmpty { throw st.fail("at least one status") }
            } else {
                ranges = [200...299]
            }
            h.steps = HealthCheckConfig.http(method: method, path: path, host: host, statuses: ranges)
            h.summary = "http \(method) \(path)"
        case .grpc:
            h.grpcService = try b.optional("service")?.string() ?? ""
            h.grpcAuthority = try b.optional("authority")?.string()
            h.summary = h.grpcService.isEmpty ? "grpc health" : "grpc health \(h.grpcService)"
        case .redis:
            let key = try b.optional("key")?.string()
            h.steps = HealthCheckConfig.redis(key: key)
            h.summary = key.map { "redis PING, EXISTS \($0)" } ?? "redis PING"
        }
        try b.finish()
        try m.finish()
        if h.timeoutMs > h.intervalMs { throw ConfigError(v.child("timeout"), "must not exceed interval") }
        return h
    }

    private static func positive(_ v: ConfigValue) throws(ConfigError) -> UInt64 {
        let ms = try v.durationMs()
        if ms == 0 { throw v.fail("must be greater than 0") }
        return ms
    }

    /// `KEY` as text (C escapes \r \n \t \\) or `KEY_hex` as hex digits.
    static func bytesOption(_ m: ConfigMap, _ key: String) throws(ConfigError) -> [UInt8]? {
        let text = m.optional(key), hex = m.optional(key + "_hex")
        if text != nil && hex != nil { throw ConfigError("\(m.path).\(key)", "give \(key) or \(key)_hex, not both") }
        if let text {
            let s = try text.string()
            var out: [UInt8] = []
            var esc = false
            for c in s.utf8 {
                if esc {
                    switch c {
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "0"): out.append(0)
                    case UInt8(ascii: "\\"): out.append(c)
                    default: throw text.fail("unknown escape \\\(Character(UnicodeScalar(c)))")
                    }
                    esc = false
                } else if c == UInt8(ascii: "\\") { esc = true } else { out.append(c) }
            }
            if esc { throw text.fail("trailing backslash") }
            return out
        }
        if let hex {
            let s = Array(try hex.string().utf8.filter { $0 != UInt8(ascii: " ") })
            guard s.count % 2 == 0 else { throw hex.fail("odd number of hex digits") }
            var out: [UInt8] = []
            var i = 0
            while i < s.count {
                guard let v = UInt8(String(decoding: s[i..<i + 2], as: UTF8.self), radix: 16) else { throw hex.fail("not hex") }
                out.append(v); i += 2
            }
            return out
        }
        return nil
    }

    static func statusRange(_ v: ConfigValue) throws(ConfigError) -> ClosedRange<Int> {
        let s = try v.string()
        let parts = s.split(separator: "-", maxSplits: 1)
        guard let lo = Int(parts[0]), (100...599).contains(lo) else { throw v.fail("\"\(s)\" is not a status or range like 200-299") }
        let hi = parts.count == 2 ? Int(parts[1]) : lo
        guard let hi, (lo...599).contains(hi) else { throw v.fail("\"\(s)\" is not a status or range like 200-299") }
        return lo...hi
    }

    static func parseEndpoint(_ v: ConfigValue) throws(ConfigError) -> EndpointConfig {
        if case .scalar = v.node { return EndpointConfig(address: try v.address()) }
        let m = try v.mapping()
        var e = EndpointConfig(address: try m.required("address").address())
        if let w = m.optional("weight") { e.weight = try w.int(min: 1, max: 128) }
        if let k = m.optional("hash_key") { e.hashKey = try k.string() }
        if let p = m.optional("priority") { e.priority = try p.int(min: 0, max: 127) }
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
        var l: ListenerConfig
        if let fc = m.optional("filter_chains") {
            if m.keys.contains(parser.key) {
                throw ConfigError("\(v.path).\(parser.key)", "give either filter_chains or a `\(parser.key)` block, not both")
            }
            if parser.datagram { throw fc.fail("\(parser.binary) listens on UDP: filter chains match TLS server names, which need TCP") }
            if let t = m.optional("tls") { throw t.fail("with filter_chains, give tls in each chain that terminates TLS") }
            let list = try fc.list()
            if list.isEmpty { throw fc.fail("at least one filter chain is needed") }
            var chains: [FilterChainConfig] = []
            var table = ServerNameTable()
            var chainNames = Set<String>()
            for (i, c) in list.enumerated() {
                let cm = try c.mapping()
                let chainName = try cm.optional("name")?.string() ?? "chain_\(i)"
                guard isIdentifier(chainName), chainNames.insert(chainName).inserted else {
                    throw ConfigError("\(c.path).name", "\"\(chainName)\": give each chain its own name of letters, digits, '_', '-' and '.'")
                }
                var serverNames: [String] = []
                if let mv = cm.optional("match") {
                    let mm = try mv.mapping()
                    if let sn = mm.optional("server_names") {
                        for n in try sn.list() {
                            let name = try serverName(n)
                            guard table.add(name, chain: i) else { throw n.fail("\"\(name)\" is matched by an earlier chain") }
                            serverNames.append(name)
                        }
                        if serverNames.isEmpty { throw sn.fail("give at least one name, or leave out match for the default chain") }
                    }
                    try mm.finish()
                }
                if serverNames.isEmpty {
                    if let d = table.defaultChain {
                        throw ConfigError("\(c.path).match", "chains \(d) and \(i) both lack match.server_names; only one chain can be the default")
                    }
                    table.setDefault(i)
                }
                let block = try listenerBlock(cm, path: c.path, parser: parser)
                var chain = FilterChainConfig(name: chainName, path: "\(c.path).\(parser.key)", serverNames: serverNames,
                                              filter: try parser.parse(block, "\(name).\(chainName)"))
                try block.finish()
                if let t = cm.optional("tls") { chain.tls = try parseTls(t, defaultAlpn: parser.defaultAlpn?(chain.filter) ?? []) }
                chains.append(chain)
                try cm.finish()
            }
            l = ListenerConfig(name: name, address: address, filter: chains[0].filter)
            l.chains = chains
        } else {
            let block = try listenerBlock(m, path: v.path, parser: parser)
            l = ListenerConfig(name: name, address: address, filter: try parser.parse(block, name))
            l.chains[0].path = "\(v.path).\(parser.key)"
            try block.finish()
            if let t = m.optional("tls") {
                if parser.datagram { throw t.fail("\(parser.binary) listens on UDP: no TLS (DTLS is not supported)") }
                l.chains[0].tls = try parseTls(t, defaultAlpn: parser.defaultAlpn?(l.chains[0].filter) ?? [])
            }
        }
        l.datagram = parser.datagram
        if parser.datagram && address.family == .unix {
            throw ConfigError("\(v.path).address", "\(parser.binary) listens on UDP: give host:port")
        }
        if let t = m.optional("tls_inspector_timeout") {
            l.tlsInspectorTimeoutMs = try t.durationMs()
            if l.tlsInspectorTimeoutMs == 0 { throw t.fail("must be greater than 0") }
        }
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

    /// `alpn` (nil when absent) and `min_version`, common to both sides' `tls` blocks.
    static func tlsCommon(_ m: ConfigMap) throws(ConfigError) -> ([String]?, TlsVersion) {
        var alpn: [String]?
        if let a = m.optional("alpn") {
            alpn = []
            for p in try a.list() {
                let s = try p.string()
                guard !s.isEmpty, s.utf8.count <= 255 else { throw p.fail("an ALPN name is 1 to 255 bytes") }
                alpn!.append(s)
            }
        }
        var minVersion = TlsVersion.tls12
        if let mv = m.optional("min_version") {
            minVersion = TlsVersion(rawValue: try mv.oneOf(["TLSv1.2", "TLSv1.3"]))!
        }
        return (alpn, minVersion)
    }

    static func readablePath(_ v: ConfigValue) throws(ConfigError) -> String {
        let s = try v.string()
        if access(s, R_OK) != 0 { throw v.fail("cannot read \"\(s)\"") }
        return s
    }

    /// A cluster's `tls` block (client side).
    static func parseClientTls(_ v: ConfigValue, defaultAlpn: [String] = []) throws(ConfigError) -> TlsClientConfig {
        let m = try v.mapping()
        var sni: String?
        if let s = m.optional("sni") {
            sni = try s.string()
            guard Array(sni!.utf8).withUnsafeBytes({ ClientHello.hostName($0) }) != nil else {
                throw s.fail("\"\(sni!)\": give a host name")
            }
        }
        let autoSni = try m.optional("auto_sni")?.bool() ?? false
        let verify = try m.optional("verify")?.bool() ?? true
        let ca = try m.optional("ca").map { (c: ConfigValue) throws(ConfigError) in try readablePath(c) }
        let (alpnGiven, minVersion) = try tlsCommon(m)
        let alpn = alpnGiven ?? defaultAlpn
        let cert = try m.optional("cert").map { (c: ConfigValue) throws(ConfigError) in try readablePath(c) }
        let key = try m.optional("key").map { (c: ConfigValue) throws(ConfigError) in try readablePath(c) }
        if (cert == nil) != (key == nil) { throw v.fail("give both cert and key (the client certificate), or neither") }
        try m.finish()
        do {
            let ctx = try TlsContext.client(caFile: ca, verify: verify, serverName: sni, alpn: alpn, minVersion: minVersion,
                                            certificate: cert.map { ($0, key!) })
            var c = TlsClientConfig(sni: sni, autoSni: autoSni, verify: verify, ca: ca, alpn: alpn, minVersion: minVersion, context: ctx)
            c.clientCert = cert
            c.clientKey = key
            return c
        } catch {
            throw v.fail(error.description)
        }
    }

    /// A listener's or chain's `tls` block; the files are loaded now, so a bad one is a config error.
    /// `defaultAlpn`: offered when the block has no `alpn` (the binary's choice).
    static func parseTls(_ v: ConfigValue, defaultAlpn: [String] = []) throws(ConfigError) -> TlsServerConfig {
        let m = try v.mapping()
        let cert = try readablePath(try m.required("cert"))
        let key = try readablePath(try m.required("key"))
        let (alpnGiven, minVersion) = try tlsCommon(m)
        let alpn = alpnGiven ?? defaultAlpn
        var handshakeMs: UInt64 = 10_000
        if let h = m.optional("handshake_timeout") {
            handshakeMs = try h.durationMs()
            if handshakeMs == 0 { throw h.fail("must be greater than 0") }
        }
        let clientCa = try m.optional("client_ca").map { (c: ConfigValue) throws(ConfigError) in try readablePath(c) }
        let require = try m.optional("require_client_certificate")?.bool() ?? false
        let crl = try m.optional("crl").map { (c: ConfigValue) throws(ConfigError) in try readablePath(c) }
        var sans: [SanMatcher] = []
        if let l = m.optional("match_subject_alt_names") {
            for item in try l.list() {
                let im = try item.mapping()
                let kinds = ["exact", "prefix", "suffix", "contains"].filter { im.keys.contains($0) }
                guard kinds.count == 1, let kind = kinds.first, let value = im.optional(kind) else {
                    throw item.fail("give one of exact, prefix, suffix, contains")
                }
                let s = try value.string()
                if s.isEmpty { throw value.fail("must not be empty") }
                switch kind {
                case "exact": sans.append(.exact(s))
                case "prefix": sans.append(.prefix(s))
                case "suffix": sans.append(.suffix(s))
                default: sans.append(.contains(s))
                }
                try im.finish()
            }
        }
        var ticketFiles: [String] = [], ticketKeys: [UInt8]?
        if let l = m.optional("session_ticket_keys") {
            var keys: [UInt8] = []
            let items = try l.list()
            if items.isEmpty || items.count > 16 { throw l.fail("give 1 to 16 key files (the first encrypts)") }
            for item in items {
                let path = try readablePath(item)
                guard let b = readFileBytes(path), b.count == 80 else {
                    throw item.fail("\"\(path)\" must hold exactly 80 bytes (16-byte name, 32-byte HMAC secret, 32-byte AES key), e.g. from `openssl rand 80`")
                }
                keys += b
                ticketFiles.append(path)
            }
            ticketKeys = keys
        }
        var ocspFile: String?, ocsp: [UInt8]?
        if let o = m.optional("ocsp_staple") {
            let path = try readablePath(o)
            guard let b = readFileBytes(path), !b.isEmpty, b.count <= 64 << 10 else { throw o.fail("\"\(path)\": give a DER OCSP response of at most 64 KiB") }
            ocspFile = path
            ocsp = b
        }
        if clientCa == nil {
            for k in ["require_client_certificate", "crl", "match_subject_alt_names"] where m.keys.contains(k) && (k != "require_client_certificate" || require) {
                throw ConfigError(v.path + "." + k, "needs client_ca (the CAs client certificates are checked against)")
            }
        }
        try m.finish()
        do {
            let identity = sans.map { "\($0)" }.joined(separator: "|")
            let validation = clientCa.map { TlsContext.ClientValidation(caFile: $0, require: require, crlFile: crl, identity: identity) }
            let ctx = try TlsContext.server(cert: cert, key: key, alpn: alpn, minVersion: minVersion, clientValidation: validation,
                                            ticketKeys: ticketKeys, ocspStaple: ocsp)
            var t = TlsServerConfig(cert: cert, key: key, alpn: alpn, minVersion: minVersion, handshakeTimeoutMs: handshakeMs, context: ctx)
            t.clientCa = clientCa
            t.requireClientCertificate = require
            t.crl = crl
            t.matchSubjectAltNames = sans
            t.sessionTicketKeys = ticketFiles
            t.ocspStaple = ocspFile
            return t
        } catch {
            throw v.fail(error.description)
        }
    }

    /// The binary's block in a listener or filter chain mapping.
    static func listenerBlock(_ m: ConfigMap, path: String, parser: FilterBlockParser) throws(ConfigError) -> ConfigMap {
        if let b = m.optional(parser.key) { return try b.mapping() }
        if let other = otherBlocks.first(where: { $0 != parser.key && m.keys.contains($0) }) {
            throw ConfigError("\(path).\(other)", "\(parser.binary) does not serve `\(other)` listeners; it needs a `\(parser.key)` block")
        }
        throw ConfigError("\(path).\(parser.key)", "missing required key")
    }

    /// A server name to match: a host name or `*.` and a suffix, lowercased.
    static func serverName(_ v: ConfigValue) throws(ConfigError) -> String {
        let s = try v.string()
        let wild = s.hasPrefix("*.")
        let host = wild ? String(s.dropFirst(2)) : s
        let ok: String? = Array(host.utf8).withUnsafeBytes { ClientHello.hostName($0) }
        guard let h = ok, !host.hasSuffix(".") else {
            throw v.fail("\"\(s)\": give a host name (api.example.com) or a wildcard (*.example.com)")
        }
        return wild ? "*." + h : h
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
