import CLibevent
import Glibc
import Testing
@testable import Common

/// What a connection told its owner.
private final class Events: ConnectionCallbacks {
    var above = 0
    var below = 0
    /// Bytes still queued (`pendingWriteBytes`) when each low-watermark signal came.
    var pendingAtBelow: [Int] = []
    var data: [UInt8] = []
    /// `remote` of each close.
    var closes: [Bool] = []

    func onConnected(_ connection: Connection) {}
    func onConnectFailed(_ connection: Connection, errno: Int32) {}
    func onData(_ connection: Connection, _ buffer: Buffer, endStream: Bool) {
        data += Array(buffer.readable)
        buffer.drain(buffer.count)
    }
    func onClose(_ connection: Connection, remote: Bool) { closes.append(remote) }
    func onAboveWriteBufferHighWatermark(_ connection: Connection) { above += 1 }
    func onBelowWriteBufferLowWatermark(_ connection: Connection) {
        below += 1
        pendingAtBelow.append(connection.pendingWriteBytes)
    }
}

/// A worker with real sockets: each `pair` is a Connection on one end of a unix socketpair and
/// the raw other end, which the test reads and writes itself (a peer that reads only when told).
private final class Fixture {
    let store = StatsStore(threads: 2)
    let worker: Worker
    private var open: [(Connection, Int32, Events)] = []

    init() { worker = Worker(index: 0, stats: store.slabs[1], serverStats: ServerStats(store: store)) }

    /// `sendBuffer`: a small SO_SNDBUF on the connection's socket, so the kernel takes a few KB
    /// per write and queued bytes drain in small steps.
    func pair(bufferLimit: Int, sendBuffer: Int32? = nil) -> (Connection, Int32, Events) {
        var fds: [Int32] = [-1, -1]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0, "socketpair")
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        _ = fcntl(fds[1], F_SETFL, O_NONBLOCK)
        if var size = sendBuffer {
            _ = setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        let conn = Connection(worker: worker, fd: fds[0], remote: nil, bufferLimit: bufferLimit)
        let events = Events()
        conn.callbacks = events
        open.append((conn, fds[1], events))
        return (conn, fds[1], events)
    }

    /// Runs the loop until `done` (bounded: false when the 5 s deadline passed).
    func run(until done: () -> Bool) -> Bool { runLoop(worker.dispatcher, until: done) }

    deinit {
        for (conn, peer, _) in open { conn.close(); Glibc.close(peer) }
    }
}

/// Deterministic, position-dependent bytes: a lost, duplicated or reordered chunk shows.
private func pattern(from offset: Int, count: Int) -> [UInt8] {
    (offset..<offset + count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
}

/// Reads what the peer socket has now (up to `max`); nil at EOF, [] when nothing is there.
private func peerRead(_ fd: Int32, max: Int = 64 * 1024) -> [UInt8]? {
    var buf = [UInt8](repeating: 0, count: max)
    let n = read(fd, &buf, max)
    if n == 0 { return nil }
    if n < 0 { #expect(errno == EAGAIN, "peer read failed: errno \(errno)"); return [] }
    return Array(buf.prefix(n))
}

/// Where `received` first differs from `pattern(from: 0, ...)` (a length difference counts);
/// nil when equal. (Comparing the arrays in `#expect` would diff 256 KB on failure: too slow.)
private func firstMismatch(_ received: [UInt8], expectedCount: Int) -> Int? {
    let expected = pattern(from: 0, count: expectedCount)
    if let i = zip(received, expected).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset { return i }
    return received.count == expectedCount ? nil : min(received.count, expectedCount)
}

private func peerWrite(_ fd: Int32, _ s: String) {
    let n = s.withCString { write(fd, $0, strlen($0)) }
    #expect(n == s.utf8.count)
}

private let limit = 64 * 1024

/// Fills the socket until the connection queues in user space, then tops the queue up to
/// exactly `limit`. Returns the bytes written so far.
private func fillToHighWatermark(_ conn: Connection) -> Int {
    var sent = 0
    while conn.pendingWriteBytes == 0 {
        conn.write(bytes: pattern(from: sent, count: 4096))
        sent += 4096
    }
    let room = limit - conn.pendingWriteBytes
    conn.write(bytes: pattern(from: sent, count: room))
    return sent + room
}

@Test func writingPastTheHighWatermarkToAPeerThatDoesNotReadSignalsOnce() {
    let f = Fixture()
    let (conn, _, events) = f.pair(bufferLimit: limit, sendBuffer: 4096)
    var sent = fillToHighWatermark(conn)
    // Exactly at the watermark is not over it.
    #expect(conn.pendingWriteBytes == limit)
    #expect(events.above == 0)
    conn.write(bytes: pattern(from: sent, count: 1))
    sent += 1
    #expect(events.above == 1)
    // Further writes, and loop rounds with the peer still not reading, signal nothing more.
    for _ in 0..<8 {
        conn.write(bytes: pattern(from: sent, count: 16 * 1024))
        sent += 16 * 1024
    }
    var rounds = 0
    #expect(f.run { rounds += 1; return rounds > 5 })
    #expect(events.above == 1)
    #expect(events.below == 0)
    #expect(conn.pendingWriteBytes > limit)
}

@Test func drainingBelowTheLowWatermarkSignalsOnceAndAllBytesArrive() {
    let f = Fixture()
    let (conn, peer, events) = f.pair(bufferLimit: limit, sendBuffer: 4096)
    var sent = fillToHighWatermark(conn)
    conn.write(bytes: pattern(from: sent, count: 128 * 1024))
    sent += 128 * 1024
    #expect(events.above == 1)

    // The peer reads 4 KB at a time, the loop running between reads.
    var received: [UInt8] = []
    #expect(f.run {
        if let chunk = peerRead(peer, max: 4096) { received += chunk }
        return received.count == sent
    })
    #expect(firstMismatch(received, expectedCount: sent) == nil)
    #expect(events.below == 1)
    // It came at the low watermark (half the limit) as the queue drained, not before and not
    // only once everything was gone (the kernel takes a few KB per step here).
    let at = events.pendingAtBelow.first ?? -1
    #expect(at <= limit / 2 && at > limit / 4, "signalled with \(at) bytes queued")
    #expect(events.above == 1)

    // Over the high watermark again: a new signal (one per crossing).
    _ = fillToHighWatermark(conn)
    conn.write(bytes: [0])
    #expect(events.above == 2)
}

@Test func readDisableHoldsDataAndReadEnablePicksUpWhatArrivedMeanwhile() {
    let f = Fixture()
    let (conn, peer, events) = f.pair(bufferLimit: limit)
    // A second connection on the same loop proves a loop round has seen the first one's data.
    let (_, probePeer, probe) = f.pair(bufferLimit: limit)

    conn.readDisable()
    #expect(!conn.isReadEnabled)
    peerWrite(peer, "one,")
    peerWrite(probePeer, "a")
    #expect(f.run { probe.data.count == 1 })
    peerWrite(peer, "two")
    peerWrite(probePeer, "b")
    #expect(f.run { probe.data.count == 2 })
    #expect(events.data.isEmpty, "delivered while reading was disabled")

    // The edges were consumed while disabled; no new one comes, yet the data must be read.
    conn.readEnable()
    #expect(f.run { events.data.count == 7 })
    #expect(String(decoding: events.data, as: UTF8.self) == "one,two")

    // Enabled again, new data flows as usual.
    peerWrite(peer, "!")
    #expect(f.run { events.data.count == 8 })
}

@Test func closeAfterFlushDeliversEverythingQueuedThenCloses() {
    let f = Fixture()
    let (conn, peer, events) = f.pair(bufferLimit: 1 << 20, sendBuffer: 4096)
    let total = 256 * 1024
    conn.write(bytes: pattern(from: 0, count: total))
    #expect(conn.pendingWriteBytes > 0)

    conn.closeAfterFlush()
    #expect(conn.state == .open, "closed with bytes still queued")
    #expect(events.closes.isEmpty)

    var received: [UInt8] = []
    var eof = false
    #expect(f.run {
        guard let chunk = peerRead(peer) else { eof = true; return true }
        received += chunk
        return false
    })
    #expect(eof)
    #expect(received.count == total)
    #expect(firstMismatch(received, expectedCount: total) == nil)
    #expect(conn.state == .closed)
    #expect(events.closes == [false])
}

@Test func closeAfterFlushWithNothingQueuedClosesAtOnce() {
    let f = Fixture()
    let (conn, peer, events) = f.pair(bufferLimit: limit)
    conn.write(bytes: Array("bye".utf8))
    #expect(conn.pendingWriteBytes == 0)

    conn.closeAfterFlush()
    #expect(conn.state == .closed)
    #expect(events.closes == [false])
    // The peer gets the bytes, then EOF, with no loop round needed.
    #expect(peerRead(peer) == Array("bye".utf8))
    #expect(peerRead(peer) == nil)
}

/// A few loop rounds, for "nothing happens" checks (what would happen has had its chance).
private func rounds(_ f: Fixture, _ n: Int) {
    var left = n
    _ = f.run { left -= 1; return left < 0 }
}

@Test func readDisableIsCountedAndTheLastEnableResumes() {
    let f = Fixture()
    let (conn, peer, events) = f.pair(bufferLimit: 1 << 16)
    // Two streams pause the connection.
    conn.readDisable()
    conn.readDisable()
    peerWrite(peer, "abc")
    rounds(f, 5)
    #expect(events.data.isEmpty && !conn.isReadEnabled)
    conn.readEnable()  // one stream resumes: the other still holds it
    rounds(f, 5)
    #expect(events.data.isEmpty && !conn.isReadEnabled)
    conn.readEnable()  // the last one: the bytes that waited arrive
    #expect(f.run { events.data.count == 3 })
    #expect(conn.isReadEnabled)
    conn.readEnable()  // unbalanced: ignored, and the next disable still pauses
    conn.readDisable()
    #expect(!conn.isReadEnabled)
}

@Test func queuedOutputPastTheHardCapClosesTheConnection() {
    let f = Fixture()
    let (conn, _, events) = f.pair(bufferLimit: 64 << 10)
    // A producer that ignores the high watermark; the peer reads nothing.
    let chunk = [UInt8](repeating: 7, count: 64 << 10)
    var written = 0
    while conn.state == .open && written < 64 << 20 {
        conn.write(bytes: chunk)
        written += chunk.count
    }
    #expect(conn.state == .closed && events.closes == [false])
    #expect(written <= (4 << 20) + (4 << 20))  // the cap plus what the socket pair took
    #expect(f.store.value("server.connection_write_overflow") == 1)
}
