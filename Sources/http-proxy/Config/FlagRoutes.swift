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
    func block(defaultCluster: String?) -> [(String, JSON)] {
        var list = routes.map { r in
            JSON.object([("match", .object([("prefix", .string(r.prefix))])), ("cluster", .string(r.cluster))])
        }
        if let d = defaultCluster {
            list.append(.object([("match", .object([("prefix", .string("/"))])), ("cluster", .string(d))]))
        }
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
