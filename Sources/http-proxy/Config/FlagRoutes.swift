import Common

/// The `http` block and extra clusters of the flag-only form:
/// `http-proxy --listen :8080 --upstream a:80,b:80 --route /api/=c:80,d:80 --route /static/=e:80`.
/// Each `--route PREFIX=LIST` (repeatable, tried in the order given) sends paths starting with
/// PREFIX to a cluster `route_<i>` of LIST (`host:port[=weight]`, as `--upstream`; `--lb`
/// applies to every cluster). `--upstream` is the catch-all (`prefix: /`); without it a path
/// no `--route` covers gets a 404.
struct FlagRoutes {
    /// `(cluster name, endpoint list)` for `ProxyBinary.flagClusters`.
    let clusters: [(name: String, endpoints: String)]
    /// `(prefix, cluster name)` in order.
    let routes: [(prefix: String, cluster: String)]

    /// The `http` block: the routes, then `/` to `defaultCluster` (`--upstream`'s) when given.
    /// `timeout` and `retries` (from `--timeout`, `--retries`) apply to every route.
    func block(defaultCluster: String?, timeout: String? = nil, retries: Int? = nil) -> [(String, JSON)] {
        func entry(_ prefix: String, _ cluster: String) -> JSON {
            var r: [(String, JSON)] = [("match", .object([("prefix", .string(prefix))])), ("cluster", .string(cluster))]
            if let timeout { r.append(("timeout", .string(timeout))) }
            if let retries, retries > 0 {
                r.append(("retry_policy", .object([("retry_on", .string("5xx,reset,connect-failure")),
                                                   ("num_retries", .int(Int64(retries)))])))
            }
            return .object(r)
        }
        var list = routes.map { entry($0.prefix, $0.cluster) }
        if let d = defaultCluster { list.append(entry("/", d)) }
        return [("routes", .array(list))]
    }
}

/// Parses the `--route PREFIX=UPSTREAMLIST` flags (see `FlagRoutes`). Errors name the flag.
func flagRoutes(routeFlags: [String]) throws(ConfigError) -> FlagRoutes {
    var clusters: [(name: String, endpoints: String)] = []
    var routes: [(prefix: String, cluster: String)] = []
    for (i, flag) in routeFlags.enumerated() {
        guard let eq = flag.firstIndex(of: "=") else {
            throw ConfigError("--route", "\"\(flag)\": give PREFIX=UPSTREAMLIST, e.g. /api/=10.0.0.5:80,10.0.0.6:80")
        }
        let prefix = String(flag[..<eq]), list = String(flag[flag.index(after: eq)...])
        guard prefix.hasPrefix("/"), isValidHeaderValue(prefix), !prefix.contains(" ") else {
            throw ConfigError("--route", "\"\(flag)\": the prefix starts with /")
        }
        guard !list.isEmpty else { throw ConfigError("--route", "\"\(flag)\": no upstreams after =") }
        if routes.contains(where: { $0.prefix == prefix }) { throw ConfigError("--route", "\"\(prefix)\" is given twice") }
        let name = "route_\(i)"
        clusters.append((name, list))
        routes.append((prefix, name))
    }
    return FlagRoutes(clusters: clusters, routes: routes)
}
