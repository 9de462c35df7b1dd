import CNghttp2
import Common

/// One request on an upstream HTTP/2 connection: its nghttp2 stream, the request body waiting
/// for the host's window, and the response as it arrives.
final class Http2ClientStream: UpstreamStream {
    unowned(unsafe) let client: Http2Client
    var id: Int32 = -1
    /// The request this stream carries; nil once the response is whole or the router gave up.
    var attempt: UpstreamAttempt?
    let pendingSend: Buffer
    var sendEnd = false
    var sendTrailers: HeaderMap?
    var dataDeferred = false
    var requestSent = false
    var response: HeaderMap?
    var trailers: HeaderMap?
    var headersDone = false
    var headerBytes = 0
    var paused = 0
    var unconsumed = 0
    var aboveHigh = false
    /// The pool was told this request finished (once).
    var released = false

    init(client: Http2Client) {
        self.client = client
        pendingSend = Buffer(pool: client.worker.blocks)
    }

    func start(_ a: UpstreamAttempt, headers: HeaderMap, endStream: Bool, hasBody: Bool, contentLength: Bool) {
        attempt = a
        sendEnd = endStream
        client.submit(self, headers, endStream: endStream)
    }

    func sendData(_ data: Buffer, endStream: Bool) {
        guard attempt != nil, !sendEnd else { data.release(); return }
        pendingSend.moveAll(from: data)
        if endStream { sendEnd = true }
        client.resume(self)
        if !aboveHigh && pendingSend.count > Http2Client.streamHighWatermark {
            aboveHigh = true
            attempt?.upstreamAboveHighWatermark()
        }
    }

    func sendTrailers(_ t: HeaderMap) {
        guard attempt != nil, !sendEnd || !pendingSend.isEmpty || dataDeferred else { return }
        sendTrailers = t
        sendEnd = true
        client.resume(self)
    }

    func abandon() {
        attempt = nil
        client.cancel(self)
    }

    func unused() { client.release(self) }

    func readDisable() { paused += 1 }

    func readEnable() {
        guard paused > 0 else { return }
        paused -= 1
        if paused == 0 && unconsumed > 0 { client.consume(self) }
    }
}

/// One upstream HTTP/2 connection of a pool (`protocol: http2`): an nghttp2 client session
/// multiplexing up to min(the host's MAX_CONCURRENT_STREAMS, `http2.max_concurrent_streams`)
/// requests, which it tells the pool as its capacity. GOAWAY from the host takes it out of the
/// pool for new requests (streams above the last stream id come back refused: retriable);
/// giving up one request resets only its stream. The same re-entrancy rule as the server side
/// (`Http2ConnectionManager`): `mem_recv` and `send` only from the outside.
final class Http2Client: PooledConnection, UpstreamClient {
    static let streamHighWatermark = 256 << 10
    static let streamLowWatermark = 128 << 10

    private var session: OpaquePointer?
    /// Streams nghttp2 knows, owned here until it closes them.
    private var streams: [ObjectIdentifier: Http2ClientStream] = [:]
    private let out: Buffer
    private let scratch: Buffer
    private var inSession = false
    private var flusher: EndOfIteration?
    private var goneAway = false
    private let maxStreams: Int
    private let streamWindow: Int
    private let connectionWindow: Int
    /// `connection_keepalive`: the PINGs' schedule.
    private var keepalive: Http2Keepalive
    private var protocolErrorCounted = false

    override init(pool: HostPool, id: PoolConnectionID, cluster: WorkerCluster, host: Int) {
        out = Buffer(pool: pool.worker.blocks)
        scratch = Buffer(pool: pool.worker.blocks)
        let o = cluster.snapshot.config.binaryOptions as? HttpClusterOptions
        maxStreams = o?.http2MaxConcurrentStreams ?? 100
        streamWindow = o?.http2InitialStreamWindow ?? 65535
        connectionWindow = o?.http2InitialConnectionWindow ?? 1 << 20
        keepalive = Http2Keepalive(o?.http2Keepalive ?? Http2KeepaliveConfig())
        responseMaps = HttpWorkerState.of(pool.worker).headerMaps
        super.init(pool: pool, id: id, cluster: cluster, host: host)
    }

    func newStream() -> (any UpstreamStream)? { closed || goneAway || session == nil ? nil : Http2ClientStream(client: self) }

    // MARK: - Session

    override func didConnect(_ c: Connection) {
        worker.stats.inc(pool.stats.cxHttp2Total)
        flusher = EndOfIteration(worker.dispatcher) { [unowned self] in flush() }
        guard makeSession() else {
            closeAndReport()
            return
        }
        flush()
        // The pool hears of the connection with the host's SETTINGS (the first frame a server
        // sends), which say how many requests it takes: assuming nghttp2's 100 would send
        // streams a host allowing fewer refuses. What is left of the connect timeout covers
        // the wait (TCP, TLS and SETTINGS together, not a second full timeout).
        let t = Timer(worker.dispatcher) { [unowned self] in onTimer() }
        timer = t
        let spent = monotonicMs() &- connectStartMs
        let limit = cluster.snapshot.config.connectTimeoutMs
        t.arm(ms: spent < limit ? limit - spent : 1)
    }

    private var settingsSeen = false
    private let responseMaps: HeaderMapCache

    override func connectFailed(timeout: Bool, local: Bool = false) {
        super.connectFailed(timeout: timeout, local: local)
        if !inSession { releaseSession() }
    }

    /// The one timer: the wait for the host's SETTINGS, then the keep-alive PINGs.
    private func onTimer() {
        if !settingsSeen { connectFailed(timeout: true); return }
        guard keepalive.enabled, let session, !closed, !inSession else { return }
        let now = monotonicMs()
        switch keepalive.due(now: now) {
        case .wait(let d):
            timer?.arm(ms: d &- now)
        case .dead:
            worker.stats.inc(pool.stats.keepaliveTimeout)
            closeAndReport()
        case .ping:
            Http2Keepalive.submitPing(session, random: HttpWorkerState.of(worker).rng.next())
            keepalive.pinged(now: now)
            timer?.arm(ms: keepalive.config.timeoutMs)
            flush()
        }
    }

    /// The next keep-alive PING (the jitter keeps a pool's connections from pinging in step).
    private func armKeepalive() {
        guard keepalive.enabled, !closed else { timer?.cancel(); return }
        let now = monotonicMs()
        keepalive.schedule(now: now, random: HttpWorkerState.of(worker).rng.next())
        if case .wait(let d) = keepalive.due(now: now) { timer?.arm(ms: d &- now) }
    }

    /// A connection error (ours to find or the host's GOAWAY sent back for it), counted once.
    private func countProtocolError() {
        if protocolErrorCounted { return }
        protocolErrorCounted = true
        worker.stats.inc(pool.stats.cxProtocolError)
    }

    private func makeSession() -> Bool {
        var cbs: OpaquePointer?
        guard nghttp2_session_callbacks_new(&cbs) == 0 else { return false }
        defer { nghttp2_session_callbacks_del(cbs) }
        nghttp2_session_callbacks_set_send_callback(cbs) { _, data, length, _, user in
            Unmanaged<Http2Client>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onSend(data!, length) }
        }
        nghttp2_session_callbacks_set_send_data_callback(cbs) { _, _, framehd, length, source, user in
            Unmanaged<Http2Client>.fromOpaque(user!)._withUnsafeGuaranteedRef {
                $0.onSendData(framehd!, length, Unmanaged<Http2ClientStream>.fromOpaque(source!.pointee.ptr!).takeUnretainedValue())
            }
        }
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs) { _, frame, user in
            Unmanaged<Http2Client>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onBeginHeaders(frame!) }
        }
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, frame, name, namelen, value, valuelen, _, user in
            Unmanaged<Http2Client>.fromOpaque(user!)._withUnsafeGuaranteedRef {
                $0.onHeader(frame!, UnsafeRawBufferPointer(start: name, count: namelen), UnsafeRawBufferPointer(start: value, count: valuelen))
            }
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
            Unmanaged<Http2Client>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onFrameRecv(frame!) }
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, streamId, data, len, user in
            Unmanaged<Http2Client>.fromOpaque(user!)._withUnsafeGuaranteedRef {
                $0.onDataChunk(streamId, UnsafeRawBufferPointer(start: data, count: len))
            }
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, streamId, errorCode, user in
            Unmanaged<Http2Client>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onStreamClose(streamId, errorCode) }
        }
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs) { _, frame, user in
            Unmanaged<Http2Client>.fromOpaque(user!)._withUnsafeGuaranteedRef { $0.onFrameSend(frame!) }
        }
        var opt: OpaquePointer?
        guard nghttp2_option_new(&opt) == 0 else { return false }
        defer { nghttp2_option_del(opt) }
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096)
        guard nghttp2_session_client_new2(&session, cbs, Unmanaged.passUnretained(self).toOpaque(), opt) == 0 else { return false }
        var iv: [nghttp2_settings_entry] = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(streamWindow)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(Self.maxResponseHeaderBytes)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES.rawValue), value: 1),
        ]
        guard nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &iv, iv.count) == 0 else { return false }
        if connectionWindow > 65535 {
            _ = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Int32(connectionWindow))
        }
        return true
    }

    /// Response headers larger than this are the host's error (as the HTTP/1.1 parser's limit).
    static let maxResponseHeaderBytes = 96 * 1024

    // MARK: - Requests (called by streams)

    func submit(_ s: Http2ClientStream, _ h: HeaderMap, endStream: Bool) {
        guard let session, !closed else {
            fail(s, .connectionTermination)
            return
        }
        var provider = nghttp2_data_provider()
        provider.source = nghttp2_data_source(ptr: Unmanaged.passUnretained(s).toOpaque())
        provider.read_callback = { _, id, _, length, flags, source, user in
            Unmanaged<Http2Client>.fromOpaque(user!)._withUnsafeGuaranteedRef {
                $0.onReadData(id, length, flags!, Unmanaged<Http2ClientStream>.fromOpaque(source!.pointee.ptr!).takeUnretainedValue())
            }
        }
        // The upstream's own transport, as Envoy (the client's is in X-Forwarded-Proto).
        let scheme = cluster.snapshot.config.tls != nil ? "https" : "http"
        var id: Int32 = -1
        Http2Headers.withRequest(h, scheme: scheme) { nva, count in
            let user = Unmanaged.passUnretained(s).toOpaque()
            if endStream {
                id = nghttp2_submit_request(session, nil, nva, count, nil, user)
            } else {
                id = withUnsafePointer(to: &provider) { nghttp2_submit_request(session, nil, nva, count, $0, user) }
            }
        }
        if id < 0 {
            // No stream id left, or the host said GOAWAY: another connection takes it.
            fail(s, .refusedStream)
            return
        }
        s.id = id
        if endStream { s.requestSent = true }
        streams[ObjectIdentifier(s)] = s
        flushSoon()
    }

    /// A request that never got a stream: the pool slot goes back, the attempt hears why.
    private func fail(_ s: Http2ClientStream, _ kind: UpstreamResetKind) {
        release(s)
        if let a = s.attempt { s.attempt = nil; a.upstreamReset(kind) }
    }

    func resume(_ s: Http2ClientStream) {
        if s.dataDeferred, let session {
            s.dataDeferred = false
            _ = nghttp2_session_resume_data(session, s.id)
        }
        flushSoon()
    }

    /// The router gave up: RST_STREAM(CANCEL); the connection stays.
    func cancel(_ s: Http2ClientStream) {
        guard let session, s.id > 0, streams[ObjectIdentifier(s)] != nil else { release(s); return }
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), s.id, NGHTTP2_CANCEL.rawValue)
        flushSoon()
    }

    func release(_ s: Http2ClientStream) {
        if s.released { return }
        s.released = true
        if !closed { pool.pool.requestFinished(id) }
    }

    func consume(_ s: Http2ClientStream) {
        guard let session, s.id > 0 else { return }
        _ = nghttp2_session_consume_stream(session, s.id, s.unconsumed)
        s.unconsumed = 0
        flushSoon()
    }

    // MARK: - nghttp2 callbacks

    private func streamOf(_ id: Int32) -> Http2ClientStream? {
        guard let session, let p = nghttp2_session_get_stream_user_data(session, id) else { return nil }
        return Unmanaged<Http2ClientStream>.fromOpaque(p).takeUnretainedValue()
    }

    private var socketFull: Bool { (connection?.pendingWriteBytes ?? 0) + out.count >= 1 << 20 }

    private func onSend(_ data: UnsafePointer<UInt8>, _ length: Int) -> Int {
        if socketFull { return Int(NGHTTP2_ERR_WOULDBLOCK.rawValue) }
        out.append(UnsafeRawBufferPointer(start: data, count: length))
        return length
    }

    private func onSendData(_ framehd: UnsafePointer<UInt8>, _ length: Int, _ s: Http2ClientStream) -> Int32 {
        if socketFull { return NGHTTP2_ERR_WOULDBLOCK.rawValue }
        out.append(UnsafeRawBufferPointer(start: framehd, count: 9))
        if length > 0 {
            out.append(UnsafeRawBufferPointer(rebasing: s.pendingSend.readable[0..<length]))
            s.pendingSend.drain(length)
        }
        if s.aboveHigh && s.pendingSend.count < Self.streamLowWatermark {
            s.aboveHigh = false
            s.attempt?.upstreamBelowLowWatermark()
        }
        return 0
    }

    fileprivate func onReadData(_ id: Int32, _ length: Int, _ flags: UnsafeMutablePointer<UInt32>, _ s: Http2ClientStream) -> Int {
        let n = min(length, s.pendingSend.count)
        if n == 0 && !s.sendEnd {
            s.dataDeferred = true
            return Int(NGHTTP2_ERR_DEFERRED.rawValue)
        }
        flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_COPY.rawValue)
        if s.sendEnd && n == s.pendingSend.count {
            flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
            s.requestSent = true
            if let t = s.sendTrailers {
                s.sendTrailers = nil
                flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue)
                let session = session
                Http2Headers.withFields(t, status: nil) { nva, count in _ = nghttp2_submit_trailer(session, id, nva, count) }
            }
        }
        return n
    }

    private func onBeginHeaders(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        guard let s = streamOf(frame.pointee.hd.stream_id) else { return 0 }
        s.headerBytes = 0
        if s.headersDone { s.trailers = HeaderMap() } else { s.response = responseMaps.take() }
        return 0
    }

    private func onHeader(_ frame: UnsafePointer<nghttp2_frame>, _ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Int32 {
        guard let s = streamOf(frame.pointee.hd.stream_id), let map = s.headersDone ? s.trailers : s.response else { return 0 }
        s.headerBytes += name.count + value.count + 32
        if s.headerBytes > Self.maxResponseHeaderBytes {
            countProtocolError()
            _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), s.id, NGHTTP2_INTERNAL_ERROR.rawValue)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue
        }
        let ns = map.appendStorage(name)
        let vs = map.appendStorage(value)
        map.addEntry(nameStart: ns, nameLength: name.count, valueStart: vs, valueLength: value.count)
        return 0
    }

    private func onFrameRecv(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let hd = frame.pointee.hd
        let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        switch UInt32(hd.type) {
        case NGHTTP2_HEADERS.rawValue:
            guard let s = streamOf(hd.stream_id), let a = s.attempt else { return 0 }
            if !s.headersDone {
                guard let h = s.response else { return 0 }
                let status = h.first(.status).map { i in h.withValue(i) { v in v.reduce(0) { $0 * 10 + Int($1 &- 0x30) } } } ?? 0
                if status < 200 { s.response = nil; return 0 }  // 1xx: not forwarded
                s.headersDone = true
                s.response = nil
                responseMaps.give(h)  // reused once its stream lets it go
                if endStream { complete(s, a) { a.responseHeaders(h, endStream: true) } } else { a.responseHeaders(h, endStream: false) }
                a.flushDownstream()
            } else if let t = s.trailers {
                s.trailers = nil
                complete(s, a) { a.responseTrailers(t) }
                a.flushDownstream()
            }
        case NGHTTP2_DATA.rawValue:
            guard endStream, let s = streamOf(hd.stream_id), let a = s.attempt else { return 0 }
            scratch.release()
            complete(s, a) { a.responseData(scratch, endStream: true) }
            a.flushDownstream()
        case NGHTTP2_SETTINGS.rawValue:
            if hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) == 0, let session, !goneAway {
                let remote = Int(nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))
                let capacity = min(remote, maxStreams)
                if !settingsSeen {
                    settingsSeen = true
                    armKeepalive()
                    if capacity == 0 {
                        // A host that takes no streams now: a failed connect, so the request
                        // goes elsewhere (or is retried) instead of waiting for its timeout.
                        countProtocolError()
                        connectFailed(timeout: false)
                        return 0
                    }
                    pool.pool.connected(id, capacity: capacity)
                } else if capacity == 0 {
                    goneAway = true
                    pool.pool.goAway(id)
                } else {
                    pool.pool.capacityChanged(id, capacity: capacity)
                }
            }
        case NGHTTP2_GOAWAY.rawValue:
            worker.stats.inc(pool.stats.goawayReceived)
            if !goneAway {
                goneAway = true
                pool.pool.goAway(id)
            }
        case NGHTTP2_RST_STREAM.rawValue:
            worker.stats.inc(pool.stats.h2RxReset)
        case NGHTTP2_PING.rawValue:
            if hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0 && keepalive.awaitingAck { armKeepalive() }
        default:
            break
        }
        return 0
    }

    /// The response is whole: the attempt is detached before its last piece (it may start a
    /// new request on this pool); a request still being sent is reset (the host answered early).
    private func complete(_ s: Http2ClientStream, _ a: UpstreamAttempt, _ deliver: () -> Void) {
        s.attempt = nil
        if !s.requestSent, let session {
            _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), s.id, NGHTTP2_NO_ERROR.rawValue)
            flushSoon()
        }
        a.detach()
        deliver()
    }

    private func onDataChunk(_ id: Int32, _ data: UnsafeRawBufferPointer) -> Int32 {
        guard let session else { return 0 }
        guard let s = streamOf(id), let a = s.attempt else {
            _ = nghttp2_session_consume(session, id, data.count)
            return 0
        }
        if s.paused > 0 {
            s.unconsumed += data.count
            _ = nghttp2_session_consume_connection(session, data.count)
        } else {
            _ = nghttp2_session_consume(session, id, data.count)
        }
        scratch.append(data)
        a.responseData(scratch, endStream: false)
        scratch.release()
        return 0
    }

    private func onStreamClose(_ streamId: Int32, _ errorCode: UInt32) -> Int32 {
        guard let s = streamOf(streamId) else { return 0 }
        nghttp2_session_set_stream_user_data(session, streamId, nil)
        s.pendingSend.release()
        if let removed = streams.removeValue(forKey: ObjectIdentifier(s)) { worker.dispatcher.deferredRelease(removed) }
        release(s)
        if let a = s.attempt {
            s.attempt = nil
            a.upstreamReset(errorCode == NGHTTP2_REFUSED_STREAM.rawValue ? .refusedStream : .connectionTermination)
        }
        return 0
    }

    private func onFrameSend(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        switch UInt32(frame.pointee.hd.type) {
        case NGHTTP2_RST_STREAM.rawValue: worker.stats.inc(pool.stats.h2TxReset)
        // nghttp2 answers a host's broken frames (or HTTP/1.1 bytes) with GOAWAY and an error code.
        case NGHTTP2_GOAWAY.rawValue where frame.pointee.goaway.error_code != NGHTTP2_NO_ERROR.rawValue: countProtocolError()
        default: break
        }
        return 0
    }

    // MARK: - I/O

    override func onData(_ c: Connection, _ buffer: Buffer, endStream: Bool) {
        guard let session, !closed else { buffer.release(); return }
        if !buffer.isEmpty {
            if keepalive.enabled { keepalive.received(now: monotonicMs()) }
            inSession = true
            let n = nghttp2_session_mem_recv(session, buffer.readable.baseAddress!.assumingMemoryBound(to: UInt8.self), buffer.count)
            inSession = false
            buffer.release()
            if closed { releaseSession(); return }
            if n < 0 {
                countProtocolError()
                _ = nghttp2_session_terminate_session(session, NGHTTP2_PROTOCOL_ERROR.rawValue)
                flush()
                closeAndReport()
                return
            }
        }
        if endStream { closeAndReport(); return }
        flush()
    }

    private func flushSoon() {
        if !closed { flusher?.schedule() }
    }

    private func flush() {
        guard let session, let c = connection, !inSession, !closed else { return }
        inSession = true
        var rounds = 0
        while nghttp2_session_want_write(session) != 0 && c.pendingWriteBytes < 1 << 20 && rounds < 64 {
            if nghttp2_session_send(session) != 0 { break }
            if out.isEmpty { break }
            c.write(out, endStream: false)
            if closed || c.state != .open { break }
            rounds += 1
        }
        inSession = false
        if closed { releaseSession(); return }
        if nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            closeAndReport()
        }
    }

    override func onClose(_ c: Connection, remote: Bool) {
        if !connected {
            connection = nil
            connectFailed(timeout: false)
            return
        }
        closeAndReport()
    }

    override func onBelowWriteBufferLowWatermark(_ c: Connection) { flushSoon() }

    /// Closes without telling the pool (it asked): every open request hears of a reset.
    func closeQuietly() {
        guard closeSocketQuietly() else { return }
        let open = Array(streams.values)
        for s in open {
            s.released = true
            if let a = s.attempt { s.attempt = nil; a.upstreamReset(.connectionTermination) }
        }
        if !inSession { releaseSession() }
    }

    func closeAndReport() {
        guard !closed else { return }
        // Before the host's SETTINGS the pool still counts it as connecting.
        if !settingsSeen { connectFailed(timeout: false); return }
        closeQuietly()
        pool.clientClosed(self)
    }

    /// Frees the session and the streams it pointed at (never from inside nghttp2).
    private func releaseSession() {
        if let s = session { session = nil; nghttp2_session_del(s) }
        for (_, s) in streams { worker.dispatcher.deferredRelease(s) }
        streams.removeAll()
        out.release()
    }
}
