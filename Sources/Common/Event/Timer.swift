import CLibevent
import CShim

/// A one-shot or repeating timer on a dispatcher. Confined to the dispatcher's thread.
/// The callback must not capture the timer's owner strongly (use `[unowned self]`).
public final class Timer {
    private var event: OpaquePointer?
    private let callback: () -> Void

    public init(_ dispatcher: Dispatcher, _ callback: @escaping () -> Void) {
        self.callback = callback
        event = cshim_evtimer_new(dispatcher.base, { _, _, ctx in
            Unmanaged<Timer>.fromOpaque(ctx!).takeUnretainedValue().callback()
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit { if let e = event { event_free(e) } }

    /// (Re)arms the timer to fire once after `ms` milliseconds.
    public func arm(ms: UInt64) {
        var tv = timeval(tv_sec: Int(ms / 1000), tv_usec: Int((ms % 1000) * 1000))
        event_add(event, &tv)
    }

    public func cancel() { event_del(event) }

    public var isArmed: Bool { event_pending(event, Int16(EV_TIMEOUT), nil) != 0 }
}

/// Monotonic time in milliseconds (coarse clock; good to a few ms).
@inline(__always) public func monotonicMs() -> UInt64 { cshim_now_ms() }
/// Wall-clock time in milliseconds since the epoch.
@inline(__always) public func wallMs() -> UInt64 { cshim_wall_ms() }

/// A callback run once after the callbacks already due in this loop iteration: libevent runs
/// an event activated during its active-queue pass at the end of that same pass, so work that
/// many connections' reads produce together (their requests to one upstream) is done once, after
/// all of those reads. Confined to the dispatcher's thread; the callback must not capture its
/// owner strongly.
public final class EndOfIteration {
    private var event: OpaquePointer?
    private let callback: () -> Void
    /// Scheduled and not run yet.
    public private(set) var scheduled = false

    public init(_ dispatcher: Dispatcher, _ callback: @escaping () -> Void) {
        self.callback = callback
        event = event_new(dispatcher.base, -1, 0, { _, _, ctx in
            let me = Unmanaged<EndOfIteration>.fromOpaque(ctx!).takeUnretainedValue()
            me.scheduled = false
            me.callback()
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit { if let e = event { event_free(e) } }

    /// Runs the callback at the end of this iteration's callbacks (once, however often asked).
    public func schedule() {
        if scheduled { return }
        scheduled = true
        event_active(event, 0, 0)
    }
}
