import Glibc

/// Renders a stats snapshot as Envoy does: text, JSON, Prometheus. Per-host stats live with
/// their hosts (`HostStats`) and are shown by /clusters, not here.
enum StatsFormat {
    /// A POSIX extended regex filter (Envoy's `?filter=`). The admin thread is the main
    /// thread: a pattern that backtracks (glibc accepts back-references, `\1`, in ERE) could
    /// freeze checks, reloads and drain, so back-references and long or deeply repeated
    /// patterns are refused (400).
    final class Filter {
        private var re = regex_t()
        private var compiled = false
        static let maxLength = 256
        init?(_ pattern: String) {
            let b = Array(pattern.utf8)
            if b.count > Filter.maxLength { return nil }
            for i in b.indices.dropLast() where b[i] == 0x5C && b[i + 1] >= 0x30 && b[i + 1] <= 0x39 { return nil }
            if b.filter({ $0 == 0x2A || $0 == 0x2B || $0 == 0x7B }).count > 8 { return nil }
            if regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB) != 0 { return nil }
            compiled = true
        }
        deinit { if compiled { regfree(&re) } }
        func matches(_ s: String) -> Bool { regexec(&re, s, 0, nil, 0) == 0 }
    }

    static func visible(_ name: String, _ f: Filter?) -> Bool {
        !name.hasPrefix("_") && (f?.matches(name) ?? true)
    }

    static func text(_ s: StatsStore.Snapshot, filter: Filter?, usedOnly: Bool) -> String {
        var rows: [(String, String)] = []
        for (n, v) in s.counters where visible(n, filter) && (!usedOnly || v != 0) { rows.append((n, String(v))) }
        for (n, v) in s.gauges where visible(n, filter) && (!usedOnly || v != 0) { rows.append((n, String(v))) }
        for (n, h) in s.histograms where visible(n, filter) && (!usedOnly || h.count != 0) {
            rows.append((n, h.count == 0 ? "No recorded values"
                : "P50(\(fmt(quantile(h, 0.5)))) P90(\(fmt(quantile(h, 0.9)))) P99(\(fmt(quantile(h, 0.99)))) count(\(h.count)) sum(\(h.sum))"))
        }
        return rows.sorted { $0.0 < $1.0 }.map { "\($0.0): \($0.1)\n" }.joined()
    }

    static func json(_ s: StatsStore.Snapshot, filter: Filter?, usedOnly: Bool) -> String {
        var stats: [JSON] = []
        for (n, v) in (s.counters + s.gauges).sorted(by: { $0.0 < $1.0 }) where visible(n, filter) && (!usedOnly || v != 0) {
            stats.append(.object([("name", .string(n)), ("value", .int(v))]))
        }
        var hists: [JSON] = []
        for (n, h) in s.histograms where visible(n, filter) && (!usedOnly || h.count != 0) {
            hists.append(.object([("name", .string(n)), ("count", .int(Int64(h.count))), ("sum", .int(Int64(h.sum))),
                                  ("p50", .double(quantile(h, 0.5))), ("p90", .double(quantile(h, 0.9))),
                                  ("p99", .double(quantile(h, 0.99)))]))
        }
        stats.append(.object([("histograms", .array(hists))]))
        return JSON.object([("stats", .array(stats))]).serialized(pretty: true) + "\n"
    }

    /// Upper bound of the bucket holding the q-quantile.
    static func quantile(_ h: StatsStore.HistogramValue, _ q: Double) -> Double {
        if h.count == 0 { return 0 }
        let target = UInt64((Double(h.count) * q).rounded(.up))
        var acc: UInt64 = 0
        for (i, c) in h.buckets.enumerated() {
            acc += c
            if acc >= target { return Histogram.bucketsMs[i] }
        }
        return Histogram.bucketsMs.last! * 2
    }

    static func fmt(_ d: Double) -> String { d == d.rounded() ? String(Int(d)) : String(d) }

    /// Envoy's default tag extraction for the main scopes, so its Prometheus names carry over:
    /// `cluster.X.upstream_cx_total` → `envoy_cluster_upstream_cx_total{envoy_cluster_name="X"}`.
    static func promName(_ name: String) -> (String, String) {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        let tags: [String: String] = ["cluster": "envoy_cluster_name", "listener": "envoy_listener_address",
                                      "tcp": "envoy_tcp_prefix", "udp": "envoy_udp_prefix",
                                      "http": "envoy_http_conn_manager_prefix", "redis": "envoy_redis_prefix"]
        if parts.count >= 3, let tag = tags[parts[0]] {
            let metric = "envoy_" + sanitize(([parts[0]] + parts[2...]).joined(separator: "_"))
            return (metric, "{\(tag)=\"\(parts[1])\"}")
        }
        return ("envoy_" + sanitize(parts.joined(separator: "_")), "")
    }

    static func sanitize(_ s: String) -> String {
        String(s.map { c -> Character in (c.isLetter && c.isASCII) || (c.isNumber && c.isASCII) || c == "_" ? c : "_" })
    }

    static func prometheus(_ s: StatsStore.Snapshot) -> String {
        var out = ""
        var typed = Set<String>()
        func emit(_ n: String, _ kind: String, _ body: (String, String) -> String) {
            guard !n.hasPrefix("_") else { return }
            let (metric, labels) = promName(n)
            if typed.insert(metric).inserted { out += "# TYPE \(metric) \(kind)\n" }
            out += body(metric, labels)
        }
        for (n, v) in s.counters { emit(n, "counter") { "\($0)\($1) \(v)\n" } }
        for (n, v) in s.gauges { emit(n, "gauge") { "\($0)\($1) \(v)\n" } }
        for (n, h) in s.histograms {
            emit(n, "histogram") { metric, labels in
                var body = ""
                var acc: UInt64 = 0
                let inner = labels.isEmpty ? "" : String(labels.dropFirst().dropLast()) + ","
                for (i, c) in h.buckets.enumerated() {
                    acc += c
                    body += "\(metric)_bucket{\(inner)le=\"\(fmt(Histogram.bucketsMs[i]))\"} \(acc)\n"
                }
                body += "\(metric)_bucket{\(inner)le=\"+Inf\"} \(h.count)\n"
                body += "\(metric)_sum\(labels) \(h.sum)\n\(metric)_count\(labels) \(h.count)\n"
                return body
            }
        }
        return out
    }
}

/// The running config as JSON (admin /config_dump).
enum ConfigDump {
    static func render(_ c: ProxyConfig) -> JSON {
        var root: [(String, JSON)] = []
        if let a = c.adminAddress { root.append(("admin", .object([("address", .string(a.description))]))) }
        root.append(("workers", c.workers.map { .int(Int64($0)) } ?? .string("auto")))
        root.append(("drain_timeout", .string(formatDuration(c.drainTimeoutMs))))
        root.append(("listeners", .array(c.listeners.map { l in
            var f: [(String, JSON)] = [("name", .string(l.name)), ("address", .string(l.address.description)),
                                       ("proxy_protocol", .string(l.proxyProtocol.rawValue)),
                                       ("proxy_protocol_timeout", .string(formatDuration(l.proxyProtocolTimeoutMs))),
                                       ("connection_balance", .string(l.connectionBalance.rawValue)),
                                       ("per_connection_buffer_limit", .int(Int64(l.bufferLimit))),
                                       ("backlog", .int(Int64(l.backlog)))]
            if let m = l.maxConnections { f.append(("max_connections", .int(Int64(m)))) }
            if !l.accessLogs.isEmpty {
                f.append(("access_log", .array(l.accessLogs.map { a in
                    var o: [(String, JSON)] = [("path", .string(a.path))]
                    if let fmt = a.format { o.append(("format", .string(fmt))) }
                    if let j = a.jsonFormat { o.append(("json_format", .object(j.map { ($0.0, .string($0.1)) }))) }
                    return .object(o)
                })))
            }
            if l.chains.count == 1 && l.chains[0].serverNames.isEmpty {
                if let t = l.chains[0].tls { f.append(("tls", t.dump)) }
                f.append(("filter", l.filter.dump))
            } else {
                f.append(("tls_inspector_timeout", .string(formatDuration(l.tlsInspectorTimeoutMs))))
                f.append(("filter_chains", .array(l.chains.map { ch in
                    var o: [(String, JSON)] = [("name", .string(ch.name))]
                    if !ch.serverNames.isEmpty {
                        o.append(("match", .object([("server_names", .array(ch.serverNames.map { .string($0) }))])))
                    }
                    if let t = ch.tls { o.append(("tls", t.dump)) }
                    o.append(("filter", ch.filter.dump))
                    return .object(o)
                })))
            }
            return .object(f)
        })))
        root.append(("clusters", .array(c.clusters.map { cl in
            var f: [(String, JSON)] = [("name", .string(cl.name)), ("discovery", .string(cl.discovery)),
                                       ("lb_policy", .string(cl.lbPolicy.rawValue)),
                                       ("connect_timeout", .string(formatDuration(cl.connectTimeoutMs))),
                                       ("endpoints", .array(cl.endpoints.map {
                                           .object([("address", .string($0.address.description)), ("weight", .int(Int64($0.weight)))])
                                       }))]
            if let v = cl.sendProxyProtocol { f.append(("send_proxy_protocol", .string(v.rawValue))) }
            if let t = cl.tls { f.append(("tls", t.dump)) }
            if let m = cl.maxConnections { f.append(("circuit_breakers", .object([("max_connections", .int(Int64(m)))]))) }
            if let o = cl.binaryOptions { f.append((o.configKey, o.dump)) }
            return .object(f)
        })))
        return .object(root)
    }
}
