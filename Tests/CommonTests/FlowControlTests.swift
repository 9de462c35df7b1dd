import CLibevent
import Glibc
import Testing
@testable import Common

/// Counts what arrives on a connection with no read filters.
private final class Sink: ConnectionCallbacks {
    var bytes = 0
    func onConnected(_ c: Connection) {}
    func onConnectFailed(_ c: Connection, errno: Int32) {}
    func onData(_ c: Connection, _ buffer: Buffer, endStream: Bool) { bytes += buffer.count; buffer.drain(buffer.count) }
    func onClose(_ c: Connection, remote: Bool) {}
    func onAboveWriteBufferHighWatermark(_ c: Connection) {}
    func onBelowWriteBufferLowWatermark(_ c: Connection) {}
}

/// Runs the loop until `done` or a 5 s deadline (10 ms per round at most).
private func run(_ d: Dispatcher, until done: () -> Bool) {
    let deadline = monotonicMs() + 5000
    var tick = timeval(tv_sec: 0, tv_usec: 10_000)
    while !done() && monotonicMs() < deadline {
        event_base_loopexit(d.base, &tick)
        event_base_loop(d.base, Int32(EVLOOP_ONCE))
    }
}

/// A few loop rounds (for "nothing happens" checks: what would happen has its chance).
private func rounds(_ d: Dispatcher, _ n: Int) {
    var tick = timeval(tv_sec: 0, tv_usec: 10_000)
    for _ in 0..<n {
        event_base_loopexit(d.base, &tick)
        event_base_loop(d.base, Int32(EVLOOP_ONCE))
    }
}

@Test func readDisableIsCountedAndTheLastEnableResumes() {
    let store = StatsStore(threads: 2)
    let worker = Worker(index: 0, stats: store.slabs[1], serverStats: ServerStats(store: store))
    var fds: [Int32] = [-1, -1]
    #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
    let sink = Sink()
    let conn = Connection(worker: worker, fd: fds[0], remote: nil, bufferLimit: 1 << 16)
    conn.callbacks = sink
    // Two streams pause the connection.
    conn.readDisable()
    conn.readDisable()
    _ = "abc".withCString { write(fds[1], $0, 3) }
    rounds(worker.dispatcher, 5)  // nothing may arrive
    #expect(sink.bytes == 0 && !conn.isReadEnabled)
    conn.readEnable()  // one stream resumes: the other still holds it
    rounds(worker.dispatcher, 5)
    #expect(sink.bytes == 0 && !conn.isReadEnabled)
    conn.readEnable()  // the last one: the bytes that waited arrive
    run(worker.dispatcher) { sink.bytes == 3 }
    #expect(sink.bytes == 3 && conn.isReadEnabled)
    conn.readEnable()  // unbalanced: ignored, and the next disable still pauses
    conn.readDisable()
    #expect(!conn.isReadEnabled)
    conn.close()
    close(fds[1])
}

@Test func queuedOutputPastTheHardCapClosesTheConnection() {
    let store = StatsStore(threads: 2)
    let worker = Worker(index: 0, stats: store.slabs[1], serverStats: ServerStats(store: store))
    var fds: [Int32] = [-1, -1]
    #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
    let conn = Connection(worker: worker, fd: fds[0], remote: nil, bufferLimit: 64 << 10)
    let sink = Sink()
    conn.callbacks = sink
    // A producer that ignores the high watermark; the peer reads nothing.
    let chunk = [UInt8](repeating: 7, count: 64 << 10)
    var written = 0
    while conn.state == .open && written < 64 << 20 {
        conn.write(bytes: chunk)
        written += chunk.count
    }
    #expect(conn.state == .closed)
    #expect(written <= (4 << 20) + (4 << 20))  // the cap plus what the socket pair took
    #expect(store.value("server.connection_write_overflow") == 1)
    close(fds[1])
}
