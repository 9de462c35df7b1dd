import CLibevent
import CShim
import Glibc

/// A non-blocking TCP (or unix) socket driven by one edge-triggered libevent event registered
/// once for reading and writing: no epoll_ctl while the connection lives.
///
/// I/O is speculative, as HAProxy does it: `write` goes straight to the socket when nothing is
/// queued, and only what the kernel refused is buffered; readiness is remembered from edges and
/// cleared on EAGAIN. Backpressure is by watermarks on the write buffer (`bufferLimit` high,
/// half of it low); a consumer over its high watermark makes the producer `readDisable`.
/// Half-close is honoured: `write(endStream: true)` shuts down the write side once flushed,
/// and a peer FIN is delivered as `endStream` without closing.
///
/// Confined to one worker thread. Owned by its user (a session); `close` frees the socket, and
/// the object may die only after the current callbacks (use `Dispatcher.deferredRelease`).
public final class Connection {
    public enum State { case connecting, open, closed }

    /// The socket, -1 once closed.
    public private(set) var fd: Int32
    public private(set) var state: State
    /// The worker this connection lives on.
    public unowned(unsafe) let worker: Worker
    /// Who hears about connects, data (when there are no read filters), watermarks and close.
    public unowned(unsafe) var callbacks: ConnectionCallbacks?
    /// Bytes read and not yet consumed by the filters.
    public let readBuffer: Buffer
    /// Bytes the kernel has not taken yet.
    public let writeBuffer: Buffer
    /// Read filters, FIFO. Empty for upstream connections (data goes to `callbacks.onData`).
    public var readFilters: [ReadFilter] = []
    /// Write filters, applied LIFO.
    public var writeFilters: [WriteFilter] = []
    /// Bytes read from / written to the socket.
    public private(set) var bytesRead: UInt64 = 0
    public private(set) var bytesWritten: UInt64 = 0
    /// The peer's address and ours.
    public let remoteAddress: SocketAddress?
    public var localAddress: SocketAddress? { fd >= 0 ? SocketAddress.local(of: fd) : nil }

    private var event: OpaquePointer?
    /// Outstanding `readDisable` calls: several streams (HTTP/2, a Redis pipeline) may each
    /// pause one connection, and only the last `readEnable` resumes it (Envoy's counting).
    private var readDisableCount = 0
    /// `closeAfterFlush`: reading stopped for good.
    private var readsClosed = false
    @inline(__always) private var readEnabled: Bool { readDisableCount == 0 && !readsClosed }
    private var readReady = false
    /// The kernel reported the peer's FIN (EPOLLRDHUP, libevent's EV_CLOSED): read until 0,
    /// whatever a short read suggests, or the FIN queued behind the data would be missed.
    private var peerFinPending = false
    /// Read until EAGAIN (or the error), whatever a short read suggests. libevent reports
    /// EPOLLHUP/EPOLLERR (a reset) as readable and writable without EV_CLOSED, which is what an
    /// ordinary event looks like too; so a reset that came with the last bytes is missed after
    /// a short read (edge-triggered) until the next event. A consumer that would get no next
    /// event (a tunnel waiting on its host) sets this, for one read syscall more per event.
    public var readsUntilEagain = false
    private var writeReady = true
    /// The peer sent FIN.
    public private(set) var readEOF = false
    /// We must shut down our write side once the write buffer is flushed.
    private var shutdownPending = false
    public private(set) var writeShut = false
    private var aboveHighWatermark = false
    /// Close once the write buffer is flushed (the other side of a relay went away).
    private var closeWhenFlushed = false
    private let highWatermark: Int
    /// Most unconsumed bytes the read loop keeps in `readBuffer` before it pauses (default: the
    /// buffer limit). A consumer that needs a whole message before it can use any of it (a
    /// Redis request or reply) raises it for that message, up to its own limit, then calls
    /// `continueReading`.
    public var readBufferLimit: Int
    private let lowWatermark: Int
    /// Queued output past this closes the connection (default 8 × the buffer limit, at least
    /// 4 MiB): the bound on a connection's memory when a producer ignores the high watermark.
    /// A producer whose messages can be bigger, and that bounds its output another way
    /// (redis-proxy: whole replies, at most `max_pipeline` of them), raises it.
    public var hardWriteLimit: Int
    /// Re-entrancy guard: a read in progress.
    private var dispatching = false

    // MARK: TLS state
    /// TLS on this socket (`startTls`); nil for plain bytes. Never spliced.
    private var tls: TlsTransport?
    /// A TLS write needs the peer's handshake bytes first: retried on the next read event.
    private var tlsWriteWantsRead = false
    /// A TLS read needs to write first (socket buffer full): retried on the next write event.
    private var tlsReadWantsWrite = false
    /// An outbound TLS connection: the handshake to run once TCP connects, after bytes that go
    /// in clear (a PROXY header). The connection counts as connected when the handshake is done.
    private var pendingClientTls: (context: TlsContext, stats: TlsStats, clear: [UInt8], serverName: String?)?
    private var tlsConnecting = false

    // MARK: splice(2) state
    /// Where bytes read from this socket may be spliced (the other side of a relay), set by a
    /// terminal filter when no filter needs to see the bytes. Cleared before either closes.
    public unowned(unsafe) var spliceTarget: Connection?
    /// A read filled a whole block: the transfer is bulk, so splice from now on (HAProxy's
    /// splice-auto heuristic). Small request/response traffic stays on read/write.
    private var bulk = false
    /// The pipe carrying bytes to this connection's socket (filled by `spliceTarget`'s peer).
    private var pipeR: Int32 = -1
    private var pipeW: Int32 = -1
    /// Bytes sitting in that pipe: part of what this connection still has to write.
    private var pipeBytes = 0
    /// The splice source stopped on a pipe that may be full (EAGAIN or no room) with its socket
    /// still readable: wake it when this pipe has moved bytes on.
    fileprivate var sourceWaitsForPipe = false

    /// Wraps an accepted socket (TCP_NODELAY comes from the listening socket).
    public init(worker: Worker, fd: Int32, remote: SocketAddress?, bufferLimit: Int) {
        self.worker = worker
        self.fd = fd
        self.state = .open
        self.remoteAddress = remote
        self.readBuffer = Buffer(pool: worker.blocks)
        self.writeBuffer = Buffer(pool: worker.blocks)
        self.highWatermark = bufferLimit
        self.readBufferLimit = bufferLimit
        self.lowWatermark = bufferLimit / 2
        hardWriteLimit = Swift.max(bufferLimit &* 8, 4 << 20)
        register()
    }

    /// Starts connecting to `address`. Returns nil with the errno when it fails at once.
    /// With `tls`, `clear` is written first and then the TLS handshake runs; `onConnected`
    /// comes when the handshake is done, and a failed handshake is `onConnectFailed` (EPROTO),
    /// as Envoy counts it: the caller's connect timeout covers it and a retry may follow.
    public static func connect(worker: Worker, to address: SocketAddress, bufferLimit: Int,
                               callbacks: ConnectionCallbacks, tls: (TlsContext, TlsStats)? = nil,
                               clear: [UInt8] = [], serverName: String? = nil) -> (Connection?, Int32) {
        let fd = address.withSockAddr { cshim_connect($0, $1, 1) }
        if fd < 0 { return (nil, -fd) }
        let c = Connection(worker: worker, connectingFd: fd, remote: address, bufferLimit: bufferLimit)
        c.callbacks = callbacks
        if let (ctx, stats) = tls { c.pendingClientTls = (ctx, stats, clear, serverName) }
        return (c, 0)
    }

    private init(worker: Worker, connectingFd fd: Int32, remote: SocketAddress, bufferLimit: Int) {
        self.worker = worker
        self.fd = fd
        self.state = .connecting
        self.remoteAddress = remote
        self.readBuffer = Buffer(pool: worker.blocks)
        self.writeBuffer = Buffer(pool: worker.blocks)
        self.highWatermark = bufferLimit
        self.readBufferLimit = bufferLimit
        self.lowWatermark = bufferLimit / 2
        hardWriteLimit = Swift.max(bufferLimit &* 8, 4 << 20)
        register()
    }

    deinit {
        if fd >= 0 { closeSocket() }
    }

    private func register() {
        event = event_new(worker.dispatcher.base, fd, Int16(EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST), { _, what, ctx in
            Unmanaged<Connection>.fromOpaque(ctx!)._withUnsafeGuaranteedRef { $0.onEvent(what) }
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
    }

    private func onEvent(_ what: Int16) {
        if tls != nil {
            // OpenSSL may need either direction for either operation: an event in one
            // direction retries what waited for it in the other.
            if what & Int16(EV_READ | EV_CLOSED) != 0 && tlsWriteWantsRead {
                tlsWriteWantsRead = false
                if state == .open && !writeBuffer.isEmpty { flush() }
            }
            if what & Int16(EV_WRITE) != 0 && tlsReadWantsWrite {
                tlsReadWantsWrite = false
                readReady = true
            }
        }
        if state == .connecting {
            if tlsConnecting { clientHandshake(); return }
            // Writable alone means connected; a failed connect raises EPOLLERR, which libevent
            // reports as readable too. Only then is SO_ERROR worth a system call.
            let err = what & Int16(EV_READ | EV_CLOSED) != 0 ? cshim_socket_error(fd) : 0
            if err != 0 {
                state = .closed
                closeSocket()
                callbacks?.onConnectFailed(self, errno: err)
                return
            }
            if let p = pendingClientTls {
                pendingClientTls = nil
                // A fresh socket has room for a PROXY header: it goes out whole, in clear.
                let n = p.clear.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                guard n == p.clear.count,
                      let t = TlsTransport(context: p.context, fd: fd, server: false,
                                           prefix: UnsafeRawBufferPointer(start: nil, count: 0), stats: p.stats,
                                           serverName: p.serverName, sessions: worker.tlsSessions) else {
                    return failConnect(n < 0 ? errno : ENOMEM)
                }
                tls = t
                tlsConnecting = true
                clientHandshake()
                return
            }
            // A readable event before writable (data right away) also means connected.
            state = .open
            writeReady = true
            callbacks?.onConnected(self)
            if state != .open { return }
            if !writeBuffer.isEmpty { flush() }
        }
        if what & Int16(EV_WRITE) != 0 && state == .open {
            writeReady = true
            if !writeBuffer.isEmpty || pipeBytes > 0 || shutdownPending { flush() }
        }
        if what & Int16(EV_CLOSED) != 0 { peerFinPending = true }
        if what & Int16(EV_READ | EV_CLOSED) != 0 && state == .open {
            readReady = true
            if readEnabled { readLoop() }
        } else if tls != nil && readReady && readEnabled && state == .open {
            readLoop()  // a TLS read that waited for a write, or a client's first handshake step
        }
    }

    // MARK: - Read path

    /// Reads while the socket has data and the consumer wants it, up to a fairness budget;
    /// hands each chunk to the filters (or `callbacks.onData`).
    private func readLoop() {
        if dispatching { return }
        var budget = 4
        while readReady && readEnabled && state == .open && !readEOF {
            if budget == 0 {
                // More may be waiting; come back after other connections had their turn.
                event_active(event, Int32(EV_READ), 0)
                return
            }
            budget -= 1
            // Bytes a filter left unconsumed are bounded too; `continueReading` resumes.
            if readBuffer.count >= readBufferLimit { return }
            if bulk, tls == nil, let target = spliceTarget, readBuffer.isEmpty, target.canTakeSplice {
                if !spliceOnce(into: target) { return }
                continue
            }
            let space = readBuffer.reserve(16 * 1024)
            if let t = tls {
                if !tlsRead(t, space) { return }
                continue
            }
            let n = read(fd, space.baseAddress, space.count)
            if n > 0 {
                readBuffer.commit(n)
                bytesRead &+= UInt64(n)
                if n == worker.blocks.blockSize && spliceTarget != nil { bulk = true }
                // A short read drained the socket; new data brings a new edge. (A FIN already
                // queued brings none: EV_CLOSED told us about it, so keep reading then.)
                if n < space.count && !peerFinPending && !readsUntilEagain { readReady = false }
            } else if n == 0 {
                readEOF = true
                readReady = false
            } else {
                let e = errno
                if e == EINTR { continue }
                if e == EAGAIN {
                    readReady = false
                    if readBuffer.isEmpty { readBuffer.release() }  // an idle connection holds no block
                    continue
                }
                closeNow(remote: true)
                return
            }
            deliver()
            if readEOF && writeShut && state == .open { closeNow(remote: false); return }
        }
    }

    /// A step of an outbound TLS handshake; done: connected; failed: the connect failed.
    private func clientHandshake() {
        guard let t = tls else { return }
        let r = cshim_tls_handshake(t.ssl)
        if r == TlsResult.wantRead || r == TlsResult.wantWrite { return }
        if r != 1 {
            t.failed(worker.stats)
            return failConnect(EPROTO)
        }
        _ = t.noteProgress(worker.stats)
        tlsConnecting = false
        state = .open
        writeReady = true
        readReady = true  // the server's first bytes may have come with its last flight
        callbacks?.onConnected(self)
        if state != .open { return }
        if !writeBuffer.isEmpty { flush() }
        if state == .open && readEnabled { readLoop() }
    }

    private func failConnect(_ err: Int32) {
        state = .closed
        closeSocket()
        callbacks?.onConnectFailed(self, errno: err)
    }

    /// One TLS read into `space`: decrypted bytes are delivered. False when the connection closed.
    private func tlsRead(_ t: TlsTransport, _ space: UnsafeMutableRawBufferPointer) -> Bool {
        let n = cshim_tls_read(t.ssl, space.baseAddress, Int32(clamping: space.count))
        if t.noteProgress(worker.stats) {
            callbacks?.onTlsHandshake(self)  // may hand the connection to other filters
            if state != .open { return false }
        }
        if n > 0 {
            readBuffer.commit(Int(n))
            bytesRead &+= UInt64(n)
            // As on the plain path: the socket's last read came up short and OpenSSL holds
            // nothing more, so skip the read that would only say EAGAIN (unless a FIN waits).
            if !peerFinPending && !readsUntilEagain && cshim_tls_drained(t.ssl) != 0 { readReady = false }
        } else if n == 0 {
            readEOF = true
            readReady = false
        } else if n == TlsResult.wantRead || n == TlsResult.wantWrite {
            // Handshake steps and empty reads leave the reserved block unused: an idle
            // connection holds none.
            if readBuffer.isEmpty { readBuffer.release() }
            readReady = false
            if n == TlsResult.wantWrite { tlsReadWantsWrite = true }
            return true
        } else {
            t.failed(worker.stats)
            closeNow(remote: true)
            return false
        }
        deliver()
        if readEOF && writeShut && state == .open { closeNow(remote: false); return false }
        return state == .open
    }

    /// Turns on TLS on an accepted connection before any byte was written. Bytes already read
    /// (a ClientHello a listener filter inspected) are handed to TLS first. False when OpenSSL
    /// could not make the connection (out of memory). (Outbound TLS goes through `connect`.)
    public func startTls(_ context: TlsContext, stats: TlsStats) -> Bool {
        // Bytes queued in clear (a PROXY header) would otherwise go out inside TLS.
        guard fd >= 0, tls == nil, writeBuffer.isEmpty, pipeBytes == 0 else { return false }
        let t = readBuffer.isEmpty
            ? TlsTransport(context: context, fd: fd, server: true, prefix: UnsafeRawBufferPointer(start: nil, count: 0), stats: stats)
            : TlsTransport(context: context, fd: fd, server: true, prefix: readBuffer.readable, stats: stats)
        guard let t else { return false }
        readBuffer.drain(readBuffer.count)
        tls = t
        bulk = false
        readReady = true  // the prefix, or an edge that came before, is waiting
        return true
    }

    /// The negotiated TLS version and ALPN protocol; nil without TLS.
    public var tlsVersion: String? { tls?.version ?? closedTls?.version }
    public var tlsAlpn: String? { tls?.alpn }
    /// The TLS peer's certificate (mTLS), nil when none was given or there is no TLS.
    public var tlsPeerCertificate: PeerCertificate? { tls?.peerCertificate }
    /// This connection's TLS checks client certificates (`client_ca`).
    public var tlsVerifiesClients: Bool { tls?.context.verifiesClients ?? false }
    /// The URI SANs of this side's own certificate (a server's: XFCC's `By`).
    public var tlsLocalUris: [String] { tls?.context.ownUris ?? [] }
    /// The server name the TLS client sent, when we terminate TLS.
    public var tlsServerName: String? { tls?.serverName ?? closedTls?.serverName }
    /// What the access log may still ask once the socket (and OpenSSL's state) is gone.
    private var closedTls: (version: String, serverName: String?)?

    private func deliver() {
        dispatching = true
        defer {
            dispatching = false
            // Closed while a consumer was parsing the read buffer in place: freed only now.
            if state == .closed { readBuffer.release() }
        }
        if readFilters.isEmpty {
            callbacks?.onData(self, readBuffer, endStream: readEOF)
            return
        }
        for f in readFilters {
            if f.onData(readBuffer, endStream: readEOF) == .stopIteration { break }
            if state == .closed { break }
        }
    }

    /// Stops reading (a consumer is over its high watermark). Bytes stay in the kernel, whose
    /// window then pushes back on the peer. Counted: each call needs its own `readEnable`.
    public func readDisable() { readDisableCount += 1 }

    /// Undoes one `readDisable`; the last one resumes reading and picks up data that arrived
    /// meanwhile. An enable with nothing to undo is ignored (a caller's bug, not a peer's).
    public func readEnable() {
        guard readDisableCount > 0 else { return }
        readDisableCount -= 1
        if readEnabled && readReady && state == .open { event_active(event, Int32(EV_READ), 0) }
    }

    public var isReadEnabled: Bool { readEnabled }

    /// Hands bytes already read (and a FIN already seen) to the filters again, after they were
    /// replaced (the PROXY protocol reader hands over to the listener's filters).
    public func redeliver() {
        guard state == .open else { return }
        if !readBuffer.isEmpty || readEOF { deliver() }
        if readReady && readEnabled { event_active(event, Int32(EV_READ), 0) }
    }

    /// Reads again after a filter consumed bytes it had left in `readBuffer`.
    public func continueReading() {
        if readEnabled && state == .open { event_active(event, Int32(EV_READ), 0) }
    }

    // MARK: - Splice path

    /// Whether bytes may be spliced into this connection now: open, nothing queued in user
    /// space ahead of them (ordering), and a pipe to be had.
    fileprivate var canTakeSplice: Bool {
        tls == nil && state == .open && !writeShut && !shutdownPending && writeBuffer.isEmpty && ensurePipe()
    }

    private func ensurePipe() -> Bool {
        if pipeW >= 0 { return true }
        guard let p = worker.pipes.take() else { return false }
        pipeR = p.0; pipeW = p.1
        return true
    }

    /// One splice from this socket into `target`'s pipe, then on to its socket. Returns false
    /// when reading must stop (EAGAIN, EOF delivered, closed, or the target is full).
    ///
    /// Unlike read(2), a short splice says nothing about the socket: a pipe has a fixed number
    /// of slots (one per page fragment of the socket's buffers), so it can be full long before
    /// `capacity` bytes, and a non-blocking tcp_splice_read stops after one pass over the
    /// receive queue. Only EAGAIN into an empty pipe proves the socket drained. EAGAIN into a
    /// pipe that still holds bytes may mean "pipe full": the source stays ready and the target
    /// wakes it once the pipe moved bytes on (`sourceWaitsForPipe`). Taking a short splice for
    /// a drained socket lost the wake-up when the peer had nothing more to send (issue 8).
    private func spliceOnce(into target: Connection) -> Bool {
        let room = worker.pipes.capacity - target.pipeBytes
        if room <= 0 {
            target.sourceWaitsForPipe = true
            target.checkHighWatermark()
            return false
        }
        let n = cshim_splice(fd, target.pipeW, room)
        if n > 0 {
            bytesRead &+= UInt64(n)
            target.pipeBytes += n
            callbacks?.onSpliced(self, bytes: n)
            target.flushPipe()
            target.checkHighWatermark()
            return state == .open
        }
        if n == 0 {
            readEOF = true
            readReady = false
            deliver()
            if readEOF && writeShut && state == .open { closeNow(remote: false) }
            return false
        }
        if n == -Int(EAGAIN) {
            if target.pipeBytes == 0 {
                readReady = false  // an empty pipe cannot be full: the socket is drained
            } else {
                target.sourceWaitsForPipe = true
            }
            return false
        }
        if n == -Int(EINTR) { return true }
        closeNow(remote: true)
        return false
    }

    /// Moves what the pipe holds to the socket; wakes the splice source if it waits for room.
    fileprivate func flushPipe() {
        let before = pipeBytes
        defer {
            if sourceWaitsForPipe && pipeBytes < before && state == .open {
                sourceWaitsForPipe = false
                spliceTarget?.continueReading()
            }
        }
        while pipeBytes > 0 && writeReady && state == .open {
            let n = cshim_splice(pipeR, fd, pipeBytes)
            if n > 0 {
                pipeBytes -= n
                bytesWritten &+= UInt64(n)
            } else if n == -Int(EAGAIN) {
                writeReady = false
            } else if n != -Int(EINTR) {
                closeNow(remote: true)
                return
            }
        }
    }

    /// Bytes queued for the socket: in the pipe and in the write buffer.
    public var pendingWriteBytes: Int { writeBuffer.count + pipeBytes }

    // MARK: - Write path

    /// Sends `data` (drained from it) through the write filters, then to the socket at once;
    /// what the kernel does not take is queued. `endStream` half-closes once flushed.
    public func write(_ data: Buffer, endStream: Bool) {
        guard state != .closed, !writeShut else { data.release(); return }
        for f in writeFilters.reversed() {
            if f.onWrite(data, endStream: endStream) == .stopIteration { break }
        }
        if endStream { shutdownPending = true }
        if writeBuffer.isEmpty && pipeBytes == 0 && writeReady && !tlsWriteWantsRead && state == .open && !data.isEmpty {
            writeDirect(data)
            if state == .closed { return }
        }
        writeBuffer.moveAll(from: data)
        if (!writeBuffer.isEmpty || pipeBytes > 0) && writeReady && !tlsWriteWantsRead && state == .open { flush() }
        if state == .open && writeBuffer.isEmpty && pipeBytes == 0 && shutdownPending { shutdownWrite() }
        if writeBuffer.count > hardWriteLimit {
            // Watermarks ask producers to pause; this is for one that does not.
            worker.stats.inc(worker.serverStats.connectionWriteOverflow)
            closeNow(remote: false)
            return
        }
        checkHighWatermark()
    }

    /// Writes raw bytes (a PROXY header): same path as `write`.
    public func write(bytes: [UInt8]) {
        let b = Buffer(pool: worker.blocks)
        b.append(bytes)
        write(b, endStream: false)
    }

    private func writeDirect(_ data: Buffer) {
        let r = data.readable
        let n = socketWrite(r.baseAddress, r.count)
        if n > 0 {
            bytesWritten &+= UInt64(n)
            data.drain(n)
        } else if n < 0 {
            closeNow(remote: true)
        }
    }

    /// Writes to the socket, through TLS when it is on. > 0: bytes taken; 0: not now (EAGAIN
    /// clears `writeReady`; TLS waiting for the peer sets `tlsWriteWantsRead`; EINTR neither);
    /// < 0: the connection failed.
    @inline(__always) private func socketWrite(_ p: UnsafeRawPointer?, _ count: Int) -> Int {
        if let t = tls {
            let n = cshim_tls_write(t.ssl, p, Int32(clamping: count))
            // Only a client's handshake can finish inside a write (nothing writes to a server-side
            // connection before its handshake is done), and no client waits to hear of it.
            _ = t.noteProgress(worker.stats)
            if n > 0 { return Int(n) }
            if n == TlsResult.wantWrite { writeReady = false; return 0 }
            if n == TlsResult.wantRead { tlsWriteWantsRead = true; return 0 }
            t.failed(worker.stats)
            return -1
        }
        let n = Glibc.write(fd, p, count)
        if n >= 0 {
            if n < count { writeReady = false }  // the socket buffer is full
            return n
        }
        let e = errno
        if e == EAGAIN { writeReady = false; return 0 }
        return e == EINTR ? 0 : -1
    }

    private func flush() {
        if pipeBytes > 0 {
            flushPipe()
            if pipeBytes > 0 || state != .open { checkLowWatermark(); return }
        }
        while !writeBuffer.isEmpty && writeReady && !tlsWriteWantsRead && state == .open {
            let r = writeBuffer.readable
            let n = socketWrite(r.baseAddress, r.count)
            if n > 0 {
                bytesWritten &+= UInt64(n)
                writeBuffer.drain(n)
            } else if n < 0 {
                closeNow(remote: true)
                return
            }
        }
        if state != .open { return }
        if writeBuffer.isEmpty && pipeBytes == 0 && closeWhenFlushed { closeNow(remote: false); return }
        if writeBuffer.isEmpty && shutdownPending && !writeShut { shutdownWrite() }
        checkLowWatermark()
    }

    private func checkLowWatermark() {
        if aboveHighWatermark && writeBuffer.count + pipeBytes <= lowWatermark
            && pipeBytes <= worker.pipes.capacity / 2 && state == .open {
            aboveHighWatermark = false
            callbacks?.onBelowWriteBufferLowWatermark(self)
        }
    }

    fileprivate func checkHighWatermark() {
        if !aboveHighWatermark && (writeBuffer.count + pipeBytes > highWatermark || pipeBytes >= worker.pipes.capacity) {
            aboveHighWatermark = true
            callbacks?.onAboveWriteBufferHighWatermark(self)
        }
    }

    private func shutdownWrite() {
        shutdownPending = false
        writeShut = true
        if let t = tls { cshim_tls_shutdown(t.ssl) }  // close_notify, then the FIN
        // FIN both ways: nothing more can happen on this socket. The peer's FIN was read (the
        // receive queue is empty), so close sends our FIN: no shutdown call needed.
        if readEOF { closeNow(remote: false); return }
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    }


    // MARK: - Close

    /// Closes once queued bytes are written (at once when nothing is queued). Stops reading.
    public func closeAfterFlush() {
        guard state != .closed else { return }
        if (writeBuffer.isEmpty && pipeBytes == 0) || state == .connecting { closeNow(remote: false); return }
        readsClosed = true
        closeWhenFlushed = true
    }

    /// Input has arrived that no filter has consumed: in `readBuffer`, or still in the kernel's
    /// receive queue because the read event has not run yet (work posted to the worker runs
    /// before the I/O events of the same loop turn), or, with TLS, decrypted bytes OpenSSL may
    /// hold after a read loop its fairness budget cut short. A session about to close a
    /// connection it thinks is idle asks this first: such bytes are a request on its way, and
    /// close() with unread input sends RST, not FIN.
    public var hasUnreadInput: Bool {
        guard state == .open, fd >= 0 else { return false }
        if !readBuffer.isEmpty || cshim_unread_bytes(fd) > 0 { return true }
        return tls != nil && readReady
    }

    /// Both directions finished with FINs (a clean end), as opposed to a reset or local close.
    public var finishedCleanly: Bool { readEOF && writeShut }

    /// Closes at once: queued bytes are dropped. `abort` sends RST instead of FIN.
    public func close(abort: Bool = false) {
        guard state != .closed else { return }
        if abort && fd >= 0 { cshim_set_linger_zero(fd) }
        closeNow(remote: false)
    }

    private func closeNow(remote: Bool) {
        guard state != .closed else { return }
        state = .closed
        closeSocket()
        // A consumer may be reading the buffer in place (nghttp2 in mem_recv) when its own
        // callbacks close the connection: `deliver` frees it once that consumer returns.
        if !dispatching { readBuffer.release() }
        writeBuffer.release()
        callbacks?.onClose(self, remote: remote)
        // A filter usually holds its connection (a session owns its downstream): keeping the
        // filters past close made a cycle that leaked both, about 1.5 KB per connection.
        readFilters.removeAll()
        writeFilters.removeAll()
    }

    private func closeSocket() {
        if let e = event { event_free(e); event = nil }
        if let t = tls, t.isEstablished { closedTls = (t.version, t.serverName) }
        tls = nil  // SSL_free before the descriptor goes
        if fd >= 0 { Glibc.close(fd); fd = -1 }
        spliceTarget = nil
        if pipeW >= 0 {
            // An empty pipe is reused; one with bytes stuck in it is not.
            if pipeBytes == 0 { worker.pipes.give((pipeR, pipeW)) } else { Glibc.close(pipeR); Glibc.close(pipeW) }
            pipeR = -1; pipeW = -1; pipeBytes = 0
        }
    }
}
