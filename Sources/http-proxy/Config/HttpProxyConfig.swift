import Common

/// `http_filters[i]: {name: health_check, ...}`: answers `path` from the proxy itself.
struct HealthCheckFilterConfig: Sendable {
    /// `path` (default /healthz): the exact request path answered.
    var path = "/healthz"
    /// `pass_through_mode` (default false): forward the check to the upstream instead of
    /// answering (the proxy still answers 503 while it fails its own health).
    var passThroughMode = false
}

/// `http_filters[i]: {name: header_mutation, ...}`: headers changed for every request.
struct HeaderMutationFilterConfig: Sendable {
    var request = HeaderMutation()
    var response = HeaderMutation()
}

/// `http_filters[i]: {name: grpc_stats, ...}`: per-cluster gRPC call stats, per method for
/// the methods listed (stat names are registered at config time, so the list bounds them).
struct GrpcStatsFilterConfig: Sendable {
    /// `individual_method_stats_allowlist.services[i]`: a service and its methods.
    var services: [(name: String, methods: [String])] = []
    /// The most methods the allowlist may name (each costs 26 stat slots per routed cluster).
    static let maxMethods = 1000

    static func parse(_ m: ConfigMap) throws(ConfigError) -> GrpcStatsFilterConfig {
        var c = GrpcStatsFilterConfig()
        if let v = m.optional("stats_for_all_methods"), try v.bool() {
            throw v.fail("per-method stats for every method would make a stat name of whatever a client sends; list the methods in individual_method_stats_allowlist")
        }
        guard let a = m.optional("individual_method_stats_allowlist") else { return c }
        let am = try a.mapping()
        var total = 0
        var seen = Set<String>()
        for sv in try am.required("services").list() {
            let sm = try sv.mapping()
            let nameV = try sm.required("name")
            let name = try nameV.string()
            guard isGrpcName(name, dots: true) else { throw nameV.fail("\"\(name)\" is not a gRPC service name (letters, digits, _ and .)") }
            var methods: [String] = []
            for mv in try sm.required("method_names").list() {
                let method = try mv.string()
                guard isGrpcName(method, dots: false) else { throw mv.fail("\"\(method)\" is not a gRPC method name (letters, digits and _)") }
                guard seen.insert("/\(name)/\(method)").inserted else { throw mv.fail("\(name)/\(method) is listed twice") }
                methods.append(method)
            }
            total += methods.count
            if total > maxMethods { throw sv.fail("more than \(maxMethods) methods in the allowlist") }
            try sm.finish()
            c.services.append((name, methods))
        }
        try am.finish()
        return c
    }

    private static func isGrpcName(_ s: String, dots: Bool) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 200, s.first != ".", s.last != "." else { return false }
        return s.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || (dots && c == 0x2E)
        }
    }

    var dump: JSON {
        .object([("name", .string("grpc_stats")),
                 ("individual_method_stats_allowlist", .object([("services", .array(services.map { s in
                     .object([("name", .string(s.name)), ("method_names", .array(s.methods.map { .string($0) }))])
                 }))]))])
    }
}

/// One entry of `http_filters`, in order (the router is always the last, implicitly).
enum HttpFilterConfig: Sendable {
    case healthCheck(HealthCheckFilterConfig)
    case headerMutation(HeaderMutationFilterConfig)
    case grpcStats(GrpcStatsFilterConfig)

    /// The name filters go by in config and in `typed_per_filter_config`.
    var name: String {
        switch self {
        case .healthCheck: "health_check"
        case .headerMutation: "header_mutation"
        case .grpcStats: "grpc_stats"
        }
    }

    var dump: JSON {
        switch self {
        case .healthCheck(let h):
            return .object([("name", .string("health_check")), ("path", .string(h.path)), ("pass_through_mode", .bool(h.passThroughMode))])
        case .headerMutation(let m):
            var f: [(String, JSON)] = [("name", .string("header_mutation"))]
            m.request.dump(side: "request", into: &f)
            m.response.dump(side: "response", into: &f)
            return .object(f)
        case .grpcStats(let g):
            return g.dump
        }
    }
}

/// `codec`.
enum HttpCodecChoice: String, Sendable {
    /// HTTP/2 when TLS negotiated `h2` by ALPN or a cleartext client opens with the HTTP/2
    /// connection preface (prior knowledge); HTTP/1.1 otherwise (Envoy's AUTO).
    case auto
    case http1
    /// HTTP/2 only (prior knowledge, or TLS whatever ALPN said).
    case http2

    /// The ALPN protocols a TLS listener offers when its `tls` block names none.
    var defaultAlpn: [String] {
        switch self {
        case .auto: ["h2", "http/1.1"]
        case .http1: ["http/1.1"]
        case .http2: ["h2"]
        }
    }
}

/// `forward_client_cert_details` (Envoy's): what happens to `x-forwarded-client-cert`.
enum ForwardClientCert: String, Sendable, CaseIterable {
    /// Removed (the default): clients cannot assert an identity.
    case sanitize
    /// Kept as the client sent it, nothing added.
    case forwardOnly = "forward_only"
    /// Over mTLS, this connection's certificate appended to the client's list; otherwise sanitized.
    case appendForward = "append_forward"
    /// Over mTLS, replaced with this connection's certificate; otherwise sanitized.
    case sanitizeSet = "sanitize_set"
    /// Kept as sent, whatever the connection.
    case alwaysForwardOnly = "always_forward_only"
}

/// `set_current_client_cert_details`: which fields of the client certificate go in XFCC
/// besides `By` (our certificate's URI SAN) and `Hash` (always).
struct ClientCertDetails: Sendable {
    var subject = false
    var uri = false
    var dns = false
    var cert = false
}

/// `http2_protocol_options` (Envoy's names; defaults are Envoy's edge recommendations).
struct Http2ProtocolOptions: Sendable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    var maxConcurrentStreams = 100
    /// SETTINGS_INITIAL_WINDOW_SIZE: what a client may send on one stream before the proxy
    /// forwards it.
    var initialStreamWindowSize = 65535
    /// The connection's receive window.
    var initialConnectionWindowSize = 1 << 20
    /// SETTINGS_HEADER_TABLE_SIZE: the HPACK dynamic table the client may use.
    var hpackTableSize = 4096
    /// Envoy's abuse limits, with its defaults (docs/http-proxy.md, "Protections"): queued
    /// PING/SETTINGS ACKs a client may make the proxy owe; DATA frames with an empty payload in a
    /// row; PRIORITY frames per stream opened; WINDOW_UPDATE frames per DATA frame sent; the
    /// streams a connection must have opened before the premature-reset rule applies.
    var maxOutboundControlFrames = 1000
    var maxConsecutiveInboundFramesWithEmptyPayload = 1
    var maxInboundPriorityFramesPerStream = 100
    var maxInboundWindowUpdateFramesPerDataFrameSent = 10
    var prematureResetMinStreams = 500
    /// `connection_keepalive`: PINGs to clients (off by default).
    var connectionKeepalive = Http2KeepaliveConfig()

    /// The flood guard a connection starts with.
    var floodGuard: Http2FloodGuard {
        var g = Http2FloodGuard()
        g.maxConsecutiveEmpty = maxConsecutiveInboundFramesWithEmptyPayload
        g.maxPriorityPerStream = maxInboundPriorityFramesPerStream
        g.maxWindowUpdatePerDataSent = maxInboundWindowUpdateFramesPerDataFrameSent
        g.prematureResetMinStreams = prematureResetMinStreams
        return g
    }

    static func parse(_ v: ConfigValue) throws(ConfigError) -> Http2ProtocolOptions {
        let m = try v.mapping()
        var o = Http2ProtocolOptions()
        if let x = m.optional("max_concurrent_streams") { o.maxConcurrentStreams = try x.int(min: 1, max: 2_147_483_647) }
        if let x = m.optional("initial_stream_window_size") { o.initialStreamWindowSize = try x.bytes(min: 65535, max: 2_147_483_647) }
        if let x = m.optional("initial_connection_window_size") { o.initialConnectionWindowSize = try x.bytes(min: 65535, max: 2_147_483_647) }
        if let x = m.optional("hpack_table_size") { o.hpackTableSize = try x.bytes(min: 0, max: 1 << 20) }
        if let x = m.optional("max_outbound_control_frames") { o.maxOutboundControlFrames = try x.int(min: 1, max: 1_000_000) }
        if let x = m.optional("max_consecutive_inbound_frames_with_empty_payload") {
            o.maxConsecutiveInboundFramesWithEmptyPayload = try x.int(min: 0, max: 1_000_000)
        }
        if let x = m.optional("max_inbound_priority_frames_per_stream") { o.maxInboundPriorityFramesPerStream = try x.int(min: 0, max: 1_000_000) }
        if let x = m.optional("max_inbound_window_update_frames_per_data_frame_sent") {
            o.maxInboundWindowUpdateFramesPerDataFrameSent = try x.int(min: 1, max: 1_000_000)
        }
        if let x = m.optional("connection_keepalive") { o.connectionKeepalive = try Http2KeepaliveConfig.parse(x) }
        if let x = m.optional("premature_reset_total_stream_count") { o.prematureResetMinStreams = try x.int(min: 1, max: 1_000_000_000) }
        try m.finish()
        return o
    }

    var dump: JSON {
        .object([("max_concurrent_streams", .int(Int64(maxConcurrentStreams))),
                 ("initial_stream_window_size", .int(Int64(initialStreamWindowSize))),
                 ("initial_connection_window_size", .int(Int64(initialConnectionWindowSize))),
                 ("hpack_table_size", .int(Int64(hpackTableSize))),
                 ("max_outbound_control_frames", .int(Int64(maxOutboundControlFrames))),
                 ("max_consecutive_inbound_frames_with_empty_payload", .int(Int64(maxConsecutiveInboundFramesWithEmptyPayload))),
                 ("max_inbound_priority_frames_per_stream", .int(Int64(maxInboundPriorityFramesPerStream))),
                 ("max_inbound_window_update_frames_per_data_frame_sent", .int(Int64(maxInboundWindowUpdateFramesPerDataFrameSent))),
                 ("premature_reset_total_stream_count", .int(Int64(prematureResetMinStreams))),
                 ("connection_keepalive", connectionKeepalive.dump)])
    }
}

/// The `http:` listener block (docs/config.md, "listeners[i].http"). Immutable, built once per
/// config generation on the main thread, route table compiled included.
struct HttpProxyConfig: ListenerFilterConfig {
    /// `stat_prefix` (default: the listener name): stats under `http.<prefix>.`.
    var statPrefix: String
    var codec = HttpCodecChoice.auto
    var http2 = Http2ProtocolOptions()
    var forwardClientCert = ForwardClientCert.sanitize
    var clientCertDetails = ClientCertDetails()
    /// `server_name` (default "http-proxy"): the `Server` header of local replies.
    var serverName = "http-proxy"
    /// `via`: added to requests and responses when set.
    var via: String?
    /// `request_headers_timeout` (default 10s; 0 = off).
    var requestHeadersTimeoutMs: UInt64 = 10_000
    /// `request_timeout` (default 0 = off): the whole request, headers and body.
    var requestTimeoutMs: UInt64 = 0
    /// `stream_idle_timeout` (default 5m, Envoy's).
    var streamIdleTimeoutMs: UInt64 = 300_000
    /// `idle_timeout` (default 1h, Envoy's): a connection with no request in flight.
    var idleTimeoutMs: UInt64 = 3_600_000
    /// `drain_timeout` (default 5s, Envoy's): from `Connection: close` on a draining
    /// connection's next response to the close.
    var drainTimeoutMs: UInt64 = 5000
    /// `max_request_headers_kb` (default 60, at most 96): request line and headers; 431 beyond.
    var maxRequestHeadersKb = 60
    /// `max_headers_count` (default 100).
    var maxHeadersCount = 100
    /// `max_request_body_buffer` (default 64 KiB): request body kept to replay on a retry.
    var maxRequestBodyBuffer = 64 << 10
    var useRemoteAddress = true
    var xffNumTrustedHops = 0
    var generateRequestId = true
    var alwaysSetRequestIdInResponse = false
    var preserveExternalRequestId = false
    var httpFilters: [HttpFilterConfig] = []
    var routeTable: RouteTable
    /// Every cluster reference, with its key path (checked to exist by the loader).
    var clusterReferences: [(path: String, name: String)]

    static let blockParser: FilterBlockParser = {
        var p = FilterBlockParser(binary: "http-proxy", key: "http", clusterOptions: HttpClusterOptions.parser) { (m: ConfigMap, listener: String) throws(ConfigError) -> any ListenerFilterConfig in
            try HttpProxyConfig.parse(m, listener: listener)
        }
        p.defaultAlpn = { ($0 as? HttpProxyConfig)?.codec.defaultAlpn ?? [] }
        return p
    }()

    static func parse(_ m: ConfigMap, listener: String) throws(ConfigError) -> HttpProxyConfig {
        let routes = try RouteConfigParser.parse(m)
        var c = HttpProxyConfig(statPrefix: listener, routeTable: routes.table, clusterReferences: routes.references)
        if let p = m.optional("stat_prefix") { c.statPrefix = try p.string() }
        if let v = m.optional("codec") { c.codec = HttpCodecChoice(rawValue: try v.oneOf(["auto", "http1", "http2"]))! }
        if let v = m.optional("http2_protocol_options") { c.http2 = try Http2ProtocolOptions.parse(v) }
        if let v = m.optional("forward_client_cert_details") {
            c.forwardClientCert = ForwardClientCert(rawValue: try v.oneOf(ForwardClientCert.allCases.map(\.rawValue)))!
        }
        if let v = m.optional("set_current_client_cert_details") {
            let dm = try v.mapping()
            if let x = dm.optional("subject") { c.clientCertDetails.subject = try x.bool() }
            if let x = dm.optional("uri") { c.clientCertDetails.uri = try x.bool() }
            if let x = dm.optional("dns") { c.clientCertDetails.dns = try x.bool() }
            if let x = dm.optional("cert") { c.clientCertDetails.cert = try x.bool() }
            try dm.finish()
        }
        if let v = m.optional("server_name") { c.serverName = try headerValue(v) }
        if let v = m.optional("via") { c.via = try headerValue(v) }
        if let v = m.optional("request_headers_timeout") { c.requestHeadersTimeoutMs = try v.durationMs() }
        if let v = m.optional("request_timeout") { c.requestTimeoutMs = try v.durationMs() }
        if let v = m.optional("stream_idle_timeout") { c.streamIdleTimeoutMs = try v.durationMs() }
        if let v = m.optional("idle_timeout") { c.idleTimeoutMs = try v.durationMs() }
        if let v = m.optional("drain_timeout") { c.drainTimeoutMs = try v.durationMs() }
        if let v = m.optional("max_request_headers_kb") { c.maxRequestHeadersKb = try v.int(min: 1, max: 96) }
        if let v = m.optional("max_headers_count") { c.maxHeadersCount = try v.int(min: 1, max: 10_000) }
        if let v = m.optional("max_request_body_buffer") { c.maxRequestBodyBuffer = try v.bytes(min: 0, max: 1 << 30) }
        if let v = m.optional("use_remote_address") { c.useRemoteAddress = try v.bool() }
        if let v = m.optional("xff_num_trusted_hops") { c.xffNumTrustedHops = try v.int(min: 0, max: 64) }
        if let v = m.optional("generate_request_id") { c.generateRequestId = try v.bool() }
        if let v = m.optional("always_set_request_id_in_response") { c.alwaysSetRequestIdInResponse = try v.bool() }
        if let v = m.optional("preserve_external_request_id") { c.preserveExternalRequestId = try v.bool() }
        if let v = m.optional("http_filters") {
            var seenHealth = false
            for item in try v.list() {
                let f = try parseFilter(item)
                if case .healthCheck = f {
                    if seenHealth { throw item.fail("only one health_check filter per listener") }
                    seenHealth = true
                }
                c.httpFilters.append(f)
            }
        }
        let configured = Set(c.httpFilters.map(\.name))
        for (path, name) in routes.filterReferences where !configured.contains(name) {
            throw ConfigError(path, "no filter named \"\(name)\" in this listener's http_filters (configured: \(configured.isEmpty ? "none" : configured.sorted().joined(separator: ", ")))")
        }
        return c
    }

    private static func parseFilter(_ v: ConfigValue) throws(ConfigError) -> HttpFilterConfig {
        let m = try v.mapping()
        let name = try m.required("name")
        let f: HttpFilterConfig
        switch try name.oneOf(["header_mutation", "health_check", "grpc_stats"]) {
        case "health_check":
            var h = HealthCheckFilterConfig()
            if let p = m.optional("path") {
                h.path = try p.string()
                guard h.path.hasPrefix("/"), isValidHeaderValue(h.path), !h.path.contains(" ") else {
                    throw p.fail("\"\(h.path)\" is not a path (it starts with /)")
                }
            }
            if let p = m.optional("pass_through_mode") { h.passThroughMode = try p.bool() }
            f = .healthCheck(h)
        case "grpc_stats":
            f = .grpcStats(try GrpcStatsFilterConfig.parse(m))
        default:
            let hm = HeaderMutationFilterConfig(request: try HeaderMutation.parse(m, side: "request"),
                                                response: try HeaderMutation.parse(m, side: "response"))
            f = .headerMutation(hm)
        }
        try m.finish()
        return f
    }

    private static func headerValue(_ v: ConfigValue) throws(ConfigError) -> String {
        let s = try v.string()
        guard isValidHeaderValue(s) else { throw v.fail("header values may not contain CR, LF or NUL") }
        return s
    }

    var dump: JSON {
        var f: [(String, JSON)] = [
            ("stat_prefix", .string(statPrefix)), ("codec", .string(codec.rawValue)), ("server_name", .string(serverName)),
            ("http2_protocol_options", http2.dump),
            ("forward_client_cert_details", .string(forwardClientCert.rawValue)),
            ("set_current_client_cert_details", .object([("subject", .bool(clientCertDetails.subject)), ("uri", .bool(clientCertDetails.uri)),
                                                         ("dns", .bool(clientCertDetails.dns)), ("cert", .bool(clientCertDetails.cert))])),
        ]
        if let via { f.append(("via", .string(via))) }
        for (k, ms) in [("request_headers_timeout", requestHeadersTimeoutMs), ("request_timeout", requestTimeoutMs),
                        ("stream_idle_timeout", streamIdleTimeoutMs), ("idle_timeout", idleTimeoutMs), ("drain_timeout", drainTimeoutMs)] {
            f.append((k, .string(formatDuration(ms))))
        }
        f += [
            ("max_request_headers_kb", .int(Int64(maxRequestHeadersKb))), ("max_headers_count", .int(Int64(maxHeadersCount))),
            ("max_request_body_buffer", .int(Int64(maxRequestBodyBuffer))), ("use_remote_address", .bool(useRemoteAddress)),
            ("xff_num_trusted_hops", .int(Int64(xffNumTrustedHops))), ("generate_request_id", .bool(generateRequestId)),
            ("always_set_request_id_in_response", .bool(alwaysSetRequestIdInResponse)),
            ("preserve_external_request_id", .bool(preserveExternalRequestId)),
            ("http_filters", .array(httpFilters.map(\.dump))),
            ("virtual_hosts", routeTable.dump),
        ]
        return .object(f)
    }
}
