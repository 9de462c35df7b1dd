import CLibevent
import CShim
import Glibc
import Logging

/// Bootstrap: the config from `--config` or from flags alone (`--listen`, `--upstream`, ...).
extension Server {
    /// Reads `--config`, or builds the config from `--listen`/`--upstream`, then applies the
    /// flags that override the file (`--workers`, `--admin`, `--drain-timeout`).
    public static func loadConfig(options: CommonOptions, binary: ProxyBinary) throws -> ProxyConfig {
        var cfg: ProxyConfig
        if let path = options.config {
            if options.listen != nil || options.upstream != nil || options.lb != nil {
                throw ConfigError("--config", "use either a config file or --listen/--upstream/--lb, not both")
            }
            guard let text = readFile(path) else { throw ConfigError("--config", "cannot read \"\(path)\"") }
            cfg = try ConfigLoader.load(yaml: text, parser: binary.blockParser)
        } else if let fromFlags = binary.configFromFlags {
            let doc = try fromFlags()
            do {
                cfg = try ConfigLoader.load(yaml: doc, parser: binary.blockParser)
            } catch {
                throw ConfigError(error.path, error.message + " (from flags)")
            }
        } else {
            guard let listen = options.listen else { throw ConfigError("--listen", "give --config FILE, or --listen ADDR with --upstream LIST") }
            let lists = (options.upstream.map { [("upstream", $0)] } ?? []) + binary.flagClusters
            guard !lists.isEmpty || binary.listenNeedsNoUpstream else { throw ConfigError("--upstream", "--listen needs --upstream LIST") }
            let clusters: [JSON] = lists.map { name, upstream in
                let eps: [JSON] = upstream.split(separator: ",").map { item in
                    let parts = item.split(separator: "=", maxSplits: 1)
                    if parts.count == 2 {
                        return .object([("address", .string(String(parts[0]))), ("weight", .string(String(parts[1])))])
                    }
                    return .string(String(item))
                }
                var cluster: [(String, JSON)] = [("name", .string(name)), ("endpoints", .array(eps))]
                if let lb = options.lb { cluster.append(("lb_policy", .string(lb))) }
                cluster += binary.clusterFlags
                return .object(cluster)
            }
            let listener: [(String, JSON)] = [("name", .string("main")), ("address", .string(listen)),
                                              (binary.blockParser.key, .object(binary.flagBlock("upstream")))] + binary.listenerFlags
            let doc = JSON.object([
                ("listeners", .array([.object(listener)])),
                ("clusters", .array(clusters)),
            ])
            do {
                cfg = try ConfigLoader.load(yaml: doc.serialized(), parser: binary.blockParser)
            } catch {
                throw ConfigError(error.path, error.message + " (from flags)")
            }
        }
        if let w = options.workers {
            guard (1...256).contains(w) else { throw ConfigError("--workers", "\(w) is out of range 1...256") }
            cfg.workers = w
        }
        if let a = options.admin {
            do { cfg.adminAddress = try SocketAddress.parse(a) } catch { throw ConfigError("--admin", error.description) }
        }
        if let d = options.drainTimeout {
            guard let ms = parseDurationMs(d) else { throw ConfigError("--drain-timeout", "\"\(d)\" is not a duration") }
            cfg.drainTimeoutMs = ms
        }
        return cfg
    }
}
