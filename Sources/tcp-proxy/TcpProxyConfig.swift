import Common

/// A cluster and its share of connections (`weighted_clusters`).
struct WeightedCluster: Sendable {
    let name: String
    let weight: Int
}

/// The `tcp:` listener block (docs/config.md). Immutable, built once per config generation.
struct TcpProxyConfig: ListenerFilterConfig {
    /// `stat_prefix` (default: the listener name): stats go under `tcp.<prefix>.`.
    var statPrefix: String
    /// `cluster`, or `weighted_clusters` (one entry when `cluster` is used).
    var clusters: [WeightedCluster]
    /// Path of each cluster reference, for error messages.
    var clusterPaths: [String]
    /// `idle_timeout` (default 1h, as Envoy; 0 disables): no bytes either way for this long closes.
    var idleTimeoutMs: UInt64 = 3_600_000
    /// `max_connect_attempts` (default 1): a failed connect retries on another host.
    var maxConnectAttempts = 1
    /// `max_downstream_connection_duration` (default none).
    var maxDurationMs: UInt64?
    /// `hash_policy: source_ip`: the client IP keys a hashing balancer (maglev).
    var hashSourceIp = false
    /// `splice` (default true): move bulk bytes with splice(2) when no filter needs to see them.
    var splice = true

    var clusterReferences: [(path: String, name: String)] {
        zip(clusterPaths, clusters).map { ($0, $1.name) }
    }

    static let blockParser = FilterBlockParser(binary: "tcp-proxy", key: "tcp") { (m: ConfigMap, listener: String) throws(ConfigError) -> any ListenerFilterConfig in
        var c = TcpProxyConfig(statPrefix: listener, clusters: [], clusterPaths: [])
        if let p = m.optional("stat_prefix") { c.statPrefix = try p.string() }
        let single = m.optional("cluster")
        let weighted = m.optional("weighted_clusters")
        switch (single, weighted) {
        case (let s?, nil):
            c.clusters = [WeightedCluster(name: try s.string(), weight: 1)]
            c.clusterPaths = [s.path]
        case (nil, let w?):
            let items = try w.list()
            if items.isEmpty { throw w.fail("at least one cluster is needed") }
            for item in items {
                let im = try item.mapping()
                let name = try im.required("name")
                let weight = try im.optional("weight")?.int(min: 1, max: 1_000_000) ?? 1
                c.clusters.append(WeightedCluster(name: try name.string(), weight: weight))
                c.clusterPaths.append(name.path)
                try im.finish()
            }
        case (_?, _?):
            throw ConfigError(m.path + ".cluster", "give either cluster or weighted_clusters, not both")
        case (nil, nil):
            throw ConfigError(m.path + ".cluster", "missing required key (or weighted_clusters)")
        }
        if let t = m.optional("idle_timeout") { c.idleTimeoutMs = try t.durationMs() }
        if let a = m.optional("max_connect_attempts") { c.maxConnectAttempts = try a.int(min: 1, max: 10) }
        if let d = m.optional("max_downstream_connection_duration") {
            let ms = try d.durationMs()
            c.maxDurationMs = ms == 0 ? nil : ms
        }
        if let h = m.optional("hash_policy") {
            c.hashSourceIp = try h.oneOf(["source_ip"]) == "source_ip"
        }
        if let s = m.optional("splice") { c.splice = try s.bool() }
        return c
    }

    func validate(clusters all: [ClusterConfig], path: String) throws(ConfigError) {
        guard hashSourceIp else { return }
        for (p, wc) in zip(clusterPaths, clusters) {
            if let cl = all.first(where: { $0.name == wc.name }), !cl.lbPolicy.hashesKeys {
                throw ConfigError(path + ".hash_policy",
                                  "source_ip hashing needs a hashing lb_policy (maglev or ring_hash) on cluster \"\(wc.name)\" (\(p)), which has \(cl.lbPolicy.rawValue)")
            }
        }
    }

    var dump: JSON {
        var f: [(String, JSON)] = [("stat_prefix", .string(statPrefix))]
        if clusters.count == 1 && clusters[0].weight == 1 {
            f.append(("cluster", .string(clusters[0].name)))
        } else {
            f.append(("weighted_clusters", .array(clusters.map { .object([("name", .string($0.name)), ("weight", .int(Int64($0.weight)))]) })))
        }
        f.append(("idle_timeout", .string(formatDuration(idleTimeoutMs))))
        f.append(("max_connect_attempts", .int(Int64(maxConnectAttempts))))
        if let d = maxDurationMs { f.append(("max_downstream_connection_duration", .string(formatDuration(d)))) }
        if hashSourceIp { f.append(("hash_policy", .string("source_ip"))) }
        f.append(("splice", .bool(splice)))
        return .object(f)
    }
}

/// Envoy's tcp_proxy stats, `tcp.<stat_prefix>.*`.
struct TcpProxyStats: Sendable {
    let downstreamCxTotal: Counter
    let downstreamCxNoRoute: Counter
    let downstreamCxRxBytesTotal: Counter
    let downstreamCxTxBytesTotal: Counter
    let downstreamFlowControlPausedReadingTotal: Counter
    let downstreamFlowControlResumedReadingTotal: Counter
    let idleTimeout: Counter
    let maxDownstreamConnectionDuration: Counter
    let upstreamFlushTotal: Counter

    init(store: StatsStore, prefix: String) {
        let p = "tcp.\(prefix)."
        downstreamCxTotal = store.counter(p + "downstream_cx_total")
        downstreamCxNoRoute = store.counter(p + "downstream_cx_no_route")
        downstreamCxRxBytesTotal = store.counter(p + "downstream_cx_rx_bytes_total")
        downstreamCxTxBytesTotal = store.counter(p + "downstream_cx_tx_bytes_total")
        downstreamFlowControlPausedReadingTotal = store.counter(p + "downstream_flow_control_paused_reading_total")
        downstreamFlowControlResumedReadingTotal = store.counter(p + "downstream_flow_control_resumed_reading_total")
        idleTimeout = store.counter(p + "idle_timeout")
        maxDownstreamConnectionDuration = store.counter(p + "max_downstream_connection_duration")
        upstreamFlushTotal = store.counter(p + "upstream_flush_total")
    }
}
