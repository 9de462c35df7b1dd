import Dispatch
import Synchronization
import Testing
@testable import Common

/// Counts an OutlierCounter's reports (it may be called from any thread).
private final class Reports: Sendable {
    let count = Atomic<Int>(0)
    var value: Int { count.load(ordering: .relaxed) }
}

private func counter(threshold: Int) -> (OutlierCounter, Reports) {
    let r = Reports()
    return (OutlierCounter(threshold: threshold) { r.count.wrappingAdd(1, ordering: .relaxed) }, r)
}

@Test func outlierCounterReportsOnceWhenTheStreakReachesTheThreshold() {
    let (c, reports) = counter(threshold: 3)
    c.failure(); c.failure()
    #expect(reports.value == 0)
    c.failure()
    #expect(reports.value == 1)
    // The streak goes on: the main thread already heard of it.
    for _ in 0..<20 { c.failure() }
    #expect(reports.value == 1)
}

@Test func outlierCounterSuccessEndsTheStreak() {
    let (c, reports) = counter(threshold: 3)
    c.failure(); c.failure(); c.success()
    c.failure(); c.failure()
    #expect(reports.value == 0)  // 2 + 2 failures, never 3 in a row
    c.failure()
    #expect(reports.value == 1)
    // After a report, a success starts a new streak that reports again at the threshold.
    c.success()
    c.failure(); c.failure()
    #expect(reports.value == 1)
    c.failure()
    #expect(reports.value == 2)
}

@Test func outlierCounterResetStartsANewStreak() {
    let (c, reports) = counter(threshold: 2)
    c.failure(); c.reset(); c.failure()
    #expect(reports.value == 0)
    c.failure()
    #expect(reports.value == 1)
    c.reset()  // the main thread ejected the host, or brought it back
    c.failure()
    #expect(reports.value == 1)
    c.failure()
    #expect(reports.value == 2)
}

@Test func outlierCounterReportsOnceWhenWorkersFailTogether() {
    // Every worker shares the counter: however failures interleave, one report per streak.
    let (c, reports) = counter(threshold: 100)
    DispatchQueue.concurrentPerform(iterations: 4) { _ in
        for _ in 0..<1000 { c.failure() }
    }
    #expect(reports.value == 1)
}
