import Testing
@testable import Common
@testable import HttpProxy

/// A config with clusters a, b, c and the given `http:` block (indented under the listener).
private func config(_ http: String) -> String {
    """
    listeners:
      - name: edge
        address: 127.0.0.1:0
        http:
    \(http.split(separator: "\n", omittingEmptySubsequences: false).map { "      " + $0 }.joined(separator: "\n"))
    clusters:
      - { name: a, endpoints: ["127.0.0.1:1"] }
      - { name: b, endpoints: ["127.0.0.1:2"] }
      - { name: c, endpoints: ["127.0.0.1:3"] }

    """
}

private func load(_ http: String) throws -> HttpProxyConfig {
    let cfg = try ConfigLoader.load(yaml: config(http), parser: HttpProxyConfig.blockParser)
    return try #require(cfg.listeners[0].filter as? HttpProxyConfig)
}

private func table(_ http: String) throws -> RouteTable { try load(http).routeTable }

private func error(_ http: String) -> String {
    do { _ = try ConfigLoader.load(yaml: config(http), parser: HttpProxyConfig.blockParser); return "no error" } catch { return error.description }
}

private func request(_ path: String, host: String = "example.com", _ extra: [(String, String)] = [], method: String = "GET") -> HeaderMap {
    let h = HeaderMap()
    h.add(.method, method)
    h.add(.path, path)
    h.add(.authority, host)
    h.add(.scheme, "http")
    for (n, v) in extra { h.add(n, v) }
    return h
}

/// The name of the route picked (nil: no route).
private func routed(_ t: RouteTable, _ h: HeaderMap) -> String? { t.route(h)?.name }

@Test func httpRouteDefaultsAreEnvoys() throws {
    let c = try load("routes: [{ match: { prefix: / }, cluster: a }]")
    #expect(c.statPrefix == "edge")
    #expect(c.codec == .auto && c.serverName == "http-proxy" && c.via == nil)
    #expect(c.requestHeadersTimeoutMs == 10_000 && c.requestTimeoutMs == 0 && c.streamIdleTimeoutMs == 300_000)
    #expect(c.idleTimeoutMs == 3_600_000 && c.drainTimeoutMs == 5000)
    #expect(c.maxRequestHeadersKb == 60 && c.maxHeadersCount == 100 && c.maxRequestBodyBuffer == 65536)
    #expect(c.useRemoteAddress && c.xffNumTrustedHops == 0 && c.generateRequestId)
    #expect(!c.alwaysSetRequestIdInResponse && !c.preserveExternalRequestId)
    let r = try #require(c.routeTable.route(request("/x")))
    #expect(r.forward?.timeoutMs == 15_000 && r.forward?.retryPolicy == nil)
    #expect(r.pickCluster(random: 7) == "a")
    #expect(c.routeTable.clusterNames == ["a"])
    #expect(c.clusterReferences.map(\.path) == ["listeners[0].http.routes[0].cluster"])
}

@Test func httpRouteDomainPrecedence() throws {
    let t = try table("""
    virtual_hosts:
      - { name: any, domains: ["*"], routes: [{ name: any, match: { prefix: / }, cluster: a }] }
      - { name: pre, domains: ["www.*"], routes: [{ name: pre, match: { prefix: / }, cluster: a }] }
      - { name: longpre, domains: ["www.example.*"], routes: [{ name: longpre, match: { prefix: / }, cluster: a }] }
      - { name: suf, domains: ["*.com"], routes: [{ name: suf, match: { prefix: / }, cluster: a }] }
      - { name: longsuf, domains: ["*.example.com"], routes: [{ name: longsuf, match: { prefix: / }, cluster: a }] }
      - { name: exact, domains: ["www.example.com", "Api.Example.com:8443"], routes: [{ name: exact, match: { prefix: / }, cluster: a }] }
    """)
    #expect(routed(t, request("/", host: "www.example.com")) == "exact")
    #expect(routed(t, request("/", host: "WWW.Example.COM:8080")) == "exact")     // port stripped, any case
    #expect(routed(t, request("/", host: "api.example.com:8443")) == "exact")     // a domain with its port
    #expect(routed(t, request("/", host: "api.example.com:9000")) == "longsuf")
    #expect(routed(t, request("/", host: "x.example.com")) == "longsuf")
    #expect(routed(t, request("/", host: "example.com")) == "suf")                // *.example.com needs a label
    #expect(routed(t, request("/", host: "www.example.org")) == "longpre")
    #expect(routed(t, request("/", host: "www.other.org")) == "pre")
    #expect(routed(t, request("/", host: "other.org:80")) == "any")
    #expect(routed(t, request("/", host: "[::1]:80")) == "any")

    let noDefault = try table("virtual_hosts: [{ name: x, domains: [x.org], routes: [{ match: { prefix: / }, cluster: a }] }]")
    #expect(noDefault.route(request("/", host: "y.org")) == nil)
    #expect(noDefault.route(request("/", host: "x.org:1234")) != nil)
}

@Test func httpRoutePathMatches() throws {
    let t = try table("""
    routes:
      - { name: exact, match: { path: /exact }, cluster: a }
      - { name: ci, match: { prefix: /CI/, case_sensitive: false }, cluster: a }
      - { name: re, match: { safe_regex: "/users/[0-9]+" }, cluster: b }
      - { name: re2, match: { safe_regex: { regex: "/v[12]/.*" } }, cluster: b }
      - { name: api, match: { prefix: /api/ }, cluster: b }
      - { name: root, match: { prefix: / }, cluster: c }
    """)
    #expect(routed(t, request("/exact")) == "exact")
    #expect(routed(t, request("/exact?q=1")) == "exact")       // the query is not part of the path
    #expect(routed(t, request("/exactly")) == "root")
    #expect(routed(t, request("/Exact")) == "root")            // case-sensitive by default
    #expect(routed(t, request("/ci/x")) == "ci")
    #expect(routed(t, request("/cI/x")) == "ci")
    #expect(routed(t, request("/users/42")) == "re")
    #expect(routed(t, request("/users/42/x")) == "root")       // a regex matches the whole path
    #expect(routed(t, request("/x/users/42")) == "root")
    #expect(routed(t, request("/v2/a?b")) == "re2")
    #expect(routed(t, request("/api/v1")) == "api")
    #expect(routed(t, request("/api")) == "root")
}

@Test func httpRouteHeaderQueryAndMethodMatches() throws {
    let t = try table("""
    routes:
      - name: canary
        match:
          prefix: /
          headers:
            - { name: x-canary, exact: "yes" }
            - { name: x-debug, present: true, invert_match: true }
        cluster: a
      - { name: ua, match: { prefix: /, headers: [{ name: user-agent, contains: curl }] }, cluster: a }
      - { name: sfx, match: { prefix: /, headers: [{ name: x-tenant, suffix: "-eu" }] }, cluster: a }
      - { name: re, match: { prefix: /, headers: [{ name: x-id, safe_regex: "[a-f0-9]{4}" }] }, cluster: a }
      - { name: pfx, match: { prefix: /, headers: [{ name: ":authority", prefix: "admin." }] }, cluster: a }
      - { name: q, match: { prefix: /, query_parameters: [{ name: debug, exact: "1" }, { name: trace }] }, cluster: b }
      - { name: qre, match: { prefix: /, query_parameters: [{ name: v, safe_regex: "[0-9]+" }] }, cluster: b }
      - { name: post, match: { prefix: /, methods: [POST, PUT] }, cluster: c }
      - { name: notcanary, match: { prefix: /, headers: [{ name: x-canary, exact: "yes", invert_match: true }] }, cluster: c }
    """)
    #expect(routed(t, request("/", [("X-Canary", "yes")])) == "canary")
    #expect(routed(t, request("/", [("user-agent", "curl/8.0")])) == "ua")
    #expect(routed(t, request("/", [("x-tenant", "acme-eu")])) == "sfx")
    #expect(routed(t, request("/", [("x-id", "beef")])) == "re")
    #expect(routed(t, request("/", [("x-id", "beefy")])) == "notcanary")
    #expect(routed(t, request("/", host: "admin.example.com")) == "pfx")
    #expect(routed(t, request("/p?trace&debug=1")) == "q")
    #expect(routed(t, request("/p?debug=1")) == "notcanary")     // trace is missing
    #expect(routed(t, request("/p?debug=10&trace=")) == "notcanary")
    #expect(routed(t, request("/p?x=1&v=123")) == "qre")
    #expect(routed(t, request("/p?v=12a")) == "notcanary")
    #expect(routed(t, request("/", method: "POST")) == "post")
    #expect(routed(t, request("/", [("x-canary", "yes"), ("x-debug", "")], method: "PUT")) == "post")
    #expect(routed(t, request("/", [("x-canary", "no")], method: "GET")) == "notcanary")
    #expect(routed(t, request("/", [("x-canary", "yes"), ("x-debug", "1")], method: "GET")) == nil)
}

@Test func httpRouteWeightedSplit() throws {
    let t = try table("routes: [{ match: { prefix: / }, weighted_clusters: [{ name: a, weight: 70 }, { name: b, weight: 20 }, { name: c, weight: 10 }] }]")
    let r = try #require(t.route(request("/")))
    var counts: [String: Int] = [:]
    var rng = SystemRandomNumberGenerator()
    for _ in 0..<10_000 { counts[r.pickCluster(random: rng.next()) ?? "none", default: 0] += 1 }
    #expect(abs(counts["a", default: 0] - 7000) < 300)
    #expect(abs(counts["b", default: 0] - 2000) < 250)
    #expect(abs(counts["c", default: 0] - 1000) < 200)
    #expect(t.clusterNames == ["a", "b", "c"])
    #expect(r.pickClusterIndex(random: 95) == 2 && r.pickClusterIndex(random: 0) == 0)
}

@Test func httpRouteRewrites() throws {
    let t = try table("""
    routes:
      - { name: p, match: { prefix: /api/ }, prefix_rewrite: /v2/, cluster: a, host_rewrite_literal: api.internal }
      - { name: whole, match: { path: /old }, prefix_rewrite: /new, cluster: a }
      - name: r
        match: { safe_regex: "/users/([0-9]+)/profile" }
        regex_rewrite: { pattern: "^/users/([0-9]+)/profile$", substitution: "/profile/\\\\1"  }
        cluster: a
      - { name: dollar, match: { prefix: /d/ }, regex_rewrite: { pattern: "d", substitution: "$x\\\\\\\\" }, cluster: a }
      - { name: none, match: { prefix: / }, cluster: a, auto_host_rewrite: true }
    """)
    #expect(t.route(request("/api/items?x=1&y=2"))?.rewrittenPath(request("/api/items?x=1&y=2")) == "/v2/items?x=1&y=2")
    if case .literal(let h) = t.route(request("/api/x"))?.forward?.hostRewrite { #expect(h == "api.internal") } else { Issue.record("no host rewrite") }
    #expect(t.route(request("/old?q"))?.rewrittenPath(request("/old?q")) == "/new?q")
    let h = request("/users/42/profile?tab=1")
    #expect(t.route(h)?.name == "r")
    #expect(t.route(h)?.rewrittenPath(h) == "/profile/42?tab=1")
    let d = request("/d/")
    #expect(t.route(d)?.rewrittenPath(d) == "/$x\\/")
    let n = request("/plain?k")
    #expect(t.route(n)?.rewrittenPath(n) == nil)
    if case .auto = t.route(n)?.forward?.hostRewrite {} else { Issue.record("no auto host rewrite") }
}

@Test func httpRouteRedirectLocation() throws {
    let t = try table("""
    routes:
      - { name: tls, match: { prefix: /secure/ }, redirect: { scheme_redirect: https } }
      - { name: host, match: { prefix: /h/ }, redirect: { host_redirect: "new.example.org", port_redirect: 8443, response_code: 308 } }
      - { name: path, match: { path: /old }, redirect: { path_redirect: "/new?from=old" } }
      - { name: prefix, match: { prefix: /docs/ }, redirect: { prefix_rewrite: /manual/, strip_query: true, response_code: 302 } }
    """)
    func loc(_ path: String, host: String = "example.com", scheme: String = "http") throws -> String {
        let h = request(path, host: host)
        return try #require(t.route(h)).redirectLocation(h, scheme: scheme)
    }
    #expect(try loc("/secure/a?b=1") == "https://example.com/secure/a?b=1")
    #expect(try loc("/secure/a", host: "example.com:80") == "https://example.com/secure/a")
    #expect(try loc("/secure/a", host: "example.com:8080") == "https://example.com:8080/secure/a")
    #expect(try loc("/h/x?y") == "http://new.example.org:8443/h/x?y")
    #expect(try loc("/old?keep=1") == "http://example.com/new?from=old")
    #expect(try loc("/docs/intro?x=1", scheme: "https") == "https://example.com/manual/intro")
    if case .redirect(let r) = t.route(request("/h/"))?.action { #expect(r.responseCode == 308) } else { Issue.record("not a redirect") }
    if case .redirect(let r) = t.route(request("/old"))?.action { #expect(r.responseCode == 301) } else { Issue.record("not a redirect") }
}

@Test func httpRouteActionsAndOptions() throws {
    let c = try load("""
    via: proxy-1
    http_filters:
      - { name: health_check, path: /ping }
      - name: header_mutation
        request_headers_to_add: [{ header: { key: X-Client, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% via %REQ(X-Trace)% 100%%" } }]
        response_headers_to_remove: [server]
    virtual_hosts:
      - name: main
        domains: ["*"]
        retry_policy: { retry_on: "5xx,reset", num_retries: 2 }
        request_headers_to_add: [{ header: { key: x-vh, value: "1" }, append_action: overwrite_if_exists_or_add }]
        routes:
          - { name: dr, match: { path: /teapot }, direct_response: { status: 418, body: "short and stout" } }
          - name: api
            match: { prefix: /api/ }
            cluster: a
            timeout: 2s
            idle_timeout: 30s
            retry_policy: { retry_on: [connect-failure, retriable-status-codes], retriable_status_codes: [503], per_try_timeout: 500ms, retry_back_off: { base_interval: 10ms } }
            hash_policy: [{ header: { header_name: X-User } }, { cookie: { name: sid } }, { connection_properties: { source_ip: true } }]
            request_headers_to_remove: [x-internal]
          - { name: rest, match: { prefix: / }, cluster: b, timeout: 0 }
    """)
    #expect(c.via == "proxy-1")
    guard case .healthCheck(let hc) = c.httpFilters[0], case .headerMutation(let hm) = c.httpFilters[1] else {
        Issue.record("filters"); return
    }
    #expect(hc.path == "/ping" && !hc.passThroughMode)
    #expect(hm.request.add[0].name == "x-client")
    #expect(hm.request.add[0].value == [.downstreamRemoteAddress(withPort: false), .literal(" via "), .requestHeader("x-trace"), .literal(" 100%")])
    #expect(hm.response.remove == ["server"])
    let t = c.routeTable
    guard case .directResponse(let status, let body) = try #require(t.route(request("/teapot"))).action else { Issue.record("dr"); return }
    #expect(status == 418 && body == "short and stout")
    let api = try #require(t.route(request("/api/x"))?.forward)
    #expect(api.timeoutMs == 2000 && api.idleTimeoutMs == 30_000)
    let rp = try #require(api.retryPolicy)
    #expect(rp.retryOn == RetryOn([.connectFailure, .retriableStatusCodes]) && rp.numRetries == 1 && rp.perTryTimeoutMs == 500)
    #expect(rp.retriableStatusCodes == [503] && rp.baseIntervalMs == 10 && rp.maxIntervalMs == 100)
    #expect(api.hashPolicy.count == 3)
    let apiEntry = try #require(t.route(request("/api/x")))
    #expect(apiEntry.requestHeaderMutations.count == 2)                  // route's, then the virtual host's
    #expect(apiEntry.requestHeaderMutations[0].remove == ["x-internal"])
    #expect(apiEntry.requestHeaderMutations[1].add[0].action == HeaderAppendAction.overwriteIfExistsOrAdd)
    let rest = try #require(t.route(request("/x"))?.forward)
    #expect(rest.timeoutMs == 0 && rest.retryPolicy?.retryOn == RetryOn([.fiveXX, .reset]) && rest.retryPolicy?.numRetries == 2)
    // The dump is valid JSON-shaped output with the routes in it.
    #expect(c.dump.serialized().contains("\"direct_response\":{\"status\":418"))
}

@Test func httpRouteConfigErrorsNameKeyPaths() {
    let r = "listeners[0].http."
    #expect(error("routes: [{ match: { prefix: / }, cluster: a, colour: red }]").hasPrefix(r + "routes[0].colour: unknown key"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a }]\nfoo: 1").hasPrefix(r + "foo: unknown key"))
    #expect(error("routes: [{ match: { safe_regex: \"/a(\" }, cluster: a }]").hasPrefix(r + "routes[0].match.safe_regex: bad regex: missing closing parenthesis"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: zz }]").hasPrefix(r + "routes[0].cluster: unknown cluster \"zz\""))
    #expect(error("routes: [{ match: { prefix: / }, weighted_clusters: [{ name: a, weight: 1 }, { name: zz, weight: 1 }] }]")
        .hasPrefix(r + "routes[0].weighted_clusters[1].name: unknown cluster \"zz\""))
    #expect(error("routes: [{ match: { prefix: / }, redirect: { response_code: 305 } }]").hasPrefix(r + "routes[0].redirect.response_code: 305 is not a redirect code"))
    #expect(error("routes: [{ match: { prefix: / }, direct_response: { status: 99 } }]").hasPrefix(r + "routes[0].direct_response.status: 99 is out of range"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a, request_headers_to_add: [{ header: { key: x, value: \"%NOPE%\" } }] }]")
        .hasPrefix(r + "routes[0].request_headers_to_add[0].header.value: unknown command %NOPE%"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a, retry_policy: { retry_on: \"5xx,sometimes\" } }]")
        .hasPrefix(r + "routes[0].retry_policy.retry_on: \"sometimes\" is not one of"))
    #expect(error("routes: [{ match: { prefix: / } }]").hasPrefix(r + "routes[0].cluster: missing an action"))
    #expect(error("routes: [{ match: { prefix: /, path: /x }, cluster: a }]").hasPrefix(r + "routes[0].match.path: give one of"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a, redirect: { scheme_redirect: https } }]").hasPrefix(r + "routes[0].redirect: give one action"))
    #expect(error("routes: [{ match: { prefix: / }, direct_response: { status: 200 }, timeout: 1s }]").hasPrefix(r + "routes[0].timeout: only for routes that forward"))
    #expect(error("virtual_hosts: [{ name: a, domains: [x.org], routes: [{ match: { prefix: / }, cluster: a }] }, { name: b, domains: [X.org], routes: [{ match: { prefix: / }, cluster: a }] }]")
        .hasPrefix(r + "virtual_hosts[1].domains[0]: \"x.org\" is already a domain of virtual host \"a\""))
    #expect(error("virtual_hosts: [{ name: a, domains: [\"a.*.org\"], routes: [{ match: { prefix: / }, cluster: a }] }]").hasPrefix(r + "virtual_hosts[0].domains[0]: \"a.*.org\" is not a domain"))
    #expect(error("codec: http3\nroutes: [{ match: { prefix: / }, cluster: a }]").hasPrefix(r + "codec: \"http3\" is not one of"))
    #expect(error("require_tls: external_only\nroutes: [{ match: { prefix: / }, cluster: a }]").hasPrefix(r + "require_tls: \"external_only\" is not one of"))
    #expect(error("max_request_headers_kb: 97\nroutes: [{ match: { prefix: / }, cluster: a }]").hasPrefix(r + "max_request_headers_kb: 97 is out of range"))
    #expect(error("request_timeout: 5\nroutes: [{ match: { prefix: / }, cluster: a }]").hasPrefix(r + "request_timeout: \"5\" is not a duration"))
    #expect(error("http_filters: [{ name: gzip }]\nroutes: [{ match: { prefix: / }, cluster: a }]").hasPrefix(r + "http_filters[0].name: \"gzip\" is not one of"))
    #expect(error("routes: [{ match: { safe_regex: /a }, prefix_rewrite: /b, cluster: a }]").hasPrefix(r + "routes[0].prefix_rewrite: prefix_rewrite needs a prefix or path match"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a, regex_rewrite: { pattern: a, substitution: \"\\\\2\" } }]").hasPrefix(r + "routes[0].regex_rewrite.substitution: bad substitution"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a, request_headers_to_remove: [\":path\"] }]").hasPrefix(r + "routes[0].request_headers_to_remove[0]: \":path\" cannot be added or removed"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a, typed_per_filter_config: { health_check: { disabled: true } } }]")
        .hasPrefix(r + "routes[0].typed_per_filter_config.health_check: no filter named \"health_check\" in this listener's http_filters (configured: none)"))
    #expect(error("http_filters: [{ name: health_check }]\nroutes: [{ match: { prefix: / }, cluster: a, typed_per_filter_config: { health_check: { path: /x } } }]")
        .hasPrefix(r + "routes[0].typed_per_filter_config.health_check: health_check has no per-route settings"))
    #expect(error("http_filters: [{ name: header_mutation }]\nroutes: [{ match: { prefix: / }, cluster: a, typed_per_filter_config: { header_mutation: { colour: red } } }]")
        .hasPrefix(r + "routes[0].typed_per_filter_config.header_mutation.colour: unknown key"))
    #expect(error("routes: [{ match: { prefix: / }, cluster: a, connect_mode: forward }]").hasPrefix(r + "routes[0].connect_mode: only for routes with a connect_matcher"))
    #expect(error("routes: [{ match: { connect_matcher: {} }, cluster: a, connect_mode: tunnel }]").hasPrefix(r + "routes[0].connect_mode: \"tunnel\" is not one of"))
    #expect(error("routes: [{ match: { connect_matcher: {} }, cluster: a, connect_mode: forward, auto_host_rewrite: true }]")
        .hasPrefix(r + "routes[0].auto_host_rewrite: a CONNECT's target names where the tunnel goes"))
    #expect(error("routes: [{ match: { connect_matcher: {} }, cluster: a, prefix_rewrite: /x }]").hasPrefix(r + "routes[0].prefix_rewrite: a CONNECT has no path to rewrite"))
    let long = String(repeating: "a", count: 5000)
    #expect(error("routes: [{ match: { safe_regex: \"\(long)\" }, cluster: a }]").hasPrefix(r + "routes[0].match.safe_regex: bad regex: pattern longer than 4096"))
}

/// `typed_per_filter_config`: the route's entry wins over its virtual host's per filter name,
/// and the table knows whether any route has one (streams then resolve routes early).
@Test func httpRouteFilterOverridesMerge() throws {
    let t = try table("""
        http_filters: [{ name: health_check }, { name: header_mutation, request_headers_to_add: [{ header: { key: x-l, value: "1" } }] }]
        virtual_hosts:
          - name: v
            domains: ["*"]
            typed_per_filter_config: { health_check: { disabled: true }, header_mutation: { disabled: true } }
            routes:
              - { match: { prefix: /own }, cluster: a, typed_per_filter_config: { header_mutation: { request_headers_to_add: [{ header: { key: x-r, value: "2" } }] } } }
              - { match: { prefix: /again }, cluster: a, typed_per_filter_config: { health_check: { disabled: false } } }
              - { match: { prefix: / }, cluster: a }
        """)
    #expect(t.hasFilterOverrides)
    #expect(try !#require(t.route(request("/again"))).filterOverrides.isDisabled("health_check"))
    let own = try #require(t.route(request("/own")))
    #expect(own.filterOverrides.isDisabled("health_check"))
    guard case .headerMutation(let m)? = own.filterOverrides.find("header_mutation") else { Issue.record("no override"); return }
    #expect(!m.request.isEmpty && m.response.isEmpty)
    let rest = try #require(t.route(request("/x")))
    #expect(rest.filterOverrides.isDisabled("health_check") && rest.filterOverrides.isDisabled("header_mutation"))
    #expect(try !table("routes: [{ match: { prefix: / }, cluster: a }]").hasFilterOverrides)
}

@Test func httpRouteRegexEngine() async throws {
    let full = try Regex8("/a/[0-9]+", fullMatch: true)
    #expect(full.matches("/a/12") && !full.matches("/a/12x") && !full.matches("x/a/12") && !full.matches(""))
    let empty = try Regex8("", fullMatch: true)
    #expect(empty.matches("") && !empty.matches("a"))
    // Catastrophic backtracking stops at the match limit instead of spinning.
    let evil = try Regex8("(a+)+$", fullMatch: false)
    #expect(!evil.matches(String(repeating: "a", count: 40) + "!"))
    // Several threads share one compiled pattern, each with its own match data.
    await withTaskGroup(of: Bool.self) { g in
        for i in 0..<8 { g.addTask { (0..<1000).allSatisfy { full.matches("/a/\($0 + i)") } } }
        for await ok in g { #expect(ok) }
    }
}

@Test func httpRouteFlags() throws {
    let f = try flagRoutes(routeFlags: ["/api/=10.0.0.5:80,10.0.0.6:80=3", "/static/=10.0.0.7:80"])
    #expect(f.clusters.map(\.name) == ["route_0", "route_1"])
    #expect(f.clusters[0].endpoints == "10.0.0.5:80,10.0.0.6:80=3")
    let block = JSON.object(f.block(defaultCluster: "upstream")).serialized()
    #expect(block == #"{"routes":[{"match":{"prefix":"/api/"},"cluster":"route_0"},{"match":{"prefix":"/static/"},"cluster":"route_1"},{"match":{"prefix":"/"},"cluster":"upstream"}]}"#)
    #expect(JSON.object(f.block(defaultCluster: nil)).serialized().contains("upstream") == false)
    #expect(throws: ConfigError.self) { try flagRoutes(routeFlags: ["api=1.2.3.4:80"]) }
    #expect(throws: ConfigError.self) { try flagRoutes(routeFlags: ["/api"]) }
    #expect(throws: ConfigError.self) { try flagRoutes(routeFlags: ["/a=1.1.1.1:1", "/a=1.1.1.1:2"]) }
    // The flag-only form loads: only --upstream sends every request to the one cluster.
    var opts = try CommonOptions.parse(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1"])
    let onlyUpstream = ProxyBinary(blockParser: HttpProxyConfig.blockParser, flagBlock: { FlagRoutes(clusters: [], routes: []).block(defaultCluster: $0) },
                                   makeFactory: { _, _, _, _ in fatalError() })
    let c1 = try #require(try Server.loadConfig(options: opts, binary: onlyUpstream).listeners[0].filter as? HttpProxyConfig)
    #expect(c1.routeTable.route(request("/anything"))?.pickCluster(random: 1) == "upstream")
    // --route without --upstream: its own cluster, no catch-all.
    opts = try CommonOptions.parse(["--listen", "127.0.0.1:0"])
    var withRoutes = ProxyBinary(blockParser: HttpProxyConfig.blockParser, flagBlock: { _ in f.block(defaultCluster: nil) },
                                 makeFactory: { _, _, _, _ in fatalError() })
    withRoutes.flagClusters = f.clusters
    let cfg = try Server.loadConfig(options: opts, binary: withRoutes)
    #expect(cfg.clusters.map(\.name) == ["route_0", "route_1"])
    #expect(cfg.clusters[0].endpoints[1].weight == 3)
    let c2 = try #require(cfg.listeners[0].filter as? HttpProxyConfig)
    #expect(c2.routeTable.route(request("/static/x"))?.pickCluster(random: 1) == "route_1")
    #expect(c2.routeTable.route(request("/other")) == nil)
}

/// Generated `X-Request-Id`s are UUID v4 text (8-4-4-4-12 lowercase hex, version 4, variant
/// 10xx) and do not repeat.
@Test func httpRequestIdIsUuidV4() {
    let rng = SecureRandom()
    var seen = Set<String>()
    let hex = Set("0123456789abcdef")
    for _ in 0..<2000 {
        let id = RequestId.generate(rng)
        let parts = id.split(separator: "-", omittingEmptySubsequences: false).map(String.init)
        #expect(parts.map(\.count) == [8, 4, 4, 4, 12], "\(id)")
        #expect(parts.joined().allSatisfy { hex.contains($0) }, "\(id)")
        #expect(parts[2].first == "4" && "89ab".contains(parts[3].first ?? "x"), "\(id)")
        seen.insert(id)
    }
    #expect(seen.count == 2000)
}
