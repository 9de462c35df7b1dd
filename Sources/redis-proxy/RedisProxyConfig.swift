import Common
import RedisProtocol

/// How keys are spread over the cluster's hosts (twemproxy's `distribution`).
enum RedisDistribution: String, Sendable {
    /// libketama's ring, as nutcracker builds it (host `hash_key`s, default "ip:port", or
    /// twemproxy's server names): adding a shard moves about 1/N of the keys.
    case ketama
    /// hash % total weight, each host repeated weight times.
    case modula
    /// Any live host (for caches whose keys may land anywhere).
    case random
    /// Maglev's table (65537 slots, Envoy's weighting): as stable as ketama when a host changes,
    /// a flatter spread, a faster lookup. Not nutcracker's.
    case maglev
}

/// A copy of requests sent to another cluster (a migration's new cluster); its replies are
/// dropped (Envoy's `request_mirror_policy`).
struct RedisMirror: Sendable {
    var cluster: String
    var clusterPath: String
    /// `exclude_read_commands` (default false): mirror only commands that write.
    var excludeReadCommands = false
}

/// `prefix_routes.routes[i]`: keys starting with `prefix` go to `cluster` (Envoy's prefix routes;
/// the longest matching prefix wins).
struct RedisPrefixRoute: Sendable {
    var prefix: [UInt8]
    var cluster: String
    var clusterPath: String
    /// `remove_prefix` (default false): the shard sees the key without the prefix.
    var removePrefix = false
    var mirrors: [RedisMirror] = []
}

/// The `redis:` listener block (docs/config.md, "listeners[i].redis"). Immutable, built once
/// per config generation on the main thread.
struct RedisProxyConfig: ListenerFilterConfig {
    var statPrefix: String
    /// `cluster`: the shards, in config order (host order matters for modula).
    var cluster: String
    var clusterPath: String
    /// `hash` (default fnv1a_64, twemproxy's default).
    var hash = TwemproxyHash.default
    var distribution = RedisDistribution.ketama
    /// `hash_tag` (two characters, e.g. "{}"): only the part between them is hashed.
    var hashTag: HashTag?
    /// `op_timeout` (default 10s; 0 = none): a request without its reply by then gets
    /// `-ERR ... timeout`, and the upstream connection it waits on is closed (later replies on
    /// it could not be matched any more).
    var opTimeoutMs: UInt64 = 10_000
    /// `auto_eject_hosts` (default false, as twemproxy): a failing shard's keys get errors and
    /// no key moves. True: after `server_failure_limit` consecutive failures the shard leaves
    /// the distribution for `server_retry_timeout`.
    var autoEjectHosts = false
    var serverFailureLimit = 2
    var serverRetryTimeoutMs: UInt64 = 30_000
    /// `server_connections` (default 1): pipelined connections per shard per worker.
    var serverConnections = 1
    /// `preconnect` (default false): connect to every shard when a worker starts.
    var preconnect = false
    /// `downstream_auth_passwords` (and optional `downstream_auth_username`): clients must AUTH
    /// with one of them first (`-NOAUTH` before).
    var downstreamAuthPasswords: [String] = []
    var downstreamAuthUsername: String?
    /// `auth_password` (and optional `auth_username`): sent as AUTH on each upstream connection
    /// before anything else (twemproxy's `redis_auth`).
    var upstreamAuthPassword: String?
    var upstreamAuthUsername: String?
    /// `max_pipeline` (default 1024): requests of one client in flight at once; reading from
    /// the client pauses above it (the memory bound on a client that never reads).
    var maxPipeline = 1024
    /// Request limits (`max_bulk_length`, default 512 MB as Redis's proto-max-bulk-len;
    /// `max_request_bytes`, default 512 MB + 1 MB).
    var limits = RespRequestLimits(maxRequestBytes: 513 * 1024 * 1024)

    /// `prefix_routes`: `routes` (longest prefix first after parsing) and `case_insensitive`;
    /// `cluster` is the catch-all, with `mirror` as its mirrors.
    var prefixRoutes: [RedisPrefixRoute] = []
    var prefixCaseInsensitive = false
    var mirrors: [RedisMirror] = []

    var clusterReferences: [(path: String, name: String)] {
        [(clusterPath, cluster)] + mirrors.map { ($0.clusterPath, $0.cluster) }
            + prefixRoutes.flatMap { r in [(r.clusterPath, r.cluster)] + r.mirrors.map { ($0.clusterPath, $0.cluster) } }
    }

    static func parseMirrors(_ v: ConfigValue) throws(ConfigError) -> [RedisMirror] {
        let items = try v.list()
        if items.count > 8 { throw v.fail("at most 8 mirrors") }
        var out: [RedisMirror] = []
        for i in items {
            let m = try i.mapping()
            let cv = try m.required("cluster")
            var r = RedisMirror(cluster: try cv.string(), clusterPath: cv.path)
            if let e = m.optional("exclude_read_commands") { r.excludeReadCommands = try e.bool() }
            try m.finish()
            out.append(r)
        }
        return out
    }

    static let blockParser = FilterBlockParser(binary: "redis-proxy", key: "redis") { (m: ConfigMap, listener: String) throws(ConfigError) -> any ListenerFilterConfig in
        let cv = try m.required("cluster")
        var c = RedisProxyConfig(statPrefix: listener, cluster: try cv.string(), clusterPath: cv.path)
        if let v = m.optional("stat_prefix") { c.statPrefix = try v.string() }
        if let v = m.optional("hash") {
            c.hash = TwemproxyHash(rawValue: try v.oneOf(TwemproxyHash.allCases.map(\.rawValue)))!
        }
        if let v = m.optional("distribution") {
            c.distribution = RedisDistribution(rawValue: try v.oneOf(["ketama", "modula", "random", "maglev"]))!
        }
        if let v = m.optional("hash_tag") {
            let s = try v.string()
            guard let t = HashTag(s) else { throw v.fail("\"\(s)\" is not a hash tag (two characters, like \"{}\")") }
            c.hashTag = t
        }
        if let v = m.optional("op_timeout") { c.opTimeoutMs = try v.durationMs() }
        if let v = m.optional("auto_eject_hosts") { c.autoEjectHosts = try v.bool() }
        if let v = m.optional("server_failure_limit") { c.serverFailureLimit = try v.int(min: 1, max: 1000) }
        if let v = m.optional("server_retry_timeout") { c.serverRetryTimeoutMs = try v.durationMs() }
        if let v = m.optional("server_connections") { c.serverConnections = try v.int(min: 1, max: 64) }
        if let v = m.optional("preconnect") { c.preconnect = try v.bool() }
        if let v = m.optional("downstream_auth_passwords") {
            let items = try v.list()
            if items.isEmpty { throw v.fail("at least one password (or leave the key out)") }
            for i in items {
                let p = try i.string()
                if p.isEmpty { throw i.fail("an empty password") }
                c.downstreamAuthPasswords.append(p)
            }
        }
        if let v = m.optional("downstream_auth_username") {
            if c.downstreamAuthPasswords.isEmpty { throw v.fail("needs downstream_auth_passwords") }
            c.downstreamAuthUsername = try v.string()
        }
        if let v = m.optional("auth_password") { c.upstreamAuthPassword = try v.string() }
        if let v = m.optional("auth_username") {
            if c.upstreamAuthPassword == nil { throw v.fail("needs auth_password") }
            c.upstreamAuthUsername = try v.string()
        }
        if let v = m.optional("max_pipeline") { c.maxPipeline = try v.int(min: 1, max: 1_000_000) }
        if let v = m.optional("max_bulk_length") { c.limits.maxBulkLength = try v.bytes(min: 1, max: 512 * 1024 * 1024) }
        if let v = m.optional("max_request_bytes") { c.limits.maxRequestBytes = try v.bytes(min: 1024, max: 1 << 30) }
        if let v = m.optional("mirror") { c.mirrors = try parseMirrors(v) }
        if let v = m.optional("prefix_routes") {
            let pr = try v.mapping()
            if let ci = pr.optional("case_insensitive") { c.prefixCaseInsensitive = try ci.bool() }
            let routes = try pr.required("routes").list()
            if routes.count > 10_000 { throw v.fail("at most 10000 routes") }
            var seen = Set<[UInt8]>()
            for rv in routes {
                let rm = try rv.mapping()
                let pv = try rm.required("prefix")
                var prefix = Array(try pv.string().utf8)
                if prefix.isEmpty { throw pv.fail("an empty prefix (the block's cluster is the catch-all)") }
                if c.prefixCaseInsensitive { prefix = prefix.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 } }
                if !seen.insert(prefix).inserted { throw pv.fail("prefix \"\(String(decoding: prefix, as: UTF8.self))\" is given twice") }
                let cv = try rm.required("cluster")
                var r = RedisPrefixRoute(prefix: prefix, cluster: try cv.string(), clusterPath: cv.path)
                if let x = rm.optional("remove_prefix") { r.removePrefix = try x.bool() }
                if let x = rm.optional("mirror") { r.mirrors = try parseMirrors(x) }
                try rm.finish()
                c.prefixRoutes.append(r)
            }
            try pr.finish()
            c.prefixRoutes.sort { $0.prefix.count > $1.prefix.count }  // longest first: the first match wins
        }
        return c
    }

    var dump: JSON {
        var f: [(String, JSON)] = [
            ("stat_prefix", .string(statPrefix)), ("cluster", .string(cluster)), ("hash", .string(hash.rawValue)),
            ("distribution", .string(distribution.rawValue)),
        ]
        if let t = hashTag { f.append(("hash_tag", .string(String(decoding: [t.open, t.close], as: UTF8.self)))) }
        f += [
            ("op_timeout", .string(formatDuration(opTimeoutMs))), ("auto_eject_hosts", .bool(autoEjectHosts)),
            ("server_failure_limit", .int(Int64(serverFailureLimit))),
            ("server_retry_timeout", .string(formatDuration(serverRetryTimeoutMs))),
            ("server_connections", .int(Int64(serverConnections))), ("preconnect", .bool(preconnect)),
            ("max_pipeline", .int(Int64(maxPipeline))), ("max_bulk_length", .int(Int64(limits.maxBulkLength))),
            ("max_request_bytes", .int(Int64(limits.maxRequestBytes))),
        ]
        func mirrorDump(_ ms: [RedisMirror]) -> JSON {
            .array(ms.map { .object([("cluster", .string($0.cluster)), ("exclude_read_commands", .bool($0.excludeReadCommands))]) })
        }
        if !mirrors.isEmpty { f.append(("mirror", mirrorDump(mirrors))) }
        if !prefixRoutes.isEmpty {
            f.append(("prefix_routes", .object([
                ("case_insensitive", .bool(prefixCaseInsensitive)),
                ("routes", .array(prefixRoutes.map { r in
                    .object([("prefix", .string(String(decoding: r.prefix, as: UTF8.self))), ("cluster", .string(r.cluster)),
                             ("remove_prefix", .bool(r.removePrefix))] + (r.mirrors.isEmpty ? [] : [("mirror", mirrorDump(r.mirrors))]))
                })),
            ])))
        }
        // Secrets are never dumped, only whether they are set.
        if !downstreamAuthPasswords.isEmpty { f.append(("downstream_auth_passwords", .string("<\(downstreamAuthPasswords.count) set>"))) }
        if upstreamAuthPassword != nil { f.append(("auth_password", .string("<set>"))) }
        return .object(f)
    }
}
