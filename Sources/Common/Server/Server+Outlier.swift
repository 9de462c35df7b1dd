import CLibevent
import CShim
import Glibc
import Logging

/// Outlier detection (main thread): failure streaks reported by workers become ejections
/// with back-off and a cap; health events as JSON lines.
extension Server {
    /// Gives every current endpoint a streak counter; forgets hosts that left (and their ejections).
    func syncOutlierCounters(_ rt: ClusterRuntime) {
        guard let od = rt.config.outlierDetection else { return }
        let name = rt.config.name
        let me = MainThreadRef(self)
        let main = dispatcher.handle
        let live = Set(rt.endpoints.map(\.address))
        for a in rt.outlierCounters.keys where !live.contains(a) { rt.outlierCounters.removeValue(forKey: a) }
        for a in rt.ejected.keys where !live.contains(a) {
            rt.ejected.removeValue(forKey: a)?.cancel()
            if let st = rt.outlierStats { store.mainSlab.dec(st.ejectionsActive) }
        }
        for e in rt.endpoints where rt.outlierCounters[e.address] == nil {
            let address = e.address
            rt.outlierCounters[address] = OutlierCounter(threshold: od.consecutiveFailures) {
                main.post { me.object.eject(cluster: name, address: address) }
            }
        }
    }

    /// A host reached its failure streak: eject it, unless too many hosts are out already.
    func eject(cluster: String, address: SocketAddress) {
        guard let rt = clusterRuntimes[cluster], let od = rt.config.outlierDetection, let st = rt.outlierStats,
              rt.ejected[address] == nil, let counter = rt.outlierCounters[address] else { return }
        let cap = max(1, rt.endpoints.count * od.maxEjectionPercent / 100)
        if rt.ejected.count >= cap {
            store.mainSlab.inc(st.ejectionsOverflow)
            counter.reset()
            return
        }
        let times = (rt.ejectionCounts[address] ?? 0) + 1
        rt.ejectionCounts[address] = times
        let duration = min(od.baseEjectionMs * UInt64(times), od.maxEjectionMs)
        let timer = Timer(dispatcher) { [unowned self] in uneject(cluster: cluster, address: address, cause: "ejection time over") }
        timer.arm(ms: duration)
        rt.ejected[address] = timer
        store.mainSlab.inc(st.ejectionsTotal)
        store.mainSlab.inc(st.ejectionsEnforcedConsecutiveFailure)
        store.mainSlab.inc(st.ejectionsActive)
        logHealthEvent(cluster: cluster, address: address, from: "healthy", to: "ejected",
                       cause: "outlier: \(od.consecutiveFailures) consecutive failures, ejected for \(formatDuration(duration))")
        publishClusters(cluster)
    }

    func uneject(cluster: String, address: SocketAddress, cause: String) {
        guard let rt = clusterRuntimes[cluster], let timer = rt.ejected.removeValue(forKey: address) else { return }
        timer.cancel()
        rt.outlierCounters[address]?.reset()
        if let st = rt.outlierStats { store.mainSlab.dec(st.ejectionsActive) }
        logHealthEvent(cluster: cluster, address: address, from: "ejected", to: "healthy", cause: cause)
        publishClusters(cluster)
    }

    /// An active check passed: an ejected host comes back at once (Envoy's default).
    func activeCheckPassed(cluster: String, address: SocketAddress) {
        if clusterRuntimes[cluster]?.ejected[address] != nil {
            uneject(cluster: cluster, address: address, cause: "active health check passed")
        }
    }

    func logHealthEvent(cluster: String, address: SocketAddress, from: String, to: String, cause: String) {
        var line = JSON.object([
            ("time", .string(iso8601(wallMs()))), ("cluster", .string(cluster)), ("host", .string(address.description)),
            ("from", .string(from)), ("to", .string(to)), ("cause", .string(cause)),
        ]).serialized() + "\n"
        line.withUTF8 { _ = Glibc.write(healthLogFd, $0.baseAddress, $0.count) }
    }
}
