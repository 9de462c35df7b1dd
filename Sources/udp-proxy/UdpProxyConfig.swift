import Common

/// The `udp:` listener block (docs/udp-proxy.md).
struct UdpProxyConfig: ListenerFilterConfig {
    var statPrefix: String
    var cluster: String
    var clusterPath: String
    /// `idle_timeout` (default 60s, as Envoy): a session with no datagram either way ends.
    var idleTimeoutMs: UInt64 = 60_000
    /// `max_sessions` (default: the cluster's `circuit_breakers.max_connections`, else 1024):
    /// more clients than this per listener are dropped (`UdpProxyFactory.sessionLimit`).
    var maxSessions: Int?
    /// `responses` (default 0 = unlimited, nginx's proxy_responses): the session ends after
    /// this many datagrams from the upstream (1 for DNS), so one-shot queries do not pin sockets.
    var responses = 0
    /// `hash_policy: source_ip`: the client IP keys a hashing balancer.
    var hashSourceIp = false
    /// `use_per_packet_load_balancing` (Envoy's name): every datagram is balanced on its own;
    /// a session keeps one socket per host it has used, and replies from any of them reach the client.
    var perPacket = false

    var clusterReferences: [(path: String, name: String)] { [(clusterPath, cluster)] }

    static let blockParser = FilterBlockParser(binary: "udp-proxy", key: "udp", datagram: true) { (m: ConfigMap, listener: String) throws(ConfigError) -> any ListenerFilterConfig in
        let c = try m.required("cluster")
        var u = UdpProxyConfig(statPrefix: listener, cluster: try c.string(), clusterPath: c.path)
        if let p = m.optional("stat_prefix") { u.statPrefix = try p.string() }
        if let t = m.optional("idle_timeout") {
            u.idleTimeoutMs = try t.durationMs()
            if u.idleTimeoutMs == 0 { throw t.fail("must be greater than 0") }
        }
        if let x = m.optional("max_sessions") { u.maxSessions = try x.int(min: 1) }
        if let x = m.optional("responses") { u.responses = try x.int(min: 0, max: 1_000_000) }
        if let h = m.optional("hash_policy") { u.hashSourceIp = try h.oneOf(["source_ip"]) == "source_ip" }
        if let p = m.optional("use_per_packet_load_balancing") {
            u.perPacket = try p.bool()
            if u.perPacket && u.hashSourceIp {
                throw p.fail("per-packet balancing spreads a client's datagrams; hash_policy source_ip pins them to one host: choose one")
            }
        }
        return u
    }

    func validate(clusters all: [ClusterConfig], path: String) throws(ConfigError) {
        if hashSourceIp, let cl = all.first(where: { $0.name == cluster }), !cl.lbPolicy.hashesKeys {
            throw ConfigError(path + ".hash_policy", "source_ip hashing needs lb_policy maglev or ring_hash on cluster \"\(cluster)\"")
        }
    }

    var dump: JSON {
        var f: [(String, JSON)] = [("stat_prefix", .string(statPrefix)), ("cluster", .string(cluster)),
                                   ("idle_timeout", .string(formatDuration(idleTimeoutMs))), ("responses", .int(Int64(responses)))]
        if let m = maxSessions { f.append(("max_sessions", .int(Int64(m)))) }
        if hashSourceIp { f.append(("hash_policy", .string("source_ip"))) }
        if perPacket { f.append(("use_per_packet_load_balancing", .bool(true))) }
        return .object(f)
    }
}

/// Envoy's udp_proxy stats, `udp.<stat_prefix>.*`.
struct UdpProxyStats: Sendable {
    let downstreamSessTotal: Counter
    let downstreamSessActive: Gauge
    let downstreamSessRxDatagrams: Counter
    let downstreamSessRxBytes: Counter
    let downstreamSessTxDatagrams: Counter
    let downstreamSessTxBytes: Counter
    let downstreamSessRxErrors: Counter
    let downstreamSessTxErrors: Counter
    let downstreamSessOverflow: Counter
    let downstreamSessNoRoute: Counter
    let idleTimeout: Counter
    let responsesComplete: Counter
    let upstreamRxErrors: Counter

    init(store: StatsStore, prefix: String) {
        let p = "udp.\(prefix)."
        downstreamSessTotal = store.counter(p + "downstream_sess_total")
        downstreamSessActive = store.gauge(p + "downstream_sess_active")
        downstreamSessRxDatagrams = store.counter(p + "downstream_sess_rx_datagrams")
        downstreamSessRxBytes = store.counter(p + "downstream_sess_rx_bytes")
        downstreamSessTxDatagrams = store.counter(p + "downstream_sess_tx_datagrams")
        downstreamSessTxBytes = store.counter(p + "downstream_sess_tx_bytes")
        downstreamSessRxErrors = store.counter(p + "downstream_sess_rx_errors")
        downstreamSessTxErrors = store.counter(p + "downstream_sess_tx_errors")
        downstreamSessOverflow = store.counter(p + "downstream_sess_overflow")
        downstreamSessNoRoute = store.counter(p + "downstream_sess_no_route")
        idleTimeout = store.counter(p + "idle_timeout")
        responsesComplete = store.counter(p + "responses_complete")
        upstreamRxErrors = store.counter(p + "upstream_rx_errors")
    }
}
