import Testing
@testable import Common

@Test func bufferGrowsMovesAndReleases() {
    let pool = BlockPool(blockSize: 1024, maxFree: 4)
    let a = Buffer(pool: pool), b = Buffer(pool: pool)
    let bytes = (0..<3000).map { UInt8($0 % 251) }
    a.append(bytes)
    #expect(a.count == 3000)
    a.drain(1000)
    #expect(Array(a.readable) == Array(bytes[1000...]))
    b.moveAll(from: a)
    #expect(a.isEmpty && b.count == 2000 && Array(b.readable) == Array(bytes[1000...]))
    b.append([1, 2, 3])
    #expect(b.count == 2003)
    b.drain(2003)
    #expect(b.isEmpty)
}

@Test func statsSumOverThreads() {
    let store = StatsStore(threads: 3)
    let c = store.counter("x.total")
    let g = store.gauge("x.active")
    let h = store.histogram("x.ms")
    store.slabs[1].inc(c); store.slabs[2].add(c, 4)
    store.slabs[1].inc(g); store.slabs[2].inc(g); store.slabs[1].dec(g)
    store.slabs[1].record(h, 3); store.slabs[2].record(h, 700)
    #expect(store.value("x.total") == 5)
    #expect(store.value("x.active") == 1)
    #expect(store.counter("x.total") == c)
    let snap = store.snapshot()
    #expect(snap.histograms[0].1.count == 2 && snap.histograms[0].1.sum == 703)
}
