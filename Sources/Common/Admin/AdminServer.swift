import CLibevent
import Glibc
import Logging

/// The admin HTTP endpoint, on the main thread's loop (libevent's evhttp): Envoy's paths, so
/// existing scripts and dashboards carry over. Loopback by default; it is not hardened for
/// hostile networks (Envoy's advice holds: never expose it), and the server warns when it is
/// bound elsewhere.
///
/// A web page the operator opens can make the browser send requests to a loopback port, so a
/// mutation (any POST) that carries a browser's cross-site marks is refused with 403 and counted
/// in `http.admin.downstream_rq_cross_site_rejected`: an `Origin` header (browsers send it on
/// every cross-origin POST, and on DNS-rebound ones), or `Sec-Fetch-Site: cross-site` or
/// `same-site`. Tools (curl, scripts) send neither. Reads stay open: a browser does not let
/// another site read the replies.
final class AdminServer {
    unowned let server: Server
    private let http: OpaquePointer
    let address: SocketAddress
    /// `http.admin.downstream_rq_cross_site_rejected`.
    private let crossSiteRejected: Counter
    /// POST /quitquitquit was answered: quit once the reply is sent.
    private var quitAfterReply = false

    struct AdminError: Error, CustomStringConvertible { let description: String }

    init(server: Server, dispatcher: Dispatcher, address: SocketAddress) throws {
        self.server = server
        crossSiteRejected = server.store.counter("http.admin.downstream_rq_cross_site_rejected")
        guard let h = evhttp_new(dispatcher.base) else { throw AdminError(description: "evhttp_new failed") }
        http = h
        guard address.family != .unix else { throw AdminError(description: "admin needs a host:port address") }
        guard let handle = evhttp_bind_socket_with_handle(h, address.host, address.port) else {
            evhttp_free(h)
            throw AdminError(description: "cannot listen on \(address)")
        }
        let fd = evhttp_bound_socket_get_fd(handle)
        self.address = SocketAddress.local(of: fd) ?? address
        // Admin requests are small; anything larger is refused by evhttp (413/400) and a slow
        // client is cut off.
        evhttp_set_max_headers_size(h, 16 * 1024)
        evhttp_set_max_body_size(h, 64 * 1024)
        evhttp_set_timeout(h, 10)
        evhttp_set_allowed_methods(h, UInt16(EVHTTP_REQ_GET.rawValue | EVHTTP_REQ_POST.rawValue | EVHTTP_REQ_HEAD.rawValue))
        evhttp_set_gencb(h, { req, ctx in
            Unmanaged<AdminServer>.fromOpaque(ctx!).takeUnretainedValue().handle(req!)
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit { evhttp_free(http) }

    /// Envoy's /certs: each TLS listener chain's certificate, and each cluster's CA.
    private func certs() -> JSON {
        let now = Int64(wallMs() / 1000)
        var out: [JSON] = server.certificates.map { l, chain, tls in
            var cert: [(String, JSON)] = [("path", .string(tls.cert))]
            if let c = tls.context.certificate {
                cert += [("serial_number", .string(c.serial)), ("subject", .string(c.subject)),
                         ("subject_alt_names", .array(c.dnsNames.map { .object([("dns", .string($0))]) })),
                         ("days_until_expiration", .int(c.daysUntilExpiration(nowSeconds: now))),
                         ("valid_from", .string(iso8601(UInt64(max(0, c.notBefore)) * 1000))),
                         ("expiration_time", .string(iso8601(UInt64(max(0, c.notAfter)) * 1000)))]
            }
            return .object([("listener", .string(l)), ("filter_chain", .string(chain)), ("cert_chain", .array([.object(cert)]))])
        }
        for c in server.snapshot.config.clusters {
            guard let t = c.tls else { continue }
            out.append(.object([("cluster", .string(c.name)), ("ca_cert", .array([.object([("path", .string(t.ca ?? "(system)"))])])),
                                ("verify", .bool(t.verify))]))
        }
        return .object([("certificates", .array(out))])
    }

    private func handle(_ req: OpaquePointer) {
        let uri = String(cString: evhttp_request_get_uri(req))
        let method = evhttp_request_get_command(req)
        let isPost = method == EVHTTP_REQ_POST
        var path = uri
        var query: [String: String] = [:]
        if let q = uri.firstIndex(of: "?") {
            path = String(uri[..<q])
            query = AdminServer.parseQuery(uri[uri.index(after: q)...])
        }
        let (code, type, body): (Int, String, String)
        if isPost && AdminServer.isCrossSite(req) {
            server.store.mainSlab.inc(crossSiteRejected)
            (code, type, body) = (403, "text/plain; charset=UTF-8", "cross-site admin requests are refused\n")
        } else {
            (code, type, body) = route(path: path, query: query, post: isPost)
        }
        if quitAfterReply {
            // Exit only once the reply is on the wire.
            evhttp_request_set_on_complete_cb(req, { _, ctx in
                Unmanaged<AdminServer>.fromOpaque(ctx!).takeUnretainedValue().server.quit()
            }, Unmanaged.passUnretained(self).toOpaque())
        }
        let out = evbuffer_new()
        var b = body
        b.withUTF8 { _ = evbuffer_add(out, $0.baseAddress, $0.count) }
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-cache, max-age=0")
        evhttp_send_reply(req, Int32(code), code == 200 ? "OK" : code == 403 ? "Forbidden" : code == 404 ? "Not Found" : code == 405 ? "Method Not Allowed" : "Error", out)
        evbuffer_free(out)
    }

    /// Whether a request carries a browser's marks of coming from another site (see the type's
    /// comment): any `Origin`, or `Sec-Fetch-Site` other than `same-origin` and `none`.
    /// `a=1&b&=c&d=` → ["a": "1", "b": "", "": "c", "d": ""]: every piece kept, nothing trusted
    /// (an empty pair once split to nothing and trapped on `kv[0]`).
    static func parseQuery(_ q: Substring) -> [String: String] {
        var query: [String: String] = [:]
        for pair in q.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let k = kv.first else { continue }
            query[percentDecode(String(k))] = kv.count > 1 ? percentDecode(String(kv[1])) : ""
        }
        return query
    }

    static func isCrossSite(_ req: OpaquePointer) -> Bool {
        let headers = evhttp_request_get_input_headers(req)
        if evhttp_find_header(headers, "Origin") != nil { return true }
        guard let site = evhttp_find_header(headers, "Sec-Fetch-Site") else { return false }
        let v = String(cString: site).lowercased()
        return v != "same-origin" && v != "none"
    }

    private func route(path: String, query: [String: String], post: Bool) -> (Int, String, String) {
        let text = "text/plain; charset=UTF-8", json = "application/json"
        let postOnly: Set<String> = ["/healthcheck/fail", "/healthcheck/ok", "/drain_listeners", "/quitquitquit", "/logging"]
        if postOnly.contains(path) && !post { return (405, text, "\(path) needs POST\n") }
        switch path {
        case "/", "/help":
            return (200, text, """
            admin commands:
              /stats               counters, gauges, histograms (?format=json, ?filter=REGEX, ?usedonly)
              /stats/prometheus    Prometheus text exposition
              /clusters            hosts, weights, health, counters (?format=json)
              /listeners           listeners and bound addresses (?format=json)
              /ready               200 LIVE, 503 when draining or health check failed
              /server_info         version, state, uptime (JSON)
              /config_dump         the running config (JSON)
              /certs               TLS certificates in use: names, serials, expiry (JSON)
              POST /healthcheck/fail, /healthcheck/ok, /drain_listeners, /quitquitquit
              POST /logging?level=debug   change the log level (trace ... critical)

            """ + server.binary.adminPages.map { "  \($0.path.padding(toLength: 20, withPad: " ", startingAt: 0)) \($0.help)\n" }.joined())
        case "/stats":
            let filter = query["filter"].flatMap { StatsFormat.Filter($0) }
            if query["filter"] != nil && filter == nil { return (400, text, "bad filter regex\n") }
            let snap = server.store.snapshot()
            let used = query["usedonly"] != nil
            if query["format"] == "json" { return (200, json, StatsFormat.json(snap, filter: filter, usedOnly: used)) }
            return (200, text, StatsFormat.text(snap, filter: filter, usedOnly: used))
        case "/stats/prometheus":
            return (200, "text/plain; version=0.0.4", StatsFormat.prometheus(server.store.snapshot()))
        case "/clusters":
            return (200, query["format"] == "json" ? json : text, clusters(json: query["format"] == "json"))
        case "/listeners":
            if query["format"] == "json" {
                let ls = server.boundAddresses.map { JSON.object([("name", .string($0.0)), ("local_address", .string($0.1.description))]) }
                return (200, json, JSON.object([("listener_statuses", .array(ls))]).serialized(pretty: true) + "\n")
            }
            return (200, text, server.boundAddresses.map { "\($0.0)::\($0.1)\n" }.joined())
        case "/ready":
            if server.state != .live { return (503, text, "\(server.state.rawValue)\n") }
            // Drained listeners accept nothing: a balancer in front must stop sending here.
            if server.listenersStopped { return (503, text, "DRAINING\n") }
            if server.healthCheckFailed { return (503, text, "HEALTH_CHECK_FAILED\n") }
            return (200, text, "LIVE\n")
        case "/server_info":
            let info = JSON.object([
                ("version", .string(toolkitVersion)),
                ("binary", .string(server.binary.blockParser.binary)),
                ("state", .string(server.state.rawValue)),
                ("uptime_current_epoch", .string("\(server.uptimeSeconds)s")),
                ("concurrency", .int(Int64(server.store.value("server.concurrency") ?? 0))),
                ("config_generation", .int(Int64(server.snapshot.generation))),
                ("pid", .int(Int64(getpid()))),
            ])
            return (200, json, info.serialized(pretty: true) + "\n")
        case "/certs":
            return (200, json, certs().serialized(pretty: true) + "\n")
        case "/config_dump":
            return (200, json, ConfigDump.render(server.snapshot.config).serialized(pretty: true) + "\n")
        case "/healthcheck/fail":
            server.healthCheckFailed = true
            return (200, text, "OK\n")
        case "/healthcheck/ok":
            server.healthCheckFailed = false
            return (200, text, "OK\n")
        case "/drain_listeners":
            server.stopListening(drainSessions: query["graceful"] != nil)
            return (200, text, "OK\n")
        case "/logging":
            if let l = query["level"] {
                guard let level = Logger.Level(rawValue: l) else {
                    return (400, text, "unknown level \"\(l)\"; use one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))\n")
                }
                LogLevelControl.shared.level = level
            }
            return (200, text, "active loggers:\n  \(server.binary.blockParser.binary): \(LogLevelControl.shared.level.rawValue)\n")
        case "/quitquitquit":
            quitAfterReply = true
            return (200, text, "OK\n")
        default:
            if let page = server.binary.adminPages.first(where: { $0.path == path }) { return page.render(server.snapshot, query) }
            return (404, text, "unknown admin path \(path); see /help\n")
        }
    }

    /// Envoy's /clusters text: `cluster::host::stat::value` lines.
    private func clusters(json: Bool) -> String {
        var lines = ""
        var jclusters: [JSON] = []
        for name in server.snapshot.clusters.keys.sorted() {
            let c = server.snapshot.clusters[name]!
            let cb = c.config.maxConnections.map { String($0) } ?? "unlimited"
            lines += "\(name)::default_priority::max_connections::\(cb)\n"
            lines += "\(name)::default_priority::cx_open::\(c.openConnections.current)\n"
            lines += "\(name)::default_priority::max_pending_requests::\(c.config.maxPending.map { String($0) } ?? "unlimited")\n"
            lines += "\(name)::default_priority::rq_pending_open::\(c.pending.current)\n"
            lines += "\(name)::default_priority::max_retries::\(c.config.maxRetries.map { String($0) } ?? "unlimited")\n"
            lines += "\(name)::default_priority::rq_retry_open::\(c.retries.current)\n"
            lines += "\(name)::outlier::ejected::\(c.hosts.filter(\.ejected).count)\n"
            lines += "\(name)::lb_policy::\(c.config.lbPolicy.rawValue)\n"
            var jhosts: [JSON] = []
            for h in c.hosts {
                let total = h.stats.value(.cxTotal)
                let active = h.stats.value(.cxActive)
                let fail = h.stats.value(.cxConnectFail)
                let a = h.address.description
                lines += "\(name)::\(a)::cx_active::\(active)\n"
                lines += "\(name)::\(a)::cx_connect_fail::\(fail)\n"
                lines += "\(name)::\(a)::cx_total::\(total)\n"
                // Request stats (http-proxy's router counts them; 0 for the L4 binaries).
                for f in [HostStats.Field.rqActive, .rqError, .rqSuccess, .rqTimeout, .rqTotal] {
                    lines += "\(name)::\(a)::\(f.name)::\(h.stats.value(f))\n"
                }
                let flags = h.ejected ? "/failed_outlier_check" : h.healthy ? "healthy" : "/failed_active_hc"
                lines += "\(name)::\(a)::health_flags::\(flags)\n"
                let last = server.lastCheck(cluster: name, address: h.address)
                if let last { lines += "\(name)::\(a)::last_check::\(last.code) \(last.detail)\n" }
                if let m = server.ejectionMultiplier(cluster: name, address: h.address) {
                    lines += "\(name)::\(a)::ejection_multiplier::\(m)\n"
                }
                lines += "\(name)::\(a)::weight::\(h.weight)\n"
                jhosts.append(.object([
                    ("address", .string(a)), ("weight", .int(Int64(h.weight))),
                    ("health_status", .string(h.healthy ? "HEALTHY" : "UNHEALTHY")),
                    ("last_check", .string(last.map { "\($0.code) \($0.detail)" } ?? "")),
                    ("stats", .object([("cx_total", .int(total)), ("cx_active", .int(active)), ("cx_connect_fail", .int(fail)),
                                       ("rq_total", .int(h.stats.value(.rqTotal))), ("rq_active", .int(h.stats.value(.rqActive))),
                                       ("rq_error", .int(h.stats.value(.rqError))), ("rq_success", .int(h.stats.value(.rqSuccess))),
                                       ("rq_timeout", .int(h.stats.value(.rqTimeout)))])),
                ]))
            }
            jclusters.append(.object([("name", .string(name)), ("lb_policy", .string(c.config.lbPolicy.rawValue)),
                                      ("host_statuses", .array(jhosts))]))
        }
        if json { return JSON.object([("cluster_statuses", .array(jclusters))]).serialized(pretty: true) + "\n" }
        return lines
    }
}

func percentDecode(_ s: String) -> String {
    var out: [UInt8] = []
    var it = Array(s.utf8)[...]
    while let c = it.popFirst() {
        if c == UInt8(ascii: "%"), it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) {
            out.append(v); it = it.dropFirst(2)
        } else if c == UInt8(ascii: "+") {
            out.append(UInt8(ascii: " "))
        } else { out.append(c) }
    }
    return String(decoding: out, as: UTF8.self)
}
