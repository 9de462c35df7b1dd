import CLibevent
import Glibc
import Testing
@testable import Common

/// Records the order filters see data in.
final class Recorder {
    var events: [String] = []
}

final class TagReadFilter: ReadFilter {
    let tag: String
    let recorder: Recorder
    let consume: Bool
    init(_ tag: String, _ r: Recorder, consume: Bool) { self.tag = tag; recorder = r; self.consume = consume }
    func onData(_ buffer: Buffer, endStream: Bool) -> FilterStatus {
        recorder.events.append("read:\(tag):\(String(decoding: buffer.readable, as: UTF8.self)):\(endStream)")
        if consume { buffer.drain(buffer.count); return .stopIteration }
        return .continue
    }
}

final class TagWriteFilter: WriteFilter {
    let tag: String
    let recorder: Recorder
    init(_ tag: String, _ r: Recorder) { self.tag = tag; recorder = r }
    func onWrite(_ buffer: Buffer, endStream: Bool) -> FilterStatus {
        recorder.events.append("write:\(tag)")
        return .continue
    }
}

@Test func readFiltersRunFifoWriteFiltersLifoAndHalfCloseIsDelivered() {
    let store = StatsStore(threads: 2)
    let worker = Worker(index: 0, stats: store.slabs[1], serverStats: ServerStats(store: store))
    var fds: [Int32] = [-1, -1]
    #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
    let r = Recorder()
    let conn = Connection(worker: worker, fd: fds[0], remote: nil, bufferLimit: 1 << 16)
    conn.readFilters = [TagReadFilter("a", r, consume: false), TagReadFilter("b", r, consume: true), TagReadFilter("c", r, consume: false)]
    conn.writeFilters = [TagWriteFilter("x", r), TagWriteFilter("y", r)]

    _ = "hi".withCString { write(fds[1], $0, 2) }
    runLoop(worker.dispatcher) { r.events.count >= 2 }
    // FIFO, and a filter that stops iteration hides the data from the ones after it.
    #expect(r.events == ["read:a:hi:false", "read:b:hi:false"])

    r.events.removeAll()
    conn.write(bytes: Array("out".utf8))
    #expect(r.events == ["write:y", "write:x"])  // LIFO
    var buf = [UInt8](repeating: 0, count: 8)
    #expect(read(fds[1], &buf, 8) == 3)

    // The peer half-closes: the filters see endStream, and the connection stays open for writing.
    r.events.removeAll()
    shutdown(fds[1], Int32(SHUT_WR))
    runLoop(worker.dispatcher) { r.events.count >= 2 }
    #expect(r.events == ["read:a::true", "read:b::true"])
    #expect(conn.state == .open && conn.readEOF)
    conn.write(bytes: Array("late".utf8))
    #expect(read(fds[1], &buf, 8) == 4)
    conn.close()
    close(fds[1])
}
