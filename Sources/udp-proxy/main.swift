import ArgumentParser
import Common

/// udp-proxy: a datagram relay with per-client sessions (docs/udp-proxy.md).
struct UdpProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "udp-proxy",
        abstract: "UDP proxy: per-client sessions, load balancing, idle timeouts, responses-per-session (DNS).",
        version: toolkitVersion)

    @OptionGroup var common: CommonOptions

    @Option(help: "With --listen: end a session after this many replies (1 for DNS; default 0 = no limit).")
    var responses: Int?
    @Option(help: "With --listen: end sessions idle this long (default 60s).")
    var idleTimeout: String?
    @Flag(help: "With --listen: balance every datagram on its own (Envoy's use_per_packet_load_balancing).")
    var perPacket = false

    func run() throws {
        if common.config != nil && (responses != nil || idleTimeout != nil || perPacket) {
            throw ValidationError("--responses, --idle-timeout and --per-packet go with --listen; with --config set them in the file")
        }
        let responses = responses, idle = idleTimeout, perPacket = perPacket
        let counts = SessionCounts()
        let binary = ProxyBinary(
            blockParser: UdpProxyConfig.blockParser,
            flagBlock: { cluster in
                var b: [(String, JSON)] = [("cluster", .string(cluster))]
                if let responses { b.append(("responses", .int(Int64(responses)))) }
                if let idle { b.append(("idle_timeout", .string(idle))) }
                if perPacket { b.append(("use_per_packet_load_balancing", .bool(true))) }
                return b
            },
            makeFactory: { l, block, clusters, store in
                UdpProxyFactory(block: block, store: store, sessions: counts.count(for: l.name), clusters: clusters)
            })
        Server.main(options: common, binary: binary)
    }
}

UdpProxyCommand.main()
