import Common
import RedisProtocol

/// redis-proxy's counters for one listener block (Envoy's names under `redis.<prefix>.`).
final class RedisProxyStats: Sendable {
    let downstreamCxTotal: Counter
    let downstreamCxActive: Gauge
    let downstreamCxProtocolError: Counter
    let downstreamRqTotal: Counter
    let downstreamRqActive: Gauge
    let downstreamRqSuccess: Counter
    let downstreamRqError: Counter
    let downstreamRqUnsupported: Counter
    let downstreamRqUnknown: Counter
    let downstreamRqNoUpstream: Counter
    let downstreamRqCrossSlot: Counter
    let downstreamAuthFailed: Counter
    let downstreamRqTime: Histogram
    let upstreamCxTotal: Counter
    let upstreamCxConnectFail: Counter
    let upstreamRqTimeout: Counter
    let upstreamProtocolError: Counter
    let upstreamAuthFailed: Counter
    let upstreamEjected: Counter
    /// Copies sent to mirror clusters, and copies that found no live shard.
    let mirrorTotal: Counter
    let mirrorFailed: Counter
    let mirrorError: Counter
    /// Request parse errors by kind (`downstream_cx_protocol_error.<reason>`).
    let protocolErrors: [String: Counter]
    /// For the per-command stats, registered on a command's first use.
    let store: StatsStore
    let prefix: String

    init(store: StatsStore, prefix: String) {
        let p = "redis.\(prefix)."
        self.store = store
        self.prefix = p
        downstreamCxTotal = store.counter(p + "downstream_cx_total")
        downstreamCxActive = store.gauge(p + "downstream_cx_active")
        downstreamCxProtocolError = store.counter(p + "downstream_cx_protocol_error")
        downstreamRqTotal = store.counter(p + "downstream_rq_total")
        downstreamRqActive = store.gauge(p + "downstream_rq_active")
        downstreamRqSuccess = store.counter(p + "downstream_rq_success")
        downstreamRqError = store.counter(p + "downstream_rq_error")
        downstreamRqUnsupported = store.counter(p + "downstream_rq_unsupported_command")
        downstreamRqUnknown = store.counter(p + "downstream_rq_unknown_command")
        downstreamRqNoUpstream = store.counter(p + "downstream_rq_no_upstream")
        downstreamRqCrossSlot = store.counter(p + "downstream_rq_cross_slot")
        downstreamAuthFailed = store.counter(p + "downstream_auth_failed")
        downstreamRqTime = store.histogram(p + "downstream_rq_time")
        upstreamCxTotal = store.counter(p + "upstream_cx_total")
        upstreamCxConnectFail = store.counter(p + "upstream_cx_connect_fail")
        upstreamRqTimeout = store.counter(p + "upstream_rq_timeout")
        upstreamProtocolError = store.counter(p + "upstream_cx_protocol_error")
        upstreamAuthFailed = store.counter(p + "upstream_auth_failed")
        upstreamEjected = store.counter(p + "upstream_host_ejected")
        mirrorTotal = store.counter(p + "mirror_rq_total")
        mirrorFailed = store.counter(p + "mirror_rq_no_upstream")
        mirrorError = store.counter(p + "mirror_rq_error")
        var pe: [String: Counter] = [:]
        for e: RespRequestError in [.invalidMultibulkLength, .tooBigMultibulkCount, .tooBigBulkCount, .expectedDollar(0), .invalidBulkLength,
                                    .unauthenticatedMultibulkLength, .unauthenticatedBulkLength, .tooBigInlineRequest, .unbalancedQuotes,
                                    .missingCRLF, .requestTooLarge] {
            pe[e.statName] = store.counter(p + "downstream_cx_protocol_error." + e.statName)
        }
        protocolErrors = pe
    }
}

/// Builds redis sessions for one listener in one config generation.
final class RedisProxyFactory: FilterFactory {
    let config: RedisProxyConfig
    let stats: RedisProxyStats
    /// Every cluster the block names (catch-all, prefix routes, mirrors) → its slot.
    let clusterSlots: [String: Int]
    let listenerName: String

    init(listener: ListenerConfig, block: any ListenerFilterConfig, clusters: [String: ClusterSnapshot], store: StatsStore) {
        guard let c = block as? RedisProxyConfig else { preconditionFailure("redis-proxy listener without a redis block") }
        config = c
        stats = RedisProxyStats(store: store, prefix: c.statPrefix)
        listenerName = listener.name
        var slots: [String: Int] = [:]
        for ref in c.clusterReferences { slots[ref.name] = clusters[ref.name]?.slot ?? Int.max }
        clusterSlots = slots
    }

    /// Shard connections to `cluster` are shared by listener blocks with the same upstream
    /// auth and distribution, and survive reloads that keep them.
    ///
    /// Every setting a shard set reads is in the key, and so is the listener: two listeners on
    /// one cluster get sets of their own (a hash tag of one must never place the other's
    /// keys; review of issue 10), each with its own stats.
    func upstreamKey(_ cluster: String) -> String {
        let c = config
        let tag = c.hashTag.map { String(decoding: [$0.open, $0.close], as: UTF8.self) } ?? ""
        return [listenerName, c.statPrefix, cluster, c.upstreamAuthUsername ?? "", c.upstreamAuthPassword ?? "", String(c.serverConnections),
                c.hash.rawValue, c.distribution.rawValue, String(c.autoEjectHosts), tag, String(c.serverFailureLimit),
                String(c.serverRetryTimeoutMs), String(c.preconnect)].joined(separator: "\u{0}")
    }

    func createFilters(worker: Worker, connection: Connection, context: DownstreamContext) {
        let state = RedisWorkerState.of(worker)
        let s = RedisSession(factory: self, router: state.router(worker, self), commandStats: state.commandStats(stats),
                             worker: worker, connection: connection, context: context)
        connection.readFilters = [s]
        connection.callbacks = s
        worker.track(s)
        worker.stats.inc(stats.downstreamCxTotal)
        worker.stats.inc(stats.downstreamCxActive)
        if !connection.readBuffer.isEmpty || connection.readEOF { _ = s.onData(connection.readBuffer, endStream: connection.readEOF) }
    }
}

/// Envoy's per-command stats, `redis.<prefix>.command.<name>.{total,success,error,latency}`
/// (a subcommand is `<command>_<subcommand>`, as `client_setname`).
struct CommandStats {
    let total: Counter, success: Counter, error: Counter
    let latency: Histogram
}

/// One worker's per-command stats of one stat prefix: registered in the store (a lock) on a
/// command's first use on this worker, then an array lookup.
final class CommandStatsCache {
    let stats: RedisProxyStats
    private var table: [CommandStats?]

    init(_ stats: RedisProxyStats) {
        self.stats = stats
        table = Array(repeating: nil, count: RedisCommands.all.count)
    }

    func get(_ id: RedisCommandID) -> CommandStats {
        let i = Int(id.index)
        if i < table.count, let c = table[i] { return c }
        let p = stats.prefix + "command." + id.name.replacingOccurrences(of: "|", with: "_") + "."
        let c = CommandStats(total: stats.store.counter(p + "total"), success: stats.store.counter(p + "success"),
                             error: stats.store.counter(p + "error"), latency: stats.store.histogram(p + "latency"))
        if i < table.count { table[i] = c }
        return c
    }
}
