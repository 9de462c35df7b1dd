import Common
import RedisProtocol

/// One request sent to a shard, waiting for its reply in that connection's FIFO. The reply
/// goes to `slot` (part `part` of it); a slot whose client left still takes its replies, so
/// the connection's reply order stays matched.
final class RedisOp {
    let slot: ReplySlot
    let part: Int
    let deadlineMs: UInt64

    init(slot: ReplySlot, part: Int, deadlineMs: UInt64) { self.slot = slot; self.part = part; self.deadlineMs = deadlineMs }
}

/// The shards of one cluster on one worker, as one listener block sees them (auth and
/// distribution are the block's): their pipelined connections, the key distribution, and
/// twemproxy's ejection state.
final class ShardSet {
    unowned(unsafe) let worker: Worker
    let key: String
    /// The cluster's name (and its slot in the worker's clusters, per generation).
    let cluster: String
    private var clusterSlot: Int
    /// Sessions to flush, shared by the worker's shard sets (a client's keys may be on several).
    unowned(unsafe) let replies: ReplyFlushQueue
    private(set) var factory: RedisProxyFactory
    private(set) var snapshot: ClusterSnapshot?
    /// Per host index: `server_connections` connections. Each client uses one of them per
    /// shard (its lane), so its commands to a shard run in the order it sent them.
    private var connections: [[ShardConnection?]] = []
    /// Connections beyond a smaller `server_connections` after a reload: they close once the
    /// replies they wait for are in.
    private var retiring: [ShardConnection] = []
    /// Per host: consecutive failures and, with `auto_eject_hosts`, ejected until (ms).
    private var failures: [Int] = []
    private var ejectedUntil: [UInt64] = []
    private var ring: KetamaRing?
    private var modula: TwemproxyModula?
    /// Modula slot order → host index.
    private var modulaOrder: [Int] = []
    private var random: TwemproxyRandom?
    private var maglev: [Int32] = []
    var rng: FastRandom

    init(worker: Worker, key: String, cluster: String, factory: RedisProxyFactory, replies: ReplyFlushQueue) {
        self.worker = worker
        self.key = key
        self.cluster = cluster
        self.replies = replies
        clusterSlot = factory.clusterSlots[cluster] ?? Int.max
        self.factory = factory
        rng = FastRandom(seed: UInt64(truncatingIfNeeded: worker.index &+ 1) &* 0x9E37_79B9_7F4A_7C15 ^ monotonicMs())
        refresh()
    }

    /// A new config generation's factory with the same upstream identity.
    func adopt(_ f: RedisProxyFactory) {
        factory = f
        clusterSlot = f.clusterSlots[cluster] ?? Int.max
        refresh()
    }

    /// The worker's current view of the cluster: hosts that left lose their connections
    /// (their waiting requests get errors); the distribution is rebuilt.
    func refresh() {
        let snap = worker.cluster(slot: clusterSlot)?.snapshot
        let oldHosts = snapshot?.hosts.map(\.address) ?? []
        let newHosts = snap?.hosts.map(\.address) ?? []
        if oldHosts != newHosts {
            var conns: [[ShardConnection?]] = []
            var fails: [Int] = [], ejected: [UInt64] = []
            for a in newHosts {
                if let i = oldHosts.firstIndex(of: a) {
                    conns.append(connections[i]); fails.append(failures[i]); ejected.append(ejectedUntil[i])
                } else {
                    conns.append(Array(repeating: nil, count: factory.config.serverConnections))
                    fails.append(0); ejected.append(0)
                }
            }
            for (i, a) in oldHosts.enumerated() where !newHosts.contains(a) {
                for c in connections[i] { c?.fail(.hostGone) }
            }
            connections = conns
            for (i, row) in conns.enumerated() { for c in row { c?.host = i } }
            failures = fails
            ejectedUntil = ejected
            // A client's own (WATCH) connection whose host moved or left: its shard index in
            // the client's hands is stale, so it is closed (EXEC then answers nil).
            for c in dedicated where c.host >= newHosts.count || newHosts[c.host] != c.address { c.fail(.hostGone) }
        }
        for i in connections.indices where connections[i].count != factory.config.serverConnections {
            let keep = connections[i].prefix(factory.config.serverConnections)
            for case let c? in connections[i].dropFirst(factory.config.serverConnections) {
                retiring.append(c)
                c.closeWhenIdle()
            }
            connections[i] = Array(keep) + Array(repeating: nil, count: factory.config.serverConnections - keep.count)
        }
        snapshot = snap
        rebuildDistribution()
        if factory.config.preconnect {
            for h in connections.indices { for j in connections[h].indices where connections[h][j] == nil { _ = connection(h, j) } }
        }
    }

    private func rebuildDistribution() {
        guard let s = snapshot else { ring = nil; modula = nil; random = nil; maglev = []; return }
        let now = monotonicMs()
        let eject = factory.config.autoEjectHosts
        // Without auto_eject_hosts every shard keeps its keys, up or down (twemproxy's default:
        // no key moves, so no data splits between shards).
        let live = s.hosts.indices.map { i in !eject || (s.hosts[i].healthy && ejectedUntil[i] <= now) }
        switch factory.config.distribution {
        case .ketama:
            ring = KetamaRing(hosts: s.hosts.enumerated().map { i, h in
                Host(address: h.address, weight: h.weight, hashKey: h.hashKey, healthy: live[i], stats: h.stats)
            })
        case .modula:
            // nutcracker sorts its servers by name before building the modula table (its
            // config check sorts them to find duplicates): shorter names first, then bytewise;
            // a server's name is its `name` or "host:port". Measured against nutcracker 0.5.0.
            modulaOrder = s.hosts.indices.sorted { a, b in
                let x = Array(s.hosts[a].hashKey.utf8), y = Array(s.hosts[b].hashKey.utf8)
                return x.count != y.count ? x.count < y.count : x.lexicographicallyPrecedes(y)
            }
            modula = TwemproxyModula(weights: modulaOrder.map { s.hosts[$0].weight }, live: modulaOrder.map { live[$0] })
        case .random: random = TwemproxyRandom(count: s.hosts.count, live: live)
        case .maglev:
            maglev = MaglevTable.build(hosts: s.hosts.enumerated().map { i, h in
                Host(address: h.address, weight: h.weight, hashKey: h.hashKey, healthy: live[i], stats: h.stats)
            })
        }
    }

    /// The shard (host index) for a key; nil when none is live.
    func shard(forKey key: UnsafeRawBufferPointer) -> Int? {
        if let t = factory.config.hashTag { return shard(hash: factory.config.hash.poolHash(t.hashedPart(of: key))) }
        return shard(hash: factory.config.hash.poolHash(key))
    }

    func shard(hash: UInt32) -> Int? {
        if factory.config.autoEjectHosts, let i = ejectedUntil.firstIndex(where: { $0 != 0 && $0 <= monotonicMs() }) {
            ejectedUntil[i] = 0  // server_retry_timeout passed: back in the distribution
            if let a = snapshot?.hosts[i].address { ShardBoard.shared.set(cluster: cluster, address: a, worker: worker.index, ejectedUntilMs: 0) }
            rebuildDistribution()
        }
        switch factory.config.distribution {
        case .ketama: return ring?.lookup(hash)
        case .modula: return modula?.lookup(hash).map { modulaOrder[$0] }
        case .random: return random?.pick(&rng)
        case .maglev: return maglev.isEmpty ? nil : Int(maglev[Int(hash % UInt32(maglev.count))])
        }
    }

    /// Any live shard (commands without a key: TIME, EVAL with no keys).
    func anyShard() -> Int? {
        guard let s = snapshot, !s.hosts.isEmpty else { return nil }
        return shard(hash: UInt32(truncatingIfNeeded: rng.next()))
    }

    var shardCount: Int { snapshot?.hosts.count ?? 0 }

    /// A shard by its name (hash key) or address, else its index (0-based, config order).
    func shardIndex(named id: [UInt8]) -> Int? {
        guard let s = snapshot, id.count <= 1024 else { return nil }
        let name = String(decoding: id, as: UTF8.self)
        if let i = s.hosts.firstIndex(where: { $0.hashKey == name || $0.address.description == name }) { return i }
        if let i = Int(name), i >= 0, i < s.hosts.count { return i }
        return nil
    }

    /// A connection to `host`, opened on demand: lane `lane` of its `server_connections` (a
    /// client always uses the same lane, so its commands keep their order).
    func connection(forShard host: Int, lane: Int = 0) -> ShardConnection? {
        guard host < connections.count, !connections[host].isEmpty else { return nil }
        return connection(host, lane % connections[host].count)
    }

    private func connection(_ host: Int, _ j: Int) -> ShardConnection? {
        if let c = connections[host][j], !c.closed { return c }
        guard let s = snapshot, host < s.hosts.count else { return nil }
        let c = ShardConnection(shards: self, host: host, address: s.hosts[host].address, stats: s.hosts[host].stats)
        c.connect()
        if c.closed { return nil }  // the connect failed at once (counted)
        connections[host][j] = c
        return c
    }

    /// A connection of one client's own (WATCH): not shared, not kept in the pool; the client
    /// closes it when its transaction ends.
    func dedicatedConnection(forShard host: Int) -> ShardConnection? {
        guard let s = snapshot, host < s.hosts.count else { return nil }
        let c = ShardConnection(shards: self, host: host, address: s.hosts[host].address, stats: s.hosts[host].stats)
        c.connect()
        if c.closed { return nil }
        dedicated.append(c)  // kept until it closes: its replies may outlive the client
        return c
    }
    private var dedicated: [ShardConnection] = []

    /// A connection reports a failure (connect error, reset, timeout): counts toward ejection.
    func hostFailed(_ host: Int, address: SocketAddress) {
        guard host < failures.count, snapshot?.hosts[host].address == address else { return }
        failures[host] += 1
        if factory.config.autoEjectHosts && failures[host] >= factory.config.serverFailureLimit && ejectedUntil[host] == 0 {
            ejectedUntil[host] = monotonicMs() &+ max(factory.config.serverRetryTimeoutMs, 1)
            ShardBoard.shared.set(cluster: cluster, address: address, worker: worker.index, ejectedUntilMs: ejectedUntil[host])
            failures[host] = 0
            worker.stats.inc(factory.stats.upstreamEjected)
            rebuildDistribution()
        }
    }

    func hostSucceeded(_ host: Int, address: SocketAddress) {
        guard host < failures.count, snapshot?.hosts[host].address == address else { return }
        failures[host] = 0
    }

    func forget(_ c: ShardConnection) {
        retiring.removeAll { $0 === c }
        dedicated.removeAll { $0 === c }
        guard c.host < connections.count else { return }
        for j in connections[c.host].indices where connections[c.host][j] === c { connections[c.host][j] = nil }
    }


    /// Connections with requests to write: written once the loop has run every callback due
    /// in this iteration, so the requests of all clients read together leave in one write per
    /// shard connection (twemproxy writes per client read; at pipeline depth 1 with many
    /// clients that is a write per request).
    private var dirtyConnections: [ShardConnection] = []
    private lazy var flushEvent = EndOfIteration(worker.dispatcher) { [unowned(unsafe) self] in self.flushWrites() }

    func markDirty(_ c: ShardConnection) {
        dirtyConnections.append(c)
        flushEvent.schedule()
    }

    func flushWrites() {
        if dirtyConnections.isEmpty { return }
        let d = dirtyConnections
        dirtyConnections.removeAll(keepingCapacity: true)
        for c in d where !c.closed { c.flushOut() }
    }

    func flushQueued() { replies.flush() }

    func closeAll() {
        for row in connections { for c in row { c?.fail(.hostGone) } }
        for c in dedicated { c.fail(.hostGone) }
        connections = connections.map { Array(repeating: nil, count: $0.count) }
    }
}

/// Per-worker redis-proxy state: shard sets by upstream identity (cluster + auth), kept across
/// reloads so connections survive them.
final class RedisWorkerState: WorkerExtension {
    private var sets: [String: ShardSet] = [:]
    let replies = ReplyFlushQueue()
    /// The router of each factory in use (a new generation's factory gets a new one).
    private var routers: [ObjectIdentifier: (factory: RedisProxyFactory, router: RedisRouter)] = [:]

    static func of(_ worker: Worker) -> RedisWorkerState {
        if let s = worker.extensionState as? RedisWorkerState { return s }
        let s = RedisWorkerState()
        worker.extensionState = s
        return s
    }

    func shards(_ worker: Worker, _ factory: RedisProxyFactory, cluster: String) -> ShardSet {
        let key = factory.upstreamKey(cluster)
        if let s = sets[key] {
            if s.factory !== factory { s.adopt(factory) }
            return s
        }
        let s = ShardSet(worker: worker, key: key, cluster: cluster, factory: factory, replies: replies)
        sets[key] = s
        return s
    }

    func router(_ worker: Worker, _ factory: RedisProxyFactory) -> RedisRouter {
        let id = ObjectIdentifier(factory)
        if let r = routers[id] { return r.router }
        // Routers of older generations go once a new one is made (sessions keep theirs).
        routers = routers.filter { $0.value.factory.config.statPrefix != factory.config.statPrefix }
        let r = RedisRouter(factory.config) { self.shards(worker, factory, cluster: $0) }
        routers[id] = (factory, r)
        return r
    }

    private var commandStatsCaches: [String: CommandStatsCache] = [:]

    func commandStats(_ stats: RedisProxyStats) -> CommandStatsCache {
        if let c = commandStatsCaches[stats.prefix] { return c }
        let c = CommandStatsCache(stats)
        commandStatsCaches[stats.prefix] = c
        return c
    }

    func clustersChanged(_ worker: Worker) {
        for s in sets.values { s.refresh() }
    }
}

/// Why the requests waiting on an upstream connection got an error instead of a reply.
enum ShardFailure {
    case connectFailed, closed, protocolError, timeout, hostGone, recycled

    var reply: [UInt8] {
        switch self {
        case .connectFailed: Array("-ERR redis-proxy: cannot connect to the shard\r\n".utf8)
        case .closed: Array("-ERR redis-proxy: the shard closed the connection\r\n".utf8)
        case .protocolError: Array("-ERR redis-proxy: protocol error from the shard\r\n".utf8)
        case .timeout: Array("-ERR redis-proxy: upstream timeout\r\n".utf8)
        case .hostGone: Array("-ERR redis-proxy: the shard left the cluster\r\n".utf8)
        case .recycled: Array("-ERR redis-proxy: the shard connection was closed after another request timed out\r\n".utf8)
        }
    }
}

/// One pipelined connection to a shard: requests are written as they come (several clients'
/// requests share it), replies are matched to them in order with hiredis's reader and the
/// reply bytes handed to each request's slot. A timeout, a protocol error or a close fails
/// every request still waiting, and the connection is dropped: later replies could not be
/// matched any more.
final class ShardConnection: ConnectionCallbacks {
    unowned(unsafe) let shards: ShardSet
    /// Its host's index in the shard set (updated when the host list changes).
    var host: Int
    let address: SocketAddress
    /// The host's request and connection counts (`/clusters`).
    let hostStats: HostStats
    private var cxCounted = false
    private var connection: Connection?
    private var connected = false
    private(set) var closed = false
    /// Requests written (or queued while connecting) and not answered yet, oldest first.
    private var queue: [RedisOp] = []
    private var head = 0
    /// Requests not written yet: waiting for the connection to come up, or for the end of the
    /// client read that produced them.
    private let pendingOut: Buffer
    private let reader = RespReplyReader()
    /// Bytes at the front of the read buffer already fed to the reader.
    private var fed = 0
    /// The AUTH reply still to come (it is not any client's).
    private var authPending = false
    private var timer: Timer?
    private var timerAt: UInt64 = 0

    init(shards: ShardSet, host: Int, address: SocketAddress, stats: HostStats) {
        self.shards = shards
        self.host = host
        self.address = address
        hostStats = stats
        pendingOut = Buffer(pool: shards.worker.blocks)
    }

    private var factory: RedisProxyFactory { shards.factory }
    private var worker: Worker { shards.worker }
    var waiting: Int { queue.count - head }

    func connect() {
        let (c, err) = Connection.connect(worker: worker, to: address, bufferLimit: 1 << 20, callbacks: self)
        guard let c else {
            _ = err
            closed = true
            shards.hostFailed(host, address: address)
            worker.stats.inc(factory.stats.upstreamCxConnectFail)
            hostStats.inc(.cxConnectFail, worker.stats)
            return
        }
        connection = c
        hostStats.inc(.cxTotal, worker.stats)
        hostStats.inc(.cxActive, worker.stats)
        cxCounted = true
        // A reply is forwarded once it is whole, so the read buffer must be able to hold the
        // largest one the reader accepts.
        c.readBufferLimit = reader.maxReplyBytes + 64 * 1024
        // A request may be as big as max_request_bytes; unsent requests past the high
        // watermark stop the clients' reads instead (congestion).
        c.hardWriteLimit = Int.max
        worker.stats.inc(factory.stats.upstreamCxTotal)
        if let p = factory.config.upstreamAuthPassword {
            var args: [[UInt8]] = [Array("AUTH".utf8)]
            if let u = factory.config.upstreamAuthUsername { args.append(Array(u.utf8)) }
            args.append(Array(p.utf8))
            RespWriter.arrayHeader(args.count, into: pendingOut)
            for a in args { RespWriter.bulk(a, into: pendingOut) }
            authPending = true
        }
    }

    /// Queues one request: `write` appends its bytes to `out` (the connection's, or the
    /// pending buffer while connecting).
    func send(_ op: RedisOp, _ write: (Buffer) -> Void) {
        queue.append(op)
        hostStats.inc(.rqTotal, worker.stats)
        hostStats.inc(.rqActive, worker.stats)
        write(pendingOut)
        if connected && !dirty {
            dirty = true
            shards.markDirty(self)
        }
        armTimer(op.deadlineMs)
    }

    /// Requests queued since the last flush leave in one write (`ShardSet.flushWrites`, at the
    /// end of a client's read: a pipeline of 16 is one write per shard, not 16).
    private var dirty = false

    func flushOut() {
        dirty = false
        if connected, let c = connection, !pendingOut.isEmpty { c.write(pendingOut, endStream: false) }
    }

    func onConnected(_ connection: Connection) {
        connected = true
        shards.hostSucceeded(host, address: address)
        if !pendingOut.isEmpty { connection.write(pendingOut, endStream: false) }
    }

    func onConnectFailed(_ connection: Connection, errno: Int32) {
        worker.stats.inc(factory.stats.upstreamCxConnectFail)
        hostStats.inc(.cxConnectFail, worker.stats)
        fail(.connectFailed)
    }

    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {
        defer { shards.flushQueued() }
        let all = buffer.readable
        if all.count > fed { reader.feed(UnsafeRawBufferPointer(rebasing: all[fed...])) }
        fed = all.count
        while true {
            switch reader.next() {
            case .incomplete:
                if endStream { fail(.closed) }
                return
            case .error:
                worker.stats.inc(factory.stats.upstreamProtocolError)
                fail(.protocolError)
                return
            case .reply(let r):
                let bytes = UnsafeRawBufferPointer(rebasing: buffer.readable[0..<r.length])
                if authPending {
                    authPending = false
                    if r.isError {
                        worker.stats.inc(factory.stats.upstreamAuthFailed)
                        buffer.drain(r.length); fed -= r.length
                        fail(.closed)
                        return
                    }
                } else if head < queue.count {
                    let op = queue[head]
                    head += 1
                    if head > 64 && head * 2 > queue.count { queue.removeFirst(head); head = 0 }
                    hostStats.dec(.rqActive, worker.stats)
                    hostStats.inc(r.isError ? .rqError : .rqSuccess, worker.stats)
                    op.slot.partReplied(op.part, bytes, r)
                } else {
                    // A reply nobody asked for: the stream can no longer be trusted.
                    worker.stats.inc(factory.stats.upstreamProtocolError)
                    buffer.drain(r.length); fed -= r.length
                    fail(.protocolError)
                    return
                }
                buffer.drain(r.length)
                fed -= r.length
                if closed { return }
                if retiring && waiting == 0 { fail(.hostGone); return }
            }
        }
    }

    func onClose(_ connection: Connection, remote: Bool) {
        self.connection = nil
        fail(.closed)
    }

    func onAboveWriteBufferHighWatermark(_ connection: Connection) {
        if !congested { congested = true; shards.replies.congestionBegan() }
    }
    func onBelowWriteBufferLowWatermark(_ connection: Connection) { endCongestion() }
    private var congested = false
    private func endCongestion() {
        if congested { congested = false; shards.replies.congestionEnded() }
    }

    /// Every waiting request gets the error; the connection is closed and forgotten.
    func fail(_ why: ShardFailure) {
        if closed { return }
        closed = true
        timer?.cancel()
        if why != .hostGone { shards.hostFailed(host, address: address) }
        let c = connection
        connection = nil
        c?.callbacks = nil
        c?.close(abort: true)
        endCongestion()
        if cxCounted { cxCounted = false; hostStats.dec(.cxActive, worker.stats) }
        shards.forget(self)
        let ops = queue[head...]
        queue = []
        head = 0
        // After a timeout, the requests whose time is up get the timeout error (a whole
        // transaction shares one deadline, so its EXEC gets it too); younger ones only lost
        // their connection.
        let now = monotonicMs()
        for op in ops {
            let timedOut = why == .timeout && op.deadlineMs != 0 && op.deadlineMs <= now
            let e = why != .timeout ? why.reply : (timedOut ? ShardFailure.timeout.reply : ShardFailure.recycled.reply)
            hostStats.dec(.rqActive, worker.stats)
            hostStats.inc(timedOut ? .rqTimeout : .rqError, worker.stats)
            e.withUnsafeBytes { op.slot.partFailed(op.part, $0) }
        }
        worker.dispatcher.deferredRelease(self)
        shards.flushQueued()
    }

    /// Fewer connections per shard after a reload: this one goes once its replies are in.
    func closeWhenIdle() {
        retiring = true
        if waiting == 0 { fail(.hostGone) }
    }
    private(set) var retiring = false

    /// A client's own connection taken back into use before it closed (a new WATCH).
    func keep() { retiring = false }

    // MARK: - op_timeout

    private func armTimer(_ deadline: UInt64) {
        guard deadline > 0, timerAt == 0 || deadline < timerAt else { return }
        if timer == nil { timer = Timer(worker.dispatcher) { [unowned(unsafe) self] in self.onTimer() } }
        timerAt = deadline
        let now = monotonicMs()
        timer?.arm(ms: deadline > now ? deadline - now : 0)
    }

    private func onTimer() {
        timerAt = 0
        guard !closed else { return }
        let now = monotonicMs()
        // Deadlines grow along the FIFO (one op_timeout per block), so the head decides.
        if head < queue.count, queue[head].deadlineMs > 0, queue[head].deadlineMs <= now {
            worker.stats.inc(factory.stats.upstreamRqTimeout)
            fail(.timeout)
            return
        }
        if let next = queue[head...].first(where: { $0.deadlineMs > 0 })?.deadlineMs { armTimer(next) }
    }
}

/// Sessions with finished replies, written once the current upstream read is processed: one
/// queue per worker, since a client's replies may come from several shard sets.
final class ReplyFlushQueue {
    private var queue: [RedisSession] = []
    /// Shard connections of this worker whose unsent requests are over their high watermark
    /// (a shard slower than its clients): while any is, clients are not read from (Envoy's
    /// upstream watermarks), so requests cannot pile up in the proxy without bound.
    private(set) var congested = 0
    private var waiting: [RedisSession] = []

    func congestionBegan() { congested += 1 }

    func congestionEnded() {
        congested -= 1
        guard congested == 0, !waiting.isEmpty else { return }
        let w = waiting
        waiting = []
        for s in w { s.resumeAfterCongestion() }
    }

    func waitForCongestion(_ s: RedisSession) { waiting.append(s) }

    func add(_ s: RedisSession) { queue.append(s) }

    func flush() {
        while !queue.isEmpty {
            let q = queue
            queue = []
            for s in q { s.flushReplies() }
        }
    }
}

/// Where a key goes: the longest matching prefix route's cluster (its prefix removed when the
/// route says so), else the block's catch-all `cluster`; and which mirrors get a copy.
final class RedisRouter {
    struct Mirror {
        let set: ShardSet
        let excludeReads: Bool
    }
    struct Route {
        let prefix: [UInt8]
        let set: ShardSet
        /// Bytes removed from the key's front before hashing and forwarding.
        let strip: Int
        let mirrors: [Mirror]

        /// A key as this route's cluster sees it (and hashes it): without the prefix when the
        /// route removes it.
        @inline(__always) func stripped(_ key: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
            strip == 0 || key.count < strip ? key : UnsafeRawBufferPointer(rebasing: key[strip...])
        }
    }
    /// Index -1 is the catch-all.
    let catchAll: Route
    let routes: [Route]
    let caseInsensitive: Bool
    /// No prefix routes and no mirrors: every key goes to the catch-all as it is.
    let simple: Bool

    init(_ c: RedisProxyConfig, _ set: (String) -> ShardSet) {
        catchAll = Route(prefix: [], set: set(c.cluster), strip: 0,
                         mirrors: c.mirrors.map { Mirror(set: set($0.cluster), excludeReads: $0.excludeReadCommands) })
        routes = c.prefixRoutes.map { r in
            Route(prefix: r.prefix, set: set(r.cluster), strip: r.removePrefix ? r.prefix.count : 0,
                  mirrors: r.mirrors.map { Mirror(set: set($0.cluster), excludeReads: $0.excludeReadCommands) })
        }
        caseInsensitive = c.prefixCaseInsensitive
        simple = routes.isEmpty && catchAll.mirrors.isEmpty
    }

    /// The route index for `key` (-1: the catch-all). Routes are longest prefix first.
    func route(_ key: UnsafeRawBufferPointer) -> Int {
        if routes.isEmpty { return -1 }
        for (i, r) in routes.enumerated() where key.count >= r.prefix.count {
            var match = true
            for j in 0..<r.prefix.count {
                let b = key[j]
                if (caseInsensitive && b &- 0x41 < 26 ? b | 0x20 : b) != r.prefix[j] { match = false; break }
            }
            if match { return i }
        }
        return -1
    }

    @inline(__always) func at(_ i: Int) -> Route { i < 0 ? catchAll : routes[i] }
}
