import Common

/// Reads `virtual_hosts` (or the `routes` shorthand: one virtual host for every domain) of an
/// `http` block into a compiled `RouteTable`. Regexes are compiled here, so a bad one is a
/// config error naming its key.
struct RouteConfigParser {
    /// Cluster names in first-reference order, and each one's index.
    private var clusterNames: [String] = []
    private var clusterIndex: [String: Int] = [:]
    private var references: [(path: String, name: String)] = []
    /// Every `typed_per_filter_config` entry, with its key path (each must name a filter of
    /// the listener's `http_filters`; checked by the block parser).
    private var filterReferences: [(path: String, name: String)] = []

    static func parse(_ m: ConfigMap) throws(ConfigError) -> (table: RouteTable, references: [(path: String, name: String)],
                                                             filterReferences: [(path: String, name: String)]) {
        var p = RouteConfigParser()
        var hosts: [VirtualHost] = []
        switch (m.optional("virtual_hosts"), m.optional("routes")) {
        case (let v?, nil):
            let items = try v.list()
            if items.isEmpty { throw v.fail("at least one virtual host is needed") }
            var names = Set<String>()
            var domains: [String: String] = [:]
            for item in items {
                let vh = try p.virtualHost(item)
                guard names.insert(vh.name).inserted else { throw ConfigError("\(item.path).name", "duplicate virtual host name \"\(vh.name)\"") }
                for (j, d) in vh.domains.enumerated() {
                    if let other = domains[d] {
                        throw ConfigError("\(item.path).domains[\(j)]", "\"\(d)\" is already a domain of virtual host \"\(other)\"")
                    }
                    domains[d] = vh.name
                }
                hosts.append(vh)
            }
        case (nil, let r?):
            let noHeaders = HeaderMutation()
            var vh = VirtualHost(name: "default", domains: ["*"],
                                 routes: try p.routes(r, virtualHost: "default", vhRequest: noHeaders, vhResponse: noHeaders, vhRetry: nil,
                                                      vhFilters: FilterOverrides()),
                                 requestHeaders: noHeaders, responseHeaders: noHeaders, retryPolicy: nil)
            // With `routes` (one virtual host for every domain), `require_tls` sits beside them.
            vh.requireTls = try requireTlsKey(m)
            hosts = [vh]
        case (_?, _?):
            throw ConfigError(m.path + ".routes", "give either virtual_hosts or routes (one virtual host for every domain), not both")
        case (nil, nil):
            throw ConfigError(m.path + ".virtual_hosts", "missing required key (or routes)")
        }
        return (RouteTable(virtualHosts: hosts, clusterNames: p.clusterNames), p.references, p.filterReferences)
    }

    private mutating func virtualHost(_ v: ConfigValue) throws(ConfigError) -> VirtualHost {
        let m = try v.mapping()
        let nameV = try m.required("name")
        let name = try nameV.string()
        guard !name.isEmpty, isValidHeaderValue(name) else { throw nameV.fail("a name is needed") }
        let dl = try m.required("domains")
        let dlist = try dl.list()
        if dlist.isEmpty { throw dl.fail("at least one domain is needed (\"*\" for any)") }
        var domains: [String] = []
        for d in dlist {
            let s = try d.string().lowercased()
            try RouteConfigParser.checkDomain(s, d)
            if domains.contains(s) { throw d.fail("duplicate domain \"\(s)\"") }
            domains.append(s)
        }
        let req = try HeaderMutation.parse(m, side: "request")
        let resp = try HeaderMutation.parse(m, side: "response")
        let retry = try m.optional("retry_policy").map { (r) throws(ConfigError) in try RouteConfigParser.retryPolicy(r) }
        let filters = try filterOverrides(m)
        let routes = try routes(try m.required("routes"), virtualHost: name, vhRequest: req, vhResponse: resp, vhRetry: retry, vhFilters: filters)
        let requireTls = try RouteConfigParser.requireTlsKey(m)
        try m.finish()
        var vh = VirtualHost(name: name, domains: domains, routes: routes, requestHeaders: req, responseHeaders: resp, retryPolicy: retry,
                             filterOverrides: filters)
        vh.requireTls = requireTls
        return vh
    }

    /// `require_tls: all | none` (Envoy's `external_only` needs an internal/external notion
    /// this proxy does not have).
    static func requireTlsKey(_ m: ConfigMap) throws(ConfigError) -> Bool {
        guard let v = m.optional("require_tls") else { return false }
        return try v.oneOf(["all", "none"]) == "all"
    }

    /// `*`, `*suffix`, `prefix*` (one wildcard, at an end) or an exact host[:port].
    static func checkDomain(_ s: String, _ v: ConfigValue) throws(ConfigError) {
        if s == "*" { return }
        let stars = s.utf8.filter { $0 == UInt8(ascii: "*") }.count
        let ok = s.utf8.allSatisfy { c in
            (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9"))
                || "-._:[]*".utf8.contains(c)
        }
        guard ok, !s.isEmpty, s.utf8.count <= 255, stars == 0 || (stars == 1 && (s.hasPrefix("*") || s.hasSuffix("*"))) else {
            throw v.fail("\"\(s)\" is not a domain (an exact host[:port], *.suffix, prefix.* or *)")
        }
    }

    private mutating func routes(_ v: ConfigValue, virtualHost: String, vhRequest: HeaderMutation, vhResponse: HeaderMutation,
                                 vhRetry: RetryPolicy?, vhFilters: FilterOverrides) throws(ConfigError) -> [RouteEntry] {
        let items = try v.list()
        if items.isEmpty { throw v.fail("at least one route is needed") }
        var out: [RouteEntry] = []
        for (i, item) in items.enumerated() {
            out.append(try route(item, index: i, virtualHost: virtualHost, vhRequest: vhRequest, vhResponse: vhResponse, vhRetry: vhRetry,
                                 vhFilters: vhFilters))
        }
        return out
    }

    private mutating func route(_ v: ConfigValue, index: Int, virtualHost: String, vhRequest: HeaderMutation,
                                vhResponse: HeaderMutation, vhRetry: RetryPolicy?, vhFilters: FilterOverrides) throws(ConfigError) -> RouteEntry {
        let m = try v.mapping()
        let name = try m.optional("name")?.string() ?? "route_\(index)"
        let match = try RouteConfigParser.match(try m.required("match"))
        let actionKeys = ["cluster", "weighted_clusters", "redirect", "direct_response"].filter { m.keys.contains($0) }
        guard actionKeys.count == 1 else {
            throw ConfigError("\(v.path).\(actionKeys.count > 1 ? actionKeys[1] : "cluster")",
                              actionKeys.isEmpty ? "missing an action: cluster, weighted_clusters, redirect or direct_response"
                                                 : "give one action, not \(actionKeys.joined(separator: " and "))")
        }
        let forwardOnly = ["prefix_rewrite", "regex_rewrite", "host_rewrite_literal", "auto_host_rewrite", "timeout",
                           "idle_timeout", "retry_policy", "hash_policy", "connect_mode"]
        let action: RouteAction
        switch actionKeys[0] {
        case "redirect":
            action = .redirect(try RouteConfigParser.redirect(try m.required("redirect"), match: match))
        case "direct_response":
            let d = try m.required("direct_response").mapping()
            let status = try d.required("status").int(min: 200, max: 599)
            var body = ""
            if let b = d.optional("body") {
                body = try b.string()
                if body.utf8.count > 4096 { throw b.fail("longer than 4096 bytes") }
            }
            try d.finish()
            action = .directResponse(status: status, body: body)
        default:
            action = .forward(try forward(m, match: match, vhRetry: vhRetry))
        }
        if case .forward = action {} else if let k = forwardOnly.first(where: { m.keys.contains($0) }) {
            throw ConfigError("\(v.path).\(k)", "only for routes that forward to a cluster")
        }
        let entry = RouteEntry(name: name, virtualHostName: virtualHost, match: match, action: action,
                               requestHeaders: try HeaderMutation.parse(m, side: "request"),
                               responseHeaders: try HeaderMutation.parse(m, side: "response"),
                               virtualHostRequestHeaders: vhRequest, virtualHostResponseHeaders: vhResponse,
                               filterOverrides: try filterOverrides(m), virtualHostFilterOverrides: vhFilters)
        try m.finish()
        return entry
    }

    /// `typed_per_filter_config: {<filter name>: {disabled: true} | <the filter's own keys>}`
    /// on a virtual host or route. Only `header_mutation` has keys to override (its
    /// `request_headers_to_add`, ...); any filter can be disabled.
    private mutating func filterOverrides(_ m: ConfigMap) throws(ConfigError) -> FilterOverrides {
        guard let v = m.optional("typed_per_filter_config") else { return FilterOverrides() }
        let fm = try v.mapping()
        var out = FilterOverrides()
        for name in fm.keys {
            guard let item = fm.optional(name) else { continue }
            let im = try item.mapping()
            filterReferences.append((item.path, name))
            if let d = im.optional("disabled") {
                // `false` re-enables, on a route, a filter its virtual host disables (Envoy).
                let off = try d.bool()
                try im.finish()
                out.entries.append((name, off ? .disabled : .enabled))
                continue
            }
            switch name {
            case "header_mutation":
                let hm = HeaderMutationFilterConfig(request: try HeaderMutation.parse(im, side: "request"),
                                                    response: try HeaderMutation.parse(im, side: "response"))
                try im.finish()
                out.entries.append((name, .headerMutation(hm)))
            default:
                throw item.fail("\(name) has no per-route settings; only `disabled: true`")
            }
        }
        try fm.finish()
        return out
    }

    // MARK: - match

    private static func match(_ v: ConfigValue) throws(ConfigError) -> RouteMatch {
        let m = try v.mapping()
        let kinds = ["prefix", "path", "safe_regex", "regex", "connect_matcher"].filter { m.keys.contains($0) }
        guard kinds.count == 1 else {
            throw ConfigError("\(v.path).\(kinds.count > 1 ? kinds[1] : "prefix")",
                              kinds.isEmpty ? "missing one of prefix, path, safe_regex, connect_matcher" : "give one of \(kinds.joined(separator: ", ")), not several")
        }
        let pv = try m.required(kinds[0])
        let path: PathMatch
        switch kinds[0] {
        case "connect_matcher":
            try pv.mapping().finish()  // `{}`: nothing to configure
            path = .connect
        case "prefix":
            let s = try pv.string()
            guard s.isEmpty || s.hasPrefix("/") else { throw pv.fail("a prefix starts with /") }
            path = .prefix(Array(s.utf8))
        case "path":
            let s = try pv.string()
            guard s.hasPrefix("/") else { throw pv.fail("a path starts with /") }
            path = .path(Array(s.utf8))
        default:
            path = .regex(try regex(pv, fullMatch: true))
        }
        let caseSensitive = try m.optional("case_sensitive")?.bool() ?? true
        var headers: [HeaderMatcher] = []
        if let h = m.optional("headers") {
            for item in try h.list() { headers.append(try headerMatcher(item)) }
        }
        var queries: [QueryMatcher] = []
        if let q = m.optional("query_parameters") {
            for item in try q.list() { queries.append(try queryMatcher(item)) }
        }
        var methods: [[UInt8]] = []
        if let ml = m.optional("methods") {
            let items = try ml.list()
            if items.isEmpty { throw ml.fail("at least one method (or leave the key out)") }
            for item in items {
                let s = try item.string()
                guard isHeaderName(s), s == s.uppercased() else { throw item.fail("\"\(s)\" is not a method (uppercase, e.g. GET)") }
                methods.append(Array(s.utf8))
            }
        }
        try m.finish()
        return RouteMatch(path: path, caseSensitive: caseSensitive, headers: headers, queryParameters: queries, methods: methods)
    }

    /// A `safe_regex` value: the pattern itself, or Envoy's `{regex: PATTERN}` (`google_re2`
    /// accepted and ignored).
    private static func regex(_ v: ConfigValue, fullMatch: Bool) throws(ConfigError) -> Regex8 {
        var pv = v
        if case .mapping = v.node {
            let m = try v.mapping()
            pv = try m.required("regex")
            _ = m.optional("google_re2")
            try m.finish()
        }
        let pattern = try pv.string()
        do { return try Regex8(pattern, fullMatch: fullMatch) } catch { throw pv.fail("bad regex: \(error.description)") }
    }

    /// One value rule (`exact`, `prefix`, `suffix`, `contains`, `safe_regex`) of a header or
    /// query matcher, or nil when none is given. `allowed` limits the kinds.
    private static func stringMatch(_ m: ConfigMap, allowed: [String]) throws(ConfigError) -> (StringMatch, String)? {
        let given = allowed.filter { m.keys.contains($0) }
        if given.count > 1 { throw ConfigError("\(m.path).\(given[1])", "give one of \(given.joined(separator: ", ")), not several") }
        guard let k = given.first, let v = m.optional(k) else { return nil }
        let ignoreCase = try m.optional("ignore_case")?.bool() ?? false
        let kind: StringMatch.Kind
        switch k {
        case "safe_regex", "regex": kind = .regex(try regex(v, fullMatch: true))
        default:
            let b = Array(try v.string().utf8)
            switch k {
            case "exact": kind = .exact(b)
            case "prefix": kind = .prefix(b)
            case "suffix": kind = .suffix(b)
            default: kind = .contains(b)
            }
        }
        return (StringMatch(kind: kind, ignoreCase: ignoreCase), k)
    }

    private static func headerMatcher(_ v: ConfigValue) throws(ConfigError) -> HeaderMatcher {
        let m = try v.mapping()
        let nv = try m.required("name")
        let name = try nv.string()
        let bare = name.hasPrefix(":") ? String(name.dropFirst()) : name
        guard isHeaderName(bare) else { throw nv.fail("\"\(name)\" is not a header name") }
        let value = try stringMatch(m, allowed: ["exact", "prefix", "suffix", "contains", "safe_regex", "regex"])
        let present = m.optional("present")
        let rule: HeaderMatcher.Rule
        switch (value, present) {
        case (let (s, _)?, nil): rule = .value(s)
        case (nil, let p?): rule = .present(try p.bool())
        case (nil, nil): rule = .present(true)
        case (let (_, k)?, _?): throw ConfigError("\(m.path).present", "give either \(k) or present, not both")
        }
        let invert = try m.optional("invert_match")?.bool() ?? false
        try m.finish()
        return HeaderMatcher(name: name, rule: rule, invert: invert)
    }

    private static func queryMatcher(_ v: ConfigValue) throws(ConfigError) -> QueryMatcher {
        let m = try v.mapping()
        let nv = try m.required("name")
        let name = try nv.string()
        guard !name.isEmpty, !name.contains("&"), !name.contains("=") else { throw nv.fail("\"\(name)\" is not a parameter name") }
        let value = try stringMatch(m, allowed: ["exact", "prefix", "suffix", "contains", "safe_regex", "regex"])
        let present = m.optional("present")
        let rule: QueryMatcher.Rule
        switch (value, present) {
        case (let (s, _)?, nil): rule = .value(s)
        case (nil, let p?):
            guard try p.bool() else { throw p.fail("only present: true (leave the matcher out otherwise)") }
            rule = .present
        case (nil, nil): rule = .present
        case (let (_, k)?, _?): throw ConfigError("\(m.path).present", "give either \(k) or present, not both")
        }
        try m.finish()
        return QueryMatcher(name: Array(name.utf8), rule: rule)
    }

    // MARK: - actions

    private mutating func forward(_ m: ConfigMap, match: RouteMatch, vhRetry: RetryPolicy?) throws(ConfigError) -> ForwardAction {
        var clusters: [RouteCluster] = []
        if let c = m.optional("cluster") {
            clusters = [RouteCluster(name: try c.string(), weight: 1, index: reference(try c.string(), c.path))]
        } else {
            let w = try m.required("weighted_clusters")
            var items = try w.list()
            // Envoy nests the list under `clusters:`; take both forms.
            if items.isEmpty, case .mapping = w.node {
                let wm = try w.mapping()
                items = try wm.required("clusters").list()
                try wm.finish()
            }
            if items.isEmpty { throw w.fail("at least one cluster is needed") }
            for item in items {
                let im = try item.mapping()
                let nv = try im.required("name")
                let weight = try im.required("weight").int(min: 0, max: 1_000_000)
                clusters.append(RouteCluster(name: try nv.string(), weight: weight, index: reference(try nv.string(), nv.path)))
                try im.finish()
            }
        }
        let total = clusters.reduce(0) { $0 + $1.weight }
        if total == 0 { throw ConfigError(m.path + ".weighted_clusters", "the weights add up to 0") }
        let pr = m.optional("prefix_rewrite"), rr = m.optional("regex_rewrite")
        if pr != nil && rr != nil { throw ConfigError(m.path + ".regex_rewrite", "give either prefix_rewrite or regex_rewrite, not both") }
        if case .connect = match.path, let v = pr ?? rr { throw v.fail("a CONNECT has no path to rewrite") }
        var prefixRewrite: [UInt8]?
        if let pr {
            if case .regex = match.path { throw pr.fail("prefix_rewrite needs a prefix or path match (use regex_rewrite)") }
            let s = try pr.string()
            guard isValidHeaderValue(s), !s.contains(" ") else { throw pr.fail("not a path") }
            prefixRewrite = Array(s.utf8)
        }
        var regexRewrite: (regex: Regex8, substitution: [UInt8], text: String)?
        if let rr {
            let rm = try rr.mapping()
            let patternV = try rm.required("pattern")
            let re = try RouteConfigParser.regex(patternV, fullMatch: false)
            let subV = try rm.required("substitution")
            let text = try subV.string()
            guard isValidHeaderValue(text), let sub = re.pcreSubstitution(envoy: text) else {
                throw subV.fail("bad substitution (\\1..\\\(re.captureCount) for groups, \\\\ for a backslash)")
            }
            try rm.finish()
            regexRewrite = (re, sub, text)
        }
        let hl = m.optional("host_rewrite_literal"), ah = m.optional("auto_host_rewrite")
        if case .connect = match.path, let v = hl ?? ah {
            throw v.fail("a CONNECT's target names where the tunnel goes: it cannot be rewritten")
        }
        var hostRewrite = HostRewrite.none
        if let hl {
            if ah != nil { throw ConfigError(m.path + ".auto_host_rewrite", "give either host_rewrite_literal or auto_host_rewrite, not both") }
            let s = try hl.string()
            guard !s.isEmpty, isValidHeaderValue(s), !s.contains(" ") else { throw hl.fail("not a host") }
            hostRewrite = .literal(s)
        } else if let ah, try ah.bool() {
            hostRewrite = .auto
        }
        let timeoutMs = try m.optional("timeout")?.durationMs() ?? 15_000
        let idleTimeoutMs = try m.optional("idle_timeout")?.durationMs()
        let maxGrpcTimeoutMs = try m.optional("max_grpc_timeout")?.durationMs()
        let retryPolicy = try m.optional("retry_policy").map { (r) throws(ConfigError) in try RouteConfigParser.retryPolicy(r) } ?? vhRetry
        var hashPolicy: [HashPolicy] = []
        if let h = m.optional("hash_policy") {
            for item in try h.list() { hashPolicy.append(try RouteConfigParser.hashPolicy(item)) }
        }
        var forwardConnect = false
        if let c = m.optional("connect_mode") {
            guard case .connect = match.path else { throw c.fail("only for routes with a connect_matcher") }
            forwardConnect = try c.oneOf(["terminate", "forward"]) == "forward"
        }
        return ForwardAction(clusters: clusters, totalWeight: total, prefixRewrite: prefixRewrite, regexRewrite: regexRewrite,
                             hostRewrite: hostRewrite, timeoutMs: timeoutMs, idleTimeoutMs: idleTimeoutMs,
                             retryPolicy: retryPolicy, hashPolicy: hashPolicy, forwardConnect: forwardConnect,
                             maxGrpcTimeoutMs: maxGrpcTimeoutMs)
    }

    /// A cluster reference: its index in `clusterNames`, the path kept for the loader's check.
    private mutating func reference(_ name: String, _ path: String) -> Int {
        references.append((path, name))
        if let i = clusterIndex[name] { return i }
        clusterIndex[name] = clusterNames.count
        clusterNames.append(name)
        return clusterNames.count - 1
    }

    private static func redirect(_ v: ConfigValue, match: RouteMatch) throws(ConfigError) -> RedirectAction {
        let m = try v.mapping()
        var r = RedirectAction()
        func text(_ k: String) throws(ConfigError) -> String? {
            guard let x = m.optional(k) else { return nil }
            let s = try x.string()
            guard !s.isEmpty, isValidHeaderValue(s), !s.contains(" ") else { throw x.fail("\"\(s)\" cannot go in a Location") }
            return s
        }
        if let s = m.optional("scheme_redirect") { r.scheme = try s.oneOf(["http", "https"]) }
        r.host = try text("host_redirect")
        if let p = m.optional("port_redirect") { r.port = try p.int(min: 1, max: 65535) }
        r.path = try text("path_redirect")
        r.prefixRewrite = try text("prefix_rewrite")
        if let p = r.path, !p.hasPrefix("/") { throw ConfigError(m.path + ".path_redirect", "a path starts with /") }
        if r.path != nil && r.prefixRewrite != nil {
            throw ConfigError(m.path + ".prefix_rewrite", "give either path_redirect or prefix_rewrite, not both")
        }
        if r.prefixRewrite != nil, case .regex = match.path {
            throw ConfigError(m.path + ".prefix_rewrite", "prefix_rewrite needs a prefix or path match")
        }
        if let c = m.optional("response_code") {
            let code = try c.int()
            guard [301, 302, 303, 307, 308].contains(code) else { throw c.fail("\(code) is not a redirect code (301, 302, 303, 307, 308)") }
            r.responseCode = code
        }
        if let s = m.optional("strip_query") { r.stripQuery = try s.bool() }
        try m.finish()
        return r
    }

    static func retryPolicy(_ v: ConfigValue) throws(ConfigError) -> RetryPolicy {
        let m = try v.mapping()
        var r = RetryPolicy()
        let on = try m.required("retry_on")
        var words: [(String, ConfigValue)] = []
        if case .sequence = on.node {
            for item in try on.list() { words.append((try item.string(), item)) }
        } else {
            for w in try on.string().split(separator: ",") { words.append((String(w.filter { $0 != " " }), on)) }
        }
        for (w, wv) in words {
            guard let bit = RetryOn.names.first(where: { $0.0 == w })?.1 else {
                throw wv.fail("\"\(w)\" is not one of \(RetryOn.names.map(\.0).joined(separator: ", "))")
            }
            r.retryOn.insert(bit)
        }
        if r.retryOn.isEmpty { throw on.fail("at least one condition is needed") }
        if let n = m.optional("num_retries") { r.numRetries = try n.int(min: 0, max: 10) }
        if let t = m.optional("per_try_timeout") { r.perTryTimeoutMs = try t.durationMs() }
        if let l = m.optional("retriable_status_codes") {
            for item in try l.list() { r.retriableStatusCodes.append(try item.int(min: 100, max: 599)) }
        }
        if r.retryOn.contains(.retriableStatusCodes) && r.retriableStatusCodes.isEmpty {
            throw ConfigError(m.path + ".retriable_status_codes", "retriable-status-codes needs the codes")
        }
        if let b = m.optional("retry_back_off") {
            let bm = try b.mapping()
            let base = try bm.required("base_interval")
            r.baseIntervalMs = try base.durationMs()
            if r.baseIntervalMs == 0 { throw base.fail("must be more than 0") }
            r.maxIntervalMs = r.baseIntervalMs * 10
            if let mx = bm.optional("max_interval") {
                r.maxIntervalMs = try mx.durationMs()
                if r.maxIntervalMs < r.baseIntervalMs { throw mx.fail("must be at least base_interval") }
            }
            try bm.finish()
        }
        try m.finish()
        return r
    }

    private static func hashPolicy(_ v: ConfigValue) throws(ConfigError) -> HashPolicy {
        let m = try v.mapping()
        let kinds = ["header", "cookie", "connection_properties"].filter { m.keys.contains($0) }
        guard kinds.count == 1 else {
            throw ConfigError("\(v.path).\(kinds.count > 1 ? kinds[1] : "header")", "give one of header, cookie, connection_properties")
        }
        let inner = try m.required(kinds[0]).mapping()
        let p: HashPolicy
        switch kinds[0] {
        case "header":
            let n = try inner.required("header_name")
            let s = try n.string()
            guard isHeaderName(s) else { throw n.fail("\"\(s)\" is not a header name") }
            p = .header(s.lowercased())
        case "cookie":
            let n = try inner.required("name")
            let s = try n.string()
            guard isHeaderName(s) else { throw n.fail("\"\(s)\" is not a cookie name") }
            p = .cookie(s)
        default:
            let s = try inner.required("source_ip")
            guard try s.bool() else { throw s.fail("only source_ip: true") }
            p = .sourceIp
        }
        try inner.finish()
        try m.finish()
        return p
    }
}
