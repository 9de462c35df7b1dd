import ArgumentParser
import Common

/// tcp-proxy: an L4 relay (docs/tcp-proxy.md).
struct TcpProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tcp-proxy",
        abstract: "L4 TCP proxy: load balancing, connect retries, PROXY protocol, idle timeouts.",
        version: toolkitVersion)

    @OptionGroup var common: CommonOptions

    @Option(help: "With --listen: close connections idle this long (default 1h, 0 = never).")
    var idleTimeout: String?
    @Option(help: "With --listen: connect attempts per connection, each on another host (default 1).")
    var maxConnectAttempts: Int?
    @Option(help: "With --listen: expect a PROXY protocol header from clients: accept or optional.")
    var proxyProtocol: String?
    @Option(help: "With --listen: send a PROXY protocol header upstream: v1 or v2.")
    var sendProxyProtocol: String?
    @OptionGroup var tls: TlsListenerOptions

    func run() throws {
        if common.config != nil && (idleTimeout != nil || maxConnectAttempts != nil || proxyProtocol != nil || sendProxyProtocol != nil
                                    || tls.isSet) {
            throw ValidationError("--idle-timeout, --max-connect-attempts, --proxy-protocol, --send-proxy-protocol and --tls-cert/--tls-key go with --listen; with --config set them in the file")
        }
        var listenerFlags: [(String, JSON)] = proxyProtocol.map { [("proxy_protocol", JSON.string($0))] } ?? []
        listenerFlags += try tls.listenerFlags()
        let idle = idleTimeout, attempts = maxConnectAttempts
        let binary = ProxyBinary(
            blockParser: TcpProxyConfig.blockParser,
            flagBlock: { cluster in
                var b: [(String, JSON)] = [("cluster", .string(cluster))]
                if let idle { b.append(("idle_timeout", .string(idle))) }
                if let attempts { b.append(("max_connect_attempts", .int(Int64(attempts)))) }
                return b
            },
            listenerFlags: listenerFlags,
            clusterFlags: sendProxyProtocol.map { [("send_proxy_protocol", JSON.string($0))] } ?? [],
            makeFactory: { TcpProxyFactory(block: $1, clusters: $2, store: $3) })
        Server.main(options: common, binary: binary)
    }
}

TcpProxyCommand.main()
