import ArgumentParser
import Common

/// redis-proxy: a sharding Redis proxy (docs/redis-proxy.md).
struct RedisProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redis-proxy",
        abstract: "Sharding Redis proxy: pipelining, key hashing (twemproxy-compatible), split multi-key commands.",
        version: toolkitVersion)

    @OptionGroup var common: CommonOptions

    @Option(help: "Read twemproxy's nutcracker.yml instead of --config: each pool becomes a listener and a cluster, keys placed as nutcracker places them.")
    var twemproxy: String?
    @Option(help: "With --listen: twemproxy's key hash (default fnv1a_64).")
    var hash: String?
    @Option(help: "With --listen: ketama (default), modula, random or maglev.")
    var distribution: String?
    @Option(help: "With --listen: hash only the part of a key between these two characters, e.g. {}.")
    var hashTag: String?
    @Option(help: "With --listen: a request without its reply after this long gets an error (default 10s, 0 = none).")
    var opTimeout: String?

    func run() throws {
        if common.config != nil && (hash != nil || distribution != nil || hashTag != nil || opTimeout != nil) {
            throw ValidationError("--hash, --distribution, --hash-tag and --op-timeout go with --listen; with --config set them in the file")
        }
        if let t = twemproxy, common.config != nil || common.listen != nil || common.upstream != nil {
            throw ValidationError("--twemproxy \(t) replaces --config and --listen/--upstream; give one of them")
        }
        let (hash, distribution, hashTag, opTimeout) = (self.hash, self.distribution, self.hashTag, self.opTimeout)
        var binary = ProxyBinary(
            blockParser: RedisProxyConfig.blockParser,
            flagBlock: { cluster in
                var f: [(String, JSON)] = [("cluster", .string(cluster))]
                if let hash { f.append(("hash", .string(hash))) }
                if let distribution { f.append(("distribution", .string(distribution))) }
                if let hashTag { f.append(("hash_tag", .string(hashTag))) }
                if let opTimeout { f.append(("op_timeout", .string(opTimeout))) }
                return f
            },
            makeFactory: { RedisProxyFactory(listener: $0, block: $1, clusters: $2, store: $3) })
        binary.adminPages = [ShardsPage.page]
        if let path = twemproxy {
            binary.configFromFlags = { try TwemproxyConfig.translate(path: path) }
            binary.reloadsConfigFromFlags = true
        }
        Server.main(options: common, binary: binary)
    }
}

RedisProxyCommand.main()
