import CLibevent
@testable import Common

/// Drives `dispatcher`'s loop from the test's own thread until `done` holds or `timeoutMs`
/// passes: each round blocks for events at most 10 ms, so nothing sleeps for a fixed time.
/// Returns whether `done` held (false: the deadline passed).
@discardableResult
func runLoop(_ dispatcher: Dispatcher, timeoutMs: UInt64 = 5000, until done: () -> Bool) -> Bool {
    let deadline = monotonicMs() + timeoutMs
    var tick = timeval(tv_sec: 0, tv_usec: 10_000)
    while !done() {
        if monotonicMs() >= deadline { return false }
        event_base_loopexit(dispatcher.base, &tick)
        event_base_loop(dispatcher.base, Int32(EVLOOP_ONCE))
    }
    return true
}
