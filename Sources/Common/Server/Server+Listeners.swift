import CLibevent
import CShim
import Glibc
import Logging

/// The listener manager (main thread): binding sockets (one per worker with SO_REUSEPORT),
/// handing them to workers, retiring removed listeners, and the `exact` balancer.
extension Server {
    /// Binds what `config` needs and `bound` lacks. All or nothing: on failure the new sockets
    /// are closed and the error names the listener.
    func bindListeners(_ config: ProxyConfig) throws(ConfigError) -> [String: (BoundListener, [Int32])] {
        var made: [String: (BoundListener, [Int32])] = [:]
        func rollback() { for (_, (_, fds)) in made { for fd in fds { close(fd) } } }
        for (i, l) in config.listeners.enumerated() {
            if let b = bound[l.name], b.address == l.address, b.balance == l.connectionBalance { continue }
            // A changed listener whose old socket holds the same concrete port must be released first.
            var fds: [Int32] = []
            var actual = l.address
            let count = l.connectionBalance == .exact ? 1 : workers.count
            // Unix sockets have no SO_REUSEPORT: one socket, and each worker accepts on a dup.
            let unix = l.address.family == .unix
            for k in 0..<count {
                let fd = unix && k > 0 ? dup(fds[0])
                    : l.datagram ? actual.withSockAddr { cshim_udp_bind($0, $1, 1) }
                    : actual.withSockAddr { cshim_listen($0, $1, l.connectionBalance == .kernel && !unix ? 1 : 0, Int32(l.backlog)) }
                if fd < 0 {
                    for f in fds { close(f) }
                    rollback()
                    throw ConfigError("listeners[\(i)].address", "cannot listen on \(actual): \(String(cString: strerror(-fd)))")
                }
                if unix && k > 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
                if actual.port == 0 && !unix, let real = SocketAddress.local(of: fd) { actual = real }
                fds.append(fd)
            }
            made[l.name] = (BoundListener(address: l.address, balance: l.connectionBalance, actual: actual, exact: nil), fds)
        }
        return made
    }

    /// Hands freshly bound sockets to workers (or to the main thread's exact balancer).
    func install(_ made: [String: (BoundListener, [Int32])]) {
        for (name, (b, fds)) in made {
            var b = b
            if b.balance == .exact {
                b.exact = ExactBalancer(server: self, fd: fds[0], listener: name)
            } else {
                for (i, h) in workerHandles.enumerated() {
                    let fd = fds[i]
                    h.post { $0.addListener(name: name, fd: fd) }
                }
            }
            bound[name] = b
        }
    }

    /// Stops and forgets listeners no longer in `config` (or whose address changed).
    func unbindRemoved(_ config: ProxyConfig) {
        for (name, b) in bound {
            let keep = config.listeners.contains { $0.name == name && $0.address == b.address && $0.connectionBalance == b.balance }
            if keep { continue }
            b.exact?.stop()
            for h in workerHandles { h.post { $0.removeListener(name: name) } }
            bound.removeValue(forKey: name)
        }
    }

    /// The least loaded worker (by open connections), for the exact balancer.
    func leastLoadedWorker() -> WorkerHandle {
        var best = 0
        var bestLoad = Int64.max
        for (i, _) in workerHandles.enumerated() {
            let load = Int64(bitPattern: store.slabs[i + 1].load(serverStats.totalConnections.slot))
            if load < bestLoad { best = i; bestLoad = load }
        }
        return workerHandles[best]
    }
}

/// `exact` connection balance: one accepting socket on the main thread; each connection goes
/// to the worker with the fewest open connections.
final class ExactBalancer {
    private var acceptor: Acceptor?

    init(server: Server, fd: Int32, listener: String) {
        acceptor = Acceptor(dispatcher: server.dispatcher, fd: fd, onAccept: { [unowned server] c, remote in
            server.leastLoadedWorker().post { w in
                guard let r = w.snapshot?.listeners[listener] else { close(c); return }
                w.accepted(fd: c, remote: remote, runtime: r)
            }
        }, onResourceError: { [unowned server] in
            if let r = server.snapshot.listeners[listener] { server.store.mainSlab.inc(r.stats.downstreamCxAcceptError) }
        })
    }

    func stop() { acceptor?.stop() }
}
