import Common
import Synchronization

/// One set of gRPC call stats: `cluster.<name>.grpc.[<service>.<method>.]<stat>`.
struct GrpcCallStats: Sendable {
    let success: Counter
    let failure: Counter
    let total: Counter
    let requestMessages: Counter
    let responseMessages: Counter

    init(store: StatsStore, prefix p: String) {
        success = store.counter(p + "success")
        failure = store.counter(p + "failure")
        total = store.counter(p + "total")
        requestMessages = store.counter(p + "request_message_count")
        responseMessages = store.counter(p + "response_message_count")
    }
}

/// The stats of one `grpc_stats` filter, registered on first use (Envoy makes them as calls
/// arrive too): a config naming many methods and clusters costs stat slots only for the
/// pairs that see calls, and a reload that renames methods does not use up the store.
final class GrpcStatsTable: Sendable {
    let clusters: [String]
    /// `<service>.<method>` of each allowlisted method (index + 1 in `stats(cluster:method:)`).
    let names: [String]
    private let store: StatsStore
    private let made = Mutex<[Int: GrpcCallStats]>([:])

    init(clusters: [String], names: [String], store: StatsStore) {
        self.clusters = clusters; self.names = names; self.store = store
    }

    /// Method 0 is the cluster's unprefixed set (calls to methods not in the allowlist).
    func stats(cluster c: Int, method m: Int) -> GrpcCallStats {
        let key = c * (names.count + 1) + m
        return made.withLock { d in
            if let s = d[key] { return s }
            let s = GrpcCallStats(store: store, prefix: "cluster.\(clusters[c]).grpc." + (m == 0 ? "" : names[m - 1] + "."))
            d[key] = s
            return s
        }
    }
}

/// `grpc_stats` (Envoy's filter of that name): counts each gRPC call under the cluster its
/// route sent it to, by its final `grpc-status` (0 is a success; a call reset before any status
/// is a failure), with the messages each way. Methods in the allowlist have their own stats;
/// every other call counts in the cluster's unprefixed ones (a client cannot make stat
/// names). Streams that are not gRPC get no filter at all.
struct GrpcStatsFilterFactory: HttpFilterFactory {
    /// `/<service>/<method>` to its index in `table` (0: the unprefixed set).
    let methods: [String: Int]
    let table: GrpcStatsTable
    var name: String { "grpc_stats" }

    init(config: GrpcStatsFilterConfig, clusters: [String], store: StatsStore) {
        var names: [String] = []
        var index: [String: Int] = [:]
        for s in config.services {
            for m in s.methods {
                names.append("\(s.name).\(m)")
                index["/\(s.name)/\(m)"] = names.count
            }
        }
        methods = index
        table = GrpcStatsTable(clusters: clusters, names: names, store: store)
    }

    func create(stream: HttpStream) -> (HttpDecoderFilter?, HttpEncoderFilter?) {
        guard stream.isGrpc else { return (nil, nil) }
        let f = GrpcStatsFilter(factory: self, stream: stream)
        return (f, f)
    }
}

final class GrpcStatsFilter: HttpDecoderFilter, HttpEncoderFilter {
    let factory: GrpcStatsFilterFactory
    unowned(unsafe) let stream: HttpStream
    private var method = 0
    private var requestMessages = GrpcMessageCounter()
    private var responseMessages = GrpcMessageCounter()
    private var counted = false

    init(factory: GrpcStatsFilterFactory, stream: HttpStream) { self.factory = factory; self.stream = stream }

    func decodeHeaders(_ headers: HeaderMap, endStream: Bool) -> FilterHeadersStatus {
        if !factory.methods.isEmpty, let p = headers.value(.path) { method = factory.methods[p] ?? 0 }
        return .continue
    }

    func decodeData(_ data: Buffer, endStream: Bool) -> FilterDataStatus {
        requestMessages.feed(data.readable)
        return .continue
    }

    func encodeHeaders(_ headers: HeaderMap, endStream: Bool) -> FilterHeadersStatus {
        // A trailers-only response (a local reply among them) carries its status here.
        if endStream { count(status(headers, http: true)) }
        return .continue
    }

    func encodeData(_ data: Buffer, endStream: Bool) -> FilterDataStatus {
        responseMessages.feed(data.readable)
        if endStream { count(status(stream.responseHeaders, http: true)) }
        return .continue
    }

    func encodeTrailers(_ trailers: HeaderMap) -> FilterHeadersStatus {
        count(status(trailers, http: false))
        return .continue
    }

    /// Reset, or ended without a status the filter saw: a failure.
    func onStreamDone() { count(nil) }

    /// The call's gRPC status: `grpc-status`, or (in response headers without one) the gRPC
    /// spec's mapping of the HTTP status; nil when there is none.
    private func status(_ h: HeaderMap?, http: Bool) -> Int? {
        guard let h else { return nil }
        if let v = h.first(named: "grpc-status") {
            return h.withValue(v) { b in
                b.count >= 1 && b.count <= 2 && b.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } ? b.reduce(0) { $0 * 10 + Int($1 - 0x30) } : 2
            }
        }
        guard http, let s = h.first(.status) else { return nil }
        let code = h.withValue(s) { b in b.reduce(0) { $0 * 10 + Int($1 &- 0x30) } }
        return code == 200 ? 2 : Grpc.status(http: code)  // 200 without grpc-status: UNKNOWN
    }

    private func count(_ status: Int?) {
        if counted { return }
        counted = true
        let c = stream.router.clusterIndex
        guard c >= 0 && c < factory.table.clusters.count else { return }  // never routed: no cluster to count under
        let s = factory.table.stats(cluster: c, method: method)
        let slab = stream.worker.stats
        slab.inc(s.total)
        slab.inc(status == 0 ? s.success : s.failure)
        slab.add(s.requestMessages, requestMessages.count)
        slab.add(s.responseMessages, responseMessages.count)
    }
}

/// Counts gRPC's length-prefixed messages (a flag byte, a 4-byte big-endian length, the
/// payload) in a body that arrives in pieces of any size.
struct GrpcMessageCounter {
    private(set) var count = 0
    /// Bytes of the current prefix still to come (5 at a message boundary).
    private var prefixLeft = 5
    private var length: UInt32 = 0
    private var payloadLeft: UInt32 = 0

    mutating func feed(_ p: UnsafeRawBufferPointer) {
        var i = 0
        let n = p.count
        while i < n {
            if payloadLeft > 0 {
                let take = Int(min(UInt32(min(n - i, Int(UInt32.max))), payloadLeft))
                payloadLeft -= UInt32(take)
                i += take
                continue
            }
            if prefixLeft == 5 { count += 1 }
            if prefixLeft <= 4 { length = length << 8 | UInt32(p[i]) }
            prefixLeft -= 1
            i += 1
            if prefixLeft == 0 {
                payloadLeft = length
                length = 0
                prefixLeft = 5
            }
        }
    }
}
