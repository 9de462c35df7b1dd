import Common
import Glibc

/// The HTTP connection manager for one downstream HTTP/1.1 connection (Envoy's
/// HttpConnectionManager with its HTTP/1 server codec): the terminal read filter.
///
/// ```
/// bytes ─► head parser (in place) ─► HttpStream (filters, router) ─► upstream
///        ─► body: Content-Length / chunked decoder ─► stream.decodeData
/// stream.encode* ─► response head + body framing ─► one write per event
/// ```
///
/// HTTP/1.1 has one stream at a time: pipelined requests wait in the read buffer until the
/// response before them is complete (reading pauses when that buffer is full). Keep-alive
/// follows the request (version, `Connection`), the response's framing and draining.
/// One timer per connection serves every deadline (headers, request, idle, route timeout).
final class HttpConnectionManager: ReadFilter, ConnectionCallbacks, ActiveSession, RelayOwner, HttpServerCodec {
    /// The listener's factory (settings, route table, filters) of the newest config generation
    /// this connection has seen: a reload changes it for the next request (`refreshFactory`).
    private(set) var factory: HttpProxyFactory
    unowned(unsafe) let worker: Worker
    let connection: Connection
    var context: DownstreamContext
    private var settings: HttpSettings { factory.settings }
    private var stats: HttpConnectionManagerStats { factory.stats }
    /// Connection gauges stay with the generation that counted them up (a reload may rename the
    /// stat prefix).
    private let cxStats: HttpConnectionManagerStats

    private var parser: Http1HeadParser
    /// The current request's head facts.
    private var head = Http1Head()
    /// The stream being served, at most one (HTTP/1.1).
    private(set) var stream: HttpStream?
    /// The request body still to read (Content-Length), or the chunked decoder.
    private var bodyLeft: UInt64 = 0
    private var chunked: ChunkedDecoder?
    /// The stream idle timeout in force: the listener's `stream_idle_timeout`, or the route's
    /// `idle_timeout` once the router picked a route that has one (0: none).
    var streamIdleMs: UInt64 = 0
    /// Trailers of the chunked request body being read (they may span reads).
    private var requestTrailers: HeaderMap?
    private var requestBodyDone = true
    /// Response framing toward the client.
    private var responseChunked = false
    private var responseKeepAlive = true
    private var responseNoBody = false
    /// Response bytes not yet handed to the connection (one write per event).
    private let out: Buffer
    /// Reused for each piece of request body handed to the stream.
    private let bodyScratch: Buffer
    private var processing = false
    /// The map the request head being parsed goes into.
    private var parsing: HeaderMap?
    private var closing = false
    private var pausedForPipeline = false
    private var draining = false

    // Deadlines (monotonic ms, 0 = none) and the one timer that serves them.
    private var timer: DeadlineTimer?
    private var lastActivityMs: UInt64
    private var headersDeadline: UInt64 = 0
    private var requestDeadline: UInt64 = 0

    /// The worker's http state (pools, random numbers), looked up once per connection.
    unowned(unsafe) let workerState: HttpWorkerState

    init(factory: HttpProxyFactory, worker: Worker, connection: Connection, context: DownstreamContext) {
        self.factory = factory
        self.worker = worker
        self.workerState = HttpWorkerState.of(worker)
        tracker = FactoryTracker(worker: worker, factory: factory, context: context)
        cxStats = factory.stats
        self.connection = connection
        self.context = context
        parser = Http1HeadParser(maxHeadBytes: factory.settings.maxRequestHeadersBytes, maxHeaders: factory.settings.maxHeadersCount)
        out = Buffer(pool: worker.blocks)
        bodyScratch = Buffer(pool: worker.blocks)
        lastActivityMs = context.startMs
    }

    // MARK: - ReadFilter

    func onNewConnection() -> FilterStatus {
        worker.stats.inc(cxStats.downstreamCxTotal)
        worker.stats.inc(cxStats.downstreamCxHttp1Total)
        worker.stats.inc(cxStats.downstreamCxActive)
        worker.stats.inc(cxStats.downstreamCxHttp1Active)
        timer = DeadlineTimer(worker.dispatcher) { [unowned self] in onTimer() }
        if worker.draining { draining = true }
        armDeadline(lastActivityMs &+ settings.idleTimeoutMs, if: settings.idleTimeoutMs > 0)
        return .stopIteration
    }

    func onData(_ buffer: Buffer, endStream: Bool) -> FilterStatus {
        lastActivityMs = monotonicMs()
        processInput()
        return .stopIteration
    }

    /// Parses and dispatches what the read buffer holds: request heads, body pieces; stops at
    /// a request that must wait for the response before it.
    private func processInput() {
        if processing || closing { return }
        processing = true
        defer { processing = false }
        let buffer = connection.readBuffer
        while !closing && connection.state == .open {
            if stream == nil {
                if buffer.isEmpty { break }
                refreshFactory()
                // One map per request, kept across incomplete parses (not one per read).
                let headers = parsing ?? workerState.headerMaps.take()
                parsing = headers
                switch parser.parseRequest(buffer.readable, headers: headers, head: &head) {
                case .incomplete:
                    // Slowloris: the headers timeout runs from the first byte of a head.
                    if headersDeadline == 0 && settings.requestHeadersTimeoutMs > 0 {
                        headersDeadline = monotonicMs() &+ settings.requestHeadersTimeoutMs
                        armDeadline(headersDeadline, if: true)
                    }
                    if connection.readEOF { closeConnection() }
                    return
                case .error(let e):
                    worker.stats.inc(stats.http1Errors[e.rawValue])
                    worker.stats.inc(stats.downstreamCxProtocolError)
                    protocolError(e)
                    return
                case .complete(let consumed):
                    buffer.drain(consumed)
                    headersDeadline = 0
                    parsing = nil
                    workerState.headerMaps.give(headers)  // reused once its stream lets it go
                    startStream(headers)
                }
            } else if !requestBodyDone {
                if buffer.isEmpty {
                    if connection.readEOF { stream?.downstreamReset(); closeConnection() }
                    break
                }
                if !decodeBody(buffer) { break }
            } else {
                // A pipelined request waits for the response before it; bounded by the buffer.
                if !buffer.isEmpty && buffer.count >= settings.bufferLimit && !pausedForPipeline {
                    pausedForPipeline = true
                    connection.readDisable()
                }
                break
            }
        }
        if connection.readEOF && stream == nil && buffer.isEmpty && !closing { closeConnection() }
    }

    private var tracker: FactoryTracker

    /// A reload changes the routes, filters and settings for the next request (`FactoryTracker`).
    private func refreshFactory() {
        guard let f = tracker.newer(worker, factory, context) else { return }
        factory = f
        parser.maxHeadBytes = f.settings.maxRequestHeadersBytes
        parser.maxHeaders = f.settings.maxHeadersCount
    }

    /// A request head arrived: hop-by-hop headers go, forwarding headers come, the stream starts.
    private func startStream(_ headers: HeaderMap) {
        worker.stats.inc(stats.downstreamRqTotal)
        worker.stats.inc(stats.downstreamRqHttp1Total)
        worker.stats.inc(stats.downstreamRqActive)
        // RFC 9110 7.6.1: these describe this hop only.
        // An upgrade request keeps its Upgrade header and says so to the upstream.
        // Only WebSocket is let through (Envoy's default upgrade_configs); any other Upgrade
        // token is dropped with the other hop-by-hop headers and the request goes as a plain one.
        let upgrade = head.upgrade && head.minorVersion == 1
            ? headers.first(.upgrade).flatMap { i in headers.valueEqualsIgnoringCase(i, "websocket") ? headers.value(at: i) : nil } : nil
        headers.removeHopByHop()
        for t in head.connectionTokens { headers.remove(t) }
        if let upgrade {
            headers.add(.upgrade, upgrade)
            headers.add(.connection, "upgrade")
        }
        if head.expectContinue {
            headers.remove(.expect)
            if head.framing != .none {
                // Answered here (Envoy's default): the client sends its body without waiting.
                out.append(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
            }
        }
        addForwardingHeaders(headers)
        let s = HttpStream(cm: self, headers: headers, router: Router(factory: factory))
        s.router.stream = s
        s.info.protocolName = head.minorVersion == 0 ? "HTTP/1.0" : "HTTP/1.1"
        if !settings.useRemoteAddress || settings.xffNumTrustedHops > 0 { s.info.trustedClient = HttpConnectionShared.trustedClient(headers, settings: settings) }
        s.isUpgrade = upgrade != nil
        s.isConnect = head.isConnect
        stream = s
        switch head.framing {
        case .length(let n): bodyLeft = n; chunked = nil; requestBodyDone = false
        case .chunked: chunked = ChunkedDecoder(); requestTrailers = nil; requestBodyDone = false
        default: requestBodyDone = true
        }
        if !requestBodyDone && settings.requestTimeoutMs > 0 {
            requestDeadline = s.info.startMs &+ settings.requestTimeoutMs
            armDeadline(requestDeadline, if: true)
        }
        streamIdleMs = settings.streamIdleTimeoutMs
        if streamIdleMs > 0 { armDeadline(lastActivityMs &+ streamIdleMs, if: true) }
        s.installFilters(factory.filterFactories)
        s.decodeHeaders(endStream: requestBodyDone)
        flushOutput()
    }

    /// The client's IP as text, made once per connection.
    private lazy var remoteIp: String? = context.remote?.host

    /// A random number from the worker's generator.
    func nextRandom() -> UInt64 { workerState.rng.next() }

    private func addForwardingHeaders(_ h: HeaderMap) {
        HttpConnectionShared.addForwardingHeaders(h, settings: settings, remoteIp: remoteIp, connection: connection,
                                                  viaVersion: head.minorVersion == 0 ? "1.0 " : "1.1 ", rng: workerState.secureRandom)
    }

    /// Hands the next piece of request body to the stream. False when more bytes are needed.
    private func decodeBody(_ buffer: Buffer) -> Bool {
        guard let s = stream else { return false }
        if var d = chunked {
            let scratch = bodyScratch
            let r = d.decode(buffer.readable, trailers: &requestTrailers) { scratch.append($0) }
            chunked = d
            switch r {
            case .error(let e):
                worker.stats.inc(stats.http1Errors[e.rawValue])
                worker.stats.inc(stats.downstreamCxProtocolError)
                buffer.release()
                protocolError(e)
                return false
            case .more(let consumed):
                buffer.drain(consumed)
                if !scratch.isEmpty { s.decodeData(scratch, endStream: false) }
                scratch.release()
                return false
            case .done(let consumed):
                buffer.drain(consumed)
                requestBodyDone = true
                requestDeadline = 0
                if let trailers = requestTrailers {
                    requestTrailers = nil
                    if !scratch.isEmpty { s.decodeData(scratch, endStream: false) }
                    scratch.release()
                    s.decodeTrailers(trailers)
                } else {
                    s.decodeData(scratch, endStream: true)
                    scratch.release()
                }
                return true
            }
        }
        let take = Int(min(UInt64(buffer.count), bodyLeft))
        if take == buffer.count {
            bodyScratch.moveAll(from: buffer)
        } else {
            bodyScratch.append(UnsafeRawBufferPointer(rebasing: buffer.readable[0..<take]))
            buffer.drain(take)
        }
        bodyLeft -= UInt64(take)
        let end = bodyLeft == 0
        if end { requestBodyDone = true; requestDeadline = 0 }
        s.decodeData(bodyScratch, endStream: end)
        bodyScratch.release()
        return end
    }

    // MARK: - Encoding the response (called by the stream)

    func encodeHeaders(_ s: HttpStream, _ h: HeaderMap, endStream: Bool) {
        let status = s.info.responseCode
        if s.tunnel != nil {
            // The 101 as the upstream gave it (Upgrade and `Connection: upgrade` kept).
            if let via = settings.via { h.add(.via, "1.1 " + via) }
            Http1Encoder.writeResponseHead(h, status: status, minorVersion: head.minorVersion, into: out)
            flushOutput()
            return
        }
        let isHead = s.requestHeaders.first(.method).map { s.requestHeaders.valueEqualsIgnoringCase($0, "HEAD") } ?? false
        responseNoBody = isHead || status == 204 || status == 304 || status < 200
        responseChunked = false
        responseKeepAlive = head.keepAlive && !draining
        // Hop-by-hop headers of the response (the upstream codec removed the upstream's), and
        // a length on a response that can have no body (1xx, 204).
        h.remove(.connection); h.remove(.transferEncoding); h.remove(.keepAlive); h.remove(.proxyConnection)
        if status < 200 || status == 204 { h.remove(.contentLength) }
        if !h.has(.contentLength) && !responseNoBody {
            if endStream {
                h.add(.contentLength, "0")
            } else if head.minorVersion == 1 {
                h.add(.transferEncoding, "chunked")
                responseChunked = true
            } else {
                responseKeepAlive = false  // HTTP/1.0: the body ends with the connection
            }
        }
        if !s.requestComplete { responseKeepAlive = false }  // the rest of the request cannot be found
        // A refused CONNECT: bytes the client sent ahead for the tunnel must not be read as a request.
        if s.isConnect { responseKeepAlive = false }
        if draining && head.keepAlive { worker.stats.inc(stats.downstreamCxDrainClose) }
        if !responseKeepAlive {
            h.add(.connection, "close")
        } else if head.minorVersion == 0 {
            h.add(.connection, "keep-alive")
        }
        if let via = settings.via { h.add(.via, "1.1 " + via) }
        Http1Encoder.writeResponseHead(h, status: status, minorVersion: head.minorVersion, into: out)
        if endStream { flushOutput() }
    }

    func encodeData(_ s: HttpStream, _ data: Buffer, endStream: Bool) {
        if responseNoBody {
            data.release()
        } else if responseChunked {
            if !data.isEmpty {
                Http1Encoder.writeChunkHeader(data.count, into: out)
                out.moveAll(from: data)
                Http1Encoder.writeChunkEnd(into: out)
            }
            if endStream { Http1Encoder.writeLastChunk(trailers: nil, into: out) }
        } else {
            out.moveAll(from: data)
        }
        flushOutput()
    }

    func encodeTrailers(_ s: HttpStream, _ t: HeaderMap) {
        if responseChunked && !responseNoBody { Http1Encoder.writeLastChunk(trailers: t, into: out) }
        flushOutput()
    }

    /// Writes what the response produced so far (head and body in one write when both are here).
    func flushOutput() {
        if out.isEmpty { return }
        lastActivityMs = monotonicMs()
        connection.write(out, endStream: false)
    }

    /// The stream's response is complete.
    func streamComplete(_ s: HttpStream) {
        if let t = s.tunnel, s.isUpgrade || s.isConnect, connection.state == .open {
            s.tunnel = nil
            settle(s)
            startTunnel(t)
            return
        }
        settle(s)
        if !s.requestComplete { worker.stats.inc(stats.downstreamRqResponseBeforeRqComplete) }
        if !responseKeepAlive || !s.requestComplete || closing {
            flushOutput()
            closeAfterResponse()
            return
        }
        stream = nil
        parser.reset()
        requestDeadline = 0
        if draining && !connection.hasUnreadInput {
            // Draining began after this response's head went out keep-alive: the connection
            // ends with it (it used to stay open, idle, until drain_timeout). A next request
            // already sent is answered first, with Connection: close.
            worker.stats.inc(stats.downstreamCxDrainClose)
            flushOutput()
            closeAfterResponse()
            return
        }
        if pausedForPipeline { pausedForPipeline = false; connection.readEnable() }
        armDeadline(monotonicMs() &+ settings.idleTimeoutMs, if: settings.idleTimeoutMs > 0)
        // The next pipelined request, if one is waiting (the outer loop does it when inside).
        if !processing && !connection.readBuffer.isEmpty { processInput() }
        if !processing && connection.readEOF && connection.readBuffer.isEmpty { closeConnection() }
    }

    /// The stream was reset after its response started: the client must not take a cut
    /// message for a whole one, so the connection ends without completing it.
    func resetStream(_ s: HttpStream) {
        settle(s)
        flushOutput()
        closeAfterResponse()
    }

    /// Stats and the access log of a finished stream, once.
    private func settle(_ s: HttpStream) {
        guard stream === s else { return }
        HttpConnectionShared.settle(s, stats: stats, worker: worker, context: &context, connection: connection)
        // The stream's own methods are usually on the stack here: it dies after this event.
        worker.dispatcher.deferredRelease(s)
        stream = nil
    }

    // MARK: - Tunnels (Upgrade)

    /// The relay that replaced HTTP on this connection after a 101, and its upstream side.
    private var relay: Relay?
    private var tunnelUpstream: UpstreamTunnel?

    /// Both connections become a byte relay (Common's `Relay`): the client's bytes go to the
    /// upstream as they are, and back. `stream_idle_timeout` bounds a silent tunnel.
    private func startTunnel(_ t: UpstreamTunnel) {
        worker.stats.inc(cxStats.downstreamCxUpgradesTotal)
        worker.stats.inc(cxStats.downstreamCxUpgradesActive)
        headersDeadline = 0
        requestDeadline = 0
        if pausedForPipeline { pausedForPipeline = false; connection.readEnable() }
        tunnelUpstream = t
        let r = Relay(a: connection, b: t.connection, owner: self)
        relay = r
        if streamIdleMs > 0 { armDeadline(monotonicMs() &+ streamIdleMs, if: true) }
        r.start()
    }

    func relayFinished(_ r: Relay) {
        worker.stats.dec(cxStats.downstreamCxUpgradesActive)
        tunnelUpstream?.release(worker.stats)
        tunnelUpstream = nil
        worker.dispatcher.deferredRelease(r)
        relay = nil
        finish()
    }

    // MARK: - Errors and closing

    /// A malformed request: a short local reply with `Connection: close`, then the end.
    private func protocolError(_ e: Http1Error) {
        let status = e.status
        if let s = stream, !s.done {
            // Mid-body: the response may have started; the stream decides.
            head.keepAlive = false
            s.sendLocalReply(400, "bad request body", flags: "DPE")
            if !s.done { s.reset(flags: "DPE") }
            closeAfterResponse()
            return
        }
        worker.stats.inc(stats.downstreamRqLocalReply)
        let text = Http1Encoder.reasonPhrase(status)
        let body = "\(text)\n"
        var resp = "HTTP/1.1 \(status) \(text)\r\ncontent-type: text/plain\r\ncontent-length: \(body.utf8.count)\r\nconnection: close\r\n\r\n"
        resp += body
        out.append(Array(resp.utf8))
        let cls = status / 100
        worker.stats.inc(stats.downstreamRqByClass[cls])
        if let logs = worker.accessLogs[context.listener.name] {
            var entry = AccessLogEntry()
            entry.startWallMs = wallMs()
            entry.downstreamRemote = context.remote
            entry.responseCode = status
            entry.responseFlags = "DPE"
            entry.connectionId = context.connectionId
            entry.protocolName = "HTTP/1.1"
            for l in logs { l.log(entry) }
        }
        flushOutput()
        closeAfterResponse()
    }

    private func closeAfterResponse() {
        if closing { return }
        closing = true
        // Half-close after the response so a client still sending gets it rather than a reset.
        connection.closeAfterFlush()
        if connection.state == .closed { finish() }
    }

    private func closeConnection() {
        // With a tunnel, both sides close through the relay, which settles its accounting.
        if let r = relay { r.close(); return }
        if closing && connection.state == .closed { return }
        closing = true
        connection.close()
        finish()
    }

    // MARK: - ConnectionCallbacks (downstream)

    func onConnected(_ connection: Connection) {}
    func onConnectFailed(_ connection: Connection, errno: Int32) {}
    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {}

    func onClose(_ connection: Connection, remote: Bool) {
        if let s = stream, !s.done { s.downstreamReset() }
        finish()
    }

    // MARK: - HttpServerCodec flow control

    func readDisable(_ s: HttpStream) { connection.readDisable() }
    func readEnable(_ s: HttpStream) { connection.readEnable() }
    var streamFlowLimit: Int { settings.bufferLimit }

    func setStreamIdleTimeout(_ s: HttpStream, _ ms: UInt64) {
        streamIdleMs = ms
        if ms > 0 { armDeadline(monotonicMs() &+ ms, if: true) }
    }

    func onAboveWriteBufferHighWatermark(_ connection: Connection) { stream?.router.downstreamAboveHighWatermark() }
    func onBelowWriteBufferLowWatermark(_ connection: Connection) { stream?.router.downstreamBelowLowWatermark() }

    // MARK: - ActiveSession

    func onDrain() {
        draining = true
        // A tunnel is a relay now: like tcp-proxy's, it runs until its peers finish or
        // drain_timeout ends it (forceClose).
        if relay != nil { return }
        // An idle keep-alive connection closes now; a busy one answers with Connection: close.
        // Idle means no byte of a next request has arrived, read or not: the drain may run
        // before the read event of a request already in the socket (it is posted from the main
        // thread, and libevent runs it first), and closing then lost that request and, as the
        // input was unread, reset the connection. That request is answered with close instead.
        if stream == nil && !connection.hasUnreadInput {
            worker.stats.inc(stats.downstreamCxDrainClose)
            closeConnection()
        }
    }

    func forceClose() {
        if let r = relay { r.close(); return }
        if let s = stream, !s.done { s.reset(flags: "") }
        closeConnection()
    }

    private var finished = false

    private func finish() {
        if finished { return }
        finished = true
        timer?.cancel()
        if let s = stream { s.downstreamReset(); settle(s) }
        let st = worker.stats
        st.dec(cxStats.downstreamCxActive)
        st.dec(cxStats.downstreamCxHttp1Active)
        st.add(cxStats.downstreamCxRxBytesTotal, Int(connection.bytesRead))
        st.add(cxStats.downstreamCxTxBytesTotal, Int(connection.bytesWritten))
        connection.callbacks = nil
        if connection.state != .closed { connection.close() }
        worker.downstreamClosed(context)
        worker.untrack(self)
    }

    // MARK: - Timers

    /// Makes sure the timer fires no later than `deadline`.
    func armDeadline(_ deadline: UInt64, if condition: Bool) { if condition { timer?.arm(deadline) } }

    private func onTimer() {
        timer?.fired()
        if finished { return }
        let now = monotonicMs()
        if let r = relay {
            // Only stream_idle_timeout applies to a tunnel (0: none); other deadlines are gone.
            if streamIdleMs == 0 { return }
            let d = r.lastActivityMs &+ streamIdleMs
            if now >= d {
                worker.stats.inc(stats.downstreamRqIdleTimeout)
                r.close()
            } else {
                armDeadline(d, if: true)
            }
            return
        }
        var next = UInt64.max
        func consider(_ d: UInt64) { if d > 0 && d < next { next = d } }
        if headersDeadline > 0 {
            if now >= headersDeadline {
                worker.stats.inc(stats.downstreamRqHeaderTimeout)
                headersDeadline = 0
                // Envoy closes without a response here (the request was never whole).
                closeConnection()
                return
            }
            consider(headersDeadline)
        }
        if let s = stream, !s.done {
            if requestDeadline > 0 {
                if now >= requestDeadline {
                    worker.stats.inc(stats.downstreamRqTimeout)
                    requestDeadline = 0
                    s.sendLocalReply(408, "request timeout", flags: "")
                    flushOutput()
                    if !closing { closeAfterResponse() }
                    return
                }
                consider(requestDeadline)
            }
            if s.routeDeadlineMs > 0 {
                if now >= s.routeDeadlineMs {
                    s.routeDeadlineMs = 0
                    s.router.routeTimedOut()
                    flushOutput()
                    if stream == nil || closing { return }
                } else { consider(s.routeDeadlineMs) }
            }
            if streamIdleMs > 0 {
                let d = lastActivityMs &+ streamIdleMs
                if now >= d {
                    worker.stats.inc(stats.downstreamRqIdleTimeout)
                    if s.responseStarted { s.reset(flags: "SI") } else { s.sendLocalReply(408, "stream timeout", flags: "SI") }
                    flushOutput()
                    if !closing { closeAfterResponse() }
                    return
                }
                consider(d)
            }
        } else if settings.idleTimeoutMs > 0 {
            let d = lastActivityMs &+ settings.idleTimeoutMs
            if now >= d {
                worker.stats.inc(stats.downstreamCxIdleTimeout)
                closeConnection()
                return
            }
            consider(d)
        }
        if next != UInt64.max { armDeadline(next, if: true) }
    }
}
