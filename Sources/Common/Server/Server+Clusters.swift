import CLibevent
import CShim
import Glibc
import Logging

/// The cluster manager (main thread): live endpoints from config, files and DNS; health
/// monitors; host stats kept across snapshots; the snapshots posted to workers.
extension Server {
    /// Builds a generation from a config (stats handles, cluster tables, filter factories).
    func buildSnapshot(_ config: ProxyConfig, generation: Int) -> ServerSnapshot {
        syncClusters(config)
        let clusters = clusterSnapshots()
        var listeners: [String: ListenerRuntime] = [:]
        for l in config.listeners {
            let count = listenerCounts[l.name] ?? SharedCount()
            listenerCounts[l.name] = count
            listeners[l.name] = ListenerRuntime(config: l, stats: ListenerStats(store: store, listener: l.name),
                                                openConnections: count,
                                                factories: l.chains.map { binary.makeFactory(l, $0.filter, clusters, store) })
        }
        return ServerSnapshot(generation: generation, config: config, listeners: listeners, clusters: clusters)
    }

    /// Makes `clusterRuntimes` match `config`: endpoints, health monitors (keeping each known
    /// host's rise/fall state), file watchers.
    func syncClusters(_ config: ProxyConfig) {
        var next: [String: ClusterRuntime] = [:]
        for c in config.clusters {
            let old = clusterRuntimes[c.name]
            var initial = c.endpoints
            // A reload keeps the addresses DNS gave so far until the next answer.
            let dnsKind = c.discovery == "strict_dns" || c.discovery == "logical_dns"
            if dnsKind, let old, old.config.discovery == c.discovery { initial = old.endpoints }
            let rt = ClusterRuntime(config: c, endpoints: initial, stats: ClusterDiscoveryStats(store: store, cluster: c.name))
            if let old { rt.hostStats = old.hostStats }
            syncHostStats(rt)
            if let hc = c.healthCheck {
                let name = c.name
                let m = ClusterHealthMonitor(cluster: name, config: hc, dispatcher: dispatcher, store: store) { [unowned self] a, up, r in
                    healthChanged(cluster: name, address: a, healthy: up, result: r)
                }
                m.onPass = { [unowned self] a in activeCheckPassed(cluster: name, address: a) }
                m.setHosts(c.endpoints.map(\.address), previous: old?.monitor)
                rt.monitor = m
            }
            if dnsKind {
                let name = c.name
                rt.dns = StrictDnsDiscovery(
                    dispatcher: dispatcher, targets: c.dnsTargets, resolvers: c.dnsResolvers, family: c.dnsLookupFamily,
                    refreshMs: c.dnsRefreshMs, respectTtl: c.respectDnsTtl, initial: initial,
                    logical: c.discovery == "logical_dns",
                    onUpdate: { [unowned self] eps in endpointsChanged(cluster: name, eps) },
                    onFailure: { [unowned self] why in
                        if let rt = clusterRuntimes[name] { store.mainSlab.inc(rt.stats.updateFailure) }
                        logger.warning("DNS lookup failed, keeping the last good addresses", metadata: ["cluster": "\(name)", "error": "\(why)"])
                    })
                if rt.dns == nil { logger.error("cluster \(name): cannot start DNS resolution") }
            }
            if c.discovery == "file", let path = c.path {
                let name = c.name
                rt.watcher = FileWatcher(path: path, dispatcher: dispatcher) { [unowned self] in endpointsFileChanged(cluster: name) }
                if rt.watcher == nil { logger.warning("cannot watch \(path); cluster \(name) will not see changes") }
            }
            if c.outlierDetection != nil {
                rt.outlierStats = OutlierStats(store: store, cluster: c.name)
                if let old, old.config.outlierDetection != nil {
                    // Keep streaks and running ejections across a reload.
                    rt.outlierCounters = old.outlierCounters
                    rt.ejected = old.ejected
                    rt.ejectionCounts = old.ejectionCounts
                }
                syncOutlierCounters(rt)
                let od = c.outlierDetection!
                rt.decayTimer = Timer(dispatcher) { [unowned rt] in
                    for (a, n) in rt.ejectionCounts where rt.ejected[a] == nil {
                        if n <= 1 { rt.ejectionCounts.removeValue(forKey: a) } else { rt.ejectionCounts[a] = n - 1 }
                    }
                    rt.decayTimer?.arm(ms: od.intervalMs)
                }
                rt.decayTimer?.arm(ms: od.intervalMs)
            }
            next[c.name] = rt
        }
        // Ejections of clusters that lost outlier detection (or went away) end here.
        for (name, old) in clusterRuntimes where next[name]?.config.outlierDetection == nil {
            for t in old.ejected.values {
                t.cancel()
                if let st = old.outlierStats { store.mainSlab.dec(st.ejectionsActive) }
            }
            old.ejected.removeAll()
        }
        clusterRuntimes = next
        for rt in next.values { writeEndpointsOut(rt) }
    }

    /// Gives every host of `rt.endpoints` its counters (kept ones stay) and forgets removed hosts'.
    func syncHostStats(_ rt: ClusterRuntime) {
        var next: [SocketAddress: HostStats] = [:]
        next.reserveCapacity(rt.endpoints.count)
        for e in rt.endpoints { next[e.address] = rt.hostStats[e.address] ?? HostStats(threads: store.slabs.count) }
        rt.hostStats = next
    }

    /// Snapshots of every cluster; with `only`, the others are reused as they are (a health
    /// flip rebuilds one cluster's tables, not all of them).
    func clusterSnapshots(only: String? = nil) -> [String: ClusterSnapshot] {
        var out: [String: ClusterSnapshot] = [:]
        for (name, rt) in clusterRuntimes {
            if let only, only != name, let keep = snapshot.clusters[name] { out[name] = keep; continue }
            let count = clusterCounts[name] ?? SharedCount()
            clusterCounts[name] = count
            let pending = pendingCounts[name] ?? SharedCount(), retries = retryCounts[name] ?? SharedCount()
            pendingCounts[name] = pending
            retryCounts[name] = retries
            let slot = clusterSlots[name] ?? clusterSlots.count
            clusterSlots[name] = slot
            let monitor = rt.monitor
            out[name] = ClusterSnapshot(config: rt.config, endpoints: rt.endpoints,
                                        healthy: { monitor?.isHealthy($0) ?? true },
                                        outlier: { (rt.outlierCounters[$0], rt.ejected[$0] != nil) },
                                        hostStats: { rt.hostStats[$0] ?? HostStats(threads: self.store.slabs.count) },
                                        store: store, openConnections: count, pending: pending, retries: retries, slot: slot)
        }
        return out
    }

    /// Sends workers the current cluster snapshots (same config generation).
    func publishClusters(_ changed: String) {
        let s = snapshot
        snapshot = ServerSnapshot(generation: s.generation, config: s.config, listeners: s.listeners, clusters: clusterSnapshots(only: changed))
        let snap = snapshot
        for h in workerHandles { h.post { $0.apply(snap) } }
    }

    func healthChanged(cluster: String, address: SocketAddress, healthy: Bool, result: CheckResult) {
        logHealthEvent(cluster: cluster, address: address, from: healthy ? "unhealthy" : "healthy",
                       to: healthy ? "healthy" : "unhealthy", cause: "\(result.code) \(result.detail)")
        publishClusters(cluster)
        if let rt = clusterRuntimes[cluster] { writeEndpointsOut(rt) }
    }

    /// New endpoints from discovery (file or DNS): checks, streaks and workers follow.
    func endpointsChanged(cluster: String, _ eps: [EndpointConfig]) {
        guard let rt = clusterRuntimes[cluster], eps != rt.endpoints else { return }
        if eps.count > rt.config.maxHosts {
            // A runaway file or DNS answer: keep serving the last good set.
            store.mainSlab.inc(rt.stats.updateFailure)
            store.mainSlab.inc(rt.stats.updateRejected)
            logger.error("endpoints update rejected, keeping the last good set", metadata: [
                "cluster": "\(cluster)", "error": "\(eps.count) endpoints, over max_hosts (\(rt.config.maxHosts))"])
            return
        }
        rt.endpoints = eps
        syncHostStats(rt)
        rt.monitor?.setHosts(eps.map(\.address))
        syncOutlierCounters(rt)
        store.mainSlab.inc(rt.stats.updateSuccess)
        // The first hosts only: a 100,000-host set must not make a megabyte log line.
        let shown = eps.prefix(10).map(\.address.description).joined(separator: ",") + (eps.count > 10 ? ",..." : "")
        logger.info("endpoints updated", metadata: ["cluster": "\(cluster)", "count": "\(eps.count)", "hosts": "\(shown)"])
        publishClusters(cluster)
        writeEndpointsOut(rt)
    }

    func endpointsFileChanged(cluster: String) {
        guard let rt = clusterRuntimes[cluster], let path = rt.config.path else { return }
        do {
            endpointsChanged(cluster: cluster, try EndpointsFile.load(path: path, keyPath: "clusters.\(cluster).path"))
        } catch {
            // Keep the last good set: a half-written or broken file never empties a cluster.
            store.mainSlab.inc(rt.stats.updateFailure)
            // A parser's message may quote the offending line: of a one-line 7 MB file, all of it.
            logger.error("endpoints file rejected, keeping the last good set: \(clipped(error.description, 300))")
        }
    }

    func writeEndpointsOut(_ rt: ClusterRuntime) {
        guard let path = rt.config.endpointsOut else { return }
        let eps = rt.endpoints.map { e -> (EndpointConfig, Bool, String) in
            let r = rt.monitor?.lastResult(e.address)
            let up = e.healthy && (rt.monitor?.isHealthy(e.address) ?? true)
            return (e, up, r.map { "\($0.code) \($0.detail)" } ?? "not checked yet")
        }
        let text = EndpointsFile.render(cluster: rt.config.name, endpoints: eps)
        if !writeFile(path, text) { logger.error("cannot write endpoints file \(path)") }
    }

    /// How many times in a row, less decay, a host was ejected (admin /clusters).
    func ejectionMultiplier(cluster: String, address: SocketAddress) -> Int? {
        guard let rt = clusterRuntimes[cluster], rt.config.outlierDetection != nil else { return nil }
        return rt.ejectionCounts[address] ?? 0
    }

    /// The last active check of a host (admin /clusters).
    func lastCheck(cluster: String, address: SocketAddress) -> CheckResult? {
        clusterRuntimes[cluster]?.monitor?.lastResult(address)
    }
}

/// Envoy's discovery stats, `cluster.<name>.update_*`.
struct ClusterDiscoveryStats: Sendable {
    let updateSuccess: Counter
    let updateFailure: Counter
    /// Updates refused for exceeding a limit (`max_hosts`); also counted in update_failure.
    let updateRejected: Counter
    init(store: StatsStore, cluster: String) {
        updateSuccess = store.counter("cluster.\(cluster).update_success")
        updateFailure = store.counter("cluster.\(cluster).update_failure")
        updateRejected = store.counter("cluster.\(cluster).update_rejected")
    }
}

/// A cluster's live state on the main thread.
final class ClusterRuntime {
    let config: ClusterConfig
    /// The current endpoints: the config's, or the endpoints file's last good read.
    var endpoints: [EndpointConfig]
    var monitor: ClusterHealthMonitor?
    var watcher: FileWatcher?
    var dns: StrictDnsDiscovery?
    let stats: ClusterDiscoveryStats
    /// Outlier detection: each host's streak, the hosts ejected now (with their un-eject
    /// timers), and how many times each host was ejected (the time multiplier).
    var outlierCounters: [SocketAddress: OutlierCounter] = [:]
    var ejected: [SocketAddress: Timer] = [:]
    var ejectionCounts: [SocketAddress: Int] = [:]
    var outlierStats: OutlierStats?
    /// Each host's counters, by address: kept while the host is in `endpoints` (across health
    /// flips and reloads), dropped when discovery removes it.
    var hostStats: [SocketAddress: HostStats] = [:]
    /// Lowers the ejection multipliers of hosts that stayed in, every outlier interval.
    var decayTimer: Timer?
    init(config: ClusterConfig, endpoints: [EndpointConfig], stats: ClusterDiscoveryStats) {
        self.config = config; self.endpoints = endpoints; self.stats = stats
    }
}

/// `s` cut to at most `max` characters, marked when cut (log lines from untrusted input).
func clipped(_ s: String, _ max: Int) -> String {
    s.count <= max ? s : String(s.prefix(max)) + "... (\(s.utf8.count) bytes)"
}
