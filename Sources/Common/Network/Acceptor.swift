import CLibevent
import CShim
import Glibc

/// A listening socket on a dispatcher. Accepts in batches of 64 while the kernel has
/// connections queued; on EMFILE, ENFILE, ENOBUFS or ENOMEM it pauses for 100 ms instead of
/// spinning on a socket that stays readable (as HAProxy and nginx do). Owns and closes `fd`.
final class Acceptor {
    let fd: Int32
    private unowned let dispatcher: Dispatcher
    private var event: OpaquePointer?
    private var pauseTimer: Timer?
    /// A new connection: its socket (non-blocking) and peer.
    private let onAccept: (Int32, SocketAddress) -> Void
    /// Accepting failed for lack of resources (counted by the owner).
    private let onResourceError: () -> Void

    init(dispatcher: Dispatcher, fd: Int32, onAccept: @escaping (Int32, SocketAddress) -> Void,
         onResourceError: @escaping () -> Void) {
        self.fd = fd; self.dispatcher = dispatcher
        self.onAccept = onAccept; self.onResourceError = onResourceError
        event = event_new(dispatcher.base, fd, Int16(EV_READ | EV_PERSIST), { _, _, ctx in
            Unmanaged<Acceptor>.fromOpaque(ctx!).takeUnretainedValue().onAcceptable()
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
    }

    deinit { stop() }

    var isRunning: Bool { event != nil }

    /// Stops accepting and closes the socket.
    func stop() {
        pauseTimer?.cancel()
        if let e = event { event_free(e); event = nil; close(fd) }
    }

    private func onAcceptable() {
        for _ in 0..<64 {
            var ss = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let c = withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { cshim_accept(fd, $0, &len) }
            }
            if c < 0 {
                let e = -c
                if e == EAGAIN || e == EINTR || e == ECONNABORTED || e == EPROTO { return }
                onResourceError()
                pause()
                return
            }
            let remote = withUnsafeBytes(of: &ss) { SocketAddress(bytes: $0.baseAddress!, length: Int(len)) }
            onAccept(c, remote)
            if event == nil { return }  // stopped by the callback
        }
    }

    private func pause() {
        guard let e = event else { return }
        event_del(e)
        if pauseTimer == nil {
            pauseTimer = Timer(dispatcher) { [unowned self] in
                if let e = event { event_add(e, nil) }
            }
        }
        pauseTimer?.arm(ms: 100)
    }
}
