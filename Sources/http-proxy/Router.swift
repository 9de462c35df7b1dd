import Common

/// The router: the last decoder filter of every stream (Envoy's router filter). It matches the
/// route, applies rewrites and header mutations, picks a host of the route's cluster, takes a
/// connection from that host's pool and forwards the request; it retries per the route's
/// policy (with back-off, only while nothing of the response reached the client and the
/// request body is still replayable) and enforces the route and per-try timeouts.
final class Router: HttpDecoderFilter {
    let factory: HttpProxyFactory
    unowned(unsafe) var stream: HttpStream!
    private var route: RouteEntry?
    private var forward: ForwardAction?
    private var cluster: WorkerCluster?
    private var cstats: UpstreamRequestStats?
    /// The routed cluster, as an index into the route table's `clusterNames` (-1: none yet).
    private(set) var clusterIndex = -1
    private(set) var attempt: UpstreamAttempt? {
        // A dropped attempt is usually on the stack (its client is calling it): freed after this event.
        didSet { if let old = oldValue, old !== attempt { stream.worker.dispatcher.deferredRelease(old) } }
    }
    /// The host of the first attempt (-1: none yet) and those of retries (no array for the
    /// common request that is never retried).
    private var firstHost = -1
    private var retryHosts: [Int] = []
    private var retriesLeft = 0
    private var retriesDone = 0
    private var retryPolicy: RetryPolicy?
    private var hashKey: UInt64?
    /// The request had a body (its headers did not end the stream).
    private var hasBody = false
    /// The client sent the whole request.
    private var requestComplete = false
    private var trailers: HeaderMap?
    /// Body bytes not yet written upstream (while connecting, or for a retry).
    private var pendingBody: Buffer?
    /// Everything the client sent, kept for a retry while it fits `max_request_body_buffer`.
    private var replay: Buffer?
    private var replayable = true
    private var globalDeadline: UInt64 = 0
    /// The route timeout of a request still arriving: it starts when the request has ended
    /// (Envoy's), so a slow upload is not cut by a timeout meant for the response.
    private var pendingTimeoutMs: UInt64 = 0
    private var perTryDeadline: UInt64 = 0
    private var retryTimer: Timer?
    private var pausedDownstream = false
    private var pausedUpstream = false
    private var holdsRetrySlot = false
    /// The `max_retries` breaker count the held retry slot took (nil: none).
    private var heldRetries: SharedCount?

    init(factory: HttpProxyFactory) { self.factory = factory }

    private var worker: Worker { stream.worker }

    /// The timeout of a gRPC request: with `max_grpc_timeout`, its `grpc-timeout` (none: no
    /// limit) capped by it (0: no cap), as Envoy; without it, the route timeout, lowered to
    /// `grpc-timeout` when that is shorter (nothing waits past the client's deadline).
    static func grpcTimeoutMs(_ f: ForwardAction, _ h: HeaderMap) -> UInt64 {
        let asked = h.value("grpc-timeout").flatMap { Grpc.timeoutMs($0) }.map { max($0, 1) }
        if let cap = f.maxGrpcTimeoutMs {
            guard let asked else { return cap }
            return cap == 0 ? asked : min(asked, cap)
        }
        guard let asked else { return f.timeoutMs }
        return f.timeoutMs == 0 ? asked : min(asked, f.timeoutMs)
    }

    // MARK: - Decoding

    func decodeHeaders(_ h: HeaderMap, endStream: Bool) -> FilterHeadersStatus {
        hasBody = !endStream
        requestComplete = endStream
        if let location = factory.routeTable.tlsRedirect(h) {
            worker.stats.inc(factory.stats.rqRedirect)
            stream.sendLocalReply(301, "", flags: "", extraHeaders: [("location", location)])
            return .stopIteration
        }
        guard let r = stream.route else {
            worker.stats.inc(factory.stats.noRoute)
            stream.sendLocalReply(404, "no route", flags: "NR")
            return .stopIteration
        }
        route = r
        switch r.action {
        case .directResponse(let status, let body):
            worker.stats.inc(factory.stats.rqDirectResponse)
            stream.sendLocalReply(status, body, flags: "", rawBody: true)
            return .stopIteration
        case .redirect(let rd):
            worker.stats.inc(factory.stats.rqRedirect)
            let scheme = h.value(.xForwardedProto) ?? "http"
            stream.sendLocalReply(rd.responseCode, "", flags: "", extraHeaders: [("location", r.redirectLocation(h, scheme: scheme))])
            return .stopIteration
        case .forward:
            guard let f = r.forward else { return .stopIteration }
            forward = f
            if let idle = f.idleTimeoutMs {
                // The route's idle_timeout replaces stream_idle_timeout for this stream (Envoy).
                stream.cm.setStreamIdleTimeout(stream, idle)
            }
            let index = r.pickClusterIndex(random: stream.cm.nextRandom()) ?? 0
            cstats = factory.clusterStats[index]
            clusterIndex = index
            guard let wc = worker.cluster(slot: factory.clusterSlots[index]) else {
                worker.stats.inc(factory.stats.noCluster)
                stream.sendLocalReply(503, "no cluster", flags: "NC")
                return .stopIteration
            }
            if case .connect = r.match.path, f.forwardConnect,
               (wc.snapshot.config.binaryOptions as? HttpClusterOptions)?.upstreamProtocol == .http2 {
                // An HTTP/2 host would need RFC 8441-style CONNECT from this side: not built.
                stream.sendLocalReply(501, "CONNECT forwarding needs an HTTP/1.1 cluster", flags: "")
                return .stopIteration
            }
            cluster = wc
            stream.cm.workerState.requestStarted(wc.snapshot.slot)
            stream.info.clusterName = wc.snapshot.name
            if case .connect = r.match.path, !f.forwardConnect {
                hashKey = computeHashKey(f.hashPolicy, h)  // the tunnel's host is picked by it too
                startConnectTermination(wc)
                return .stopIteration
            }
            for m in r.requestHeaderMutations { HeaderMutator.apply(m, to: h, stream: stream) }
            if let p = r.rewrittenPath(h) { h.set(.path, p) }
            if case .literal(let host) = f.hostRewrite { h.set(.authority, host) }
            hashKey = computeHashKey(f.hashPolicy, h)
            if let p = f.retryPolicy, p.numRetries > 0, !p.retryOn.isEmpty {
                retryPolicy = p
                retriesLeft = p.numRetries
                if hasBody { replay = Buffer(pool: worker.blocks) }
            }
            let timeout = stream.isGrpc ? Router.grpcTimeoutMs(f, h) : f.timeoutMs
            if timeout > 0 { if requestComplete { globalDeadline = monotonicMs() &+ timeout } else { pendingTimeoutMs = timeout } }
            startAttempt()
            return .stopIteration
        }
    }

    func decodeData(_ data: Buffer, endStream: Bool) -> FilterDataStatus {
        if endStream { requestEnded() }
        if let replay, replayable {
            if replay.count + data.count <= factory.settings.maxRequestBodyBuffer {
                replay.append(data.readable)
            } else {
                replayable = false
                self.replay = nil
            }
        }
        if let a = attempt, let c = a.client {
            c.sendData(data, endStream: endStream)
        } else {
            let p = pendingBody ?? Buffer(pool: worker.blocks)
            pendingBody = p
            p.moveAll(from: data)
            // While no connection takes the body, the client waits (bounded by the buffer limit).
            if p.count > stream.cm.streamFlowLimit && !pausedDownstream {
                pausedDownstream = true
                stream.cm.readDisable(stream)
            }
        }
        return .stopIterationNoBuffer
    }

    func decodeTrailers(_ t: HeaderMap) -> FilterHeadersStatus {
        requestEnded()
        trailers = t
        if let a = attempt, let c = a.client { c.sendTrailers(t) }
        return .stopIteration
    }

    func onStreamDone() {
        abandonUpstream()
        if let wc = cluster { stream.cm.workerState.requestEnded(wc.snapshot.slot) }
        if pausedDownstream { pausedDownstream = false; stream.cm.readEnable(stream) }
    }

    // MARK: - CONNECT termination

    private var terminator: ConnectTerminator?

    private func startConnectTermination(_ wc: WorkerCluster) {
        let t = ConnectTerminator(router: self)
        terminator = t
        let cm = stream.cm
        t.start(worker: worker, cluster: wc, settings: HostConnector.Settings(
            hashKey: hashKey, maxAttempts: 1 + (forward?.retryPolicy?.numRetries ?? 0),
            bufferLimit: cm.factory.settings.bufferLimit, source: cm.context.remote))
    }

    /// The TCP connection to the host is up: `200` to the client, then the relay.
    func connectTunnelReady(_ c: Connection, _ t: ConnectTerminator) {
        guard !stream.done, !stream.responseStarted else { t.release(remoteClosed: false); return }
        stream.info.upstreamHost = t.hostAddress
        let h = HeaderMap()
        h.add(":status", "200")
        responseDone()
        stream.tunnel = UpstreamTunnel(connection: c) { _ in t.release(remoteClosed: false) }
        stream.encodeHeaders(h, endStream: true)
    }

    func connectTunnelFailed(_ flags: String) {
        terminator = nil
        stream.sendLocalReply(503, "upstream connect error", flags: flags)
    }

    // MARK: - Attempts

    private func startAttempt() {
        guard var wc = cluster, let cstats else { return }
        if firstHost >= 0, let now = worker.cluster(slot: wc.snapshot.slot), now !== wc {
            // The cluster changed since the last try (discovery, health, a reload): a retry
            // picks from what it is now, never from hosts that have left. Hosts already tried
            // are found again by address.
            let tried = ([firstHost] + retryHosts).map { wc.snapshot.hosts[$0].address }
            let again = now.snapshot.hosts.indices.filter { tried.contains(now.snapshot.hosts[$0].address) }
            firstHost = again.first ?? -1
            retryHosts = Array(again.dropFirst())
            if firstHost < 0 { retryHosts = [] }
            wc = now
            cluster = now
        }
        guard let h = wc.pickHost(hashKey: hashKey, attempted: firstHost < 0 ? [] : [firstHost] + retryHosts) else {
            stream.sendLocalReply(503, "no healthy upstream", flags: "UH")
            return
        }
        if firstHost < 0 { firstHost = h } else { retryHosts.append(h) }
        let address = wc.snapshot.hosts[h].address
        stream.info.upstreamHost = address
        if case .auto = forward?.hostRewrite { stream.requestHeaders.set(.authority, address.description) }
        // HTTP/1.0 may come without Host; HTTP/1.1 upstreams need one: the host's address.
        if !stream.requestHeaders.has(.authority) { stream.requestHeaders.add(.authority, address.description) }
        let pool = stream.cm.workerState.pool(wc, host: h, stats: cstats)
        let a = UpstreamAttempt(router: self, pool: pool, cluster: wc, host: h)
        attempt = a
        if let p = retryPolicy, p.perTryTimeoutMs > 0 { perTryDeadline = monotonicMs() &+ p.perTryTimeoutMs }
        updateDeadline()
        checkout(a, pool)
    }

    private func checkout(_ a: UpstreamAttempt, _ pool: HostPool) {
        switch pool.pool.checkout(a) {
        case .attached(let id):
            if let c = pool.stream(id) { a.attached(c) } else { a.poolFailed(.connectFailure) }
        case .queued(let r):
            a.queued = r
        case .failed(let reason):
            a.poolFailed(reason)
        }
    }

    /// A reload replaced the pool `a` waited in (its cluster's protocol, TLS or limits
    /// changed): the same host's new pool takes the request, with no retry spent (a reload
    /// drops no request). False when there is no other pool to go to.
    private func requeue(_ a: UpstreamAttempt) -> Bool {
        guard let cstats else { return false }
        let wc = a.cluster
        let pool = stream.cm.workerState.pool(wc, host: a.host, stats: cstats)
        guard pool !== a.pool, !pool.retiredByReload else { return false }
        let n = UpstreamAttempt(router: self, pool: pool, cluster: wc, host: a.host)
        attempt = n
        checkout(n, pool)
        return true
    }

    /// The attempt got a connection: the head, then what the client already sent.
    func attemptAttached(_ a: UpstreamAttempt, _ c: any UpstreamStream) {
        let pending = pendingBody
        let end = requestComplete && (pending?.isEmpty ?? true) && trailers == nil
        let h = stream.requestHeaders
        c.start(a, headers: h, endStream: !hasBody || end && !hasBody, hasBody: hasBody, contentLength: h.has(.contentLength))
        guard attempt === a else { return }
        if hasBody {
            if let p = pending, !p.isEmpty {
                c.sendData(p, endStream: requestComplete && trailers == nil)
            } else if requestComplete && trailers == nil {
                c.sendData(Buffer(pool: worker.blocks), endStream: true)
            }
            if let t = trailers, requestComplete { c.sendTrailers(t) }
        }
        if pausedDownstream { pausedDownstream = false; stream.cm.readEnable(stream) }
    }

    /// The attempt got no connection (connect failure, breaker, host drained).
    func attemptPoolFailed(_ a: UpstreamAttempt, _ reason: PoolFailureReason) {
        guard attempt === a else { return }
        attempt = nil
        switch reason {
        case .pendingOverflow, .requestOverflow:
            stream.sendLocalReply(503, "upstream overflow", flags: "UO")
        case .drained where a.pool.retiredByReload && requeue(a):
            return
        case .connectFailure, .connectTimeout, .drained:
            if retry(on: .connectFailure) { return }
            stream.sendLocalReply(503, "upstream connect error or disconnect/reset before headers", flags: retryHosts.isEmpty ? "UF" : "UF,URX")
        }
    }

    /// Response headers from the upstream: maybe a retry, else on to the client.
    func attemptHeaders(_ a: UpstreamAttempt, _ h: HeaderMap, status: Int, endStream: Bool) {
        guard attempt === a, let cstats else { return }
        let host = a.cluster.snapshot.hosts[a.host]
        if status >= 500 { host.outlier?.failure() } else { host.outlier?.success() }
        a.count(status >= 500 ? .rqError : .rqSuccess, worker.stats)
        cstats.countCode(status, worker.stats)
        // A retry abandons this response, so it must be sure to happen first: the body must be
        // replayable and a retry slot (budget, max_retries breaker) taken. Otherwise the
        // response goes to the client as it is (the upstream is still there to send its body).
        if (shouldRetry(status: status) || endStream && shouldRetryGrpc(h)) && (!hasBody || replayable && replay != nil) {
            if takeRetrySlot() {
                if !endStream { a.client?.abandon() }
                a.finished(worker.stats, cstats)
                attempt = nil
                if retry(on: nil) { return }
                // Cannot happen (checked above); the response is gone, so the client gets a 503.
                stream.sendLocalReply(503, "upstream retry failed", flags: "URX")
                return
            }
            worker.stats.inc(cstats.rqRetryOverflow)
        }
        if retriesDone > 0 { worker.stats.inc(cstats.rqRetrySuccess) }
        // The response is the one the client gets: no per-try deadline from here on.
        perTryDeadline = 0
        if endStream { responseDone() } else { updateDeadline() }
        if let r = route { for m in r.responseHeaderMutations { HeaderMutator.apply(m, to: h, stream: stream) } }
        if factory.settings.alwaysSetRequestIdInResponse, let id = stream.requestHeaders.value(.xRequestId) { h.set(.xRequestId, id) }
        stream.encodeHeaders(h, endStream: endStream)
    }

    /// The upstream agreed to the upgrade: the 101 goes to the client, then both connections
    /// become a relay (the connection manager takes `t` over).
    func attemptTunnel(_ a: UpstreamAttempt, _ h: HeaderMap, _ t: UpstreamTunnel) {
        guard attempt === a, !stream.responseStarted else { t.release(nil); return }
        if let r = route { for m in r.responseHeaderMutations { HeaderMutator.apply(m, to: h, stream: stream) } }
        responseDone()  // no route deadline over a tunnel
        stream.tunnel = t
        stream.encodeHeaders(h, endStream: true)
    }

    func attemptData(_ a: UpstreamAttempt, _ data: Buffer, endStream: Bool) {
        guard attempt === a else { data.release(); return }
        if endStream { responseDone() }
        stream.encodeData(data, endStream: endStream)
    }

    func attemptTrailers(_ a: UpstreamAttempt, _ t: HeaderMap) {
        guard attempt === a else { return }
        responseDone()
        stream.encodeTrailers(t)
    }

    /// The upstream finished its response (called before its last piece is delivered, which
    /// may still be a retriable 5xx): stats only; deadlines and the retry slot stay until the
    /// client's response is decided (`responseDone`). `attempt` stays set for that last piece.
    func attemptComplete(_ a: UpstreamAttempt) {
        guard attempt === a, let cstats else { return }
        a.finished(worker.stats, cstats)
        worker.stats.inc(cstats.rqCompleted)
    }

    /// The response the client gets is complete: no deadline left, the retry slot goes back.
    /// The client's request is whole: the route timeout starts now.
    private func requestEnded() {
        requestComplete = true
        if pendingTimeoutMs > 0 {
            globalDeadline = monotonicMs() &+ pendingTimeoutMs
            pendingTimeoutMs = 0
            updateDeadline()
        }
    }

    private func responseDone() {
        pendingTimeoutMs = 0
        globalDeadline = 0
        perTryDeadline = 0
        stream.routeDeadlineMs = 0
        releaseRetrySlot()
    }

    /// The upstream reset or sent garbage.
    func attemptReset(_ a: UpstreamAttempt, _ kind: UpstreamResetKind) {
        guard attempt === a, let cstats else { return }
        a.finished(worker.stats, cstats)
        attempt = nil
        a.cluster.snapshot.hosts[a.host].outlier?.failure()
        a.count(.rqError, worker.stats)
        worker.stats.inc(cstats.rqRxReset)
        if kind == .refusedStream { worker.stats.inc(cstats.streamRefused) }
        if !stream.responseStarted {
            if kind == .refusedStream && retry(on: .refusedStream) { return }
            if kind == .connectionTermination && retry(on: .reset) { return }
            if kind == .protocolError && retry(on: .gatewayError) { return }
            stream.sendLocalReply(kind == .protocolError ? 502 : 503,
                                  kind == .protocolError ? "upstream sent an invalid response"
                                                         : "upstream connect error or disconnect/reset before headers",
                                  flags: kind == .protocolError ? "UPE" : "UC")
        } else {
            stream.reset(flags: "UC")
        }
    }

    // MARK: - Retries

    private func shouldRetry(status: Int) -> Bool {
        guard let p = retryPolicy, retriesLeft > 0, !stream.responseStarted else { return false }
        if p.retryOn.contains(.fiveXX) && status >= 500 { return true }
        if p.retryOn.contains(.gatewayError) && (status == 502 || status == 503 || status == 504) { return true }
        if p.retryOn.contains(.retriableStatusCodes) && p.retriableStatusCodes.contains(status) { return true }
        return false
    }

    /// A trailers-only gRPC response whose `grpc-status` the policy retries on (Envoy's
    /// `retry_grpc_on`: cancelled, deadline-exceeded, resource-exhausted, unavailable).
    private func shouldRetryGrpc(_ h: HeaderMap) -> Bool {
        guard stream.isGrpc, let p = retryPolicy, retriesLeft > 0, !stream.responseStarted,
              let v = h.value("grpc-status"), let code = Int(v), let cond = RetryOn.grpc(code) else { return false }
        return p.retryOn.contains(cond)
    }

    /// Starts another attempt after a back-off when the policy, the count, the budget and the
    /// request body allow; false when no retry happens (the caller answers the client).
    private func retry(on condition: RetryOn?) -> Bool {
        guard let p = retryPolicy, let cstats, retriesLeft > 0, !stream.responseStarted else { return false }
        if let condition {
            let covered = p.retryOn.contains(condition) || p.retryOn.contains(.fiveXX)
                || (p.retryOn.contains(.gatewayError) && condition != .retriableStatusCodes)
            if !covered { return false }
        }
        // The body must be replayable: kept whole, or none at all.
        if hasBody && (!replayable || replay == nil) { return false }
        guard takeRetrySlot() else {
            worker.stats.inc(cstats.rqRetryOverflow)
            return false
        }
        retriesLeft -= 1
        retriesDone += 1
        worker.stats.inc(cstats.rqRetry)
        stream.info.addFlag("URX")
        if hasBody, let replay {
            let b = Buffer(pool: worker.blocks)
            b.append(replay.readable)
            pendingBody = b
        }
        // Exponential back-off with full jitter (Envoy's): random in [0, base * 2^(n-1)], capped.
        let cap = min(p.maxIntervalMs, p.baseIntervalMs << UInt64(min(retriesDone - 1, 16)))
        let delay = cap == 0 ? 0 : stream.cm.nextRandom() % (cap + 1)
        if delay == 0 { startAttempt(); return true }
        let t = retryTimer ?? Timer(worker.dispatcher) { [unowned self] in
            if !stream.done && attempt == nil { startAttempt(); stream.cm.flushOutput() }
        }
        retryTimer = t
        t.arm(ms: delay)
        return true
    }

    /// The retry budget (Envoy's `retry_budget`): retries in flight on this worker's view of
    /// the cluster stay under 20% of its active requests, with at least 3 allowed; and the
    /// cluster's `max_retries` breaker when set.
    private func takeRetrySlot() -> Bool {
        guard let wc = cluster else { return false }
        if holdsRetrySlot { return true }
        let state = stream.cm.workerState
        let active = state.activeRequests(wc.snapshot.slot)
        let budget = max(3, active / 5)
        if state.retriesInFlight(wc.snapshot.slot) >= budget { return false }
        if let max = wc.snapshot.config.maxRetries {
            guard wc.snapshot.retries.tryAcquire(limit: max) else { return false }
            heldRetries = wc.snapshot.retries
        }
        state.retryStarted(wc.snapshot.slot)
        holdsRetrySlot = true
        return true
    }

    private func releaseRetrySlot() {
        guard holdsRetrySlot, let wc = cluster else { return }
        holdsRetrySlot = false
        stream.cm.workerState.retryEnded(wc.snapshot.slot)
        // The breaker count taken, whatever view the router has moved to since.
        heldRetries?.release()
        heldRetries = nil
    }

    // MARK: - Timeouts

    private func updateDeadline() {
        var d: UInt64 = 0
        if globalDeadline > 0 { d = globalDeadline }
        if perTryDeadline > 0 && (d == 0 || perTryDeadline < d) { d = perTryDeadline }
        stream.routeDeadlineMs = d
        if d > 0 { stream.cm.armDeadline(d, if: true) }
    }

    /// The stream's deadline passed: the route timeout (504, UT) or the per-try timeout (a
    /// retry when one is left, else 504).
    func routeTimedOut() {
        let now = monotonicMs()
        guard let cstats else { return }
        if globalDeadline > 0 && now >= globalDeadline {
            worker.stats.inc(cstats.rqTimeout)
            attempt?.count(.rqTimeout, worker.stats)
            abandonUpstream()
            stream.sendLocalReply(504, "upstream request timeout", flags: "UT", grpcStatus: Grpc.deadlineExceeded)
            return
        }
        if perTryDeadline > 0 && now >= perTryDeadline {
            perTryDeadline = 0
            worker.stats.inc(cstats.rqPerTryTimeout)
            attempt?.count(.rqTimeout, worker.stats)
            abandonUpstream()
            if !stream.responseStarted && retry(on: nil) { updateDeadline(); return }
            stream.sendLocalReply(504, "upstream request timeout", flags: "UT", grpcStatus: Grpc.deadlineExceeded)
            return
        }
        updateDeadline()
    }

    // MARK: - The end, flow control

    /// Gives up the upstream side (local reply, reset, client gone): a queued request leaves
    /// the queue; a request on a connection closes it (its response would be out of step).
    func abandonUpstream() {
        retryTimer?.cancel()
        // A CONNECT still connecting gives its connection back; one that became a tunnel is
        // the connection manager's now (released when the relay ends).
        if let t = terminator, stream.tunnel == nil { terminator = nil; t.release(remoteClosed: false) }
        if let a = attempt {
            attempt = nil
            if let cstats { a.finished(worker.stats, cstats) }
            a.cancel()
        }
        if pausedUpstream { pausedUpstream = false }
        releaseRetrySlot()
    }

    func downstreamAboveHighWatermark() {
        guard let c = attempt?.client, !pausedUpstream else { return }
        pausedUpstream = true
        c.readDisable()
    }

    func downstreamBelowLowWatermark() {
        guard pausedUpstream else { return }
        pausedUpstream = false
        attempt?.client?.readEnable()
    }

    func upstreamAboveHighWatermark() {
        if !pausedDownstream { pausedDownstream = true; stream.cm.readDisable(stream) }
    }

    func upstreamBelowLowWatermark() {
        if pausedDownstream { pausedDownstream = false; stream.cm.readEnable(stream) }
    }

    // MARK: - Hash keys

    private func computeHashKey(_ policies: [HashPolicy], _ h: HeaderMap) -> UInt64? {
        for p in policies {
            switch p {
            case .header(let name):
                if let i = h.indices(of: name).first { return h.withValue(i) { fnv1a64($0) } }
            case .cookie(let name):
                for i in h.indices(of: .cookie) {
                    if let v = cookieValue(h.value(at: i), name) { return fnv1a64(Array(v.utf8)) }
                }
            case .sourceIp:
                if let r = stream.info.trustedClient ?? stream.cm.context.remote { return fnv1a64(r.ipBytes) }
            }
        }
        return nil
    }

    private func cookieValue(_ header: String, _ name: String) -> String? {
        for part in header.split(separator: ";") {
            let kv = part.trimmingCharacters(in: " ")
            if kv.hasPrefix(name + "=") { return String(kv.dropFirst(name.count + 1)) }
        }
        return nil
    }
}

extension StringProtocol {
    /// The text without leading and trailing `c`.
    func trimmingCharacters(in c: Character) -> String {
        var s = Substring(self)
        while s.first == c { s.removeFirst() }
        while s.last == c { s.removeLast() }
        return String(s)
    }
}

/// How an upstream exchange broke.
enum UpstreamResetKind {
    case connectionTermination, protocolError
    /// HTTP/2: the host refused the stream (REFUSED_STREAM, or above a GOAWAY's last stream id):
    /// it did not process the request, so any request may be retried (`refused-stream`).
    case refusedStream
}

/// One request on an upstream connection, whatever the protocol: `Http1Client` itself (one
/// request per connection at a time) or an `Http2ClientStream` (many per connection).
protocol UpstreamStream: AnyObject {
    /// Starts the request: the head now, the body as the router passes it.
    func start(_ a: UpstreamAttempt, headers: HeaderMap, endStream: Bool, hasBody: Bool, contentLength: Bool)
    func sendData(_ data: Buffer, endStream: Bool)
    func sendTrailers(_ t: HeaderMap)
    /// The router gave up on the request (HTTP/1.1: the connection closes; HTTP/2: RST_STREAM).
    func abandon()
    /// Pause or resume reading the response (the client is slow). Counted.
    func readDisable()
    func readEnable()
    /// The attempt went away before starting it: the connection takes another request.
    func unused()
}

/// One pooled upstream connection of a host, whatever the protocol.
protocol UpstreamClient: AnyObject {
    var id: PoolConnectionID { get }
    func connect()
    /// Closes without telling the pool (it asked).
    func closeQuietly()
    /// A stream for the next request on this connection (nil: it cannot take one).
    func newStream() -> (any UpstreamStream)?
}

/// One try of a request on one host: waits in the host's pool, then rides a client.
final class UpstreamAttempt {
    unowned(unsafe) let router: Router
    unowned(unsafe) let pool: HostPool
    let cluster: WorkerCluster
    let host: Int
    private(set) var client: (any UpstreamStream)?
    var queued: PoolRequestID?
    private let startMs = monotonicMs()
    private var settled = false
    private var gone = false

    init(router: Router, pool: HostPool, cluster: WorkerCluster, host: Int) {
        self.router = router; self.pool = pool; self.cluster = cluster; self.host = host
    }

    func attached(_ c: any UpstreamStream) {
        queued = nil
        if gone { c.unused(); return }
        client = c
        // The host's request stats (/clusters): this try is on its way to it.
        let hs = cluster.snapshot.hosts[host].stats
        hs.inc(.rqTotal, router.stream.worker.stats)
        hs.inc(.rqActive, router.stream.worker.stats)
        onHost = true
        router.attemptAttached(self, c)
    }

    func poolFailed(_ reason: PoolFailureReason) {
        queued = nil
        if gone { return }
        router.attemptPoolFailed(self, reason)
    }

    func responseHeaders(_ h: HeaderMap, endStream: Bool) {
        let status = h.first(.status).map { i in h.withValue(i) { v in v.reduce(0) { $0 * 10 + Int($1 &- 0x30) } } } ?? 502
        router.attemptHeaders(self, h, status: status, endStream: endStream)
    }

    func responseData(_ d: Buffer, endStream: Bool) { router.attemptData(self, d, endStream: endStream) }
    func responseTunnel(_ h: HeaderMap, _ t: UpstreamTunnel) {
        if gone { t.release(nil); return }
        router.attemptTunnel(self, h, t)
    }
    func responseTrailers(_ t: HeaderMap) { router.attemptTrailers(self, t) }

    /// The client is done with this request (the response is whole): called before the last
    /// piece is delivered.
    func detach() {
        client = nil
        router.attemptComplete(self)
    }

    func upstreamReset(_ kind: UpstreamResetKind) {
        client = nil
        if gone { return }
        router.attemptReset(self, kind)
    }

    func flushDownstream() { if !gone { router.stream.cm.flushOutput() } }

    func upstreamAboveHighWatermark() { if !gone { router.upstreamAboveHighWatermark() } }
    func upstreamBelowLowWatermark() { if !gone { router.upstreamBelowLowWatermark() } }

    /// Whether this try counted itself on the host (`rq_active` to undo).
    private var onHost = false

    /// Stats of the try, once: `upstream_rq_time`, and the host's `rq_active` back down.
    func finished(_ slab: StatsSlab, _ stats: UpstreamRequestStats) {
        if settled { return }
        settled = true
        slab.record(stats.rqTime, monotonicMs() &- startMs)
        if onHost { cluster.snapshot.hosts[host].stats.dec(.rqActive, slab) }
    }

    /// The try's outcome on the host: `rq_success`, `rq_error` (5xx, reset) or `rq_timeout`.
    func count(_ f: HostStats.Field, _ slab: StatsSlab) {
        if onHost { cluster.snapshot.hosts[host].stats.inc(f, slab) }
    }

    /// The router gave up on this try.
    func cancel() {
        gone = true
        if let q = queued { queued = nil; pool.pool.cancel(q) }
        if let c = client { client = nil; c.abandon() }
    }
}

/// An upstream connection that carries a tunnel (after a 101, or a terminated CONNECT), with
/// the accounting it still holds: `release` settles it once the tunnel ends.
final class UpstreamTunnel {
    let connection: Connection
    private var onRelease: ((StatsSlab?) -> Void)?

    init(connection: Connection, onRelease: @escaping (StatsSlab?) -> Void) {
        self.connection = connection
        self.onRelease = onRelease
    }

    /// The tunnel ended (or never started): closes the connection if still open and settles
    /// its accounting, once. `slab`: the worker's (nil: the connection's own).
    func release(_ slab: StatsSlab?) {
        guard let r = onRelease else { return }
        onRelease = nil
        if connection.state != .closed { connection.callbacks = nil; connection.close() }
        r(slab)
    }
}

/// CONNECT termination (Envoy's `connect_config`): a TCP connection to a host of the route's
/// cluster through the shared `HostConnector` (pick, breakers, connect timeout, TLS, outlier
/// accounting); once it is up the client gets `200` and both connections become a relay.
final class ConnectTerminator: HostConnectorCallbacks {
    unowned(unsafe) let router: Router
    private var connector: HostConnector?
    private var timer: Timer?

    init(router: Router) { self.router = router }

    func start(worker: Worker, cluster: WorkerCluster, settings: HostConnector.Settings) {
        let t = Timer(worker.dispatcher) { [unowned self] in connector?.connectTimedOut() }
        timer = t
        let k = HostConnector(worker: worker, cluster: cluster, settings: settings, timer: t, callbacks: self)
        connector = k
        k.start()
    }

    var hostAddress: SocketAddress? { connector?.hostAddress }

    var upstreamStillWanted: Bool { !router.stream.done }

    func onUpstreamConnected(_ connection: Connection) {
        timer?.cancel()
        router.connectTunnelReady(connection, self)
    }

    func onUpstreamFailed(flags: String) {
        timer?.cancel()
        router.connectTunnelFailed(flags)
    }

    /// Gives the connection and its accounting back (idempotent).
    func release(remoteClosed: Bool) {
        timer?.cancel()
        connector?.release(remoteClosed: remoteClosed)
    }
}
