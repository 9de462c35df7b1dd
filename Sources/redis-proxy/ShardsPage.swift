import Common
import Synchronization

/// Which workers have ejected which shard, until when (`auto_eject_hosts`): each worker keeps
/// its own ejection state (no locks on the data path); it reports changes here, which are rare,
/// for the admin page.
final class ShardBoard: Sendable {
    static let shared = ShardBoard()
    /// "cluster NUL address" → worker index → ejected until (monotonic ms).
    private let ejected = Mutex<[String: [Int: UInt64]]>([:])

    func set(cluster: String, address: SocketAddress, worker: Int, ejectedUntilMs: UInt64) {
        ejected.withLock { $0["\(cluster)\u{0}\(address)", default: [:]][worker] = ejectedUntilMs == 0 ? nil : ejectedUntilMs }
    }

    /// How many workers have `address` ejected now, and the latest end of those ejections.
    func state(cluster: String, address: SocketAddress) -> (count: Int, untilMs: UInt64) {
        let now = monotonicMs()
        return ejected.withLock { m in
            var n = 0, until: UInt64 = 0
            for (_, u) in m["\(cluster)\u{0}\(address)"] ?? [:] where u > now { n += 1; until = max(until, u) }
            return (n, until)
        }
    }
}

/// `/redis/shards`: every redis listener's shards in distribution order of the config, with
/// health, ejection and request counts (`?format=json` for tools).
enum ShardsPage {
    static let page = AdminPage(path: "/redis/shards", help: "redis listeners' shards: state, ejection, requests (?format=json)") { snap, query in
        let json = query["format"] == "json"
        var text = ""
        var listeners: [JSON] = []
        for name in snap.listeners.keys.sorted() {
            guard let f = snap.listeners[name]?.factories.first as? RedisProxyFactory else { continue }
            let c = f.config
            text += "\(name)::cluster::\(c.cluster)\n\(name)::distribution::\(c.distribution.rawValue)\n\(name)::hash::\(c.hash.rawValue)\n"
            text += "\(name)::auto_eject_hosts::\(c.autoEjectHosts)\n"
            var shards: [JSON] = []
            // The catch-all cluster, then prefix routes' and mirrors' (each once).
            var names: [String] = []
            for ref in c.clusterReferences where !names.contains(ref.name) { names.append(ref.name) }
            for cluster in names {
            for (i, h) in (snap.clusters[cluster]?.hosts ?? []).enumerated() {
                let e = ShardBoard.shared.state(cluster: cluster, address: h.address)
                let now = monotonicMs()
                let state = e.count > 0 ? "ejected" : (h.healthy ? "up" : "unhealthy")
                let p = "\(name)::\(cluster)::\(i)::"
                text += p + "name::\(h.hashKey)\n" + p + "address::\(h.address)\n" + p + "weight::\(h.weight)\n" + p + "state::\(state)\n"
                if e.count > 0 { text += p + "ejected_workers::\(e.count)\n" + p + "ejected_for_ms::\(e.untilMs > now ? e.untilMs - now : 0)\n" }
                var stats: [(String, JSON)] = []
                for field in [HostStats.Field.cxActive, .cxTotal, .cxConnectFail, .rqActive, .rqTotal, .rqSuccess, .rqError, .rqTimeout] {
                    let v = h.stats.value(field)
                    text += p + "\(field.name)::\(v)\n"
                    stats.append((field.name, .int(v)))
                }
                shards.append(.object([("cluster", .string(cluster)), ("index", .int(Int64(i))), ("name", .string(h.hashKey)), ("address", .string(h.address.description)),
                                       ("weight", .int(Int64(h.weight))), ("state", .string(state)),
                                       ("ejected_workers", .int(Int64(e.count))),
                                       ("ejected_for_ms", .int(Int64(e.untilMs > now ? e.untilMs - now : 0))), ("stats", .object(stats))]))
            }
            }
            listeners.append(.object([("listener", .string(name)), ("cluster", .string(c.cluster)),
                                      ("distribution", .string(c.distribution.rawValue)), ("hash", .string(c.hash.rawValue)),
                                      ("auto_eject_hosts", .bool(c.autoEjectHosts)), ("shards", .array(shards))]))
        }
        if json { return (200, "application/json", JSON.object([("listeners", .array(listeners))]).serialized(pretty: true) + "\n") }
        return (200, "text/plain; charset=UTF-8", text)
    }
}
