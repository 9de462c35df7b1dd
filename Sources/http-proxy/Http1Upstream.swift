import Common
import Glibc

/// http-proxy's per-worker state: one connection pool per (cluster, host address), living
/// across config and cluster snapshots (Envoy's per-worker cluster view owns its pools).
final class HttpWorkerState: WorkerExtension {
    unowned(unsafe) let worker: Worker
    /// Pools by cluster slot, then host address.
    private var pools: [Int: [SocketAddress: HostPool]] = [:]

    /// Random numbers for this worker (weighted clusters, request ids, retry jitter).
    var rng: FastRandom
    /// X-Request-Id values (unpredictable, unlike `rng`).
    let secureRandom = SecureRandom()
    /// Header maps of finished requests and responses, for the next ones.
    let headerMaps = HeaderMapCache()
    /// Requests routed to each cluster slot, and retries in flight (the retry budget).
    private var active: [Int] = []
    private var retrying: [Int] = []

    init(worker: Worker) {
        self.worker = worker
        rng = FastRandom(seed: UInt64(worker.index + 1) &* 0x9e3779b97f4a7c15 ^ wallMs())
    }

    private func grow(_ slot: Int) {
        while active.count <= slot { active.append(0); retrying.append(0) }
    }

    func requestStarted(_ slot: Int) { grow(slot); active[slot] += 1 }
    func requestEnded(_ slot: Int) { grow(slot); active[slot] -= 1 }
    func activeRequests(_ slot: Int) -> Int { slot < active.count ? active[slot] : 0 }
    func retryStarted(_ slot: Int) { grow(slot); retrying[slot] += 1 }
    func retryEnded(_ slot: Int) { grow(slot); retrying[slot] -= 1 }
    func retriesInFlight(_ slot: Int) -> Int { slot < retrying.count ? retrying[slot] : 0 }

    /// The worker's state, made on first use.
    static func of(_ worker: Worker) -> HttpWorkerState {
        if let s = worker.extensionState as? HttpWorkerState { return s }
        let s = HttpWorkerState(worker: worker)
        worker.extensionState = s
        return s
    }

    /// Per cluster slot: the cluster view the index below was built for, and its hosts' pools
    /// by host index (an array index per request instead of hashing an address).
    private var byIndex: [(view: ObjectIdentifier?, pools: [HostPool?])] = []
    /// Pools a reload replaced (their cluster's protocol, TLS or pool limits changed): they
    /// drain, and are let go once idle (their connections point at them).
    private var retired: [HostPool] = []

    /// The pool for host `host` of `cluster` (made on first use).
    ///
    /// A reload that changes what a pool is made of (`HostPool.definition`) gives the
    /// current cluster view a new pool; the old one drains and is kept in `retired` until
    /// nothing refers to it (its connections and queued attempts point at it unowned). A
    /// request of an older view (a retry across the reload) takes the current pool as it is,
    /// never replacing a newer one. Re-entrant: draining the old pool may retry its queued
    /// requests at once, back into this function, so the books are complete before it.
    func pool(_ cluster: WorkerCluster, host: Int, stats: UpstreamRequestStats) -> HostPool {
        let slot = cluster.snapshot.slot
        while byIndex.count <= slot { byIndex.append((nil, [])) }
        let view = ObjectIdentifier(cluster)
        if byIndex[slot].view == view, let p = byIndex[slot].pools[host] {
            p.lastPick = (cluster, host)
            return p
        }
        let current = worker.cluster(slot: slot) === cluster
        let address = cluster.snapshot.hosts[host].address
        let p: HostPool
        var replaced: HostPool?
        if let existing = pools[slot]?[address] {
            if existing.definition == HostPool.definition(cluster.snapshot.config) {
                if current { existing.lastPick = (cluster, host) }  // new connects follow the current view
                p = existing
            } else if !current {
                p = existing
            } else {
                replaced = existing
                p = HostPool(worker: worker, address: address, cluster: cluster, host: host, stats: stats)
                pools[slot, default: [:]][address] = p
            }
        } else {
            p = HostPool(worker: worker, address: address, cluster: cluster, host: host, stats: stats)
            pools[slot, default: [:]][address] = p
        }
        if current {
            if byIndex[slot].view != view {
                byIndex[slot] = (view, [HostPool?](repeating: nil, count: cluster.snapshot.hosts.count))
            }
            byIndex[slot].pools[host] = p
        }
        if let old = replaced {
            retired.append(old)
            old.retiredByReload = true  // its queued requests move to `p` (Router.requeue)
            old.drain()
            sweepRetired()
        }
        return p
    }

    /// Lets go of retired pools nothing refers to. Through the dispatcher's deferred release:
    /// this may run inside one of the pool's own clients (an HTTP/2 client in nghttp2 whose
    /// stream close retried a request at once), which reads the pool again after returning.
    private func sweepRetired() {
        retired.removeAll { p in
            guard p.isIdle else { return false }
            worker.dispatcher.deferredRelease(p)
            return true
        }
    }

    /// Hosts that left their cluster or turned unhealthy: their pools drain (idle connections
    /// close now, busy ones after their request; queued requests are handed back). The books
    /// come first: draining may retry a queued request at once, back into `pool()`, which may
    /// add a pool for another host; each drained pool is kept in `retired` until nothing
    /// refers to it (a later pick of the host gets a fresh pool).
    func clustersChanged(_ worker: Worker) {
        var draining: [HostPool] = []
        for (slot, byAddress) in pools {
            let wc = worker.cluster(slot: slot)
            var healthy = Set<SocketAddress>()
            if let wc { for h in wc.snapshot.hosts where h.healthy { healthy.insert(h.address) } }
            for (address, pool) in byAddress where !healthy.contains(address) {
                draining.append(pool)
                pools[slot]?.removeValue(forKey: address)
            }
            if pools[slot]?.isEmpty == true { pools[slot] = nil }
            if slot < byIndex.count { byIndex[slot] = (nil, []) }  // rebuilt on the next pick
        }
        retired.append(contentsOf: draining)
        for p in draining { p.drain() }
        sweepRetired()
    }
}

/// What the pool counts for http-proxy: request counters and gauges, and the pool's own
/// connection events. Connection totals (`upstream_cx_total`/`_active`/`_destroy`) are the
/// host accounting's (`WorkerCluster.hostOpened`), so they are not counted twice here.
struct HttpPoolStats: PoolStatsSink {
    let slab: StatsSlab
    let handles: PoolStatHandles

    mutating func count(_ counter: PoolCounter, _ n: Int) {
        switch counter {
        case .cxTotal, .cxDestroy: return
        default: slab.add(handles.counters[counter.rawValue], n)
        }
    }

    mutating func adjust(_ gauge: PoolGauge, _ delta: Int) {
        if gauge == .cxActive { return }
        let g = handles.gauges[gauge.rawValue]
        if delta >= 0 { slab.add(g, delta) } else { slab.sub(g, -delta) }
    }
}

/// The pool of one host on one worker and the owner of its HTTP/1.1 clients.
final class HostPool: ConnectionPoolCallbacks {
    typealias Waiter = UpstreamAttempt
    unowned(unsafe) let worker: Worker
    let address: SocketAddress
    /// The cluster view and host index of the latest pick (used for new connects: TLS, the
    /// connect timeout, host accounting).
    var lastPick: (WorkerCluster, Int)
    let stats: UpstreamRequestStats
    private(set) var pool: ConnectionPool<HostPool, HttpPoolStats>!
    /// Clients by connection slot.
    private var clients: [(any UpstreamClient)?] = []
    /// What the cluster speaks to its hosts (fixed per pool: a reload that changes the
    /// protocol gets new pools, see `definition`). `auto` over TLS lets each
    /// connection's ALPN choose (`AlpnConnection`); `auto` in clear is HTTP/1.1.
    let upstreamProtocol: HttpClusterOptions.UpstreamProtocol
    /// `http2.max_concurrent_streams`: what an HTTP/2 connection is expected to take.
    private let http2Capacity: Int
    /// What the pool was made from: a cluster view whose definition differs (a reload changed
    /// the protocol, TLS or limits) gets a new pool.
    let definition: JSON
    /// A reload replaced this pool: it drains, and requests it fails `.drained` go to the new one.
    var retiredByReload = false

    static func definition(_ cfg: ClusterConfig) -> JSON {
        .array([cfg.binaryOptions?.dump ?? .null, .bool(cfg.tls != nil), .array((cfg.tls?.alpn ?? []).map { .string($0) }),
                .int(Int64(cfg.maxConnections ?? -1)), .int(Int64(cfg.maxPending ?? -1))])
    }

    init(worker: Worker, address: SocketAddress, cluster: WorkerCluster, host: Int, stats: UpstreamRequestStats) {
        self.worker = worker
        self.address = address
        self.lastPick = (cluster, host)
        self.stats = stats
        let cfg = cluster.snapshot.config
        let opts = cfg.binaryOptions as? HttpClusterOptions
        definition = HostPool.definition(cfg)
        let p = opts?.upstreamProtocol ?? .http1
        upstreamProtocol = p == .auto && cfg.tls == nil ? .http1 : p
        http2Capacity = opts?.http2MaxConcurrentStreams ?? 100
        // auto: as Envoy's ALPN pool today, a connect is expected to take h2's streams until a
        // host answers otherwise (a cold burst waits for one handshake instead of opening a
        // connection per request; an HTTP/1.1 answer sets 1 and the queue gets its connects).
        var pc = PoolConfig(expectedCapacity: upstreamProtocol == .http1 ? 1 : http2Capacity, idleTimeoutMs: opts?.idleTimeoutMs ?? 3_600_000,
                            maxRequestsPerConnection: opts?.maxRequestsPerConnection)
        if let m = cfg.maxConnections { pc.maxConnections = PoolBreaker(count: cluster.snapshot.openConnections, limit: m) }
        if let m = cfg.maxPending { pc.maxPendingRequests = PoolBreaker(count: cluster.snapshot.pending, limit: m) }
        pool = ConnectionPool(dispatcher: worker.dispatcher, config: pc,
                              stats: HttpPoolStats(slab: worker.stats, handles: stats.pool), callbacks: self)
    }

    /// No connection, no queued request, and no action of the pool pending (its waiters have
    /// heard their fate): nothing refers to the pool any more.
    var isIdle: Bool { pool.isQuiescent }

    func drain() { pool.drainConnections() }

    func client(_ id: PoolConnectionID) -> (any UpstreamClient)? {
        let i = Int(id.slot)
        guard i < clients.count, let c = clients[i], c.id == id else { return nil }
        return c
    }

    /// A stream for a request on connection `id`.
    func stream(_ id: PoolConnectionID) -> (any UpstreamStream)? { client(id)?.newStream() }

    // MARK: - ConnectionPoolCallbacks

    func poolConnect(_ id: PoolConnectionID) {
        let (cluster, host) = lastPick
        let c: any UpstreamClient = switch upstreamProtocol {
        case .http1: Http1Client(pool: self, id: id, cluster: cluster, host: host)
        case .http2: Http2Client(pool: self, id: id, cluster: cluster, host: host)
        case .auto: AlpnConnection(pool: self, id: id, cluster: cluster, host: host)
        }
        let i = Int(id.slot)
        while clients.count <= i { clients.append(nil) }
        clients[i] = c
        c.connect()
    }

    /// `protocol: auto`: the TLS handshake of `connector` agreed on `alpn`; the client of that
    /// protocol takes its connection over. Later connects expect what this host speaks.
    func alpnChose(_ connector: AlpnConnection, _ c: Connection) {
        let http2 = c.tlsAlpn == "h2"
        worker.stats.inc(http2 ? stats.cxAlpnHttp2 : stats.cxAlpnHttp1)
        pool.setExpectedCapacity(http2 ? http2Capacity : 1)
        let (cluster, host) = (connector.cluster, connector.host)
        let client: PooledConnection & UpstreamClient = http2 ? Http2Client(pool: self, id: connector.id, cluster: cluster, host: host)
                                                              : Http1Client(pool: self, id: connector.id, cluster: cluster, host: host)
        worker.dispatcher.deferredRelease(connector)  // on the stack: its callback is running
        clients[Int(connector.id.slot)] = client
        client.adopt(c, from: connector)
    }

    func poolClose(_ id: PoolConnectionID) {
        guard let c = client(id) else { return }
        clients[Int(id.slot)] = nil
        worker.dispatcher.deferredRelease(c)  // it may be on the stack (Connection holds it unowned)
        c.closeQuietly()
    }

    func poolAttach(_ waiter: UpstreamAttempt, to id: PoolConnectionID, exclusive: Bool) {
        guard let s = stream(id) else { waiter.poolFailed(.connectFailure); return }
        waiter.attached(s)
    }

    func poolFail(_ waiter: UpstreamAttempt, _ reason: PoolFailureReason) { waiter.poolFailed(reason) }

    /// A client's connection closed under the pool.
    func clientClosed(_ c: any UpstreamClient) {
        if client(c.id) === c {
            clients[Int(c.id.slot)] = nil
            worker.dispatcher.deferredRelease(c)  // it is on the stack: freed after this event
        }
        pool.connectionClosed(c.id)
    }
}

/// The connect phase every pooled upstream connection shares, whatever its protocol: the
/// socket (TLS when the cluster has it), the connect timeout, the host's connection accounting
/// and outlier detection, and telling the pool. Subclasses speak the protocol.
class PooledConnection: ConnectionCallbacks {
    unowned(unsafe) let pool: HostPool
    let id: PoolConnectionID
    /// The cluster view and host index it was opened in (its accounting goes there).
    let cluster: WorkerCluster
    let host: Int
    var connection: Connection?
    var timer: Timer?
    private(set) var connectStartMs: UInt64 = 0
    private(set) var connected = false
    var closed = false

    init(pool: HostPool, id: PoolConnectionID, cluster: WorkerCluster, host: Int) {
        self.pool = pool; self.id = id; self.cluster = cluster; self.host = host
    }

    var worker: Worker { pool.worker }

    func connect() {
        let cs = cluster.snapshot
        cluster.hostOpened(host, worker.stats)
        connectStartMs = monotonicMs()
        var tls: (TlsContext, TlsStats)?
        if let t = cs.config.tls { tls = (t.context, cs.stats.tls) }
        let (conn, err) = Connection.connect(worker: worker, to: pool.address, bufferLimit: 1 << 20, callbacks: self, tls: tls,
                                             clear: [], serverName: nil)
        guard let conn else {
            connectFailed(timeout: false, local: isLocalConnectError(err))
            return
        }
        connection = conn
        let t = Timer(worker.dispatcher) { [unowned self] in
            if !connected { connectFailed(timeout: true) }
        }
        timer = t
        t.arm(ms: cs.config.connectTimeoutMs)
    }

    func connectFailed(timeout: Bool, local: Bool = false) {
        guard !closed else { return }
        closed = true
        timer?.cancel()
        cluster.hostConnectFailed(host, timeout: timeout, outlier: !local)
        cluster.hostClosed(host, worker.stats)
        if let c = connection {
            c.callbacks = nil
            c.close()
            // This may run inside the connection's own callback (HTTP/2: SETTINGS that take no
            // stream): it must outlive the event.
            worker.dispatcher.deferredRelease(c)
            connection = nil
        }
        pool.pool.connectFailed(id, timeout ? .timeout : .failed)
    }

    /// The socket (and TLS) is up: the subclass tells the pool how many requests it takes.
    func didConnect(_ c: Connection) {}

    /// The part of every protocol's `closeQuietly`: marks the connection closed, closes its
    /// socket without callbacks and gives back the host's connection accounting. False when it
    /// was closed already; the subclass then fails its requests.
    func closeSocketQuietly() -> Bool {
        guard !closed else { return false }
        closed = true
        timer?.cancel()
        if let c = connection { c.callbacks = nil; c.close() }
        cluster.hostClosed(host, worker.stats)
        return true
    }

    /// Takes over `c`, which `connector` connected (`protocol: auto`, once ALPN has chosen):
    /// the host's connection accounting and the connect's timing carry over.
    func adopt(_ c: Connection, from connector: PooledConnection) {
        connection = c
        connected = true
        connectStartMs = connector.connectStartMs
        c.callbacks = self
        didConnect(c)
    }

    // MARK: - ConnectionCallbacks (the protocol's part is the subclass's)

    func onConnected(_ c: Connection) {
        connected = true
        timer?.cancel()
        let cs = cluster.snapshot
        worker.stats.record(cs.stats.upstreamCxConnectMs, monotonicMs() &- connectStartMs)
        cs.hosts[host].outlier?.success()
        didConnect(c)
    }

    func onConnectFailed(_ c: Connection, errno: Int32) {
        connection = nil
        connectFailed(timeout: false)
    }

    func onData(_ c: Connection, _ buffer: Buffer, endStream: Bool) {}
    func onClose(_ c: Connection, remote: Bool) {}
    func onAboveWriteBufferHighWatermark(_ c: Connection) {}
    func onBelowWriteBufferLowWatermark(_ c: Connection) {}
}

/// `protocol: auto` on a TLS cluster: connects offering ALPN `[h2, http/1.1]` (or the
/// cluster's `tls.alpn`), then hands the connection to the client of the protocol the host
/// agreed on (HTTP/1.1 when it agreed on none), as Envoy's auto_config. Until then it is a
/// connecting slot of the pool: it takes no request.
final class AlpnConnection: PooledConnection, UpstreamClient {
    func newStream() -> (any UpstreamStream)? { nil }

    func closeQuietly() {
        if closeSocketQuietly() { connection = nil }
    }

    override func didConnect(_ c: Connection) {
        closed = true  // the chosen client owns the connection and the host's accounting now
        pool.alpnChose(self, c)
        // Only now: this reference kept the connection alive until the client held it.
        connection = nil
    }

    override func onClose(_ c: Connection, remote: Bool) {
        connection = nil
        connectFailed(timeout: false)
    }
}

/// One upstream HTTP/1.1 connection of a pool: connects (TLS when the cluster has it),
/// writes one request at a time and parses its response strictly (an invalid status line or
/// framing is the upstream's fault: 502, never relayed; a body cut short is never delivered as
/// complete).
final class Http1Client: PooledConnection, UpstreamClient, UpstreamStream {
    /// The request being served.
    private(set) var attempt: UpstreamAttempt?

    // Response parsing.
    private var parser = Http1HeadParser(maxHeadBytes: 96 * 1024, maxHeaders: 200)
    private var head = Http1Head()
    private var headersDone = false
    private var bodyLeft: UInt64 = 0
    private var chunked: ChunkedDecoder?
    /// Trailers of the chunked response body being read (they may span reads).
    private var responseTrailers: HeaderMap?
    private var requestHead = false
    private var requestConnect = false
    /// The request asked to upgrade the connection (WebSocket): a 101 makes it a tunnel.
    private var requestUpgrade = false
    /// Response body pieces on their way to the attempt.
    private let scratch: Buffer
    /// Request bytes being framed for the socket. Never `scratch`: a response's last piece may
    /// still be there when the pool hands this connection the next request.
    private let requestOut: Buffer
    /// The request was completely written (so the connection may be reused).
    private var requestSent = false
    /// The map the response head being parsed goes into (one per response, not per read).
    private var parsing: HeaderMap?
    private let responseMaps: HeaderMapCache

    override init(pool: HostPool, id: PoolConnectionID, cluster: WorkerCluster, host: Int) {
        scratch = Buffer(pool: pool.worker.blocks)
        requestOut = Buffer(pool: pool.worker.blocks)
        responseMaps = HttpWorkerState.of(pool.worker).headerMaps
        super.init(pool: pool, id: id, cluster: cluster, host: host)
    }

    /// One request at a time: the connection is the stream.
    func newStream() -> (any UpstreamStream)? { closed ? nil : self }

    func unused() { pool.pool.requestFinished(id) }

    /// Closes without telling the pool (it asked).
    func closeQuietly() {
        guard closeSocketQuietly() else { return }
        if let a = attempt { attempt = nil; a.upstreamReset(.connectionTermination) }
    }

    /// Closes and tells the pool (the response said close, a protocol error, a reset).
    func closeAndReport() {
        guard !closed else { return }
        closeQuietly()
        pool.clientClosed(self)
    }

    // MARK: - Requests

    /// Starts `a` on this connection: the head now, the body as the router passes it.
    func start(_ a: UpstreamAttempt, headers: HeaderMap, endStream: Bool, hasBody: Bool, contentLength: Bool) {
        attempt = a
        requestSent = false
        headersDone = false
        parser.reset()
        requestHead = headers.first(.method).map { headers.valueEqualsIgnoringCase($0, "HEAD") } ?? false
        requestConnect = headers.first(.method).map { headers.withValue($0) { equalsLiteral($0, "CONNECT") } } ?? false
        requestUpgrade = headers.has(.upgrade)
        // `te: trailers` from an HTTP/2 client describes that hop only.
        headers.remove(.te)
        // A body of unknown length goes chunked.
        if hasBody && !contentLength { headers.set(.transferEncoding, "chunked") }
        sendChunked = hasBody && !contentLength
        Http1Encoder.writeRequestHead(headers, into: requestOut)
        if sendChunked { headers.remove(.transferEncoding) }
        if endStream { requestSent = true }
        connection?.write(requestOut, endStream: false)
    }

    private var sendChunked = false

    /// Body bytes of the request (drained from `data`).
    func sendData(_ data: Buffer, endStream: Bool) {
        guard let c = connection, !requestSent else { data.release(); return }
        if sendChunked {
            if !data.isEmpty {
                Http1Encoder.writeChunkHeader(data.count, into: requestOut)
                requestOut.moveAll(from: data)
                Http1Encoder.writeChunkEnd(into: requestOut)
            }
            if endStream { Http1Encoder.writeLastChunk(trailers: nil, into: requestOut) }
            c.write(requestOut, endStream: false)
        } else {
            c.write(data, endStream: false)
        }
        if endStream { requestSent = true }
    }

    func sendTrailers(_ t: HeaderMap) {
        guard let c = connection, !requestSent else { return }
        if sendChunked { Http1Encoder.writeLastChunk(trailers: t, into: requestOut); c.write(requestOut, endStream: false) }
        requestSent = true
    }

    /// The attempt is abandoned (timeout, client gone, retry elsewhere): the connection cannot
    /// be reused (a late response would be taken for the next request's).
    func abandon() {
        attempt = nil
        closeAndReport()
    }

    // MARK: - ConnectionCallbacks

    override func didConnect(_ c: Connection) { pool.pool.connected(id, capacity: 1) }

    override func onData(_ c: Connection, _ buffer: Buffer, endStream: Bool) {
        guard let a = attempt else {
            // Bytes with no request outstanding: a broken or hostile upstream.
            if !buffer.isEmpty {
                worker.stats.inc(pool.stats.cxProtocolError)
                buffer.release()
            }
            closeAndReport()
            return
        }
        processResponse(a, buffer, eof: endStream)
        a.flushDownstream()
    }

    private func processResponse(_ a: UpstreamAttempt, _ buffer: Buffer, eof: Bool) {
        while attempt === a && !closed {
            if !headersDone {
                if buffer.isEmpty {
                    if eof { responseFailed(a, reset: true) }
                    return
                }
                let h = parsing ?? responseMaps.take()
                parsing = h
                switch parser.parseResponse(buffer.readable, headers: h, head: &head, requestWasHead: requestHead,
                                            requestWasConnect: requestConnect) {
                case .incomplete:
                    if eof { responseFailed(a, reset: true) }
                    return
                case .error(let e):
                    worker.stats.inc(pool.stats.http1Errors[e.rawValue])
                    worker.stats.inc(pool.stats.cxProtocolError)
                    responseFailed(a, reset: false)
                    return
                case .complete(let consumed):
                    buffer.drain(consumed)
                    parser.reset()
                    parsing = nil
                    responseMaps.give(h)  // reused once its stream lets it go
                    if head.status < 200 && head.status != 101 { continue }  // 100 Continue & co: not forwarded
                    if head.framing == .tunnel {
                        // Only an upgrade the client asked for becomes a tunnel (a 101 nobody
                        // asked for is the upstream's error), or a 2xx to a forwarded CONNECT.
                        let agreed = head.status == 101 ? requestUpgrade && head.upgrade : requestConnect
                        guard agreed, let conn = connection else {
                            worker.stats.inc(pool.stats.cxProtocolError)
                            responseFailed(a, reset: false)
                            return
                        }
                        becomeTunnel(a, h, conn)
                        return
                    }
                    headersDone = true
                    h.removeHopByHop()
                    for t in head.connectionTokens { h.remove(t) }
                    switch head.framing {
                    case .length(let n): bodyLeft = n; chunked = nil
                    case .chunked: chunked = ChunkedDecoder(); responseTrailers = nil
                    default: break
                    }
                    let end = head.framing == .none
                    if end { responseDone(a, h, headersOnly: true); return }
                    a.responseHeaders(h, endStream: false)
                }
            } else {
                if buffer.isEmpty {
                    if eof {
                        if head.framing == .close { finishBody(a) } else { responseFailed(a, reset: true) }
                    }
                    return
                }
                if !decodeBody(a, buffer, eof: eof) { return }
            }
        }
    }

    /// One piece of response body to the attempt. False when more bytes are needed.
    private func decodeBody(_ a: UpstreamAttempt, _ buffer: Buffer, eof: Bool) -> Bool {
        switch head.framing {
        case .close:
            scratch.moveAll(from: buffer)
            a.responseData(scratch, endStream: false)
            scratch.release()
            if eof { finishBody(a) }
            return false
        case .chunked:
            guard var d = chunked else { return false }
            let s = scratch
            let r = d.decode(buffer.readable, trailers: &responseTrailers) { s.append($0) }
            chunked = d
            switch r {
            case .error(let e):
                worker.stats.inc(pool.stats.http1Errors[e.rawValue])
                worker.stats.inc(pool.stats.cxProtocolError)
                responseFailed(a, reset: false)
                return false
            case .more(let consumed):
                buffer.drain(consumed)
                if !s.isEmpty { a.responseData(s, endStream: false) }
                s.release()
                if eof { responseFailed(a, reset: true) }
                return false
            case .done(let consumed):
                buffer.drain(consumed)
                if let t = responseTrailers {
                    responseTrailers = nil
                    if !s.isEmpty { a.responseData(s, endStream: false) }
                    s.release()
                    complete(a) { a.responseTrailers(t) }
                } else {
                    complete(a) { a.responseData(s, endStream: true) }
                    s.release()
                }
                return false
            }
        default:
            let take = Int(min(UInt64(buffer.count), bodyLeft))
            if take == buffer.count { scratch.moveAll(from: buffer) } else {
                scratch.append(UnsafeRawBufferPointer(rebasing: buffer.readable[0..<take]))
                buffer.drain(take)
            }
            bodyLeft -= UInt64(take)
            if bodyLeft == 0 {
                complete(a) { a.responseData(scratch, endStream: true) }
                scratch.release()
                return false
            }
            a.responseData(scratch, endStream: false)
            scratch.release()
            if eof { responseFailed(a, reset: true) }
            return false
        }
    }

    private func finishBody(_ a: UpstreamAttempt) {
        let empty = scratch
        complete(a) { a.responseData(empty, endStream: true) }
    }

    private func responseDone(_ a: UpstreamAttempt, _ h: HeaderMap, headersOnly: Bool) {
        complete(a) { a.responseHeaders(h, endStream: true) }
    }

    /// The response is whole: the connection goes back to the pool when it can carry another
    /// request, else it closes. The attempt hears of it after (it may start a new request on
    /// this very pool).
    private func complete(_ a: UpstreamAttempt, _ deliver: () -> Void) {
        attempt = nil
        resumeReading()
        let reusable = head.keepAlive && requestSent && head.framing != .close && connection?.readBuffer.isEmpty != false
        if !reusable {
            if !head.keepAlive { worker.stats.inc(pool.stats.pool.counters[PoolCounter.cxCloseNotify.rawValue]) }
            closeAndReport()
        } else {
            pool.pool.requestFinished(id)
        }
        a.detach()
        deliver()
    }

    /// A 101: the connection leaves the pool for good and becomes one side of a relay owned by
    /// the downstream's connection manager, which settles this host's accounting when the
    /// tunnel ends (`UpstreamTunnel.release`). Bytes after the 101 stay in its read buffer.
    private func becomeTunnel(_ a: UpstreamAttempt, _ h: HeaderMap, _ conn: Connection) {
        let upgrade = h.first(.upgrade).map { h.value(at: $0) }
        h.removeHopByHop()
        for t in head.connectionTokens { h.remove(t) }
        if head.status == 101, let upgrade {
            h.add(.upgrade, upgrade)
            h.add(.connection, "upgrade")
        } else {
            // A 2xx to CONNECT has no content (RFC 9110 9.3.6): a length would mislead the client.
            h.remove(.contentLength)
        }
        attempt = nil
        connection = nil
        closed = true
        timer?.cancel()
        conn.callbacks = nil
        pool.clientClosed(self)
        a.detach()
        let (cluster, host) = (self.cluster, self.host)
        a.responseTunnel(h, UpstreamTunnel(connection: conn) { slab in cluster.hostClosed(host, slab ?? conn.worker.stats) })
    }

    /// The upstream broke the exchange: a reset (closed early) or an invalid response.
    private func responseFailed(_ a: UpstreamAttempt, reset: Bool) {
        attempt = nil
        closeAndReport()
        a.upstreamReset(reset ? .connectionTermination : .protocolError)
    }

    override func onClose(_ c: Connection, remote: Bool) {
        if !connected {
            connection = nil
            connectFailed(timeout: false)
            return
        }
        if let a = attempt {
            // EOF with bytes still unread is handled in onData; here the socket went away.
            if headersDone && head.framing == .close && c.readEOF && c.state == .closed {
                attempt = nil
                a.detach()
                a.responseData(scratch, endStream: true)
                closeAndReport()
                return
            }
            attempt = nil
            closeAndReport()
            a.upstreamReset(.connectionTermination)
            return
        }
        closeAndReport()
    }

    override func onAboveWriteBufferHighWatermark(_ c: Connection) { attempt?.upstreamAboveHighWatermark() }
    override func onBelowWriteBufferLowWatermark(_ c: Connection) { attempt?.upstreamBelowLowWatermark() }

    /// Pause or resume reading the response (the client is slow). Counted, so that the
    /// connection never goes back to the pool still paused by a finished request.
    private var pausedByAttempt = 0
    func readDisable() {
        guard let c = connection else { return }
        pausedByAttempt += 1
        c.readDisable()
    }
    func readEnable() {
        guard pausedByAttempt > 0, let c = connection else { return }
        pausedByAttempt -= 1
        c.readEnable()
    }
    private func resumeReading() { while pausedByAttempt > 0 { readEnable() } }
}
