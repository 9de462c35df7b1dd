import Common

/// What the access log and the stats learn about one request.
struct StreamInfo {
    var startMs: UInt64 = 0
    var startWallMs: UInt64 = 0
    var responseCode = 0
    /// Envoy's response flags (UH, UF, UT, UO, NR, DC, URX, UC, LR, ...), comma-separated.
    var responseFlags = ""
    var upstreamHost: SocketAddress?
    /// The client as `X-Forwarded-For` and `xff_num_trusted_hops` say (nil: the socket peer).
    var trustedClient: SocketAddress?
    var clusterName = ""
    var bytesReceived: UInt64 = 0
    var bytesSent: UInt64 = 0
    /// "HTTP/1.1", "HTTP/1.0" or "HTTP/2" (Envoy's `%PROTOCOL%`).
    var protocolName = "HTTP/1.1"

    mutating func addFlag(_ f: String) {
        if responseFlags.isEmpty { responseFlags = f } else if !responseFlags.split(separator: ",").contains(Substring(f)) {
            responseFlags += "," + f
        }
    }
}

/// One request and its response, whatever codec carries them (Envoy's ActiveStream). It runs
/// the HTTP filter chain: decoder filters in order on the way in (the router last), encoder
/// filters in reverse on the way out, each able to stop iteration and resume later, and sends
/// local replies through the encoder filters. The codec below (`HttpConnectionManager` for
/// HTTP/1.1) only moves bytes.
///
/// ```
/// codec ─decodeHeaders/Data/Trailers─► filter 0 ─► ... ─► router ─► upstream request
/// codec ◄─encodeHeaders/Data/Trailers── filter 0 ◄─ ... ◄───────────── upstream response
/// ```
final class HttpStream {
    unowned(unsafe) let cm: any HttpServerCodec
    let requestHeaders: HeaderMap
    var requestTrailers: HeaderMap?
    var responseHeaders: HeaderMap?
    var info = StreamInfo()
    /// The configured decoder filters; the router is the last decoder (`decoder(_:)`), kept
    /// out of the array so a stream without filters allocates none.
    private(set) var filterDecoders: [HttpDecoderFilter] = []
    /// Decoders including the router (none before `installFilters`).
    private var decoderCount = 0
    @inline(__always) private func decoder(_ i: Int) -> HttpDecoderFilter {
        i < filterDecoders.count ? filterDecoders[i] : router
    }
    /// Encoder filters in configuration order (iterated from the end).
    private(set) var encoders: [HttpEncoderFilter] = []
    let router: Router

    // Decode-side iteration (Envoy's semantics): a filter that stops the headers still gets
    // the body (the router forwards it as it comes); filters after it get neither until it
    // continues, so the stream buffers the body for them meanwhile.
    /// Filters that have seen the request headers (0...headersSeen-1).
    private var headersSeen = 0
    /// The filter holding the headers back, -1 when none.
    private var headersStoppedAt = -1
    /// The filter that asked for the body to be buffered (`stopIterationAndBuffer`), -1 when none.
    private var dataStoppedAt = -1
    /// Body held for the filters from `bufferFrom` on, and whether the stream's end is in it.
    private var decodeBuffer: Buffer?
    private var bufferFrom = 0
    private var decodeEndPending = false
    private var decodeTrailersPending = false
    /// The request was fully received from the client (end of stream seen by the codec).
    private(set) var requestComplete = false

    // Encode side.
    private var encodeStoppedAt = -1
    private var encodeHeadersPending = false
    private var encodeBuffer: Buffer?
    private var encodeEndPending = false
    private var encodeTrailersPending = false
    private var responseTrailers: HeaderMap?
    /// Headers went to the codec: a later failure can only reset the stream.
    private(set) var responseStarted = false
    /// The whole response went to the codec.
    private(set) var responseComplete = false
    /// The stream is over (complete or reset); nothing more happens to it.
    private(set) var done = false
    /// The route `timeout` (0: none) the router armed, as a deadline on the CM's timer.
    var routeDeadlineMs: UInt64 = 0
    /// Set when the upstream accepted an upgrade: after the 101, the connection manager turns
    /// both connections into a relay.
    var tunnel: UpstreamTunnel?
    /// The client asked to upgrade (`Connection: upgrade` with `Upgrade`), or sent CONNECT.
    var isUpgrade = false
    var isConnect = false
    /// The HTTP/2 stream id carrying this stream (0 on HTTP/1.1).
    var codecStreamId: Int32 = 0
    /// A gRPC request (`content-type: application/grpc`, `application/grpc+...`, not gRPC-Web):
    /// local replies are trailers-only gRPC responses.
    lazy var isGrpc: Bool = requestHeaders.first(named: "content-type").map { i in
        requestHeaders.withValue(i) { v in Grpc.isGrpcContentType(v) }
    } ?? false

    init(cm: any HttpServerCodec, headers: HeaderMap, router: Router) {
        self.cm = cm
        self.requestHeaders = headers
        self.router = router
        info.startMs = monotonicMs()
        info.startWallMs = wallMs()
    }

    /// The route for the request headers as they are now, found once and kept (Envoy's
    /// cached route); `clearRouteCache()` makes the next reader look again, for filters that
    /// change headers routes match on. The table is the router's (the generation the stream
    /// started in), so cluster indexes stay valid across a reload.
    var route: RouteEntry? {
        if !routeResolved {
            cachedRoute = router.factory.routeTable.route(requestHeaders)
            routeResolved = true
        }
        return cachedRoute
    }
    private var cachedRoute: RouteEntry?
    private var routeResolved = false

    func clearRouteCache() {
        routeResolved = false
        cachedRoute = nil
    }

    /// This stream's route's `typed_per_filter_config` for a filter, if any.
    func filterOverride(_ name: String) -> FilterOverride? {
        router.factory.routeTable.hasFilterOverrides ? route?.filterOverrides.find(name) : nil
    }

    /// Installs the configured filters (the router last), leaving out those the route
    /// disables. The route is resolved first only when some route has overrides.
    func installFilters(_ factories: [HttpFilterFactory]) {
        let overrides = router.factory.routeTable.hasFilterOverrides ? route?.filterOverrides : nil
        for f in factories {
            if let o = overrides, o.isDisabled(f.name) { continue }
            let (d, e) = f.create(stream: self)
            if let d { filterDecoders.append(d) }
            if let e { encoders.append(e) }
        }
        decoderCount = filterDecoders.count + 1
    }

    var worker: Worker { cm.worker }
    var bufferLimit: Int { cm.factory.settings.bufferLimit }

    // MARK: - Decode path (codec → filters → router)

    func decodeHeaders(endStream: Bool) {
        if endStream { requestComplete = true }
        runDecodeHeaders(from: 0, endStream: endStream)
    }

    private func runDecodeHeaders(from start: Int, endStream: Bool) {
        var i = start
        while i < decoderCount {
            if done { return }
            headersSeen = i + 1
            if decoder(i).decodeHeaders(requestHeaders, endStream: endStream) == .stopIteration {
                headersStoppedAt = i
                return
            }
            i += 1
        }
    }

    func decodeData(_ data: Buffer, endStream: Bool) {
        if endStream { requestComplete = true }
        info.bytesReceived &+= UInt64(data.count)
        if dataStoppedAt >= 0 {
            bufferDecoded(data, endStream: endStream, from: dataStoppedAt + 1)
            return
        }
        runDecodeData(data, from: 0, endStream: endStream)
    }

    /// Body to the filters from `start` that have seen the headers; what is left for filters
    /// that have not is buffered.
    private func runDecodeData(_ data: Buffer, from start: Int, endStream: Bool) {
        var i = start
        while i < headersSeen {
            if done { return }
            switch decoder(i).decodeData(data, endStream: endStream) {
            case .continue: i += 1
            case .stopIterationAndBuffer:
                dataStoppedAt = i
                bufferDecoded(data, endStream: endStream, from: i + 1)
                return
            case .stopIterationNoBuffer:
                return
            }
        }
        if i < decoderCount && !done { bufferDecoded(data, endStream: endStream, from: i) }
    }

    private func bufferDecoded(_ data: Buffer, endStream: Bool, from: Int) {
        let b = decodeBuffer ?? Buffer(pool: worker.blocks)
        if decodeBuffer == nil { bufferFrom = from }
        decodeBuffer = b
        b.moveAll(from: data)
        if endStream { decodeEndPending = true }
        if b.count > bufferLimit {
            worker.stats.inc(cm.factory.stats.downstreamRqTooLarge)
            sendLocalReply(413, "request body too large", flags: "")
        }
    }

    func decodeTrailers(_ trailers: HeaderMap) {
        requestComplete = true
        requestTrailers = trailers
        // Trailers go as far as the body went: to every filter that saw the headers (the router,
        // which stopped them to forward them itself, included), or only up to the filters a
        // buffered body waits for; the rest get them when iteration resumes.
        let upTo = dataStoppedAt >= 0 || decodeBuffer != nil ? bufferFrom : headersSeen
        runDecodeTrailers(from: 0, upTo: upTo)
    }

    private var trailersFrom = 0

    private func runDecodeTrailers(from start: Int, upTo: Int) {
        guard let t = requestTrailers else { return }
        var i = start
        while i < upTo {
            if done { return }
            if decoder(i).decodeTrailers(t) == .stopIteration {
                dataStoppedAt = i
                decodeTrailersPending = true
                trailersFrom = i + 1
                return
            }
            i += 1
        }
        if i < decoderCount {
            decodeTrailersPending = true
            trailersFrom = i
        }
    }

    /// A filter that stopped the request resumes it: held headers go on to the filters after
    /// it, then the buffered body and trailers.
    func continueDecoding() {
        guard !done else { return }
        if headersStoppedAt >= 0 {
            let from = headersStoppedAt + 1
            headersStoppedAt = -1
            let end = requestComplete && decodeBuffer == nil && !decodeTrailersPending
            runDecodeHeaders(from: from, endStream: end)
            if headersStoppedAt >= 0 || done { return }
        } else if dataStoppedAt >= 0 {
            dataStoppedAt = -1
        } else {
            return
        }
        if let b = decodeBuffer {
            decodeBuffer = nil
            let end = decodeEndPending && !decodeTrailersPending
            decodeEndPending = false
            runDecodeData(b, from: bufferFrom, endStream: end)
            if dataStoppedAt >= 0 || headersStoppedAt >= 0 || done { return }
        }
        if decodeTrailersPending {
            decodeTrailersPending = false
            runDecodeTrailers(from: trailersFrom, upTo: headersSeen)
        }
    }

    // MARK: - Encode path (router or local reply → filters → codec)

    func encodeHeaders(_ headers: HeaderMap, endStream: Bool) {
        guard !done, !responseStarted, encodeStoppedAt < 0 else { return }
        responseHeaders = headers
        if endStream { encodeEndPending = true }
        runEncodeHeaders(from: encoders.count - 1, endStream: endStream)
    }

    private func runEncodeHeaders(from start: Int, endStream: Bool) {
        guard let h = responseHeaders else { return }
        var i = start
        while i >= 0 {
            if encoders[i].encodeHeaders(h, endStream: endStream) == .stopIteration {
                encodeStoppedAt = i
                encodeHeadersPending = true
                return
            }
            if done { return }
            i -= 1
        }
        encodeEndPending = false
        responseStarted = true
        info.responseCode = statusOf(h)
        cm.encodeHeaders(self, h, endStream: endStream)
        if endStream { responseFinished() }
    }

    func encodeData(_ data: Buffer, endStream: Bool) {
        guard !done else { data.release(); return }
        if encodeStoppedAt >= 0 || !responseStarted && encodeHeadersPending {
            bufferEncoded(data, endStream: endStream)
            return
        }
        runEncodeData(data, from: encoders.count - 1, endStream: endStream)
    }

    private func runEncodeData(_ data: Buffer, from start: Int, endStream: Bool) {
        var i = start
        while i >= 0 {
            switch encoders[i].encodeData(data, endStream: endStream) {
            case .continue: i -= 1
            case .stopIterationAndBuffer:
                encodeStoppedAt = i
                bufferEncoded(data, endStream: endStream)
                return
            case .stopIterationNoBuffer:
                encodeStoppedAt = i
                if endStream { encodeEndPending = true }
                return
            }
            if done { return }
        }
        info.bytesSent &+= UInt64(data.count)
        cm.encodeData(self, data, endStream: endStream)
        if endStream { responseFinished() }
    }

    private func bufferEncoded(_ data: Buffer, endStream: Bool) {
        let b = encodeBuffer ?? Buffer(pool: worker.blocks)
        encodeBuffer = b
        b.moveAll(from: data)
        if endStream { encodeEndPending = true }
        if b.count > bufferLimit {
            // Envoy: a response over the buffer limit before it started is a 500.
            if responseStarted { reset(flags: "") } else { encodeStoppedAt = -1; encodeHeadersPending = false; sendLocalReply(500, "response too large", flags: "") }
        }
    }

    func encodeTrailers(_ trailers: HeaderMap) {
        guard !done else { return }
        responseTrailers = trailers
        if encodeStoppedAt >= 0 { encodeTrailersPending = true; return }
        runEncodeTrailers(from: encoders.count - 1)
    }

    private func runEncodeTrailers(from start: Int) {
        guard let t = responseTrailers else { return }
        var i = start
        while i >= 0 {
            if encoders[i].encodeTrailers(t) == .stopIteration { encodeStoppedAt = i; encodeTrailersPending = true; return }
            if done { return }
            i -= 1
        }
        cm.encodeTrailers(self, t)
        responseFinished()
    }

    /// An encoder filter that stopped the response resumes it.
    func continueEncoding() {
        guard encodeStoppedAt >= 0, !done else { return }
        let from = encodeStoppedAt - 1
        encodeStoppedAt = -1
        if encodeHeadersPending {
            encodeHeadersPending = false
            let end = encodeEndPending && encodeBuffer == nil && !encodeTrailersPending
            runEncodeHeaders(from: from, endStream: end)
            if encodeStoppedAt >= 0 || done || end { return }
        }
        if let b = encodeBuffer {
            encodeBuffer = nil
            let end = encodeEndPending && !encodeTrailersPending
            encodeEndPending = false
            runEncodeData(b, from: from, endStream: end)
            if encodeStoppedAt >= 0 || done { return }
        }
        if encodeTrailersPending {
            encodeTrailersPending = false
            runEncodeTrailers(from: from)
        }
    }

    // MARK: - Local replies, resets, the end

    /// Answers from the proxy itself (a short text body), through the encoder filters, unless
    /// the response already started: then the stream can only be reset.
    func sendLocalReply(_ status: Int, _ body: String, flags: String, extraHeaders: [(String, String)] = [], rawBody: Bool = false,
                        grpcStatus: Int? = nil) {
        guard !done else { return }
        if !flags.isEmpty { info.addFlag(flags) }
        if responseStarted {
            reset(flags: "")
            return
        }
        worker.stats.inc(cm.factory.stats.downstreamRqLocalReply)
        encodeStoppedAt = -1
        encodeHeadersPending = false
        encodeBuffer = nil
        if isGrpc {
            // gRPC clients read the status from grpc-status, not from an HTML or text body
            // (Envoy: a trailers-only response, HTTP 200).
            let h = HeaderMap()
            h.add(":status", "200")
            h.add("content-type", "application/grpc")
            h.add("grpc-status", String(grpcStatus ?? Grpc.status(http: status)))
            h.add("grpc-message", Grpc.percentEncoded(body))
            for (k, v) in extraHeaders { h.add(k, v) }
            router.abandonUpstream()
            encodeHeaders(h, endStream: true)
            return
        }
        let h = HeaderMap()
        h.add(":status", String(status))
        let text = body.isEmpty || rawBody ? body : body + "\n"
        h.add("content-type", "text/plain")
        h.add("content-length", String(text.utf8.count))
        for (k, v) in extraHeaders { h.add(k, v) }
        let noBody = text.isEmpty || requestHeaders.first(.method).map { requestHeaders.valueEqualsIgnoringCase($0, "HEAD") } == true
        router.abandonUpstream()
        encodeHeaders(h, endStream: noBody)
        if !noBody && !done {
            let b = Buffer(pool: worker.blocks)
            b.append(Array(text.utf8))
            encodeData(b, endStream: true)
        }
    }

    /// Ends the stream abruptly: the upstream is abandoned and the codec resets the client
    /// (HTTP/1.1: closes the connection without completing the message).
    func reset(flags: String) {
        guard !done else { return }
        if !flags.isEmpty { info.addFlag(flags) }
        if responseStarted { worker.stats.inc(cm.factory.stats.rqResetAfterDownstreamResponseStarted) }
        worker.stats.inc(cm.factory.stats.downstreamRqTxReset)
        router.abandonUpstream()
        finish()
        cm.resetStream(self)
    }

    /// The client went away (HTTP/1.1: the connection closed mid-request or mid-response).
    func downstreamReset() {
        guard !done else { return }
        info.addFlag("DC")
        worker.stats.inc(cm.factory.stats.downstreamRqRxReset)
        router.abandonUpstream()
        finish()
    }

    private func responseFinished() {
        responseComplete = true
        finish()
        cm.streamComplete(self)
    }

    /// Settles filters and stats once.
    private func finish() {
        if done { return }
        done = true
        if !responseComplete, let t = tunnel { tunnel = nil; t.release(worker.stats) }
        for i in 0..<decoderCount { decoder(i).onStreamDone() }
        decodeBuffer = nil
        encodeBuffer = nil
    }

    private func statusOf(_ h: HeaderMap) -> Int {
        guard let i = h.first(.status) else { return 0 }
        return h.withValue(i) { v in
            var s = 0
            for c in v { s = s * 10 + Int(c &- 0x30) }
            return s
        }
    }
}
