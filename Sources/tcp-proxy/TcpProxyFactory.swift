import Common

/// Builds tcp_proxy sessions for one listener in one config generation: the parsed block, its
/// stat handles and the clusters it may pick, resolved once on the main thread.
final class TcpProxyFactory: FilterFactory {
    let config: TcpProxyConfig
    let stats: TcpProxyStats
    /// The clusters' slots in each worker's cluster table (`Worker.cluster(slot:)`), resolved
    /// here once, with cumulative weights for `weighted_clusters`.
    let clusterSlots: [Int]
    let cumulativeWeights: [Int]

    init(block: any ListenerFilterConfig, clusters: [String: ClusterSnapshot], store: StatsStore) {
        guard let c = block as? TcpProxyConfig else {
            preconditionFailure("tcp-proxy listener without a tcp block")
        }
        config = c
        stats = TcpProxyStats(store: store, prefix: c.statPrefix)
        // Validation made every named cluster exist; a missing one gets a slot no worker has (NR).
        clusterSlots = c.clusters.map { clusters[$0.name]?.slot ?? Int.max }
        var acc = 0
        cumulativeWeights = c.clusters.map { acc += $0.weight; return acc }
    }

    func createFilters(worker: Worker, connection: Connection, context: DownstreamContext) {
        let session = TcpProxySession(factory: self, worker: worker, downstream: connection, context: context)
        connection.readFilters = [session]
        connection.callbacks = session
        worker.track(session)
        worker.stats.inc(stats.downstreamCxTotal)
        _ = session.onNewConnection()
    }

    /// Picks a cluster by weight (one cluster: no random draw); returns its slot.
    func pickCluster(_ rng: inout FastRandom) -> Int {
        if clusterSlots.count == 1 { return clusterSlots[0] }
        let r = rng.below(cumulativeWeights.last!)
        return clusterSlots[cumulativeWeights.firstIndex { $0 > r }!]
    }
}
