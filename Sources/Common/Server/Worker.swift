import CLibevent
import CShim
import Glibc

/// A session a worker keeps alive, tells when draining begins, and can force-close when
/// draining ends.
public protocol ActiveSession: AnyObject {
    /// Close now (drain timeout reached or shutdown).
    func forceClose()
    /// Draining began (SIGTERM, `/drain_listeners`): wind down the protocol's own way, once.
    /// HTTP/1.1 answers the next response with `Connection: close`, HTTP/2 sends GOAWAY, Redis
    /// finishes its pipeline; a TCP relay has nothing to say and keeps relaying until its
    /// peers finish or `drain_timeout` ends it. Sessions that start on a draining worker see
    /// `Worker.draining` instead. Called on the session's worker; may close the session.
    func onDrain()
}

extension ActiveSession {
    public func onDrain() {}
}

/// State a binary keeps per worker beyond what Common knows (http-proxy's connection pools,
/// redis-proxy's pipelines), hung on `Worker.extensionState` on first use. Runs on the worker.
public protocol WorkerExtension: AnyObject {
    /// The worker switched to new cluster snapshots (a reload, a health flip, discovery):
    /// drop or drain what belongs to hosts that left or turned unhealthy.
    func clustersChanged(_ worker: Worker)
}

/// A cluster as one worker uses it: the shared snapshot and this worker's balancers, one
/// per priority level. A pick first chooses a level by the levels' loads (by the hash key
/// when there is one, so a key keeps its level), then a host within it.
public final class WorkerCluster {
    public let snapshot: ClusterSnapshot
    private let lbs: [LoadBalancer]
    /// Level index of each host.
    private let levelOf: [Int]
    private var rng: FastRandom
    private let slab: StatsSlab

    /// `loads`: this worker's in-flight counts per host (as `snapshot.hosts`), kept across
    /// generations by the worker (`Worker.hostLoads`); fresh ones when not given.
    init(_ s: ClusterSnapshot, seed: UInt64, slab: StatsSlab, loads: [HostLoad]? = nil) {
        snapshot = s
        let shared = loads ?? s.hosts.map { _ in HostLoad() }  // one set for every level
        lbs = s.levels.map { makeLoadBalancer($0, policy: s.config.lbPolicy, seed: seed, loads: shared) }
        let index = Dictionary(uniqueKeysWithValues: s.levels.enumerated().map { ($0.element.priority, $0.offset) })
        levelOf = s.hosts.map { s.panic ? 0 : index[$0.priority] ?? 0 }
        rng = FastRandom(seed: seed ^ 0x5bd1e995)
        self.slab = slab
    }

    /// A host index, or nil when no level has a healthy host.
    public func pick(hashKey: UInt64?, attempted: [Int]) -> Int? {
        let loads = snapshot.loads
        if snapshot.allEjected { slab.inc(snapshot.stats.lbAllEjected) }
        if lbs.count == 1 {
            if loads[0] == 0 { return nil }
            if snapshot.panic { slab.inc(snapshot.stats.lbHealthyPanic) }
            return lbs[0].pick(hashKey: hashKey, attempted: attempted)
        }
        var r = hashKey.map { Int(mix64($0) % 100) } ?? rng.below(100)
        var chosen = -1
        for (i, l) in loads.enumerated() {
            if r < l { chosen = i; break }
            r -= l
        }
        if chosen < 0 { chosen = loads.firstIndex { $0 > 0 } ?? -1 }
        if chosen < 0 { return nil }
        if let h = lbs[chosen].pick(hashKey: hashKey, attempted: attempted), !attempted.contains(h) { return h }
        // Every host of that level was tried: the other levels with traffic, in order.
        for (i, l) in loads.enumerated() where l > 0 && i != chosen {
            if let h = lbs[i].pick(hashKey: hashKey, attempted: attempted), !attempted.contains(h) { return h }
        }
        return lbs[chosen].pick(hashKey: hashKey, attempted: attempted)
    }

    public func onStart(_ host: Int) { lbs[levelOf[host]].onStart(host) }
    public func onEnd(_ host: Int) { lbs[levelOf[host]].onEnd(host) }

    /// A host for a new upstream connection or socket, counting `upstream_cx_none_healthy`
    /// when there is none (the accounting every binary shares).
    public func pickHost(hashKey: UInt64?, attempted: [Int] = []) -> Int? {
        if let h = pick(hashKey: hashKey, attempted: attempted) { return h }
        slab.inc(snapshot.stats.upstreamCxNoneHealthy)
        return nil
    }

    /// A connect to `host` failed (refused, unreachable, timed out, TLS): the cluster's and
    /// the host's `cx_connect_fail`, and, when the host is to blame (`outlier`), its outlier
    /// streak (not for a local failure such as no socket to be had).
    public func hostConnectFailed(_ host: Int, timeout: Bool = false, outlier: Bool = true) {
        let cs = snapshot
        if timeout { slab.inc(cs.stats.upstreamCxConnectTimeout) }
        slab.inc(cs.stats.upstreamCxConnectFail)
        cs.hosts[host].stats.inc(.cxConnectFail, slab)
        if outlier { cs.hosts[host].outlier?.failure() }
    }

    /// An upstream connection (or UDP socket) to `host` opened: the balancer's count, the
    /// cluster's and the host's `cx_total`/`cx_active`. Every binary accounts through here.
    public func hostOpened(_ host: Int, _ slab: StatsSlab) {
        onStart(host)
        let cs = snapshot
        slab.inc(cs.stats.upstreamCxTotal)
        slab.inc(cs.stats.upstreamCxActive)
        cs.hosts[host].stats.inc(.cxTotal, slab)
        cs.hosts[host].stats.inc(.cxActive, slab)
    }

    /// That connection ended (closed, failed or abandoned): undoes `hostOpened`, counts
    /// `upstream_cx_destroy`.
    public func hostClosed(_ host: Int, _ slab: StatsSlab) {
        onEnd(host)
        let cs = snapshot
        slab.dec(cs.stats.upstreamCxActive)
        cs.hosts[host].stats.dec(.cxActive, slab)
        slab.inc(cs.stats.upstreamCxDestroy)
    }
}

/// One worker thread's world: its loop, its listener sockets, its sessions, its stats slab,
/// its buffer pool and its view of the clusters. Nothing here is touched by another thread;
/// the main thread reaches a worker only through `WorkerHandle.post`.
public final class Worker {
    public let index: Int
    public let dispatcher: Dispatcher
    public let blocks = BlockPool()
    public let pipes = PipePool()
    /// Upstream TLS session tickets, per client context and server name (this worker's own).
    public let tlsSessions = TlsSessionCache()
    public let stats: StatsSlab
    public let serverStats: ServerStats
    /// The config generation new connections use.
    public private(set) var snapshot: ServerSnapshot?
    /// Clusters of the current generation, by name (config time and admin; the data path
    /// uses `cluster(slot:)`).
    public private(set) var clusters: [String: WorkerCluster] = [:]
    /// The same clusters by `ClusterSnapshot.slot`; nil for a slot whose cluster was removed.
    private var bySlot: [WorkerCluster?] = []

    /// The cluster in `slot` (resolved at config time from its name), or nil when a reload
    /// removed it: an array index per request, no string hashing.
    @inline(__always) public func cluster(slot: Int) -> WorkerCluster? {
        slot < bySlot.count ? bySlot[slot] : nil
    }
    /// Access logs per listener name, current generation.
    public private(set) var accessLogs: [String: [AccessLogWriter]] = [:]
    private var listeners: [String: WorkerListener] = [:]
    private var datagramListeners: [String: DatagramListener] = [:]
    private var sessions: [ObjectIdentifier: ActiveSession] = [:]
    private var flushTimer: Timer?
    private var connectionIds: UInt64
    /// The binary's own per-worker state (`WorkerExtension`), nil until it makes one.
    public var extensionState: WorkerExtension?
    /// Sessions open on this worker (read by the exact balancer, racy reads are fine).
    public var activeSessions: Int { sessions.count }

    public init(index: Int, stats: StatsSlab, serverStats: ServerStats) {
        self.index = index
        self.dispatcher = Dispatcher(name: "worker_\(index)")
        self.stats = stats
        self.serverStats = serverStats
        self.connectionIds = UInt64(index) << 48
        flushTimer = Timer(dispatcher) { [unowned self] in
            for logs in accessLogs.values { for l in logs { l.flush() } }
            flushTimer?.arm(ms: 1000)
        }
        flushTimer?.arm(ms: 1000)
    }

    /// Each cluster's in-flight counts by host address (least_request clusters only), carried
    /// from one snapshot to the next; hosts that left are forgotten here (connections still
    /// open to them hold their own reference).
    private var hostLoads: [String: [SocketAddress: HostLoad]] = [:]

    /// The in-flight counts for `c`'s hosts: the ones already kept for an address, new ones
    /// for new hosts.
    private func carriedLoads(cluster name: String, _ c: ClusterSnapshot) -> [HostLoad] {
        let old = hostLoads[name] ?? [:]
        var next: [SocketAddress: HostLoad] = [:]
        next.reserveCapacity(c.hosts.count)
        let loads = c.hosts.map { h -> HostLoad in
            let l = old[h.address] ?? HostLoad()
            next[h.address] = l
            return l
        }
        hostLoads[name] = next
        return loads
    }

    /// Switches new connections to `s`; open sessions keep the generation they started with.
    public func apply(_ s: ServerSnapshot) {
        let old = clusters
        var next: [String: WorkerCluster] = [:]
        for (name, c) in s.clusters {
            if let o = old[name], o.snapshot === c { next[name] = o } else {
                next[name] = WorkerCluster(c, seed: UInt64(index + 1) &* 0x9e3779b97f4a7c15 ^ UInt64(s.generation), slab: stats,
                                           loads: c.config.lbPolicy == .leastRequest ? carriedLoads(cluster: name, c) : nil)
            }
        }
        clusters = next
        for i in bySlot.indices { bySlot[i] = nil }
        for c in next.values {
            while bySlot.count <= c.snapshot.slot { bySlot.append(nil) }
            bySlot[c.snapshot.slot] = c
        }
        hostLoads = hostLoads.filter { next[$0.key] != nil }
        extensionState?.clustersChanged(self)
        // Access logs follow config generations, not cluster updates (health, discovery).
        if snapshot?.generation != s.generation {
            for logs in accessLogs.values { for l in logs { l.flush() } }
            // What a stalled file has not taken yet carries over to the writer of the same path.
            var unwritten: [String: AccessLogWriter] = [:]
            for logs in accessLogs.values { for l in logs where l.buffered > 0 { unwritten[l.path] = l } }
            var logs: [String: [AccessLogWriter]] = [:]
            for (name, l) in s.listeners where !l.config.accessLogs.isEmpty {
                logs[name] = l.config.accessLogs.map {
                    let w = AccessLogWriter(config: $0, slab: stats, stats: serverStats.accessLog, dispatcher: dispatcher)
                    if let old = unwritten.removeValue(forKey: w.path) { w.takeOver(old) }
                    return w
                }
            }
            accessLogs = logs
            tlsSessions.retain(contexts: Set(s.clusters.values.compactMap { $0.config.tls?.context.id }))
        }
        snapshot = s
        for (name, wl) in listeners { if let r = s.listeners[name] { wl.runtime = r } }
        for (name, dl) in datagramListeners { if let r = s.listeners[name] { dl.update(r) } }
    }

    /// Starts accepting on `fd` (a socket bound by the main thread) for listener `name`.
    public func addListener(name: String, fd: Int32) {
        guard let r = snapshot?.listeners[name] else { Glibc.close(fd); return }
        if let f = r.factory as? DatagramFilterFactory {
            datagramListeners[name]?.stop()
            datagramListeners[name] = f.attach(worker: self, fd: fd, listener: r)
            return
        }
        listeners[name]?.stop()
        listeners[name] = WorkerListener(worker: self, fd: fd, runtime: r)
    }

    /// Stops accepting on a listener (removed by reload, or draining). Open sessions stay.
    public func removeListener(name: String) {
        listeners.removeValue(forKey: name)?.stop()
        datagramListeners.removeValue(forKey: name)?.stop()
    }

    public func stopListening() {
        for l in listeners.values { l.stop() }
        listeners.removeAll()
        for l in datagramListeners.values { l.stop() }
        datagramListeners.removeAll()
    }

    public func reopenAccessLogs() {
        for logs in accessLogs.values { for l in logs { l.reopen() } }
    }

    public func flushAccessLogs() {
        for logs in accessLogs.values { for l in logs { l.flush() } }
    }

    /// Keeps a session alive until `untrack`.
    public func track(_ s: ActiveSession) { sessions[ObjectIdentifier(s)] = s }

    /// Forgets a session; it is released after the current callbacks.
    public func untrack(_ s: ActiveSession) {
        if let s = sessions.removeValue(forKey: ObjectIdentifier(s)) { dispatcher.deferredRelease(s) }
    }

    /// Draining began: no new connections arrive (the listeners are stopped) and each open
    /// session hears it once. Sessions that start later (a handshake finishing) check this.
    public private(set) var draining = false

    /// Tells every open session that draining began (`ActiveSession.onDrain`), once.
    public func drain() {
        if draining { return }
        draining = true
        for s in Array(sessions.values) { s.onDrain() }
    }

    /// Sessions open now (tracked).
    public var sessionCount: Int { sessions.count }

    /// Closes every session (drain timeout, shutdown).
    public func closeAll() {
        for s in Array(sessions.values) { s.forceClose() }
    }

    public func nextConnectionId() -> UInt64 { connectionIds += 1; return connectionIds }

    /// A connection accepted by this worker's socket, or handed over by the exact balancer.
    public func accepted(fd: Int32, remote: SocketAddress?, runtime: ListenerRuntime) {
        let cfg = runtime.config
        if let max = cfg.maxConnections, !runtime.openConnections.tryAcquire(limit: max) {
            stats.inc(runtime.stats.downstreamCxOverflow)
            Glibc.close(fd)
            return
        }
        if cfg.maxConnections == nil { _ = runtime.openConnections.tryAcquire(limit: Int.max) }
        stats.inc(runtime.stats.downstreamCxTotal)
        stats.inc(runtime.stats.downstreamCxActive)
        stats.inc(serverStats.totalConnections)
        let conn = Connection(worker: self, fd: fd, remote: remote, bufferLimit: cfg.bufferLimit)
        let ctx = DownstreamContext(remote: remote, fd: fd, listener: runtime,
                                    startMs: monotonicMs(), startWallMs: wallMs(), connectionId: nextConnectionId())
        if runtime.hasListenerFilters {
            let filters = ListenerFilters(worker: self, connection: conn, context: ctx)
            track(filters)
            filters.start()
        } else {
            runtime.factory.createFilters(worker: self, connection: conn, context: ctx)
        }
    }

    /// Bookkeeping when a downstream connection ends (whatever filter owned it).
    public func downstreamClosed(_ ctx: DownstreamContext) {
        let r = ctx.listener
        stats.dec(r.stats.downstreamCxActive)
        stats.inc(r.stats.downstreamCxDestroy)
        stats.dec(serverStats.totalConnections)
        stats.record(r.stats.downstreamCxLengthMs, monotonicMs() &- ctx.startMs)
        r.openConnections.release()
    }

    /// Runs the loop until told to exit.
    public func run() { dispatcher.run() }
}

/// The main thread's way to reach a worker: posts run on the worker's thread with the worker.
public struct WorkerHandle: Sendable {
    public let index: Int
    public let dispatcher: DispatcherHandle
    private let ref: UnsafeWorkerRef

    init(_ w: Worker) {
        index = w.index; dispatcher = w.dispatcher.handle; ref = UnsafeWorkerRef(w)
    }

    /// Runs `body` on the worker's thread.
    public func post(_ body: @escaping @Sendable (Worker) -> Void) {
        let r = ref
        dispatcher.post { body(r.worker) }
    }
}

/// A pointer to a thread-confined Worker, dereferenced only on that worker's own thread (inside
/// a closure it runs). The worker outlives every post: it is freed after its loop has exited.
struct UnsafeWorkerRef: @unchecked Sendable {  // thread boundary: dereferenced only on the owning worker's thread
    private let ptr: Unmanaged<Worker>
    init(_ w: Worker) { ptr = .passUnretained(w) }
    var worker: Worker { ptr.takeUnretainedValue() }
}

extension Worker {
    public var handle: WorkerHandle { WorkerHandle(self) }
}

/// A worker's listening socket for one listener.
final class WorkerListener {
    unowned let worker: Worker
    var runtime: ListenerRuntime
    private var acceptor: Acceptor?

    init(worker: Worker, fd: Int32, runtime: ListenerRuntime) {
        self.worker = worker
        self.runtime = runtime
        // `self.runtime`, not the parameter: a reload replaces it.
        acceptor = Acceptor(dispatcher: worker.dispatcher, fd: fd, onAccept: { [unowned self] fd, remote in
            self.worker.accepted(fd: fd, remote: remote, runtime: self.runtime)
        }, onResourceError: { [unowned self] in
            self.worker.stats.inc(self.runtime.stats.downstreamCxAcceptError)
        })
    }

    func stop() { acceptor?.stop() }
}
