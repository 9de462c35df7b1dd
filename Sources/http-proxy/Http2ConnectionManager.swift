import CNghttp2
import Common

/// One HTTP/2 stream on a downstream connection: the request as nghttp2 decodes it, then the
/// `HttpStream` that serves it, and the response bytes waiting for the client's window.
final class Http2ServerStream {
    let id: Int32
    let headers: HeaderMap
    var trailers: HeaderMap?
    /// RFC 7541 4.1 sizes of the header fields decoded so far (the HPACK bomb guard).
    var headerBytes = 0
    var headerCount = 0
    var overflow = false
    /// Set when the request starts (after the read that completed its headers).
    var stream: HttpStream?
    var queuedToStart = false
    /// END_STREAM from the client.
    var remoteEnded = false
    /// Body that arrived before the stream started (same read as its headers).
    var earlyBody: Buffer?
    var closed = false
    /// Its place in the connection's `live` list (-1: not there).
    var liveIndex = -1
    /// An extended CONNECT (WebSocket) the upstream accepted: DATA both ways is relayed.
    var tunnel: Http2StreamTunnel?
    /// A CONNECT (plain, or extended with `:protocol`): its DATA is for the tunnel, held until
    /// it is up (within the stream window, which is not reopened before).
    var extendedConnect = false
    // Response side.
    let pendingSend: Buffer
    var sendEnd = false
    var sendTrailers: HeaderMap?
    var dataDeferred = false
    var noBody = false
    var aboveHigh = false
    /// The response's END_STREAM went out.
    var localEnded = false
    /// The proxy reset the stream (its RST_STREAM may still wait for the socket): it holds no
    /// response bytes and no longer keeps the connection busy.
    var resetSent = false
    /// The tunnel's host reset its connection after bytes still queued here: they go first,
    /// then RST_STREAM with this code.
    var resetAfterSend: UInt32?
    // Request flow control: while paused the stream's window is not reopened.
    var paused = 0
    var unconsumed = 0
    // Deadlines.
    var lastActivityMs: UInt64
    var streamIdleMs: UInt64 = 0
    var requestDeadline: UInt64 = 0
    let openedMs: UInt64

    init(id: Int32, headers: HeaderMap, pool: BlockPool, now: UInt64) {
        self.id = id
        self.headers = headers
        pendingSend = Buffer(pool: pool)
        lastActivityMs = now
        openedMs = now
    }
}

/// The HTTP connection manager for one downstream HTTP/2 connection (h2 by ALPN, or h2c with
/// prior knowledge): an nghttp2 server session framing many concurrent streams, each an
/// `HttpStream` with the same filters and router as HTTP/1.1.
///
/// ```
/// bytes ─► nghttp2_session_mem_recv ─► callbacks: headers, data, trailers per stream
///        ─► (after the read) streams whose headers completed start: filters, router
/// stream.encode* ─► nghttp2_submit_response / data provider (no copy) ─► out ─► one write per loop turn
/// ```
///
/// Re-entrancy: `nghttp2_session_mem_recv` and `nghttp2_session_send` are never called from
/// inside an nghttp2 callback or from code one reaches (`inSession`); `submit_*`, `resume_data`
/// and `consume` are. Output is flushed once per loop turn (`EndOfIteration`) and right after
/// each read. Requests start after the read that completed their headers, so a stream opened
/// and reset in one read never reaches the router (the cheap half of the rapid-reset defence).
///
/// Flow control: the proxy sends every WINDOW_UPDATE itself. A stream's window reopens as its
/// body is handed to the router, unless the router paused it (upstream slow); the connection's
/// window always reopens, so one stalled stream holds only its own window. Responses queue per
/// stream until the client's window takes them; past 256 KiB the stream's upstream pauses.
final class Http2ConnectionManager: ReadFilter, ConnectionCallbacks, ActiveSession, HttpServerCodec {
    private(set) var factory: HttpProxyFactory
    unowned(unsafe) let worker: Worker
    let connection: Connection
    var context: DownstreamContext
    unowned(unsafe) let workerState: HttpWorkerState
    private var settings: HttpSettings { factory.settings }
    private var stats: HttpConnectionManagerStats { factory.stats }
    /// Connection gauges stay with the generation that counted them up.
    private let cxStats: HttpConnectionManagerStats
    private var tracker: FactoryTracker

    private var session: OpaquePointer?
    /// Streams nghttp2 has open, owned here until it closes them.
    private var live: [Http2ServerStream] = []
    private var pendingStarts: [Http2ServerStream] = []
    private let out: Buffer
    private let scratch: Buffer
    private var inSession = false
    private var flusher: EndOfIteration?
    private var timer: DeadlineTimer?
    private var lastActivityMs: UInt64
    private var closing = false
    private var finished = false
    private var draining = false
    private var drainDeadline: UInt64 = 0
    private var finalGoawaySent = false
    /// Error codes of GOAWAYs this code submitted and not yet seen sent (others are nghttp2's own).
    private var ownGoaways: [UInt32] = []
    private var flood: Http2FloodGuard
    /// `connection_keepalive`: PINGs to the client. They and their ACKs are not activity: a
    /// connection with no stream still idles out.
    private var keepalive: Http2Keepalive
    /// The read being processed began a frame other than PING, or carried DATA.
    private var readSawOther = false
    /// A limit tripped inside a callback: the counter and code `fatal` uses.
    private var tripped: (counter: Counter, code: UInt32)?
    private var hpackBombs = 0
    private lazy var remoteIp: String? = context.remote?.host

    /// Response bytes one stream may queue before its upstream is paused, and resumed.
    static let streamHighWatermark = 256 << 10
    static let streamLowWatermark = 128 << 10
    /// Envoy's premature_reset_min_stream_lifetime_seconds.
    static let prematureResetLifetimeMs: UInt64 = 1000

    init(factory: HttpProxyFactory, worker: Worker, connection: Connection, context: DownstreamContext) {
        self.factory = factory
        self.worker = worker
        self.workerState = HttpWorkerState.of(worker)
        self.connection = connection
        self.context = context
        cxStats = factory.stats
        flood = factory.settings.http2.floodGuard
        keepalive = Http2Keepalive(factory.settings.http2.connectionKeepalive)
        tracker = FactoryTracker(worker: worker, factory: factory, context: context)
        out = Buffer(pool: worker.blocks)
        scratch = Buffer(pool: worker.blocks)
        lastActivityMs = context.startMs
    }

    // MARK: - Session setup

    private func makeSession() -> Bool {
        var cbs: OpaquePointer?
        guard nghttp2_session_callbacks_new(&cbs) == 0 else { return false }
        defer { nghttp2_session_callbacks_del(cbs) }
        nghttp2_session_callbacks_set_send_callback(cbs) { _, data, length, _, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onSend(data!, length) }
        }
        nghttp2_session_callbacks_set_send_data_callback(cbs) { _, frame, framehd, length, source, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef {
                $0.onSendData(framehd!, length, Unmanaged<Http2ServerStream>.fromOpaque(source!.pointee.ptr!).takeUnretainedValue())
            }
        }
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs) { _, frame, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onBeginHeaders(frame!) }
        }
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, frame, name, namelen, value, valuelen, _, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef {
                $0.onHeader(frame!, UnsafeRawBufferPointer(start: name, count: namelen), UnsafeRawBufferPointer(start: value, count: valuelen))
            }
        }
        nghttp2_session_callbacks_set_on_begin_frame_callback(cbs) { _, hd, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onBeginFrame(hd!.pointee) }
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onFrameRecv(frame!) }
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, streamId, data, len, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef {
                $0.onDataChunk(streamId, UnsafeRawBufferPointer(start: data, count: len))
            }
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, streamId, errorCode, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onStreamClose(streamId, errorCode) }
        }
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs) { _, frame, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onFrameSend(frame!) }
        }
        nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs) { _, frame, _, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onInvalidFrame(frame!) }
        }
        var opt: OpaquePointer?
        guard nghttp2_option_new(&opt) == 0 else { return false }
        defer { nghttp2_option_del(opt) }
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_max_settings(opt, 32)
        nghttp2_option_set_max_outbound_ack(opt, settings.http2.maxOutboundControlFrames)
        nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096)
        nghttp2_option_set_max_continuations(opt, 8)
        // Rapid reset (CVE-2023-44487): nghttp2's token bucket, twice the stream limit deep.
        nghttp2_option_set_stream_reset_rate_limit(opt, UInt64(max(200, 2 * settings.http2.maxConcurrentStreams)), 33)
        guard nghttp2_session_server_new2(&session, cbs, Unmanaged.passUnretained(self).toOpaque(), opt) == 0 else { return false }
        let h2 = settings.http2
        var iv: [nghttp2_settings_entry] = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: UInt32(h2.maxConcurrentStreams)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(h2.initialStreamWindowSize)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(settings.maxRequestHeadersBytes)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_HEADER_TABLE_SIZE.rawValue), value: UInt32(h2.hpackTableSize)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES.rawValue), value: 1),
            // RFC 8441: WebSocket over HTTP/2 streams.
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL.rawValue), value: 1),
        ]
        guard nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &iv, iv.count) == 0 else { return false }
        if h2.initialConnectionWindowSize > 65535 {
            _ = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Int32(h2.initialConnectionWindowSize))
        }
        return true
    }

    // MARK: - ReadFilter

    func onNewConnection() -> FilterStatus {
        worker.stats.inc(cxStats.downstreamCxTotal)
        worker.stats.inc(cxStats.downstreamCxHttp2Total)
        worker.stats.inc(cxStats.downstreamCxActive)
        worker.stats.inc(cxStats.downstreamCxHttp2Active)
        timer = DeadlineTimer(worker.dispatcher) { [unowned self] in onTimer() }
        flusher = EndOfIteration(worker.dispatcher) { [unowned self] in flush() }
        guard makeSession() else {
            closeConnection()
            return .stopIteration
        }
        armDeadline(lastActivityMs &+ settings.idleTimeoutMs, if: settings.idleTimeoutMs > 0)
        if keepalive.enabled { scheduleKeepalive() }
        if worker.draining { onDrain() }
        flush()
        return .stopIteration
    }

    func onData(_ buffer: Buffer, endStream: Bool) -> FilterStatus {
        let before = lastActivityMs
        lastActivityMs = monotonicMs()
        if keepalive.enabled { keepalive.received(now: lastActivityMs) }
        readSawOther = false
        processInput()
        // PINGs (the client's, or ACKs of the proxy's) are not the client using the connection:
        // they do not defer idle_timeout (Envoy's). Nor does a read without a whole frame header.
        if !readSawOther && !finished { lastActivityMs = before }
        return .stopIteration
    }

    private func processInput() {
        guard let session, !finished, !closing || !connection.readBuffer.isEmpty else { return }
        let buf = connection.readBuffer
        if !buf.isEmpty {
            inSession = true
            let n = nghttp2_session_mem_recv(session, buf.readable.baseAddress!.assumingMemoryBound(to: UInt8.self), buf.count)
            inSession = false
            buf.release()
            if finished { releaseSession(); return }
            if n < 0 {
                fatal(Int32(n))
                return
            }
            startPending()
            if finished { releaseSession(); return }
        }
        if connection.readEOF {
            // The client closed its side: no more frames, so no stream can complete its request
            // or read its response (HTTP/2 has no half-closed connection).
            closeConnection()
            return
        }
        flush()
    }

    /// nghttp2 refused the input (bad preface, flood, too many CONTINUATIONs, a broken frame):
    /// GOAWAY with the matching code, then the connection closes once it is written.
    private func fatal(_ code: Int32) {
        countProtocolError()
        let error: UInt32
        let calm = NGHTTP2_ENHANCE_YOUR_CALM.rawValue
        if let t = tripped {
            worker.stats.inc(t.counter)
            error = t.code
        } else {
            switch code {
            case NGHTTP2_ERR_FLOODED.rawValue: error = calm; worker.stats.inc(stats.http2.outboundControlFlood)
            case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS.rawValue: error = calm; worker.stats.inc(stats.http2.continuationFlood)
            case NGHTTP2_ERR_CALLBACK_FAILURE.rawValue: error = NGHTTP2_INTERNAL_ERROR.rawValue
            default: error = NGHTTP2_PROTOCOL_ERROR.rawValue
            }
        }
        ownGoaways.append(error)
        _ = nghttp2_session_terminate_session(session, error)
        flush()
        closeAfterFlush()
    }

    // MARK: - Starting requests

    private func startPending() {
        while !pendingStarts.isEmpty && !finished {
            let list = pendingStarts
            pendingStarts.removeAll(keepingCapacity: true)
            for h in list where !h.closed && h.stream == nil { start(h) }
        }
    }

    private func refreshFactory() {
        if let f = tracker.newer(worker, factory, context) { factory = f }
    }

    /// The request's headers are whole: translated to the shape HTTP/1.1 requests have here
    /// (RFC 9113 8.3.1), then the stream starts with what else arrived in the same read.
    private func start(_ h: Http2ServerStream) {
        refreshFactory()
        let headers = h.headers
        let s = HttpStream(cm: self, headers: headers, router: Router(factory: factory))
        s.router.stream = s
        s.codecStreamId = h.id
        s.info.protocolName = "HTTP/2"
        h.stream = s
        worker.stats.inc(stats.downstreamRqTotal)
        worker.stats.inc(stats.downstreamRqHttp2Total)
        worker.stats.inc(stats.downstreamRqActive)
        h.streamIdleMs = settings.streamIdleTimeoutMs
        h.lastActivityMs = monotonicMs()
        if h.streamIdleMs > 0 { armDeadline(h.lastActivityMs &+ h.streamIdleMs, if: true) }
        if h.overflow {
            worker.stats.inc(stats.http2.headerOverflow)
            s.sendLocalReply(431, "request header fields too large", flags: "DPE")
            return
        }
        if let problem = translateRequest(headers, s) {
            s.sendLocalReply(problem.status, problem.text, flags: "DPE")
            return
        }
        HttpConnectionShared.addForwardingHeaders(headers, settings: settings, remoteIp: remoteIp, connection: connection,
                                                  viaVersion: "2 ", rng: workerState.secureRandom)
        if !settings.useRemoteAddress || settings.xffNumTrustedHops > 0 {
            s.info.trustedClient = HttpConnectionShared.trustedClient(headers, settings: settings)
        }
        if !h.remoteEnded && settings.requestTimeoutMs > 0 {
            h.requestDeadline = s.info.startMs &+ settings.requestTimeoutMs
            armDeadline(h.requestDeadline, if: true)
        }
        s.installFilters(factory.filterFactories)
        if h.extendedConnect {
            // The upgrade request itself has no body (HTTP/1.1 upstreams get a plain GET); DATA is
            // the tunnel's, kept in `earlyBody` until the upstream agrees.
            s.decodeHeaders(endStream: true)
            return
        }
        let early = h.earlyBody
        h.earlyBody = nil
        let trailersNow = h.remoteEnded ? h.trailers : nil
        let headersEnd = h.remoteEnded && (early?.isEmpty ?? true) && trailersNow == nil
        s.decodeHeaders(endStream: headersEnd)
        if s.done || headersEnd { return }
        if let early, !early.isEmpty {
            s.decodeData(early, endStream: h.remoteEnded && trailersNow == nil)
            early.release()
        } else if h.remoteEnded && trailersNow == nil {
            scratch.release()
            s.decodeData(scratch, endStream: true)
        }
        if let t = trailersNow, !s.done { s.decodeTrailers(t) }
    }

    /// `:authority` and `host` reconciled, cookies joined into one field; a problem to answer
    /// instead, if any.
    private func translateRequest(_ h: HeaderMap, _ s: HttpStream) -> (status: Int, text: String)? {
        var plainConnect = false
        if let m = h.first(.method), h.valueEqualsIgnoringCase(m, "CONNECT"), h.first(.protocol) == nil {
            // RFC 9113 8.5: `:authority` host:port and no `:scheme`/`:path`; the stream's DATA
            // is the tunnel's, as with HTTP/1.1's CONNECT (routes with `connect_matcher`).
            guard let a = h.first(.authority), h.withValue(a, { isConnectTarget($0) && isValidAuthority($0) }) else {
                return (400, "bad CONNECT target")
            }
            plainConnect = true
            s.isConnect = true
            if let hs = h2(s) { hs.extendedConnect = true }
        } else if let m = h.first(.method), h.valueEqualsIgnoringCase(m, "CONNECT") {
            guard let p = h.first(.protocol), h.valueEqualsIgnoringCase(p, "websocket") else { return (501, "unsupported :protocol") }
            // RFC 8441 to the HTTP/1.1 upgrade an upstream understands (Envoy's transform): GET
            // with Upgrade, and a Sec-WebSocket-Key, which RFC 8441 clients do not send.
            h.remove(.protocol)
            h.set(.method, "GET")
            h.add(.upgrade, "websocket")
            h.add(.connection, "upgrade")
            if h.first(named: "sec-websocket-key") == nil { h.add("sec-websocket-key", webSocketKey()) }
            s.isUpgrade = true
            if let hs = h2(s) { hs.extendedConnect = true }
        }
        // Origin-form only (RFC 9113 8.3.1): nghttp2 checks `:path` only for http and https, and
        // an absolute or relative path would reach an HTTP/1.1 upstream as another target than
        // the `:authority` the route was chosen by.
        guard plainConnect || h.first(.scheme).map({ h.valueEqualsIgnoringCase($0, "http") || h.valueEqualsIgnoringCase($0, "https") }) == true else {
            return (400, "unsupported :scheme")
        }
        if plainConnect {
            if h.first(.path) != nil || h.first(.scheme) != nil { return (400, "CONNECT with :path or :scheme") }
        } else {
            guard let pi = h.first(.path), h.withValue(pi, { p in
                p.first == UInt8(ascii: "/") || (p.count == 1 && p[0] == UInt8(ascii: "*") && h.first(.method).map { h.valueEqualsIgnoringCase($0, "OPTIONS") } == true)
            }) else {
                return (400, "bad :path")
            }
        }
        let hostIndex = h.first(.host)
        if let a = h.first(.authority) {
            if let hi = hostIndex {
                let same = h.withValue(a) { av in h.withValue(hi) { hv in av.elementsEqual(hv) } }
                if !same {
                    worker.stats.inc(stats.http2.hostAuthorityMismatch)
                    return (400, "host and :authority differ")
                }
                h.remove(.host)
            }
        } else if let hi = hostIndex {
            let v = h.value(at: hi)
            h.remove(.host)
            h.add(.authority, v)
        } else {
            return (400, "missing :authority")
        }
        if let a = h.first(.authority), !h.withValue(a, isValidAuthority) { return (400, "bad :authority") }
        let cookies = h.indices(of: .cookie)
        if cookies.count > 1 {
            var joined = ""
            for i in cookies {
                if !joined.isEmpty { joined += "; " }
                joined += h.value(at: i)
            }
            h.set(.cookie, joined)
        }
        // `te` stays (nghttp2 lets only `trailers` through): an HTTP/2 upstream gets it (gRPC),
        // the HTTP/1.1 client removes it.
        return nil
    }

    /// 16 random bytes in base64, as RFC 6455 asks of a client.
    private func webSocketKey() -> String {
        let a = workerState.secureRandom.nextUInt64(), b = workerState.secureRandom.nextUInt64()
        var bytes: [UInt8] = []
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: a >> (i * 8))) }
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: b >> (i * 8))) }
        let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            let n = min(3, bytes.count - i)
            let v = (UInt32(bytes[i]) << 16) | (n > 1 ? UInt32(bytes[i + 1]) << 8 : 0) | (n > 2 ? UInt32(bytes[i + 2]) : 0)
            out.append(table[Int(v >> 18 & 63)]); out.append(table[Int(v >> 12 & 63)])
            out.append(n > 1 ? table[Int(v >> 6 & 63)] : UInt8(ascii: "=")); out.append(n > 2 ? table[Int(v & 63)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    // MARK: - nghttp2 callbacks (inside mem_recv or send)

    private func streamOf(_ id: Int32) -> Http2ServerStream? {
        guard let session, let p = nghttp2_session_get_stream_user_data(session, id) else { return nil }
        return Unmanaged<Http2ServerStream>.fromOpaque(p).takeUnretainedValue()
    }

    private func onBeginHeaders(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        guard frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) else { return 0 }
        let id = frame.pointee.hd.stream_id
        if frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST {
            let h = Http2ServerStream(id: id, headers: workerState.headerMaps.take(), pool: worker.blocks, now: monotonicMs())
            flood.streamOpened()
            h.liveIndex = live.count
            live.append(h)
            worker.stats.inc(cxStats.http2.streamsActive)
            nghttp2_session_set_stream_user_data(session, id, Unmanaged.passUnretained(h).toOpaque())
        } else if let h = streamOf(id) {
            // Trailers (or a second block the messaging checks refuse).
            h.trailers = HeaderMap()
        }
        return 0
    }

    private func onHeader(_ frame: UnsafePointer<nghttp2_frame>, _ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Int32 {
        readSawOther = true  // a header block whose frame began in an earlier read
        guard let h = streamOf(frame.pointee.hd.stream_id) else { return 0 }
        h.headerBytes += name.count + value.count + 32
        h.headerCount += 1
        let limit = settings.maxRequestHeadersBytes
        if h.headerBytes > limit || h.headerCount > settings.maxHeadersCount {
            h.overflow = true
            if h.headerBytes > 4 * limit {
                // Only an HPACK bomb decodes to this much: stop decoding the block; a second
                // one ends the connection.
                worker.stats.inc(stats.http2.headerOverflow)
                hpackBombs += 1
                if hpackBombs >= 2 {
                    tripped = (stats.http2.hpackBombClose, NGHTTP2_ENHANCE_YOUR_CALM.rawValue)
                    return NGHTTP2_ERR_CALLBACK_FAILURE.rawValue
                }
                _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), h.id, NGHTTP2_ENHANCE_YOUR_CALM.rawValue)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue
            }
            return 0
        }
        // A CONNECT's DATA is the tunnel's from its first byte, even in the read that carried
        // its HEADERS (the stream starts after that read): its window stays shut until then.
        if h.trailers == nil && name.count == 7 && equalsLiteral(name, ":method") && equalsLiteral(value, "CONNECT") { h.extendedConnect = true }
        let map = h.trailers ?? h.headers
        let ns = map.appendStorage(name)
        let vs = map.appendStorage(value)
        map.addEntry(nameStart: ns, nameLength: name.count, valueStart: vs, valueLength: value.count)
        return 0
    }

    /// Every frame header, before nghttp2 acts on the frame (PRIORITY frames reach no other
    /// callback): the flood limits.
    private func onBeginFrame(_ hd: nghttp2_frame_hd) -> Int32 {
        if hd.type != UInt8(NGHTTP2_PING.rawValue) { readSawOther = true }
        let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        let calm = NGHTTP2_ENHANCE_YOUR_CALM.rawValue
        switch flood.received(type: hd.type, length: hd.length, endStream: endStream) {
        case .ok: return 0
        case .emptyFrames: return trip(stats.http2.inboundEmptyFramesFlood, calm)
        case .priorityFrames: return trip(stats.http2.inboundPriorityFramesFlood, calm)
        case .windowUpdateFrames: return trip(stats.http2.inboundWindowUpdateFramesFlood, calm)
        case .prematureResets: return trip(stats.http2.prematureResetClose, calm)
        }
    }

    private func onFrameRecv(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let hd = frame.pointee.hd
        let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        let calm = NGHTTP2_ENHANCE_YOUR_CALM.rawValue
        switch UInt32(hd.type) {
        case NGHTTP2_HEADERS.rawValue:
            guard let h = streamOf(hd.stream_id) else { return 0 }
            h.lastActivityMs = monotonicMs()
            if endStream { h.remoteEnded = true }
            if frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST {
                if !h.queuedToStart { h.queuedToStart = true; pendingStarts.append(h) }
            } else if let t = h.trailers {
                worker.stats.inc(stats.http2.trailers)
                if endStream { h.requestDeadline = 0 }
                if let s = h.stream, !s.done, endStream {
                    s.decodeTrailers(t)
                    flushSoon()
                }
            }
        case NGHTTP2_DATA.rawValue:
            guard endStream, let h = streamOf(hd.stream_id) else { return 0 }
            h.remoteEnded = true
            h.requestDeadline = 0
            if let t = h.tunnel {
                t.fromClient(nil, end: true)
            } else if h.extendedConnect {
                break
            } else if let s = h.stream, !s.done {
                scratch.release()
                s.decodeData(scratch, endStream: true)
                flushSoon()
            }
        case NGHTTP2_PING.rawValue:
            if hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0 && keepalive.awaitingAck { scheduleKeepalive() }
        case NGHTTP2_RST_STREAM.rawValue:
            worker.stats.inc(stats.http2.rxReset)
            // Premature (Envoy): reset by the client before its response ended and within a
            // second of opening; a long call or tunnel the client cancels is not an attack.
            if let h = streamOf(hd.stream_id), !h.localEnded, monotonicMs() &- h.openedMs < Self.prematureResetLifetimeMs,
               flood.prematureReset() != .ok {
                return trip(stats.http2.prematureResetClose, calm)
            }
        default:
            break
        }
        return 0
    }

    /// `downstream_cx_protocol_error`, once per connection (nghttp2 and this code may both send
    /// a GOAWAY for one attack).
    private func countProtocolError() {
        if protocolErrorCounted { return }
        protocolErrorCounted = true
        worker.stats.inc(stats.downstreamCxProtocolError)
    }
    private var protocolErrorCounted = false

    /// A limit tripped inside a callback: stop reading this input; `fatal` sends the GOAWAY.
    private func trip(_ counter: Counter, _ code: UInt32) -> Int32 {
        if tripped == nil { tripped = (counter, code) }
        return NGHTTP2_ERR_CALLBACK_FAILURE.rawValue
    }

    private func onDataChunk(_ id: Int32, _ data: UnsafeRawBufferPointer) -> Int32 {
        readSawOther = true  // DATA whose frame began in an earlier read
        guard let session else { return 0 }
        guard let h = streamOf(id) else {
            _ = nghttp2_session_consume_connection(session, data.count)
            return 0
        }
        h.lastActivityMs = monotonicMs()
        lastActivityMs = h.lastActivityMs
        // A CONNECT's bytes wait in `earlyBody` until its tunnel is up: the stream's window is
        // not reopened meanwhile, so the window bounds them.
        if h.paused > 0 || (h.extendedConnect && h.tunnel == nil) {
            h.unconsumed += data.count
            _ = nghttp2_session_consume_connection(session, data.count)
        } else {
            _ = nghttp2_session_consume(session, id, data.count)
        }
        if let t = h.tunnel {
            t.fromClient(data, end: false)
            return 0
        }
        if h.extendedConnect {
            if h.stream?.done == false || h.stream == nil {
                let b = h.earlyBody ?? Buffer(pool: worker.blocks)
                h.earlyBody = b
                b.append(data)
            }
            return 0
        }
        if let s = h.stream {
            if s.done { return 0 }
            scratch.append(data)
            s.decodeData(scratch, endStream: false)
            scratch.release()
            flushSoon()
        } else {
            let b = h.earlyBody ?? Buffer(pool: worker.blocks)
            h.earlyBody = b
            b.append(data)
        }
        return 0
    }

    private func onStreamClose(_ id: Int32, _ errorCode: UInt32) -> Int32 {
        guard let h = streamOf(id) else { return 0 }
        nghttp2_session_set_stream_user_data(session, id, nil)
        settleStream(h)
        if h.liveIndex >= 0 {
            // Swap-remove; its methods may be on the stack: freed after this event.
            let i = h.liveIndex
            let last = live.removeLast()
            if i < live.count { live[i] = last; last.liveIndex = i }
            h.liveIndex = -1
            worker.dispatcher.deferredRelease(h)
        }
        if draining && live.isEmpty { flushSoon() }
        if live.isEmpty {
            lastActivityMs = monotonicMs()
            armDeadline(lastActivityMs &+ settings.idleTimeoutMs, if: settings.idleTimeoutMs > 0)
        }
        return 0
    }

    /// A stream is over (nghttp2 closed it, or the connection went): its tunnel closes, its
    /// request ends as reset by the client if unfinished (flag DC), its stats and access log
    /// settle with the generation it started in (a reload may have changed the prefix), and its
    /// queued bytes go.
    private func settleStream(_ h: Http2ServerStream) {
        h.closed = true
        if let t = h.tunnel {
            h.tunnel = nil
            t.close()
            worker.stats.dec(cxStats.downstreamCxUpgradesActive)
        }
        if let s = h.stream {
            if !s.done { s.downstreamReset() }
            HttpConnectionShared.settle(s, stats: s.router.factory.stats, worker: worker, context: &context, connection: connection)
        }
        h.aboveHigh = false
        dropPending(h)
        h.earlyBody = nil
        workerState.headerMaps.give(h.headers)
        worker.stats.dec(cxStats.http2.streamsActive)
    }

    private func onFrameSend(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let hd = frame.pointee.hd
        switch UInt32(hd.type) {
        case NGHTTP2_RST_STREAM.rawValue:
            worker.stats.inc(stats.http2.txReset)
        case NGHTTP2_GOAWAY.rawValue:
            worker.stats.inc(stats.http2.goawaySent)
            let code = frame.pointee.goaway.error_code
            if let i = ownGoaways.firstIndex(of: code) {
                ownGoaways.remove(at: i)
            } else if code != NGHTTP2_NO_ERROR.rawValue {
                // nghttp2 ended the connection itself (a broken frame, its reset rate limit).
                countProtocolError()
                if code == NGHTTP2_INTERNAL_ERROR.rawValue { worker.stats.inc(stats.http2.rapidResetGoaway) }
            }
            return 0
        case NGHTTP2_DATA.rawValue, NGHTTP2_HEADERS.rawValue:
            if hd.type == UInt8(NGHTTP2_DATA.rawValue) {
                flood.dataSent()
                if let h = streamOf(hd.stream_id), let code = h.resetAfterSend, h.pendingSend.isEmpty {
                    h.resetAfterSend = nil
                    resetLocally(h, code)
                    return 0
                }
            }
            guard hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0, let h = streamOf(hd.stream_id) else { return 0 }
            h.localEnded = true
            // The response is whole while the client still sends: it may stop (RFC 9113 8.1).
            // Not a tunnel: END_STREAM is its host's FIN, a half-close (RFC 9113 8.5), and the
            // client's bytes still go on to the host.
            if !h.remoteEnded && h.tunnel == nil {
                _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), h.id, NGHTTP2_NO_ERROR.rawValue)
            }
        default:
            break
        }
        return 0
    }

    private func onInvalidFrame(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        worker.stats.inc(stats.http2.rxMessagingError)
        if frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) && streamOf(frame.pointee.hd.stream_id) == nil
            && live.count >= settings.http2.maxConcurrentStreams {
            worker.stats.inc(stats.http2.tooManyStreams)
        }
        return 0
    }

    /// Control frames and headers into `out`, unless the socket is backed up.
    private func onSend(_ data: UnsafePointer<UInt8>, _ length: Int) -> Int {
        if socketFull { return Int(NGHTTP2_ERR_WOULDBLOCK.rawValue) }
        out.append(UnsafeRawBufferPointer(start: data, count: length))
        return length
    }

    /// A DATA frame: its 9-byte header, then the body straight from the stream's queue.
    private func onSendData(_ framehd: UnsafePointer<UInt8>, _ length: Int, _ h: Http2ServerStream) -> Int32 {
        if socketFull { return NGHTTP2_ERR_WOULDBLOCK.rawValue }
        out.append(UnsafeRawBufferPointer(start: framehd, count: 9))
        if length > 0 {
            out.append(UnsafeRawBufferPointer(rebasing: h.pendingSend.readable[0..<length]))
            h.pendingSend.drain(length)
            worker.stats.sub(cxStats.http2.pendingSendBytes, length)
        }
        h.lastActivityMs = monotonicMs()
        if h.aboveHigh && h.pendingSend.count < Self.streamLowWatermark {
            h.aboveHigh = false
            if let t = h.tunnel { t.resumeUpstream() } else if let s = h.stream, !s.done { s.router.downstreamBelowLowWatermark() }
        }
        return 0
    }

    private var socketFull: Bool { connection.pendingWriteBytes + out.count >= settings.bufferLimit }

    /// The data provider's read: how much of the queue the next DATA frame takes (no copy).
    fileprivate func onReadData(_ id: Int32, _ length: Int, _ flags: UnsafeMutablePointer<UInt32>, _ h: Http2ServerStream) -> Int {
        let n = min(length, h.pendingSend.count)
        if n == 0 && !h.sendEnd {
            h.dataDeferred = true
            return Int(NGHTTP2_ERR_DEFERRED.rawValue)
        }
        flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_COPY.rawValue)
        if h.sendEnd && n == h.pendingSend.count {
            flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
            if let t = h.sendTrailers {
                h.sendTrailers = nil
                flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue)
                Http2Headers.withFields(t, status: nil) { nva, count in _ = nghttp2_submit_trailer(session, id, nva, count) }
            }
        }
        return n
    }

    // MARK: - Encoding responses (called by streams)

    private func h2(_ s: HttpStream) -> Http2ServerStream? { finished ? nil : streamOf(s.codecStreamId) }

    func encodeHeaders(_ s: HttpStream, _ h: HeaderMap, endStream: Bool) {
        guard let hs = h2(s) else { return }
        var status = s.info.responseCode
        var endStream = endStream
        if s.tunnel != nil {
            // The upstream's 101 becomes RFC 8441's 200; its Sec-WebSocket-Accept answers the key
            // this proxy made up, so it goes. The stream stays open for the relay.
            status = 200
            h.remove("sec-websocket-accept")
            endStream = false
        }
        let isHead = s.requestHeaders.first(.method).map { s.requestHeaders.valueEqualsIgnoringCase($0, "HEAD") } ?? false
        hs.noBody = isHead || status == 204 || status == 304
        if status == 204 || status == 304 { h.remove(.contentLength) }
        if let via = settings.via { h.add(.via, "1.1 " + via) }
        let end = endStream || hs.noBody
        if end { hs.sendEnd = true }
        var provider = nghttp2_data_provider()
        provider.source = nghttp2_data_source(ptr: Unmanaged.passUnretained(hs).toOpaque())
        provider.read_callback = { session, id, _, length, flags, source, user in
            Unmanaged<Http2ConnectionManager>.fromOpaque(user!)._withUnsafeGuaranteedRef {
                $0.onReadData(id, length, flags!, Unmanaged<Http2ServerStream>.fromOpaque(source!.pointee.ptr!).takeUnretainedValue())
            }
        }
        let id = hs.id
        let session = session
        Http2Headers.withFields(h, status: status) { nva, count in
            if end {
                _ = nghttp2_submit_response(session, id, nva, count, nil)
            } else {
                _ = withUnsafePointer(to: &provider) { nghttp2_submit_response(session, id, nva, count, $0) }
            }
        }
        flushSoon()
    }

    func encodeData(_ s: HttpStream, _ data: Buffer, endStream: Bool) {
        guard let hs = h2(s), !hs.noBody else { data.release(); return }
        let n = data.count
        hs.pendingSend.moveAll(from: data)
        if n > 0 { worker.stats.add(cxStats.http2.pendingSendBytes, n) }
        if endStream { hs.sendEnd = true }
        resume(hs)
        if !hs.aboveHigh && hs.pendingSend.count > Self.streamHighWatermark {
            hs.aboveHigh = true
            s.router.downstreamAboveHighWatermark()
        }
    }

    func encodeTrailers(_ s: HttpStream, _ t: HeaderMap) {
        guard let hs = h2(s), !hs.noBody else { return }
        hs.sendTrailers = t
        hs.sendEnd = true
        resume(hs)
    }

    private func resume(_ hs: Http2ServerStream) {
        if hs.dataDeferred {
            hs.dataDeferred = false
            _ = nghttp2_session_resume_data(session, hs.id)
        }
        flushSoon()
    }

    func streamComplete(_ s: HttpStream) {
        if let t = s.tunnel, let hs = h2(s) {
            s.tunnel = nil
            worker.stats.inc(cxStats.downstreamCxUpgradesTotal)
            worker.stats.inc(cxStats.downstreamCxUpgradesActive)
            let relay = Http2StreamTunnel(cm: self, stream: hs, upstream: t)
            hs.tunnel = relay
            if let early = hs.earlyBody, !early.isEmpty {
                hs.earlyBody = nil
                relay.fromClient(early.readable, end: false)
                early.release()
            }
            if hs.remoteEnded { relay.fromClient(nil, end: true) }
            relay.start()
            if hs.paused == 0 && hs.unconsumed > 0, let session {
                _ = nghttp2_session_consume_stream(session, hs.id, hs.unconsumed)
                hs.unconsumed = 0
            }
        }
        flushSoon()
    }

    // MARK: - Stream tunnels (called by Http2StreamTunnel)

    /// Bytes from the upstream of a tunnel go out as the stream's DATA; the upstream pauses
    /// while the client's window holds more than the stream's high watermark.
    func tunnelData(_ h: Http2ServerStream, _ data: Buffer, end: Bool) {
        guard !finished, !h.closed, !h.resetSent else { data.release(); return }
        let n = data.count
        h.pendingSend.moveAll(from: data)
        if n > 0 { worker.stats.add(cxStats.http2.pendingSendBytes, n) }
        if end { h.sendEnd = true }
        h.lastActivityMs = monotonicMs()
        resume(h)
        if !h.aboveHigh && h.pendingSend.count > Self.streamHighWatermark {
            h.aboveHigh = true
            h.tunnel?.pauseUpstream()
        }
    }

    /// The tunnel's upstream closed or failed before the stream ended: reset it.
    func tunnelClosed(_ h: Http2ServerStream) {
        guard !finished, !h.closed else { return }
        // The host's connection failed (a reset, not a FIN): CONNECT_ERROR (RFC 9113 8.5).
        if h.sendEnd {
            flushSoon()
        } else if h.pendingSend.isEmpty {
            resetLocally(h, NGHTTP2_CONNECT_ERROR.rawValue)
        } else {
            h.resetAfterSend = NGHTTP2_CONNECT_ERROR.rawValue  // what the host sent before its reset goes first
            resume(h)
        }
    }

    func tunnelPauseClient(_ h: Http2ServerStream) { h.paused += 1 }

    func tunnelResumeClient(_ h: Http2ServerStream) { resumeWindow(h) }

    func resetStream(_ s: HttpStream) {
        guard let hs = h2(s) else { return }
        resetLocally(hs, NGHTTP2_INTERNAL_ERROR.rawValue)
    }

    /// RST_STREAM from the proxy. Its queued response bytes go now: the RST may wait behind a
    /// full socket, and nothing of the stream will be sent anyway.
    private func resetLocally(_ h: Http2ServerStream, _ code: UInt32) {
        if h.resetSent { return }
        h.resetSent = true
        dropPending(h)
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), h.id, code)
        if h.aboveHigh { h.aboveHigh = false }
        flushSoon()
    }

    private func dropPending(_ h: Http2ServerStream) {
        if !h.pendingSend.isEmpty { worker.stats.sub(cxStats.http2.pendingSendBytes, h.pendingSend.count); h.pendingSend.release() }
    }

    func flushOutput() { flushSoon() }

    private func flushSoon() {
        if finished { return }
        flusher?.schedule()
    }

    /// Frames nghttp2 has ready into one write, while the socket takes them.
    private func flush() {
        guard let session, !inSession, !finished else { return }
        inSession = true
        var rounds = 0
        while nghttp2_session_want_write(session) != 0 && connection.pendingWriteBytes < settings.bufferLimit && rounds < 64 {
            let rv = nghttp2_session_send(session)
            if rv != 0 { break }
            if out.isEmpty { break }
            lastActivityMs = monotonicMs()
            connection.write(out, endStream: false)
            if finished || connection.state != .open { break }
            rounds += 1
        }
        inSession = false
        if finished { releaseSession(); return }
        if nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            // nghttp2 is done with the connection (GOAWAY both ways, or a fatal error sent).
            closeAfterFlush()
            return
        }
        if draining && finalGoawaySent && live.isEmpty && nghttp2_session_want_write(session) == 0 {
            closeAfterFlush()
        }
    }

    // MARK: - Flow control (request bodies)

    func readDisable(_ s: HttpStream) {
        guard let hs = h2(s) else { return }
        hs.paused += 1
    }

    func readEnable(_ s: HttpStream) {
        guard let hs = h2(s) else { return }
        resumeWindow(hs)
    }

    /// One pause of the stream's request body lifted; at the last, the window it held back
    /// reopens (WINDOW_UPDATE).
    private func resumeWindow(_ h: Http2ServerStream) {
        guard h.paused > 0, let session else { return }
        h.paused -= 1
        if h.paused == 0 && h.unconsumed > 0 {
            _ = nghttp2_session_consume_stream(session, h.id, h.unconsumed)
            h.unconsumed = 0
            flushSoon()
        }
    }

    var streamFlowLimit: Int { min(settings.bufferLimit, 256 << 10) }

    func nextRandom() -> UInt64 { workerState.rng.next() }

    // MARK: - Timers

    func armDeadline(_ deadline: UInt64, if condition: Bool) { if condition { timer?.arm(deadline) } }

    private func scheduleKeepalive() {
        let now = monotonicMs()
        keepalive.schedule(now: now, random: workerState.rng.next())
        if case .wait(let d) = keepalive.due(now: now) { armDeadline(d, if: true) }
    }

    func setStreamIdleTimeout(_ s: HttpStream, _ ms: UInt64) {
        guard let hs = h2(s) else { return }
        hs.streamIdleMs = ms
        if ms > 0 { armDeadline(monotonicMs() &+ ms, if: true) }
    }

    /// One timer per connection: scans the open streams' deadlines (at most
    /// max_concurrent_streams of them) and the connection's own.
    private func onTimer() {
        timer?.fired()
        if finished { return }
        let now = monotonicMs()
        var next = UInt64.max
        func consider(_ d: UInt64) { if d > 0 && d < next { next = d } }
        for h in live {
            guard let s = h.stream, !h.resetSent else { continue }
            if s.done {
                // The response is all handed over but waits for the client's window: the stream
                // idle timeout still applies until nghttp2 closes the stream. So it does to a
                // tunnel whose host half-closed while its client stays silent.
                if h.streamIdleMs > 0 && (!h.localEnded || (h.tunnel != nil && !h.remoteEnded)) {
                    let d = h.lastActivityMs &+ h.streamIdleMs
                    if now >= d {
                        worker.stats.inc(stats.downstreamRqIdleTimeout)
                        resetLocally(h, NGHTTP2_CANCEL.rawValue)
                        continue
                    }
                    consider(d)
                }
                continue
            }
            if h.requestDeadline > 0 {
                if now >= h.requestDeadline {
                    h.requestDeadline = 0
                    worker.stats.inc(stats.downstreamRqTimeout)
                    s.sendLocalReply(408, "request timeout", flags: "")
                    continue
                }
                consider(h.requestDeadline)
            }
            if s.routeDeadlineMs > 0 {
                if now >= s.routeDeadlineMs {
                    s.routeDeadlineMs = 0
                    s.router.routeTimedOut()
                    if s.done { continue }
                }
                consider(s.routeDeadlineMs)
            }
            if h.streamIdleMs > 0 {
                let d = h.lastActivityMs &+ h.streamIdleMs
                if now >= d {
                    worker.stats.inc(stats.downstreamRqIdleTimeout)
                    if s.responseStarted { s.reset(flags: "SI") } else { s.sendLocalReply(408, "stream timeout", flags: "SI") }
                    continue
                }
                consider(d)
            }
        }
        if draining && !finalGoawaySent {
            if now >= drainDeadline { sendFinalGoaway() } else { consider(drainDeadline) }
        }
        if keepalive.enabled && !closing {
            switch keepalive.due(now: now) {
            case .wait(let d):
                consider(d)
            case .dead:
                worker.stats.inc(stats.http2.keepaliveTimeout)
                closeConnection()
                return
            case .ping:
                if let session {
                    Http2Keepalive.submitPing(session, random: workerState.rng.next())
                    keepalive.pinged(now: now)
                    consider(now &+ keepalive.config.timeoutMs)
                    // Writing the PING is not activity either.
                    let before = lastActivityMs
                    flush()
                    lastActivityMs = before
                    if finished { return }
                }
            }
        }
        // Streams the proxy reset wait only for their RST_STREAM to be written (a client that
        // does not read may never take it): they do not keep the connection from idling.
        let busy = live.contains { $0.stream != nil && !$0.resetSent }
        if closing {
            // GOAWAY written or not, a connection that is ending does not wait on its client
            // for more than a second (Envoy's delayed_close_timeout).
            if now >= closeDeadline { closeConnection(); return }
            consider(closeDeadline)
        } else if !busy && settings.idleTimeoutMs > 0 {
            let d = lastActivityMs &+ settings.idleTimeoutMs
            if now >= d {
                worker.stats.inc(stats.downstreamCxIdleTimeout)
                ownGoaways.append(NGHTTP2_NO_ERROR.rawValue)
                _ = nghttp2_session_terminate_session(session, NGHTTP2_NO_ERROR.rawValue)
                flush()
                closeAfterFlush()
                return
            }
            consider(d)
        }
        if next != UInt64.max { armDeadline(next, if: true) }
        flush()
    }

    // MARK: - Drain and close

    /// GOAWAY in two steps (RFC 9113 6.8): a notice that new streams may soon be refused,
    /// then after `drain_timeout` (or at once with nothing open) the last stream id; open
    /// streams finish, then the connection closes.
    func onDrain() {
        guard !draining, session != nil, !finished else { return }
        draining = true
        if live.isEmpty {
            sendFinalGoaway()
        } else {
            ownGoaways.append(NGHTTP2_NO_ERROR.rawValue)
            _ = nghttp2_submit_shutdown_notice(session)
            drainDeadline = monotonicMs() &+ max(settings.drainTimeoutMs, 1)
            armDeadline(drainDeadline, if: true)
        }
        flushSoon()
    }

    private func sendFinalGoaway() {
        guard !finalGoawaySent, let session else { return }
        finalGoawaySent = true
        worker.stats.inc(stats.downstreamCxDrainClose)
        ownGoaways.append(NGHTTP2_NO_ERROR.rawValue)
        _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session),
                                  NGHTTP2_NO_ERROR.rawValue, nil, 0)
        flushSoon()
    }

    func forceClose() { closeConnection() }

    private func closeAfterFlush() {
        if closing { return }
        closing = true
        closeDeadline = monotonicMs() &+ 1000
        armDeadline(closeDeadline, if: true)
        connection.closeAfterFlush()
        if connection.state == .closed { finish() }
    }
    private var closeDeadline: UInt64 = 0

    private func closeConnection() {
        if finished { return }
        closing = true
        connection.close()
        finish()
    }

    // MARK: - ConnectionCallbacks (downstream)

    func onConnected(_ connection: Connection) {}
    func onConnectFailed(_ connection: Connection, errno: Int32) {}
    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {}
    func onClose(_ connection: Connection, remote: Bool) { finish() }
    func onAboveWriteBufferHighWatermark(_ connection: Connection) {}
    func onBelowWriteBufferLowWatermark(_ connection: Connection) { flushSoon() }

    private func finish() {
        if finished { return }
        finished = true
        timer?.cancel()
        // Streams still open end as reset by the client (flag DC); their stats settle now.
        for h in live { settleStream(h) }
        pendingStarts.removeAll()
        let st = worker.stats
        st.dec(cxStats.downstreamCxActive)
        st.dec(cxStats.downstreamCxHttp2Active)
        st.add(cxStats.downstreamCxRxBytesTotal, Int(connection.bytesRead))
        st.add(cxStats.downstreamCxTxBytesTotal, Int(connection.bytesWritten))
        connection.callbacks = nil
        if connection.state != .closed { connection.close() }
        worker.downstreamClosed(context)
        if !inSession { releaseSession() }
        worker.untrack(self)
    }

    /// Frees the nghttp2 session and the streams it pointed at (never from inside nghttp2).
    private func releaseSession() {
        if let s = session { session = nil; nghttp2_session_del(s) }
        for h in live { worker.dispatcher.deferredRelease(h) }
        live.removeAll()
        out.release()
    }
}


/// After an extended CONNECT's 200 (RFC 8441, WebSocket over HTTP/2): the stream's DATA and an
/// upstream connection (an HTTP/1.1 WebSocket upgrade) relay bytes both ways with the same
/// back-pressure as responses: the upstream stops being read while the client's window holds
/// the stream's high watermark, and the client's stream window stays shut while the upstream's
/// write buffer is over its own. END_STREAM from the client half-closes the upstream; the
/// upstream's FIN ends the stream; a reset or close on either side ends both.
final class Http2StreamTunnel: ConnectionCallbacks {
    unowned(unsafe) let cm: Http2ConnectionManager
    unowned(unsafe) let stream: Http2ServerStream
    let upstream: UpstreamTunnel
    private var readPaused = false
    private var clientPaused = false
    private var closed = false
    private let scratch: Buffer

    init(cm: Http2ConnectionManager, stream: Http2ServerStream, upstream: UpstreamTunnel) {
        self.cm = cm; self.stream = stream; self.upstream = upstream
        scratch = Buffer(pool: upstream.connection.worker.blocks)
        upstream.connection.callbacks = self
        // Nothing else wakes a tunnel whose host reset after its last bytes.
        upstream.connection.readsUntilEagain = true
    }

    /// Bytes that came with the 101 are the first DATA.
    func start() {
        let c = upstream.connection
        if !c.readBuffer.isEmpty || c.readEOF { onData(c, c.readBuffer, endStream: c.readEOF) }
        // A reset that came before the tunnel (with bytes read after a short read) is seen now.
        if !closed { c.continueReading() }
    }

    func fromClient(_ data: UnsafeRawBufferPointer?, end: Bool) {
        guard !closed, upstream.connection.state == .open else { return }
        if let data { scratch.append(data) }
        upstream.connection.write(scratch, endStream: end)
        scratch.release()
    }

    func pauseUpstream() { if !readPaused { readPaused = true; upstream.connection.readDisable() } }
    func resumeUpstream() { if readPaused { readPaused = false; upstream.connection.readEnable() } }

    func close() {
        if closed { return }
        closed = true
        upstream.connection.callbacks = nil
        upstream.release(nil)
    }

    func onData(_ c: Connection, _ buffer: Buffer, endStream: Bool) {
        if closed { buffer.release(); return }
        cm.tunnelData(stream, buffer, end: endStream)
    }

    func onClose(_ c: Connection, remote: Bool) {
        if closed { return }
        cm.tunnelClosed(stream)
    }

    func onAboveWriteBufferHighWatermark(_ c: Connection) {
        if !clientPaused { clientPaused = true; cm.tunnelPauseClient(stream) }
    }

    func onBelowWriteBufferLowWatermark(_ c: Connection) {
        if clientPaused { clientPaused = false; cm.tunnelResumeClient(stream) }
    }

    func onConnected(_ c: Connection) {}
    func onConnectFailed(_ c: Connection, errno: Int32) {}
}
