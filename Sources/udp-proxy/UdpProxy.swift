import CLibevent
import CShim
import Common
import Glibc

/// Builds a listener's UDP relays for one config generation.
final class UdpProxyFactory: DatagramFilterFactory {
    let config: UdpProxyConfig
    let stats: UdpProxyStats
    /// Sessions of this listener across workers (max_sessions).
    let sessions: SharedCount
    /// The most sessions at once: `max_sessions`, else the cluster's
    /// `circuit_breakers.max_connections`, else 1024 (Envoy caps UDP sessions with the cluster's
    /// max_connections, whose default is 1024). Each session holds a socket: spoofed sources
    /// must not be able to take every descriptor.
    let sessionLimit: Int
    static let defaultSessionLimit = 1024

    init(block: any ListenerFilterConfig, store: StatsStore, sessions: SharedCount, clusters: [String: ClusterSnapshot]) {
        guard let c = block as? UdpProxyConfig else { preconditionFailure("udp-proxy listener without a udp block") }
        config = c
        stats = UdpProxyStats(store: store, prefix: c.statPrefix)
        self.sessions = sessions
        sessionLimit = c.maxSessions ?? clusters[c.cluster]?.config.maxConnections ?? UdpProxyFactory.defaultSessionLimit
    }

    func attach(worker: Worker, fd: Int32, listener: ListenerRuntime) -> DatagramListener {
        UdpRelay(worker: worker, fd: fd, listener: listener)
    }
}

/// A client, as a hashable value with no allocation: family, port and up to 16 address bytes.
struct ClientKey: Hashable {
    let hi: UInt64
    let lo: UInt64
    let port: UInt16
    let v6: Bool

    init(_ ss: UnsafeRawPointer) {
        if ss.load(as: sa_family_t.self) == sa_family_t(AF_INET6) {
            let s = ss.load(as: sockaddr_in6.self)
            var a = s.sin6_addr
            let (h, l) = withUnsafeBytes(of: &a) { ($0.load(fromByteOffset: 0, as: UInt64.self), $0.load(fromByteOffset: 8, as: UInt64.self)) }
            hi = h; lo = l; port = s.sin6_port; v6 = true
        } else {
            let s = ss.load(as: sockaddr_in.self)
            hi = 0; lo = UInt64(s.sin_addr.s_addr); port = s.sin_port; v6 = false
        }
    }
}

/// One worker's UDP listener socket: datagrams from a client go to that client's session
/// (created on its first datagram: a host picked by the cluster's balancer, a socket connected
/// to it); replies come back through the listener socket to the client.
///
/// ```
/// client ──dgram──► listener fd ──► sessions[client] ──send──► upstream fd (connected) ──► host
/// client ◄─sendto── listener fd ◄────── recv ◄───────────────── upstream fd ◄────────────── host
/// ```
/// A datagram is never split or merged. I/O is batched: up to 16 datagrams per recvmmsg, and
/// the replies a session finds waiting go to the client in one sendmmsg. The two batches
/// (16 × 64 KiB each) are this relay's, reused: no allocation per datagram once a session exists.
final class UdpRelay: DatagramListener {
    unowned let worker: Worker
    let fd: Int32
    var listener: ListenerRuntime
    private var event: OpaquePointer?
    var sessions: [ClientKey: UdpSession] = [:]
    static let batchSize: Int32 = 16
    /// Datagrams from clients.
    let inbound: OpaquePointer
    /// Replies from upstreams, shared by this relay's sessions (one runs at a time).
    let replies: OpaquePointer
    /// The listener's cluster as this worker sees it now (refreshed by every update: reloads,
    /// health and discovery changes); nil when no such cluster exists.
    private(set) var cluster: WorkerCluster?

    init(worker: Worker, fd: Int32, listener: ListenerRuntime) {
        self.worker = worker; self.fd = fd; self.listener = listener
        guard let a = cshim_batch_new(UdpRelay.batchSize, 65536), let b = cshim_batch_new(UdpRelay.batchSize, 65536) else {
            preconditionFailure("out of memory")
        }
        inbound = a; replies = b
        event = event_new(worker.dispatcher.base, fd, Int16(EV_READ | EV_PERSIST), { _, _, ctx in
            Unmanaged<UdpRelay>.fromOpaque(ctx!)._withUnsafeGuaranteedRef { $0.onReadable() }
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
        cluster = worker.clusters[factory.config.cluster]
    }

    deinit {
        stop()
        for s in Array(sessions.values) { s.close(reason: nil) }
        cshim_batch_free(inbound)
        cshim_batch_free(replies)
    }

    var factory: UdpProxyFactory { listener.factory as! UdpProxyFactory }  // this listener's own factory type

    func update(_ l: ListenerRuntime) {
        listener = l
        cluster = worker.clusters[factory.config.cluster]
    }

    func stop() {
        if let e = event { event_free(e); event = nil; Glibc.close(fd) }
    }

    private func onReadable() {
        let f = factory
        for _ in 0..<4 {
            let n = cshim_batch_recv(inbound, fd, UdpRelay.batchSize)
            if n < 0 {
                if n != -EAGAIN && n != -EINTR { worker.stats.inc(f.stats.downstreamSessRxErrors) }
                return
            }
            for i in 0..<n {
                let len = cshim_batch_len(inbound, i)
                let from = cshim_batch_addr(inbound, i)!
                worker.stats.inc(f.stats.downstreamSessRxDatagrams)
                worker.stats.add(f.stats.downstreamSessRxBytes, len)
                let key = ClientKey(UnsafeRawPointer(from))
                var session = sessions[key]
                if session == nil {
                    let client = SocketAddress(bytes: UnsafeRawPointer(from), length: Int(cshim_batch_addrlen(inbound, i)))
                    session = UdpSession.open(relay: self, key: key, client: client)
                    if session == nil { continue }
                }
                session!.forward(cshim_batch_data(inbound, i)!, len)
            }
            if n < UdpRelay.batchSize { return }  // drained
        }
    }
}

/// One upstream socket of a session: connected to one host, with its own read event. A
/// session has one (the host picked when it began) or, with per-packet balancing, one per
/// host its datagrams went to.
final class UpstreamLeg {
    unowned(unsafe) let session: UdpSession
    /// The cluster generation the host was picked from (its stats and balancer state).
    let cluster: WorkerCluster
    let host: Int
    let fd: Int32
    private var event: OpaquePointer?

    init(session: UdpSession, cluster: WorkerCluster, host: Int, fd: Int32, base: OpaquePointer) {
        self.session = session; self.cluster = cluster; self.host = host; self.fd = fd
        event = event_new(base, fd, Int16(EV_READ | EV_PERSIST), { _, _, ctx in
            Unmanaged<UpstreamLeg>.fromOpaque(ctx!)._withUnsafeGuaranteedRef { $0.session.onUpstreamReadable($0) }
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
    }

    var address: SocketAddress { cluster.snapshot.hosts[host].address }

    /// An ICMP port unreachable: the host's port is closed.
    func refused() { cluster.snapshot.hosts[host].outlier?.failure() }

    func close() {
        if let e = event { event_free(e); event = nil; Glibc.close(fd) }
    }
}

/// One client's session: its upstream legs and idle timer.
final class UdpSession {
    unowned(unsafe) let relay: UdpRelay
    let key: ClientKey
    let client: SocketAddress
    let factory: UdpProxyFactory
    private let perPacket: Bool
    /// Sticky: exactly one. Per packet: one per host used so far.
    private var legs: [UpstreamLeg] = []
    /// Per packet: the index in `legs` of each host of `indexed` (-1: none yet).
    private var legOfHost: [Int] = []
    private var indexed: WorkerCluster?
    /// The leg the last datagram went to (the access log's upstream host).
    private var lastLeg = 0
    private var timer: Timer?
    private var lastActivity = monotonicMs()
    private var replies = 0
    private var closed = false
    /// For the access log: when the session began, bytes each way, why it ended.
    private let startMs = monotonicMs()
    private let startWallMs = wallMs()
    private var bytesIn: UInt64 = 0
    private var bytesOut: UInt64 = 0
    private var flags = ""

    static func open(relay: UdpRelay, key: ClientKey, client: SocketAddress) -> UdpSession? {
        let f = relay.factory
        let w = relay.worker
        guard let c = relay.cluster else {
            w.stats.inc(f.stats.downstreamSessNoRoute)
            return nil
        }
        if !f.sessions.tryAcquire(limit: f.sessionLimit) {
            w.stats.inc(f.stats.downstreamSessOverflow)
            return nil
        }
        let s = UdpSession(relay: relay, key: key, client: client, factory: f)
        if !f.config.perPacket {
            // Sticky: the host is chosen once, by the balancer (and the client's IP when hashing).
            let hashKey: UInt64? = f.config.hashSourceIp ? fnv1a64(client.ipBytes) : nil
            guard let h = c.pickHost(hashKey: hashKey) else {
                s.abandon()
                return nil
            }
            guard s.addLeg(cluster: c, host: h) != nil else {
                s.abandon()
                return nil
            }
        }
        relay.sessions[key] = s
        w.stats.inc(f.stats.downstreamSessTotal)
        w.stats.inc(f.stats.downstreamSessActive)
        return s
    }

    private init(relay: UdpRelay, key: ClientKey, client: SocketAddress, factory: UdpProxyFactory) {
        self.relay = relay; self.key = key; self.client = client; self.factory = factory
        perPacket = factory.config.perPacket
        timer = Timer(relay.worker.dispatcher) { [unowned self] in onTimer() }
        timer?.arm(ms: factory.config.idleTimeoutMs)
    }

    /// A session that never started (no host, no socket): undo `open`'s reservation.
    private func abandon() {
        closed = true
        timer?.cancel()
        factory.sessions.release()
    }

    deinit { if !closed { close(reason: nil) } }

    /// A socket connected to `host`, counted as an upstream connection of its cluster.
    private func addLeg(cluster c: WorkerCluster, host h: Int) -> UpstreamLeg? {
        let w = relay.worker
        let fd = c.snapshot.hosts[h].address.withSockAddr { cshim_udp_connect($0, $1) }
        guard fd >= 0 else {
            c.hostConnectFailed(h, outlier: false)  // no socket: a local failure
            return nil
        }
        let leg = UpstreamLeg(session: self, cluster: c, host: h, fd: fd, base: w.dispatcher.base)
        legs.append(leg)
        c.hostOpened(h, w.stats)
        return leg
    }

    /// Per-packet balancing: the cluster's current generation picks a host for this datagram
    /// (so it follows health changes mid-session); the session's socket to that host carries it.
    private func legForPacket() -> Int? {
        let w = relay.worker
        guard let c = relay.cluster else {
            w.stats.inc(factory.stats.downstreamSessNoRoute)
            return nil
        }
        if c !== indexed { reindex(c) }
        guard let h = c.pickHost(hashKey: nil) else {
            return nil
        }
        let i = legOfHost[h]
        if i >= 0 { return i }
        guard addLeg(cluster: c, host: h) != nil else { return nil }
        legOfHost[h] = legs.count - 1
        return legs.count - 1
    }

    /// Maps the hosts of a new cluster generation to the legs already open (by address).
    private func reindex(_ c: WorkerCluster) {
        indexed = c
        legOfHost = Array(repeating: -1, count: c.snapshot.hosts.count)
        if legs.isEmpty { return }
        var byAddress: [SocketAddress: Int] = [:]
        for (i, l) in legs.enumerated() { byAddress[l.address] = i }
        for (h, host) in c.snapshot.hosts.enumerated() { legOfHost[h] = byAddress[host.address] ?? -1 }
    }

    /// Sends one datagram to the upstream.
    func forward(_ data: UnsafeMutableRawPointer, _ n: Int) {
        lastActivity = monotonicMs()
        bytesIn &+= UInt64(n)
        var i = 0
        if perPacket {
            guard let l = legForPacket() else {
                relay.worker.stats.inc(factory.stats.downstreamSessTxErrors)
                return
            }
            i = l
            lastLeg = l
        }
        let leg = legs[i]
        let sent = send(leg.fd, data, n, 0)
        if sent == n {
            relay.worker.stats.add(leg.cluster.snapshot.stats.upstreamCxTxBytesTotal, n)
        } else {
            // ICMP unreachable from an earlier datagram, or a full socket buffer: this one is lost.
            relay.worker.stats.inc(factory.stats.downstreamSessTxErrors)
            if sent < 0 && errno == ECONNREFUSED { leg.refused() }
        }
    }

    /// Replies waiting on one leg go back to the client, in one sendmmsg per batch.
    func onUpstreamReadable(_ leg: UpstreamLeg) {
        let w = relay.worker
        let batch = relay.replies
        for _ in 0..<4 {
            let n = cshim_batch_recv(batch, leg.fd, UdpRelay.batchSize)
            if n < 0 {
                if n == -EAGAIN || n == -EINTR { return }
                w.stats.inc(factory.stats.upstreamRxErrors)
                if n == -ECONNREFUSED { leg.refused() }
                return
            }
            lastActivity = monotonicMs()
            // Never more replies than `responses` allows.
            let limit = factory.config.responses
            let count = limit > 0 ? min(Int(n), limit - replies) : Int(n)
            var bytes = 0
            for i in 0..<count { bytes += cshim_batch_len(batch, Int32(i)) }
            w.stats.add(leg.cluster.snapshot.stats.upstreamCxRxBytesTotal, bytes)
            let sent = client.withSockAddr { cshim_batch_send_to(batch, relay.fd, Int32(count), $0, $1) }
            if sent > 0 {
                w.stats.add(factory.stats.downstreamSessTxDatagrams, Int(sent))
                var sentBytes = 0
                for i in 0..<Int(sent) { sentBytes += cshim_batch_len(batch, Int32(i)) }
                w.stats.add(factory.stats.downstreamSessTxBytes, sentBytes)
                bytesOut &+= UInt64(sentBytes)
            }
            if Int(sent) < count { w.stats.add(factory.stats.downstreamSessTxErrors, count - max(Int(sent), 0)) }
            replies += count
            if limit > 0 && replies >= limit {
                w.stats.inc(factory.stats.responsesComplete)
                close(reason: nil)
                return
            }
            if n < UdpRelay.batchSize { return }
        }
    }

    private func onTimer() {
        let idle = factory.config.idleTimeoutMs
        let quiet = monotonicMs() &- lastActivity
        if quiet >= idle {
            relay.worker.stats.inc(factory.stats.idleTimeout)
            flags = "SI"
            close(reason: nil)
        } else {
            timer?.arm(ms: idle - quiet)
        }
    }

    /// Ends the session: frees its sockets, settles stats, forgets it (released after the
    /// current callbacks).
    func close(reason: String?) {
        if closed { return }
        closed = true
        timer?.cancel()
        let w = relay.worker
        for leg in legs {
            leg.close()
            leg.cluster.hostClosed(leg.host, w.stats)
        }
        w.stats.dec(factory.stats.downstreamSessActive)
        factory.sessions.release()
        if let logs = w.accessLogs[relay.listener.name] {
            var e = AccessLogEntry()
            e.startWallMs = startWallMs
            e.durationMs = monotonicMs() &- startMs
            e.downstreamRemote = client
            e.downstreamLocal = SocketAddress.local(of: relay.fd)
            if lastLeg < legs.count {
                e.upstreamHost = legs[lastLeg].address
                e.cluster = legs[lastLeg].cluster.snapshot.name
            }
            e.bytesReceived = bytesIn
            e.bytesSent = bytesOut
            e.responseFlags = flags
            for l in logs { l.log(e) }
        }
        // Keep the removed reference and hand it to the graveyard: dropping it here would free
        // this session inside its own callback (callbacks hold no reference). Its legs go with it.
        if relay.sessions[key] === self, let me = relay.sessions.removeValue(forKey: key) {
            w.dispatcher.deferredRelease(me)
        }
    }
}
