import CLibevent
import CShim
import Glibc

/// One health check of one host: connect (TCP) or open a connected UDP socket, run the steps,
/// report once through `completion`. Bounded by the check's timeout. Runs on one dispatcher
/// (the main thread's); the caller keeps the probe alive until it completes.
public final class HealthProbe {
    private let dispatcher: Dispatcher
    private let address: SocketAddress
    private let config: HealthCheckConfig
    private var completion: ((CheckResult) -> Void)?
    private var fd: Int32 = -1
    private var event: OpaquePointer?
    private var timer: Timer?
    private var connected = false
    private var step = 0
    private var received: [UInt8] = []
    private var pendingSend: [UInt8] = []
    /// The HTTP/2 exchange of a gRPC check.
    private var grpc: GrpcHealthExchange?
    /// TLS on the connection (`config.tls`), and whether its handshake is still going.
    private var ssl: OpaquePointer?
    private var handshaking = false
    private let startMs = monotonicMs()

    public init(dispatcher: Dispatcher, address: SocketAddress, config: HealthCheckConfig,
                completion: @escaping (CheckResult) -> Void) {
        self.dispatcher = dispatcher; self.address = address; self.config = config; self.completion = completion
    }

    deinit { cleanup() }

    /// Starts the check. The completion may run before this returns (e.g. refused at once).
    public func start() {
        timer = Timer(dispatcher) { [unowned self] in
            finish(handshaking ? .l6Timeout : connected ? .l7Timeout : .l4Timeout)
        }
        timer?.arm(ms: config.timeoutMs)
        if config.kind == .udp {
            startUdp()
            return
        }
        // No TCP_NODELAY: a check sends one small request; one syscall less per check.
        let r = address.withSockAddr { cshim_connect($0, $1, 0) }
        if r < 0 { finish(.l4Connect(errnoText(-r))); return }
        fd = r
        register(Int16(EV_READ | EV_WRITE | EV_ET | EV_PERSIST))
    }

    private func startUdp() {
        let family = address.family == .inet6 ? AF_INET6 : AF_INET
        fd = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { finish(.l4Connect(errnoText(errno))); return }
        // A connected UDP socket: the kernel reports ICMP port unreachable as ECONNREFUSED.
        let rc = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        guard rc == 0 else { finish(.l4Connect(errnoText(errno))); return }
        connected = true
        register(Int16(EV_READ | EV_PERSIST))
        advance()
    }

    private func register(_ flags: Int16) {
        event = event_new(dispatcher.base, fd, flags, { _, what, ctx in
            Unmanaged<HealthProbe>.fromOpaque(ctx!).takeUnretainedValue().onEvent(what)
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
    }

    private func onEvent(_ what: Int16) {
        guard completion != nil else { return }
        if !connected {
            let err = cshim_socket_error(fd)
            if err != 0 { finish(.l4Connect(errnoText(err))); return }
            connected = true
            if let t = config.tls {
                guard let s = cshim_tls_new(t.ctx, fd, 0, t.serverName, nil, 0, nil) else { finish(.l6("out of memory")); return }
                ssl = s
                handshaking = true
                handshake()
                return
            }
            startExchange()
            return
        }
        if handshaking { handshake(); return }
        // TLS may need either direction for either operation (and holds decrypted bytes the
        // socket no longer shows): try both on every event.
        if (what & Int16(EV_WRITE) != 0 || ssl != nil) && !pendingSend.isEmpty { sendPending() }
        if completion != nil && (what & Int16(EV_READ) != 0 || ssl != nil) { if grpc != nil { receiveGrpc() } else { receive() } }
    }

    private func startExchange() {
        if config.kind == .grpc { startGrpc() } else { advance() }
    }

    /// One step of the TLS handshake; on success the check's own exchange starts.
    private func handshake() {
        guard let s = ssl else { return }
        let r = cshim_tls_handshake(s)
        if r == 1 {
            handshaking = false
            startExchange()
            // Bytes that came with the handshake's last flight (a server that speaks first)
            // sit decrypted in OpenSSL: no new edge will announce them.
            if completion != nil { if grpc != nil { receiveGrpc() } else { receive() } }
        } else if r == TlsResult.error {
            var buf = [CChar](repeating: 0, count: 256)
            cshim_tls_failure(s, &buf, buf.count)
            finish(.l6(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)))
        }
    }

    /// send(2), or SSL_write: > 0 bytes sent; 0 not now; < 0 failed (errno set when plain).
    private func ioSend(_ p: UnsafeRawPointer?, _ n: Int) -> Int {
        if let s = ssl {
            let r = cshim_tls_write(s, p, Int32(clamping: n))
            if r > 0 { return Int(r) }
            if r == TlsResult.wantRead || r == TlsResult.wantWrite { return 0 }
            errno = ECONNRESET
            return -1
        }
        let r = Glibc.send(fd, p, n, Int32(MSG_NOSIGNAL))
        if r < 0 && (errno == EAGAIN || errno == EINTR) { return 0 }
        return r
    }

    /// recv(2), or SSL_read: > 0 bytes; 0 the peer closed; -1 nothing now; -2 failed (errno set).
    private func ioRecv(_ p: UnsafeMutableRawPointer?, _ n: Int) -> Int {
        if let s = ssl {
            let r = cshim_tls_read(s, p, Int32(clamping: n))
            if r >= 0 { return Int(r) }
            if r == TlsResult.wantRead || r == TlsResult.wantWrite { return -1 }
            errno = ECONNRESET
            return -2
        }
        let r = Glibc.recv(fd, p, n, 0)
        if r >= 0 { return r }
        return errno == EAGAIN || errno == EINTR ? -1 : -2
    }

    private func startGrpc() {
        guard let g = GrpcHealthExchange(service: config.grpcService, authority: config.grpcAuthority ?? address.description) else {
            finish(.l7Response("cannot start an HTTP/2 session"))
            return
        }
        grpc = g
        pendingSend = g.output()
        sendPending()
    }

    private func receiveGrpc() {
        var buf = [UInt8](repeating: 0, count: 16384)
        while completion != nil, let g = grpc {
            let n = buf.withUnsafeMutableBytes { ioRecv($0.baseAddress, $0.count) }
            if n > 0 {
                _ = g.input(Array(buf[0..<n]))
                if let r = g.result {
                    finish(r.passed ? .passed(latencyMs: monotonicMs() &- startMs) : r)
                    return
                }
                pendingSend += g.output()
                sendPending()
                continue
            }
            if n == 0 { finish(.l7Response("connection closed before a gRPC answer")); return }
            if n == -1 { return }
            finish(.l4Connect(errnoText(errno)))
            return
        }
    }

    /// Runs steps until one has to wait for the network.
    private func advance() {
        while completion != nil {
            guard step < config.steps.count else { finish(.passed(latencyMs: monotonicMs() &- startMs)); return }
            switch config.steps[step] {
            case .send(let bytes):
                pendingSend = bytes
                step += 1
                sendPending()
                if !pendingSend.isEmpty { return }
            case .expect(let m):
                // Bytes already received may settle it.
                switch m.judge(received, eof: false) {
                case .pass: received.removeAll(); step += 1
                case .fail(let why): finish(.l7Response(why)); return
                case .needMore: return
                }
            }
        }
    }

    private func sendPending() {
        while !pendingSend.isEmpty {
            let n = pendingSend.withUnsafeBytes { ioSend($0.baseAddress, $0.count) }
            if n > 0 { pendingSend.removeFirst(n); continue }
            if n == 0 { return }
            finish(.l4Connect(errnoText(errno)))
            return
        }
        if completion != nil && step < config.steps.count, case .expect = config.steps[step] { return }
    }

    private func receive() {
        var buf = [UInt8](repeating: 0, count: 4096)
        while completion != nil {
            let n = buf.withUnsafeMutableBytes { ioRecv($0.baseAddress, $0.count) }
            if n > 0 {
                received += buf[0..<n]
                if config.kind == .udp { judgeCurrent(eof: true); return }  // one datagram = one answer
                judgeCurrent(eof: false)
                continue
            }
            if n == 0 { judgeCurrent(eof: true); return }
            if n == -1 { return }
            if !received.isEmpty { judgeCurrent(eof: true); return }
            finish(.l4Connect(errnoText(errno)))
            return
        }
    }

    private func judgeCurrent(eof: Bool) {
        guard step < config.steps.count, case .expect(let m) = config.steps[step] else {
            if eof && completion != nil && step < config.steps.count { finish(.l7Response("connection closed")) }
            return
        }
        switch m.judge(received, eof: eof) {
        case .pass:
            received.removeAll()
            step += 1
            advance()
        case .fail(let why): finish(.l7Response(why))
        case .needMore:
            if eof { finish(.l7Response("connection closed before a complete answer")) }
            else if received.count > Matcher.maxResponse { finish(.l7Response("response too long")) }
        }
    }

    private func finish(_ r: CheckResult) {
        guard let c = completion else { return }
        completion = nil
        cleanup()
        c(r)
    }

    private func cleanup() {
        timer?.cancel()
        if let e = event { event_free(e); event = nil }
        if let s = ssl { cshim_tls_free(s, 0); ssl = nil }
        if fd >= 0 {
            cshim_set_linger_zero(fd)  // no TIME_WAIT pile-up from frequent checks
            close(fd)
            fd = -1
        }
    }
}

func errnoText(_ e: Int32) -> String {
    switch e {
    case ECONNREFUSED: return "connection refused"
    case ECONNRESET: return "connection reset"
    case EHOSTUNREACH: return "host unreachable"
    case ENETUNREACH: return "network unreachable"
    case ETIMEDOUT: return "timed out"
    case EPIPE: return "broken pipe"
    default: return String(cString: strerror(e))
    }
}
