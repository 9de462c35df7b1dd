import ArgumentParser
import Common

/// http-proxy: an HTTP/1.1 and HTTP/2 reverse proxy (docs/http-proxy.md).
struct HttpProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http-proxy",
        abstract: "L7 HTTP reverse proxy: routing, retries, timeouts, keep-alive pools, access logs.",
        version: toolkitVersion)

    @OptionGroup var common: CommonOptions

    @Option(name: .long, help: "With --listen: send paths starting with PREFIX to these upstreams (PREFIX=host:port,...; repeatable, first match wins; --upstream takes the rest).")
    var route: [String] = []
    @OptionGroup var tls: TlsListenerOptions
    @Option(help: "With --listen: the upstream response timeout of every route (default 15s, 0 = none).")
    var timeout: String?
    @Option(help: "With --listen: retry a failed request this many times on another host (5xx, reset, connect failure).")
    var retries: Int?
    @Option(help: "With --listen: close pooled upstream connections unused this long (default 1h).")
    var upstreamIdleTimeout: String?
    @Flag(help: "With --listen: answer every plain-HTTP request with a 301 to the same URL over https (Envoy's require_tls: all).")
    var httpsRedirect = false
    @Option(help: "With --listen: what to speak to the upstreams: http1 (default), http2 (h2c, or h2 by ALPN over TLS) or auto (ALPN chooses per TLS connection).")
    var upstreamProtocol: String?

    func run() throws {
        if common.config != nil && (!route.isEmpty || tls.isSet || timeout != nil || retries != nil
                                    || upstreamIdleTimeout != nil || upstreamProtocol != nil || httpsRedirect) {
            throw ValidationError("--route, --tls-cert/--tls-key, --timeout, --retries, --upstream-idle-timeout, --upstream-protocol and --https-redirect go with --listen; with --config set them in the file")
        }
        if let p = upstreamProtocol, !["http1", "http2", "auto"].contains(p) {
            throw ValidationError("--upstream-protocol: give http1, http2 or auto, not \"\(p)\"")
        }
        var clusterOptions: [(String, JSON)] = []
        if let t = upstreamIdleTimeout { clusterOptions.append(("idle_timeout", .string(t))) }
        if let p = upstreamProtocol { clusterOptions.append(("protocol", .string(p))) }
        let routes: FlagRoutes
        do { routes = try flagRoutes(routeFlags: route) } catch { throw ValidationError(error.description) }
        let listenerFlags = try tls.listenerFlags()
        let hasUpstream = common.upstream != nil
        let timeout = self.timeout, retries = self.retries, httpsRedirect = self.httpsRedirect
        var binary = ProxyBinary(
            blockParser: HttpProxyConfig.blockParser,
            flagBlock: { cluster in
                httpsRedirect && !hasUpstream && routes.clusters.isEmpty
                    // Every request is redirected before routing; the route only completes the table.
                    ? [("routes", .array([.object([("match", .object([("prefix", .string("/"))])),
                                                   ("direct_response", .object([("status", .int(404))]))])])),
                       ("require_tls", .string("all"))]
                    : routes.block(defaultCluster: hasUpstream ? cluster : nil, timeout: timeout, retries: retries)
                        + (httpsRedirect ? [("require_tls", JSON.string("all"))] : [])
            },
            listenerFlags: listenerFlags,
            clusterFlags: clusterOptions.isEmpty ? [] : [("http_protocol_options", JSON.object(clusterOptions))],
            makeFactory: { HttpProxyFactory(listener: $0, block: $1, clusters: $2, store: $3) })
        binary.flagClusters = routes.clusters
        binary.listenNeedsNoUpstream = httpsRedirect
        Server.main(options: common, binary: binary)
    }
}

HttpProxyCommand.main()
