import Common

/// `retry_policy.retry_on`: the failures that are retried (Envoy's names).
struct RetryOn: OptionSet, Sendable {
    let rawValue: UInt16
    static let fiveXX = RetryOn(rawValue: 1 << 0)
    static let gatewayError = RetryOn(rawValue: 1 << 1)
    static let reset = RetryOn(rawValue: 1 << 2)
    static let connectFailure = RetryOn(rawValue: 1 << 3)
    static let retriableStatusCodes = RetryOn(rawValue: 1 << 4)
    static let refusedStream = RetryOn(rawValue: 1 << 5)
    // gRPC statuses of a trailers-only response (Envoy's `retry_grpc_on`, accepted in `retry_on`).
    static let cancelled = RetryOn(rawValue: 1 << 6)
    static let deadlineExceeded = RetryOn(rawValue: 1 << 7)
    static let resourceExhausted = RetryOn(rawValue: 1 << 8)
    static let unavailable = RetryOn(rawValue: 1 << 9)

    static let names: [(String, RetryOn)] = [
        ("5xx", .fiveXX), ("gateway-error", .gatewayError), ("reset", .reset), ("connect-failure", .connectFailure),
        ("retriable-status-codes", .retriableStatusCodes), ("refused-stream", .refusedStream),
        ("cancelled", .cancelled), ("deadline-exceeded", .deadlineExceeded), ("resource-exhausted", .resourceExhausted),
        ("unavailable", .unavailable),
    ]

    /// The gRPC condition a `grpc-status` value retries on, if any.
    static func grpc(_ status: Int) -> RetryOn? {
        switch status {
        case 1: .cancelled
        case 4: .deadlineExceeded
        case 8: .resourceExhausted
        case 14: .unavailable
        default: nil
        }
    }
    var text: String { RetryOn.names.filter { contains($0.1) }.map(\.0).joined(separator: ",") }
}

/// A route's (or its virtual host's default) `retry_policy`.
struct RetryPolicy: Sendable {
    var retryOn: RetryOn = []
    /// `num_retries` (default 1, as Envoy).
    var numRetries = 1
    /// `per_try_timeout` (default 0: each try may take the route's whole `timeout`).
    var perTryTimeoutMs: UInt64 = 0
    /// `retriable_status_codes`, for `retry_on: retriable-status-codes`.
    var retriableStatusCodes: [Int] = []
    /// `retry_back_off.base_interval` (default 25ms): back-off is exponential with full jitter.
    var baseIntervalMs: UInt64 = 25
    /// `retry_back_off.max_interval` (default 10 × base).
    var maxIntervalMs: UInt64 = 250

    var dump: JSON {
        .object([("retry_on", .string(retryOn.text)), ("num_retries", .int(Int64(numRetries))),
                 ("per_try_timeout", .string(formatDuration(perTryTimeoutMs))),
                 ("retriable_status_codes", .array(retriableStatusCodes.map { .int(Int64($0)) })),
                 ("retry_back_off", .object([("base_interval", .string(formatDuration(baseIntervalMs))),
                                             ("max_interval", .string(formatDuration(maxIntervalMs)))]))])
    }
}

/// One `hash_policy` entry: what keys a hashing balancer (maglev, ring_hash). Entries are
/// tried in order; the first that yields a key is used. Other balancers ignore it.
enum HashPolicy: Sendable {
    /// The request header's value (lowercase name).
    case header(String)
    /// The cookie's value.
    case cookie(String)
    /// The client's IP address.
    case sourceIp

    var dump: JSON {
        switch self {
        case .header(let n): .object([("header", .object([("header_name", .string(n))]))])
        case .cookie(let n): .object([("cookie", .object([("name", .string(n))]))])
        case .sourceIp: .object([("connection_properties", .object([("source_ip", .bool(true))]))])
        }
    }
}

/// `host_rewrite_literal` / `auto_host_rewrite`.
enum HostRewrite: Sendable {
    case none
    case literal(String)
    /// The picked upstream host's address.
    case auto
}

/// A cluster a route sends to, with its weight.
struct RouteCluster: Sendable {
    let name: String
    let weight: Int
    /// Index into `RouteTable.clusterNames` (the factory resolves each once to a slot).
    let index: Int
}

/// A route's forwarding to a cluster (`cluster` or `weighted_clusters`) and its options.
///
/// A class, not a struct: the router keeps it per request, and a struct this size was copied
/// (a retain per array and optional in it) several times per request. Every field is a `let`
/// set by the one init (the config parser gathers the values first), so it is checked
/// `Sendable`: route tables cross from the main thread to the workers.
final class ForwardAction: Sendable {
    let clusters: [RouteCluster]
    let totalWeight: Int
    /// `prefix_rewrite`: replaces the matched prefix (or the whole path of a `path` match).
    let prefixRewrite: [UInt8]?
    /// `regex_rewrite`: every match in the path replaced (PCRE2 substitution syntax, converted
    /// from Envoy's `\1`).
    let regexRewrite: (regex: Regex8, substitution: [UInt8], text: String)?
    let hostRewrite: HostRewrite
    /// `timeout` (default 15s, as Envoy; 0 = none): the whole upstream response.
    let timeoutMs: UInt64
    /// `idle_timeout` (default: the listener's `stream_idle_timeout`).
    let idleTimeoutMs: UInt64?
    /// The route's `retry_policy`, else its virtual host's; nil = no retries.
    let retryPolicy: RetryPolicy?
    let hashPolicy: [HashPolicy]
    /// `connect_mode: forward` on a `connect_matcher` route: the CONNECT request itself goes
    /// to the cluster (an upstream HTTP proxy), and its 2xx turns both connections into a
    /// relay. The default, `terminate`, opens a TCP connection to the host and answers 200.
    let forwardConnect: Bool
    /// `max_grpc_timeout` (Envoy's; nil: not set): a gRPC request's `grpc-timeout`, capped by it
    /// (0: no cap), replaces the route `timeout`.
    let maxGrpcTimeoutMs: UInt64?

    /// No defaults: the parser passes every field, so a new one cannot be forgotten there.
    init(clusters: [RouteCluster], totalWeight: Int, prefixRewrite: [UInt8]?,
         regexRewrite: (regex: Regex8, substitution: [UInt8], text: String)?, hostRewrite: HostRewrite,
         timeoutMs: UInt64, idleTimeoutMs: UInt64?, retryPolicy: RetryPolicy?,
         hashPolicy: [HashPolicy], forwardConnect: Bool, maxGrpcTimeoutMs: UInt64?) {
        self.clusters = clusters
        self.totalWeight = totalWeight
        self.prefixRewrite = prefixRewrite
        self.regexRewrite = regexRewrite
        self.hostRewrite = hostRewrite
        self.timeoutMs = timeoutMs
        self.idleTimeoutMs = idleTimeoutMs
        self.retryPolicy = retryPolicy
        self.hashPolicy = hashPolicy
        self.forwardConnect = forwardConnect
        self.maxGrpcTimeoutMs = maxGrpcTimeoutMs
    }
}

/// `redirect`.
struct RedirectAction: Sendable {
    var scheme: String?
    var host: String?
    var port: Int?
    var path: String?
    var prefixRewrite: String?
    /// 301 (default), 302, 303, 307 or 308.
    var responseCode = 301
    var stripQuery = false
}

enum RouteAction: Sendable {
    case forward(ForwardAction)
    case redirect(RedirectAction)
    /// `direct_response`: the proxy answers with this status and body.
    case directResponse(status: Int, body: String)
}

/// A virtual host's or route's `typed_per_filter_config` entry for one filter (Envoy's
/// per-route filter config): switch the filter off for the route, or give it other settings.
enum FilterOverride: Sendable {
    /// `{disabled: true}`: the filter is not installed for streams on this route.
    case disabled
    /// `{disabled: false}`: installed here even though the virtual host disables it.
    case enabled
    /// `header_mutation`'s own keys: these mutations replace the listener-level ones.
    case headerMutation(HeaderMutationFilterConfig)

    var dump: JSON {
        switch self {
        case .disabled: return .object([("disabled", .bool(true))])
        case .enabled: return .object([("disabled", .bool(false))])
        case .headerMutation(let m):
            var f: [(String, JSON)] = []
            m.request.dump(side: "request", into: &f)
            m.response.dump(side: "response", into: &f)
            return .object(f)
        }
    }
}

/// Filter overrides by filter name (a handful at most: a list, searched in order).
struct FilterOverrides: Sendable {
    var entries: [(name: String, override: FilterOverride)] = []

    var isEmpty: Bool { entries.isEmpty }

    func find(_ name: String) -> FilterOverride? { entries.first { $0.name == name }?.override }

    func isDisabled(_ name: String) -> Bool {
        if case .disabled? = find(name) { return true }
        return false
    }

    /// `more` (the more specific level) wins per filter name.
    func merged(with more: FilterOverrides) -> FilterOverrides {
        var out = more
        for e in entries where more.find(e.name) == nil { out.entries.append(e) }
        return out
    }

    func dump(into f: inout [(String, JSON)]) {
        if !isEmpty { f.append(("typed_per_filter_config", .object(entries.map { ($0.name, $0.override.dump) }))) }
    }
}

/// A compiled route: its match, its action, and the header mutations to apply (route level
/// first, then its virtual host's, as Envoy). Immutable; shared by every worker.
final class RouteEntry: Sendable {
    let name: String
    let virtualHostName: String
    let match: RouteMatch
    let action: RouteAction
    /// The route's own `request_headers_to_add/remove` and response ones.
    let requestHeaders: HeaderMutation
    let responseHeaders: HeaderMutation
    /// Request mutations in the order to apply them (route, then virtual host; empty ones left
    /// out). The router applies these.
    let requestHeaderMutations: [HeaderMutation]
    let responseHeaderMutations: [HeaderMutation]
    /// The route's own `typed_per_filter_config`, and the one in force: the virtual host's
    /// merged under the route's.
    let ownFilterOverrides: FilterOverrides
    let filterOverrides: FilterOverrides

    init(name: String, virtualHostName: String, match: RouteMatch, action: RouteAction,
         requestHeaders: HeaderMutation, responseHeaders: HeaderMutation,
         virtualHostRequestHeaders: HeaderMutation, virtualHostResponseHeaders: HeaderMutation,
         filterOverrides: FilterOverrides = FilterOverrides(), virtualHostFilterOverrides: FilterOverrides = FilterOverrides()) {
        self.name = name; self.virtualHostName = virtualHostName; self.match = match; self.action = action
        ownFilterOverrides = filterOverrides
        self.filterOverrides = virtualHostFilterOverrides.merged(with: filterOverrides)
        if case .forward(let f) = action { forward = f } else { forward = nil }
        self.requestHeaders = requestHeaders
        self.responseHeaders = responseHeaders
        requestHeaderMutations = [requestHeaders, virtualHostRequestHeaders].filter { !$0.isEmpty }
        responseHeaderMutations = [responseHeaders, virtualHostResponseHeaders].filter { !$0.isEmpty }
    }

    /// The forward action, stored once (reading it out of `action` per request copied the
    /// whole struct, with a retain per array in it).
    let forward: ForwardAction?

    /// The cluster for one request: `random` (any 64-bit random) spread over the weights.
    /// An index into `RouteTable.clusterNames`, resolved by the factory to a slot once per
    /// generation; nil for a route that does not forward.
    func pickClusterIndex(random: UInt64) -> Int? { pick(random)?.index }

    /// The cluster name for one request (see `pickClusterIndex`); nil for a route that does
    /// not forward.
    func pickCluster(random: UInt64) -> String? { pick(random)?.name }

    private func pick(_ random: UInt64) -> RouteCluster? {
        guard let f = forward else { return nil }
        if f.clusters.count == 1 { return f.clusters[0] }
        var r = Int(random % UInt64(f.totalWeight))
        for c in f.clusters {
            if r < c.weight { return c }
            r -= c.weight
        }
        return f.clusters.last
    }

    /// The upstream `:path` after `prefix_rewrite` or `regex_rewrite` (the query string kept
    /// as it was); nil when the route rewrites nothing (or the rewrite regex hit its match
    /// limit: the path then goes as it came).
    func rewrittenPath(_ h: HeaderMap) -> String? {
        guard let f = forward else { return nil }
        if let pr = f.prefixRewrite {
            return withPathAndQuery(h) { p, q in
                var out = pr
                let cut = matchedPrefixLength(pathLength: p.count)
                out += p[cut...]
                if let q { out.append(UInt8(ascii: "?")); out += q }
                return String(decoding: out, as: UTF8.self)
            }
        }
        if let rr = f.regexRewrite {
            return withPathAndQuery(h) { p, q in
                guard var out = rr.regex.replaceAll(in: p, with: rr.substitution) else { return nil }
                if let q { out.append(UInt8(ascii: "?")); out += q }
                return String(decoding: out, as: UTF8.self)
            }
        }
        return nil
    }

    /// How many bytes of a path the route's match covers, for a prefix rewrite.
    private func matchedPrefixLength(pathLength: Int) -> Int {
        switch match.path {
        case .prefix(let b): return min(b.count, pathLength)
        case .path, .regex, .connect: return pathLength
        }
    }

    /// The `Location` of a `redirect` route for this request. `scheme` is the request's own
    /// (`http`, or `https` behind TLS). Ports that are the scheme's default are left out; a
    /// changed scheme drops the request's default port (`http://a:80` → `https://a`).
    func redirectLocation(_ h: HeaderMap, scheme: String) -> String {
        guard case .redirect(let r) = action else { return "" }
        let authority = h.value(.authority) ?? ""
        var (host, port) = splitHostPort(authority)
        if let rh = r.host {
            let (hh, hp) = splitHostPort(rh)
            host = hh; port = hp
        }
        let newScheme = r.scheme ?? scheme
        if let p = r.port { port = p }
        else if newScheme != scheme, let p = port, p == defaultPort(scheme) { port = nil }
        if let p = port, p == defaultPort(newScheme) { port = nil }

        var path = ""
        var query: String?
        withPathAndQuery(h) { p, q in
            path = String(decoding: p, as: UTF8.self)
            query = q.map { String(decoding: $0, as: UTF8.self) }
        }
        if let rp = r.path {
            if let qi = rp.firstIndex(of: "?") {
                path = String(rp[..<qi]); query = String(rp[rp.index(after: qi)...])
            } else {
                path = rp
            }
        } else if let pr = r.prefixRewrite {
            let cut = matchedPrefixLength(pathLength: path.utf8.count)
            path = pr + String(decoding: Array(path.utf8)[cut...], as: UTF8.self)
        }
        if r.stripQuery { query = nil }
        var loc = "\(newScheme)://\(host)"
        if let port { loc += ":\(port)" }
        loc += path
        if let query { loc += "?" + query }
        return loc
    }

    var dump: JSON {
        var f: [(String, JSON)] = [("name", .string(name)), ("match", match.dump)]
        switch action {
        case .forward(let a):
            if a.clusters.count == 1 && a.clusters[0].weight == 1 {
                f.append(("cluster", .string(a.clusters[0].name)))
            } else {
                f.append(("weighted_clusters", .array(a.clusters.map { .object([("name", .string($0.name)), ("weight", .int(Int64($0.weight)))]) })))
            }
            if let p = a.prefixRewrite { f.append(("prefix_rewrite", .string(String(decoding: p, as: UTF8.self)))) }
            if let r = a.regexRewrite {
                f.append(("regex_rewrite", .object([("pattern", .string(r.regex.pattern)), ("substitution", .string(r.text))])))
            }
            switch a.hostRewrite {
            case .none: break
            case .literal(let h): f.append(("host_rewrite_literal", .string(h)))
            case .auto: f.append(("auto_host_rewrite", .bool(true)))
            }
            f.append(("timeout", .string(formatDuration(a.timeoutMs))))
            if case .connect = match.path { f.append(("connect_mode", .string(a.forwardConnect ? "forward" : "terminate"))) }
            if let i = a.idleTimeoutMs { f.append(("idle_timeout", .string(formatDuration(i)))) }
            if let g = a.maxGrpcTimeoutMs { f.append(("max_grpc_timeout", .string(formatDuration(g)))) }
            if let r = a.retryPolicy { f.append(("retry_policy", r.dump)) }
            if !a.hashPolicy.isEmpty { f.append(("hash_policy", .array(a.hashPolicy.map(\.dump)))) }
        case .redirect(let r):
            var o: [(String, JSON)] = []
            if let s = r.scheme { o.append(("scheme_redirect", .string(s))) }
            if let s = r.host { o.append(("host_redirect", .string(s))) }
            if let p = r.port { o.append(("port_redirect", .int(Int64(p)))) }
            if let s = r.path { o.append(("path_redirect", .string(s))) }
            if let s = r.prefixRewrite { o.append(("prefix_rewrite", .string(s))) }
            o.append(("response_code", .int(Int64(r.responseCode))))
            if r.stripQuery { o.append(("strip_query", .bool(true))) }
            f.append(("redirect", .object(o)))
        case .directResponse(let status, let body):
            f.append(("direct_response", .object([("status", .int(Int64(status))), ("body", .string(body))])))
        }
        requestHeaders.dump(side: "request", into: &f)
        responseHeaders.dump(side: "response", into: &f)
        ownFilterOverrides.dump(into: &f)
        return .object(f)
    }
}

/// `host[:port]` or `[v6]:port` split; the port is nil when absent or not a number.
func splitHostPort(_ s: String) -> (String, Int?) {
    let b = Array(s.utf8)
    guard let colon = b.lastIndex(of: UInt8(ascii: ":")), !b[colon...].contains(UInt8(ascii: "]")) else { return (s, nil) }
    // A bare IPv6 address without brackets has several colons and no port.
    if b[..<colon].contains(UInt8(ascii: ":")) && b.first != UInt8(ascii: "[") { return (s, nil) }
    let host = String(decoding: b[..<colon], as: UTF8.self)
    return (host, Int(String(decoding: b[(colon + 1)...], as: UTF8.self)))
}

func defaultPort(_ scheme: String) -> Int? {
    switch scheme {
    case "http": 80
    case "https": 443
    default: nil
    }
}

/// A virtual host: the domains it serves and its routes, in order.
struct VirtualHost: Sendable {
    let name: String
    /// Lowercase, as configured (`*`, `*.suffix`, `prefix.*`, exact).
    let domains: [String]
    let routes: [RouteEntry]
    let requestHeaders: HeaderMutation
    let responseHeaders: HeaderMutation
    let retryPolicy: RetryPolicy?
    var filterOverrides = FilterOverrides()
    /// `require_tls: all` (Envoy's): a request that did not come over TLS (its
    /// `x-forwarded-proto` is not https) gets a 301 to the same URL with https.
    var requireTls = false

    var dump: JSON {
        var f: [(String, JSON)] = [("name", .string(name)), ("domains", .array(domains.map { .string($0) }))]
        if requireTls { f.append(("require_tls", .string("all"))) }
        requestHeaders.dump(side: "request", into: &f)
        responseHeaders.dump(side: "response", into: &f)
        filterOverrides.dump(into: &f)
        if let r = retryPolicy { f.append(("retry_policy", r.dump)) }
        f.append(("routes", .array(routes.map(\.dump))))
        return .object(f)
    }
}

/// The compiled route table of one listener for one config generation: immutable, Sendable,
/// built on the main thread when the config loads, read by every worker.
///
/// `route(_:)` picks the virtual host by `:authority` (Envoy's precedence: an exact domain,
/// then the longest `*.suffix`/`*suffix` wildcard, then the longest `prefix.*`, then `*`;
/// a domain without a port matches the host with its port stripped), then returns its first
/// route that matches. Matching reads the header bytes in place: no String is made unless a
/// route has a regex or query matchers, and even those read bytes.
final class RouteTable: Sendable {
    let virtualHosts: [VirtualHost]
    /// Every cluster the routes name, each once; `RouteCluster.index` points here.
    let clusterNames: [String]
    /// Exact domains by FNV-1a hash of the lowercase bytes (collisions compare bytes).
    private let exact: [UInt64: [(domain: [UInt8], vhost: Int)]]
    /// `*.example.com` / `*-bar.example.com` as the part after `*`, longest first.
    private let suffixes: [(suffix: [UInt8], vhost: Int)]
    /// `www.example.*` as the part before `*`, longest first.
    private let prefixes: [(prefix: [UInt8], vhost: Int)]
    private let catchAll: Int?
    /// Some virtual host or route has `typed_per_filter_config`: streams then resolve their
    /// route before installing filters.
    let hasFilterOverrides: Bool

    /// Builds the domain index. Duplicate domains are refused by the parser before this.
    init(virtualHosts: [VirtualHost], clusterNames: [String]) {
        self.virtualHosts = virtualHosts
        self.clusterNames = clusterNames
        var exact: [UInt64: [(domain: [UInt8], vhost: Int)]] = [:]
        var suffixes: [(suffix: [UInt8], vhost: Int)] = []
        var prefixes: [(prefix: [UInt8], vhost: Int)] = []
        var catchAll: Int?
        for (i, vh) in virtualHosts.enumerated() {
            for d in vh.domains {
                let b = Array(d.utf8)
                if d == "*" { catchAll = i }
                else if b.first == UInt8(ascii: "*") { suffixes.append((Array(b.dropFirst()), i)) }
                else if b.last == UInt8(ascii: "*") { prefixes.append((Array(b.dropLast()), i)) }
                else { exact[b.withUnsafeBytes { RouteTable.hash($0) }, default: []].append((b, i)) }
            }
        }
        // Stable sorts: equal lengths keep config order.
        self.suffixes = suffixes.enumerated().sorted { ($0.element.suffix.count, -$0.offset) > ($1.element.suffix.count, -$1.offset) }.map(\.element)
        self.prefixes = prefixes.enumerated().sorted { ($0.element.prefix.count, -$0.offset) > ($1.element.prefix.count, -$1.offset) }.map(\.element)
        self.exact = exact
        self.catchAll = catchAll
        hasFilterOverrides = virtualHosts.contains { vh in vh.routes.contains { !$0.filterOverrides.isEmpty } }
        anyRequiresTls = virtualHosts.contains { $0.requireTls }
    }

    /// Some virtual host has `require_tls` (the router then checks it per request).
    let anyRequiresTls: Bool

    /// The https URL to send a plain-text request of a `require_tls` virtual host to, or nil
    /// when it needs none: Envoy's rule, `https://` + the request's authority + path.
    func tlsRedirect(_ h: HeaderMap) -> String? {
        guard anyRequiresTls, let vh = virtualHostIndex(h), virtualHosts[vh].requireTls else { return nil }
        if let i = h.first(.xForwardedProto), h.valueEqualsIgnoringCase(i, "https") { return nil }
        return "https://" + (h.value(.authority) ?? "") + (h.value(.path) ?? "/")
    }

    /// The route for a request, or nil (no virtual host or no route matches: a 404, `NR`).
    func route(_ h: HeaderMap) -> RouteEntry? {
        guard let vh = virtualHostIndex(h) else { return nil }
        let routes = virtualHosts[vh].routes
        let isConnect = h.first(.method).map { h.withValue($0) { equalsLiteral($0, "CONNECT") } } ?? false
        return withPathAndQuery(h) { p, q in
            for r in routes where r.match.matches(h, path: p, query: q, isConnect: isConnect) { return r }
            return nil
        }
    }

    /// The virtual host for the request's `:authority` (HTTP/1.1's Host).
    func virtualHostIndex(_ h: HeaderMap) -> Int? {
        guard let ai = h.first(.authority) ?? h.first(.host) else { return catchAll }
        return h.withValue(ai) { virtualHostIndex(authority: $0) }
    }

    func virtualHostIndex(authority a: UnsafeRawBufferPointer) -> Int? {
        let stripped = RouteTable.hostWithoutPort(a)
        if let v = findExact(a) { return v }
        if stripped.count != a.count, let v = findExact(stripped) { return v }
        for (s, v) in suffixes {
            // The wildcard stands for at least one character.
            if stripped.count > s.count && bytesEqual(stripped, at: stripped.count - s.count, s, ignoreCase: true) { return v }
        }
        for (p, v) in prefixes {
            if stripped.count > p.count && bytesEqual(stripped, at: 0, p, ignoreCase: true) { return v }
        }
        return catchAll
    }

    private func findExact(_ a: UnsafeRawBufferPointer) -> Int? {
        guard !exact.isEmpty, let list = exact[RouteTable.hash(a)] else { return nil }
        for (d, v) in list where d.count == a.count && bytesEqual(a, at: 0, d, ignoreCase: true) { return v }
        return nil
    }

    /// `a` without a trailing `:port` (an IPv6 literal keeps its brackets).
    static func hostWithoutPort(_ a: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var i = a.count - 1
        while i >= 0 && a[i] >= UInt8(ascii: "0") && a[i] <= UInt8(ascii: "9") { i -= 1 }
        guard i >= 0, i < a.count - 1, a[i] == UInt8(ascii: ":") else { return a }
        // "::1" or "[::1]" without a port: the colon is the address's.
        if a[0] == UInt8(ascii: "[") ? (i == 0 || a[i - 1] != UInt8(ascii: "]")) : a[0..<i].contains(UInt8(ascii: ":")) { return a }
        return UnsafeRawBufferPointer(rebasing: a[0..<i])
    }

    /// FNV-1a of the lowercase bytes.
    static func hash(_ a: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in a { h = (h ^ UInt64(asciiLower(b))) &* 0x100_0000_01b3 }
        return h
    }

    var dump: JSON { .array(virtualHosts.map(\.dump)) }
}
